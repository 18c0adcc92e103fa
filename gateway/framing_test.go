package gateway

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestRequestSmugglingInputs sends, over raw sockets, requests whose
// framing or routing is ambiguous, each followed by a pipelined request
// that a desynchronized hop would take for a second one. The gateway must
// reject the request (400) or neutralize it (one request upstream, then
// the connection closed), and the upstream must never see the second.
func TestRequestSmugglingInputs(t *testing.T) {
	t.Parallel()
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
	tests := []struct {
		name          string
		raw           string
		wantStatus    string // status line prefix
		wantUpstream  int    // requests the upstream may see
		wantCloseConn bool
	}{
		{name: "two different Content-Length", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhello" + smuggled},
		{name: "two equal Content-Length", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + smuggled},
		{name: "Content-Length and Transfer-Encoding", wantStatus: "HTTP/1.1 200 ", wantUpstream: 1, wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{name: "Transfer-Encoding and Content-Length", wantStatus: "HTTP/1.1 200 ", wantUpstream: 1, wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\n" + smuggled},
		{name: "Transfer-Encoding on HTTP/1.0", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{name: "unknown Transfer-Encoding", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled},
		{name: "space before colon", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello" + smuggled},
		{name: "signed Content-Length", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nhello" + smuggled},
		{name: "NUL in a header value", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "GET /a HTTP/1.1\r\nHost: gw\r\nX-A: b\x00c\r\n\r\n" + smuggled},
		{name: "CR in a header value", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "GET /a HTTP/1.1\r\nHost: gw\r\nX-A: b\rContent-Length: 41\r\n\r\n" + smuggled},
		{name: "missing Host on HTTP/1.1", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "GET /a HTTP/1.1\r\nX-A: b\r\n\r\n" + smuggled},
		{name: "duplicate Host", wantStatus: "HTTP/1.1 400 ", wantCloseConn: true,
			raw: "GET /a HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n" + smuggled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var seen []string
			backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
				mu.Lock()
				seen = append(seen, string(ctx.Path())+" "+string(ctx.Request.Body()))
				mu.Unlock()
				ctx.SetBodyString("ok")
			})
			gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
			out := rawExchange(t, gw.addr, tt.raw, 2*time.Second)
			if !strings.HasPrefix(out, tt.wantStatus) {
				t.Fatalf("response = %q, want %q...", out, tt.wantStatus)
			}
			if n := strings.Count(out, "HTTP/1.1 "); n != 1 {
				t.Errorf("the gateway answered %d requests on one connection, want 1:\n%q", n, out)
			}
			if tt.wantCloseConn && !strings.Contains(strings.ToLower(out), "connection: close") {
				t.Errorf("connection not closed:\n%q", out)
			}
			if strings.HasPrefix(tt.wantStatus, "HTTP/1.1 400") {
				_, body, _ := strings.Cut(out, "\r\n\r\n")
				if !strings.Contains(body, `"code":"bad_request"`) {
					t.Errorf("400 without the JSON envelope: %q", body)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != tt.wantUpstream {
				t.Errorf("upstream saw %q, want %d request(s)", seen, tt.wantUpstream)
			}
			for _, s := range seen {
				if strings.Contains(s, "smuggled") {
					t.Errorf("upstream saw the smuggled request: %q", s)
				}
			}
		})
	}
}

// TestAmbiguousUpstreamFraming is the regression test for the DESIGN.md
// trap: an upstream answers with both Content-Length and chunked
// Transfer-Encoding, then sends a second, unsolicited response on the same
// connection. The next request through the gateway must get its own
// upstream's answer, never the smuggled one.
func TestAmbiguousUpstreamFraming(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		first string
		// split sends the first response in pieces, so that its header
		// block spans several reads.
		split bool
	}{
		{name: "Content-Length then Transfer-Encoding",
			first: "HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"},
		{name: "Transfer-Encoding then Content-Length",
			first: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length:0\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"},
		{name: "after an interim response",
			first: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"},
		{name: "header block split across reads",
			first: "HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", split: true},
		{name: "interim and final blocks split across reads",
			first: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", split: true},
	}
	const smuggledResponse = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var conns atomic.Int32
			backend := startRawBackend(t, func(c net.Conn) {
				first := conns.Add(1) == 1
				br := bufio.NewReader(c)
				for {
					if _, _, err := readRawRequest(br); err != nil {
						return
					}
					if !first {
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlegit")
						continue
					}
					first = false
					if tt.split {
						for i := 0; i < len(tt.first); i += 7 {
							_, _ = io.WriteString(c, tt.first[i:min(i+7, len(tt.first))])
							time.Sleep(2 * time.Millisecond)
						}
					} else {
						_, _ = io.WriteString(c, tt.first)
					}
					// Separately, so that it lands after the client has
					// read the first response and pooled the connection.
					time.Sleep(100 * time.Millisecond)
					_, _ = io.WriteString(c, smuggledResponse)
				}
			})
			gw := startGateway(t, Config{}, route(t, "/", "http://"+backend))
			c := client(t)
			if resp, body := send(t, c, newRequest(t, "GET", gw.url+"/1", nil)); resp.StatusCode != 200 || body != "first" {
				t.Fatalf("first response: %d %q", resp.StatusCode, body)
			}
			time.Sleep(200 * time.Millisecond)
			for i := range 3 {
				resp, body := send(t, c, newRequest(t, "GET", gw.url+"/next", nil))
				if body == "smuggled" {
					t.Fatalf("request %d received the smuggled response", i+2)
				}
				if resp.StatusCode != 200 || body != "legit" {
					t.Fatalf("request %d: %d %q", i+2, resp.StatusCode, body)
				}
			}
		})
	}
}

// TestFramedConnUnderFasthttpClient checks the wrapper alone, under a plain
// HostClient.Do: the rewrite makes any client close the connection.
func TestFramedConnUnderFasthttpClient(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	backend := startRawBackend(t, func(c net.Conn) {
		n := conns.Add(1)
		br := bufio.NewReader(c)
		for {
			if _, _, err := readRawRequest(br); err != nil {
				return
			}
			if n == 1 {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n")
				time.Sleep(100 * time.Millisecond)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlegit")
		}
	})
	hc := &fasthttp.HostClient{Addr: backend, DialTimeout: dialUpstream(nil, 4096)}
	t.Cleanup(hc.CloseIdleConnections)
	get := func() string {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + backend + "/")
		if err := hc.Do(req, resp); err != nil {
			t.Fatal(err)
		}
		return string(resp.Body())
	}
	if got := get(); got != "first" {
		t.Fatalf("first = %q", got)
	}
	time.Sleep(200 * time.Millisecond)
	if got := get(); got != "legit" {
		t.Fatalf("second = %q, want legit", got)
	}
}

func TestNeutralizeFraming(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		block         string
		wantStatus    int
		wantAmbiguous bool
		want          string // "" means unchanged
	}{
		{name: "plain", block: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", wantStatus: 200},
		{name: "chunked", block: "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n", wantStatus: 404},
		{name: "both", block: "HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nTransfer-Encoding: chunked\r\n\r\n",
			wantStatus: 200, wantAmbiguous: true,
			want: "HTTP/1.1 200 OK\r\nConnection:     close\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "both, shortest length, bare LF", block: "HTTP/1.1 200 OK\ntransfer-encoding: chunked\nCONTENT-LENGTH:0\n\n",
			wantStatus: 200, wantAmbiguous: true,
			want: "HTTP/1.1 200 OK\ntransfer-encoding: chunked\nConnection:close\n\n"},
		{name: "both, twice", block: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nContent-Length : 2\r\n\r\n",
			wantStatus: 200, wantAmbiguous: true,
			want: "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nConnection:  close\r\n\r\n"},
		{name: "interim", block: "HTTP/1.1 100 Continue\r\n\r\n", wantStatus: 100},
		{name: "not HTTP", block: "SSH-2.0\r\n\r\n", wantStatus: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := []byte(tt.block)
			status, ambiguous := neutralizeFraming(b)
			want := tt.want
			if want == "" {
				want = tt.block
			}
			if status != tt.wantStatus || ambiguous != tt.wantAmbiguous || string(b) != want {
				t.Errorf("got %d %v %q, want %d %v %q", status, ambiguous, b, tt.wantStatus, tt.wantAmbiguous, want)
			}
		})
	}
}

func TestHeaderBlockEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int
	}{
		{"HTTP/1.1 200 OK\r\n\r\nbody", 19},
		{"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", 25},
		{"HTTP/1.1 200 OK\nA: b\n\nbody", 22},
		{"HTTP/1.1 200 OK\r\nA: b\r\n", -1},
		{"HTTP/1.1 200 OK\r\nA: b\r\n\r", -1},
		{"", -1},
	}
	for _, tt := range tests {
		if got := headerBlockEnd([]byte(tt.in)); got != tt.want {
			t.Errorf("headerBlockEnd(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// FuzzNeutralizeFraming checks that the rewrite never changes a block's
// length, never panics, and leaves no Content-Length next to a
// Transfer-Encoding.
func FuzzNeutralizeFraming(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\ncontent-length:1\ntransfer-encoding:chunked\n\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length:\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 1"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, block []byte) {
		orig := bytes.Clone(block)
		_, ambiguous := neutralizeFraming(block)
		if len(block) != len(orig) {
			t.Fatalf("length changed")
		}
		if !ambiguous {
			if !bytes.Equal(block, orig) {
				t.Fatalf("unambiguous block changed: %q -> %q", orig, block)
			}
			return
		}
		nl := bytes.IndexByte(block, '\n')
		forEachField(block[nl+1:], func(name, line []byte) {
			if equalFold(name, "content-length") && len(line) >= len(connectionClose) {
				t.Fatalf("Content-Length survived next to Transfer-Encoding: %q", block)
			}
		})
	})
}
