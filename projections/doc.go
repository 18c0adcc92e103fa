// Package projections turns events into state: the route table (immutable,
// with a compiled matcher), and the holder that swaps tables atomically.
//
// Everything here is a pure function of events. Projections never touch the
// database and never speak HTTP; they import only the events types.
package projections
