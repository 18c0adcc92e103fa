-- Tamper evidence: every event stores a SHA-256 hash chaining it to the
-- event before it, computed by isekai_append under the append lock:
--
--   hash(p) = sha256(hash(p-1) || isekai_event_canonical(row p))
--   hash(0) = 32 zero bytes
--
-- The canonical bytes of an event are eight fields, each encoded as its
-- UTF-8 byte length in decimal, a colon, then its UTF-8 bytes:
--   position (decimal), event_id (lower-case 8-4-4-4-12 hex), stream,
--   version (decimal), type, data::text, metadata::text (jsonb's own
--   normalized text), created_at (microseconds since the Unix epoch,
--   decimal).
-- Nothing in it depends on session settings (TimeZone, DateStyle), so any
-- session, or a Go program (events.ChainHash), recomputes the same bytes.
--
-- Editing, deleting or renumbering a row (after disabling events_immutable)
-- breaks the chain at that position, or at the next one if the editor also
-- recomputed the row's hash; events.VerifyChain finds the first break.

-- Both functions are declared STABLE, like convert_to and extract, so that
-- the planner inlines them into isekai_append's expressions once per
-- session: an IMMUTABLE SQL function calling STABLE ones is not inlined and
-- costs two executor runs per field on every append.
CREATE FUNCTION isekai_chain_field(v text) RETURNS bytea
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT convert_to(octet_length(convert_to(v, 'UTF8'))::text || ':', 'UTF8') || convert_to(v, 'UTF8')
$$;

CREATE FUNCTION isekai_event_canonical(
    p_position   bigint,
    p_event_id   uuid,
    p_stream     text,
    p_version    bigint,
    p_type       text,
    p_data       jsonb,
    p_metadata   jsonb,
    p_created_at timestamptz
) RETURNS bytea
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT isekai_chain_field(p_position::text)
        || isekai_chain_field(p_event_id::text)
        || isekai_chain_field(p_stream)
        || isekai_chain_field(p_version::text)
        || isekai_chain_field(p_type)
        || isekai_chain_field(p_data::text)
        || isekai_chain_field(p_metadata::text)
        || isekai_chain_field(((extract(epoch FROM p_created_at) * 1000000)::bigint)::text)
$$;

-- The append lock first: an append already running finishes before the
-- backfill reads the log, and none starts until this migration commits.
SELECT pg_advisory_xact_lock(7305692533);

ALTER TABLE events ADD COLUMN hash bytea;

-- The backfill rewrites every row, which events_immutable forbids; it is off
-- only inside this transaction.
ALTER TABLE events DISABLE TRIGGER events_immutable;
DO $$
DECLARE
    prev bytea := decode(repeat('00', 32), 'hex');
    r    record;
BEGIN
    FOR r IN SELECT * FROM events ORDER BY position LOOP
        prev := sha256(prev || isekai_event_canonical(r.position, r.event_id, r.stream, r.version,
                                                      r.type, r.data, r.metadata, r.created_at));
        UPDATE events SET hash = prev WHERE position = r.position;
    END LOOP;
END
$$;
ALTER TABLE events ENABLE TRIGGER events_immutable;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;
ALTER TABLE events ADD CONSTRAINT events_hash_length CHECK (octet_length(hash) = 32);

-- isekai_append as in 0001 (same arguments, same result), plus the hash of
-- each inserted event. The previous hash comes with the head in the same
-- index lookup, so the chain costs one sha256 per event and no round trip.
CREATE OR REPLACE FUNCTION isekai_append(
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
    prev     bytea;
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

    SELECT e.position, e.hash INTO head, prev FROM events e ORDER BY e.position DESC LIMIT 1;
    IF NOT FOUND THEN
        head := 0;
        prev := decode(repeat('00', 32), 'hex');
    END IF;
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
        prev := sha256(prev || isekai_event_canonical(head, p_ids[i], p_streams[i], cur + 1,
                                                      p_types[i], p_data[i], p_metadata[i], ts));
        INSERT INTO events (position, event_id, stream, version, type, data, metadata, created_at, hash)
        VALUES (head, p_ids[i], p_streams[i], cur + 1, p_types[i], p_data[i], p_metadata[i], ts, prev);
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
