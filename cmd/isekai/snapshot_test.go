package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/projections"
)

type readyBody struct {
	Ready           bool      `json:"ready"`
	Stale           bool      `json:"stale"`
	StaleSince      time.Time `json:"stale_since"`
	AppliedPosition int64     `json:"applied_position"`
}

func ready(t *testing.T, n *node) (int, readyBody) {
	t.Helper()
	status, res, _ := call(t, "GET", "http://"+n.adminAddr+"/ready", nil)
	var b readyBody
	_ = json.Unmarshal(res.Data, &b)
	return status, b
}

type statusSnapshots struct {
	Database   string     `json:"database"`
	Stale      bool       `json:"stale"`
	StaleSince *time.Time `json:"stale_since"`
	Snapshots  struct {
		FilePosition   int64 `json:"file_position"`
		NewestPosition int64 `json:"newest_position"`
		Restored       struct {
			Source   string `json:"source"`
			Position int64  `json:"position"`
		} `json:"restored"`
	} `json:"snapshots"`
}

func nodeStatus(t *testing.T, n *node) statusSnapshots {
	t.Helper()
	_, res, _ := call(t, "GET", "http://"+n.adminAddr+"/api/status", nil)
	var s statusSnapshots
	if err := json.Unmarshal(res.Data, &s); err != nil {
		t.Fatalf("status: %v: %s", err, res.Data)
	}
	return s
}

func createRoute(t *testing.T, n *node, path, target string) int64 {
	t.Helper()
	status, res, _ := call(t, "POST", "http://"+n.adminAddr+"/api/routes", map[string]any{"path": path, "target_url": target})
	if status != 201 {
		t.Fatalf("create %s: %d %+v", path, status, res)
	}
	return res.Position
}

// waitLocalFile waits until the node's last-good file holds position.
func waitLocalFile(t *testing.T, dataDir string, position int64) {
	t.Helper()
	eventually(t, 10*time.Second, "local snapshot file at the head", func() (bool, string) {
		s, err := projections.ReadSnapshotFile(snapshotFile(dataDir))
		return err == nil && s.Position == position, fmt.Sprint(s.Position, err)
	})
}

// A node started while Postgres is down serves the table it saved last,
// says it is stale and since when, refuses writes, and catches up with what
// other nodes wrote meanwhile once Postgres is back.
func TestColdStartWithPostgresDown(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	db := srv.URL("isekai")
	dataDir := t.TempDir()
	a, b := backend(t, "A"), backend(t, "B")

	n1, stop1 := startTestNode(t, db, "cold1", "ISEKAI_DATA_DIR", dataDir)
	createRoute(t, n1, "/a", a.URL)
	pos := createRoute(t, n1, "/b", b.URL)
	waitLocalFile(t, dataDir, pos)
	stop1()

	// Another node changes the log while the first one is away.
	n2, stop2 := startTestNode(t, db, "cold2")
	later := createRoute(t, n2, "/c", a.URL)
	stop2()

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	n1, _ = startTestNode(t, db, "cold1", "ISEKAI_DATA_DIR", dataDir)
	t.Logf("cold start with Postgres down took %v", time.Since(started))
	for path, want := range map[string]string{"/a/x": "A /x", "/b/y": "B /y"} {
		if code, body := get("http://" + n1.proxyAddr + path); code != 200 || body != want {
			t.Fatalf("%s from the local table: %d %q", path, code, body)
		}
	}
	if code, _ := get("http://" + n1.proxyAddr + "/c"); code != 404 {
		t.Fatalf("/c, written after the node saved its table, answered %d", code)
	}
	code, rb := ready(t, n1)
	if code != 200 || !rb.Stale || rb.StaleSince.IsZero() || time.Since(rb.StaleSince) > time.Minute || rb.AppliedPosition != pos {
		t.Fatalf("/ready while stale: %d %+v", code, rb)
	}
	st := nodeStatus(t, n1)
	if !st.Stale || st.StaleSince == nil || st.Database != "unavailable" {
		t.Fatalf("/api/status while stale: %+v", st)
	}
	if status, res, _ := call(t, "POST", "http://"+n1.adminAddr+"/api/routes", map[string]any{"path": "/d", "target_url": a.URL}); status != 503 {
		t.Fatalf("write while Postgres is down: %d %+v", status, res)
	}

	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "caught up after Postgres returned", func() (bool, string) {
		code, body := get("http://" + n1.proxyAddr + "/c/z")
		return code == 200 && body == "A /z", fmt.Sprint(code, body)
	})
	code, rb = ready(t, n1)
	if code != 200 || rb.Stale || rb.AppliedPosition < later {
		t.Fatalf("/ready after catching up: %d %+v", code, rb)
	}
	if st := nodeStatus(t, n1); st.Stale || st.Snapshots.Restored.Source != "local_file" || st.Snapshots.Restored.Position != pos {
		t.Fatalf("/api/status after catching up: %+v", st)
	}
	createRoute(t, n1, "/d", b.URL)
	if code, body := get("http://" + n1.proxyAddr + "/d"); code != 200 || body != "B /" {
		t.Fatalf("new route: %d %q", code, body)
	}
}

