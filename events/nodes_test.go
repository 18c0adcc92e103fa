package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/migrations"
)

func newPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// appendEvents appends n events and returns the new head.
func appendEvents(t testing.TB, pool *pgxpool.Pool, n int) int64 {
	t.Helper()
	ps := make([]Proposed, n)
	for i := range ps {
		ps[i] = Proposed{Stream: "s", ExpectedVersion: AnyVersion, Type: "t", Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
	}
	res, err := NewPostgresStore(pool).Append(context.Background(), AppendRequest{Events: ps})
	if err != nil {
		t.Fatal(err)
	}
	return res.Events[n-1].Position
}

// startRegistry starts a registry on pool; tune, when set, adjusts the
// unexported tuning before Start. It is stopped gracefully at cleanup.
func startRegistry(t testing.TB, pool *pgxpool.Pool, cfg NodeRegistryConfig, tune func(*NodeRegistry)) *NodeRegistry {
	t.Helper()
	cfg.Pool = pool
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := NewNodeRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.minBackoff, r.maxBackoff = 20*time.Millisecond, 200*time.Millisecond
	if tune != nil {
		tune(r)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	return r
}

// notifyOnly leaves waiters nothing but notifications (and the stale
// timer) to wake them: the fallback polls are an hour.
func notifyOnly(r *NodeRegistry) { r.pollDown, r.pollUp = time.Hour, time.Hour }

// waitView reads r's view until ok accepts it.
func waitView(t testing.TB, r *NodeRegistry, timeout time.Duration, what string, ok func(ClusterView) bool) ClusterView {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var (
		v   ClusterView
		err error
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err = r.View(ctx)
		cancel()
		if err == nil && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still not %s: view %+v, err %v", timeout, what, v, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitUntil(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still not %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func node(v ClusterView, id string) (Node, bool) {
	for _, n := range v.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// positions says whether every named node is in v at the given position.
func positions(want map[string]int64) func(ClusterView) bool {
	return func(v ClusterView) bool {
		for id, pos := range want {
			if n, ok := node(v, id); !ok || n.AppliedPosition != pos {
				return false
			}
		}
		return true
	}
}

type waitResult struct {
	behind []Node
	err    error
	at     time.Time
}

// goWait runs WaitApplied in the background.
func goWait(r *NodeRegistry, timeout time.Duration, position int64) <-chan waitResult {
	out := make(chan waitResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		behind, err := r.WaitApplied(ctx, position)
		out <- waitResult{behind, err, time.Now()}
	}()
	return out
}

func notYet(t *testing.T, res <-chan waitResult, d time.Duration) {
	t.Helper()
	select {
	case r := <-res:
		t.Fatalf("WaitApplied returned before every node applied: behind %+v, err %v", r.behind, r.err)
	case <-time.After(d):
	}
}

func result(t *testing.T, res <-chan waitResult) waitResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("WaitApplied did not return")
		return waitResult{}
	}
}

// logBuffer captures a registry's log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, tc := range []struct {
		name string
		cfg  NodeRegistryConfig
		want string
	}{
		{name: "no pool", cfg: NodeRegistryConfig{NodeID: "n"}, want: "Pool"},
		{name: "no node id", cfg: NodeRegistryConfig{Pool: pool}, want: "NodeID"},
		{name: "node id too long", cfg: NodeRegistryConfig{Pool: pool, NodeID: strings.Repeat("n", MaxNodeIDLen+1)}, want: "NodeID"},
		{name: "stale before heartbeat", cfg: NodeRegistryConfig{Pool: pool, NodeID: "n", HeartbeatInterval: time.Second, StaleAfter: time.Second}, want: "StaleAfter"},
		{name: "default stale below heartbeat", cfg: NodeRegistryConfig{Pool: pool, NodeID: "n", HeartbeatInterval: time.Minute}, want: "StaleAfter"},
		{name: "forget before stale", cfg: NodeRegistryConfig{Pool: pool, NodeID: "n", StaleAfter: time.Hour, ForgetAfter: time.Minute}, want: "ForgetAfter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewNodeRegistry(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: err = %v, want one naming %s", err, tc.want)
			}
		})
	}
	r, err := NewNodeRegistry(NodeRegistryConfig{Pool: pool, NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.HeartbeatInterval != 2*time.Second || r.cfg.StaleAfter != 10*time.Second || r.cfg.ForgetAfter != 24*time.Hour {
		t.Errorf("defaults: heartbeat %s, stale %s, forget %s", r.cfg.HeartbeatInterval, r.cfg.StaleAfter, r.cfg.ForgetAfter)
	}
	if got := r.cfg.ConnConfig.RuntimeParams["application_name"]; got != "isekai-cluster" {
		t.Errorf("LISTEN session application_name = %q", got)
	}
	if pool.Config().ConnConfig.RuntimeParams["application_name"] == "isekai-cluster" {
		t.Error("New changed the pool's own connection config")
	}
}

// Three nodes on one database: the view shows each one's position, lag and
// liveness, and a wait for the head is woken by the last node's report
// through NOTIFY (the fallback polls are an hour here).
func TestViewAndWaitAcrossNodes(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	head := appendEvents(t, pool, 5)
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a", ProxyAddr: "127.0.0.1:8080", AdminAddr: "127.0.0.1:8081", Version: "v-test"}, notifyOnly)
	b := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-b"}, nil)
	c := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-c"}, nil)
	a.Report(head)
	b.Report(3)

	v := waitView(t, a, 5*time.Second, "at positions 5, 3, 0", positions(map[string]int64{"node-a": 5, "node-b": 3, "node-c": 0}))
	if v.Head != head {
		t.Errorf("Head = %d, want %d", v.Head, head)
	}
	if len(v.Nodes) != 3 {
		t.Fatalf("%d nodes, want 3: %+v", len(v.Nodes), v.Nodes)
	}
	for i, want := range []struct {
		id   string
		lag  int64
		self bool
	}{{"node-a", 0, true}, {"node-b", 2, false}, {"node-c", 5, false}} {
		n := v.Nodes[i]
		if n.ID != want.id || n.Lag != want.lag || n.Self != want.self || !n.Live {
			t.Errorf("node %d = {id %s lag %d self %v live %v}, want {%s %d %v true}", i, n.ID, n.Lag, n.Self, n.Live, want.id, want.lag, want.self)
		}
		if n.PID != os.Getpid() || n.StartedAt.IsZero() || n.HeartbeatAt.IsZero() || n.StoppedAt != nil || n.Instance == "" {
			t.Errorf("%s: pid %d, started %v, heartbeat %v, stopped %v, instance %q", n.ID, n.PID, n.StartedAt, n.HeartbeatAt, n.StoppedAt, n.Instance)
		}
	}
	if n := v.Nodes[0]; n.ProxyAddr != "127.0.0.1:8080" || n.AdminAddr != "127.0.0.1:8081" || n.Version != "v-test" || n.AppliedAt == nil {
		t.Errorf("node-a details: %+v", n)
	}
	if n := v.Nodes[2]; n.AppliedAt != nil {
		t.Errorf("node-c never reported, yet AppliedAt = %v", n.AppliedAt)
	}
	js, _ := json.Marshal(v.Nodes[0])
	for _, key := range []string{`"applied_position":5`, `"proxy_addr":`, `"heartbeat_at":`, `"live":true`, `"self":true`} {
		if !strings.Contains(string(js), key) {
			t.Errorf("JSON %s lacks %s", js, key)
		}
	}

	waitUntil(t, 5*time.Second, "listening", a.listening.Load)
	res := goWait(a, 5*time.Second, head)
	notYet(t, res, 200*time.Millisecond)
	b.Report(head)
	notYet(t, res, 100*time.Millisecond) // node-c is still behind
	reported := time.Now()
	c.Report(head)
	r := result(t, res)
	if r.err != nil || r.behind != nil {
		t.Fatalf("WaitApplied = %+v, %v; want nil, nil", r.behind, r.err)
	}
	took := r.at.Sub(reported)
	t.Logf("WaitApplied returned %s after the last report", took)
	if took > time.Second {
		t.Errorf("WaitApplied returned %s after the last report; a NOTIFY wakes it in milliseconds", took)
	}
	// Already converged: no waiting at all.
	if behind, err := a.WaitApplied(t.Context(), head); err != nil || behind != nil {
		t.Errorf("WaitApplied on a converged cluster = %+v, %v", behind, err)
	}
}

// A node that never reports the position is returned as the one laggard
// when the wait's deadline passes.
func TestWaitAppliedDeadlineReturnsLaggards(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	head := appendEvents(t, pool, 3)
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a"}, nil)
	b := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-b"}, nil)
	a.Report(head)
	b.Report(1)
	waitView(t, a, 5*time.Second, "at positions 3, 1", positions(map[string]int64{"node-a": 3, "node-b": 1}))

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	behind, err := a.WaitApplied(ctx, head)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if len(behind) != 1 || behind[0].ID != "node-b" || behind[0].AppliedPosition != 1 || behind[0].Lag != 2 || !behind[0].Live {
		t.Errorf("behind = %+v, want node-b alone at 1 with lag 2", behind)
	}
	if took < 300*time.Millisecond || took > time.Second {
		t.Errorf("WaitApplied took %s with a 300ms deadline", took)
	}
}

// A node that dies without leaving turns stale after StaleAfter, by the
// database's clock, and a wait stops waiting for it then, woken by its own
// timer (the polls are an hour).
func TestCrashedNodeTurnsStale(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	cfg := func(id string) NodeRegistryConfig {
		return NodeRegistryConfig{NodeID: id, HeartbeatInterval: 100 * time.Millisecond, StaleAfter: time.Second}
	}
	a := startRegistry(t, pool, cfg("node-a"), notifyOnly)
	b := startRegistry(t, pool, cfg("node-b"), nil)
	a.Report(2)
	b.Report(1)
	waitView(t, a, 5*time.Second, "at positions 2, 1", positions(map[string]int64{"node-a": 2, "node-b": 1}))

	b.halt() // a crash: no graceful leave
	crashed := time.Now()
	v, err := a.View(t.Context())
	if n, _ := node(v, "node-b"); err != nil || !n.Live {
		t.Fatalf("node-b just after its crash: %+v, %v; want still live until StaleAfter", n, err)
	}
	res := goWait(a, 5*time.Second, 2)
	r := result(t, res)
	if r.err != nil || r.behind != nil {
		t.Fatalf("WaitApplied = %+v, %v; want nil once node-b is stale", r.behind, r.err)
	}
	took := r.at.Sub(crashed)
	t.Logf("WaitApplied returned %s after the crash (StaleAfter 1s, heartbeat 100ms)", took)
	// A nil return means a read found node-b stale; it must come soon after.
	if took > 2500*time.Millisecond {
		t.Errorf("WaitApplied returned %s after the crash, want about StaleAfter", took)
	}
	v, err = a.View(t.Context())
	nb, _ := node(v, "node-b")
	na, _ := node(v, "node-a")
	if err != nil || nb.Live || nb.StoppedAt != nil || !na.Live {
		t.Errorf("after StaleAfter: node-a live %v, node-b live %v stopped %v (err %v); want a live, b stale but not stopped", na.Live, nb.Live, nb.StoppedAt, err)
	}
	if v.Nodes[0].ID != "node-a" {
		t.Errorf("live nodes are not listed first: %+v", v.Nodes)
	}
}

// Stop is a graceful leave: the node is not live at once, and a wait that
// was held up by it returns.
func TestStopLeavesAtOnce(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a"}, notifyOnly)
	b := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-b"}, nil)
	a.Report(4)
	b.Report(2)
	waitView(t, a, 5*time.Second, "at positions 4, 2", positions(map[string]int64{"node-a": 4, "node-b": 2}))
	waitUntil(t, 5*time.Second, "listening", a.listening.Load)

	res := goWait(a, 5*time.Second, 4)
	notYet(t, res, 100*time.Millisecond)
	b.Report(3) // not sent before the leave, but carried by it
	b.Stop(t.Context())
	stopped := time.Now()
	v, err := a.View(t.Context())
	n, _ := node(v, "node-b")
	if err != nil || n.Live || n.StoppedAt == nil || n.AppliedPosition != 3 {
		t.Errorf("node-b right after Stop: %+v (err %v); want not live, stopped, at 3", n, err)
	}
	r := result(t, res)
	if r.err != nil || r.behind != nil {
		t.Fatalf("WaitApplied = %+v, %v; want nil once node-b left", r.behind, r.err)
	}
	if took := r.at.Sub(stopped); took > time.Second {
		t.Errorf("WaitApplied returned %s after node-b left", took)
	}

	// Stop is idempotent, Start after Stop is refused, Report after Stop is
	// harmless.
	b.Stop(t.Context())
	b.Report(10)
	if err := b.Start(t.Context()); err == nil {
		t.Error("Start after Stop succeeded")
	}
	unstarted, err := NewNodeRegistry(NodeRegistryConfig{Pool: pool, NodeID: "node-c"})
	if err != nil {
		t.Fatal(err)
	}
	unstarted.Stop(t.Context())
	unstarted.Stop(t.Context())
}

// listenNodes opens a session listening on NodesNotifyChannel.
func listenNodes(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	watch, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Close(context.Background()) })
	if _, err := watch.Exec(t.Context(), "LISTEN "+NodesNotifyChannel); err != nil {
		t.Fatal(err)
	}
	return watch
}

