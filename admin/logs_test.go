package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/admin"
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/events/storetest"
)

// caughtUp is a listener that has applied the log.
type caughtUp struct{}

func (caughtUp) CaughtUp() bool        { return true }
func (caughtUp) Connected() bool       { return true }
func (caughtUp) LastError() string     { return "" }
func (caughtUp) StaleSince() time.Time { return time.Time{} }

// newLogsEnv serves the admin API with logs as its request log source, and
// returns the pool on dbURL.
func newLogsEnv(t *testing.T, dbURL string, logs func(*pgxpool.Pool) admin.RequestLogs) (env, *pgxpool.Pool) {
	t.Helper()
	return startEnv(t, dbURL, envOptions{sync: caughtUp{}, configure: func(cfg *admin.Config, pool *pgxpool.Pool) {
		cfg.RequestLogs = logs(pool)
	}})
}

func postgresLogs(pool *pgxpool.Pool) admin.RequestLogs { return admin.PostgresRequestLogs{Pool: pool} }

func logEntry(id string, at time.Time) events.RequestLogEntry {
	return events.RequestLogEntry{
		Time: at, NodeID: "node-a", Method: "GET", Host: "h", Path: "/p", Status: 200,
		Latency: time.Millisecond, RequestID: id,
	}
}

// logsPage is a GET /api/logs answer.
type logsPage struct {
	Data       []events.RequestLogRow `json:"data"`
	NextBefore *string                `json:"next_before"`
}

func (e env) logs(t *testing.T, query string) logsPage {
	t.Helper()
	r := e.do(t, "GET", "/api/logs?"+query, nil)
	expect(t, r, 200, "")
	var p logsPage
	if err := json.Unmarshal(r.raw, &p); err != nil || !r.body.Success {
		t.Fatalf("%s: %v: %s", query, err, r.raw)
	}
	return p
}

func requestIDs(rows []events.RequestLogRow) string {
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.RequestID
	}
	return strings.Join(ids, ",")
}

func TestListLogs(t *testing.T) {
	t.Parallel()
	e, pool := newLogsEnv(t, pgtest.NewMigratedDatabase(t), postgresLogs)
	routeA, routeB := uuid.New(), uuid.New()
	base := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	at := func(min int) time.Time { return base.Add(time.Duration(min) * time.Minute) }
	var entries []events.RequestLogEntry
	for _, r := range []struct {
		id     string
		min    int
		route  uuid.UUID
		method string
		status int
	}{
		{"r1", 1, routeA, "GET", 200},
		{"r2", 2, routeA, "POST", 201},
		{"r3", 3, routeB, "GET", 404},
		{"r4", 4, uuid.Nil, "GET", 404},
		{"r5", 5, routeA, "GET", 500},
		{"r6", 6, routeB, "DELETE", 503},
	} {
		e := logEntry(r.id, at(r.min))
		e.RouteID, e.Method, e.Status = r.route, r.method, r.status
		entries = append(entries, e)
	}
	storetest.WriteRequestLogs(t, pool, entries)

	rfc := func(min int) string { return url.QueryEscape(at(min).Format(time.RFC3339)) }
	for _, tc := range []struct{ query, want string }{
		{"", "r6,r5,r4,r3,r2,r1"},
		{"route_id=" + routeA.String(), "r5,r2,r1"},
		{"status=404", "r4,r3"},
		{"status=5xx", "r6,r5"},
		{"status=2XX", "r2,r1"},
		{"method=get", "r5,r4,r3,r1"},
		{"since=" + rfc(5), "r6,r5"},
		{"until=" + rfc(2), "r1"},
		{"since=" + rfc(2) + "&until=" + rfc(5), "r4,r3,r2"},
		{"route_id=" + routeB.String() + "&status=4xx&method=GET", "r3"},
		{"route_id=" + uuid.NewString(), ""},
	} {
		p := e.logs(t, tc.query)
		if got := requestIDs(p.Data); got != tc.want {
			t.Errorf("?%s: got %q, want %q", tc.query, got, tc.want)
		}
		if p.NextBefore != nil {
			t.Errorf("?%s: next_before %q on a last page", tc.query, *p.NextBefore)
		}
	}

	// Rows are in snake_case, NULL columns left out.
	r := e.do(t, "GET", "/api/logs?status=500", nil)
	for _, s := range []string{`"time":"`, `"node_id":"node-a"`, `"route_id":"` + routeA.String() + `"`, `"latency_us":1000`, `"request_id":"r5"`, `"next_before":null`} {
		if !strings.Contains(string(r.raw), s) {
			t.Errorf("lacks %s: %s", s, r.raw)
		}
	}
	if r = e.do(t, "GET", "/api/logs?status=4xx", nil); strings.Contains(string(r.raw), `"route_id":"00000000`) {
		t.Errorf("a request no route matched has a route: %s", r.raw)
	}
}

