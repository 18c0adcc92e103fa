// Package projections turns events into state: the route table (immutable,
// with a compiled matcher), the holder that swaps tables atomically, the
// replay of the log up to a point (Replay, At), and field-level diffs
// between route versions (DiffRoutes).
//
// Everything here is a pure function of events. Projections never touch the
// database and never speak HTTP; they import only the events types and read
// the log through a one-method interface.
package projections
