-- The event log: one row per event, immutable, with gapless commit-ordered
-- positions. Appends go through isekai_append, which serializes them under a
-- transaction-scoped advisory lock (a bare bigserial would let concurrent
-- transactions commit out of order and a reader skip events forever).

CREATE TABLE events (
    position   bigint      PRIMARY KEY CHECK (position > 0),
    event_id   uuid        NOT NULL UNIQUE,
    stream     text        NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    type       text        NOT NULL,
    data       jsonb       NOT NULL,
    metadata   jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version)
);

CREATE INDEX events_type_position ON events (type, position);
CREATE INDEX events_created_at ON events (created_at);

CREATE FUNCTION isekai_events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on events is not allowed', TG_OP
        USING ERRCODE = 'IS403';
END
$$;

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION isekai_events_immutable();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION isekai_events_immutable();

-- isekai_append appends the given events atomically, in order, in one round
-- trip. Under the append lock it:
--   * returns the stored rows (o_duplicate = true) when every id is already
--     in the log: an idempotent retry appends nothing;
--   * fails with IS412 when p_expected_head is not null and differs from the
--     head;
--   * fails with IS409 when a stream is not at its expected version
--     (a negative expected version skips the check);
--   * inserts at head+1, head+2, ... and NOTIFYs isekai_events with the new
--     head (delivered on commit; only a wake-up for the listeners).
CREATE FUNCTION isekai_append(
    p_ids           uuid[],
    p_streams       text[],
    p_expected      bigint[],
    p_types         text[],
    p_data          jsonb[],
    p_metadata      jsonb[],
    p_expected_head bigint
) RETURNS TABLE (
    o_position   bigint,
    o_event_id   uuid,
    o_stream     text,
    o_version    bigint,
    o_type       text,
    o_data       jsonb,
    o_metadata   jsonb,
    o_created_at timestamptz,
    o_duplicate  boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    n        int := coalesce(cardinality(p_ids), 0);
    head     bigint;
    cur      bigint;
    existing int;
    ts       timestamptz;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    -- The append lock: one appender at a time, across every node.
    PERFORM pg_advisory_xact_lock(7305692533);
    ts := clock_timestamp();

    SELECT count(*) INTO existing FROM events WHERE event_id = ANY (p_ids);
    IF existing = n THEN
        RETURN QUERY
            SELECT e.position, e.event_id, e.stream, e.version, e.type, e.data,
                   e.metadata, e.created_at, true
            FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.position;
        RETURN;
    ELSIF existing > 0 THEN
        RAISE EXCEPTION 'some of the event ids are already in the log'
            USING ERRCODE = 'IS409', DETAIL = 'partial duplicate';
    END IF;

    SELECT coalesce(max(position), 0) INTO head FROM events;
    IF p_expected_head IS NOT NULL AND head <> p_expected_head THEN
        RAISE EXCEPTION 'log head is %, expected %', head, p_expected_head
            USING ERRCODE = 'IS412', DETAIL = head::text;
    END IF;

    FOR i IN 1 .. n LOOP
        SELECT coalesce(max(version), 0) INTO cur FROM events WHERE stream = p_streams[i];
        IF p_expected[i] >= 0 AND cur <> p_expected[i] THEN
            RAISE EXCEPTION 'stream % is at version %, expected %', p_streams[i], cur, p_expected[i]
                USING ERRCODE = 'IS409', DETAIL = cur::text, HINT = p_streams[i];
        END IF;
        head := head + 1;
        INSERT INTO events (position, event_id, stream, version, type, data, metadata, created_at)
        VALUES (head, p_ids[i], p_streams[i], cur + 1, p_types[i], p_data[i], p_metadata[i], ts);
        o_position := head;
        o_event_id := p_ids[i];
        o_stream := p_streams[i];
        o_version := cur + 1;
        o_type := p_types[i];
        o_data := p_data[i];
        o_metadata := p_metadata[i];
        o_created_at := ts;
        o_duplicate := false;
        RETURN NEXT;
    END LOOP;

    PERFORM pg_notify('isekai_events', head::text);
END
$$;
