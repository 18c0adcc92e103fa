package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events/pgtest"
)

// A burst through the proxy: every request appears exactly once in
// request_logs, with the status the client got, the gateway's own 404, 502
// and 504 included, and upstream 500s recorded as 500.
func TestRequestLogBurst(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	n, _ := startTestNode(t, db, "log1")
	up := backend(t, "up")
	fail := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(1500 * time.Millisecond) })
	failSrv, slowSrv := serveHTTP(t, fail), serveHTTP(t, slow)
	admin := "http://" + n.adminAddr
	var okID string
	for _, r := range []map[string]any{
		{"path": "/ok", "target_url": up.URL},
		{"path": "/fail", "target_url": failSrv},
		{"path": "/dead", "target_url": "http://127.0.0.1:1"},
		{"path": "/slow", "target_url": slowSrv, "timeout": 1},
	} {
		status, res, _ := call(t, "POST", admin+"/api/routes", r)
		if status != 201 {
			t.Fatalf("create %v: %d %+v", r["path"], status, res)
		}
		if okID == "" {
			var created struct{ ID string }
			_ = json.Unmarshal(res.Data, &created)
			okID = created.ID
		}
	}
	proxy := "http://" + n.proxyAddr
	plan := func(i int) (string, int) {
		switch {
		case i%100 == 0:
			return "/nowhere", 404
		case i%100 == 1:
			return "/dead/x", 502
		case i%10 == 2:
			return "/fail/x", 500
		}
		return "/ok/x", 200
	}
	const total, slowN = 10000, 4
	want := map[int]int{504: slowN}
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(sent.Add(1)) - 1; i < total; i = int(sent.Add(1)) - 1 {
				path, status := plan(i)
				req, _ := http.NewRequest("GET", proxy+path, nil)
				req.Header.Set("X-Request-ID", fmt.Sprintf("burst-%d", i))
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
				if resp.StatusCode != status {
					errs <- fmt.Errorf("%s: %d, want %d", path, resp.StatusCode, status)
					return
				}
			}
		}()
	}
	for i := 0; i < slowN; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", proxy+"/slow", nil)
			req.Header.Set("X-Request-ID", fmt.Sprintf("slow-%d", i))
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 504 {
				errs <- fmt.Errorf("/slow: %d, want 504", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := 0; i < total; i++ {
		_, s := plan(i)
		want[s]++
	}

	pool, err := pgxpool.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var rows, distinct int
	eventually(t, 15*time.Second, "all requests logged", func() (bool, string) {
		err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM request_logs`).Scan(&rows, &distinct)
		return err == nil && rows >= total+slowN, fmt.Sprint(rows, err)
	})
	time.Sleep(300 * time.Millisecond) // anything beyond would be a duplicate
	if err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM request_logs`).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != total+slowN || distinct != rows {
		t.Fatalf("request_logs has %d rows (%d distinct ids), want %d, each once", rows, distinct, total+slowN)
	}
	got := map[int]int{}
	r, err := pool.Query(context.Background(), `SELECT status, count(*) FROM request_logs GROUP BY status`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var s, c int
		if err := r.Scan(&s, &c); err != nil {
			t.Fatal(err)
		}
		got[s] = c
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses logged %v, want %v", got, want)
	}
	// The same through the admin API.
	status, res, _ := call(t, "GET", admin+"/api/routes/"+okID+"/stats?window=15m", nil)
	var stats struct {
		Requests int64            `json:"requests"`
		ByClass  map[string]int64 `json:"by_class"`
	}
	_ = json.Unmarshal(res.Data, &stats)
	if status != 200 || stats.Requests != int64(want[200]) || stats.ByClass["2xx"] != int64(want[200]) {
		t.Errorf("route stats: %d %s", status, res.Data)
	}
	status, res, _ = call(t, "GET", admin+"/api/logs?status=404&limit=5", nil)
	var logs []struct {
		Status int    `json:"status"`
		Path   string `json:"path"`
	}
	_ = json.Unmarshal(res.Data, &logs)
	if status != 200 || len(logs) != 5 || logs[0].Status != 404 || logs[0].Path != "/nowhere" {
		t.Errorf("logs: %d %s", status, res.Data)
	}
	_, st, _ := call(t, "GET", admin+"/api/status", nil)
	var rl struct {
		RequestLog struct {
			Written uint64 `json:"written"`
			Dropped uint64 `json:"dropped"`
		} `json:"request_log"`
	}
	_ = json.Unmarshal(st.Data, &rl)
	if rl.RequestLog.Written != uint64(rows) || rl.RequestLog.Dropped != 0 {
		t.Errorf("status request_log: %s", st.Data)
	}

	var upstream500, nullRoute, withNode int
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE upstream_status = 500),
		count(*) FILTER (WHERE route_id IS NULL), count(*) FILTER (WHERE node_id = 'log1') FROM request_logs`).Scan(&upstream500, &nullRoute, &withNode)
	if upstream500 != want[500] || nullRoute != want[404] || withNode != rows {
		t.Errorf("upstream 500s %d (want %d), rows without route %d (want %d), rows of node log1 %d (want %d)",
			upstream500, want[500], nullRoute, want[404], withNode, rows)
	}
}

func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
