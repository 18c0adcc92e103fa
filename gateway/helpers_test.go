package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// fakeRoutes is a minimal Routes: first match wins, segment-aware prefix.
type fakeRoutes struct{ routes []*projections.Route }

func (f *fakeRoutes) Match(host, method, path string) (*projections.Route, int, bool) {
	for _, r := range f.routes {
		if r.Host != "" && r.Host != host {
			continue
		}
		if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
			continue
		}
		prefix := strings.TrimSuffix(r.Path, "/")
		if path == prefix || prefix == "" || strings.HasPrefix(path, prefix+"/") {
			return r, len(prefix), true
		}
	}
	return nil, 0, false
}

// route builds a compiled route; opts adjust it before compiling.
func route(t testing.TB, path, target string, opts ...func(*projections.Route)) *projections.Route {
	t.Helper()
	r := &projections.Route{
		ID: uuid.New(), Path: path, TargetURL: target,
		StripPath: true, Enabled: true, Timeout: 30,
	}
	for _, o := range opts {
		o(r)
	}
	if err := r.Compile(); err != nil {
		t.Fatalf("compiling route %q -> %q: %v", path, target, err)
	}
	return r
}

func timeout(seconds int) func(*projections.Route) {
	return func(r *projections.Route) { r.Timeout = seconds }
}

// gateway is a Server serving on a loopback listener.
type testGateway struct {
	*Server
	addr string
	url  string
}

// startGateway serves routes on 127.0.0.1 until the test ends.
func startGateway(t testing.TB, cfg Config, routes ...*projections.Route) *testGateway {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	table := &fakeRoutes{routes: routes}
	s, err := New(cfg, func() Routes { return table })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := ln.Addr().String()
	return &testGateway{Server: s, addr: addr, url: "http://" + addr}
}

// startBackend serves h with fasthttp on 127.0.0.1 and returns its address.
func startBackend(t testing.TB, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h, NoDefaultServerHeader: true, NoDefaultDate: true, MaxRequestBodySize: 64 << 20}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return ln.Addr().String()
}

// startRawBackend accepts connections on 127.0.0.1 and runs handle on each,
// for upstreams that must misbehave at the byte level.
func startRawBackend(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readRawRequest reads one request (head and body) from br; it returns the
// parsed request with its body read into memory.
func readRawRequest(br *bufio.Reader) (*http.Request, []byte, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(req.Body)
	return req, body, err
}

// client returns an HTTP client that never follows redirects and whose
// idle connections are closed when the test ends.
func client(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// get sends a request and returns the response with its body read.
func send(t testing.TB, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body of %s %s: %v", req.Method, req.URL, err)
	}
	return resp, string(body)
}

func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// rawExchange writes raw bytes to addr and returns everything the server
// sends until it closes the connection or the deadline passes.
func rawExchange(t testing.TB, addr, raw string, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	out, err := io.ReadAll(c)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, net.ErrClosed) &&
		!strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return string(out)
}
