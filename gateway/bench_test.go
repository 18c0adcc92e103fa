package gateway

import (
	"bufio"
	"bytes"
	"net"
	"sync/atomic"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

var benchBody = bytes.Repeat([]byte("x"), 100)

func benchBackend(b *testing.B) string {
	return startBackend(b, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.SetContentType("text/plain")
		ctx.SetBody(benchBody)
	})
}

// BenchmarkProxy measures requests through the whole data path over
// loopback sockets: a fasthttp client, the gateway, a fasthttp backend
// answering 100 bytes. Client and backend allocate nothing per request, so
// allocs/op are the gateway's.
func BenchmarkProxy(b *testing.B) {
	backend := benchBackend(b)
	gw := startGateway(b, Config{}, route(b, "/api", "http://"+backend+"/v1"))
	benchClient(b, gw.addr)
}

// BenchmarkProxyRecorded is BenchmarkProxy with a Recorder: the request
// path's share of the request log (copying the record out; the recorder
// here only keeps a count, as an enqueue would cost ≈30 ns more).
func BenchmarkProxyRecorded(b *testing.B) {
	backend := benchBackend(b)
	var rec countingRecorder
	gw := startGateway(b, Config{Recorder: &rec}, route(b, "/api", "http://"+backend+"/v1"))
	benchClient(b, gw.addr)
	if rec.n.Load() < int64(b.N) {
		b.Fatalf("recorded %d of %d requests", rec.n.Load(), b.N)
	}
}

type countingRecorder struct{ n atomic.Int64 }

func (c *countingRecorder) Record(Record) { c.n.Add(1) }

// benchClient drives addr from 32 concurrent clients per CPU.
func benchClient(b *testing.B, addr string) {
	hc := &fasthttp.HostClient{Addr: addr, MaxConns: 512,
		// net.Dial, not fasthttp's default dialer, which starts a global
		// goroutine that would outlive the benchmark.
		Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	b.Cleanup(hc.CloseIdleConnections)

	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	b.SetParallelism(32) // concurrent clients per CPU, as a load generator would have
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + addr + "/api/users/42?page=1")
		req.Header.Set("User-Agent", "bench")
		req.Header.Set("Accept", "*/*")
		for pb.Next() {
			if err := hc.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || len(resp.Body()) != len(benchBody) {
				b.Fatalf("got %d with %d bytes", resp.StatusCode(), len(resp.Body()))
			}
		}
	})
}

// BenchmarkBareProxy is the reference BenchmarkProxy is compared with, in
// the same run: a fasthttp server whose handler is a bare HostClient.Do,
// no header work, no timeouts, no checks (on loopback such a proxy reaches
// 0.65-0.85x nginx; see DESIGN.md).
func BenchmarkBareProxy(b *testing.B) {
	backend := benchBackend(b)
	up := &fasthttp.HostClient{Addr: backend,
		Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	b.Cleanup(up.CloseIdleConnections)
	proxy := startBackend(b, func(ctx *fasthttp.RequestCtx) {
		if err := up.Do(&ctx.Request, &ctx.Response); err != nil {
			ctx.Error("bad gateway", fasthttp.StatusBadGateway)
		}
	})
	benchClient(b, proxy)
}

// BenchmarkProxyHandler measures the gateway's handler alone, one request
// at a time, from a parsed request to a response read from a loopback
// backend: every allocation it reports is the gateway's.
func BenchmarkProxyHandler(b *testing.B) {
	backend := benchBackend(b)
	table := &fakeRoutes{routes: []*projections.Route{route(b, "/api", "http://"+backend+"/v1")}}
	s, err := New(Config{Logger: discardLogger()}, func() Routes { return table })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.upstreams.closeIdle() })
	h := s.Handler()
	raw := []byte("GET /api/users/42?page=1 HTTP/1.1\r\nHost: gw.example\r\nUser-Agent: bench\r\n" +
		"Accept: */*\r\nConnection: keep-alive\r\nX-Request-ID: bench-1\r\n\r\n")
	src := bytes.NewReader(raw)
	br := bufio.NewReader(src)
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
	var ctx fasthttp.RequestCtx
	ctx.Init(&fasthttp.Request{}, remote, nil)

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ctx.Request.Reset()
		ctx.Response.Reset()
		src.Reset(raw)
		br.Reset(src)
		if err := ctx.Request.Read(br); err != nil {
			b.Fatal(err)
		}
		h(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}
