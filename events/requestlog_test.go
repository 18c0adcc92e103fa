package events_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

// logEntry is the i-th entry of a test burst: every field set, request id
// "req-<i>".
func logEntry(i int) events.RequestLogEntry {
	return events.RequestLogEntry{
		Time:            time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC).Add(time.Duration(i) * time.Millisecond),
		NodeID:          "node-a",
		RouteID:         uuid.MustParse("0190c5a2-7d3e-7b1a-9f00-000000000001"),
		Method:          "GET",
		Host:            "api.example.com",
		Path:            fmt.Sprintf("/v1/items/%d", i),
		Query:           "q=1&r=2",
		Status:          200 + i%5,
		Upstream:        "http://10.0.0.7:9000",
		UpstreamStatus:  200 + i%5,
		Latency:         time.Duration(1500+i) * time.Microsecond,
		UpstreamLatency: time.Duration(1000+i) * time.Microsecond,
		BytesIn:         int64(i),
		BytesOut:        int64(2 * i),
		ClientIP:        netip.MustParseAddr("192.0.2.10"),
		UserAgent:       "curl/8.5.0",
		RequestID:       fmt.Sprintf("req-%d", i),
		TraceID:         "4bf92f3577b34da6a3ce929d0e0e4736",
		Consumer:        "alice",
	}
}

// now is a time whose day has a partition in a freshly migrated database.
func now() time.Time { return time.Now().UTC() }

