-- The node registry (events/nodes.go): one row per gateway node, so the
-- cluster's convergence is visible and waitable. Each node upserts its row
-- at start, reports every position it applies and heartbeats in between;
-- a graceful stop sets stopped_at. Liveness is computed by readers with the
-- database clock (stopped_at IS NULL AND heartbeat_at > now() - stale
-- interval), so the nodes' clocks never matter.
--
-- A node id outlives its process (it is kept in the data directory); each
-- process has its own instance uuid. Registering takes the row over from
-- whichever instance held it; a report from any other instance is refused
-- and told the owner, so two processes sharing one id are detected by the
-- one that lost the row instead of flapping it back and forth.
--
-- Joins and leaves NOTIFY isekai_nodes with 'id:position'; so does a report
-- that moves a node's position, but only while some write waits for the
-- cluster (a row in node_waits at or below that position): a NOTIFY
-- serializes its transaction's commit with every other notifying commit,
-- appends included, so reports nobody waits for stay silent. Like
-- isekai_events, the notification is only a wake-up: waiters re-read the
-- table. Heartbeats that move nothing do not notify; a node that dies turns
-- stale by time alone.
--
-- The wait lock 7305692537 closes the race between a waiter and a report:
-- reports hold it shared until they commit; a waiter registers under it
-- exclusive, so a report either sees the waiter's row or commits before the
-- waiter's first read of nodes.

CREATE TABLE nodes (
    id               text        PRIMARY KEY CHECK (id <> ''),
    instance         uuid        NOT NULL,
    proxy_addr       text,
    admin_addr       text,
    version          text,
    hostname         text,
    pid              int,
    started_at       timestamptz,
    applied_position bigint      NOT NULL DEFAULT 0 CHECK (applied_position >= 0),
    applied_at       timestamptz,
    heartbeat_at     timestamptz NOT NULL,
    stopped_at       timestamptz
);

-- node_waits holds the writes waiting for every live node to apply a
-- position (?wait=cluster). Unlogged: a crash loses only waits that ended
-- with it; rows a crashed waiter left are deleted by the heartbeats after
-- five minutes (a wait lasts at most one).
CREATE UNLOGGED TABLE node_waits (
    id       uuid        PRIMARY KEY,
    position bigint      NOT NULL,
    since    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX node_waits_position ON node_waits (position);

CREATE FUNCTION isekai_node_wait_begin(p_id uuid, p_position bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7305692537);
    INSERT INTO node_waits (id, position) VALUES (p_id, p_position);
END
$$;

-- isekai_node_register upserts the row of node p_id for instance p_instance,
-- taking it over from any other instance: its details, its applied position
-- as given (a new process starts from its own position, not its
-- predecessor's), a fresh heartbeat and no stopped_at.
CREATE FUNCTION isekai_node_register(
    p_id         text,
    p_instance   uuid,
    p_proxy_addr text,
    p_admin_addr text,
    p_version    text,
    p_hostname   text,
    p_pid        int,
    p_started_at timestamptz,
    p_position   bigint
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nodes (id, instance, proxy_addr, admin_addr, version, hostname, pid, started_at,
                       applied_position, applied_at, heartbeat_at, stopped_at)
    VALUES (p_id, p_instance, p_proxy_addr, p_admin_addr, p_version, p_hostname, p_pid, p_started_at,
            p_position, CASE WHEN p_position > 0 THEN now() END, now(), NULL)
    ON CONFLICT (id) DO UPDATE SET
        instance         = excluded.instance,
        proxy_addr       = excluded.proxy_addr,
        admin_addr       = excluded.admin_addr,
        version          = excluded.version,
        hostname         = excluded.hostname,
        pid              = excluded.pid,
        started_at       = excluded.started_at,
        applied_position = excluded.applied_position,
        applied_at       = excluded.applied_at,
        heartbeat_at     = excluded.heartbeat_at,
        stopped_at       = NULL;
    PERFORM pg_notify('isekai_nodes', p_id || ':' || p_position);
END
$$;

-- isekai_node_report is a node's report and heartbeat in one round trip.
-- When the row belongs to p_instance it raises applied_position to
-- p_position (never lowers it), stamps applied_at when it moved and
-- heartbeat_at always, and NOTIFYs when the position moved and a write
-- waits for it. It returns the
-- instance that owns the row: p_instance on success, another instance when
-- the row was taken over (nothing is changed), NULL when there is no row
-- (forgotten or wiped; the node registers again). It commits without
-- waiting for the WAL flush (synchronous_commit off for its transaction).
CREATE FUNCTION isekai_node_report(
    p_id       text,
    p_instance uuid,
    p_position bigint
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_owner uuid;
    v_old   bigint;
BEGIN
    -- A report is soon superseded and re-sent after a restart: it need not
    -- wait for the WAL flush, which is most of its latency (and of a
    -- ?wait=cluster write's).
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock_shared(7305692537);
    SELECT instance, applied_position INTO v_owner, v_old
    FROM nodes WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v_owner <> p_instance THEN
        RETURN v_owner;
    END IF;
    IF p_position > v_old THEN
        UPDATE nodes SET applied_position = p_position, applied_at = now(), heartbeat_at = now()
        WHERE id = p_id;
        IF EXISTS (SELECT 1 FROM node_waits WHERE position <= p_position) THEN
            PERFORM pg_notify('isekai_nodes', p_id || ':' || p_position);
        END IF;
    ELSE
        UPDATE nodes SET heartbeat_at = now() WHERE id = p_id;
    END IF;
    RETURN v_owner;
END
$$;

-- isekai_node_leave is a graceful stop: when the row belongs to p_instance
-- it records the last position, sets stopped_at (the node is no longer
-- live, at once) and NOTIFYs, so waiters stop waiting for it. It returns
-- whether the row was the instance's.
CREATE FUNCTION isekai_node_leave(
    p_id       text,
    p_instance uuid,
    p_position bigint
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_position bigint;
BEGIN
    UPDATE nodes SET
        applied_at       = CASE WHEN p_position > applied_position THEN now() ELSE applied_at END,
        applied_position = greatest(applied_position, p_position),
        heartbeat_at     = now(),
        stopped_at       = now()
    WHERE id = p_id AND instance = p_instance
    RETURNING applied_position INTO v_position;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('isekai_nodes', p_id || ':' || v_position);
    RETURN true;
END
$$;
