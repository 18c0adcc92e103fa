package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

// collector is a listener handler that records what it is given and
// checks that positions arrive gapless and in order.
type collector struct {
	mu      sync.Mutex
	got     []events.Event
	orderOK bool
	failN   int // fail this many calls first
	calls   int
	changed chan struct{}
}

func newCollector() *collector { return &collector{orderOK: true, changed: make(chan struct{}, 1)} }

func (c *collector) handle(_ context.Context, evs []events.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls <= c.failN {
		return errors.New("handler refuses")
	}
	for _, e := range evs {
		if n := len(c.got); n > 0 && e.Position != c.got[n-1].Position+1 {
			c.orderOK = false
		}
		c.got = append(c.got, e)
	}
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return nil
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

// waitCount waits until the collector holds n events, failing after d.
func (c *collector) waitCount(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for c.count() < n {
		select {
		case <-c.changed:
		case <-deadline:
			t.Fatalf("listener delivered %d events within %v, want %d", c.count(), d, n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) != n || !c.orderOK {
		t.Fatalf("listener delivered %d events (want %d), in order: %v", len(c.got), n, c.orderOK)
	}
	for i, e := range c.got {
		if e.Position != int64(i+1) {
			t.Fatalf("event %d has position %d", i, e.Position)
		}
	}
}

func appendN(t *testing.T, s events.Store, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		_, err := s.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{
			Stream: "s", ExpectedVersion: events.AnyVersion, Type: "t", Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)),
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func startListener(t *testing.T, pool *pgxpool.Pool, s events.Store, c *collector, poll time.Duration) *events.Listener {
	t.Helper()
	l := events.NewListener(events.ListenerConfig{
		ConnConfig: pool.Config().ConnConfig, Store: s, Handler: c.handle,
		PollInterval: poll, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for !l.CaughtUp() || !l.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("listener did not catch up: %s", l.LastError())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return l
}

// With the safety poll out of the way, only NOTIFY can deliver events.
func TestListenerNotificationPath(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendN(t, s, 3) // before start: caught up by the initial read
	c := newCollector()
	l := startListener(t, pool, s, c, time.Hour)
	c.waitCount(t, 3, 5*time.Second)
	for i := 4; i <= 10; i++ {
		appendN(t, s, 1)
		c.waitCount(t, i, 2*time.Second)
	}
	if l.Cursor() != 10 || l.Head() != 10 {
		t.Errorf("cursor %d head %d, want 10", l.Cursor(), l.Head())
	}
}

// Killing the LISTEN session while events are appended loses nothing: the
// listener reconnects, LISTENs again and catches up from its cursor.
func TestListenerSurvivesTerminatedBackend(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	c := newCollector()
	startListener(t, pool, s, c, time.Hour)
	killed := 0
	for round := 1; round <= 3; round++ {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = 'isekai-listener' AND datname = current_database()`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		killed += n
		appendN(t, s, 3) // while the listener is disconnected
		c.waitCount(t, 3*round, 10*time.Second)
	}
	if killed == 0 {
		t.Fatal("no listener backend was terminated: the test proved nothing")
	}
}

// A restart of Postgres itself: the listener keeps its cursor, reconnects
// when the server is back, and catches up.
func TestListenerSurvivesPostgresRestart(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	if _, err := migrateURL(url); err != nil {
		t.Fatal(err)
	}
	pool := newPool(t, url)
	s := events.NewPostgresStore(pool)
	appendN(t, s, 2)
	c := newCollector()
	l := startListener(t, pool, s, c, time.Hour)
	c.waitCount(t, 2, 5*time.Second)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("listener still reports connected with Postgres down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Appends right after the restart race the reconnect: either the
	// notification or the reconnect's catch-up must deliver them.
	var err error
	for i := 0; i < 50; i++ {
		if _, err = s.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{Stream: "s", ExpectedVersion: events.AnyVersion, Type: "t", Data: json.RawMessage(`{}`)}}}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 2)
	c.waitCount(t, 5, 15*time.Second)
}

// Notifications are only wake-ups: stale, repeated, far-future and garbage
// payloads never deliver an event twice or out of order.
func TestListenerDuplicateNotificationsAreHarmless(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	c := newCollector()
	startListener(t, pool, s, c, time.Hour)
	appendN(t, s, 3)
	c.waitCount(t, 3, 5*time.Second)
	for _, payload := range []string{"1", "3", "3", "999", "not-a-number", ""} {
		if _, err := pool.Exec(context.Background(), `SELECT pg_notify($1, $2)`, events.NotifyChannel, payload); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, s, 1)
	c.waitCount(t, 4, 5*time.Second)
	time.Sleep(100 * time.Millisecond)
	c.waitCount(t, 4, time.Second)
}

// A handler that fails leaves the cursor in place; the events are offered
// again at the next wake-up (here the safety poll).
func TestListenerRetriesFailedHandler(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendN(t, s, 2)
	c := newCollector()
	c.failN = 2
	l := events.NewListener(events.ListenerConfig{ConnConfig: pool.Config().ConnConfig, Store: s, Handler: c.handle, PollInterval: 100 * time.Millisecond})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	c.waitCount(t, 2, 5*time.Second)
	if l.Cursor() != 2 {
		t.Errorf("cursor = %d, want 2", l.Cursor())
	}
}

func TestListenerStopIsSafe(t *testing.T) {
	t.Parallel()
	cfg, _ := pgx.ParseConfig("postgres://127.0.0.1:1/x")
	l := events.NewListener(events.ListenerConfig{ConnConfig: cfg, Store: nil, Handler: func(context.Context, []events.Event) error { return nil }})
	l.Stop() // before Start
	if err := l.Start(context.Background()); err == nil {
		t.Fatal("Start without a Store must fail")
	}
	l.Stop()
	l.Stop()
}

// An append larger than a read page reaches the handler in one call: the
// node swaps from the table before it straight to the table after it.
func TestListenerHandsOverLargeAppendsWhole(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	var mu sync.Mutex
	var calls [][2]int64
	l := events.NewListener(events.ListenerConfig{
		ConnConfig: pool.Config().ConnConfig, Store: s, PollInterval: time.Hour, BatchSize: 10,
		Handler: func(_ context.Context, evs []events.Event) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, [2]int64{evs[0].Position, evs[len(evs)-1].Position})
			return nil
		},
	})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	for !l.CaughtUp() {
		time.Sleep(5 * time.Millisecond)
	}
	ps := make([]events.Proposed, 35)
	for i := range ps {
		ps[i] = events.Proposed{Stream: fmt.Sprintf("s%d", i), ExpectedVersion: events.NoStream, Type: "t", Data: json.RawMessage(`{}`)}
	}
	if _, err := s.Append(context.Background(), events.AppendRequest{Events: ps}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Cursor() < 35 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || calls[0] != [2]int64{1, 35} {
		t.Fatalf("handler calls %v, want one call with 1..35", calls)
	}
}

// A catch-up hands over at most MaxHandOver events at once, in full pages,
// but never splits an append: one larger than the bound arrives whole.
func TestListenerNeverSplitsAnAppend(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendN(t, s, 5) // 1..5, one append each
	big := make([]events.Proposed, 23)
	for i := range big {
		big[i] = events.Proposed{Stream: fmt.Sprintf("b%d", i), ExpectedVersion: events.AnyVersion, Type: "t", Data: json.RawMessage(`{}`)}
	}
	if _, err := s.Append(context.Background(), events.AppendRequest{Events: big}); err != nil { // 6..28
		t.Fatal(err)
	}
	appendN(t, s, 9) // 29..37

	var (
		mu      sync.Mutex
		batches [][2]int64
	)
	c := newCollector()
	l := events.NewListener(events.ListenerConfig{
		ConnConfig: pool.Config().ConnConfig, Store: s, BatchSize: 4, MaxHandOver: 6, PollInterval: time.Hour,
		Handler: func(ctx context.Context, evs []events.Event) error {
			mu.Lock()
			batches = append(batches, [2]int64{evs[0].Position, evs[len(evs)-1].Position})
			mu.Unlock()
			return c.handle(ctx, evs)
		},
	})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	c.waitCount(t, 37, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	// Pages of 4: 1..4, 5..8 reach the bound inside the big append, which
	// is then completed to 28; then 29..32, 33..36 (the bound), and 37.
	for _, b := range batches {
		if b[0] <= 28 && b[1] >= 6 && (b[0] > 6 || b[1] < 28) {
			t.Fatalf("the append 6..28 was split: hand-overs %v", batches)
		}
		// Full pages until the bound is reached: at most bound + page - 1.
		if b[1]-b[0]+1 > 6+4-1 && !(b[0] <= 6 && b[1] >= 28) {
			t.Fatalf("a hand-over beyond the bound without an append to finish: %v", batches)
		}
	}
	t.Logf("hand-overs %v", batches)
}
