// Package events owns Isekai's event log: the event types, the Store
// (append with expected version, read from a position, read a stream), its
// Postgres implementation, and the Listener that follows the log through
// LISTEN/NOTIFY with a catch-up read and a safety poll.
//
// It is the only package (with the migration runner) that speaks SQL. It
// knows nothing of routes, HTTP or projections: events carry opaque JSON.
package events
