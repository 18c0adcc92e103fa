package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/projections"
)

// tableSpecs renders routes by content (no versions or timestamps), in
// ID order, to compare two tables.
func tableSpecs(routes []projections.Route) string {
	lines := make([]string, len(routes))
	for i, r := range routes {
		lines[i] = fmt.Sprintf("%s %s %s %v %s %d %t", r.ID, r.Name, r.Path, r.Methods, r.TargetURL, r.Timeout, r.Enabled)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (e env) specs(t *testing.T) string {
	t.Helper()
	var routes []projections.Route
	if err := json.Unmarshal(e.do(t, "GET", "/api/routes", nil).body.Data, &routes); err != nil {
		t.Fatal(err)
	}
	return tableSpecs(routes)
}

type planData struct {
	DryRun   bool  `json:"dry_run"`
	Position int64 `json:"position"`
	Plan     struct {
		Creates []json.RawMessage `json:"creates"`
		Updates []json.RawMessage `json:"updates"`
		Deletes []json.RawMessage `json:"deletes"`
	} `json:"plan"`
}

func (r response) plan(t *testing.T) planData {
	t.Helper()
	var p planData
	if err := json.Unmarshal(r.body.Data, &p); err != nil || p.Plan.Creates == nil || p.Plan.Updates == nil || p.Plan.Deletes == nil {
		t.Fatalf("data is not a plan: %s", r.raw)
	}
	return p
}

func (p planData) counts() string {
	return fmt.Sprintf("%d/%d/%d", len(p.Plan.Creates), len(p.Plan.Updates), len(p.Plan.Deletes))
}

func (e env) head(t *testing.T) int64 {
	t.Helper()
	h, err := e.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A rollback across creates, updates and deletes of many routes commits
// in one transaction: a reader polling the table the whole time sees the
// table before it or the table after it, never a mix.
func TestRollbackIsAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	const n = 50
	ids := make([]string, n)
	for i := range n {
		r := e.do(t, "POST", "/api/routes", map[string]any{"name": fmt.Sprint("r", i), "path": fmt.Sprint("/r/", i), "target_url": "http://127.0.0.1:9/"})
		expect(t, r, 201, "")
		ids[i] = r.route(t).ID.String()
	}
	point := e.head(t)
	restored := e.specs(t)
	for i := range 15 {
		expect(t, e.do(t, "DELETE", "/api/routes/"+ids[i], nil), 200, "")
		expect(t, e.do(t, "PATCH", "/api/routes/"+ids[15+i], map[string]any{"timeout": 5, "enabled": i%2 == 0}), 200, "")
	}
	for i := range 20 {
		// New routes take the deleted ones' paths: the restore must
		// delete them in the same transaction that re-creates the old.
		path := fmt.Sprint("/r/", i)
		if i >= 15 {
			path = fmt.Sprint("/n/", i)
		}
		expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": path, "target_url": "http://127.0.0.1:9/new"}), 201, "")
	}
	current := e.specs(t)
	head := e.head(t)

	r := e.do(t, "POST", "/api/config/rollback?dry_run=true", map[string]any{"position": point})
	expect(t, r, 200, "")
	if p := r.plan(t); !p.DryRun || p.counts() != "15/15/20" || p.Position != head {
		t.Fatalf("dry run plan %s at %d: %s", p.counts(), p.Position, r.raw)
	}
	if e.head(t) != head || e.specs(t) != current {
		t.Fatal("a dry run appended")
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var seen, mixed []string
	started := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			if len(seen) == 0 {
				close(started) // failed before the first snapshot
			}
		}()
		for ctx.Err() == nil {
			resp, err := client.Get(e.base + "/api/routes")
			if err != nil {
				mixed = append(mixed, err.Error())
				return
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body struct{ Data []projections.Route }
			if err := json.Unmarshal(raw, &body); err != nil {
				mixed = append(mixed, string(raw))
				return
			}
			s := tableSpecs(body.Data)
			if s != current && s != restored {
				mixed = append(mixed, s)
			}
			if seen = append(seen, s); len(seen) == 1 {
				close(started)
			}
		}
	}()
	<-started
	r = e.do(t, "POST", "/api/config/rollback", map[string]any{"position": point}, "X-Isekai-Reason", "bad deploy")
	expect(t, r, 200, "")
	// Let the reader see the restored table too.
	for deadline := time.Now().Add(5 * time.Second); e.specs(t) != restored && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	cancel()
	wg.Wait()
	if len(mixed) > 0 {
		t.Fatalf("a reader saw %d tables that were neither before nor after the rollback; first:\n%s", len(mixed), mixed[0])
	}
	if len(seen) < 2 || seen[0] != current || seen[len(seen)-1] != restored {
		t.Fatalf("the reader saw %d tables, not both sides of the rollback", len(seen))
	}
	p := r.plan(t)
	if p.DryRun || p.counts() != "15/15/20" || p.Position != head+50 || r.body.Position != head+50 {
		t.Fatalf("rollback: %s at %d: %s", p.counts(), p.Position, r.raw)
	}
	evs := e.events(t, fmt.Sprint("after=", head))
	if len(evs) != 50 {
		t.Fatalf("%d events after the rollback, want 50", len(evs))
	}
	for _, ev := range evs {
		if ev.Metadata.Source != "rollback" || ev.Metadata.Reason != fmt.Sprintf("rollback to position %d: bad deploy", point) {
			t.Fatalf("event metadata: %+v", ev.Metadata)
		}
	}
	// Rolling back to where the table already is appends nothing.
	r = e.do(t, "POST", "/api/config/rollback", map[string]any{"position": point})
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "0/0/0" || e.head(t) != head+50 {
		t.Fatalf("second rollback: %s", r.raw)
	}
	// Re-created routes continue their streams.
	var hist []struct{ Type string }
	_ = json.Unmarshal(e.do(t, "GET", "/api/routes/"+ids[0]+"/history", nil).body.Data, &hist)
	if len(hist) != 3 || hist[2].Type != "route.created" {
		t.Errorf("history of a re-created route: %+v", hist)
	}
}

func TestRollbackRejects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": "/a", "target_url": "http://127.0.0.1:9/"}), 201, "")
	for _, body := range []string{`{}`, `{"position": 1, "at": "2025-01-01T00:00:00Z"}`, `{"position": -1}`, `{"at": "yesterday"}`, `{"position": 99}`, `nope`} {
		r := e.do(t, "POST", "/api/config/rollback", body)
		if r.status != 400 {
			t.Errorf("%s: %d %s", body, r.status, r.raw)
		}
	}
	// A time before the first event restores the empty table.
	r := e.do(t, "POST", "/api/config/rollback", map[string]any{"at": "2000-01-01T00:00:00Z"})
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "0/0/1" || e.specs(t) != "" {
		t.Fatalf("rollback to before the log: %s", r.raw)
	}
}

// rawDo sends body as it is with a Content-Type and returns status and body.
func (e env) rawDo(t *testing.T, method, path, contentType, body string, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

func TestApplyConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	expect(t, e.do(t, "POST", "/api/routes", map[string]any{"name": "old", "path": "/old", "target_url": "http://127.0.0.1:9/"}), 201, "")
	doc := map[string]any{"routes": []map[string]any{
		{"name": "users", "path": "/users", "target_url": "http://127.0.0.1:9/u", "methods": []string{"get", "post"}},
		{"name": "orders", "path": "/orders", "target_url": "http://127.0.0.1:9/o", "timeout": 5},
	}}

	head := e.head(t)
	r := e.do(t, "POST", "/api/config/apply?dry_run=true&prune=false", doc)
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "2/0/0" || !p.DryRun || e.head(t) != head {
		t.Fatalf("dry run: %s", r.raw)
	}
	r = e.do(t, "POST", "/api/config/apply?prune=false", doc)
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "2/0/0" || p.Position != head+2 {
		t.Fatalf("apply prune=false: %s", r.raw)
	}
	if s := e.specs(t); !strings.Contains(s, " old /old ") {
		t.Fatalf("prune=false deleted an unlisted route:\n%s", s)
	}
	for _, ev := range e.events(t, fmt.Sprint("after=", head)) {
		if ev.Metadata.Source != "apply" {
			t.Errorf("apply event source %q", ev.Metadata.Source)
		}
	}
	// Pruning deletes the unlisted route; applying again appends nothing.
	r = e.do(t, "POST", "/api/config/apply", doc)
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "0/0/1" {
		t.Fatalf("apply with prune: %s", r.raw)
	}
	head = e.head(t)
	r = e.do(t, "POST", "/api/config/apply", doc)
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "0/0/0" || e.head(t) != head {
		t.Fatalf("second apply: %s", r.raw)
	}
	// An update by name changes only what differs.
	doc["routes"].([]map[string]any)[1]["timeout"] = 6
	r = e.do(t, "POST", "/api/config/apply", doc)
	expect(t, r, 200, "")
	if p := r.plan(t); p.counts() != "0/1/0" || !strings.Contains(string(p.Plan.Updates[0]), `"changes":[{"field":"timeout","from":5,"to":6}]`) {
		t.Fatalf("update by name: %s", r.raw)
	}

	// YAML round trip: the export applied back is a no-op.
	status, hdr, yamlDoc := e.rawDo(t, "GET", "/api/config/export", "", "", "Accept", "application/yaml")
	if status != 200 || hdr.Get("Content-Type") != "application/yaml" || !strings.Contains(string(yamlDoc), "target_url: http://127.0.0.1:9/u") ||
		strings.Contains(string(yamlDoc), "version") || strings.Contains(string(yamlDoc), "created_at") {
		t.Fatalf("yaml export: %d %v\n%s", status, hdr, yamlDoc)
	}
	head = e.head(t)
	status, _, raw := e.rawDo(t, "POST", "/api/config/apply", "application/yaml", string(yamlDoc))
	if status != 200 || !strings.Contains(string(raw), `"creates":[],"updates":[],"deletes":[]`) || e.head(t) != head {
		t.Fatalf("applying the yaml export: %d %s", status, raw)
	}
	status, _, jsonDoc := e.rawDo(t, "GET", "/api/config/export", "", "")
	var exported struct{ Routes []map[string]any }
	if status != 200 || json.Unmarshal(jsonDoc, &exported) != nil || len(exported.Routes) != 2 || exported.Routes[0]["version"] != nil {
		t.Fatalf("json export: %d %s", status, jsonDoc)
	}
	if status, _, raw := e.rawDo(t, "POST", "/api/config/apply", "application/json", string(jsonDoc)); status != 200 || e.head(t) != head {
		t.Fatalf("applying the json export: %d %s", status, raw)
	}
}

func TestApplyConfigRejects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	tests := []struct {
		name, contentType, body, field string
	}{
		{"entry without name or id", "application/json", `{"routes": [{"path": "/a", "target_url": "http://x:1/"}]}`, "routes[0].name"},
		{"bad field value", "application/json", `{"routes": [{"name": "a", "path": "/a", "target_url": "http://x:1/"}, {"name": "b", "path": "/b", "target_url": "ftp://x"}]}`, "routes[1].target_url"},
		{"wrong type in yaml", "application/yaml", "routes:\n  - name: a\n    path: /a\n    target_url: http://x:1/\n    enabled: maybe\n", "routes[0].enabled"},
		{"conflict", "application/json", `{"routes": [{"name": "a", "path": "/a", "target_url": "http://x:1/"}, {"name": "b", "path": "/a", "target_url": "http://x:1/"}]}`, "routes[1].path"},
		{"not a document", "application/json", `{"route": []}`, "routes"},
	}
	for _, tt := range tests {
		status, _, raw := e.rawDo(t, "POST", "/api/config/apply", tt.contentType, tt.body)
		var body struct {
			Code   string
			Fields []struct{ Field string }
		}
		_ = json.Unmarshal(raw, &body)
		if status != 400 || body.Code != "validation_failed" || len(body.Fields) == 0 || body.Fields[0].Field != tt.field {
			t.Errorf("%s: %d %s, want 400 naming %s", tt.name, status, raw, tt.field)
		}
	}
	if e.head(t) != 0 {
		t.Error("a rejected document appended")
	}
}
