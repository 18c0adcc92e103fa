package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// echoBackend answers every request with what it received, in headers.
func echoBackend(t testing.TB) string {
	return startBackend(t, func(ctx *fasthttp.RequestCtx) {
		h := &ctx.Response.Header
		h.Set("X-Got-URI", string(ctx.Request.Header.RequestURI()))
		h.Set("X-Got-Host", string(ctx.Request.Header.Host()))
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
			"X-Real-Ip", "X-Request-Id", "Traceparent", "Tracestate", "Forwarded"} {
			if v := ctx.Request.Header.Peek(k); v != nil {
				h.Set("X-Got-"+k, string(v))
			}
		}
		ctx.SetBodyString("echo")
	})
}

func TestForwardedPathAndQuery(t *testing.T) {
	t.Parallel()
	backend := echoBackend(t)
	base := "http://" + backend
	tests := []struct {
		name      string
		routePath string
		target    string
		strip     bool
		reqURI    string
		wantURI   string // "" means 404
	}{
		{name: "base and empty rest", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api", wantURI: "/v1"},
		{name: "base and slash rest", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/", wantURI: "/v1/"},
		{name: "base and rest", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/users/7", wantURI: "/v1/users/7"},
		{name: "target trailing slash", routePath: "/api", target: base + "/v1/", strip: true, reqURI: "/api/users", wantURI: "/v1/users"},
		{name: "no base and empty rest", routePath: "/api", target: base, strip: true, reqURI: "/api", wantURI: "/"},
		{name: "no base", routePath: "/api", target: base, strip: true, reqURI: "/api/x", wantURI: "/x"},
		{name: "no strip", routePath: "/api", target: base + "/v1", strip: false, reqURI: "/api/x", wantURI: "/v1/api/x"},
		{name: "no strip no base", routePath: "/api", target: base, strip: false, reqURI: "/api/x", wantURI: "/api/x"},
		{name: "root route", routePath: "/", target: base + "/v1", strip: true, reqURI: "/x/y", wantURI: "/v1/x/y"},
		{name: "target and request query", routePath: "/api", target: base + "/v1?key=k", strip: true, reqURI: "/api/u?b=2&c=3", wantURI: "/v1/u?key=k&b=2&c=3"},
		{name: "request query only", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/u?b=2", wantURI: "/v1/u?b=2"},
		{name: "target query only", routePath: "/api", target: base + "/v1?key=k", strip: true, reqURI: "/api", wantURI: "/v1?key=k"},
		{name: "escaped space", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/a%20b", wantURI: "/v1/a%20b"},
		{name: "escaped percent", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/100%25", wantURI: "/v1/100%25"},
		{name: "dot segments resolved", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/a/../b", wantURI: "/v1/b"},
		{name: "repeated slashes merged", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api//a///b", wantURI: "/v1/a/b"},
		{name: "traversal out of the route", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/../admin", wantURI: ""},
		{name: "encoded traversal out of the route", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/api/%2e%2e/admin", wantURI: ""},
		{name: "segment-aware prefix", routePath: "/api", target: base + "/v1", strip: true, reqURI: "/apix", wantURI: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := route(t, tt.routePath, tt.target, func(r *projections.Route) { r.StripPath = tt.strip })
			gw := startGateway(t, Config{}, r)
			// Raw, so that no client cleans the path first.
			out := rawExchange(t, gw.addr, "GET "+tt.reqURI+" HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n", 5*time.Second)
			if tt.wantURI == "" {
				if !strings.HasPrefix(out, "HTTP/1.1 404 ") {
					t.Fatalf("want 404, got %q", out)
				}
				return
			}
			if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
				t.Fatalf("want 200, got %q", out)
			}
			if got := headerValue(out, "X-Got-URI"); got != tt.wantURI {
				t.Errorf("upstream request URI = %q, want %q", got, tt.wantURI)
			}
			if got := headerValue(out, "X-Got-Host"); got != backend {
				t.Errorf("upstream Host = %q, want the target's %q", got, backend)
			}
		})
	}
}

// headerValue returns the first value of name in a raw response.
func headerValue(raw, name string) string {
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n")[1:] {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// headerNames returns the lower-cased field names of a raw header block.
func headerNames(head string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(head, "\r\n")[1:] {
		if k, _, ok := strings.Cut(line, ":"); ok {
			names[strings.ToLower(strings.TrimSpace(k))] = true
		}
	}
	return names
}

// readHead reads a header block (through the empty line) from br.
func readHead(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		if line == "\r\n" || line == "\n" {
			return strings.TrimSuffix(b.String(), "\r\n\r\n"), nil
		}
	}
}

func TestHopByHopHeadersStripped(t *testing.T) {
	t.Parallel()
	heads := make(chan string, 1)
	backend := startRawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		head, err := readHead(br)
		if err != nil {
			return
		}
		heads <- head
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n"+
			"Content-Length: 2\r\n"+
			"connection: keep-alive, X-Hop-Resp\r\n"+
			"Keep-Alive: timeout=5\r\n"+
			"x-hop-resp: secret\r\n"+
			"Proxy-Authenticate: Basic realm=x\r\n"+
			"Upgrade: h2c\r\n"+
			"Trailer: X-Late\r\n"+
			"x-request-id: from-upstream\r\n"+
			"X-Keep-Resp: yes\r\n"+
			"\r\nok")
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))

	out := rawExchange(t, gw.addr, "GET /x HTTP/1.1\r\n"+
		"Host: gw.example\r\n"+
		"Connection: keep-alive, X-Hop-Req\r\n"+
		"Keep-Alive: 300\r\n"+
		"X-Hop-Req: secret\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"TE: trailers\r\n"+
		"Upgrade: websocket\r\n"+
		"X-Real-IP: 6.6.6.6\r\n"+
		"X-Keep-Req: yes\r\n"+
		"\r\n", 2*time.Second)

	upstreamHead := <-heads
	got := headerNames(upstreamHead)
	for _, name := range []string{"connection", "keep-alive", "x-hop-req", "proxy-authorization",
		"proxy-connection", "te", "upgrade"} {
		if got[name] {
			t.Errorf("upstream received hop-by-hop %q:\n%s", name, upstreamHead)
		}
	}
	if !got["x-keep-req"] {
		t.Errorf("upstream lost an end-to-end field:\n%s", upstreamHead)
	}
	if v := headerValue("X\r\n"+upstreamHead, "X-Real-IP"); v != "127.0.0.1" {
		t.Errorf("upstream X-Real-IP = %q, want the peer 127.0.0.1", v)
	}

	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 200 ") || body != "ok" {
		t.Fatalf("response = %q", out)
	}
	resp := headerNames(head)
	for _, name := range []string{"keep-alive", "x-hop-resp", "proxy-authenticate", "upgrade", "trailer"} {
		if resp[name] {
			t.Errorf("client received hop-by-hop %q:\n%s", name, head)
		}
	}
	if v := headerValue(out, "Connection"); v != "" {
		t.Errorf("client received the upstream's Connection %q", v)
	}
	if !resp["x-keep-resp"] {
		t.Errorf("client lost an end-to-end field:\n%s", head)
	}
	if n := strings.Count(strings.ToLower(head), "x-request-id:"); n != 1 {
		t.Errorf("client received %d X-Request-ID fields:\n%s", n, head)
	}
	if v := headerValue(out, "X-Request-ID"); v == "from-upstream" {
		t.Errorf("client received the upstream's X-Request-ID")
	}
}

func TestConnectionCannotDropFraming(t *testing.T) {
	t.Parallel()
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set("X-Got-Host", string(ctx.Request.Header.Host()))
		ctx.SetBody(ctx.Request.Body())
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	out := rawExchange(t, gw.addr, "POST / HTTP/1.1\r\nHost: gw\r\n"+
		"Connection: Content-Length, Host, close\r\nContent-Length: 5\r\n\r\nhello", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.HasSuffix(out, "\r\n\r\nhello") {
		t.Fatalf("response = %q", out)
	}
	if got := headerValue(out, "X-Got-Host"); got != backend {
		t.Errorf("upstream Host = %q, want %q", got, backend)
	}
}

func TestXForwardedHeaders(t *testing.T) {
	t.Parallel()
	backend := echoBackend(t)
	tests := []struct {
		name         string
		trusted      []string
		send         map[string]string
		wantXFF      string
		wantRealIP   string
		wantProto    string
		wantHost     string // "" means the request's Host
		wantForwarde string
	}{
		{
			name: "untrusted peer: everything overwritten",
			send: map[string]string{"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https",
				"X-Forwarded-Host": "evil.example", "X-Real-IP": "6.6.6.6", "Forwarded": "for=1.2.3.4"},
			wantXFF: "127.0.0.1", wantRealIP: "127.0.0.1", wantProto: "http",
		},
		{
			name:    "untrusted peer with a list",
			trusted: []string{"10.0.0.0/8"},
			send:    map[string]string{"X-Forwarded-For": "10.0.0.1, 6.6.6.6"},
			wantXFF: "127.0.0.1", wantRealIP: "127.0.0.1", wantProto: "http",
		},
		{
			name:    "trusted peer: chain appended, client resolved past trusted hops",
			trusted: []string{"127.0.0.0/8", "10.0.0.0/8"},
			send: map[string]string{"X-Forwarded-For": "1.2.3.4, 10.0.0.1", "X-Forwarded-Proto": "https",
				"X-Forwarded-Host": "public.example", "X-Real-IP": "6.6.6.6", "Forwarded": "for=1.2.3.4"},
			wantXFF: "1.2.3.4, 10.0.0.1, 127.0.0.1", wantRealIP: "1.2.3.4", wantProto: "https",
			wantHost: "public.example", wantForwarde: "for=1.2.3.4",
		},
		{
			name:    "trusted peer: garbage left of the client is ignored",
			trusted: []string{"127.0.0.0/8"},
			send:    map[string]string{"X-Forwarded-For": "<script>, 5.6.7.8"},
			wantXFF: "<script>, 5.6.7.8, 127.0.0.1", wantRealIP: "5.6.7.8", wantProto: "http",
		},
		{
			name:    "trusted peer: garbage as the nearest hop stops the walk",
			trusted: []string{"127.0.0.0/8"},
			send:    map[string]string{"X-Forwarded-For": "5.6.7.8, <script>"},
			wantXFF: "5.6.7.8, <script>, 127.0.0.1", wantRealIP: "127.0.0.1", wantProto: "http",
		},
		{
			name:    "trusted peer without forwarding headers",
			trusted: []string{"127.0.0.0/8"},
			wantXFF: "127.0.0.1", wantRealIP: "127.0.0.1", wantProto: "http",
		},
		{
			name:    "trusted peer with a bogus proto",
			trusted: []string{"127.0.0.0/8"},
			send:    map[string]string{"X-Forwarded-Proto": "javascript"},
			wantXFF: "127.0.0.1", wantRealIP: "127.0.0.1", wantProto: "http",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg Config
			for _, p := range tt.trusted {
				cfg.TrustedProxies = append(cfg.TrustedProxies, netip.MustParsePrefix(p))
			}
			gw := startGateway(t, cfg, route(t, "/", "http://"+backend))
			req := newRequest(t, "GET", gw.url+"/", nil)
			req.Host = "gw.example:8080"
			for k, v := range tt.send {
				req.Header.Set(k, v)
			}
			resp, _ := send(t, client(t), req)
			check := func(field, want string) {
				t.Helper()
				if got := resp.Header.Get("X-Got-" + field); got != want {
					t.Errorf("upstream %s = %q, want %q", field, got, want)
				}
			}
			check("X-Forwarded-For", tt.wantXFF)
			check("X-Real-Ip", tt.wantRealIP)
			check("X-Forwarded-Proto", tt.wantProto)
			wantHost := tt.wantHost
			if wantHost == "" {
				wantHost = "gw.example:8080"
			}
			check("X-Forwarded-Host", wantHost)
			check("Forwarded", tt.wantForwarde)
		})
	}
}

var (
	hex32       = regexp.MustCompile(`^[0-9a-f]{32}$`)
	traceparent = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`)
)

func TestRequestIDAndTraceparent(t *testing.T) {
	t.Parallel()
	backend := echoBackend(t)
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	const validTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name        string
		requestID   string
		traceparent string
		tracestate  string
		keepID      bool
		keepTrace   bool
	}{
		{name: "none sent"},
		{name: "sane id kept", requestID: "abc-123_X.y", keepID: true},
		{name: "id with a space replaced", requestID: "bad id"},
		{name: "id with markup replaced", requestID: "<script>"},
		{name: "id too long replaced", requestID: strings.Repeat("a", 129)},
		{name: "id of 128 kept", requestID: strings.Repeat("a", 128), keepID: true},
		{name: "valid traceparent forwarded with tracestate", traceparent: validTP, tracestate: "k=v", keepTrace: true},
		{name: "future version forwarded", traceparent: "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", keepTrace: true},
		{name: "upper-case traceparent replaced, tracestate dropped", traceparent: strings.ToUpper(validTP), tracestate: "k=v"},
		{name: "zero trace id replaced", traceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{name: "version ff replaced", traceparent: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := newRequest(t, "GET", gw.url+"/", nil)
			if tt.requestID != "" {
				req.Header.Set("X-Request-ID", tt.requestID)
			}
			if tt.traceparent != "" {
				req.Header.Set("traceparent", tt.traceparent)
			}
			if tt.tracestate != "" {
				req.Header.Set("tracestate", tt.tracestate)
			}
			resp, _ := send(t, client(t), req)
			upID, clientID := resp.Header.Get("X-Got-X-Request-Id"), resp.Header.Get("X-Request-Id")
			if upID != clientID {
				t.Errorf("upstream got X-Request-ID %q, client got %q", upID, clientID)
			}
			if tt.keepID && upID != tt.requestID {
				t.Errorf("X-Request-ID = %q, want the client's %q", upID, tt.requestID)
			}
			if !tt.keepID && !hex32.MatchString(upID) {
				t.Errorf("X-Request-ID = %q, want a generated one", upID)
			}
			tp, ts := resp.Header.Get("X-Got-Traceparent"), resp.Header.Get("X-Got-Tracestate")
			if tt.keepTrace {
				if tp != tt.traceparent || ts != tt.tracestate {
					t.Errorf("traceparent, tracestate = %q, %q; want the client's", tp, ts)
				}
				return
			}
			if !traceparent.MatchString(tp) || !validTraceparent([]byte(tp)) {
				t.Errorf("traceparent = %q, want a generated one", tp)
			}
			if ts != "" {
				t.Errorf("tracestate %q forwarded without a valid traceparent", ts)
			}
		})
	}
}

func TestRedirectReturnedNotFollowed(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		hits.Add(1)
		ctx.Redirect("/elsewhere?x=1", fasthttp.StatusFound)
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	resp, _ := send(t, client(t), newRequest(t, "GET", gw.url+"/start", nil))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status = %d, want 302", resp.StatusCode)
	}
	if loc := resp.Header.Get("Location"); !strings.HasSuffix(loc, "/elsewhere?x=1") {
		t.Errorf("Location = %q", loc)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("upstream saw %d requests, want 1", n)
	}
}

func TestResponsePassedThrough(t *testing.T) {
	t.Parallel()
	backend := startRawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, _, err := readRawRequest(br)
			if err != nil {
				return
			}
			var resp string
			switch req.URL.Path {
			case "/plain":
				resp = "HTTP/1.1 201 Created Here\r\nServer: upstream/1\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nx-lower: v\r\nContent-Length: 3\r\n\r\nabc"
			case "/empty":
				resp = "HTTP/1.1 204 No Content\r\n\r\n"
			case "/head":
				resp = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
			case "/chunked":
				resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
			case "/http10":
				resp = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"
			}
			if _, err := io.WriteString(c, resp); err != nil || req.URL.Path == "/http10" {
				return
			}
		}
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))

	out := rawExchange(t, gw.addr, "GET /plain HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 2*time.Second)
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 201 Created Here\r\n") || body != "abc" {
		t.Fatalf("response = %q", out)
	}
	names := headerNames(head)
	if names["content-type"] {
		t.Errorf("gateway added a Content-Type the upstream did not send:\n%s", head)
	}
	if headerValue(out, "Server") != "upstream/1" || strings.Count(head, "Date:") != 1 ||
		headerValue(out, "Date") != "Mon, 02 Jan 2006 15:04:05 GMT" {
		t.Errorf("Server/Date not passed through as sent:\n%s", head)
	}
	if !strings.Contains(head, "\r\nx-lower: v") {
		t.Errorf("upstream field-name case not kept:\n%s", head)
	}

	c := client(t)
	if resp, body := send(t, c, newRequest(t, "GET", gw.url+"/empty", nil)); resp.StatusCode != 204 || body != "" {
		t.Errorf("204: got %d %q", resp.StatusCode, body)
	}
	if resp, _ := send(t, c, newRequest(t, "HEAD", gw.url+"/head", nil)); resp.StatusCode != 200 || resp.ContentLength != 1234 {
		t.Errorf("HEAD: got %d with Content-Length %d, want 200 with 1234", resp.StatusCode, resp.ContentLength)
	}
	if resp, body := send(t, c, newRequest(t, "GET", gw.url+"/chunked", nil)); resp.StatusCode != 200 || body != "abcde" {
		t.Errorf("chunked: got %d %q", resp.StatusCode, body)
	}
	// An HTTP/1.0 client cannot read chunked: the body comes with a length.
	out = rawExchange(t, gw.addr, "GET /chunked HTTP/1.0\r\nHost: gw\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || headerValue(out, "Content-Length") != "5" ||
		!strings.HasSuffix(out, "\r\n\r\nabcde") {
		t.Errorf("chunked upstream to an HTTP/1.0 client: %q", out)
	}
	if resp, body := send(t, c, newRequest(t, "GET", gw.url+"/http10", nil)); resp.ProtoMinor != 1 || body != "hi" {
		t.Errorf("HTTP/1.0 upstream: got %s %q, want HTTP/1.1 to the client", resp.Proto, body)
	}
}

// failureBody is the JSON error envelope.
type failureBody struct {
	Success *bool  `json:"success"`
	Error   string `json:"error"`
	Code    string `json:"code"`
}

// checkFailure asserts a JSON failure with a generic message.
func checkFailure(t testing.TB, status int, contentType, body string, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status = %d, want %d (body %q)", status, wantStatus, body)
	}
	if contentType != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", contentType)
	}
	var fb failureBody
	if err := json.Unmarshal([]byte(body), &fb); err != nil {
		t.Fatalf("body %q is not the JSON envelope: %v", body, err)
	}
	if fb.Success == nil || *fb.Success || fb.Code != wantCode || fb.Error == "" {
		t.Errorf("body = %q, want success false and code %q", body, wantCode)
	}
	for _, leak := range []string{"127.0.0.1", "dial", "tcp", "fasthttp", "EOF", "gateway:"} {
		if strings.Contains(body, leak) {
			t.Errorf("body %q leaks %q", body, leak)
		}
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		return addr
	}
	raw := func(respond func(c net.Conn)) func(t *testing.T) string {
		return func(t *testing.T) string {
			return startRawBackend(t, func(c net.Conn) {
				if _, _, err := readRawRequest(bufio.NewReader(c)); err != nil {
					return
				}
				respond(c)
			})
		}
	}
	tests := []struct {
		name       string
		upstream   func(t *testing.T) string
		path       string
		wantStatus int
		wantCode   string
	}{
		{name: "no route", upstream: closedPort, path: "/nowhere", wantStatus: 404, wantCode: "route_not_found"},
		{name: "connection refused", upstream: closedPort, path: "/api", wantStatus: 502, wantCode: "bad_gateway"},
		{name: "connection reset", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(c net.Conn) {
			_ = c.(*net.TCPConn).SetLinger(0)
		})},
		{name: "closed without response", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(net.Conn) {})},
		{name: "not HTTP", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(c net.Conn) {
			_, _ = io.WriteString(c, "SSH-2.0-OpenSSH\r\n\r\n")
		})},
		{name: "truncated body", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
		})},
		{name: "unasked protocol switch", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		})},
		{name: "two content lengths", path: "/api", wantStatus: 502, wantCode: "bad_gateway", upstream: raw(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gw := startGateway(t, Config{}, route(t, "/api", "http://"+tt.upstream(t)))
			resp, body := send(t, client(t), newRequest(t, "GET", gw.url+tt.path, nil))
			checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.wantStatus, tt.wantCode)
			if !hex32.MatchString(resp.Header.Get("X-Request-ID")) {
				t.Errorf("failure without X-Request-ID: %v", resp.Header)
			}
		})
	}
}

func TestNoRouteTable(t *testing.T) {
	t.Parallel()
	s, err := New(Config{}, func() Routes { return nil })
	if err != nil {
		t.Fatal(err)
	}
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/x")
	ctx.Request.Header.SetHost("gw")
	s.Handler()(&ctx)
	checkFailure(t, ctx.Response.StatusCode(), string(ctx.Response.Header.ContentType()),
		string(ctx.Response.Body()), 503, "service_unavailable")
}

type panicRoutes struct{}

func (panicRoutes) Match(string, string, string) (*projections.Route, int, bool) { panic("boom") }

func TestPanicAnswered500(t *testing.T) {
	t.Parallel()
	s, err := New(Config{Logger: discardLogger()}, func() Routes { return panicRoutes{} })
	if err != nil {
		t.Fatal(err)
	}
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/x")
	ctx.Request.Header.SetHost("gw")
	s.Handler()(&ctx)
	checkFailure(t, ctx.Response.StatusCode(), string(ctx.Response.Header.ContentType()),
		string(ctx.Response.Body()), 500, "internal_error")
}

func TestMethods(t *testing.T) {
	t.Parallel()
	backend := echoBackend(t)
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	tests := []struct {
		method     string
		wantStatus int
		wantCode   string
	}{
		{method: "GET", wantStatus: 200},
		{method: "PATCH", wantStatus: 200},
		{method: "DELETE", wantStatus: 200},
		{method: "TRACE", wantStatus: 405, wantCode: "method_not_allowed"},
		{method: "PROPFIND", wantStatus: 501, wantCode: "not_implemented"},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			t.Parallel()
			resp, body := send(t, client(t), newRequest(t, tt.method, gw.url+"/", nil))
			if tt.wantCode == "" {
				if resp.StatusCode != tt.wantStatus {
					t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
				}
				return
			}
			checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.wantStatus, tt.wantCode)
		})
	}
}

func TestUpstreamTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		select {
		case <-time.After(3 * time.Second):
		case <-release:
		}
		ctx.SetBodyString("late")
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend, timeout(1)))
	start := time.Now()
	resp, body := send(t, client(t), newRequest(t, "POST", gw.url+"/slow", strings.NewReader("x")))
	elapsed := time.Since(start)
	checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), body, 504, "gateway_timeout")
	if elapsed < 900*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("504 after %v, want about the 1s route timeout", elapsed)
	}
}

func TestStaleConnectionRetriedForSafeMethods(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	// Answers one request per connection, then closes it without saying
	// so: the pooled connection is dead when the next request takes it.
	backend := startRawBackend(t, func(c net.Conn) {
		if _, _, err := readRawRequest(bufio.NewReader(c)); err != nil {
			return
		}
		requests.Add(1)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	c := client(t)
	for i := range 3 {
		resp, body := send(t, c, newRequest(t, "GET", gw.url+"/", nil))
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond) // let the close reach the gateway
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("upstream answered %d requests, want 3", n)
	}
}

func TestNonIdempotentNotRetried(t *testing.T) {
	t.Parallel()
	var posts atomic.Int32
	// Reads the request, then dies without answering.
	backend := startRawBackend(t, func(c net.Conn) {
		if _, _, err := readRawRequest(bufio.NewReader(c)); err != nil {
			return
		}
		posts.Add(1)
	})
	gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
	for _, method := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		before := posts.Load()
		resp, body := send(t, client(t), newRequest(t, method, gw.url+"/", strings.NewReader("payload")))
		checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), body, 502, "bad_gateway")
		if n := posts.Load() - before; n != 1 {
			t.Errorf("%s reached the upstream %d times, want exactly once", method, n)
		}
	}
}

func TestBodyAndHeaderLimits(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		hits.Add(1)
		ctx.SetBodyString(fmt.Sprint(len(ctx.Request.Body())))
	})
	cfg := Config{MaxBodyBytes: 4096, StreamThreshold: 1024, MaxHeaderBytes: 4096}
	gw := startGateway(t, cfg, route(t, "/", "http://"+backend))
	chunked := func(total int) string {
		var b strings.Builder
		for total > 0 {
			n := min(total, 1000)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, strings.Repeat("c", n))
			total -= n
		}
		return b.String() + "0\r\n\r\n"
	}
	tests := []struct {
		name       string
		raw        string
		wantStatus int
		wantCode   string
		wantBody   string
	}{
		{name: "buffered body", raw: "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("b", 1000),
			wantStatus: 200, wantBody: "1000"},
		{name: "streamed body at the limit", raw: "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4096\r\n\r\n" + strings.Repeat("b", 4096),
			wantStatus: 200, wantBody: "4096"},
		{name: "declared body over the limit", raw: "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4097\r\n\r\n" + strings.Repeat("b", 4097),
			wantStatus: 413, wantCode: "payload_too_large"},
		{name: "chunked body at the limit", raw: "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(4096),
			wantStatus: 200, wantBody: "4096"},
		{name: "chunked body over the limit", raw: "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(6000),
			wantStatus: 413, wantCode: "payload_too_large"},
		{name: "headers over the limit", raw: "GET / HTTP/1.1\r\nHost: gw\r\nX-Big: " + strings.Repeat("h", 5000) + "\r\n\r\n",
			wantStatus: 431, wantCode: "request_header_fields_too_large"},
		{name: "malformed request line", raw: "GARBAGE\r\n\r\n", wantStatus: 400, wantCode: "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := rawExchange(t, gw.addr, tt.raw, 3*time.Second)
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
			if err != nil {
				t.Fatalf("response %q: %v", out, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if tt.wantCode != "" {
				checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), string(body), tt.wantStatus, tt.wantCode)
				if !resp.Close {
					t.Errorf("connection kept open after %d", resp.StatusCode)
				}
				return
			}
			if resp.StatusCode != tt.wantStatus || string(body) != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}

func TestSlowClientGets408(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, Config{ReadTimeout: 300 * time.Millisecond}, route(t, "/", "http://127.0.0.1:1"))
	start := time.Now()
	out := rawExchange(t, gw.addr, "GET / HTTP/1.1\r\nHost: gw\r\nX-Partial: ", 3*time.Second)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("response %q: %v", out, err)
	}
	body, _ := io.ReadAll(resp.Body)
	checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), string(body), 408, "request_timeout")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("408 after %v, want about the 300ms read timeout", d)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
