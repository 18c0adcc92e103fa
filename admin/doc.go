// Package admin is the admin REST API on ADMIN_PORT: route CRUD as events
// appended to the log, route history, the event feed, and the node's
// health, readiness and status.
//
// Writes go to the events.Store; reads come from the node's projection,
// never from ad-hoc SQL. Every error leaves through one mapping (errors.go)
// in the seed's envelope {"success":false,"error":...,"code":...}.
package admin