// notifications returns the payloads received until 200ms pass without one.
func notifications(t *testing.T, watch *pgx.Conn) []string {
	t.Helper()
	var got []string
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		n, err := watch.WaitForNotification(ctx)
		cancel()
		if err != nil {
			return got
		}
		got = append(got, n.Payload)
	}
}

// Report never blocks its caller (the node's event handler): a burst of
// calls costs memory operations, and is sent as a few coalesced reports
// whose last carries the final position.
func TestReportCoalesces(t *testing.T) {
	t.Parallel()
	url := pgtest.NewMigratedDatabase(t)
	pool := newPool(t, url)
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a"}, nil)
	waitView(t, a, 5*time.Second, "registered", positions(map[string]int64{"node-a": 0}))

	watch := listenNodes(t, url)
	// Reports notify while a write waits: count them by their notifications.
	if _, err := watch.Exec(t.Context(), "SELECT isekai_node_wait_begin(gen_random_uuid(), 1)"); err != nil {
		t.Fatal(err)
	}

	const n = 10000
	start := time.Now()
	for i := int64(1); i <= n; i++ {
		a.Report(i)
	}
	took := time.Since(start)
	t.Logf("%d Report calls took %s", n, took)
	if took > 100*time.Millisecond {
		t.Errorf("%d Report calls took %s; Report must not wait for the database", n, took)
	}
	a.Report(5) // lower: ignored
	waitView(t, a, 5*time.Second, "at the final position", positions(map[string]int64{"node-a": n}))

	sends := len(notifications(t, watch))
	t.Logf("%d reports for %d Report calls", sends, n)
	if sends == 0 || sends > n/10 {
		t.Errorf("%d reports reached the database for %d Report calls; want a few, coalesced", sends, n)
	}
}

