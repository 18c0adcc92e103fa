package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/zakirkun/isekai/events"
)

// memLog is a tiny in-memory log that checks expected versions as the
// store does, so that a plan's events are judged as an append would be.
type memLog struct {
	evs      []events.Event
	versions map[string]int64
}

func newMemLog(t *testing.T, routes ...Route) *memLog {
	l := &memLog{versions: map[string]int64{}}
	for _, ev := range createEvents(t, routes...) {
		l.evs = append(l.evs, ev)
		l.versions[ev.Stream] = 1
	}
	return l
}

func (l *memLog) append(t *testing.T, ps []events.Proposed) {
	t.Helper()
	at := epoch.Add(time.Hour * time.Duration(len(l.evs)))
	for _, p := range ps {
		if p.ExpectedVersion != l.versions[p.Stream] {
			t.Fatalf("%s on %s expects version %d, stream is at %d", p.Type, p.Stream, p.ExpectedVersion, l.versions[p.Stream])
		}
		l.versions[p.Stream]++
		l.evs = append(l.evs, events.Event{Position: int64(len(l.evs) + 1), ID: uuid.New(), Stream: p.Stream,
			Version: l.versions[p.Stream], Type: p.Type, Data: p.Data, CreatedAt: at})
	}
}

func (l *memLog) ReadStream(_ context.Context, stream string) ([]events.Event, error) {
	var out []events.Event
	for _, ev := range l.evs {
		if ev.Stream == stream {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (l *memLog) table(t *testing.T) *RouteTable {
	t.Helper()
	s := NewRouteState()
	for _, ev := range l.evs {
		if err := s.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	tab, err := s.Build()
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// specs renders a table's routes without versions and timestamps, sorted
// by ID, for comparing two tables by content.
func specs(t *RouteTable) string {
	var lines []string
	for _, r := range t.List() {
		j, _ := json.Marshal(specOf(r))
		lines = append(lines, string(j))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func commitPlan(t *testing.T, l *memLog, p Plan) {
	t.Helper()
	if err := p.ResolveStreams(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	evs, err := p.Events(events.Metadata{Source: events.SourceRollback})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != p.Len() {
		t.Fatalf("%d events for %d steps", len(evs), p.Len())
	}
	l.append(t, evs)
}

// Rolling back across a create, an update, a delete, and a delete followed
// by more history restores the old table exactly, with versions that
// follow each stream (re-creating a deleted route continues its stream).
func TestPlanToRestoresTable(t *testing.T) {
	t.Parallel()
	l := newMemLog(t, route(1, "/a"), route(2, "/b"), route(3, "/c"))
	before := l.table(t)
	changed := route(2, "/b")
	changed.Timeout = 5
	l.append(t, []events.Proposed{
		{Stream: RouteStream(testID(1)), ExpectedVersion: 1, Type: EventRouteDeleted, Data: json.RawMessage(fmt.Sprintf(`{"id":%q}`, testID(1)))},
		{Stream: RouteStream(testID(2)), ExpectedVersion: 1, Type: EventRouteUpdated, Data: mustJSON(t, changed)},
		{Stream: RouteStream(testID(4)), ExpectedVersion: 0, Type: EventRouteCreated, Data: mustJSON(t, route(4, "/d"))},
	})
	now := l.table(t)

	p := PlanTo(now, before)
	if len(p.Creates) != 1 || p.Creates[0].Route.ID != testID(1) || len(p.Updates) != 1 || p.Updates[0].Route.ID != testID(2) ||
		len(p.Deletes) != 1 || p.Deletes[0].Route.ID != testID(4) {
		t.Fatalf("plan: %s", p)
	}
	if c := p.Updates[0].Changes; len(c) != 1 || c[0].Field != "timeout" || c[0].From != 5 || c[0].To != DefaultTimeoutSeconds {
		t.Errorf("update changes: %+v", c)
	}
	commitPlan(t, l, p)
	if got, want := specs(l.table(t)), specs(before); got != want {
		t.Fatalf("after rollback:\n%s\nwant:\n%s", got, want)
	}
	if r, _ := l.table(t).Get(testID(1)); r.Version != 3 {
		t.Errorf("re-created route at version %d, want 3 (create, delete, create)", r.Version)
	}
	if again := PlanTo(l.table(t), before); !again.Empty() {
		t.Errorf("second rollback is not empty: %s", again)
	}
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func decodeDoc(t *testing.T, doc string) []ConfigEntry {
	t.Helper()
	entries, err := DecodeConfig([]byte(doc))
	if err != nil {
		t.Fatalf("decoding %s: %v", doc, err)
	}
	return entries
}

func TestPlanApply(t *testing.T) {
	t.Parallel()
	a, b := route(1, "/a"), route(2, "/b")
	a.Name, b.Name = "a", "b"
	l := newMemLog(t, a, b)

	doc := `{"routes": [
		{"name": "a", "path": "/a", "target_url": "http://backend-1:8080/base", "timeout": 9},
		{"name": "c", "path": "/c", "target_url": "http://c:1/"}
	]}`
	kept, err := PlanApply(l.table(t), decodeDoc(t, doc), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept.Creates) != 1 || len(kept.Updates) != 1 || len(kept.Deletes) != 0 {
		t.Fatalf("prune=false plan: %s", kept)
	}
	p, err := PlanApply(l.table(t), decodeDoc(t, doc), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Creates) != 1 || p.Creates[0].Route.Name != "c" || !p.Creates[0].Route.Enabled || p.Creates[0].Route.Timeout != DefaultTimeoutSeconds ||
		len(p.Updates) != 1 || p.Updates[0].Route.ID != testID(1) || len(p.Deletes) != 1 || p.Deletes[0].Route.ID != testID(2) {
		t.Fatalf("plan: %s", p)
	}
	commitPlan(t, l, p)
	after := l.table(t)
	if again, err := PlanApply(after, decodeDoc(t, doc), true); err != nil || !again.Empty() {
		t.Fatalf("applying the same document twice: %v %s", err, again)
	}
	// The export of a table applies to it as nothing.
	exported, _ := json.Marshal(ExportConfig(after))
	if again, err := PlanApply(after, decodeDoc(t, string(exported)), true); err != nil || !again.Empty() {
		t.Fatalf("applying the export: %v %s", err, again)
	}
	// An empty document with prune deletes everything.
	if all, err := PlanApply(after, decodeDoc(t, `{"routes": []}`), true); err != nil || len(all.Deletes) != 2 || all.Len() != 2 {
		t.Fatalf("empty document: %v %s", err, all)
	}
}

func TestPlanApplyRejects(t *testing.T) {
	t.Parallel()
	a, dup1, dup2 := route(1, "/a"), route(2, "/x"), route(3, "/y")
	a.Name, dup1.Name, dup2.Name = "a", "twin", "twin"
	current := tableOf(t, a, dup1, dup2)
	const target = `"target_url": "http://t:1/"`
	tests := []struct {
		name  string
		doc   string
		prune bool
		field string
	}{
		{name: "not a document", doc: `[1]`, field: "routes"},
		{name: "entry not an object", doc: `{"routes": [3]}`, field: "routes[0]"},
		{name: "no name or id", doc: `{"routes": [{"name": "ok", "path": "/ok", ` + target + `}, {"path": "/p", ` + target + `}]}`, field: "routes[1].name"},
		{name: "bad id", doc: `{"routes": [{"id": "nope", "path": "/p", ` + target + `}]}`, field: "routes[0].id"},
		{name: "wrong type", doc: `{"routes": [{"name": "n", "path": "/p", "timeout": "x", ` + target + `}]}`, field: "routes[0].timeout"},
		{name: "unknown field", doc: `{"routes": [{"name": "n", "paht": "/p", ` + target + `}]}`, field: "routes[0].paht"},
		{name: "invalid value", doc: `{"routes": [{"name": "n", "path": "/p", "timeout": 0, ` + target + `}]}`, field: "routes[0].timeout"},
		{name: "missing target", doc: `{"routes": [{"name": "n", "path": "/p"}]}`, field: "routes[0].target_url"},
		{name: "ambiguous name", doc: `{"routes": [{"name": "twin", "path": "/p", ` + target + `}]}`, prune: true, field: "routes[0].name"},
		{name: "same route twice", doc: `{"routes": [{"name": "a", "path": "/p", ` + target + `}, {"id": "` + testID(1).String() + `", "path": "/q", ` + target + `}]}`, field: "routes[1].id"},
		{name: "conflict in document", doc: `{"routes": [{"name": "p", "path": "/p", ` + target + `}, {"name": "q", "path": "/p/", ` + target + `}]}`, prune: true, field: "routes[1].path"},
		{name: "conflict with a kept route", doc: `{"routes": [{"name": "z", "path": "/a", ` + target + `}]}`, field: "routes[0].path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, err := DecodeConfig([]byte(tt.doc))
			if err == nil {
				_, err = PlanApply(current, entries, tt.prune)
			}
			ve, ok := err.(*ValidationError)
			if !ok || ve.Errors[0].Field != tt.field {
				t.Fatalf("error %v, want a validation error on %s", err, tt.field)
			}
		})
	}
}

func TestDecodeConfigYAML(t *testing.T) {
	t.Parallel()
	entries, err := DecodeConfigYAML([]byte("routes:\n  - name: a\n    path: /a\n    methods: [get]\n    target_url: http://a:1/\n    timeout: 7\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewRouteFromInput(entries[0].Input)
	if len(entries) != 1 || r.Name != "a" || r.Timeout != 7 || !slices.Equal(r.Methods, []string{"GET"}) {
		t.Fatalf("entries: %+v", r)
	}
	for _, bad := range []string{"routes: [\n", "routes:\n  - name: a\n    name: b\n", "routes:\n  - {1: x}\n", ""} {
		if _, err := DecodeConfigYAML([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}
