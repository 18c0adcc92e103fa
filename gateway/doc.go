// Package gateway is Isekai's data path: a fiber v2 app on fasthttp that
// matches every request against the in-memory route projection and proxies
// it to the route's upstream over pooled keep-alive connections.
//
// It owns the request path only: matching (through the Routes interface it
// declares), header hygiene (hop-by-hop fields, X-Forwarded-*, X-Request-ID,
// W3C traceparent), the upstream connection registry, response framing
// checks and the JSON error contract. It never touches the database and
// never logs per request; everything it reads on the hot path is either the
// immutable route table or lock-free per-target state that survives table
// swaps.
//
// One file per concern: server.go (lifecycle and the fiber app), proxy.go
// (the catch-all handler), headers.go (request and response rewriting),
// upstreams.go (HostClient registry and the upstream exchange), framing.go
// (the upstream connection wrapper that refuses ambiguous framing), and
// errors.go (status mapping and the JSON failure bodies).
package gateway
