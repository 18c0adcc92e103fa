package admin_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/projections"
)

func TestRevertAfterUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/rv", "target_url": "http://127.0.0.1:9/v1", "timeout": 10})
	expect(t, r, 201, "")
	id := "/api/routes/" + r.route(t).ID.String()
	expect(t, e.do(t, "PUT", id, map[string]any{"path": "/rv", "target_url": "http://127.0.0.1:9/v2", "strip_path": false}), 200, "")
	expect(t, e.do(t, "PATCH", id, map[string]any{"enabled": false}), 200, "")

	expect(t, e.do(t, "POST", id+"/revert", map[string]any{"version": 1}, "If-Match", `"2"`), 412, "precondition_failed")
	r = e.do(t, "POST", id+"/revert", map[string]any{"version": 1}, "If-Match", `"3"`, "X-Isekai-Reason", "bad deploy")
	expect(t, r, 200, "")
	got := r.route(t)
	if got.Version != 4 || got.TargetURL != "http://127.0.0.1:9/v1" || got.Timeout != 10 || !got.StripPath || !got.Enabled || r.header.Get("ETag") != `"4"` {
		t.Fatalf("revert to 1: %s", r.raw)
	}
	if cur := e.do(t, "GET", id, nil).route(t); cur.Version != 4 || cur.TargetURL != "http://127.0.0.1:9/v1" || !cur.Enabled {
		t.Errorf("table after revert: %+v", cur)
	}
	h := e.history(t, strings.TrimPrefix(id, "/api/routes/"))
	last := h[len(h)-1]
	if len(h) != 4 || last.Type != "route.updated" || last.Source != "revert" || last.Reason != "revert to version 1: bad deploy" ||
		fields(last.Changes) != "target_url:http://127.0.0.1:9/v2->http://127.0.0.1:9/v1 strip_path:false->true enabled:false->true timeout:30->10 " {
		t.Errorf("history after revert: %+v", last)
	}
}

func TestRevertAfterDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/gone", "target_url": "http://127.0.0.1:9/g", "method": "POST"})
	expect(t, r, 201, "")
	rid := r.route(t).ID.String()
	id := "/api/routes/" + rid
	expect(t, e.do(t, "PATCH", id, map[string]any{"timeout": 3}), 200, "")
	expect(t, e.do(t, "DELETE", id, nil), 200, "")
	expect(t, e.do(t, "GET", id, nil), 404, "route_not_found")

	for _, tc := range []struct {
		body any
		code string
	}{
		{body: map[string]any{"version": 3}, code: "invalid_version"}, // the delete
		{body: map[string]any{"version": 4}, code: "invalid_version"}, // not yet
		{body: map[string]any{"version": 0}, code: "invalid_version"},
		{body: map[string]any{"version": "1"}, code: "invalid_json"},
		{body: map[string]any{"version": 1, "extra": true}, code: "invalid_json"},
		{body: `{`, code: "invalid_json"},
	} {
		expect(t, e.do(t, "POST", id+"/revert", tc.body), 400, tc.code)
	}
	expect(t, e.do(t, "POST", "/api/routes/6b1f2f7e-6a55-4d2c-9d3a-0f5d7c1e2b3a/revert", map[string]any{"version": 1}), 404, "route_not_found")
	// If-Match on a deleted route names the stream's version, the delete's.
	expect(t, e.do(t, "POST", id+"/revert", map[string]any{"version": 2}, "If-Match", `"2"`), 412, "precondition_failed")

	r = e.do(t, "POST", id+"/revert", map[string]any{"version": 2}, "If-Match", `"3"`)
	expect(t, r, 200, "")
	if got := r.route(t); got.Version != 4 || got.Timeout != 3 || len(got.Methods) != 1 || got.Methods[0] != "POST" {
		t.Fatalf("re-created: %s", r.raw)
	}
	// The node's table serves it again.
	r = e.do(t, "GET", id, nil)
	expect(t, r, 200, "")
	if got := r.route(t); got.Version != 4 || got.Path != "/gone" {
		t.Errorf("table after re-create: %s", r.raw)
	}
	h := e.history(t, rid)
	last := h[len(h)-1]
	if len(h) != 4 || last.Type != "route.created" || last.Source != "revert" || last.Reason != "revert to version 2" || last.Route == nil ||
		last.Route.Timeout != 3 || !strings.HasPrefix(fields(last.Changes), "path:<nil>->/gone ") {
		t.Errorf("history after re-create: %+v", last)
	}
}

// The restored spec goes through the same path-conflict check as any write.
func TestRevertConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/taken", "target_url": "http://127.0.0.1:9"})
	expect(t, r, 201, "")
	id := "/api/routes/" + r.route(t).ID.String()
	expect(t, e.do(t, "PATCH", id, map[string]any{"path": "/moved"}), 200, "")
	expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": "/taken", "target_url": "http://127.0.0.1:9"}), 201, "")
	r = e.do(t, "POST", id+"/revert", map[string]any{"version": 1})
	expect(t, r, 409, "route_conflict")
	if len(r.body.Fields) != 1 || r.body.Fields[0].Field != "path" {
		t.Errorf("conflict fields: %s", r.raw)
	}
	if got := e.do(t, "GET", id, nil).route(t); got.Path != "/moved" || got.Version != 2 {
		t.Errorf("a refused revert changed the route: %+v", got)
	}
}

