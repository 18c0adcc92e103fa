package projections

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	t.Parallel()
	tab := tableOf(t,
		route(1, "/"),
		route(2, "/api"),
		withMethods(route(3, "/api/users"), "GET"),
		route(4, "/api/users/{id}"),
		route(5, "/api/{version}/items"),
		route(6, "/api/users/me"),
		withHost(route(7, "/api"), "api.example.com"),
		withHost(route(8, "/"), "*.example.com"),
		withHost(route(9, "/x"), "*.b.example.com"),
		withHost(route(10, "/"), "api.example.com:8443"),
		withMethods(route(11, "/cache"), "PURGE"),
		withHost(route(12, "/v6"), "[2001:db8::1]"),
		route(13, "/café/{x}"),
		disabled(route(14, "/off")),
	)

	tests := []struct {
		name        string
		host        string
		method      string
		path        string
		wantID      int // 0: no match
		wantMatched int
	}{
		{name: "root matches anything", host: "h", method: "GET", path: "/zzz", wantID: 1, wantMatched: 0},
		{name: "root matches root", host: "h", method: "GET", path: "/", wantID: 1, wantMatched: 0},
		{name: "prefix is segment aware", host: "h", method: "GET", path: "/apix", wantID: 1, wantMatched: 0},
		{name: "exact prefix", host: "h", method: "GET", path: "/api", wantID: 2, wantMatched: 4},
		{name: "prefix with trailing slash", host: "h", method: "GET", path: "/api/", wantID: 2, wantMatched: 4},
		{name: "deeper static with method", host: "h", method: "GET", path: "/api/users", wantID: 3, wantMatched: 10},
		{name: "method mismatch falls back to shallower", host: "h", method: "POST", path: "/api/users", wantID: 2, wantMatched: 4},
		{name: "param segment", host: "h", method: "GET", path: "/api/users/42", wantID: 4, wantMatched: 13},
		{name: "param then rest", host: "h", method: "DELETE", path: "/api/users/42/x/y", wantID: 4, wantMatched: 13},
		{name: "static beats param at equal depth", host: "h", method: "GET", path: "/api/users/me", wantID: 6, wantMatched: 13},
		{name: "static earlier beats static later", host: "h", method: "GET", path: "/api/users/items", wantID: 4, wantMatched: 16},
		{name: "param in the middle", host: "h", method: "GET", path: "/api/v1/items/9", wantID: 5, wantMatched: 13},
		{name: "deeper param route beats shallower static", host: "h", method: "GET", path: "/api/v1/items", wantID: 5, wantMatched: 13},
		{name: "param needs a non-empty segment", host: "h", method: "POST", path: "/api/users//x", wantID: 2, wantMatched: 4},
		{name: "param does not match empty trailing segment", host: "h", method: "POST", path: "/api/users/", wantID: 2, wantMatched: 4},
		{name: "exact host, any case, port stripped", host: "API.Example.COM:80", method: "GET", path: "/api/x", wantID: 7, wantMatched: 4},
		{name: "exact host with trailing dot", host: "api.example.com.", method: "GET", path: "/api", wantID: 7, wantMatched: 4},
		{name: "exact host group without match falls to wildcard", host: "api.example.com", method: "GET", path: "/other", wantID: 8, wantMatched: 0},
		{name: "host with port route first", host: "api.example.com:8443", method: "GET", path: "/api/x", wantID: 10, wantMatched: 0},
		{name: "longest wildcard first", host: "x.b.example.com", method: "GET", path: "/x/1", wantID: 9, wantMatched: 2},
		{name: "longer wildcard without match falls to shorter", host: "x.b.example.com", method: "GET", path: "/y", wantID: 8, wantMatched: 0},
		{name: "wildcard needs a label before the suffix", host: "example.com", method: "GET", path: "/x", wantID: 1, wantMatched: 0},
		{name: "wildcard does not match the bare suffix with a dot", host: ".example.com", method: "GET", path: "/x", wantID: 1, wantMatched: 0},
		{name: "custom method", host: "h", method: "PURGE", path: "/cache/k", wantID: 11, wantMatched: 6},
		{name: "custom method mismatch", host: "h", method: "GET", path: "/cache/k", wantID: 1, wantMatched: 0},
		{name: "methods are case sensitive", host: "h", method: "purge", path: "/cache", wantID: 1, wantMatched: 0},
		{name: "ipv6 host", host: "[2001:DB8::1]:8080", method: "GET", path: "/v6", wantID: 12, wantMatched: 3},
		{name: "utf-8 path", host: "h", method: "GET", path: "/café/1", wantID: 13, wantMatched: 8},
		{name: "disabled route not matched", host: "h", method: "GET", path: "/off", wantID: 1, wantMatched: 0},
		{name: "empty host", host: "", method: "GET", path: "/api", wantID: 2, wantMatched: 4},
		{name: "path without slash", host: "h", method: "GET", path: "api", wantID: 0},
		{name: "empty path", host: "h", method: "GET", path: "", wantID: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, matched, ok := tab.Match(tt.host, tt.method, tt.path)
			if tt.wantID == 0 {
				if ok {
					t.Fatalf("Match(%q, %q, %q) = %s, want no match", tt.host, tt.method, tt.path, idOf(r))
				}
				return
			}
			if !ok || r.ID != testID(tt.wantID) || matched != tt.wantMatched {
				t.Fatalf("Match(%q, %q, %q) = %s, %d, %v; want %s, %d", tt.host, tt.method, tt.path,
					idOf(r), matched, ok, testID(tt.wantID), tt.wantMatched)
			}
		})
	}
}