// Paging through next_before visits every row once, newest first, where
// many rows share a timestamp; a full last page is followed by an empty
// one whose next_before is null.
func TestListLogsPaging(t *testing.T) {
	t.Parallel()
	e, pool := newLogsEnv(t, pgtest.NewMigratedDatabase(t), postgresLogs)
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Minute)
	var entries []events.RequestLogEntry
	for i := range 60 {
		// 4 distinct times, 15 rows each, on 3 nodes.
		e := logEntry(fmt.Sprintf("req-%02d", i), base.Add(time.Duration(i%4)*time.Millisecond))
		e.NodeID = fmt.Sprint("node-", i%3)
		entries = append(entries, e)
	}
	storetest.WriteRequestLogs(t, pool, entries)

	all := e.logs(t, "limit=1000").Data
	if len(all) != 60 {
		t.Fatalf("%d rows", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].Time.After(all[i-1].Time) {
			t.Fatalf("not newest first at %d", i)
		}
	}
	for _, limit := range []int{7, 15, 20} {
		var (
			got   []events.RequestLogRow
			query = fmt.Sprint("limit=", limit)
			pages int
		)
		for ; ; pages++ {
			if pages > 20 {
				t.Fatal("paging does not end")
			}
			p := e.logs(t, query)
			if len(p.Data) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(p.Data))
			}
			got = append(got, p.Data...)
			if p.NextBefore == nil {
				break
			}
			query = fmt.Sprintf("limit=%d&before=%s", limit, *p.NextBefore)
		}
		if requestIDs(got) != requestIDs(all) {
			t.Errorf("limit %d: paged\n%s\nwant\n%s", limit, requestIDs(got), requestIDs(all))
		}
		if wantPages := (60 + limit) / limit; pages+1 != wantPages {
			t.Errorf("limit %d: %d pages, want %d", limit, pages+1, wantPages)
		}
	}
	if n := len(e.logs(t, "").Data); n != 60 {
		t.Errorf("default limit: %d rows", n)
	}
}

func TestListLogsBadQuery(t *testing.T) {
	t.Parallel()
	e, _ := newLogsEnv(t, pgtest.NewMigratedDatabase(t), postgresLogs)
	for _, tc := range []struct{ query, field string }{
		{"route_id=nope", "route_id"},
		{"status=99", "status"},
		{"status=600", "status"},
		{"status=6xx", "status"},
		{"status=abc", "status"},
		{"method=GE%20T", "method"},
		{"since=yesterday", "since"},
		{"until=2026-01-02", "until"},
		{"since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"},
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"limit=x", "limit"},
		{"before=%%%", "before"},
		{"before=bm9wZQ", "before"}, // base64 of "nope"
	} {
		r := e.do(t, "GET", "/api/logs?"+tc.query, nil)
		expect(t, r, 400, "invalid_query")
		if len(r.body.Fields) != 1 || r.body.Fields[0].Field != tc.field || !strings.HasPrefix(r.body.Error, tc.field+" ") {
			t.Errorf("?%s: want field %s: %s", tc.query, tc.field, r.raw)
		}
	}
	for _, tc := range []struct{ path, field string }{
		{"?window=30s", "window"},
		{"?window=8d", "window"},
		{"?window=169h", "window"},
		{"?window=-1h", "window"},
		{"?window=soon", "window"},
	} {
		r := e.do(t, "GET", "/api/routes/"+uuid.NewString()+"/stats"+tc.path, nil)
		expect(t, r, 400, "invalid_query")
		if len(r.body.Fields) != 1 || r.body.Fields[0].Field != tc.field {
			t.Errorf("%s: %s", tc.path, r.raw)
		}
	}
	expect(t, e.do(t, "GET", "/api/routes/not-a-uuid/stats", nil), 404, "route_not_found")
}

type statsBody struct {
	RouteID       uuid.UUID        `json:"route_id"`
	Window        string           `json:"window"`
	WindowSeconds float64          `json:"window_seconds"`
	Requests      int64            `json:"requests"`
	Errors        int64            `json:"errors"`
	ClientErrors  int64            `json:"client_errors"`
	ErrorRate     float64          `json:"error_rate"`
	P50           float64          `json:"p50_ms"`
	P95           float64          `json:"p95_ms"`
	P99           float64          `json:"p99_ms"`
	BytesIn       int64            `json:"bytes_in"`
	BytesOut      int64            `json:"bytes_out"`
	ByClass       map[string]int64 `json:"by_class"`
}

func (e env) stats(t *testing.T, id uuid.UUID, query string) statsBody {
	t.Helper()
	r := e.do(t, "GET", "/api/routes/"+id.String()+"/stats"+query, nil)
	expect(t, r, 200, "")
	var st statsBody
	if err := json.Unmarshal(r.body.Data, &st); err != nil || !r.body.Success {
		t.Fatalf("%s: %v", r.raw, err)
	}
	return st
}

