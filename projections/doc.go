// Package projections turns events into state: the route table (immutable,
// with a compiled matcher), and the holder that swaps tables atomically.
//
// Everything here is a pure function of events. Projections never touch the
// database and never speak HTTP; they import only the events types.
//
// The files, by concern:
//
//   - route.go: Route, as stored in events, and its compiled Target.
//   - route_input.go: RouteInput, the admin's JSON, with defaults (POST,
//     PUT) and merging (PATCH).
//   - validate.go: Route.Validate, NormalizePath and the field rules.
//   - route_state.go: RouteState, the mutable fold of route events.
//   - route_table.go: RouteTable, the immutable table a node serves, and
//     conflicts between routes.
//   - matcher.go: the segment tries behind RouteTable.Match.
//   - routes.go: Routes, the holder the request path reads without locks.
package projections
