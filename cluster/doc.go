// Package cluster owns the node registry: the nodes table in the shared
// Postgres (migrations/0004_nodes.sql), where every gateway node registers,
// reports each log position it applies and heartbeats, so that the
// cluster's convergence is visible (View) and waitable (WaitApplied).
//
// Liveness is computed with the database clock, never a node's. Reports
// never block the caller: the newest position is kept in memory and sent by
// one goroutine, coalesced and retried across outages. Waiters are woken by
// NOTIFY on isekai_nodes through a dedicated LISTEN session, with a short
// poll while that session is down.
//
// Besides events, it is the one package that speaks SQL, and only to the
// nodes table (plus the head of the events table); it knows nothing of
// routes, HTTP or projections.
package cluster