// Reports and the LISTEN session survive a Postgres restart: a position
// reported during the outage reaches the table when the server is back,
// and waits are woken by NOTIFY again.
func TestSurvivesPostgresRestart(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	if _, err := migrations.ApplyURL(t.Context(), url); err != nil {
		t.Fatal(err)
	}
	pool := newPool(t, url)
	cfg := func(id string) NodeRegistryConfig {
		return NodeRegistryConfig{NodeID: id, HeartbeatInterval: 200 * time.Millisecond, StaleAfter: 5 * time.Second}
	}
	a := startRegistry(t, pool, cfg("node-a"), nil)
	b := startRegistry(t, pool, cfg("node-b"), notifyOnly)
	a.Report(1)
	b.Report(1)
	waitView(t, b, 5*time.Second, "at positions 1, 1", positions(map[string]int64{"node-a": 1, "node-b": 1}))

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "disconnected", func() bool { return !a.listening.Load() && !b.listening.Load() })
	a.Report(3) // during the outage
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	start := time.Now()
	_, err := b.WaitApplied(ctx, 3)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("WaitApplied with Postgres down: %v after %s; want the deadline error on time", err, time.Since(start))
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitView(t, b, 15*time.Second, "node-a at 3 after the restart", positions(map[string]int64{"node-a": 3}))
	waitUntil(t, 15*time.Second, "listening again", b.listening.Load)

	b.Report(4)
	waitView(t, b, 5*time.Second, "node-b at 4", positions(map[string]int64{"node-b": 4}))
	res := goWait(b, 10*time.Second, 4)
	notYet(t, res, 200*time.Millisecond)
	reported := time.Now()
	a.Report(4)
	r := result(t, res)
	if r.err != nil || r.behind != nil {
		t.Fatalf("WaitApplied after the restart = %+v, %v", r.behind, r.err)
	}
	if took := r.at.Sub(reported); took > time.Second {
		t.Errorf("WaitApplied returned %s after the report; the LISTEN session did not come back", took)
	}
}