func newRequestLogWriter(t *testing.T, pool *pgxpool.Pool, cfg events.RequestLogConfig) *events.RequestLogWriter {
	t.Helper()
	w, err := events.NewRequestLogWriter(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

func startWriter(t *testing.T, w *events.RequestLogWriter) {
	t.Helper()
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func stopWriter(t *testing.T, w *events.RequestLogWriter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// enqueueAll enqueues entries from..to-1, retrying while the queue is full.
func enqueueAll(t *testing.T, w *events.RequestLogWriter, from, to int, mutate func(int, *events.RequestLogEntry)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for i := from; i < to; i++ {
		e := logEntry(i)
		e.Time = now().Add(time.Duration(i) * time.Microsecond)
		if mutate != nil {
			mutate(i, &e)
		}
		for !w.Enqueue(&e) {
			if time.Now().After(deadline) {
				t.Fatalf("queue still full after 20s at entry %d", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(25 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countRows(t *testing.T, pool *pgxpool.Pool, where string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM request_logs "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// distinctRequests is the number of distinct request ids and of rows.
func distinctRequests(t *testing.T, pool *pgxpool.Pool) (distinct, rows int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), "SELECT count(DISTINCT request_id), count(*) FROM request_logs").Scan(&distinct, &rows)
	if err != nil {
		t.Fatal(err)
	}
	return distinct, rows
}

// storedEntry reads the row of a request id back into an entry.
func storedEntry(t *testing.T, pool *pgxpool.Pool, requestID string) events.RequestLogEntry {
	t.Helper()
	var (
		e                                    events.RequestLogEntry
		routeID                              *uuid.UUID
		query, upstream, ua, trace, consumer *string
		upstreamStatus                       *int
		latency                              int64
		upstreamLatency                      *int64
		clientIP                             *netip.Prefix
	)
	err := pool.QueryRow(context.Background(), `SELECT time, node_id, route_id, method, host, path, query, status,
		upstream, upstream_status, latency_us, upstream_latency_us, bytes_in, bytes_out, client_ip,
		user_agent, request_id, trace_id, consumer FROM request_logs WHERE request_id = $1`, requestID).Scan(
		&e.Time, &e.NodeID, &routeID, &e.Method, &e.Host, &e.Path, &query, &e.Status,
		&upstream, &upstreamStatus, &latency, &upstreamLatency, &e.BytesIn, &e.BytesOut, &clientIP,
		&ua, &e.RequestID, &trace, &consumer)
	if err != nil {
		t.Fatalf("reading request %s: %v", requestID, err)
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		if *p == "" {
			t.Errorf("request %s: an optional text column holds '' instead of NULL", requestID)
		}
		return *p
	}
	if routeID != nil {
		e.RouteID = *routeID
	}
	e.Query, e.Upstream, e.UserAgent, e.TraceID, e.Consumer = str(query), str(upstream), str(ua), str(trace), str(consumer)
	if upstreamStatus != nil {
		e.UpstreamStatus = *upstreamStatus
	}
	e.Latency = time.Duration(latency) * time.Microsecond
	if upstreamLatency != nil {
		e.UpstreamLatency = time.Duration(*upstreamLatency) * time.Microsecond
	}
	if clientIP != nil {
		e.ClientIP = clientIP.Addr()
	}
	e.Time = e.Time.UTC()
	return e
}

// wantStored is e as Postgres keeps it: times in µs, UTC.
func wantStored(e events.RequestLogEntry) events.RequestLogEntry {
	e.Time = e.Time.Truncate(time.Microsecond).UTC()
	e.Latency = e.Latency.Truncate(time.Microsecond)
	e.UpstreamLatency = e.UpstreamLatency.Truncate(time.Microsecond)
	return e
}

func TestRequestLogConfigValidation(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://unused@127.0.0.1:1/x")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, tc := range []struct {
		name string
		cfg  events.RequestLogConfig
		want string
	}{
		{name: "negative batch", cfg: events.RequestLogConfig{BatchSize: -1}, want: "BatchSize"},
		{name: "negative queue", cfg: events.RequestLogConfig{QueueSize: -1}, want: "QueueSize"},
		{name: "negative flush", cfg: events.RequestLogConfig{FlushInterval: -time.Second}, want: "FlushInterval"},
		{name: "negative spool", cfg: events.RequestLogConfig{SpoolMaxBytes: -1}, want: "SpoolMaxBytes"},
		{name: "sample above 1", cfg: events.RequestLogConfig{SampleRate: 1.5}, want: "SampleRate"},
		{name: "sample negative", cfg: events.RequestLogConfig{SampleRate: -0.1}, want: "SampleRate"},
	} {
		if _, err := events.NewRequestLogWriter(pool, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := events.NewRequestLogWriter(nil, events.RequestLogConfig{}); err == nil {
		t.Error("a nil pool was accepted")
	}
	w, err := events.NewRequestLogWriter(pool, events.RequestLogConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if s := w.Stats(); s.QueueCap != events.DefaultRequestLogQueueSize {
		t.Errorf("default queue capacity = %d, want %d", s.QueueCap, events.DefaultRequestLogQueueSize)
	}
}

// Stop is safe before Start and twice; a stopped writer refuses entries
// and cannot be started again.
func TestRequestLogStopLifecycle(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{})
	e := logEntry(1)
	if !w.Enqueue(&e) {
		t.Fatal("Enqueue before Start refused")
	}
	if err := w.Stop(context.Background()); err == nil {
		t.Error("Stop before Start lost an entry without saying so")
	}
	if err := w.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if w.Enqueue(&e) {
		t.Error("Enqueue after Stop accepted")
	}
	if err := w.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
	if d := w.Stats().Dropped.Shutdown; d != 2 {
		t.Errorf("shutdown drops = %d, want 2", d)
	}

	w2 := newRequestLogWriter(t, pool, events.RequestLogConfig{})
	startWriter(t, w2)
	if err := w2.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	stopWriter(t, w2)
	stopWriter(t, w2)
}

// Every entry of a burst arrives exactly once, with its fields intact.
func TestRequestLogRoundTrip(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{FlushInterval: 20 * time.Millisecond})
	startWriter(t, w)

	const n = 10000
	enqueueAll(t, w, 0, n-3, nil)
	full := logEntry(n - 3)
	full.Time = now()
	minimal := events.RequestLogEntry{ // nil route, no upstream, IPv6 client
		Time: now(), NodeID: "node-b", Method: "POST", Host: "h", Path: "/", Status: 404,
		Latency: 37 * time.Microsecond, ClientIP: netip.MustParseAddr("2001:db8::1"), RequestID: "req-minimal",
	}
	defaulted := events.RequestLogEntry{Method: "GET", Path: "/x", Status: 502, RequestID: "req-defaulted"}
	for _, e := range []*events.RequestLogEntry{&full, &minimal, &defaulted} {
		if !w.Enqueue(e) {
			t.Fatal("Enqueue refused")
		}
	}
	stopWriter(t, w)

	distinct, rows := distinctRequests(t, pool)
	if distinct != n || rows != n {
		t.Fatalf("%d rows, %d distinct request ids; want %d of each", rows, distinct, n)
	}
	s := w.Stats()
	if s.Enqueued != n || s.Written != n || s.Dropped.Total() != 0 || s.QueueLen != 0 {
		t.Errorf("stats = %+v, want %d enqueued and written, nothing dropped or queued", s, n)
	}
	if s.Batches < 2 || s.LastBatchSize == 0 || s.LastFlushDuration <= 0 {
		t.Errorf("stats = %+v, want batches, a last batch size and a flush duration", s)
	}
	for _, want := range []events.RequestLogEntry{full, minimal} {
		if got := storedEntry(t, pool, want.RequestID); got != wantStored(want) {
			t.Errorf("stored\n %+v\nwant\n %+v", got, wantStored(want))
		}
	}
	// NodeID falls back to the config's (empty here) and Time to Enqueue's.
	got := storedEntry(t, pool, "req-defaulted")
	if got.Time.IsZero() || time.Since(got.Time) > time.Minute || got.ClientIP.IsValid() || got.RouteID != uuid.Nil {
		t.Errorf("defaulted entry stored as %+v", got)
	}
	if c := countRows(t, pool, "WHERE request_id = 'req-minimal' AND route_id IS NULL AND upstream_status IS NULL AND upstream IS NULL AND upstream_latency_us IS NULL AND query IS NULL"); c != 1 {
		t.Errorf("the minimal entry's absent fields are not NULL")
	}
}

// Stop drains a full queue into Postgres.
func TestRequestLogStopDrainsFullQueue(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	const n = 6000
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{QueueSize: n, BatchSize: 1000, FlushInterval: time.Hour, NodeID: "node-z"})
	enqueueAll(t, w, 0, n, func(_ int, e *events.RequestLogEntry) { e.NodeID = "" })
	e := logEntry(n)
	if w.Enqueue(&e) {
		t.Fatal("Enqueue into a full queue accepted")
	}
	if s := w.Stats(); s.QueueLen != n || s.Dropped.QueueFull != 1 {
		t.Fatalf("stats = %+v, want a full queue and one queue-full drop", s)
	}
	startWriter(t, w)
	stopWriter(t, w)
	if c := countRows(t, pool, "WHERE node_id = 'node-z'"); c != n {
		t.Errorf("%d rows after Stop, want %d", c, n)
	}
}

// A row Postgres rejects is isolated and dropped; the rest of its batch is
// written. Text Postgres cannot store (NUL, invalid UTF-8) is repaired
// rather than rejected, so clients cannot poison batches.
func TestRequestLogBadRowIsolated(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	const n = 1000
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{BatchSize: n})
	bad := map[int]bool{137: true, 612: true}
	enqueueAll(t, w, 0, n, func(i int, e *events.RequestLogEntry) {
		switch i {
		case 137:
			e.Status = 1000 // violates the status check
		case 612:
			e.Latency = -time.Second // violates latency_us >= 0
		case 300:
			e.Path = "/nul\x00byte"
		case 301:
			e.UserAgent = "bad\xff\xfeutf8"
		}
	})
	startWriter(t, w) // one batch of n holding both bad rows
	stopWriter(t, w)

	if c := countRows(t, pool, ""); c != n-len(bad) {
		t.Errorf("%d rows, want %d", c, n-len(bad))
	}
	for i := range bad {
		if c := countRows(t, pool, "WHERE request_id = $1", fmt.Sprintf("req-%d", i)); c != 0 {
			t.Errorf("bad row %d was written", i)
		}
	}
	if got := storedEntry(t, pool, "req-300").Path; got != "/nul\uFFFDbyte" {
		t.Errorf("path with NUL stored as %q", got)
	}
	if got := storedEntry(t, pool, "req-301").UserAgent; got != "bad\uFFFDutf8" {
		t.Errorf("invalid UTF-8 user agent stored as %q", got)
	}
	s := w.Stats()
	if s.Dropped.BadRow != 2 || s.Written != n-2 || s.Dropped.Total() != 2 {
		t.Errorf("stats = %+v, want 2 bad rows dropped and %d written", s, n-2)
	}
}

// Long fields are cut at their bounds, on a UTF-8 boundary.
func TestRequestLogTruncates(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{})
	e := logEntry(1)
	e.Time = now()
	e.Path = "/" + strings.Repeat("é", 3000)
	e.UserAgent = strings.Repeat("ü", 1000)
	e.Host = strings.Repeat("h", 1000)
	if !w.Enqueue(&e) {
		t.Fatal("Enqueue refused")
	}
	startWriter(t, w)
	stopWriter(t, w)
	got := storedEntry(t, pool, e.RequestID)
	for _, f := range []struct {
		name string
		v    string
		max  int
	}{
		{"path", got.Path, events.RequestLogMaxPath},
		{"user agent", got.UserAgent, events.RequestLogMaxUserAgent},
		{"host", got.Host, events.RequestLogMaxField},
	} {
		if len(f.v) > f.max || len(f.v) < f.max-3 || !utf8.ValidString(f.v) || strings.ContainsRune(f.v, utf8.RuneError) {
			t.Errorf("%s stored with %d bytes (valid UTF-8: %v), want at most %d whole characters", f.name, len(f.v), utf8.ValidString(f.v), f.max)
		}
	}
}

func TestRequestLogSampling(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	const n = 20000
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{SampleRate: 0.5, QueueSize: n})
	enqueueAll(t, w, 0, n, nil)
	s := w.Stats()
	if s.Enqueued+s.SampledOut != n || s.Enqueued < n/2-1000 || s.Enqueued > n/2+1000 {
		t.Fatalf("sampling at 0.5 kept %d and skipped %d of %d", s.Enqueued, s.SampledOut, n)
	}
	startWriter(t, w)
	stopWriter(t, w)
	if c := countRows(t, pool, ""); c != int(s.Enqueued) {
		t.Errorf("%d rows, want the %d sampled in", c, s.Enqueued)
	}
}

// outageServer is a private Postgres with a migrated "isekai" database and
// a pool on it whose connection attempts give up quickly.
func outageServer(t *testing.T) (stop func(), start func(), pool *pgxpool.Pool) {
	t.Helper()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	if _, err := migrateURL(url); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err = pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	stop = func() {
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	start = func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return stop, start, pool
}

func spoolSegments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Postgres stops in the middle of a burst and comes back: every entry is
// written exactly once, the ones of the outage through the spool.
func TestRequestLogOutageSpools(t *testing.T) {
	t.Parallel()
	stopDB, startDB, pool := outageServer(t)
	dir := filepath.Join(t.TempDir(), "spool")
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{SpoolDir: dir, BatchSize: 500, FlushInterval: 20 * time.Millisecond})
	startWriter(t, w)

	enqueueAll(t, w, 0, 3000, nil)
	waitFor(t, "the first 3000 rows", func() bool { return w.Stats().Written == 3000 })
	stopDB()
	enqueueAll(t, w, 3000, 8000, nil)
	waitFor(t, "the outage burst to reach the spool", func() bool { return w.Stats().Spooled >= 5000 })
	if s := w.Stats(); s.DatabaseUp || s.SpoolBytes == 0 || len(spoolSegments(t, dir)) == 0 {
		t.Errorf("during the outage: stats %+v, %d segments; want the database down and a spool on disk", s, len(spoolSegments(t, dir)))
	}
	startDB()
	enqueueAll(t, w, 8000, 10000, nil)
	waitFor(t, "every row after the outage", func() bool { return w.Stats().Written == 10000 })
	stopWriter(t, w)

	distinct, rows := distinctRequests(t, pool)
	if distinct != 10000 || rows != 10000 {
		t.Errorf("%d rows, %d distinct; want 10000 of each", rows, distinct)
	}
	s := w.Stats()
	if s.Dropped.Total() != 0 || s.Replayed < 5000 || s.Spooled != s.Replayed || s.SpoolBytes != 0 {
		t.Errorf("stats = %+v, want nothing dropped, >= 5000 replayed, all spooled rows replayed and an empty spool", s)
	}
	if segs := spoolSegments(t, dir); len(segs) != 0 {
		t.Errorf("spool segments left after replay: %q", segs)
	}
	// A spooled row keeps its fields.
	want := logEntry(5555)
	got := storedEntry(t, pool, want.RequestID)
	want.Time = got.Time // set by enqueueAll
	if got != wantStored(want) {
		t.Errorf("spooled row stored as\n %+v\nwant\n %+v", got, wantStored(want))
	}
}

// Beyond the spool's size, batches are dropped and counted; the rest
// arrives.
func TestRequestLogSpoolLimit(t *testing.T) {
	t.Parallel()
	stopDB, startDB, pool := outageServer(t)
	dir := t.TempDir()
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{SpoolDir: dir, SpoolMaxBytes: 64 << 10, BatchSize: 200, FlushInterval: 20 * time.Millisecond})
	startWriter(t, w)
	stopDB()
	const n = 10000
	enqueueAll(t, w, 0, n, nil)
	waitFor(t, "the burst to be spooled or dropped", func() bool {
		s := w.Stats()
		return s.Spooled+s.Dropped.SpoolFull == n
	})
	startDB()
	waitFor(t, "the spool to be replayed", func() bool { s := w.Stats(); return s.Written == s.Spooled })
	stopWriter(t, w)

	s := w.Stats()
	rows := countRows(t, pool, "")
	if s.Dropped.SpoolFull == 0 || s.Spooled == 0 || uint64(rows) != s.Written || s.Written+s.Dropped.Total() != n {
		t.Errorf("%d rows; stats = %+v; want some spooled, the rest counted as spool-full drops, rows = written", rows, s)
	}
	if s.Spooled*150 > 64<<10 {
		t.Errorf("%d rows spooled into a 64 KiB spool", s.Spooled)
	}
}

// A spool left by a writer stopped during an outage is replayed by the
// next writer on that directory.
func TestRequestLogSpoolSurvivesRestart(t *testing.T) {
	t.Parallel()
	stopDB, startDB, pool := outageServer(t)
	dir := t.TempDir()
	cfg := events.RequestLogConfig{SpoolDir: dir, BatchSize: 300, FlushInterval: 20 * time.Millisecond}
	w1 := newRequestLogWriter(t, pool, cfg)
	startWriter(t, w1)
	stopDB()
	enqueueAll(t, w1, 0, 2000, nil)
	stopWriter(t, w1) // the queue goes to the spool
	if s := w1.Stats(); s.Spooled != 2000 || s.Written != 0 {
		t.Fatalf("first writer: stats = %+v, want all 2000 spooled", s)
	}
	if len(spoolSegments(t, dir)) == 0 {
		t.Fatal("no spool segments on disk after Stop")
	}

	startDB()
	w2 := newRequestLogWriter(t, pool, cfg)
	startWriter(t, w2)
	waitFor(t, "the spool to be replayed", func() bool { return w2.Stats().Replayed == 2000 })
	stopWriter(t, w2)
	if distinct, rows := distinctRequests(t, pool); distinct != 2000 || rows != 2000 {
		t.Errorf("%d rows, %d distinct; want 2000 of each", rows, distinct)
	}
	if segs := spoolSegments(t, dir); len(segs) != 0 {
		t.Errorf("spool segments left after replay: %q", segs)
	}
}

func partitions(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'request_logs'::regclass ORDER BY 1`)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func partitionName(day time.Time) string { return "request_logs_" + day.UTC().Format("20060102") }

type maintainAction struct{ Action, Partition string }

func maintain(t *testing.T, pool *pgxpool.Pool, daysAhead int, retention string, at time.Time) []maintainAction {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT o_action, coalesce(o_partition, '')
		FROM isekai_request_logs_maintain($1, $2::interval, $3)`, daysAhead, retention, at)
	acts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[maintainAction])
	if err != nil {
		t.Fatal(err)
	}
	return acts
}

// Partitions are created ahead and dropped after the retention, across a
// simulated day change; rows without a partition land in the default one.
func TestRequestLogPartitions(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	ctx := context.Background()
	today := now()
	day := func(d int) string { return partitionName(today.AddDate(0, 0, d)) }

	// The migration made yesterday .. today+3.
	got := partitions(t, pool)
	for d := -1; d <= 3; d++ {
		if !slices.Contains(got, day(d)) {
			t.Errorf("fresh schema: no partition %s in %q", day(d), got)
		}
	}

	// Ten days ago, a node maintained and logged.
	past := today.AddDate(0, 0, -10)
	maintain(t, pool, 1, "7 days", past)
	insert := func(at time.Time, id string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO request_logs (time, node_id, method, host, path, status, latency_us, bytes_in, bytes_out, request_id)
			VALUES ($1, 'n', 'GET', 'h', '/', 200, 1, 0, 0, $2)`, at, id); err != nil {
			t.Fatal(err)
		}
	}
	insert(past, "old")
	insert(today.AddDate(0, 0, -30), "ancient") // no partition: default
	insert(today.AddDate(0, 0, 5), "future")    // no partition yet: default
	insert(today, "today")
	var where string
	if err := pool.QueryRow(ctx, `SELECT tableoid::regclass::text FROM request_logs WHERE request_id = 'old'`).Scan(&where); err != nil || where != day(-10) {
		t.Fatalf("the row of ten days ago is in %q (%v), want %s", where, err, day(-10))
	}

	// Today: the old partitions go, today's and the next ones exist, and the
	// day holding default rows is skipped rather than failing.
	acts := maintain(t, pool, 6, "7 days", today)
	for _, want := range []maintainAction{
		{"dropped", day(-10)}, {"dropped", day(-11)},
		{"created", day(4)}, {"skipped", day(5)}, {"created", day(6)},
	} {
		if !slices.Contains(acts, want) {
			t.Errorf("maintenance did %v, want it to include %v", acts, want)
		}
	}
	got = partitions(t, pool)
	for d := -11; d <= -8; d++ {
		if slices.Contains(got, day(d)) {
			t.Errorf("partition %s outlived the 7-day retention: %q", day(d), got)
		}
	}
	for _, d := range []int{-1, 0, 1, 4, 6} {
		if !slices.Contains(got, day(d)) {
			t.Errorf("no partition %s after maintenance: %q", day(d), got)
		}
	}
	for id, want := range map[string]int{"old": 0, "ancient": 0, "future": 1, "today": 1} {
		if c := countRows(t, pool, "WHERE request_id = $1", id); c != want {
			t.Errorf("%d rows %q after maintenance, want %d", c, id, want)
		}
	}

	// One node at a time: while another session holds the lock, nothing is
	// done and the caller does not wait.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7305692535)`); err != nil {
		t.Fatal(err)
	}
	if acts := maintain(t, pool, 9, "7 days", today); !slices.Equal(acts, []maintainAction{{"busy", ""}}) {
		t.Errorf("maintenance under another session's lock did %v, want busy", acts)
	}
	tx.Rollback(ctx)

	// A writer maintains on Start.
	if _, err := pool.Exec(ctx, "DROP TABLE "+day(3)); err != nil {
		t.Fatal(err)
	}
	w := newRequestLogWriter(t, pool, events.RequestLogConfig{})
	startWriter(t, w)
	waitFor(t, "the writer to recreate "+day(3), func() bool { return slices.Contains(partitions(t, pool), day(3)) })
	stopWriter(t, w)
}

// The spool directory helper puts the spool under the data directory.
func TestRequestLogSpoolDir(t *testing.T) {
	t.Parallel()
	if got, want := events.RequestLogSpoolDir("/var/lib/isekai"), "/var/lib/isekai/spool/request_logs"; got != want {
		t.Errorf("RequestLogSpoolDir = %q, want %q", got, want)
	}
	// A spool directory that cannot be created fails Start.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(context.Background(), "postgres://unused@127.0.0.1:1/x")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	w, err := events.NewRequestLogWriter(pool, events.RequestLogConfig{SpoolDir: filepath.Join(file, "spool"), MaintainInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err == nil {
		t.Error("Start with an impossible spool directory succeeded")
		_ = w.Stop(context.Background())
	}
}