func TestReadAt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/t1", "target_url": "http://127.0.0.1:9/a"}) // position 1
	expect(t, r, 201, "")
	a := r.route(t)
	time.Sleep(20 * time.Millisecond)
	expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": "/t2", "target_url": "http://127.0.0.1:9/b"}), 201, "") // 2
	time.Sleep(20 * time.Millisecond)
	expect(t, e.do(t, "PATCH", "/api/routes/"+a.ID.String(), map[string]any{"timeout": 9}), 200, "") // 3
	time.Sleep(20 * time.Millisecond)
	expect(t, e.do(t, "DELETE", "/api/routes/"+a.ID.String(), nil), 200, "") // 4
	evs := e.events(t, "")
	between := func(i int) string { // a time after event i (1-based), before event i+1
		return evs[i-1].CreatedAt.Add(evs[i].CreatedAt.Sub(evs[i-1].CreatedAt) / 2).Format(time.RFC3339Nano)
	}
	list := func(at string) (response, []projections.Route) {
		r := e.do(t, "GET", "/api/routes?at="+url.QueryEscape(at), nil)
		var routes []projections.Route
		_ = json.Unmarshal(r.body.Data, &routes)
		return r, routes
	}
	for _, tc := range []struct {
		name     string
		at       string
		position string
		routes   int
		aTimeout int // 0: a absent
	}{
		{name: "position 1", at: "1", position: "1", routes: 1, aTimeout: 30},
		{name: "position 3", at: "3", position: "3", routes: 2, aTimeout: 9},
		{name: "head", at: "4", position: "4", routes: 1},
		{name: "time after 2", at: between(2), position: "2", routes: 2, aTimeout: 30},
		{name: "time of event 3", at: evs[2].CreatedAt.Format(time.RFC3339Nano), position: "3", routes: 2, aTimeout: 9},
		{name: "time before the log", at: "2000-01-01T00:00:00Z", position: "0", routes: 0},
		{name: "future time", at: time.Now().Add(time.Hour).UTC().Format(time.RFC3339), position: "4", routes: 1},
	} {
		r, routes := list(tc.at)
		expect(t, r, 200, "")
		if r.header.Get("Isekai-Position") != tc.position || len(routes) != tc.routes {
			t.Errorf("%s: position %s, %d routes; want %s, %d: %s", tc.name, r.header.Get("Isekai-Position"), len(routes), tc.position, tc.routes, r.raw)
		}
		one := e.do(t, "GET", "/api/routes/"+a.ID.String()+"?at="+url.QueryEscape(tc.at), nil)
		if tc.aTimeout == 0 {
			expect(t, one, 404, "route_not_found")
			continue
		}
		expect(t, one, 200, "")
		if got := one.route(t); got.Timeout != tc.aTimeout || one.header.Get("Isekai-Position") != tc.position || one.header.Get("ETag") != "" {
			t.Errorf("%s: route a = %s (headers %v)", tc.name, one.raw, one.header)
		}
	}
	for _, at := range []string{"0", "-1", "x", "2025-13-01T00:00:00Z", "5"} {
		r, _ := list(at)
		expect(t, r, 400, "invalid_query")
		if len(r.body.Fields) != 1 || r.body.Fields[0].Field != "at" {
			t.Errorf("at=%s: %s", at, r.raw)
		}
		expect(t, e.do(t, "GET", "/api/routes/"+a.ID.String()+"?at="+at, nil), 400, "invalid_query")
	}
	// Without at, reads answer from the node's table as before.
	r = e.do(t, "GET", "/api/routes", nil)
	if r.header.Get("Isekai-Position") != "4" {
		t.Errorf("current read position: %v", r.header)
	}
}

// A revert retried with the same Idempotency-Key answers as the first
// attempt did — even with the If-Match the first attempt satisfied — and
// appends nothing.
func TestRevertIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/ik", "target_url": "http://127.0.0.1:9/v1"})
	expect(t, r, 201, "")
	rid := r.route(t).ID.String()
	id := "/api/routes/" + rid
	expect(t, e.do(t, "PATCH", id, map[string]any{"target_url": "http://127.0.0.1:9/v2"}), 200, "")

	first := e.do(t, "POST", id+"/revert", map[string]any{"version": 1}, "If-Match", `"2"`, "Idempotency-Key", "k-1")
	expect(t, first, 200, "")
	for range 2 {
		again := e.do(t, "POST", id+"/revert", map[string]any{"version": 1}, "If-Match", `"2"`, "Idempotency-Key", "k-1")
		expect(t, again, 200, "")
		if again.header.Get("Idempotent-Replayed") != "true" || again.body.Position != first.body.Position ||
			again.route(t).Version != 3 || again.route(t).TargetURL != "http://127.0.0.1:9/v1" || again.route(t).CreatedAt != first.route(t).CreatedAt {
			t.Fatalf("retry: %s (first: %s)", again.raw, first.raw)
		}
	}
	if h := e.history(t, rid); len(h) != 3 {
		t.Fatalf("retries appended: %d versions", len(h))
	}
	// Another key is another revert.
	expect(t, e.do(t, "PATCH", id, map[string]any{"target_url": "http://127.0.0.1:9/v3"}), 200, "")
	r = e.do(t, "POST", id+"/revert", map[string]any{"version": 1}, "Idempotency-Key", "k-2")
	expect(t, r, 200, "")
	if r.header.Get("Idempotent-Replayed") != "" || r.route(t).Version != 5 {
		t.Fatalf("new key: %s", r.raw)
	}
}