func TestMatchNoHostlessRoutes(t *testing.T) {
	t.Parallel()
	tab := tableOf(t, withHost(route(1, "/a"), "a.example.com"))
	if r, _, ok := tab.Match("b.example.com", "GET", "/a"); ok {
		t.Fatalf("route for another host matched: %s", idOf(r))
	}
	if _, _, ok := tab.Match("a.example.com", "GET", "/a/b"); !ok {
		t.Fatal("route for its host did not match")
	}
	if r, _, ok := tab.Match(strings.Repeat("a", 300)+".example.com", "GET", "/a"); ok {
		t.Fatalf("overlong host matched %s", idOf(r))
	}
	var empty *RouteTable
	if _, _, ok := empty.Match("h", "GET", "/"); ok {
		t.Fatal("nil table matched")
	}
}

func TestMatchTieBreaks(t *testing.T) {
	t.Parallel()
	// Routes of one shape and disjoint methods do not conflict; each
	// method finds its own.
	tab := tableOf(t,
		withMethods(route(1, "/t/{a}"), "GET"),
		withMethods(route(2, "/t/{b}"), "POST", "PUT"),
	)
	for method, want := range map[string]int{"GET": 1, "POST": 2, "PUT": 2} {
		if r, _, ok := tab.Match("h", method, "/t/x"); !ok || r.ID != testID(want) {
			t.Errorf("%s /t/x matched %s, want %s", method, idOf(r), testID(want))
		}
	}
	if r, _, ok := tab.Match("h", "DELETE", "/t/x"); ok {
		t.Errorf("DELETE /t/x matched %s", idOf(r))
	}

	// Entries of one node sort explicit methods first, then priority,
	// then age: checked on the sort itself, as the build never keeps two
	// overlapping routes at one node.
	a := &Route{ID: testID(1), Priority: 5, CreatedAt: epoch}
	b := &Route{ID: testID(2), Priority: 9, CreatedAt: epoch}
	c := &Route{ID: testID(3), Priority: 9, CreatedAt: epoch.Add(-1)}
	d := &Route{ID: testID(4), Priority: 100, CreatedAt: epoch}
	entries := []entry{
		{route: d, methods: methodSet{any: true}},
		{route: a, methods: newMethodSet([]string{"GET"})},
		{route: b, methods: newMethodSet([]string{"GET"})},
		{route: c, methods: newMethodSet([]string{"GET"})},
	}
	slices.SortFunc(entries, compareEntries)
	var got []int
	for _, e := range entries {
		got = append(got, int(e.route.ID[15]))
	}
	if want := []int{3, 2, 1, 4}; !slices.Equal(got, want) {
		t.Fatalf("entry order = %v, want %v", got, want)
	}
}

