// Package events owns Isekai's Postgres side: the event log (event types,
// the Store with append at an expected version, reads from a position and
// of a stream, its Postgres implementation, and the Listener that follows
// the log through LISTEN/NOTIFY with a catch-up read and a safety poll),
// stored snapshots of projections (SnapshotStore, tied to the hash chain),
// the node registry (NodeRegistry: who runs, what each node has applied,
// waits for the whole cluster), and the request log (the COPY writer with
// its disk spool, and the queries behind the admin's log and stats
// endpoints).
//
// It is the only package (with the migration runner) that speaks SQL. It
// knows nothing of routes, HTTP or projections: events and snapshots carry
// opaque bytes, request-log entries plain values.
package events