func TestRouteStats(t *testing.T) {
	t.Parallel()
	e, pool := newLogsEnv(t, pgtest.NewMigratedDatabase(t), postgresLogs)
	route := uuid.New()
	now := time.Now().UTC()
	var entries []events.RequestLogEntry
	for i := 1; i <= 100; i++ {
		// Latencies 1..100 ms; 10 answer 5xx and 20 answer 4xx. The first
		// 10 are 1..10 s old, the others 2..10 minutes, so a window of a
		// minute holds the first 10 however slow the test runs.
		age := time.Duration(i) * time.Second
		if i > 10 {
			age = time.Duration(i) * 6 * time.Second
		}
		e := logEntry(fmt.Sprint("in-", i), now.Add(-age))
		e.RouteID, e.Latency, e.BytesIn, e.BytesOut = route, time.Duration(i)*time.Millisecond, 2, 30
		switch {
		case i%10 == 0:
			e.Status = 502
		case i%5 == 1:
			e.Status = 429
		}
		entries = append(entries, e)
	}
	// An hour old: outside every window but 7d.
	old := logEntry("old", now.Add(-time.Hour))
	old.RouteID, old.Status = route, 500
	entries = append(entries, old)
	storetest.WriteRequestLogs(t, pool, entries)

	// All 100 are within the default 15m.
	st := e.stats(t, route, "")
	if st.RouteID != route || st.Window != "15m0s" || st.WindowSeconds != 900 || st.Requests != 100 || st.Errors != 10 || st.ClientErrors != 20 ||
		st.ErrorRate != 0.1 || st.P50 != 50.5 || st.P95 != 95.05 || st.P99 != 99.01 || st.BytesIn != 200 || st.BytesOut != 3000 {
		t.Errorf("15m: %+v", st)
	}
	if want := map[string]int64{"1xx": 0, "2xx": 70, "3xx": 0, "4xx": 20, "5xx": 10}; fmt.Sprint(st.ByClass) != fmt.Sprint(want) {
		t.Errorf("by class %v, want %v", st.ByClass, want)
	}
	// 1m holds the 10 newest.
	if st := e.stats(t, route, "?window=1m"); st.Requests != 10 || st.P50 != 5.5 || st.Errors != 1 || st.ClientErrors != 2 {
		t.Errorf("1m: %+v", st)
	}
	// 7d holds the old row too.
	if st := e.stats(t, route, "?window=7d"); st.Requests != 101 || st.Errors != 11 || st.Window != "168h0m0s" {
		t.Errorf("7d: %+v", st)
	}
	// A route without requests, or unknown, answers zeros.
	st = e.stats(t, uuid.New(), "?window=2h")
	if st.Requests != 0 || st.ErrorRate != 0 || st.P50 != 0 || st.P99 != 0 || len(st.ByClass) != 5 || st.Window != "2h0m0s" {
		t.Errorf("unknown route: %+v", st)
	}
}

func TestLogsDisabled(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	for name, logs := range map[string]func(*pgxpool.Pool) admin.RequestLogs{
		"nil":      func(*pgxpool.Pool) admin.RequestLogs { return nil },
		"nil pool": func(*pgxpool.Pool) admin.RequestLogs { return admin.PostgresRequestLogs{} },
	} {
		e, _ := newLogsEnv(t, db, logs)
		for _, path := range []string{"/api/logs", "/api/routes/" + uuid.NewString() + "/stats"} {
			r := e.do(t, "GET", path, nil)
			if r.status != 404 || r.body.Code != "request_log_disabled" {
				t.Errorf("%s: %s: %d %s", name, path, r.status, r.raw)
			}
		}
		expect(t, e.do(t, "GET", "/api/nothing", nil), 404, "not_found")
	}
}

// With Postgres down both endpoints answer 503 promptly.
func TestLogsOutageIs503(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	dbURL := srv.URL("isekai")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrateURL(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	e, pool := newLogsEnv(t, dbURL, postgresLogs)
	route := uuid.New()
	entry := logEntry("r", time.Now())
	entry.RouteID = route
	storetest.WriteRequestLogs(t, pool, []events.RequestLogEntry{entry})
	if p := e.logs(t, ""); len(p.Data) != 1 {
		t.Fatalf("before the outage: %+v", p)
	}
	if st := e.stats(t, route, ""); st.Requests != 1 {
		t.Fatalf("before the outage: %+v", st)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/logs", "/api/logs?route_id=" + route.String(), "/api/routes/" + route.String() + "/stats"} {
		start := time.Now()
		r := e.do(t, "GET", path, nil)
		expect(t, r, 503, "database_unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", path)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s took %v with the database down", path, d)
		}
	}
}
