package projections

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/zakirkun/isekai/events"
)

// BatchFold folds a long run of events into a state with the result
// RouteState.Apply would give event by event, but decodes and compiles each
// route once, from the last event that shaped it, instead of once per
// event: replaying a log where routes changed many times costs one decode
// per route, not per event. Add events in position order, then Finish.
//
// Unlike Apply, an event whose data cannot be decoded is an error only if
// it is the last word on its route: a later event replaces it whole.
type BatchFold struct {
	base     *RouteState
	position int64
	pending  map[uuid.UUID]*pendingRoute
}

// pendingRoute is what the events so far say about one route.
type pendingRoute struct {
	deleted bool
	last    events.Event // the last route.created/updated, when !deleted
	created time.Time    // the route's CreatedAt, when !deleted
}

// NewBatchFold starts a fold from base, which it takes over: do not use base
// again, use Finish's result.
func NewBatchFold(base *RouteState) *BatchFold {
	return &BatchFold{base: base, position: base.Position(), pending: make(map[uuid.UUID]*pendingRoute)}
}

// Add takes events after the fold's position, in position order; others
// are ignored, as Apply ignores them.
func (f *BatchFold) Add(evs []events.Event) error {
	for _, ev := range evs {
		if ev.Position <= f.position {
			continue
		}
		switch ev.Type {
		case EventRouteCreated, EventRouteUpdated:
			id, err := batchEventID(ev)
			if err != nil {
				return err
			}
			p := f.pending[id]
			if p == nil {
				p = &pendingRoute{deleted: true}
				if old, ok := f.base.routes[id]; ok {
					p.deleted, p.created = false, old.route.CreatedAt
				}
				f.pending[id] = p
			}
			if p.deleted {
				p.deleted, p.created = false, ev.CreatedAt
			}
			p.last = ev
		case EventRouteDeleted:
			id, err := batchEventID(ev)
			if err != nil {
				return err
			}
			p := f.pending[id]
			if p == nil {
				p = &pendingRoute{}
				f.pending[id] = p
			}
			p.deleted, p.last = true, events.Event{}
		}
		f.position = ev.Position
	}
	return nil
}

// batchEventID is the route an event is about: its stream's, or when the
// stream does not name one, its data's.
func batchEventID(ev events.Event) (uuid.UUID, error) {
	if rest, ok := strings.CutPrefix(ev.Stream, routeStreamPrefix); ok {
		if id, err := uuid.Parse(rest); err == nil {
			return id, nil
		}
	}
	var d struct {
		ID uuid.UUID `json:"id"`
	}
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return uuid.Nil, fmt.Errorf("decoding %s event at position %d: %w", ev.Type, ev.Position, err)
	}
	return routeEventID(ev, d.ID)
}

// Finish decodes the routes the events left and returns the state at the
// last event added.
func (f *BatchFold) Finish() (*RouteState, error) {
	s := f.base
	if len(f.pending) == 0 {
		s.position = f.position
		return s, nil
	}
	routes := maps.Clone(s.routes)
	for id, p := range f.pending {
		if p.deleted {
			delete(routes, id)
			continue
		}
		r := new(Route)
		if err := json.Unmarshal(p.last.Data, r); err != nil {
			return nil, fmt.Errorf("decoding %s event at position %d: %w", p.last.Type, p.last.Position, err)
		}
		if _, err := routeEventID(p.last, r.ID); err != nil {
			return nil, err
		}
		r.ID, r.Version, r.UpdatedAt, r.CreatedAt = id, p.last.Version, p.last.CreatedAt, p.created
		routes[id] = compileRoute(r)
	}
	sorted := slices.SortedFunc(maps.Values(routes), func(a, b *compiledRoute) int { return compareCreated(a.route, b.route) })
	f.pending = nil
	return &RouteState{position: f.position, routes: routes, sorted: sorted}, nil
}
