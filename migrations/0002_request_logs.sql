-- The request log: one row per request the gateway answered, written in
-- batches by the COPY writer (events/requestlog.go). It is range-partitioned
-- by UTC day on time, so retention drops whole partitions instead of
-- deleting rows. Nothing on this path NOTIFYs.
--
-- Daily partitions are created ahead of time by isekai_request_logs_maintain.
-- Rows whose day has no partition (a spool replayed after a long outage, a
-- clock far off) land in request_logs_default instead of failing the COPY.
-- Maintenance never moves them out: it skips creating a day partition whose
-- range already has rows in the default partition (creating it would fail),
-- and deletes default rows once they are older than the retention.

CREATE TABLE request_logs (
    time                timestamptz NOT NULL,
    node_id             text        NOT NULL,
    route_id            uuid,
    method              text        NOT NULL,
    host                text        NOT NULL,
    path                text        NOT NULL,
    query               text,
    status              int         NOT NULL CHECK (status BETWEEN 0 AND 999),
    upstream            text,
    upstream_status     int         CHECK (upstream_status BETWEEN 0 AND 999),
    latency_us          bigint      NOT NULL CHECK (latency_us >= 0),
    upstream_latency_us bigint      CHECK (upstream_latency_us >= 0),
    bytes_in            bigint      NOT NULL CHECK (bytes_in >= 0),
    bytes_out           bigint      NOT NULL CHECK (bytes_out >= 0),
    client_ip           inet,
    user_agent          text,
    request_id          text        NOT NULL,
    trace_id            text,
    consumer            text
) PARTITION BY RANGE (time);

CREATE TABLE request_logs_default PARTITION OF request_logs DEFAULT;

-- GET /api/logs pages newest first, optionally by route;
-- GET /api/routes/{id}/stats scans one route over a recent window.
CREATE INDEX request_logs_time ON request_logs (time DESC);
CREATE INDEX request_logs_route_time ON request_logs (route_id, time DESC);

-- isekai_request_logs_maintain creates the missing daily partitions from
-- the day before p_now to p_days_ahead days after it (UTC days, named
-- request_logs_YYYYMMDD), drops the partitions that end at or before
-- p_now - p_retention, and deletes default-partition rows older than that
-- (a NULL retention keeps everything). It returns one row per action:
-- ('created' | 'dropped' | 'skipped', partition), or a single ('busy', NULL)
-- when another session is already maintaining: the transaction-scoped
-- advisory lock 7305692535 (distinct from the append lock 7305692533 and
-- the migration lock 7305692534) lets one node at a time do it, and the
-- others do not wait. p_now exists for tests that simulate a day change.
--
-- Creating or dropping a partition briefly locks request_logs against
-- COPY; lock_timeout bounds the wait behind a running COPY.
CREATE FUNCTION isekai_request_logs_maintain(
    p_days_ahead int,
    p_retention  interval,
    p_now        timestamptz DEFAULT now()
) RETURNS TABLE (o_action text, o_partition text)
LANGUAGE plpgsql
SET lock_timeout = '5s'
AS $$
DECLARE
    v_today date := (p_now AT TIME ZONE 'UTC')::date;
    v_day  date;
    v_lo   timestamptz;
    v_hi   timestamptz;
    v_name text;
    v_cut  timestamptz;
    v_part record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7305692535) THEN
        o_action := 'busy';
        o_partition := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    FOR i IN -1 .. greatest(p_days_ahead, 0) LOOP
        v_day := v_today + i;
        v_name := 'request_logs_' || to_char(v_day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(v_name) IS NOT NULL;
        v_lo := v_day::timestamp AT TIME ZONE 'UTC';
        v_hi := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        o_partition := v_name;
        IF EXISTS (SELECT 1 FROM request_logs_default WHERE time >= v_lo AND time < v_hi) THEN
            o_action := 'skipped';
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF request_logs FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_lo, v_hi);
            o_action := 'created';
        END IF;
        RETURN NEXT;
    END LOOP;

    IF p_retention IS NULL THEN
        RETURN;
    END IF;
    v_cut := p_now - p_retention;
    FOR v_part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'request_logs'::regclass
          AND c.relname ~ '^request_logs_[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        v_hi := (to_date(substr(v_part.relname, 14), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN v_hi > v_cut;
        EXECUTE format('DROP TABLE %I', v_part.relname);
        o_action := 'dropped';
        o_partition := v_part.relname;
        RETURN NEXT;
    END LOOP;
    DELETE FROM request_logs_default WHERE time < v_cut;
END
$$;

-- Partitions for today and the next days exist as soon as the schema does,
-- before any writer's first maintenance run.
SELECT isekai_request_logs_maintain(3, NULL);
