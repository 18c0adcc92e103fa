// Package projections turns events into state: the route table (immutable,
// with a compiled matcher), the holder that swaps tables atomically, the
// replay of the log up to a point (Replay, ReplayFrom, At) with one decode
// per route (BatchFold), snapshots of a table (their encoding, and the
// node's local last-good file), and field-level diffs between route
// versions (DiffRoutes).
//
// Everything here is a pure function of events. Projections never touch the
// database and never speak HTTP; they import only the events types and read
// the log and its stored snapshots through small interfaces (EventReader,
// SnapshotSource).
package projections
