package projections

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/zakirkun/isekai/events"
)

func TestRouteStateApply(t *testing.T) {
	t.Parallel()
	s := NewRouteState()
	r := route(1, "/a")
	t0, t1, t2 := epoch, epoch.Add(time.Minute), epoch.Add(time.Hour)
	created := routeEvent(t, 1, EventRouteCreated, r, t0)

	r.TargetURL = "http://changed:9"
	r.CreatedAt = t2 // what the data says of timestamps is ignored
	updated := routeEvent(t, 3, EventRouteUpdated, r, t1)
	updated.Version = 2

	other := events.Event{Position: 2, Stream: "user-x", Type: "user.created", Data: json.RawMessage(`{}`)}
	for _, ev := range []events.Event{created, other, updated, created, other} {
		if err := s.Apply(ev); err != nil {
			t.Fatalf("Apply(%d) = %v", ev.Position, err)
		}
	}
	if s.Position() != 3 {
		t.Fatalf("Position() = %d, want 3", s.Position())
	}
	tab, err := s.Build()
	if err != nil {
		t.Fatal(err)
	}
	got, ok := tab.Get(testID(1))
	if !ok {
		t.Fatal("route missing")
	}
	if got.TargetURL != "http://changed:9" || got.Version != 2 || !got.CreatedAt.Equal(t0) || !got.UpdatedAt.Equal(t1) {
		t.Fatalf("route = target %s version %d created %v updated %v", got.TargetURL, got.Version, got.CreatedAt, got.UpdatedAt)
	}
	if got.Target().Addr != "changed:9" {
		t.Fatalf("Target() = %+v, want the updated target", got.Target())
	}

	if err := s.Apply(deleteEvent(4, testID(1), t2)); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(deleteEvent(5, testID(1), t2)); err != nil {
		t.Fatalf("deleting an unknown route: %v", err)
	}
	tab, err = s.Build()
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 0 || tab.Position() != 5 {
		t.Fatalf("after delete: Len() = %d, Position() = %d", tab.Len(), tab.Position())
	}
	if _, _, ok := tab.Match("h", "GET", "/a"); ok {
		t.Fatal("deleted route still matches")
	}
}

func TestRouteStateApplyIDs(t *testing.T) {
	t.Parallel()
	r := route(1, "/a")
	tests := []struct {
		name    string
		ev      func() events.Event
		wantErr string
		wantID  int
	}{
		{name: "id from stream when data has none", wantID: 1, ev: func() events.Event {
			ev := routeEvent(t, 1, EventRouteCreated, r, epoch)
			ev.Data = json.RawMessage(strings.Replace(string(ev.Data), testID(1).String(), "00000000-0000-0000-0000-000000000000", 1))
			return ev
		}},
		{name: "id from data when stream is not a route's", wantID: 1, ev: func() events.Event {
			ev := routeEvent(t, 1, EventRouteCreated, r, epoch)
			ev.Stream = "routes"
			return ev
		}},
		{name: "stream and data disagree", wantErr: "is not stream", ev: func() events.Event {
			ev := routeEvent(t, 1, EventRouteCreated, r, epoch)
			ev.Stream = RouteStream(testID(2))
			return ev
		}},
		{name: "no id at all", wantErr: "names no route", ev: func() events.Event {
			return events.Event{Position: 1, Type: EventRouteDeleted, Stream: "x", Data: json.RawMessage(`{}`)}
		}},
		{name: "malformed data", wantErr: "decoding route.updated", ev: func() events.Event {
			ev := routeEvent(t, 1, EventRouteUpdated, r, epoch)
			ev.Data = json.RawMessage(`{"path":`)
			return ev
		}},
		{name: "malformed delete", wantErr: "decoding route.deleted", ev: func() events.Event {
			return events.Event{Position: 1, Type: EventRouteDeleted, Stream: RouteStream(testID(1)), Data: json.RawMessage(`{"id":7}`)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := NewRouteState()
			err := s.Apply(tt.ev())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Apply = %v, want an error with %q", err, tt.wantErr)
				}
				if s.Position() != 0 || len(s.routes) != 0 {
					t.Fatal("a failed Apply changed the state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.routes[testID(tt.wantID)]; !ok {
				t.Fatalf("route %d missing", tt.wantID)
			}
		})
	}
}

func TestRouteStateBuildRejectsInvalidRoutes(t *testing.T) {
	t.Parallel()
	bad := route(2, "/a//b")
	bad.Name = "broken"
	s := NewRouteState()
	for _, ev := range createEvents(t, route(1, "/ok"), bad, disabled(route(3, "no-slash"))) {
		if err := s.Apply(ev); err != nil {
			t.Fatalf("Apply keeps invalid routes for Build to report, got %v", err)
		}
	}
	_, err := s.Build()
	if err == nil {
		t.Fatal("Build accepted an invalid route")
	}
	for _, want := range []string{testID(2).String(), `"broken"`, "path:", testID(3).String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Build error %q does not mention %s", err, want)
		}
	}
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Field("path") == "" {
		t.Errorf("Build error does not wrap the *ValidationError: %v", err)
	}
	// Fixed by a later update, the state builds again.
	fixed := route(2, "/a/b")
	fixed2 := disabled(route(3, "/no-slash"))
	if err := s.Apply(routeEvent(t, 4, EventRouteUpdated, fixed, epoch)); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(routeEvent(t, 5, EventRouteUpdated, fixed2, epoch)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(); err != nil {
		t.Fatalf("Build after fixes = %v", err)
	}
}

func TestRouteStateBuildErrorIsBounded(t *testing.T) {
	t.Parallel()
	var routes []Route
	for i := 1; i <= 20; i++ {
		routes = append(routes, route(i, "bad"))
	}
	s := NewRouteState()
	for _, ev := range createEvents(t, routes...) {
		if err := s.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Build()
	if err == nil || !strings.Contains(err.Error(), "and 15 more invalid routes") {
		t.Fatalf("Build = %v", err)
	}
}

func TestRouteStateClone(t *testing.T) {
	t.Parallel()
	s := NewRouteState()
	for _, ev := range createEvents(t, route(1, "/a")) {
		if err := s.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	c := s.Clone()
	if err := c.Apply(routeEvent(t, 2, EventRouteCreated, route(2, "/b"), epoch)); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(deleteEvent(3, testID(1), epoch)); err != nil {
		t.Fatal(err)
	}
	if s.Position() != 1 || len(s.routes) != 1 || s.routes[testID(1)] == nil {
		t.Fatal("applying to a clone changed the original")
	}
	if c.Position() != 3 || len(c.routes) != 1 || c.routes[testID(2)] == nil {
		t.Fatal("clone did not apply")
	}
}