func TestMatchAllocatesNothing(t *testing.T) {
	tab := benchTable(t, 1000)
	reqs := benchRequests(1000)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		q := reqs[i%len(reqs)]
		i++
		tab.Match(q.host, q.method, q.path)
	})
	if allocs != 0 {
		t.Fatalf("Match allocates %.1f times per call, want 0", allocs)
	}
}

// TestMatchAgreesWithReference compares the trie with a linear scan that
// applies the precedence rules literally, on random route sets.
func TestMatchAgreesWithReference(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	segs := []string{"a", "b", "c", "{p}", "{q}"}
	hosts := []string{"", "", "", "x.com", "*.x.com", "*.y.x.com", "x.com:81"}
	methods := [][]string{{}, {}, {"GET"}, {"POST"}, {"GET", "PURGE"}}
	for round := range 200 {
		var routes []Route
		for n := 1; n <= 1+rng.IntN(12); n++ {
			var p strings.Builder
			for range rng.IntN(4) {
				p.WriteString("/" + segs[rng.IntN(len(segs))])
			}
			path := p.String()
			if path == "" {
				path = "/"
			}
			if strings.Count(path, "{p}") > 1 || strings.Count(path, "{q}") > 1 {
				continue
			}
			r := withHost(withMethods(route(n, path), methods[rng.IntN(len(methods))]...), hosts[rng.IntN(len(hosts))])
			r.Priority = rng.IntN(3)
			routes = append(routes, r)
		}
		tab := tableOf(t, routes...)
		for range 50 {
			var p strings.Builder
			for range rng.IntN(5) {
				p.WriteString("/" + []string{"a", "b", "c", "d", ""}[rng.IntN(5)])
			}
			path := p.String()
			if path == "" {
				path = "/"
			}
			host := []string{"x.com", "X.com:81", "z.y.x.com", "q.x.com", "other", ""}[rng.IntN(6)]
			method := []string{"GET", "POST", "PURGE", "PUT"}[rng.IntN(4)]
			r, m, ok := tab.Match(host, method, path)
			wr, wm, wok := referenceMatch(tab, host, method, path)
			if ok != wok || r != wr || m != wm {
				t.Fatalf("round %d: Match(%q, %q, %q) = %s, %d, %v; reference %s, %d, %v\nroutes: %+v",
					round, host, method, path, idOf(r), m, ok, idOf(wr), wm, wok, routes)
			}
		}
	}
}

// referenceMatch is Match written as a linear scan over the table's
// matchable routes, straight from the rules in DESIGN.md.
func referenceMatch(tab *RouteTable, host, method, path string) (*Route, int, bool) {
	if path == "" || path[0] != '/' {
		return nil, 0, false
	}
	excluded := map[string]bool{}
	for _, c := range tab.Conflicts() {
		excluded[c.RouteID.String()] = true
	}
	// Host syntax (case, port, trailing dot) is canonicalHost's, tested
	// on its own; the precedence below is written out independently.
	var buf [hostBufLen]byte
	n, nameLen, hostOK := canonicalHost(host, &buf)
	name, port := string(buf[:nameLen]), ""
	if n > nameLen {
		port = string(buf[nameLen+1 : n])
	}
	// Host groups, most specific first.
	var groups []func(string) bool
	if hostOK {
		groups = append(groups,
			func(rh string) bool { return port != "" && rh == name+":"+port },
			func(rh string) bool { return rh == name },
		)
		labels := strings.Split(name, ".")
		for i := 1; i < len(labels); i++ {
			if labels[0] == "" && i == 1 {
				continue // ".example.com": no label before the suffix
			}
			suffix := strings.Join(labels[i:], ".")
			groups = append(groups, func(rh string) bool { return rh == "*."+suffix })
		}
	}
	groups = append(groups, func(rh string) bool { return rh == "" })

	reqSegs := strings.Split(path[1:], "/")
	for _, inGroup := range groups {
		var best *Route
		var bestSegs []pathSegment
		bestEnd := 0
		for _, r := range tab.List() {
			if !r.Enabled || excluded[r.ID.String()] || !inGroup(r.Host) {
				continue
			}
			if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
				continue
			}
			segs, _ := parsePath(r.Path)
			if len(segs) > len(reqSegs) {
				continue
			}
			end, ok := 0, true
			for i, s := range segs {
				if (s.param && reqSegs[i] == "") || (!s.param && s.literal != reqSegs[i]) {
					ok = false
					break
				}
				end += 1 + len(reqSegs[i])
			}
			if !ok {
				continue
			}
			if best == nil || referenceBetter(segs, r, bestSegs, best) {
				best, bestSegs, bestEnd = r, segs, end
			}
		}
		if best != nil {
			return best, bestEnd, true
		}
	}
	return nil, 0, false
}

