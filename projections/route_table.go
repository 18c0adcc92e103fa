package projections

import (
	"slices"

	"github.com/google/uuid"
)

// RouteTable is the route table of one log position: immutable once built,
// safe for any number of concurrent readers. The *Route values it hands out
// are shared and must not be modified.
type RouteTable struct {
	position int64
	// byID and sorted (by CreatedAt, then ID) may be shared with the
	// RouteState that built the table, which copies them before writing.
	byID      map[uuid.UUID]*compiledRoute
	sorted    []*compiledRoute
	matcher   *matcher
	conflicts []Conflict
}

// Conflict reports an enabled route left out of the matcher because an
// earlier route (by CreatedAt, then ID) already claims the same host,
// method and path.
type Conflict struct {
	RouteID     uuid.UUID `json:"route_id"`
	WithRouteID uuid.UUID `json:"with_route_id"`
	Reason      string    `json:"reason"`
}

// compiledRoute is a route with what the table needs of it, computed once
// when the route enters a RouteState and shared by every table built
// after, so that a build does not re-parse unchanged routes.
type compiledRoute struct {
	route   *Route
	segs    []pathSegment
	methods methodSet
	// err is the route's validation error; a table with it fails to build.
	err error
}

func compileRoute(r *Route) *compiledRoute {
	var v ValidationError
	segs, target := r.check(&v)
	r.target = target
	return &compiledRoute{route: r, segs: segs, methods: newMethodSet(r.Methods), err: v.err()}
}

// newRouteTable builds a table from valid routes. sorted is byID's values
// by CreatedAt, then ID, which decides who wins a conflict; neither is
// modified.
func newRouteTable(position int64, byID map[uuid.UUID]*compiledRoute, sorted []*compiledRoute) *RouteTable {
	t := &RouteTable{position: position, byID: byID, sorted: sorted, matcher: newMatcher()}
	for _, c := range sorted {
		if !c.route.Enabled {
			continue
		}
		if other := t.matcher.add(c); other != nil {
			t.conflicts = append(t.conflicts, Conflict{
				RouteID:     c.route.ID,
				WithRouteID: other.ID,
				Reason:      "claims the same host, method and path as route " + other.ID.String() + ", created earlier",
			})
		}
	}
	t.matcher.finish()
	return t
}

// withPosition returns t at a later position with the same routes: for
// events that change no route.
func (t *RouteTable) withPosition(position int64) *RouteTable {
	next := *t
	next.position = position
	return &next
}

// Position is the log position the table reflects: every event up to it
// has been applied.
func (t *RouteTable) Position() int64 { return t.position }

// Len is the number of routes, disabled ones included.
func (t *RouteTable) Len() int { return len(t.sorted) }

// Get returns a route by ID, disabled or conflicting ones included.
func (t *RouteTable) Get(id uuid.UUID) (*Route, bool) {
	c, ok := t.byID[id]
	if !ok {
		return nil, false
	}
	return c.route, true
}

// List returns every route, disabled ones included, by CreatedAt then ID.
// The slice is the caller's; the routes are shared and read-only.
func (t *RouteTable) List() []*Route {
	routes := make([]*Route, len(t.sorted))
	for i, c := range t.sorted {
		routes[i] = c.route
	}
	return routes
}

// Conflicts lists the enabled routes left out of the matcher, in
// CreatedAt order. The slice is the caller's.
func (t *RouteTable) Conflicts() []Conflict { return slices.Clone(t.conflicts) }

// Match finds the route for a request, or ok false (404). host is the
// request's Host as sent (any case, optional port, optional trailing dot);
// path is the decoded, cleaned request path, starting with "/". matched is
// the number of bytes of path the route's path consumed (0 for the root
// route "/"), so a strip_path route forwards path[matched:], which is ""
// or starts with "/". Only enabled, non-conflicting routes match.
//
// Methods compare exactly (RFC 9110 methods are case-sensitive; HEAD does
// not match a GET-only route). A route host with a port matches only a
// Host that carries that port; one without a port matches any port.
// Match allocates nothing and takes no lock.
func (t *RouteTable) Match(host, method, path string) (r *Route, matched int, ok bool) {
	if t == nil || t.matcher == nil {
		return nil, 0, false
	}
	return t.matcher.match(host, method, path)
}

// ConflictsWith reports whether r, a route about to be created, updated or
// enabled, would claim the same host, method and path as an enabled route
// of the table that has another ID: the admin's check before appending.
// Parameter names do not matter ("/u/{a}" claims what "/u/{b}" claims),
// and an empty method set overlaps every method. A disabled or invalid r
// claims nothing. Routes the table already left out as conflicting are not
// held against r.
func (t *RouteTable) ConflictsWith(r *Route) (other *Route, ok bool) {
	if !r.Enabled {
		return nil, false
	}
	segs, msg := parsePath(NormalizePath(r.Path))
	if msg != "" {
		return nil, false
	}
	root := t.matcher.root(normalizeHost(r.Host), false)
	if root == nil {
		return nil, false
	}
	n := root.lookup(segs)
	if n == nil {
		return nil, false
	}
	other = n.overlapping(r.ID, newMethodSet(normalizeMethods(r.Methods)))
	return other, other != nil
}
