package projections

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/zakirkun/isekai/events"
)

// Routes holds a node's current route table. The request path calls Table,
// an atomic load; the node's listener calls Apply with each batch of new
// events, which builds the next table off to the side and swaps it in only
// if it builds (DESIGN.md invariant 5). Table never waits for Apply.
type Routes struct {
	table atomic.Pointer[RouteTable]

	// applyMu serializes Apply and guards state. Table never takes it.
	applyMu sync.Mutex
	state   *RouteState

	// mu guards changed, which is closed and replaced at each swap to wake
	// WaitFor. Table never takes it either.
	mu      sync.Mutex
	changed chan struct{}

	// beforeSwap, when set by a test, runs inside Apply while it holds its
	// locks, just before the swap.
	beforeSwap func()
}

// NewRoutes returns a holder with an empty table at position 0.
func NewRoutes() *Routes {
	r := &Routes{state: NewRouteState(), changed: make(chan struct{})}
	r.table.Store(newRouteTable(0, nil, nil))
	return r
}

// Table returns the current table. It never blocks.
func (r *Routes) Table() *RouteTable { return r.table.Load() }

// Apply folds evs into the state (in position order; events already
// applied are skipped), builds the next table, swaps it in and wakes
// WaitFor. A batch that moves only other streams reuses the current
// table's routes at the new position. The batch is all or nothing: when an
// event cannot be decoded or the table fails to build, Apply returns the
// error and keeps the previous state and table, so the node goes on
// serving the last good table, and Table().Position() says where to
// resume. It returns the table now current.
//
// Apply is meant for one goroutine (the node's listener); concurrent
// calls are serialized.
func (r *Routes) Apply(evs []events.Event) (*RouteTable, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()

	if !slices.IsSortedFunc(evs, byPosition) {
		evs = slices.SortedFunc(slices.Values(evs), byPosition)
	}
	cur := r.table.Load()
	last := r.state.Position()
	routeEvents := false
	for _, ev := range evs {
		if ev.Position > last {
			last = ev.Position
			switch ev.Type {
			case EventRouteCreated, EventRouteUpdated, EventRouteDeleted:
				routeEvents = true
			}
		}
	}
	if last == r.state.Position() {
		return cur, nil
	}

	var next *RouteTable
	if routeEvents {
		state, err := fold(r.state, evs)
		if err != nil {
			return nil, fmt.Errorf("applying route events: %w", err)
		}
		t, err := state.Build()
		if err != nil {
			return nil, err
		}
		r.state, next = state, t
	} else {
		// Only other streams moved: same routes, later position.
		for _, ev := range evs {
			_ = r.state.Apply(ev) // cannot fail for non-route events
		}
		next = cur.withPosition(r.state.Position())
	}

	r.mu.Lock()
	if r.beforeSwap != nil {
		r.beforeSwap()
	}
	r.table.Store(next)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return next, nil
}

// Restore replaces the state and the table with state's (a snapshot's, or
// a rebuild's), even at an earlier position: for a node starting from a
// snapshot, or finding that its local snapshot belongs to another log. It
// fails, changing nothing, when the state does not build.
func (r *Routes) Restore(state *RouteState) (*RouteTable, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	t, err := state.Build()
	if err != nil {
		return nil, err
	}
	r.state = state
	r.mu.Lock()
	r.table.Store(t)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return t, nil
}

// batchFoldAt is the batch size from which Apply folds with a BatchFold
// (one decode per route, one sort) rather than event by event (one decode
// per event, one insertion each).
const batchFoldAt = 256

// fold applies evs to a copy of state.
func fold(state *RouteState, evs []events.Event) (*RouteState, error) {
	if len(evs) >= batchFoldAt {
		f := NewBatchFold(state.Clone())
		if err := f.Add(evs); err != nil {
			return nil, err
		}
		return f.Finish()
	}
	state = state.Clone()
	for _, ev := range evs {
		if err := state.Apply(ev); err != nil {
			return nil, err
		}
	}
	return state, nil
}

func byPosition(a, b events.Event) int { return cmp.Compare(a.Position, b.Position) }

// WaitFor returns once the current table's position is at least position,
// or with the context's error. The admin uses it to answer a write only
// when this node serves it.
func (r *Routes) WaitFor(ctx context.Context, position int64) error {
	for {
		r.mu.Lock()
		changed := r.changed
		t := r.table.Load()
		r.mu.Unlock()
		if t.Position() >= position {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for route table position %d (at %d): %w", position, t.Position(), ctx.Err())
		}
	}
}