func referenceBetter(segs []pathSegment, r *Route, bestSegs []pathSegment, best *Route) bool {
	if len(segs) != len(bestSegs) {
		return len(segs) > len(bestSegs)
	}
	for i := range segs {
		if segs[i].param != bestSegs[i].param {
			return !segs[i].param
		}
	}
	if (len(r.Methods) == 0) != (len(best.Methods) == 0) {
		return len(r.Methods) > 0
	}
	if r.Priority != best.Priority {
		return r.Priority > best.Priority
	}
	return compareCreated(r, best) < 0
}

type benchRequest struct{ host, method, path string }

// benchRoutes is a realistic mix of n routes: per service a static prefix,
// a users collection, an {id} route and a nested param route; every tenth
// service on its own host, every 50th under a wildcard host.
func benchRoutes(n int) []Route {
	routes := make([]Route, 0, n)
	add := func(r Route) {
		if len(routes) < n {
			routes = append(routes, r)
		}
	}
	for i := 0; len(routes) < n; i++ {
		svc := fmt.Sprintf("/svc%d", i)
		host := benchHost(i)
		add(withHost(route(len(routes)+1, svc), host))
		add(withHost(withMethods(route(len(routes)+1, svc+"/v1/users"), "GET", "POST"), host))
		add(withHost(route(len(routes)+1, svc+"/v1/users/{id}"), host))
		add(withHost(withMethods(route(len(routes)+1, svc+"/v1/users/{id}/orders/{order}"), "GET"), host))
	}
	return routes
}

func benchHost(i int) string {
	switch {
	case i%50 == 7:
		return fmt.Sprintf("*.t%d.example.com", i)
	case i%10 == 3:
		return fmt.Sprintf("svc%d.example.com", i)
	}
	return ""
}

func benchTable(tb testing.TB, n int) *RouteTable { return tableOf(tb, benchRoutes(n)...) }

// benchRequests spreads requests over the services of a benchTable(n):
// deep param paths, collection posts, prefix hits and misses.
func benchRequests(n int) []benchRequest {
	services := max(1, n/4)
	var reqs []benchRequest
	for k := range 256 {
		i := (k * 7919) % services
		host := "gw.example.com:8080"
		switch h := benchHost(i); {
		case strings.HasPrefix(h, "*."):
			host = "tenant." + h[2:]
		case h != "":
			host = strings.ToUpper(h[:1]) + h[1:]
		}
		svc := fmt.Sprintf("/svc%d", i)
		switch k % 4 {
		case 0:
			reqs = append(reqs, benchRequest{host, "GET", svc + "/v1/users/12345/orders/678/items"})
		case 1:
			reqs = append(reqs, benchRequest{host, "POST", svc + "/v1/users"})
		case 2:
			reqs = append(reqs, benchRequest{host, "DELETE", svc + "/v2/thing"})
		case 3:
			reqs = append(reqs, benchRequest{host, "GET", "/unknown/path"})
		}
	}
	return reqs
}

func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			tab := benchTable(b, n)
			reqs := benchRequests(n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				q := reqs[i&255]
				i++
				tab.Match(q.host, q.method, q.path)
			}
		})
	}
}
