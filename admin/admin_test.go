package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/zakirkun/isekai/admin"
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/projections"
)

func TestMain(m *testing.M) {
	// fasthttp keeps a process-wide date ticker, and a stopped server's
	// worker-pool cleaner sleeps out its last interval.
	pgtest.Main(m, goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"))
}

var client = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}

type env struct {
	base  string
	store events.Store
}

// newEnv wires a real store, listener, projection and admin server on a
// loopback port, as a node does.
func newEnv(t *testing.T, dbURL string) env {
	e, _ := startEnv(t, dbURL, envOptions{})
	return e
}

// newEnvDelayed is newEnv with a node that applies each batch of events
// only after delay: a node lagging behind the log.
func newEnvDelayed(t *testing.T, dbURL string, delay time.Duration) env {
	e, _ := startEnv(t, dbURL, envOptions{delay: delay})
	return e
}

// envOptions adjusts the node startEnv wires.
type envOptions struct {
	// configure fills in the admin configuration beyond NodeID, Version,
	// Logger and StoreTimeout.
	configure func(cfg *admin.Config, pool *pgxpool.Pool)
	// delay makes the node apply each batch of events only after it.
	delay time.Duration
	// sync, when set, replaces the node's listener: no events are applied
	// and the sync state is whatever it reports.
	sync admin.SyncState
}

// startEnv is the one harness of the admin tests: a pool on dbURL, a store,
// a projection fed by a listener, and the admin server on a loopback port.
func startEnv(t *testing.T, dbURL string, o envOptions) (env, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := events.NewPostgresStore(pool)
	routes := projections.NewRoutes()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sync := o.sync
	var l *events.Listener
	if sync == nil {
		l = events.NewListener(events.ListenerConfig{
			ConnConfig: pool.Config().ConnConfig, Store: store, Logger: quiet,
			Handler: func(_ context.Context, evs []events.Event) error {
				time.Sleep(o.delay)
				_, err := routes.Apply(evs)
				return err
			},
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		})
		if err := l.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Stop)
		sync = l
	}
	cfg := admin.Config{NodeID: "node-test", Version: "test", Logger: quiet, StoreTimeout: 2 * time.Second}
	if o.configure != nil {
		o.configure(&cfg, pool)
	}
	srv, err := admin.New(cfg, store, routes, sync)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	deadline := time.Now().Add(10 * time.Second)
	for l != nil && !l.CaughtUp() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return env{base: "http://" + ln.Addr().String(), store: store}, pool
}

type response struct {
	status int
	header http.Header
	raw    []byte
	body   struct {
		Success  bool            `json:"success"`
		Data     json.RawMessage `json:"data"`
		Position int64           `json:"position"`
		Error    string          `json:"error"`
		Code     string          `json:"code"`
		Fields   []struct {
			Field   string `json:"field"`
			Message string `json:"message"`
		} `json:"fields"`
		NextAfter int64 `json:"next_after"`
	}
}

func (e env) do(t *testing.T, method, path string, body any, headers ...string) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, e.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	r := response{status: resp.StatusCode, header: resp.Header}
	r.raw, _ = io.ReadAll(resp.Body)
	if err := json.Unmarshal(r.raw, &r.body); err != nil {
		t.Fatalf("%s %s: %d, body is not JSON: %q", method, path, resp.StatusCode, r.raw)
	}
	return r
}

func (r response) route(t *testing.T) projections.Route {
	t.Helper()
	var out projections.Route
	if err := json.Unmarshal(r.body.Data, &out); err != nil {
		t.Fatalf("data is not a route: %s", r.body.Data)
	}
	return out
}

func expect(t *testing.T, r response, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.body.Code != code) {
		t.Fatalf("got %d %s, want %d %s: %s", r.status, r.body.Code, status, code, r.raw)
	}
	if status >= 400 && (r.body.Success || r.body.Error == "") {
		t.Fatalf("error response without the failure envelope: %s", r.raw)
	}
}

func TestRouteLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))

	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/users", "target_url": "http://127.0.0.1:9/u", "method": "get"})
	expect(t, r, 201, "")
	created := r.route(t)
	if created.Version != 1 || !created.StripPath || !created.Enabled || created.Timeout != 30 || created.Priority != 0 ||
		len(created.Methods) != 1 || created.Methods[0] != "GET" || created.CreatedAt.IsZero() {
		t.Fatalf("defaults not applied: %+v", created)
	}
	if !strings.Contains(string(r.body.Data), `"method":"GET"`) {
		t.Errorf("seed's single method not returned: %s", r.body.Data)
	}
	if r.header.Get("ETag") != `"1"` || r.header.Get("Isekai-Position") != fmt.Sprint(r.body.Position) || r.body.Position < 1 ||
		r.header.Get("Location") != "/api/routes/"+created.ID.String() {
		t.Errorf("write headers: %v, position %d", r.header, r.body.Position)
	}
	id := "/api/routes/" + created.ID.String()

	r = e.do(t, "GET", id, nil)
	expect(t, r, 200, "")
	if r.header.Get("ETag") != `"1"` || r.route(t).Path != "/users" {
		t.Errorf("get: %s %v", r.raw, r.header)
	}
	r = e.do(t, "GET", "/api/routes", nil)
	expect(t, r, 200, "")
	if !strings.Contains(string(r.body.Data), created.ID.String()) {
		t.Errorf("list lacks the route: %s", r.raw)
	}

	// PUT replaces: omitted fields go back to their defaults.
	r = e.do(t, "PUT", id, map[string]any{"path": "/users", "target_url": "http://127.0.0.1:9/v2", "timeout": 5, "strip_path": false}, "If-Match", `"1"`)
	expect(t, r, 200, "")
	put := r.route(t)
	if put.Version != 2 || put.Timeout != 5 || put.StripPath || len(put.Methods) != 0 || !put.CreatedAt.Equal(created.CreatedAt) || r.header.Get("ETag") != `"2"` {
		t.Fatalf("put: %+v", put)
	}
	expect(t, e.do(t, "PUT", id, map[string]any{"path": "/users", "target_url": "http://127.0.0.1:9/"}, "If-Match", `"1"`), 412, "precondition_failed")

	// PATCH changes only what it names.
	r = e.do(t, "PATCH", id, map[string]any{"enabled": false}, "If-Match", `"2"`, "X-Isekai-Reason", "maintenance window")
	expect(t, r, 200, "")
	if p := r.route(t); p.Enabled || p.Timeout != 5 || p.TargetURL != "http://127.0.0.1:9/v2" || p.Version != 3 {
		t.Fatalf("patch: %+v", p)
	}
	expect(t, e.do(t, "PATCH", id, map[string]any{"enabled": true}, "If-Match", `"2"`), 412, "precondition_failed")
	expect(t, e.do(t, "PATCH", id, map[string]any{"enabled": true}, "If-Match", `bogus`), 400, "invalid_header")

	r = e.do(t, "GET", id+"/history", nil)
	expect(t, r, 200, "")
	var hist []struct {
		Position int64              `json:"position"`
		Version  int64              `json:"version"`
		Type     string             `json:"type"`
		Actor    string             `json:"actor"`
		Source   string             `json:"source"`
		Reason   string             `json:"reason"`
		Time     time.Time          `json:"time"`
		Route    *projections.Route `json:"route"`
	}
	_ = json.Unmarshal(r.body.Data, &hist)
	if len(hist) != 3 || hist[0].Type != "route.created" || hist[2].Reason != "maintenance window" || hist[2].Route == nil ||
		hist[2].Route.Enabled || hist[1].Route.Timeout != 5 || hist[0].Actor == "" || hist[0].Source != "api" || hist[0].Time.IsZero() {
		t.Fatalf("history: %s", r.body.Data)
	}

	expect(t, e.do(t, "DELETE", id, nil, "If-Match", `"1"`), 412, "precondition_failed")
	r = e.do(t, "DELETE", id, nil)
	expect(t, r, 200, "")
	expect(t, e.do(t, "GET", id, nil), 404, "route_not_found")
	expect(t, e.do(t, "DELETE", id, nil), 404, "route_not_found")
	expect(t, e.do(t, "PUT", id, map[string]any{"path": "/users", "target_url": "http://127.0.0.1:9/"}), 404, "route_not_found")
	expect(t, e.do(t, "PATCH", id, map[string]any{"enabled": true}), 404, "route_not_found")
	r = e.do(t, "GET", id+"/history", nil)
	expect(t, r, 200, "")
	if !strings.Contains(string(r.body.Data), `"route":null`) {
		t.Errorf("history after delete: %s", r.body.Data)
	}
}

func TestUnknownIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	for _, path := range []string{"/api/routes/6b1f2f7e-6a55-4d2c-9d3a-0f5d7c1e2b3a", "/api/routes/not-a-uuid", "/api/routes/6b1f2f7e-6a55-4d2c-9d3a-0f5d7c1e2b3a/history"} {
		expect(t, e.do(t, "GET", path, nil), 404, "route_not_found")
	}
	expect(t, e.do(t, "DELETE", "/api/routes/6b1f2f7e-6a55-4d2c-9d3a-0f5d7c1e2b3a", nil), 404, "route_not_found")
	expect(t, e.do(t, "GET", "/nope", nil), 404, "not_found")
}

func TestConflicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	create := func(body map[string]any) response { return e.do(t, "POST", "/api/routes", body) }
	expect(t, create(map[string]any{"path": "/c/{id}", "target_url": "http://127.0.0.1:9", "methods": []string{"GET"}}), 201, "")
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
	}{
		{name: "same path and method, other param name", body: map[string]any{"path": "/c/{other}", "target_url": "http://127.0.0.1:9", "method": "GET"}, status: 409},
		{name: "any method overlaps GET", body: map[string]any{"path": "/c/{id}", "target_url": "http://127.0.0.1:9"}, status: 409},
		{name: "trailing slash is the same path", body: map[string]any{"path": "/c/{id}/", "target_url": "http://127.0.0.1:9", "method": "GET"}, status: 409},
		{name: "other method", body: map[string]any{"path": "/c/{id}", "target_url": "http://127.0.0.1:9", "method": "POST"}, status: 201},
		{name: "other host", body: map[string]any{"path": "/c/{id}", "target_url": "http://127.0.0.1:9", "host": "api.example.com"}, status: 201},
		{name: "disabled does not claim", body: map[string]any{"path": "/c/{id}", "target_url": "http://127.0.0.1:9", "enabled": false}, status: 201},
		{name: "static segment is another path", body: map[string]any{"path": "/c/me", "target_url": "http://127.0.0.1:9", "method": "GET"}, status: 201},
	} {
		r := create(tc.body)
		if r.status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.status)
		}
		if tc.status == 409 && r.body.Code != "route_conflict" {
			t.Errorf("%s: code %s", tc.name, r.body.Code)
		}
	}
	// Enabling the disabled twin would now conflict.
	r := e.do(t, "GET", "/api/routes", nil)
	var all []projections.Route
	_ = json.Unmarshal(r.body.Data, &all)
	for _, rt := range all {
		if !rt.Enabled {
			expect(t, e.do(t, "PATCH", "/api/routes/"+rt.ID.String(), map[string]any{"enabled": true}), 409, "route_conflict")
		}
	}
}

