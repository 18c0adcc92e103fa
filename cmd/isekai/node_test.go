package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zakirkun/isekai/events/pgtest"
)

func TestMain(m *testing.M) {
	// fasthttp's process-wide date ticker, and the cleaners of stopped
	// servers and closed clients that sleep out their last interval.
	pgtest.Main(m, goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"))
}

// client talks to loopback only, never through an environment proxy.
var client = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}

func envMap(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// startTestNode runs a full node in-process on random loopback ports; env
// holds extra NAME, value pairs.
func startTestNode(t *testing.T, dbURL, id string, env ...string) (*node, context.CancelFunc) {
	t.Helper()
	vars := map[string]string{
		"DATABASE_URL": dbURL, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0", "ADMIN_PORT": "0",
		"ISEKAI_DATA_DIR": t.TempDir(), "ISEKAI_NODE_ID": id, "DB_MAX_OPEN_CONNS": "4", "DB_MAX_IDLE_CONNS": "1",
		"SERVER_SHUTDOWN_TIMEOUT": "5s",
	}
	for i := 0; i+1 < len(env); i += 2 {
		vars[env[i]] = env[i+1]
	}
	cfg, err := loadConfig(envMap(vars))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	n, err := startNode(ctx, cfg, log.With("test_node", id))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := n.wait(); err != nil {
			t.Errorf("node %s shut down with %v", id, err)
		}
	})
	return n, func() {
		cancel()
		<-n.done
	}
}

type apiResponse struct {
	Success  bool            `json:"success"`
	Data     json.RawMessage `json:"data"`
	Position int64           `json:"position"`
	Code     string          `json:"code"`
	Error    string          `json:"error"`
	Laggards json.RawMessage `json:"laggards"`
}

func call(t *testing.T, method, url string, body any, headers ...string) (int, apiResponse, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out apiResponse
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: response is not JSON: %q", method, url, raw)
		}
	}
	return resp.StatusCode, out, resp.Header
}

// backend answers with its name and the path it was asked for.
func backend(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	return srv
}

func get(url string) (int, string) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls until f reports done, failing after d.
func eventually(t *testing.T, d time.Duration, what string, f func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < d {
		ok, s := f()
		if ok {
			return time.Since(start)
		}
		last = s
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v (last: %s)", what, d, last)
	return 0
}

// A route written through any node is served by every node, and every
// change is an event in the log.
func TestClusterWriteOnOneServedOnAll(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i], _ = startTestNode(t, db, fmt.Sprintf("n%d", i+1))
	}
	a, b := backend(t, "A"), backend(t, "B")

	status, res, _ := call(t, "POST", "http://"+nodes[0].adminAddr+"/api/routes", map[string]any{
		"path": "/shop", "target_url": a.URL + "/v1", "method": "GET",
	})
	if status != 201 {
		t.Fatalf("create: %d %+v", status, res)
	}
	var route struct {
		ID      string `json:"id"`
		Version int64  `json:"version"`
	}
	_ = json.Unmarshal(res.Data, &route)
	for _, n := range nodes {
		took := eventually(t, 2*time.Second, "route served on "+n.id, func() (bool, string) {
			code, body := get("http://" + n.proxyAddr + "/shop/cart?x=1")
			return code == 200 && body == "A /v1/cart?x=1", fmt.Sprint(code, body)
		})
		t.Logf("node %s serves the new route %v after the write answered", n.id, took)
	}

	// Update through the second node, delete through the third.
	status, res, _ = call(t, "PATCH", "http://"+nodes[1].adminAddr+"/api/routes/"+route.ID, map[string]any{"target_url": b.URL})
	if status != 200 {
		t.Fatalf("patch: %d %+v", status, res)
	}
	for _, n := range nodes {
		eventually(t, 2*time.Second, "update served on "+n.id, func() (bool, string) {
			code, body := get("http://" + n.proxyAddr + "/shop/cart")
			return code == 200 && body == "B /cart", fmt.Sprint(code, body)
		})
	}
	status, res, _ = call(t, "DELETE", "http://"+nodes[2].adminAddr+"/api/routes/"+route.ID, nil)
	if status != 200 {
		t.Fatalf("delete: %d %+v", status, res)
	}
	for _, n := range nodes {
		eventually(t, 2*time.Second, "delete served on "+n.id, func() (bool, string) {
			code, body := get("http://" + n.proxyAddr + "/shop/cart")
			return code == 404, fmt.Sprint(code, body)
		})
	}

	// Three events, each with the node that wrote it.
	status, res, _ = call(t, "GET", "http://"+nodes[0].adminAddr+"/api/routes/"+route.ID+"/history", nil)
	var hist []struct {
		Type string `json:"type"`
		Node string `json:"node"`
	}
	_ = json.Unmarshal(res.Data, &hist)
	if status != 200 || len(hist) != 3 || hist[0].Node != "n1" || hist[1].Node != "n2" || hist[2].Node != "n3" || hist[2].Type != "route.deleted" {
		t.Fatalf("history: %d %+v", status, hist)
	}
	// Every node has applied the same position.
	for _, n := range nodes {
		eventually(t, 2*time.Second, "applied position on "+n.id, func() (bool, string) {
			p := n.routes.Table().Position()
			return p == 3, fmt.Sprint(p)
		})
	}
}

// Running nodes keep proxying from their last table while Postgres is
// down, refuse writes quickly with 503, and catch up when it returns.
func TestNodesKeepServingWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	db := srv.URL("isekai")
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i], _ = startTestNode(t, db, fmt.Sprintf("d%d", i+1))
	}
	a := backend(t, "A")
	if status, res, _ := call(t, "POST", "http://"+nodes[0].adminAddr+"/api/routes", map[string]any{"path": "/a", "target_url": a.URL}); status != 201 {
		t.Fatalf("create: %d %+v", status, res)
	}
	for _, n := range nodes {
		eventually(t, 2*time.Second, "served on "+n.id, func() (bool, string) {
			code, body := get("http://" + n.proxyAddr + "/a")
			return code == 200, fmt.Sprint(code, body)
		})
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		for _, n := range nodes {
			if code, body := get("http://" + n.proxyAddr + "/a/x"); code != 200 || body != "A /x" {
				t.Fatalf("node %s with Postgres down: %d %q", n.id, code, body)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	status, res, _ := call(t, "POST", "http://"+nodes[1].adminAddr+"/api/routes", map[string]any{"path": "/b", "target_url": a.URL})
	if status != 503 || res.Code != "database_unavailable" {
		t.Errorf("write with Postgres down: %d %+v", status, res)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("write with Postgres down took %v", d)
	}
	_, st, _ := call(t, "GET", "http://"+nodes[1].adminAddr+"/api/status", nil)
	if !strings.Contains(string(st.Data), `"database":"unavailable"`) {
		t.Errorf("status with Postgres down: %s", st.Data)
	}

	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "write after Postgres returned", func() (bool, string) {
		status, res, _ := call(t, "POST", "http://"+nodes[2].adminAddr+"/api/routes", map[string]any{"path": "/b", "target_url": a.URL})
		return status == 201, fmt.Sprint(status, res)
	})
	for _, n := range nodes {
		eventually(t, 15*time.Second, "new route served on "+n.id, func() (bool, string) {
			code, body := get("http://" + n.proxyAddr + "/b/y")
			return code == 200 && body == "A /y", fmt.Sprint(code, body)
		})
	}
}