// While the LISTEN session is down, waits still end, by polling.
func TestWaitPollsWithoutListener(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a"}, nil)
	a.Report(2)
	waitView(t, a, 5*time.Second, "node-a at 2", positions(map[string]int64{"node-a": 2}))
	// Not started: no LISTEN session, and its own row does not exist.
	w, err := NewNodeRegistry(NodeRegistryConfig{Pool: pool, NodeID: "waiter"})
	if err != nil {
		t.Fatal(err)
	}
	res := goWait(w, 5*time.Second, 3)
	notYet(t, res, 150*time.Millisecond)
	reported := time.Now()
	a.Report(3)
	r := result(t, res)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if took := r.at.Sub(reported); took > time.Second {
		t.Errorf("polling WaitApplied returned %s after the report", took)
	}
}

// A heartbeat puts back the node's row when it is gone (a wiped table) and
// deletes the rows of nodes silent for ForgetAfter.
func TestHeartbeatRestoresAndForgets(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	_, err := pool.Exec(t.Context(), `INSERT INTO nodes (id, instance, heartbeat_at) VALUES
		('long-gone', gen_random_uuid(), now() - interval '2 hours'),
		('recently-gone', gen_random_uuid(), now() - interval '30 minutes')`)
	if err != nil {
		t.Fatal(err)
	}
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a", HeartbeatInterval: 50 * time.Millisecond, StaleAfter: time.Second, ForgetAfter: time.Hour}, nil)
	a.Report(7)
	waitView(t, a, 5*time.Second, "node-a at 7", positions(map[string]int64{"node-a": 7}))
	if _, err := pool.Exec(t.Context(), `DELETE FROM nodes WHERE id = 'node-a'`); err != nil {
		t.Fatal(err)
	}
	v := waitView(t, a, 5*time.Second, "node-a back at 7 and long-gone forgotten", func(v ClusterView) bool {
		_, gone := node(v, "long-gone")
		return positions(map[string]int64{"node-a": 7})(v) && !gone
	})
	n, _ := node(v, "node-a")
	if !n.Live || !n.Self {
		t.Errorf("restored node-a: %+v", n)
	}
	if n, ok := node(v, "recently-gone"); !ok || n.Live {
		t.Errorf("recently-gone (stale, not yet forgotten): present %v, %+v", ok, n)
	}
}

