package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/zakirkun/isekai/events"
)

// randomLog returns n events of a random route history: creates, updates
// (paths, methods, hosts, enabled, priority), deletes, re-creations of
// deleted routes and events of other streams, with times that sometimes
// repeat, so CreatedAt ties are broken by ID.
func randomLog(t testing.TB, rng *rand.Rand, n int) []events.Event {
	t.Helper()
	var (
		evs      []events.Event
		live     []Route
		deleted  []Route
		versions = map[uuid.UUID]int64{}
		at       = epoch
		nextID   = 1
	)
	paths := []string{"/a", "/a/b", "/users/{id}", "/users/{id}/posts", "/", "/x/y/z", "/static", "/api/v1"}
	methods := [][]string{{}, {"GET"}, {"GET", "POST"}, {"DELETE"}}
	hosts := []string{"", "api.example.com", "*.example.com"}
	mutate := func(r Route) Route {
		r.Path = paths[rng.IntN(len(paths))]
		r.Methods = methods[rng.IntN(len(methods))]
		r.Host = hosts[rng.IntN(len(hosts))]
		r.Enabled = rng.IntN(4) != 0
		r.Priority = rng.IntN(3)
		r.StripPath = rng.IntN(2) == 0
		r.TargetURL = fmt.Sprintf("http://backend-%d:8080/v%d", rng.IntN(5), rng.IntN(3))
		return r
	}
	for pos := int64(1); pos <= int64(n); pos++ {
		if rng.IntN(3) != 0 {
			at = at.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		}
		var ev events.Event
		switch k := rng.IntN(10); {
		case k < 3 || len(live) == 0:
			r := mutate(route(nextID, "/"))
			nextID++
			live = append(live, r)
			ev = routeEvent(t, pos, EventRouteCreated, r, at)
		case k < 4 && len(deleted) > 0:
			i := rng.IntN(len(deleted))
			r := mutate(deleted[i])
			deleted = append(deleted[:i], deleted[i+1:]...)
			live = append(live, r)
			ev = routeEvent(t, pos, EventRouteCreated, r, at)
		case k < 8:
			i := rng.IntN(len(live))
			live[i] = mutate(live[i])
			ev = routeEvent(t, pos, EventRouteUpdated, live[i], at)
		case k < 9:
			i := rng.IntN(len(live))
			deleted = append(deleted, live[i])
			ev = deleteEvent(pos, live[i].ID, at)
			live = append(live[:i], live[i+1:]...)
		default:
			ev = events.Event{Position: pos, Stream: "other", Version: pos, Type: "note.added", Data: json.RawMessage(`{}`), CreatedAt: at}
		}
		if rest, ok := strings.CutPrefix(ev.Stream, routeStreamPrefix); ok {
			id := uuid.MustParse(rest)
			versions[id]++
			ev.Version = versions[id]
		}
		evs = append(evs, ev)
	}
	return evs
}

// foldAll applies evs to state, event by event, and builds the table.
func foldAll(t testing.TB, state *RouteState, evs []events.Event) *RouteTable {
	t.Helper()
	for _, ev := range evs {
		if err := state.Apply(ev); err != nil {
			t.Fatalf("applying %d: %v", ev.Position, err)
		}
	}
	tab, err := state.Build()
	if err != nil {
		t.Fatalf("building: %v", err)
	}
	return tab
}

// tableJSON is everything a table serves, for comparing two of them.
func tableJSON(t testing.TB, tab *RouteTable) []byte {
	t.Helper()
	b, err := json.Marshal(struct {
		Position  int64
		Routes    []*Route
		Conflicts []Conflict
	}{tab.Position(), tab.List(), tab.Conflicts()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotPlusTailEqualsReplay is the property snapshots rest on: for
// random logs and any cut, folding the tail onto the decoded snapshot of
// the table at the cut gives the same table as folding the whole log — the
// same routes, versions, times, conflicts, and the same matches.
func TestSnapshotPlusTailEqualsReplay(t *testing.T) {
	t.Parallel()
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, seed*7919))
		evs := randomLog(t, rng, 1+rng.IntN(120))
		full := foldAll(t, NewRouteState(), evs)

		cut := 1 + rng.IntN(len(evs))
		atCut := foldAll(t, NewRouteState(), evs[:cut])
		data, err := NewSnapshot(atCut, bytes.Repeat([]byte{7}, 32), "n1").Encode()
		if err != nil {
			t.Fatal(err)
		}
		snap, err := DecodeSnapshot(data)
		if err != nil {
			t.Fatal(err)
		}
		state, err := snap.State()
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		got := foldAll(t, state, evs[cut:])
		if a, b := tableJSON(t, got), tableJSON(t, full); !bytes.Equal(a, b) {
			t.Fatalf("seed %d, cut %d of %d: snapshot + tail differs from a full replay\n got %s\nwant %s", seed, cut, len(evs), a, b)
		}
		for _, p := range []string{"/a", "/a/b/c", "/users/7", "/users/7/posts", "/x/y/z", "/static/f", "/api/v1/q", "/nope"} {
			for _, h := range []string{"api.example.com", "v.example.com", "other"} {
				for _, m := range []string{"GET", "POST", "DELETE"} {
					r1, n1, ok1 := got.Match(h, m, p)
					r2, n2, ok2 := full.Match(h, m, p)
					if ok1 != ok2 || n1 != n2 || idOf(r1) != idOf(r2) {
						t.Fatalf("seed %d: %s %s%s matches %s/%d from the snapshot, %s/%d from the log", seed, m, h, p, idOf(r1), n1, idOf(r2), n2)
					}
				}
			}
		}
	}
}

