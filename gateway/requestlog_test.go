package gateway

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fasthttp"
)

type recorder struct {
	mu   sync.Mutex
	recs []Record
}

func (r *recorder) Record(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func (r *recorder) last(t *testing.T) Record {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		r.mu.Lock()
		n := len(r.recs)
		var rec Record
		if n > 0 {
			rec = r.recs[n-1]
		}
		r.mu.Unlock()
		if n > 0 {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatal("no record")
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.recs = nil
	r.mu.Unlock()
}

// Every answered request leaves one Record with what the client got and
// what the upstream said, including the gateway's own refusals.
func TestRequestRecords(t *testing.T) {
	t.Parallel()
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/v1/fail" {
			ctx.SetStatusCode(500)
		}
		ctx.SetBodyString("0123456789")
	})
	ok := route(t, "/api", "http://"+backend+"/v1")
	dead := route(t, "/dead", "http://127.0.0.1:1")
	rec := &recorder{}
	gw := startGateway(t, Config{Recorder: rec, LogQuery: true}, ok, dead)
	c := client(t)

	for _, tc := range []struct {
		name     string
		method   string
		path     string
		body     string
		status   int
		route    uuid.UUID
		upStatus int
		upstream string
		bytesOut int64
	}{
		{name: "proxied", method: "POST", path: "/api/users?x=1", body: "hello", status: 200, route: ok.ID, upStatus: 200, upstream: ok.TargetURL, bytesOut: 10},
		{name: "upstream 500 is recorded as 500", method: "GET", path: "/api/fail", status: 500, route: ok.ID, upStatus: 500, upstream: ok.TargetURL, bytesOut: 10},
		{name: "no route", method: "GET", path: "/nowhere", status: 404, route: uuid.Nil},
		{name: "upstream refused", method: "GET", path: "/dead/x", status: 502, route: dead.ID, upstream: dead.TargetURL},
		{name: "method refused", method: "TRACE", path: "/api", status: 405},
	} {
		rec.reset()
		var body *strings.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		req := newRequest(t, tc.method, gw.url+tc.path, nil)
		if body != nil {
			req = newRequest(t, tc.method, gw.url+tc.path, body)
		}
		req.Header.Set("User-Agent", "isekai-test/1")
		req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		resp, _ := send(t, c, req)
		r := rec.last(t)
		if r.Status != resp.StatusCode || r.Status != tc.status || r.RouteID != tc.route || r.UpstreamStatus != tc.upStatus ||
			r.Upstream != tc.upstream || r.Method != tc.method {
			t.Errorf("%s: record %+v, response %d", tc.name, r, resp.StatusCode)
		}
		if tc.status == 405 {
			continue
		}
		wantPath, wantQuery, _ := strings.Cut(tc.path, "?")
		if r.Path != wantPath || r.Query != wantQuery || r.Host != "127.0.0.1" || r.UserAgent != "isekai-test/1" ||
			r.RequestID == "" || r.RequestID != resp.Header.Get("X-Request-ID") || r.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" ||
			!r.ClientIP.IsLoopback() || r.Latency <= 0 || r.Time.IsZero() || r.BytesIn != int64(len(tc.body)) {
			t.Errorf("%s: record %+v", tc.name, r)
		}
		if tc.bytesOut > 0 && (r.BytesOut != tc.bytesOut || r.UpstreamLatency <= 0 || r.UpstreamLatency > r.Latency) {
			t.Errorf("%s: bytes out %d, upstream latency %v of %v", tc.name, r.BytesOut, r.UpstreamLatency, r.Latency)
		}
	}
}

// Without LogQuery the query string stays out of the record.
func TestRequestRecordOmitsQueryByDefault(t *testing.T) {
	t.Parallel()
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {})
	rec := &recorder{}
	gw := startGateway(t, Config{Recorder: rec}, route(t, "/", "http://"+backend))
	send(t, client(t), newRequest(t, "GET", gw.url+"/a?token=secret", nil))
	if r := rec.last(t); r.Query != "" || r.Path != "/a" {
		t.Errorf("record %+v", r)
	}
}
