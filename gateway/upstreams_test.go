package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// listedRoutes is a fakeRoutes that can also list its routes, as a
// projections.RouteTable does.
type listedRoutes struct{ fakeRoutes }

func (l *listedRoutes) List() []*projections.Route { return l.routes }

func (r *upstreams) keys() map[string]bool {
	out := map[string]bool{}
	if m := r.m.Load(); m != nil {
		for k := range *m {
			out[k.addr] = true
		}
	}
	return out
}

// The upstream registry forgets a target once no route of the current table
// points at it and no connection to it is open — at the next new target —
// and keeps one that still has a request in flight.
func TestUpstreamsForgetUnusedTargets(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slow := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/hold" {
			<-release
		}
		ctx.SetBodyString("slow")
	})
	x := startBackend(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("x") })
	y := startBackend(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("y") })
	z := startBackend(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("z") })

	var table atomic.Pointer[listedRoutes]
	set := func(routes ...*projections.Route) { table.Store(&listedRoutes{fakeRoutes{routes: routes}}) }
	set(route(t, "/a", "http://"+x), route(t, "/s", "http://"+slow))
	s, err := New(Config{Logger: slog.New(slog.DiscardHandler), UpstreamIdleTimeout: 100 * time.Millisecond},
		func() Routes { return table.Load() })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	c := client(t)
	get := func(path, want string) {
		t.Helper()
		resp, err := c.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); string(b) != want {
			t.Fatalf("%s: %d %q, want %q", path, resp.StatusCode, b, want)
		}
	}
	get("/a", "x")
	held := make(chan struct{})
	go func() {
		defer close(held)
		resp, err := c.Get("http://" + ln.Addr().String() + "/s/hold")
		if err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the held request at the slow backend", func() bool {
		m := s.upstreams.m.Load()
		return m != nil && (*m)[upstreamKey{addr: slow}] != nil && (*m)[upstreamKey{addr: slow}].hc.ConnsCount() == 1
	})

	// Neither x nor slow is in the table any more; x's idle connection
	// closes after UpstreamIdleTimeout.
	set(route(t, "/a", "http://"+y))
	waitFor(t, "x's idle connection closed", func() bool { return (*s.upstreams.m.Load())[upstreamKey{addr: x}].hc.ConnsCount() == 0 })
	get("/a", "y")
	if k := s.upstreams.keys(); k[x] || !k[slow] || !k[y] {
		t.Fatalf("after the first new target: %v (x forgotten, slow kept while in flight, y added)", k)
	}

	close(release)
	<-held
	waitFor(t, "slow's connection closed", func() bool { return (*s.upstreams.m.Load())[upstreamKey{addr: slow}].hc.ConnsCount() == 0 })
	set(route(t, "/a", "http://"+y), route(t, "/b", "http://"+z))
	get("/b", "z")
	if k := s.upstreams.keys(); len(k) != 2 || !k[y] || !k[z] {
		t.Fatalf("after the second new target: %v, want y and z", k)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
