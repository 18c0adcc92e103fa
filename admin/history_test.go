package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

type change struct {
	Field string `json:"field"`
	From  any    `json:"from"`
	To    any    `json:"to"`
}

type historyItem struct {
	Version int64    `json:"version"`
	Type    string   `json:"type"`
	Source  string   `json:"source"`
	Reason  string   `json:"reason"`
	Actor   string   `json:"actor"`
	Changes []change `json:"changes"`
	Route   *struct {
		Path    string `json:"path"`
		Timeout int    `json:"timeout"`
	} `json:"route"`
}

func (e env) history(t *testing.T, id string) []historyItem {
	t.Helper()
	r := e.do(t, "GET", "/api/routes/"+id+"/history", nil)
	expect(t, r, 200, "")
	var h []historyItem
	if err := json.Unmarshal(r.body.Data, &h); err != nil {
		t.Fatalf("history: %v: %s", err, r.body.Data)
	}
	return h
}

func fields(cs []change) string {
	out := ""
	for _, c := range cs {
		out += fmt.Sprintf("%s:%v->%v ", c.Field, c.From, c.To)
	}
	return out
}

// Each history entry says what its event changed against the version
// before: a create from null, an update field by field, a delete to null.
func TestHistoryDiffs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	r := e.do(t, "POST", "/api/routes", map[string]any{"path": "/h", "target_url": "http://127.0.0.1:9/h", "method": "GET"})
	expect(t, r, 201, "")
	id := r.route(t).ID.String()
	expect(t, e.do(t, "PATCH", "/api/routes/"+id, map[string]any{"timeout": 7, "name": "hist"}), 200, "")
	expect(t, e.do(t, "PATCH", "/api/routes/"+id, map[string]any{"timeout": 7}), 200, "")
	expect(t, e.do(t, "DELETE", "/api/routes/"+id, nil), 200, "")

	h := e.history(t, id)
	if len(h) != 4 {
		t.Fatalf("history has %d entries: %+v", len(h), h)
	}
	want := []string{
		"path:<nil>->/h methods:<nil>->[GET] target_url:<nil>->http://127.0.0.1:9/h strip_path:<nil>->true priority:<nil>->0 enabled:<nil>->true rate_limit:<nil>->0 timeout:<nil>->30 ",
		"name:->hist timeout:30->7 ",
		"",
		"name:hist-><nil> path:/h-><nil> methods:[GET]-><nil> target_url:http://127.0.0.1:9/h-><nil> strip_path:true-><nil> priority:0-><nil> enabled:true-><nil> rate_limit:0-><nil> timeout:7-><nil> ",
	}
	for i, w := range want {
		if got := fields(h[i].Changes); got != w || h[i].Changes == nil {
			t.Errorf("version %d (%s) changes:\n got %q\nwant %q", h[i].Version, h[i].Type, got, w)
		}
	}
}

func TestEventsAuditFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	for i := 0; i < 4; i++ {
		expect(t, e.do(t, "POST", "/api/routes", map[string]any{"path": fmt.Sprintf("/f%d", i), "target_url": "http://127.0.0.1:9"}), 201, "")
		time.Sleep(5 * time.Millisecond)
	}
	// Another writer (a CLI, say) records another actor.
	if _, err := e.store.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{
		Stream: "other", ExpectedVersion: events.AnyVersion, Type: "note.added", Data: json.RawMessage(`{}`),
		Metadata: events.Metadata{Actor: "ops-bot", Source: events.SourceApply},
	}}}); err != nil {
		t.Fatal(err)
	}
	all := e.events(t, "")
	if len(all) != 5 {
		t.Fatalf("%d events, want 5", len(all))
	}
	since, until := all[1].CreatedAt.Format(time.RFC3339Nano), all[3].CreatedAt.Format(time.RFC3339Nano)
	for _, tc := range []struct {
		query string
		want  string
	}{
		{query: "actor=ops-bot", want: "[5]"},
		{query: "actor=anonymous&limit=2", want: "[1 2]"},
		{query: "actor=nobody", want: "[]"},
		{query: "since=" + url.QueryEscape(since), want: "[2 3 4 5]"},
		{query: "until=" + url.QueryEscape(until), want: "[1 2 3 4]"},
		{query: "since=" + url.QueryEscape(since) + "&until=" + url.QueryEscape(until), want: "[2 3 4]"},
		{query: "from=2&to=3", want: "[2 3]"},
		{query: "from=4", want: "[4 5]"},
		{query: "to=2", want: "[1 2]"},
		{query: "from=2&after=3", want: "[4 5]"},
		{query: "from=2&to=4&type=route.created&actor=anonymous&after=2", want: "[3 4]"},
	} {
		if got := fmt.Sprint(positionsOf(e.events(t, tc.query))); got != tc.want {
			t.Errorf("?%s: positions %s, want %s", tc.query, got, tc.want)
		}
	}
	for _, tc := range []struct{ query, field string }{
		{query: "since=yesterday", field: "since"},
		{query: "until=2025-01-02", field: "until"},
		{query: "since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", field: "until"},
		{query: "from=0", field: "from"},
		{query: "to=x", field: "to"},
		{query: "from=5&to=4", field: "to"},
	} {
		r := e.do(t, "GET", "/api/events?"+tc.query, nil)
		expect(t, r, 400, "invalid_query")
		if len(r.body.Fields) != 1 || r.body.Fields[0].Field != tc.field {
			t.Errorf("?%s: fields %+v, want %s", tc.query, r.body.Fields, tc.field)
		}
	}
}

func (e env) events(t *testing.T, query string) []events.Event {
	t.Helper()
	r := e.do(t, "GET", "/api/events?"+query, nil)
	expect(t, r, 200, "")
	var evs []events.Event
	if err := json.Unmarshal(r.body.Data, &evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

func positionsOf(evs []events.Event) []int64 {
	out := []int64{}
	for _, e := range evs {
		out = append(out, e.Position)
	}
	return out
}
