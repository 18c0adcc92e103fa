package projections

import (
	"context"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events"
)

// sliceLog is an in-memory EventReader honouring the filters Replay uses.
type sliceLog struct {
	evs   []events.Event
	reads int
}

func (l *sliceLog) Read(_ context.Context, f events.Filter) ([]events.Event, error) {
	l.reads++
	out := []events.Event{}
	for _, e := range l.evs {
		if e.Position <= f.After || (f.To > 0 && e.Position > f.To) || (!f.Until.IsZero() && e.CreatedAt.After(f.Until)) {
			continue
		}
		if len(out) == f.Limit {
			break
		}
		out = append(out, e)
	}
	return out, nil
}

func TestReplay(t *testing.T) {
	t.Parallel()
	a, b := route(1, "/a"), route(2, "/b")
	evs := createEvents(t, a, b) // positions 1, 2 at epoch, epoch+1s
	upd := disabled(a)
	evs = append(evs, routeEvent(t, 3, EventRouteUpdated, upd, epoch.Add(2*time.Second)))
	evs = append(evs, deleteEvent(4, b.ID, epoch.Add(3*time.Second)))
	log := &sliceLog{evs: evs}
	for _, tc := range []struct {
		name     string
		at       At
		position int64
		ids      []int
		aEnabled bool
	}{
		{name: "head", at: At{}, position: 4, ids: []int{1}},
		{name: "position", at: At{Position: 2}, position: 2, ids: []int{1, 2}, aEnabled: true},
		{name: "position past head", at: At{Position: 99}, position: 4, ids: []int{1}},
		{name: "time between events", at: At{Time: epoch.Add(2500 * time.Millisecond)}, position: 3, ids: []int{1, 2}},
		{name: "time of an event includes it", at: At{Time: epoch.Add(time.Second)}, position: 2, ids: []int{1, 2}, aEnabled: true},
		{name: "time before the log", at: At{Time: epoch.Add(-time.Hour)}, position: 0},
		{name: "earlier of both", at: At{Position: 1, Time: epoch.Add(time.Hour)}, position: 1, ids: []int{1}, aEnabled: true},
	} {
		table, err := Replay(context.Background(), log, tc.at)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if table.Position() != tc.position || table.Len() != len(tc.ids) {
			t.Errorf("%s: table at %d with %d routes, want %d with %d", tc.name, table.Position(), table.Len(), tc.position, len(tc.ids))
			continue
		}
		for _, n := range tc.ids {
			r, ok := table.Get(testID(n))
			if !ok {
				t.Errorf("%s: route %d missing", tc.name, n)
			} else if n == 1 && r.Enabled != tc.aEnabled {
				t.Errorf("%s: route a enabled = %t, want %t", tc.name, r.Enabled, tc.aEnabled)
			}
		}
	}
}

// Replay pages through a log longer than one read.
func TestReplayPages(t *testing.T) {
	t.Parallel()
	n := events.MaxReadLimit + 5
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = events.Event{Position: int64(i + 1), Stream: "other", Type: "noise"}
	}
	evs[n-1] = routeEvent(t, int64(n), EventRouteCreated, route(1, "/late"), epoch)
	log := &sliceLog{evs: evs}
	table, err := Replay(context.Background(), log, At{})
	if err != nil {
		t.Fatal(err)
	}
	if table.Position() != int64(n) || table.Len() != 1 || log.reads != 2 {
		t.Errorf("table at %d with %d routes after %d reads", table.Position(), table.Len(), log.reads)
	}
}

func TestParseAt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want At
		ok   bool
	}{
		{in: "1", want: At{Position: 1}, ok: true},
		{in: "123456789", want: At{Position: 123456789}, ok: true},
		{in: "2025-01-02T03:04:05Z", want: At{Time: epoch}, ok: true},
		{in: "2025-01-02T04:04:05.5+01:00", want: At{Time: epoch.Add(500 * time.Millisecond)}, ok: true},
		{in: "0"}, {in: "-3"}, {in: ""}, {in: "yesterday"}, {in: "2025-01-02"}, {in: "2025-01-02 03:04:05Z"}, {in: "1e3"},
	} {
		got, err := ParseAt(tc.in)
		if (err == nil) != tc.ok || got.Position != tc.want.Position || !got.Time.Equal(tc.want.Time) {
			t.Errorf("ParseAt(%q) = %+v, %v; want %+v, ok %t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
