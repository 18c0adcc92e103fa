-- Snapshots of the route projection: the whole route table as of one log
-- position, so that a starting node, `isekai replay` and point-in-time reads
-- load the newest snapshot at or before the point they want and fold only
-- the events after it, instead of the log from position 1.
--
-- A snapshot is derived data: deleting any or all of them loses nothing but
-- speed. Each one names the hash of the event at its position (the chain of
-- 0003), and readers join on it: a snapshot whose event was altered or whose
-- log was replaced by another one is never used.
--
-- data is the gzip'd JSON encoding of projections.Snapshot; it is stored
-- EXTERNAL (out of line, not compressed again by TOAST).
-- Writers take the try-lock 7305692536 (distinct from the append lock
-- 7305692533, the migration lock 7305692534 and the request-log maintenance
-- lock 7305692535), so that nodes reaching the same position do not write it
-- twice.

CREATE TABLE snapshots (
    position   bigint      PRIMARY KEY CHECK (position > 0),
    event_hash bytea       NOT NULL CHECK (octet_length(event_hash) = 32),
    format     int         NOT NULL,
    routes     int         NOT NULL,
    data       bytea       NOT NULL,
    node       text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE snapshots ALTER COLUMN data SET STORAGE EXTERNAL;
