package projections

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/zakirkun/isekai/events"
)

// RouteState is the fold of the route events of the log: the mutable state
// from which tables are built, kept off the request path. It is not safe
// for concurrent use; Routes keeps one per node.
type RouteState struct {
	position int64
	routes   map[uuid.UUID]*compiledRoute
	// sorted holds the values of routes by CreatedAt, then ID: kept in
	// order as events arrive, so that a build need not sort.
	sorted []*compiledRoute
	// shared says routes and sorted are also held by a table or a clone:
	// they are copied before the next write (copy on write), which makes
	// Clone and Build cheap.
	shared bool
}

// NewRouteState returns the state before any event: no route, position 0.
func NewRouteState() *RouteState {
	return &RouteState{routes: make(map[uuid.UUID]*compiledRoute)}
}

// Position is the position of the last event applied.
func (s *RouteState) Position() int64 { return s.position }

// Clone returns an independent copy, in constant time: both copies share
// their contents until one of them changes. Routes themselves are always
// shared: the state never modifies a route once applied, it replaces it.
func (s *RouteState) Clone() *RouteState {
	s.shared = true
	c := *s
	return &c
}

// own makes the state's contents its own before a write.
func (s *RouteState) own() {
	if s.shared {
		s.routes = maps.Clone(s.routes)
		s.sorted = slices.Clone(s.sorted)
		s.shared = false
	}
}

// index returns where c is, or belongs, in sorted.
func (s *RouteState) index(c *compiledRoute) (int, bool) {
	// Events mostly create routes in CreatedAt order: check the end first.
	if n := len(s.sorted); n == 0 || compareCreated(s.sorted[n-1].route, c.route) < 0 {
		return n, false
	}
	return slices.BinarySearchFunc(s.sorted, c, func(a, b *compiledRoute) int { return compareCreated(a.route, b.route) })
}

func (s *RouteState) put(c *compiledRoute) {
	s.own()
	if old, ok := s.routes[c.route.ID]; ok {
		i, _ := s.index(old)
		if compareCreated(old.route, c.route) == 0 {
			// An update keeps CreatedAt, hence its place.
			s.sorted[i] = c
			s.routes[c.route.ID] = c
			return
		}
		s.sorted = slices.Delete(s.sorted, i, i+1)
	}
	i, _ := s.index(c)
	s.sorted = slices.Insert(s.sorted, i, c)
	s.routes[c.route.ID] = c
}

func (s *RouteState) remove(id uuid.UUID) {
	old, ok := s.routes[id]
	if !ok {
		return
	}
	s.own()
	i, _ := s.index(old)
	s.sorted = slices.Delete(s.sorted, i, i+1)
	delete(s.routes, id)
}

// Apply folds one event into the state.
//
//   - route.created and route.updated carry the full route after the change;
//     the route's Version becomes the event's, UpdatedAt the event's
//     CreatedAt, and CreatedAt that of the first event that created it.
//   - route.deleted carries {"id": "..."}; deleting an unknown route is a
//     no-op.
//   - Events at or before Position are ignored, so duplicates (NOTIFY
//     races, overlapping catch-up reads) are harmless. Other event types
//     only advance the position.
//
// The route ID comes from the stream ("route-<uuid>") and, when present,
// the data, which must agree. An event that cannot be decoded is an error
// and leaves the state unchanged. A route that fails validation is kept:
// Build reports it.
func (s *RouteState) Apply(ev events.Event) error {
	if ev.Position <= s.position {
		return nil
	}
	switch ev.Type {
	case EventRouteCreated, EventRouteUpdated:
		r := new(Route)
		if err := json.Unmarshal(ev.Data, r); err != nil {
			return fmt.Errorf("decoding %s event at position %d: %w", ev.Type, ev.Position, err)
		}
		id, err := routeEventID(ev, r.ID)
		if err != nil {
			return err
		}
		r.ID = id
		r.Version = ev.Version
		r.UpdatedAt = ev.CreatedAt
		r.CreatedAt = ev.CreatedAt
		if old, ok := s.routes[id]; ok {
			r.CreatedAt = old.route.CreatedAt
		}
		s.put(compileRoute(r))
	case EventRouteDeleted:
		var d struct {
			ID uuid.UUID `json:"id"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return fmt.Errorf("decoding %s event at position %d: %w", ev.Type, ev.Position, err)
		}
		id, err := routeEventID(ev, d.ID)
		if err != nil {
			return err
		}
		s.remove(id)
	}
	s.position = ev.Position
	return nil
}

// routeEventID reconciles the route ID of an event's stream and data.
func routeEventID(ev events.Event, dataID uuid.UUID) (uuid.UUID, error) {
	var streamID uuid.UUID
	if rest, ok := strings.CutPrefix(ev.Stream, routeStreamPrefix); ok {
		streamID, _ = uuid.Parse(rest)
	}
	switch {
	case streamID == uuid.Nil && dataID == uuid.Nil:
		return uuid.Nil, fmt.Errorf("%s event at position %d names no route: stream %q, no id in data", ev.Type, ev.Position, ev.Stream)
	case streamID == uuid.Nil:
		return dataID, nil
	case dataID != uuid.Nil && dataID != streamID:
		return uuid.Nil, fmt.Errorf("%s event at position %d: data id %s is not stream %q", ev.Type, ev.Position, dataID, ev.Stream)
	}
	return streamID, nil
}

// maxBuildErrors bounds how many invalid routes a Build error names.
const maxBuildErrors = 5

// Build compiles the state into a table at the state's position. It fails,
// naming the routes, when any route fails Route.Validate; the error wraps
// the first route's *ValidationError. Two enabled routes claiming the same
// host, method and path are not an error: the one created later (by
// CreatedAt, then ID) is left out of the matcher and reported by
// RouteTable.Conflicts.
func (s *RouteState) Build() (*RouteTable, error) {
	var errs []error
	invalid := 0
	for _, c := range s.sorted {
		if c.err == nil {
			continue
		}
		if invalid++; invalid <= maxBuildErrors {
			errs = append(errs, fmt.Errorf("route %s%s: %w", c.route.ID, quotedName(c.route.Name), c.err))
		}
	}
	if invalid > maxBuildErrors {
		errs = append(errs, fmt.Errorf("and %d more invalid routes", invalid-maxBuildErrors))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("building route table at position %d: %w", s.position, errors.Join(errs...))
	}
	s.shared = true
	return newRouteTable(s.position, s.routes, s.sorted), nil
}

func quotedName(name string) string {
	if name == "" {
		return ""
	}
	return fmt.Sprintf(" (%q)", name)
}