func TestValidationNamesTheField(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	base := func(k string, v any) map[string]any {
		m := map[string]any{"path": "/v", "target_url": "http://127.0.0.1:9"}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		body  any
		field string
	}{
		{name: "path missing", body: base("path", nil), field: "path"},
		{name: "path relative", body: base("path", "v1"), field: "path"},
		{name: "path double slash", body: base("path", "/a//b"), field: "path"},
		{name: "path dot segment", body: base("path", "/a/../b"), field: "path"},
		{name: "path broken param", body: base("path", "/a/{id"), field: "path"},
		{name: "path duplicate param", body: base("path", "/{a}/{a}"), field: "path"},
		{name: "path too many params", body: base("path", strings.Repeat("/{p}", 1)+"/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}/{k}/{l}/{m}/{n}/{o}/{q}/{r}"), field: "path"},
		{name: "path wrong type", body: base("path", 7), field: "path"},
		{name: "target missing", body: base("target_url", nil), field: "target_url"},
		{name: "target not http", body: base("target_url", "ftp://x"), field: "target_url"},
		{name: "target relative", body: base("target_url", "/local"), field: "target_url"},
		{name: "methods bad token", body: base("methods", []string{"GE T"}), field: "methods"},
		{name: "method and methods disagree", body: map[string]any{"path": "/v", "target_url": "http://127.0.0.1:9", "method": "GET", "methods": []string{"POST"}}, field: "method"},
		{name: "host invalid", body: base("host", "bad host"), field: "host"},
		{name: "host bad wildcard", body: base("host", "*."), field: "host"},
		{name: "timeout zero", body: base("timeout", 0), field: "timeout"},
		{name: "timeout huge", body: base("timeout", 999999), field: "timeout"},
		{name: "timeout string", body: base("timeout", "30s"), field: "timeout"},
		{name: "rate limit negative", body: base("rate_limit", -1), field: "rate_limit"},
		{name: "priority out of range", body: base("priority", 5000), field: "priority"},
		{name: "name too long", body: base("name", strings.Repeat("n", 200)), field: "name"},
		{name: "strip_path not bool", body: base("strip_path", "yes"), field: "strip_path"},
		{name: "enabled not bool", body: base("enabled", "yes"), field: "enabled"},
	} {
		r := e.do(t, "POST", "/api/routes", tc.body)
		found := false
		for _, f := range r.body.Fields {
			found = found || f.Field == tc.field
		}
		if r.status != 400 || !found || !strings.Contains(r.body.Error, tc.field) {
			t.Errorf("%s: %d %s, want 400 naming %q", tc.name, r.status, r.raw, tc.field)
		}
	}
	for _, body := range []string{`{`, `[]`, `{"path":"/x","target_url":"http://h","bogus":1}`, ``} {
		r := e.do(t, "POST", "/api/routes", body)
		if r.status != 400 {
			t.Errorf("body %q: %d %s, want 400", body, r.status, r.raw)
		}
	}
	expect(t, e.do(t, "POST", "/api/routes", base("name", "ok"), "X-Isekai-Reason", strings.Repeat("r", 600)), 400, "invalid_header")
}

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	body := map[string]any{"path": "/once", "target_url": "http://127.0.0.1:9"}
	first := e.do(t, "POST", "/api/routes", body, "Idempotency-Key", "k-123")
	expect(t, first, 201, "")
	again := e.do(t, "POST", "/api/routes", body, "Idempotency-Key", "k-123")
	expect(t, again, 201, "")
	if again.route(t).ID != first.route(t).ID || again.body.Position != first.body.Position || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry was not idempotent: %s vs %s", first.raw, again.raw)
	}
	if h, _ := e.store.Head(context.Background()); h != 1 {
		t.Errorf("head = %d after a retried POST, want 1", h)
	}
	// Without the key the same body is a conflict, not a second route.
	expect(t, e.do(t, "POST", "/api/routes", body), 409, "route_conflict")
}

func TestEventsFeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	var ids []string
	for i := 0; i < 5; i++ {
		r := e.do(t, "POST", "/api/routes", map[string]any{"path": fmt.Sprintf("/e%d", i), "target_url": "http://127.0.0.1:9"})
		expect(t, r, 201, "")
		ids = append(ids, r.route(t).ID.String())
	}
	expect(t, e.do(t, "PATCH", "/api/routes/"+ids[0], map[string]any{"timeout": 3}), 200, "")
	r := e.do(t, "GET", "/api/events?after=2&limit=2", nil)
	expect(t, r, 200, "")
	var evs []events.Event
	_ = json.Unmarshal(r.body.Data, &evs)
	if len(evs) != 2 || evs[0].Position != 3 || evs[1].Position != 4 || r.body.NextAfter != 4 || !strings.Contains(string(r.body.Data), `"position":3`) {
		t.Fatalf("page: %s", r.raw)
	}
	r = e.do(t, "GET", "/api/events?stream=route-"+ids[0], nil)
	_ = json.Unmarshal(r.body.Data, &evs)
	if len(evs) != 2 || evs[1].Type != "route.updated" {
		t.Fatalf("stream filter: %s", r.raw)
	}
	r = e.do(t, "GET", "/api/events?type=route.updated", nil)
	_ = json.Unmarshal(r.body.Data, &evs)
	if len(evs) != 1 || evs[0].Position != 6 || evs[0].Metadata.Node != "node-test" {
		t.Fatalf("type filter: %s", r.raw)
	}
	for _, q := range []string{"limit=0", "limit=5000", "after=-1", "after=x"} {
		expect(t, e.do(t, "GET", "/api/events?"+q, nil), 400, "invalid_query")
	}
}

func TestHealthReadyStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	expect(t, e.do(t, "GET", "/health", nil), 200, "")
	expect(t, e.do(t, "GET", "/ready", nil), 200, "")
	expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": "/s", "target_url": "http://127.0.0.1:9"}), 201, "")
	r := e.do(t, "GET", "/api/status", nil)
	expect(t, r, 200, "")
	var st struct {
		NodeID          string          `json:"node_id"`
		AppliedPosition int64           `json:"applied_position"`
		HeadPosition    *int64          `json:"head_position"`
		Database        string          `json:"database"`
		Routes          int             `json:"routes"`
		Features        map[string]bool `json:"features"`
		UptimeSeconds   float64         `json:"uptime_seconds"`
	}
	_ = json.Unmarshal(r.body.Data, &st)
	if st.NodeID != "node-test" || st.AppliedPosition != 1 || st.HeadPosition == nil || *st.HeadPosition != 1 || st.Database != "ok" || st.Routes != 1 || st.Features == nil {
		t.Fatalf("status: %s", r.body.Data)
	}
}

func TestDatabaseOutageIs503(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrateURL(ctx, url); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, url)
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/o", "target_url": "http://127.0.0.1:9"})
	expect(t, r, 201, "")
	id := "/api/routes/" + r.route(t).ID.String()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, path string }{
		{"POST", "/api/routes"}, {"PATCH", id}, {"DELETE", id}, {"GET", id + "/history"}, {"GET", "/api/events"},
	} {
		start := time.Now()
		r := e.do(t, tc.method, tc.path, map[string]any{"path": "/o2", "target_url": "http://127.0.0.1:9"})
		expect(t, r, 503, "database_unavailable")
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s %s took %v with the database down", tc.method, tc.path, d)
		}
	}
	// Reads served from the projection keep working.
	expect(t, e.do(t, "GET", id, nil), 200, "")
	expect(t, e.do(t, "GET", "/health", nil), 200, "")
}

// A node behind the log must not refuse a write for a route it has not
// seen yet: a refusal is re-decided on a table at the log's head.
func TestWriteOnLaggingNodeSeesTheLog(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	fast := newEnv(t, db)
	slow := newEnvDelayed(t, db, 300*time.Millisecond)
	for i := 0; i < 3; i++ {
		r := fast.do(t, "POST", "/api/routes", map[string]any{"path": fmt.Sprintf("/lag%d", i), "target_url": "http://127.0.0.1:9"})
		expect(t, r, 201, "")
		id := "/api/routes/" + r.route(t).ID.String()
		// The slow node has not applied the create yet.
		expect(t, slow.do(t, "PATCH", id, map[string]any{"timeout": 7}, "If-Match", `"1"`), 200, "")
		// Nor the patch, on the fast node, when it answers.
		expect(t, fast.do(t, "DELETE", id, nil, "If-Match", `"2"`), 200, "")
	}
}

// notCaughtUp is a listener that has not yet applied the log.
type notCaughtUp struct{}

func (notCaughtUp) CaughtUp() bool        { return false }
func (notCaughtUp) Connected() bool       { return false }
func (notCaughtUp) LastError() string     { return "connecting listener: connection refused" }
func (notCaughtUp) StaleSince() time.Time { return time.Time{} }

// /ready stays 503 until the projection has caught up; /health does not
// depend on it.
func TestReadyWaitsForCatchUp(t *testing.T) {
	t.Parallel()
	e, _ := startEnv(t, pgtest.NewMigratedDatabase(t), envOptions{sync: notCaughtUp{}})
	r := e.do(t, "GET", "/ready", nil)
	expect(t, r, 503, "not_ready")
	if r.header.Get("Retry-After") == "" {
		t.Error("503 from /ready without Retry-After")
	}
	expect(t, e.do(t, "GET", "/health", nil), 200, "")
	r = e.do(t, "GET", "/api/status", nil)
	if !strings.Contains(string(r.body.Data), `"caught_up":false`) || !strings.Contains(string(r.body.Data), "connection refused") {
		t.Errorf("status of a node catching up: %s", r.body.Data)
	}
}
