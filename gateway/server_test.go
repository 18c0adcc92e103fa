package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestShutdownDrainsInFlightRequest(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		close(arrived)
		time.Sleep(500 * time.Millisecond)
		ctx.SetBodyString("finished")
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))

	type result struct {
		status int
		body   string
		close  bool
	}
	done := make(chan result, 1)
	go func() {
		resp, body := send(t, client(t), newRequest(t, "GET", gw.url+"/slow", nil))
		done <- result{resp.StatusCode, body, resp.Close}
	}()
	<-arrived

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := gw.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	r := <-done
	if r.status != 200 || r.body != "finished" {
		t.Errorf("in-flight request ended %d %q, want 200 finished", r.status, r.body)
	}
	if !r.close {
		t.Errorf("response during the drain without Connection: close")
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before the in-flight request finished", d)
	}
	if c, err := net.DialTimeout("tcp", gw.addr, time.Second); err == nil {
		_ = c.Close()
		t.Errorf("still accepting connections after Shutdown")
	}
}

func TestShutdownDeadline(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{})
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		close(arrived)
		<-release
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend, timeout(2)))
	done := make(chan struct{})
	go func() {
		defer close(done)
		send(t, client(t), newRequest(t, "GET", gw.url+"/", nil))
	}()
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := gw.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the context's deadline", err)
	}
	close(release)
	<-done
}

func TestShutdownBeforeServe(t *testing.T) {
	t.Parallel()
	s, err := New(Config{Logger: discardLogger()}, func() Routes { return &fakeRoutes{} })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Serve: %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" means valid
	}{
		{name: "zero is all defaults", cfg: Config{}},
		{name: "explicit values", cfg: Config{ReadTimeout: time.Second, MaxHeaderBytes: 8192,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}},
		{name: "negative timeout", cfg: Config{WriteTimeout: -1}, wantErr: "WriteTimeout"},
		{name: "negative body limit", cfg: Config{MaxBodyBytes: -1}, wantErr: "MaxBodyBytes"},
		{name: "tiny header cap", cfg: Config{MaxHeaderBytes: 100}, wantErr: "MaxHeaderBytes"},
		{name: "invalid prefix", cfg: Config{TrustedProxies: []netip.Prefix{{}}}, wantErr: "TrustedProxies[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate = %v, want an error naming %s", err, tt.wantErr)
			}
			if _, err := New(tt.cfg, func() Routes { return nil }); err == nil {
				t.Errorf("New accepted an invalid config")
			}
		})
	}
}

func TestUpstreamsSurviveTableSwaps(t *testing.T) {
	t.Parallel()
	s, err := New(Config{Logger: discardLogger()}, func() Routes { return nil })
	if err != nil {
		t.Fatal(err)
	}
	a := s.upstreams.get(false, "10.0.0.1:80")
	if b := s.upstreams.get(false, "10.0.0.1:80"); a != b {
		t.Errorf("same target gave two HostClients")
	}
	if c := s.upstreams.get(true, "10.0.0.1:80"); c == a {
		t.Errorf("http and https shared a HostClient")
	}
	hc := &a.hc
	if hc.MaxIdemponentCallAttempts != 1 || !hc.NoDefaultUserAgentHeader || !hc.DisablePathNormalizing ||
		!hc.DisableHeaderNamesNormalizing || !hc.StreamResponseBody || hc.MaxConns != DefaultMaxConnsPerTarget {
		t.Errorf("HostClient settings: %+v", hc)
	}
}

func TestHTTPSUpstream(t *testing.T) {
	t.Parallel()
	upstream := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "secure "+r.Host+" "+r.URL.RequestURI())
	}))
	t.Cleanup(upstream.Close)
	pool := x509.NewCertPool()
	pool.AddCert(upstream.Certificate())
	// The test certificate is issued to example.com and 127.0.0.1.
	gw := startGateway(t, Config{UpstreamTLS: &tls.Config{RootCAs: pool}},
		route(t, "/s", upstream.URL+"/base"))
	resp, body := send(t, client(t), newRequest(t, "GET", gw.url+"/s/x?q=1", nil))
	want := "secure " + strings.TrimPrefix(upstream.URL, "https://") + " /base/x?q=1"
	if resp.StatusCode != 200 || body != want {
		t.Errorf("got %d %q, want 200 %q", resp.StatusCode, body, want)
	}

	// Without the test CA the upstream's certificate is refused: 502.
	strict := startGateway(t, Config{}, route(t, "/s", upstream.URL+"/base"))
	resp, body = send(t, client(t), newRequest(t, "GET", strict.url+"/s/x", nil))
	checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), body, 502, "bad_gateway")
}
