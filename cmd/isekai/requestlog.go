package main

import (
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/gateway"
)

// requestLogRecorder feeds the gateway's records to the request-log writer.
// The record's strings are already copies, so the entry may keep them.
type requestLogRecorder struct {
	w    *events.RequestLogWriter
	node string
}

func (r requestLogRecorder) Record(rec gateway.Record) {
	r.w.Enqueue(&events.RequestLogEntry{
		Time: rec.Time, NodeID: r.node, RouteID: rec.RouteID,
		Method: rec.Method, Host: rec.Host, Path: rec.Path, Query: rec.Query,
		Status: rec.Status, Upstream: rec.Upstream, UpstreamStatus: rec.UpstreamStatus,
		Latency: rec.Latency, UpstreamLatency: rec.UpstreamLatency,
		BytesIn: rec.BytesIn, BytesOut: rec.BytesOut, ClientIP: rec.ClientIP,
		UserAgent: rec.UserAgent, RequestID: rec.RequestID, TraceID: rec.TraceID,
	})
}
