package projections

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/zakirkun/isekai/events"
)

// A BatchFold gives the table Apply gives event by event, from any starting
// state and however the events are split into Add calls.
func TestBatchFoldEqualsApply(t *testing.T) {
	t.Parallel()
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
		evs := randomLog(t, rng, 1+rng.IntN(150))
		want := foldAll(t, NewRouteState(), evs)

		cut := rng.IntN(len(evs))
		base := NewRouteState()
		for _, ev := range evs[:cut] {
			if err := base.Apply(ev); err != nil {
				t.Fatal(err)
			}
		}
		f := NewBatchFold(base)
		for rest := evs[cut:]; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			if err := f.Add(rest[:n]); err != nil {
				t.Fatal(err)
			}
			// Overlapping hand-overs repeat events; they are ignored.
			if rng.IntN(3) == 0 {
				if err := f.Add(rest[:n]); err != nil {
					t.Fatal(err)
				}
			}
			rest = rest[n:]
		}
		state, err := f.Finish()
		if err != nil {
			t.Fatal(err)
		}
		got, err := state.Build()
		if err != nil {
			t.Fatal(err)
		}
		if a, b := tableJSON(t, got), tableJSON(t, want); !bytes.Equal(a, b) {
			t.Fatalf("seed %d (base %d of %d events): batch fold differs\n got %s\nwant %s", seed, cut, len(evs), a, b)
		}
	}
}

// Undecodable data that a later event replaces does not fail the fold; the
// last word on a route must decode.
func TestBatchFoldErrors(t *testing.T) {
	t.Parallel()
	a := route(1, "/a")
	bad := routeEvent(t, 1, EventRouteCreated, a, epoch)
	bad.Data = json.RawMessage(`{"path": 7}`)
	good := routeEvent(t, 2, EventRouteUpdated, a, epoch)
	f := NewBatchFold(NewRouteState())
	if err := f.Add([]events.Event{bad, good}); err != nil {
		t.Fatal(err)
	}
	if s, err := f.Finish(); err != nil || s.Position() != 2 || len(s.routes) != 1 {
		t.Fatalf("replaced bad data: %v", err)
	}
	f = NewBatchFold(NewRouteState())
	_ = f.Add([]events.Event{good, func() events.Event { bad.Position = 3; return bad }()})
	if _, err := f.Finish(); err == nil {
		t.Fatal("bad data as the last word on a route folded")
	}
}
