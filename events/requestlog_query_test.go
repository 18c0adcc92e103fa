package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/events/storetest"
)

// rqPool is a pool on a fresh migrated database.
func rqPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// rqEntry is a minimal entry; the test sets what it filters on.
func rqEntry(id string, at time.Time) events.RequestLogEntry {
	return events.RequestLogEntry{
		Time: at, NodeID: "node-a", Method: "GET", Host: "h", Path: "/p",
		Status: 200, Latency: time.Millisecond, RequestID: id,
	}
}

func rqQuery(t *testing.T, pool *pgxpool.Pool, f events.RequestLogFilter) []events.RequestLogRow {
	t.Helper()
	rows, err := events.QueryRequestLogs(context.Background(), pool, f)
	if err != nil {
		t.Fatalf("%+v: %v", f, err)
	}
	return rows
}

func rqIDs(rows []events.RequestLogRow) string {
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.RequestID
	}
	return strings.Join(ids, ",")
}

func TestQueryRequestLogsFilters(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	routeA, routeB := uuid.New(), uuid.New()
	base := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	at := func(min int) time.Time { return base.Add(time.Duration(min) * time.Minute) }
	type row struct {
		id     string
		min    int
		route  uuid.UUID
		method string
		status int
	}
	var entries []events.RequestLogEntry
	for _, r := range []row{
		{"r1", 1, routeA, "GET", 200},
		{"r2", 2, routeA, "POST", 201},
		{"r3", 3, routeB, "GET", 404},
		{"r4", 4, uuid.Nil, "GET", 404},
		{"r5", 5, routeA, "GET", 500},
		{"r6", 6, routeB, "DELETE", 503},
		{"r7", 7, routeA, "GET", 302},
	} {
		e := rqEntry(r.id, at(r.min))
		e.RouteID, e.Method, e.Status = r.route, r.method, r.status
		entries = append(entries, e)
	}
	storetest.WriteRequestLogs(t, pool, entries)

	for _, tc := range []struct {
		name string
		f    events.RequestLogFilter
		want string
	}{
		{name: "all, newest first", want: "r7,r6,r5,r4,r3,r2,r1"},
		{name: "route", f: events.RequestLogFilter{RouteID: routeA}, want: "r7,r5,r2,r1"},
		{name: "exact status", f: events.RequestLogFilter{Status: 404}, want: "r4,r3"},
		{name: "status class", f: events.RequestLogFilter{Status: 5}, want: "r6,r5"},
		{name: "2xx", f: events.RequestLogFilter{Status: 2}, want: "r2,r1"},
		{name: "method", f: events.RequestLogFilter{Method: "GET"}, want: "r7,r5,r4,r3,r1"},
		{name: "since inclusive", f: events.RequestLogFilter{Since: at(5)}, want: "r7,r6,r5"},
		{name: "until exclusive", f: events.RequestLogFilter{Until: at(3)}, want: "r2,r1"},
		{name: "window", f: events.RequestLogFilter{Since: at(2), Until: at(6)}, want: "r5,r4,r3,r2"},
		{name: "combined", f: events.RequestLogFilter{RouteID: routeA, Method: "GET", Status: 2}, want: "r1"},
		{name: "limit", f: events.RequestLogFilter{Limit: 2}, want: "r7,r6"},
		{name: "before", f: events.RequestLogFilter{Before: &events.RequestLogCursor{Time: at(5), NodeID: "node-a", RequestID: "r5"}}, want: "r4,r3,r2,r1"},
		{name: "nothing", f: events.RequestLogFilter{RouteID: uuid.New()}, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rqIDs(rqQuery(t, pool, tc.f)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}

	if _, err := events.QueryRequestLogs(context.Background(), pool, events.RequestLogFilter{Status: 42}); err == nil || errors.Is(err, events.ErrUnavailable) {
		t.Errorf("status 42: err = %v, want a plain error", err)
	}
}

// A row reads back with every column, and NULL columns as zero values
// that JSON omits.
func TestQueryRequestLogsRow(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	at := time.Date(2026, 3, 4, 5, 6, 7, 891234000, time.UTC)
	full := events.RequestLogEntry{
		Time: at, NodeID: "node-a", RouteID: uuid.MustParse("0190c5a2-7d3e-7b1a-9f00-000000000001"),
		Method: "GET", Host: "api.example.com", Path: "/v1/x", Query: "a=1", Status: 502,
		Upstream: "http://10.0.0.7:9000", UpstreamStatus: 500, Latency: 1500 * time.Microsecond,
		UpstreamLatency: 1200 * time.Microsecond, BytesIn: 10, BytesOut: 20,
		ClientIP: netip.MustParseAddr("2001:db8::1"), UserAgent: "curl/8", RequestID: "full",
		TraceID: "trace", Consumer: "alice",
	}
	bare := rqEntry("bare", at.Add(-time.Second))
	bare.NodeID = ""
	storetest.WriteRequestLogs(t, pool, []events.RequestLogEntry{full, bare})

	rows := rqQuery(t, pool, events.RequestLogFilter{})
	if len(rows) != 2 {
		t.Fatalf("rows: %+v", rows)
	}
	want := events.RequestLogRow{
		Time: at, NodeID: "node-a", RouteID: full.RouteID, Method: "GET", Host: "api.example.com", Path: "/v1/x",
		Query: "a=1", Status: 502, Upstream: "http://10.0.0.7:9000", UpstreamStatus: 500, LatencyUS: 1500,
		UpstreamLatencyUS: 1200, BytesIn: 10, BytesOut: 20, ClientIP: full.ClientIP, UserAgent: "curl/8",
		RequestID: "full", TraceID: "trace", Consumer: "alice",
	}
	if rows[0] != want || rows[0].Time.Location() != time.UTC {
		t.Errorf("full row:\n got %+v\nwant %+v", rows[0], want)
	}
	if rows[1].NodeID != storetest.DefaultNodeID || rows[1].RouteID != uuid.Nil || rows[1].ClientIP.IsValid() || rows[1].Query != "" {
		t.Errorf("bare row: %+v", rows[1])
	}
	j, err := json.Marshal(rows[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"route_id", "query", "upstream", "client_ip", "user_agent", "trace_id", "consumer", "upstream_latency_us"} {
		if strings.Contains(string(j), `"`+absent+`"`) {
			t.Errorf("NULL %s present in %s", absent, j)
		}
	}
	if !strings.Contains(string(j), `"latency_us":1000`) || !strings.Contains(string(j), `"request_id":"bare"`) {
		t.Errorf("json: %s", j)
	}
}

// Paging with the cursor of each page's last row visits every row exactly
// once, newest first, even where many rows share a timestamp across nodes.
func TestQueryRequestLogsPaging(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	route := uuid.New()
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Minute)
	var entries []events.RequestLogEntry
	for i := range 250 {
		// 10 distinct times, 25 rows each, on 2 nodes.
		e := rqEntry(fmt.Sprintf("req-%03d", i), base.Add(time.Duration(i%10)*time.Millisecond))
		e.NodeID = []string{"node-a", "node-b"}[i%2]
		if i%3 == 0 {
			e.RouteID = route
		}
		entries = append(entries, e)
	}
	storetest.WriteRequestLogs(t, pool, entries)

	for _, tc := range []struct {
		name  string
		f     events.RequestLogFilter
		want  int
		limit int
	}{
		{name: "all", want: 250, limit: 7},
		{name: "route", f: events.RequestLogFilter{RouteID: route}, want: 84, limit: 5},
		{name: "page equals a tie group", want: 250, limit: 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := rqQuery(t, pool, events.RequestLogFilter{RouteID: tc.f.RouteID, Limit: 1000})
			if len(all) != tc.want {
				t.Fatalf("%d rows, want %d", len(all), tc.want)
			}
			for i := 1; i < len(all); i++ {
				a, b := all[i-1], all[i]
				if b.Time.After(a.Time) || b.Time.Equal(a.Time) && (b.NodeID > a.NodeID || b.NodeID == a.NodeID && b.RequestID >= a.RequestID) {
					t.Fatalf("not newest first at %d: %+v then %+v", i, a, b)
				}
			}
			var paged []events.RequestLogRow
			f := tc.f
			f.Limit = tc.limit
			for pages := 0; ; pages++ {
				if pages > 100 {
					t.Fatal("paging does not end")
				}
				page := rqQuery(t, pool, f)
				if len(page) > tc.limit {
					t.Fatalf("page of %d rows, limit %d", len(page), tc.limit)
				}
				paged = append(paged, page...)
				if len(page) < tc.limit {
					break
				}
				cur := page[len(page)-1].Cursor()
				f.Before = &cur
			}
			if got, want := rqIDs(paged), rqIDs(all); got != want {
				t.Errorf("paged:\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestQueryRequestLogsLimitBounds(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	base := time.Now().UTC().Add(-time.Minute)
	entries := make([]events.RequestLogEntry, 1005)
	for i := range entries {
		entries[i] = rqEntry(fmt.Sprint(i), base.Add(time.Duration(i)*time.Microsecond))
	}
	storetest.WriteRequestLogs(t, pool, entries)
	for _, tc := range []struct{ limit, want int }{
		{0, events.DefaultRequestLogLimit}, {-3, events.DefaultRequestLogLimit}, {1, 1}, {1000, 1000}, {5000, events.MaxRequestLogLimit},
	} {
		if got := len(rqQuery(t, pool, events.RequestLogFilter{Limit: tc.limit})); got != tc.want {
			t.Errorf("limit %d: %d rows, want %d", tc.limit, got, tc.want)
		}
	}
}

func TestQueryRouteStats(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	route, other := uuid.New(), uuid.New()
	now := time.Now().UTC().Truncate(time.Microsecond)
	var entries []events.RequestLogEntry
	for i := 1; i <= 100; i++ {
		// Latencies 1..100 ms; 10 answers 5xx, 20 answer 4xx.
		e := rqEntry(fmt.Sprint("in-", i), now.Add(-time.Duration(i)*time.Second))
		e.RouteID, e.Latency, e.BytesIn, e.BytesOut = route, time.Duration(i)*time.Millisecond, 1, 10
		switch {
		case i%10 == 0:
			e.Status = 503
		case i%5 == 1:
			e.Status = 404
		case i == 7:
			e.Status = 101
		case i == 8:
			e.Status = 304
		}
		entries = append(entries, e)
	}
	// Outside the window, or of another route, or of no route.
	for i, at := range []time.Time{now.Add(-16 * time.Minute), now.Add(-15 * time.Minute), now.Add(time.Second)} {
		e := rqEntry(fmt.Sprint("out-", i), at)
		e.RouteID, e.Status, e.Latency = route, 500, time.Hour
		entries = append(entries, e)
	}
	o := rqEntry("other", now.Add(-time.Second))
	o.RouteID, o.Status = other, 500
	n := rqEntry("none", now.Add(-time.Second))
	n.Status, n.Latency = 404, 7*time.Millisecond
	entries = append(entries, o, n)
	storetest.WriteRequestLogs(t, pool, entries)

	ctx := context.Background()
	st, err := events.QueryRouteStats(ctx, pool, route, 15*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	if st.Requests != 100 || st.Errors != 10 || st.ClientErrors != 20 || st.ErrorRate != 0.1 ||
		st.P50 != ms(50.5) || st.P95 != ms(95.05) || st.P99 != ms(99.01) ||
		st.BytesIn != 100 || st.BytesOut != 1000 || st.Window != 15*time.Minute || !st.Until.Equal(now) || !st.Since.Equal(now.Add(-15*time.Minute)) {
		t.Errorf("stats: %+v", st)
	}
	wantClass := map[string]int64{"1xx": 1, "2xx": 68, "3xx": 1, "4xx": 20, "5xx": 10}
	if fmt.Sprint(st.ByClass) != fmt.Sprint(wantClass) {
		t.Errorf("by class %v, want %v", st.ByClass, wantClass)
	}
	j, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"p50_ms":50.5`, `"p95_ms":95.05`, `"p99_ms":99.01`, `"error_rate":0.1`, `"window":"15m0s"`, `"window_seconds":900`, `"by_class":{"1xx":1,"2xx":68,`} {
		if !strings.Contains(string(j), s) {
			t.Errorf("json lacks %s: %s", s, j)
		}
	}

	// A shorter window sees only the newest rows: (now-30s, now] holds
	// latencies 1..29 ms, the row at exactly now-30s is out.
	st, err = events.QueryRouteStats(ctx, pool, route, 30*time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 29 || st.Errors != 2 || st.P50 != 15*time.Millisecond {
		t.Errorf("30s window: %+v", st)
	}

	// uuid.Nil is the traffic no route matched.
	st, err = events.QueryRouteStats(ctx, pool, uuid.Nil, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 1 || st.ClientErrors != 1 || st.P99 != 7*time.Millisecond {
		t.Errorf("unmatched: %+v", st)
	}

	// An unknown route has zero stats, not an error.
	st, err = events.QueryRouteStats(ctx, pool, uuid.New(), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 0 || st.ErrorRate != 0 || st.P50 != 0 || st.P99 != 0 || st.BytesIn != 0 || len(st.ByClass) != 5 || st.ByClass["5xx"] != 0 {
		t.Errorf("unknown route: %+v", st)
	}

	if _, err := events.QueryRouteStats(ctx, pool, route, 0, now); err == nil {
		t.Error("zero window accepted")
	}
}

// Statuses outside 100..599 count as "other".
func TestQueryRouteStatsOtherClass(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	route := uuid.New()
	now := time.Now().UTC()
	var entries []events.RequestLogEntry
	for i, status := range []int{0, 200, 999} {
		e := rqEntry(fmt.Sprint(i), now.Add(-time.Second))
		e.RouteID, e.Status = route, status
		entries = append(entries, e)
	}
	storetest.WriteRequestLogs(t, pool, entries)
	st, err := events.QueryRouteStats(context.Background(), pool, route, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 3 || st.ByClass["other"] != 2 || st.ByClass["2xx"] != 1 || st.Errors != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// Both queries report an unreachable database as ErrUnavailable, promptly.
func TestQueryRequestLogsUnavailable(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	if _, err := migrateURL(url); err != nil {
		t.Fatal(err)
	}
	pool := rqPool(t, url)
	storetest.WriteRequestLogs(t, pool, []events.RequestLogEntry{rqEntry("before-outage", time.Now())})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := events.QueryRequestLogs(ctx, pool, events.RequestLogFilter{}); !errors.Is(err, events.ErrUnavailable) {
		t.Errorf("QueryRequestLogs err = %v, want ErrUnavailable", err)
	}
	if _, err := events.QueryRouteStats(ctx, pool, uuid.New(), time.Minute, time.Now()); !errors.Is(err, events.ErrUnavailable) {
		t.Errorf("QueryRouteStats err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to report an outage", d)
	}
}

// The shapes of the API's queries walk the indexes the migration made for
// them instead of reading and sorting whole partitions.
func TestRequestLogQueriesUseIndexes(t *testing.T) {
	t.Parallel()
	pool := rqPool(t, pgtest.NewMigratedDatabase(t))
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// Whether the planner can walk an index in order, rather than which
	// plan it prefers on an empty table.
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off"); err != nil {
		t.Fatal(err)
	}
	const cols = "SELECT time, node_id, request_id FROM request_logs WHERE "
	const page = " ORDER BY time DESC, node_id DESC, request_id DESC LIMIT 100"
	for _, tc := range []struct{ name, sql, index string }{
		{"page", cols + "time <= $1 AND (time, node_id, request_id) < ($1, 'n', 'r')" + page, "_time_idx"},
		{"route page", cols + "route_id = $2 AND time <= $1 AND (time, node_id, request_id) < ($1, 'n', 'r')" + page, "_route_id_time_idx"},
		{"stats", "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us) FROM request_logs WHERE route_id = $2 AND time > $1::timestamptz - interval '15m' AND time <= $1", "_route_id_time_idx"},
	} {
		args := []any{time.Now()}
		if strings.Contains(tc.sql, "$2") {
			args = append(args, uuid.New())
		}
		p := explain(t, conn.Conn(), tc.sql, args...)
		if !strings.Contains(p, tc.index) || strings.Contains(p, "Seq Scan") || strings.Contains(p, "->  Sort") {
			t.Errorf("%s: want %s:\n%s", tc.name, tc.index, p)
		}
	}
}
