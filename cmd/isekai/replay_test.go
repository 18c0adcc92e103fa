package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/zakirkun/isekai/events/pgtest"
)

// replay rebuilds the table from scratch, at the head or at an earlier
// position, as a table for people and as JSON for machines.
func TestReplayCommand(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	n, _ := startTestNode(t, db, "r1")
	admin := "http://" + n.adminAddr
	status, res, _ := call(t, "POST", admin+"/api/routes", map[string]any{"name": "a", "path": "/a", "target_url": "http://127.0.0.1:9/a", "methods": []string{"GET", "POST"}})
	if status != 201 {
		t.Fatalf("create: %d %+v", status, res)
	}
	var a struct{ ID string }
	_ = json.Unmarshal(res.Data, &a)
	if status, _, _ := call(t, "POST", admin+"/api/routes", map[string]any{"path": "/b", "target_url": "http://127.0.0.1:9/b", "host": "*.example.com"}); status != 201 {
		t.Fatal(status)
	}
	if status, _, _ := call(t, "PATCH", admin+"/api/routes/"+a.ID, map[string]any{"enabled": false}); status != 200 {
		t.Fatal(status)
	}
	if status, _, _ := call(t, "DELETE", admin+"/api/routes/"+a.ID, nil); status != 200 {
		t.Fatal(status)
	}
	env := envMap(map[string]string{"DATABASE_URL": db, "ISEKAI_DATA_DIR": t.TempDir(), "LOG_LEVEL": "error"})

	var out, errOut strings.Builder
	if code := run([]string{"replay"}, env, &out, &errOut); code != 0 {
		t.Fatalf("replay: %d %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "route table at position 4: 1 routes") || strings.Contains(out.String(), a.ID) ||
		!strings.Contains(out.String(), "*.example.com") {
		t.Errorf("replay at head:\n%s", out.String())
	}

	out.Reset()
	if code := run([]string{"replay", "--at", "3"}, env, &out, &errOut); code != 0 {
		t.Fatalf("replay --at 3: %d %s", code, errOut.String())
	}
	lines := strings.Split(out.String(), "\n")
	found := false
	for _, l := range lines {
		if strings.HasPrefix(l, a.ID) {
			found = true
			f := strings.Fields(l)
			if len(f) != 7 || f[1] != "GET,POST" || f[2] != "*" || f[3] != "/a" || f[4] != "http://127.0.0.1:9/a" || f[5] != "false" || f[6] != "2" {
				t.Errorf("row for route a at position 3: %q", l)
			}
		}
	}
	if !found || !strings.HasPrefix(out.String(), "route table at position 3: 2 routes") {
		t.Errorf("replay --at 3:\n%s", out.String())
	}

	out.Reset()
	if code := run([]string{"replay", "--at", "1", "--json"}, env, &out, &errOut); code != 0 {
		t.Fatalf("replay --json: %d %s", code, errOut.String())
	}
	var doc struct {
		Position int64 `json:"position"`
		Routes   []struct {
			ID      string `json:"id"`
			Enabled bool   `json:"enabled"`
			Version int64  `json:"version"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out.String()), &doc); err != nil {
		t.Fatalf("replay --json is not JSON: %v\n%s", err, out.String())
	}
	if doc.Position != 1 || len(doc.Routes) != 1 || doc.Routes[0].ID != a.ID || !doc.Routes[0].Enabled || doc.Routes[0].Version != 1 {
		t.Errorf("replay --at 1 --json: %+v", doc)
	}
	for _, at := range []string{"-1", "99", "yesterday"} {
		if code := run([]string{"replay", "--at", at}, env, &out, &errOut); code == 0 {
			t.Errorf("replay --at %s succeeded", at)
		}
	}
}
