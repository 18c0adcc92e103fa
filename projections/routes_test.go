package projections

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events"
)

func TestRoutesApply(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	if tab := rs.Table(); tab.Position() != 0 || tab.Len() != 0 {
		t.Fatalf("new Routes: position %d, %d routes", tab.Position(), tab.Len())
	}

	evs := createEvents(t, route(1, "/a"), route(2, "/b"))
	tab, err := rs.Apply(evs)
	if err != nil {
		t.Fatal(err)
	}
	if tab != rs.Table() || tab.Position() != 2 || tab.Len() != 2 {
		t.Fatalf("after Apply: position %d, %d routes", tab.Position(), tab.Len())
	}

	// Duplicates change nothing, not even the table pointer.
	if again, err := rs.Apply(evs); err != nil || again != tab {
		t.Fatalf("re-Apply of applied events = %p, %v; want the same table", again, err)
	}

	// Events of other streams move the position without a rebuild.
	user := events.Event{Position: 3, Stream: "user-1", Type: "user.created", Data: json.RawMessage(`{}`)}
	moved, err := rs.Apply([]events.Event{user})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Position() != 3 || moved.matcher != tab.matcher || rs.Table() != moved {
		t.Fatal("a non-route event did not yield the same routes at the new position")
	}

	// A batch that fails to build is rejected whole: the good event before
	// the bad one is not applied, the old table keeps serving.
	good := routeEvent(t, 4, EventRouteCreated, route(3, "/c"), epoch)
	bad := routeEvent(t, 5, EventRouteCreated, route(4, "/d/../e"), epoch)
	if got, err := rs.Apply([]events.Event{good, bad}); err == nil || got != nil {
		t.Fatalf("Apply of an invalid route = %v, %v; want an error", got, err)
	}
	if rs.Table() != moved {
		t.Fatal("a failed Apply replaced the table")
	}
	// A malformed event is rejected the same way.
	junk := events.Event{Position: 4, Type: EventRouteCreated, Stream: RouteStream(testID(3)), Data: json.RawMessage(`[`)}
	if _, err := rs.Apply([]events.Event{junk}); err == nil {
		t.Fatal("Apply accepted a malformed event")
	}
	if rs.Table() != moved {
		t.Fatal("a failed Apply replaced the table")
	}
	// The listener retries from the table's position; a later fix in the
	// same batch repairs the route and the batch applies.
	fix := routeEvent(t, 6, EventRouteUpdated, route(4, "/d/e"), epoch)
	tab, err = rs.Apply([]events.Event{good, bad, fix})
	if err != nil {
		t.Fatal(err)
	}
	if tab.Position() != 6 || tab.Len() != 4 {
		t.Fatalf("after fix: position %d, %d routes", tab.Position(), tab.Len())
	}
	if r, _, ok := rs.Table().Match("h", "GET", "/d/e/f"); !ok || r.ID != testID(4) {
		t.Fatalf("fixed route not matched: %s", idOf(r))
	}
}

func TestRoutesWaitFor(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	ctx := context.Background()
	if err := rs.WaitFor(ctx, 0); err != nil {
		t.Fatalf("WaitFor(0) = %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- rs.WaitFor(ctx, 2) }()
	evs := createEvents(t, route(1, "/a"), route(2, "/b"))
	if _, err := rs.Apply(evs[:1]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitFor(2) returned at position 1: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := rs.Apply(evs[1:]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitFor(2) = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitFor(2) did not return after position 2 was applied")
	}

	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := rs.WaitFor(tctx, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor(3) with a deadline = %v", err)
	}
}

// TestTableNotBlockedByApply holds Apply at its most exclusive point, with
// every lock it takes held, and requires that readers still get a table
// and match against it.
func TestTableNotBlockedByApply(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	if _, err := rs.Apply(createEvents(t, route(1, "/a"))); err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	rs.beforeSwap = func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			tab := rs.Table()
			if _, _, ok := tab.Match("h", "GET", "/a"); ok {
				reads.Add(1)
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Table() blocked while Apply held its locks")
		}
	}
	if _, err := rs.Apply([]events.Event{routeEvent(t, 2, EventRouteCreated, route(2, "/b"), epoch)}); err != nil {
		t.Fatal(err)
	}
	if reads.Load() != 1 {
		t.Fatal("the reader did not match the old table during Apply")
	}
}

// TestRoutesConcurrentReaders runs readers against a stream of swaps; with
// -race it checks that tables are never mutated once published.
func TestRoutesConcurrentReaders(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	routes := benchRoutes(200)
	evs := createEvents(t, routes...)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tab := rs.Table()
				if r, m, ok := tab.Match("gw", "GET", "/svc1/v1/users/7"); ok && (m > 17 || r.Path == "") {
					t.Error("inconsistent match")
					return
				}
				_ = tab.List()
			}
		})
	}
	for i := 0; i < len(evs); i += 10 {
		if _, err := rs.Apply(evs[i:min(i+10, len(evs))]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if rs.Table().Len() != 200 {
		t.Fatalf("Len() = %d", rs.Table().Len())
	}
}

func BenchmarkBuild10000(b *testing.B) {
	evs := createEvents(b, benchRoutes(10000)...)
	b.Run("build", func(b *testing.B) {
		s := NewRouteState()
		for _, ev := range evs {
			if err := s.Apply(ev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Build(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("apply+build", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s := NewRouteState()
			for _, ev := range evs {
				if err := s.Apply(ev); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := s.Build(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("routes.apply-one", func(b *testing.B) {
		// The steady state of a node: one more event on a 10 000-route
		// table (clone, fold, build, swap).
		rs := NewRoutes()
		if _, err := rs.Apply(evs); err != nil {
			b.Fatal(err)
		}
		r := benchRoutes(10000)[42]
		pos := int64(len(evs))
		b.ReportAllocs()
		for b.Loop() {
			pos++
			r.Priority = int(pos % 100)
			ev := routeEvent(b, pos, EventRouteUpdated, r, epoch)
			if _, err := rs.Apply([]events.Event{ev}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMatchDuringApply measures lookups while another goroutine keeps
// rebuilding and swapping a 10 000-route table.
func BenchmarkMatchDuringApply(b *testing.B) {
	routes := benchRoutes(10000)
	rs := NewRoutes()
	if _, err := rs.Apply(createEvents(b, routes...)); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var swaps atomic.Int64
	wg.Go(func() {
		pos := int64(len(routes))
		r := routes[1]
		for {
			select {
			case <-stop:
				return
			default:
			}
			pos++
			r.Priority = int(pos % 100)
			if _, err := rs.Apply([]events.Event{routeEvent(b, pos, EventRouteUpdated, r, epoch)}); err != nil {
				b.Error(err)
				return
			}
			swaps.Add(1)
		}
	})
	reqs := benchRequests(10000)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			q := reqs[i&255]
			i++
			rs.Table().Match(q.host, q.method, q.path)
		}
	})
	b.StopTimer()
	close(stop)
	wg.Wait()
	b.ReportMetric(float64(swaps.Load()), "swaps")
}

func TestRoutesApplySortsTheBatch(t *testing.T) {
	t.Parallel()
	rs := NewRoutes()
	evs := createEvents(t, route(1, "/a"), route(2, "/b"), route(3, "/c"))
	slices.Reverse(evs)
	tab, err := rs.Apply(evs)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 3 || tab.Position() != 3 {
		t.Fatalf("out-of-order batch: %d routes at position %d, want 3 at 3", tab.Len(), tab.Position())
	}
}