// Two processes with one node id: the later one takes the row over, and the
// earlier one, whose reports are now refused, logs the conflict once.
func TestSameNodeIDTwoProcesses(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	logs := &logBuffer{}
	cfg := NodeRegistryConfig{NodeID: "node-x", HeartbeatInterval: 20 * time.Millisecond, StaleAfter: time.Second}
	first := cfg
	first.Logger = slog.New(slog.NewTextHandler(logs, nil))
	a := startRegistry(t, pool, first, nil)
	a.Report(5)
	v := waitView(t, a, 5*time.Second, "node-x at 5", positions(map[string]int64{"node-x": 5}))
	if n := v.Nodes[0]; !n.Self || n.Instance != a.instance.String() {
		t.Fatalf("first process's row: %+v", n)
	}

	b := startRegistry(t, pool, cfg, nil)
	b.Report(2)
	// The new process's own position, not its predecessor's.
	v = waitView(t, b, 5*time.Second, "node-x taken over at 2", positions(map[string]int64{"node-x": 2}))
	if n := v.Nodes[0]; !n.Self || n.Instance != b.instance.String() || len(v.Nodes) != 1 {
		t.Fatalf("after the takeover, from the second process: %+v", v.Nodes)
	}
	waitUntil(t, 5*time.Second, "the conflict logged", func() bool { return strings.Contains(logs.String(), "used by two processes") })
	a.Report(9)
	time.Sleep(300 * time.Millisecond) // about 15 heartbeats of the first process
	if got := strings.Count(logs.String(), "used by two processes"); got != 1 {
		t.Errorf("the conflict was logged %d times in 300ms, want once a minute:\n%s", got, logs.String())
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "node=node-x") {
		t.Errorf("conflict log: %s", logs.String())
	}
	v, err := a.View(t.Context())
	if err != nil || len(v.Nodes) != 1 || v.Nodes[0].Self || v.Nodes[0].AppliedPosition != 2 {
		t.Errorf("the first process moved the row it lost, or sees it as its own: %+v, %v", v.Nodes, err)
	}
}