// Without a local file, a node cannot serve anything while Postgres is
// down: it refuses to start and says why.
func TestColdStartWithoutLocalFileFails(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(envMap(map[string]string{
		"DATABASE_URL": srv.URL("isekai"), "ADMIN_PORT": "0", "SERVER_PORT": "0", "ISEKAI_DATA_DIR": t.TempDir(),
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = startNode(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "no local route table") {
		t.Fatalf("start with Postgres down and no local file: %v", err)
	}
}

// A local file from another database's log is not served: the node
// rebuilds from this log (here, while the database is up at start; and
// when it was down at start and answers later).
func TestLocalFileFromAnotherLog(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "A"), backend(t, "B")
	dataDir := t.TempDir()
	db1 := pgtest.NewMigratedDatabase(t)
	n, stop := startTestNode(t, db1, "other1", "ISEKAI_DATA_DIR", dataDir)
	waitLocalFile(t, dataDir, createRoute(t, n, "/old", a.URL))
	stop()
	db1File, err := os.ReadFile(snapshotFile(dataDir))
	if err != nil {
		t.Fatal(err)
	}

	srv := pgtest.NewServer(t)
	db2 := srv.URL("isekai")
	n, stop = startTestNode(t, db2, "other2")
	createRoute(t, n, "/new", b.URL)
	stop()

	n, stop = startTestNode(t, db2, "other1", "ISEKAI_DATA_DIR", dataDir)
	if code, _ := get("http://" + n.proxyAddr + "/old"); code != 404 {
		t.Fatalf("a route of the other log is served: %d", code)
	}
	if code, body := get("http://" + n.proxyAddr + "/new"); code != 200 || body != "B /" {
		t.Fatalf("this log's route: %d %q", code, body)
	}
	stop()

	// Down at start: the foreign file is served (nothing better exists),
	// and replaced by this log's table once the database answers.
	if err := os.WriteFile(snapshotFile(dataDir), db1File, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	n, _ = startTestNode(t, db2, "other1", "ISEKAI_DATA_DIR", dataDir)
	if code, _ := get("http://" + n.proxyAddr + "/old"); code != 200 {
		t.Fatalf("the local table is not served while the database is down: %d", code)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "this log's table after the database returned", func() (bool, string) {
		c1, _ := get("http://" + n.proxyAddr + "/old")
		c2, _ := get("http://" + n.proxyAddr + "/new")
		return c1 == 404 && c2 == 200, fmt.Sprint(c1, c2)
	})
	if st := nodeStatus(t, n); st.Snapshots.Restored.Source != "rebuilt" {
		t.Fatalf("status after the rebuild: %+v", st)
	}
}

// Nodes write snapshots to Postgres every ISEKAI_SNAPSHOT_INTERVAL events,
// and a new node starts from the newest one.
func TestNodeStartsFromPostgresSnapshot(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	a := backend(t, "A")
	n1, _ := startTestNode(t, db, "snap1", "ISEKAI_SNAPSHOT_INTERVAL", "5")
	var last int64
	for i := range 12 {
		last = createRoute(t, n1, fmt.Sprintf("/r%d", i), a.URL)
	}
	eventually(t, 10*time.Second, "a snapshot in Postgres", func() (bool, string) {
		s := nodeStatus(t, n1)
		return s.Snapshots.NewestPosition >= 10, fmt.Sprint(s.Snapshots.NewestPosition)
	})
	n2, _ := startTestNode(t, db, "snap2", "ISEKAI_SNAPSHOT_INTERVAL", "5")
	st := nodeStatus(t, n2)
	if st.Snapshots.Restored.Source != "snapshot" || st.Snapshots.Restored.Position < 10 {
		t.Fatalf("new node restored from %+v", st.Snapshots.Restored)
	}
	if p := n2.routes.Table().Position(); p != last || n2.routes.Table().Len() != 12 {
		t.Fatalf("new node at %d with %d routes, want %d with 12", p, n2.routes.Table().Len(), last)
	}
	for i := range 12 {
		if code, _ := get(fmt.Sprintf("http://%s/r%d", n2.proxyAddr, i)); code != 200 {
			t.Fatalf("/r%d on the new node: %d", i, code)
		}
	}
}
