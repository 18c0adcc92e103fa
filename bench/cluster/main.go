// Command cluster measures Isekai's control plane end to end with real
// processes: it starts a Postgres (managed, under a temp dir) and three
// `isekai serve` nodes on it, then
//
//	-mode propagation: appends K route changes through one node's admin API
//	  and, for each, times how long until every node's proxy serves it
//	  (p50/p99/max, from the write's request and from its response);
//	-mode wait: times K admin writes with ?wait=cluster and K without;
//	-mode outage: proxies a steady request rate through one node, stops
//	  Postgres for a while in the middle, starts it again, and counts the
//	  requests missing from request_logs;
//	-mode churn: loads N routes, then measures proxy latency (p50/p99/max)
//	  on one route with and without continuous route churn, and how long
//	  a node takes to rebuild an N-route table;
//	-mode replay: appends -events route events over -routes routes and
//	  times replays from scratch and from snapshots, a node's start, and
//	  point-in-time reads (see replay.go).
//
// Everything listens on 127.0.0.1. Run it through scripts/bench-propagation.sh.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pglocal"
	"github.com/zakirkun/isekai/projections"
)

var client = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}

func main() {
	mode := flag.String("mode", "propagation", "propagation, wait, churn, outage or replay")
	nevents := flag.Int("events", 1000000, "events in the log (replay)")
	pgDir := flag.String("pgdir", "", "keep Postgres in this directory across runs (replay reuses a log of the same length)")
	outage := flag.Duration("outage", 30*time.Second, "how long Postgres is down (outage)")
	reqRate := flag.Int("req-rate", 1000, "proxied requests per second (outage)")
	bin := flag.String("bin", "bin/isekai", "isekai binary")
	k := flag.Int("k", 200, "route changes to time (propagation)")
	nroutes := flag.Int("routes", 10000, "routes in the table (churn)")
	dur := flag.Duration("duration", 10*time.Second, "load duration per phase (churn)")
	rate := flag.Int("rate", 0, "route changes per second while churning; 0 = as fast as the admin API takes them")
	flag.Parse()
	log.SetFlags(0)

	dir, err := os.MkdirTemp("", "isekai-bench-")
	check(err)
	defer os.RemoveAll(dir)
	// As root the managed server runs as postgres, which must reach it.
	check(os.Chmod(dir, 0o755))
	ctx := context.Background()
	pgPath := filepath.Join(dir, "pg")
	if *pgDir != "" {
		pgPath = *pgDir
		check(os.MkdirAll(pgPath, 0o755))
	}
	pg, err := pglocal.Start(ctx, pglocal.Config{Dir: pgPath})
	check(err)
	defer pg.Stop()
	db := pg.URL("isekai")

	backend := startBackend()
	nodes := 3
	switch *mode {
	case "churn", "outage":
		nodes = 1
	case "replay":
		nodes = 0
	}
	var procs []*proc
	for i := 0; i < nodes; i++ {
		p := startNode(*bin, db, filepath.Join(dir, fmt.Sprintf("n%d", i)), i)
		defer p.stop()
		procs = append(procs, p)
	}
	switch *mode {
	case "propagation":
		propagation(procs, backend, *k)
	case "outage":
		outageRun(ctx, pg, db, procs[0], backend, *reqRate, *outage)
	case "churn":
		churn(ctx, db, procs[0], backend, *nroutes, *dur, *rate)
	case "wait":
		waitRun(procs, backend, *k)
	case "replay":
		replayRun(ctx, dir, db, *bin, backend, *nevents, *nroutes)
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// startBackend answers with the request path, so a probe can tell which
// route version served it.
func startBackend() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	return "http://" + ln.Addr().String()
}

type proc struct {
	cmd   *exec.Cmd
	proxy string
	admin string
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startNode(bin, db, dir string, i int) *proc {
	pp, ap := freePort(), freePort()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+db, "SERVER_HOST=127.0.0.1", "SERVER_PORT="+strconv.Itoa(pp),
		"ADMIN_PORT="+strconv.Itoa(ap), "ISEKAI_DATA_DIR="+dir, fmt.Sprintf("ISEKAI_NODE_ID=bench-%d", i), "LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	check(os.MkdirAll(dir, 0o755))
	check(cmd.Start())
	p := &proc{cmd: cmd, proxy: fmt.Sprintf("http://127.0.0.1:%d", pp), admin: fmt.Sprintf("http://127.0.0.1:%d", ap)}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := client.Get(p.admin + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			log.Fatalf("node %d not ready", i)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait()
}

func post(method, url string, body any) (int, []byte) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	check(err)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func probe(url, want string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && string(b) == want
}

// propagation: K changes to one route's target, written on node 0, each
// timed until all nodes serve it.
func propagation(nodes []*proc, backend string, k int) {
	id := createRoute(nodes[0], "/p", backend+"/v0")
	var fromRequest, fromCommit, writes []time.Duration
	for i := 1; i <= k; i++ {
		want := fmt.Sprintf("/v%d", i)
		start := time.Now()
		status, body := post("PATCH", nodes[i%len(nodes)].admin+"/api/routes/"+id, map[string]any{"target_url": backend + want})
		committed := time.Now()
		if status != 200 {
			log.Fatalf("patch: %d %s", status, body)
		}
		var wg sync.WaitGroup
		var last atomic.Int64
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !probe(n.proxy+"/p", want) {
					time.Sleep(100 * time.Microsecond)
				}
				t := time.Now().UnixNano()
				for {
					l := last.Load()
					if t <= l || last.CompareAndSwap(l, t) {
						return
					}
				}
			}()
		}
		wg.Wait()
		done := time.Unix(0, last.Load())
		writes = append(writes, committed.Sub(start))
		fromRequest = append(fromRequest, done.Sub(start))
		fromCommit = append(fromCommit, max(done.Sub(committed), 0))
	}
	fmt.Printf("propagation over %d route changes, 3 nodes (write on a rotating node, probe every node's proxy):\n", k)
	report("admin write (request -> 200)", writes)
	report("served by all 3 (from request)", fromRequest)
	report("served by all 3 (after 200)", fromCommit)
}

// createRoute creates a route through n's admin API and returns its id.
func createRoute(n *proc, path, target string) string {
	status, body := post("POST", n.admin+"/api/routes", map[string]any{"path": path, "target_url": target})
	if status != 201 {
		log.Fatalf("create %s: %d %s", path, status, body)
	}
	var created struct {
		Data struct{ ID string } `json:"data"`
	}
	check(json.Unmarshal(body, &created))
	return created.Data.ID
}

func report(name string, ds []time.Duration) {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	fmt.Printf("  %-34s p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms  (n=%d)\n", name, ms(q(0.50)), ms(q(0.99)), ms(s[len(s)-1]), len(s))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// churn: N routes in the table; latency of a hot route under load, first
// quiet, then while routes are updated continuously (each update rebuilds
// the whole N-route table on the node).
func churn(ctx context.Context, db string, n *proc, backend string, nroutes int, dur time.Duration, rate int) {
	pool, err := pgxpool.New(ctx, db)
	check(err)
	defer pool.Close()
	store := events.NewPostgresStore(pool)
	ids := make([]uuid.UUID, nroutes)
	start := time.Now()
	const batch = 2000
	for lo := 0; lo < nroutes; lo += batch {
		var ps []events.Proposed
		for i := lo; i < min(lo+batch, nroutes); i++ {
			ids[i] = uuid.New()
			r := projections.Route{ID: ids[i], Path: fmt.Sprintf("/svc%d/v1", i), TargetURL: backend + fmt.Sprintf("/s%d", i), StripPath: true, Enabled: true, Timeout: 30}
			data, _ := json.Marshal(r)
			ps = append(ps, events.Proposed{Stream: projections.RouteStream(r.ID), Type: projections.EventRouteCreated, Data: data, Metadata: events.Metadata{Actor: "bench", Source: events.SourceBootstrap}})
		}
		_, err := store.Append(ctx, events.AppendRequest{Events: ps})
		check(err)
	}
	head, err := store.Head(ctx)
	check(err)
	waitApplied(n, head)
	fmt.Printf("loaded %d routes as events and the node applied them in %v\n", nroutes, time.Since(start).Round(time.Millisecond))

	hot := n.proxy + "/svc7/v1/x"
	if !probe(hot, "/s7/x") {
		log.Fatal("hot route not served")
	}
	quiet := load(hot, dur, nil)
	report("proxy latency, no churn", quiet)
	var changes atomic.Int64
	var rebuild []time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var tick <-chan time.Time
		if rate > 0 {
			t := time.NewTicker(time.Second / time.Duration(rate))
			defer t.Stop()
			tick = t.C
		}
		for i := 0; ; i++ {
			if tick != nil {
				select {
				case <-stop:
					return
				case <-tick:
				}
			}
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			status, body := post("PATCH", n.admin+"/api/routes/"+ids[1000+i%1000].String(), map[string]any{"timeout": 1 + i%60})
			if status != 200 {
				log.Fatalf("churn patch: %d %s", status, body)
			}
			rebuild = append(rebuild, time.Since(t0))
			changes.Add(1)
		}
	}()
	busy := load(hot, dur, stop)
	wg.Wait()
	report("proxy latency, churning", busy)
	fmt.Printf("  route changes during the churn phase: %d (%.0f/s), each a full %d-route table rebuild and swap\n",
		changes.Load(), float64(changes.Load())/dur.Seconds(), nroutes)
	report("admin write incl. local apply", rebuild)
}

func waitApplied(n *proc, pos int64) {
	for {
		resp, err := client.Get(n.admin + "/api/status")
		check(err)
		var st struct {
			Data struct {
				Applied int64 `json:"applied_position"`
			} `json:"data"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Data.Applied >= pos {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// load runs 8 closed-loop clients against url for d and returns every
// request's latency; it closes stop (when given) at the end.
func load(url string, d time.Duration, stop chan struct{}) []time.Duration {
	var mu sync.Mutex
	var all []time.Duration
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					log.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					log.Fatalf("hot route answered %d", resp.StatusCode)
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if stop != nil {
		close(stop)
	}
	return all
}

// outageRun: a steady rate of uniquely tagged requests for 5 s, then with
// Postgres stopped for d, then 10 s more; then every request must be in
// request_logs (spooled during the outage, replayed after).
func outageRun(ctx context.Context, pg *pglocal.Server, db string, n *proc, backend string, rate int, d time.Duration) {
	status, body := post("POST", n.admin+"/api/routes", map[string]any{"path": "/o", "target_url": backend})
	if status != 201 {
		log.Fatalf("create: %d %s", status, body)
	}
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var inflight sync.WaitGroup
		defer inflight.Wait()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				req, _ := http.NewRequest("GET", n.proxy+"/o/x", nil)
				req.Header.Set("X-Request-ID", fmt.Sprintf("outage-%d", i))
				resp, err := client.Do(req)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				sent.Add(1)
			}()
		}
	}()
	time.Sleep(5 * time.Second)
	check(pg.Stop())
	fmt.Printf("postgres stopped at %d requests\n", sent.Load())
	time.Sleep(d)
	check(pg.Start(ctx))
	fmt.Printf("postgres started again at %d requests\n", sent.Load())
	time.Sleep(10 * time.Second)
	close(stop)
	wg.Wait()

	pool, err := pgxpool.New(ctx, db)
	check(err)
	defer pool.Close()
	var rows, distinct int64
	deadline := time.Now().Add(60 * time.Second)
	for {
		check(pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT request_id) FROM request_logs WHERE request_id LIKE 'outage-%'`).Scan(&rows, &distinct))
		if rows >= sent.Load() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	resp, err := client.Get(n.admin + "/api/status")
	check(err)
	st, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("outage of %v at %d req/s: %d requests sent (%d failed), %d logged (%d distinct), %d lost\n",
		d, rate, sent.Load(), failed.Load(), rows, distinct, sent.Load()-distinct)
	fmt.Printf("node status: %s\n", st)
}
