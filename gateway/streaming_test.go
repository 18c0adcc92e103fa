package gateway

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestLargeResponseStreamed sends a 50 MB body through the gateway from an
// upstream that withholds the rest of it until the client has received the
// first bytes: a gateway that buffered the body would deadlock. The heap
// is sampled during the transfer to show the body is never held whole.
func TestLargeResponseStreamed(t *testing.T) {
	const size = 50 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	firstSeen := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(chunk)
		w.(http.Flusher).Flush()
		select {
		case <-firstSeen:
		case <-time.After(5 * time.Second):
			return // the gateway buffered: give up, the test fails below
		}
		for sent := len(chunk); sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), size-sent)]); err != nil {
				return
			}
		}
	}))
	t.Cleanup(upstream.Close)
	gw := startGateway(t, Config{WriteTimeout: time.Minute}, route(t, "/", upstream.URL))

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
		}
	}()

	resp, err := client(t).Get(gw.url + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("reading the first bytes: %v", err)
	}
	close(firstSeen)
	n, err := io.Copy(io.Discard, resp.Body)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if got := n + int64(len(first)); got != size {
		t.Fatalf("received %d bytes, want %d", got, size)
	}
	if grown := int64(peak.Load()) - int64(base.HeapAlloc); grown > 16<<20 {
		t.Errorf("heap grew by %d MiB during a 50 MiB transfer", grown>>20)
	}
}

func TestStreamedUpstreamBodyTruncated(t *testing.T) {
	t.Parallel()
	backend := startRawBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		_, _ = c.Read(buf)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
		_, _ = c.Write(bytes.Repeat([]byte("x"), 5000))
	})
	gw := startGateway(t, Config{StreamThreshold: 1024}, route(t, "/", "http://"+backend))
	resp, err := client(t).Get(gw.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Headers were already sent when the body broke off: the only honest
	// signal left is a connection closed short of Content-Length.
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || err == nil || n >= 100000 {
		t.Errorf("got %d, %d bytes, err %v; want 200 cut short with an error", resp.StatusCode, n, err)
	}
}

func TestLargeRequestStreamed(t *testing.T) {
	t.Parallel()
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		sum := sha256.Sum256(ctx.Request.Body())
		ctx.SetBody(sum[:])
	})
	gw := startGateway(t, Config{StreamThreshold: 64 << 10}, route(t, "/", "http://"+backend))
	body := bytes.Repeat([]byte("upload."), (5<<20)/7)
	want := sha256.Sum256(body)
	tests := []struct {
		name   string
		reader func() io.Reader
	}{
		{name: "declared length", reader: func() io.Reader { return bytes.NewReader(body) }},
		{name: "chunked", reader: func() io.Reader { return struct{ io.Reader }{bytes.NewReader(body)} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := send(t, client(t), newRequest(t, "POST", gw.url+"/up", tt.reader()))
			if resp.StatusCode != 200 || got != string(want[:]) {
				t.Errorf("upstream got a different body (status %d)", resp.StatusCode)
			}
		})
	}
}

func TestSlowClientBodyWhileStreaming(t *testing.T) {
	t.Parallel()
	var complete atomic.Int32
	backend := startBackend(t, func(ctx *fasthttp.RequestCtx) {
		if len(ctx.Request.Body()) == 5000 {
			complete.Add(1)
		}
	})
	gw := startGateway(t, Config{ReadTimeout: 500 * time.Millisecond, StreamThreshold: 1024},
		route(t, "/", "http://"+backend))
	// 2000 of the 5000 declared bytes, then nothing: the body is being
	// streamed upstream when the client stalls.
	out := rawExchange(t, gw.addr, "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n"+
		string(bytes.Repeat([]byte("s"), 2000)), 3*time.Second)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("response %q: %v", out, err)
	}
	body, _ := io.ReadAll(resp.Body)
	checkFailure(t, resp.StatusCode, resp.Header.Get("Content-Type"), string(body), 408, "request_timeout")
	if n := complete.Load(); n != 0 {
		t.Errorf("upstream took a truncated body for a complete one")
	}
}