// BenchmarkReportWait times a convergence round on two nodes: both report
// a new position, then one waits until every live node has applied it.
func BenchmarkReportWait(b *testing.B) {
	pool := newPool(b, pgtest.NewMigratedDatabase(b))
	x := startRegistry(b, pool, NodeRegistryConfig{NodeID: "node-x"}, nil)
	y := startRegistry(b, pool, NodeRegistryConfig{NodeID: "node-y"}, nil)
	waitView(b, y, 5*time.Second, "both registered", positions(map[string]int64{"node-x": 0, "node-y": 0}))
	waitUntil(b, 5*time.Second, "listening", y.listening.Load)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		pos := int64(i + 1)
		y.Report(pos)
		x.Report(pos)
		if behind, err := y.WaitApplied(ctx, pos); err != nil {
			b.Fatal(behind, err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/wait")
}

// Reports NOTIFY only while a write waits for a position they reach (a
// NOTIFY serializes commits with every other notifying transaction), and a
// wait removes its row when it ends.
func TestReportsNotifyOnlyWhileWaited(t *testing.T) {
	t.Parallel()
	url := pgtest.NewMigratedDatabase(t)
	pool := newPool(t, url)
	a := startRegistry(t, pool, NodeRegistryConfig{NodeID: "node-a"}, notifyOnly)
	waitView(t, a, 5*time.Second, "registered", positions(map[string]int64{"node-a": 0}))
	watch := listenNodes(t, url)
	notified := func() []string { return notifications(t, watch) }

	a.Report(3)
	waitView(t, a, 5*time.Second, "at 3", positions(map[string]int64{"node-a": 3}))
	if got := notified(); len(got) != 0 {
		t.Fatalf("reports with no write waiting notified %q", got)
	}

	head := appendEvents(t, pool, 5)
	done := make(chan error, 1)
	go func() {
		_, err := a.WaitApplied(t.Context(), head)
		done <- err
	}()
	waitUntil(t, 5*time.Second, "the wait recorded", func() bool {
		var n int
		_ = pool.QueryRow(t.Context(), `SELECT count(*) FROM node_waits`).Scan(&n)
		return n == 1
	})
	a.Report(head)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("the wait was not woken by the report's notification")
	}
	if got := notified(); len(got) != 1 || got[0] != fmt.Sprintf("node-a:%d", head) {
		t.Fatalf("notifications while a write waited: %q", got)
	}
	waitUntil(t, 5*time.Second, "the wait's row removed", func() bool {
		var n int
		_ = pool.QueryRow(t.Context(), `SELECT count(*) FROM node_waits`).Scan(&n)
		return n == 0
	})
}
