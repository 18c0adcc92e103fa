package projections

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestRouteTableConflicts(t *testing.T) {
	t.Parallel()
	tab := tableOf(t,
		withMethods(route(1, "/u/{a}"), "GET"),
		withMethods(route(2, "/u/{b}"), "GET", "POST"), // overlaps 1 on GET
		withMethods(route(3, "/u/{c}"), "PUT"),         // disjoint
		disabled(route(4, "/u/{d}")),                   // disabled: claims nothing
		route(5, "/u/{e}"),                             // any method overlaps 1
		withHost(route(6, "/u/{f}"), "other.com"),      // another host
		withMethods(route(7, "/u/{g}"), "POST"),        // 2 was left out, so free
		route(8, "/u/x"),                               // static: another path
	)
	want := []Conflict{
		{RouteID: testID(2), WithRouteID: testID(1)},
		{RouteID: testID(5), WithRouteID: testID(1)},
	}
	got := tab.Conflicts()
	if len(got) != len(want) {
		t.Fatalf("Conflicts() = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].RouteID != want[i].RouteID || got[i].WithRouteID != want[i].WithRouteID || !strings.Contains(got[i].Reason, want[i].WithRouteID.String()) {
			t.Errorf("conflict %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	for method, wantID := range map[string]int{"GET": 1, "PUT": 3, "POST": 7} {
		if r, _, ok := tab.Match("h", method, "/u/1"); !ok || r.ID != testID(wantID) {
			t.Errorf("%s /u/1 matched %s, want route %d", method, idOf(r), wantID)
		}
	}
	if r, _, ok := tab.Match("h", "DELETE", "/u/1"); ok {
		t.Errorf("DELETE /u/1 matched %s; the any-method route conflicts and is out", idOf(r))
	}
	if tab.Len() != 8 {
		t.Errorf("Len() = %d, want 8: conflicting and disabled routes are listed", tab.Len())
	}
	if r, ok := tab.Get(testID(2)); !ok || r.ID != testID(2) {
		t.Error("Get does not find a conflicting route")
	}
}

func TestRouteTableConflictTieBreaksOnID(t *testing.T) {
	t.Parallel()
	// Same CreatedAt: the smaller ID was "created first" and wins.
	s := NewRouteState()
	for i, n := range []int{9, 4} {
		if err := s.Apply(routeEvent(t, int64(i+1), EventRouteCreated, route(n, "/same"), epoch)); err != nil {
			t.Fatal(err)
		}
	}
	tab, err := s.Build()
	if err != nil {
		t.Fatal(err)
	}
	if c := tab.Conflicts(); len(c) != 1 || c[0].RouteID != testID(9) || c[0].WithRouteID != testID(4) {
		t.Fatalf("Conflicts() = %+v, want route 9 left out for route 4", c)
	}
	if got := tab.List(); got[0].ID != testID(4) || got[1].ID != testID(9) {
		t.Fatalf("List() order = %s, %s; want 4 then 9", got[0].ID, got[1].ID)
	}
}

func TestRouteTableConflictsWith(t *testing.T) {
	t.Parallel()
	tab := tableOf(t,
		withMethods(route(1, "/u/{a}"), "GET"),
		withMethods(route(2, "/u/{b}"), "GET"), // left out: conflicts with 1
		withHost(route(3, "/"), "*.example.com"),
		route(4, "/svc"),
		disabled(route(5, "/off")),
	)
	tests := []struct {
		name      string
		candidate Route
		wantID    int // 0: no conflict
	}{
		{name: "same shape other param name", candidate: withMethods(route(10, "/u/{zzz}"), "GET", "DELETE"), wantID: 1},
		{name: "any method overlaps", candidate: route(10, "/u/{x}"), wantID: 1},
		{name: "disjoint methods", candidate: withMethods(route(10, "/u/{x}"), "POST"), wantID: 0},
		{name: "updating the route itself", candidate: withMethods(route(1, "/u/{a}"), "GET"), wantID: 0},
		{name: "left-out route is not held against its winner", candidate: route(1, "/u/{a}"), wantID: 0},
		{name: "left-out route still conflicts with its winner", candidate: withMethods(route(2, "/u/{b}"), "GET"), wantID: 1},
		{name: "static is another path", candidate: route(10, "/u/me"), wantID: 0},
		{name: "longer path is another path", candidate: route(10, "/svc/x"), wantID: 0},
		{name: "unnormalized candidate", candidate: withMethods(route(10, "/svc/"), "get"), wantID: 4},
		{name: "host matters", candidate: withHost(route(10, "/svc"), "a.com"), wantID: 0},
		{name: "wildcard host, any case", candidate: withHost(route(10, "/"), "*.EXAMPLE.com"), wantID: 3},
		{name: "disabled candidate claims nothing", candidate: disabled(route(10, "/svc")), wantID: 0},
		{name: "disabled route in the table claims nothing", candidate: route(10, "/off"), wantID: 0},
		{name: "invalid candidate claims nothing", candidate: route(10, "svc"), wantID: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.candidate
			other, ok := tab.ConflictsWith(&c)
			switch {
			case tt.wantID == 0 && ok:
				t.Fatalf("ConflictsWith = %s, want none", idOf(other))
			case tt.wantID != 0 && (!ok || other.ID != testID(tt.wantID)):
				t.Fatalf("ConflictsWith = %s, %v; want %s", idOf(other), ok, testID(tt.wantID))
			}
		})
	}
}

func TestRouteTableReaders(t *testing.T) {
	t.Parallel()
	tab := tableOf(t, route(3, "/c"), disabled(route(1, "/a")), route(2, "/b"))
	list := tab.List()
	var ids []uuid.UUID
	for _, r := range list {
		ids = append(ids, r.ID)
	}
	// Creation order (argument order), not ID order.
	if want := []uuid.UUID{testID(3), testID(1), testID(2)}; !slices.Equal(ids, want) {
		t.Fatalf("List() = %v, want %v", ids, want)
	}
	list[0] = nil
	if tab.List()[0] == nil {
		t.Fatal("List() exposes the table's slice")
	}
	if r, ok := tab.Get(testID(1)); !ok || r.Enabled {
		t.Fatalf("Get(disabled) = %+v, %v", r, ok)
	}
	if _, ok := tab.Get(testID(99)); ok {
		t.Fatal("Get(unknown) found a route")
	}
	r, _ := tab.Get(testID(3))
	if got := r.Target(); got.Addr != "backend-3:8080" || got.BasePath != "/base" || got.Scheme != "http" {
		t.Fatalf("Target() = %+v: routes in a table are compiled", got)
	}
	if !r.CreatedAt.Equal(epoch) || !r.UpdatedAt.Equal(epoch) || r.Version != 1 {
		t.Fatalf("route metadata = %v %v %d", r.CreatedAt, r.UpdatedAt, r.Version)
	}
	if tab.Position() != 3 || tab.Len() != 3 {
		t.Fatalf("Position() = %d, Len() = %d", tab.Position(), tab.Len())
	}
}
