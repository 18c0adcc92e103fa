-- Audit queries filter the log by actor (GET /api/events?actor=), paging by
-- position: without an index that is a scan of the whole log (about 1 s per
-- page at 1 000 000 events, for an actor with few events). The index serves
-- "actor = $1 AND position > $2 ORDER BY position LIMIT n" directly.
-- Built inside the migration's transaction, it holds appends back while it
-- builds: about 1 s per million events here.
CREATE INDEX events_actor_position ON events ((metadata->>'actor'), position);
