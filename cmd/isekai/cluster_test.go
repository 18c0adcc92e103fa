package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events/pgtest"
)

// binaryNode is an `isekai serve` process.
type binaryNode struct {
	id, admin, proxy string
	cmd              *exec.Cmd
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "isekai")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func startBinaryNode(t *testing.T, bin, db, id string, env ...string) *binaryNode {
	t.Helper()
	pp, ap := freePort(t), freePort(t)
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+db, "SERVER_HOST=127.0.0.1", fmt.Sprintf("SERVER_PORT=%d", pp),
		fmt.Sprintf("ADMIN_PORT=%d", ap), "ISEKAI_DATA_DIR="+t.TempDir(), "ISEKAI_NODE_ID="+id, "LOG_LEVEL=warn",
		"DB_MAX_OPEN_CONNS=4", "DB_MAX_IDLE_CONNS=1")
	cmd.Env = append(cmd.Env, env...)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &binaryNode{id: id, admin: fmt.Sprintf("http://127.0.0.1:%d", ap), proxy: fmt.Sprintf("http://127.0.0.1:%d", pp), cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", id, logs.String())
		}
	})
	eventually(t, 60*time.Second, id+" ready", func() (bool, string) {
		code, body := get(n.admin + "/ready")
		return code == 200, fmt.Sprint(code, body)
	})
	return n
}

type clusterNode struct {
	ID              string `json:"id"`
	AppliedPosition int64  `json:"applied_position"`
	Live            bool   `json:"live"`
	Lag             int64  `json:"lag"`
}

type clusterResponse struct {
	Head  int64         `json:"head"`
	Live  int           `json:"live"`
	Stale int           `json:"stale"`
	Nodes []clusterNode `json:"nodes"`
}

func clusterOf(t *testing.T, admin string) clusterResponse {
	t.Helper()
	status, res, _ := call(t, "GET", admin+"/api/cluster", nil)
	var c clusterResponse
	if err := json.Unmarshal(res.Data, &c); status != 200 || err != nil {
		t.Fatalf("GET /api/cluster: %d %v %s", status, err, res.Data)
	}
	return c
}

func (c clusterResponse) node(id string) clusterNode {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return clusterNode{}
}

// ?wait=cluster answers once every live node applied the write; with a
// node paused (SIGSTOP) it answers 504 naming it, the write committed; once
// the paused node's heartbeat is stale it no longer holds writes up; resumed,
// it catches up and is live again.
func TestWaitClusterWithPausedNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := buildBinary(t)
	db := pgtest.NewMigratedDatabase(t)
	a := backend(t, "A")
	env := []string{"ISEKAI_HEARTBEAT_INTERVAL=300ms", "ISEKAI_NODE_STALE_AFTER=2s"}
	nodes := []*binaryNode{
		startBinaryNode(t, bin, db, "w1", env...),
		startBinaryNode(t, bin, db, "w2", env...),
		startBinaryNode(t, bin, db, "w3", env...),
	}
	n1, n3 := nodes[0], nodes[2]

	status, res, _ := call(t, "POST", n1.admin+"/api/routes?wait=cluster&timeout=5s", map[string]any{"path": "/w", "target_url": a.URL + "/v1"})
	if status != 201 {
		t.Fatalf("create with wait=cluster: %d %+v", status, res)
	}
	var route struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(res.Data, &route)
	// Answered after every node applied it: each serves it now, no polling.
	for _, n := range nodes {
		if code, body := get(n.proxy + "/w"); code != 200 || body != "A /v1" {
			t.Fatalf("%s right after a wait=cluster write: %d %q", n.id, code, body)
		}
	}
	c := clusterOf(t, n1.admin)
	if c.Live != 3 || c.Head != res.Position {
		t.Fatalf("cluster: %+v", c)
	}
	for _, n := range nodes {
		if got := c.node(n.id); !got.Live || got.Lag != 0 {
			t.Fatalf("%s in the cluster view: %+v", n.id, got)
		}
	}

	if err := n3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	status, res, hdr := call(t, "PATCH", n1.admin+"/api/routes/"+route.ID+"?wait=cluster&timeout=700ms", map[string]any{"target_url": a.URL + "/v2"})
	took := time.Since(start)
	var laggards []clusterNode
	_ = json.Unmarshal(res.Laggards, &laggards)
	if status != 504 || res.Code != "cluster_timeout" || !strings.Contains(res.Error, "w3") || hdr.Get("Isekai-Position") == "" {
		t.Fatalf("write with w3 paused: %d %+v", status, res)
	}
	if took < 700*time.Millisecond || took > 3*time.Second {
		t.Errorf("the 504 came after %v, want about the 700ms timeout", took)
	}
	if len(laggards) != 1 || laggards[0].ID != "w3" || laggards[0].Lag < 1 || res.Position == 0 {
		t.Fatalf("504 body: position %d, laggards %+v", res.Position, laggards)
	}
	// The write committed all the same: the live nodes serve it.
	if code, got := get(n1.proxy + "/w"); code != 200 || got != "A /v2" {
		t.Fatalf("n1 after the 504: %d %q", code, got)
	}

	// Past the stale interval w3 no longer counts.
	eventually(t, 10*time.Second, "w3 stale", func() (bool, string) {
		c := clusterOf(t, n1.admin)
		return !c.node("w3").Live && c.Live == 2, fmt.Sprintf("%+v", c)
	})
	status, res, _ = call(t, "PATCH", nodes[1].admin+"/api/routes/"+route.ID+"?wait=cluster&timeout=2s", map[string]any{"target_url": a.URL + "/v3"})
	if status != 200 {
		t.Fatalf("write with w3 stale: %d %+v", status, res)
	}

	if err := n3.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "w3 live and caught up", func() (bool, string) {
		c := clusterOf(t, n1.admin)
		got := c.node("w3")
		return got.Live && got.Lag == 0, fmt.Sprintf("%+v", c)
	})
	if code, got := get(n3.proxy + "/w"); code != 200 || got != "A /v3" {
		t.Fatalf("w3 after resuming: %d %q", code, got)
	}
	status, res, _ = call(t, "PATCH", n3.admin+"/api/routes/"+route.ID+"?wait=cluster", map[string]any{"target_url": a.URL + "/v4"})
	if status != 200 {
		t.Fatalf("write after w3 resumed: %d %+v", status, res)
	}

	// Bad values are refused before anything is written.
	for _, q := range []string{"wait=all", "wait=cluster&timeout=0s", "wait=cluster&timeout=2m", "wait=cluster&timeout=soon"} {
		if status, res, _ := call(t, "PATCH", n1.admin+"/api/routes/"+route.ID+"?"+q, map[string]any{"target_url": a.URL + "/nope"}); status != 400 {
			t.Errorf("?%s: %d %+v", q, status, res)
		}
	}
	if code, got := get(n1.proxy + "/w"); code != 200 || got != "A /v4" {
		t.Fatalf("after refused writes: %d %q", code, got)
	}
}
