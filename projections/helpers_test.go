package projections

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/zakirkun/isekai/events"
)

// epoch is the CreatedAt of the first test route; later ones follow by the
// second, in the order given.
var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// testID returns a fixed, readable route ID: testID(7) is
// 00000000-0000-0000-0000-000000000007.
func testID(n int) uuid.UUID {
	var id uuid.UUID
	for i := 15; i >= 0 && n > 0; i-- {
		id[i] = byte(n)
		n >>= 8
	}
	return id
}

// route returns a valid enabled any-method route for path with defaults.
func route(n int, path string) Route {
	return Route{
		ID:        testID(n),
		Path:      path,
		Methods:   []string{},
		TargetURL: fmt.Sprintf("http://backend-%d:8080/base", n),
		StripPath: true,
		Enabled:   true,
		Timeout:   DefaultTimeoutSeconds,
	}
}

func withMethods(r Route, methods ...string) Route { r.Methods = methods; return r }
func withHost(r Route, host string) Route          { r.Host = host; return r }
func disabled(r Route) Route                       { r.Enabled = false; return r }

// routeEvent is the event a route's create or update appends.
func routeEvent(t testing.TB, pos int64, typ string, r Route, at time.Time) events.Event {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("marshalling route: %v", err)
	}
	return events.Event{
		Position:  pos,
		ID:        uuid.New(),
		Stream:    RouteStream(r.ID),
		Version:   1,
		Type:      typ,
		Data:      data,
		CreatedAt: at,
	}
}

func deleteEvent(pos int64, id uuid.UUID, at time.Time) events.Event {
	return events.Event{
		Position:  pos,
		Stream:    RouteStream(id),
		Version:   2,
		Type:      EventRouteDeleted,
		Data:      json.RawMessage(fmt.Sprintf(`{"id":%q}`, id)),
		CreatedAt: at,
	}
}

// createEvents returns one route.created per route, at positions 1..n and
// one second apart, so that creation order is argument order.
func createEvents(t testing.TB, routes ...Route) []events.Event {
	t.Helper()
	evs := make([]events.Event, len(routes))
	for i, r := range routes {
		evs[i] = routeEvent(t, int64(i+1), EventRouteCreated, r, epoch.Add(time.Duration(i)*time.Second))
	}
	return evs
}

// tableOf builds a table from routes through the real fold.
func tableOf(t testing.TB, routes ...Route) *RouteTable {
	t.Helper()
	s := NewRouteState()
	for _, ev := range createEvents(t, routes...) {
		if err := s.Apply(ev); err != nil {
			t.Fatalf("applying event: %v", err)
		}
	}
	tab, err := s.Build()
	if err != nil {
		t.Fatalf("building table: %v", err)
	}
	return tab
}

func idOf(r *Route) string {
	if r == nil {
		return "<none>"
	}
	return r.ID.String()
}