func TestSnapshotDecodeRefuses(t *testing.T) {
	t.Parallel()
	tab := tableOf(t, route(1, "/a"))
	good, err := NewSnapshot(tab, make([]byte, 32), "").Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeSnapshot(good); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	other := NewSnapshot(tab, make([]byte, 32), "")
	other.Format = 99
	b, _ := other.Encode()
	for name, data := range map[string][]byte{
		"garbage":   []byte("not gzip"),
		"truncated": good[:len(good)/2],
		"format":    b,
	} {
		if _, err := DecodeSnapshot(data); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// A route that does not validate, or twice: the state is refused.
	bad := NewSnapshot(tab, make([]byte, 32), "")
	r := *bad.Routes[0]
	r.TargetURL = "ftp://x"
	bad.Routes = []*Route{&r}
	if _, err := bad.State(); err == nil {
		t.Error("a snapshot with an invalid route built a state")
	}
	dup := NewSnapshot(tab, make([]byte, 32), "")
	dup.Routes = append(dup.Routes, dup.Routes[0])
	if _, err := dup.State(); err == nil {
		t.Error("a snapshot with a route twice built a state")
	}
}

func TestSnapshotFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state", "routes.snapshot")
	if _, err := ReadSnapshotFile(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	tab := tableOf(t, route(1, "/a"), route(2, "/b"))
	for i := range 3 { // overwrite in place
		data, err := NewSnapshot(tab, []byte{byte(i), 31: 1}, "n").Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteSnapshotFile(path, data); err != nil {
			t.Fatal(err)
		}
	}
	s, err := ReadSnapshotFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Hash(); s.Position != 2 || len(s.Routes) != 2 || h[0] != 2 {
		t.Fatalf("read back position %d, %d routes, hash %x", s.Position, len(s.Routes), h)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// memSnapshots serves snapshots of tables at chosen positions.
type memSnapshots struct{ snaps []Snapshot }

func (m *memSnapshots) Latest(_ context.Context, position int64, _ time.Time) (events.StoredSnapshot, bool, error) {
	for i := len(m.snaps) - 1; i >= 0; i-- {
		s := m.snaps[i]
		if position > 0 && s.Position > position {
			continue
		}
		data, err := s.Encode()
		return events.StoredSnapshot{Position: s.Position, Data: data}, err == nil, err
	}
	return events.StoredSnapshot{}, false, nil
}

func TestReplayFromSnapshot(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	evs := randomLog(t, rng, 500)
	log := &sliceLog{evs: evs}
	snaps := &memSnapshots{}
	for _, p := range []int{100, 250, 400} {
		snaps.snaps = append(snaps.snaps, NewSnapshot(foldAll(t, NewRouteState(), evs[:p]), make([]byte, 32), ""))
	}
	for _, tc := range []struct {
		at       At
		snapshot int64
		events   int
	}{
		{At{}, 400, 100},
		{At{Position: 399}, 250, 149},
		{At{Position: 250}, 250, 0},
		{At{Position: 50}, 0, 50},
	} {
		got, stats, err := ReplayFrom(context.Background(), log, snaps, tc.at)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Replay(context.Background(), log, tc.at)
		if err != nil {
			t.Fatal(err)
		}
		if stats.SnapshotPosition != tc.snapshot || stats.Events != tc.events {
			t.Errorf("at %+v: from snapshot %d + %d events, want %d + %d", tc.at, stats.SnapshotPosition, stats.Events, tc.snapshot, tc.events)
		}
		if a, b := tableJSON(t, got), tableJSON(t, want); !bytes.Equal(a, b) {
			t.Errorf("at %+v: tables differ", tc.at)
		}
	}
}

func TestRoutesRestore(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	evs := createEvents(t, route(1, "/a"), route(2, "/b"), route(3, "/c"))
	if _, err := rs.Apply(evs); err != nil {
		t.Fatal(err)
	}
	snap := NewSnapshot(tableOf(t, route(1, "/a")), make([]byte, 32), "")
	st, _ := snap.State()
	tab, err := rs.Restore(st)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Table() != tab || tab.Position() != 1 || tab.Len() != 1 {
		t.Fatalf("restored table at %d with %d routes", tab.Position(), tab.Len())
	}
	// Events after the restored position apply on top of it.
	if _, err := rs.Apply(evs[1:]); err != nil {
		t.Fatal(err)
	}
	if got := rs.Table(); got.Position() != 3 || got.Len() != 3 {
		t.Fatalf("after the tail: %d routes at %d", got.Len(), got.Position())
	}
}
