package projections

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// nastyPaths seed every fuzz target that takes a path.
var nastyPaths = []string{
	"/", "", "//", "///", "/..", "/.", "/a/../b", "/a/./b", "/%2e%2e", "/%2F", "/{", "/}", "/{}",
	"/{a}{b}", "/{a}/{a}", "/x{a}", "/{a-b}", "/{1}", "/\x00", "/a\x00b", "/a b", "/a?b", "/a#b",
	"/a\\b", "/\xff", "/café", "/api/", "/api//", "api", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t",
	"/" + strings.Repeat("{p}/", 40), manyParams(40), manyParams(16), manyParams(17),
	"/" + strings.Repeat("a", MaxPathLength), "/" + strings.Repeat("ab/", 400),
}

func manyParams(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("/{p")
		b.WriteString(strings.Repeat("x", i))
		b.WriteString("}")
	}
	return b.String()
}

// concrete turns a route path into a request path it must match.
func concrete(path string) string {
	segs, msg := parsePath(path)
	if msg != "" {
		panic("concrete of invalid path " + path)
	}
	if len(segs) == 0 {
		return "/"
	}
	var b strings.Builder
	for _, s := range segs {
		b.WriteByte('/')
		if s.param {
			b.WriteString("v")
		} else {
			b.WriteString(s.literal)
		}
	}
	return b.String()
}

// hostFor returns a request host a route host must match.
func hostFor(host string) string {
	if suffix, ok := strings.CutPrefix(host, "*."); ok {
		return "Any." + strings.ToUpper(suffix)
	}
	return strings.ToUpper(host)
}

// directTable builds a table from routes without the JSON of events, for
// fuzzing speed.
func directTable(routes []Route) (*RouteTable, error) {
	s := NewRouteState()
	for i := range routes {
		r := routes[i]
		r.ID = testID(i + 1)
		r.CreatedAt = epoch.Add(time.Duration(i) * time.Second)
		s.put(compileRoute(&r))
		s.position = int64(i + 1)
	}
	return s.Build()
}

func FuzzNormalizePath(f *testing.F) {
	for _, p := range nastyPaths {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n := NormalizePath(p)
		if NormalizePath(n) != n {
			t.Fatalf("NormalizePath not idempotent: %q → %q → %q", p, n, NormalizePath(n))
		}
		segs, msg := parsePath(n)
		if msg != "" {
			return
		}
		if len(segs) > MaxPathParams+len(n) || len(n) > MaxPathLength {
			t.Fatalf("valid path %q out of bounds", n)
		}
		if strings.Contains(n, "//") || strings.Contains(n, "/./") || strings.Contains(n, "/../") ||
			strings.HasSuffix(n, "/.") || strings.HasSuffix(n, "/..") || (n != "/" && strings.HasSuffix(n, "/")) {
			t.Fatalf("valid path %q is not clean", n)
		}
		// A valid route matches its own path, all of it.
		r := route(1, n)
		tab, err := directTable([]Route{r})
		if err != nil {
			t.Fatalf("valid path %q does not build: %v", n, err)
		}
		req := concrete(n)
		got, matched, ok := tab.Match("h", "GET", req)
		want := len(req)
		if req == "/" {
			want = 0
		}
		if !ok || got.Path != n || matched != want {
			t.Fatalf("route %q on %q: matched %d, %v; want %d", n, req, matched, ok, want)
		}
	})
}

func FuzzValidateRoute(f *testing.F) {
	for _, p := range nastyPaths {
		body, _ := json.Marshal(map[string]any{"path": p, "target_url": "http://b"})
		f.Add(body)
	}
	for _, s := range []string{
		`{"path":"/a","target_url":"http://b","host":"*.example.com","methods":["get","PURGE"]}`,
		`{"path":"/a","target_url":"http://b","host":"API.example.com.:8443","method":"post"}`,
		`{"path":"/a","target_url":"http://b","host":"[2001:db8::1]:80","method":"*","methods":[]}`,
		`{"path":"/a","target_url":"http://b","host":"*.","timeout":0}`,
		`{"path":"/a/{id}","target_url":"https://b:8443/base?x=1","priority":-1000,"rate_limit":5,"strip_path":false}`,
		`{"path":"/a","target_url":"http://b","method":"GET","methods":["POST"]}`,
		`{"path":"/a","path":"/b"}`, `{"PATH":"/a"}`, `{"timeout":"x"}`, `[]`, `null`, ``, `{`,
		`{"path":"/a"} {}`, `{"methods":[null]}`, `{"host":"\u212a.com"}`, `{"method":"ſ"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var ve *ValidationError
		in, err := DecodeRouteInput(body)
		if err != nil {
			if !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("DecodeRouteInput error %v is not a *ValidationError", err)
			}
			return
		}
		r := NewRouteFromInput(in)
		if again := in.Merge(r); !reflect.DeepEqual(again, r) {
			t.Fatalf("normalization not idempotent:\n%+v\n%+v", r, again)
		}
		if err := r.Validate(); err != nil {
			if !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("Validate error %v is not a *ValidationError", err)
			}
			return
		}
		if NormalizePath(r.Path) != r.Path {
			t.Fatalf("valid path %q is not a fixed point", r.Path)
		}
		// Survives the trip through an event.
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Route
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if err := back.Validate(); err != nil || !reflect.DeepEqual(back, r) {
			t.Fatalf("round trip changed the route: %v\n%+v\n%+v", err, r, back)
		}
		// An enabled valid route serves its own host, method and path.
		if !r.Enabled {
			return
		}
		tab, err := directTable([]Route{r})
		if err != nil {
			t.Fatalf("valid route does not build: %v", err)
		}
		method := "GET"
		if len(r.Methods) > 0 {
			method = r.Methods[len(r.Methods)-1]
		}
		if got, _, ok := tab.Match(hostFor(r.Host), method, concrete(r.Path)); !ok || got.Path != r.Path {
			t.Fatalf("route %+v does not match its own request", r)
		}
	})
}

func FuzzMatch(f *testing.F) {
	f.Add("/\n/api\n/api/{id} GET\n/api/{x}/b POST,PURGE\n/ *.example.com\n/x api.example.com", "API.example.com:80", "GET", "/api/42/b")
	f.Add("/a/{b}/c\n/a/b", "h", "GET", "/a/b/c")
	f.Add("/{a}/{b}/{c}\n/x/{b}\n/x/y/{c}", "x.example.com", "POST", "/x/y/z/")
	f.Add("/u/{a} GET\n/u/{b} GET,POST", "h", "POST", "/u/1")
	for _, p := range nastyPaths {
		f.Add("/\n"+p, "h", "GET", p)
	}
	f.Fuzz(func(t *testing.T, spec, host, method, path string) {
		var routes []Route
		for line := range strings.Lines(spec) {
			if len(routes) == 64 {
				break
			}
			// "path [host|-] [METHOD,METHOD]"
			fields := strings.Fields(line)
			if len(fields) == 0 {
				continue
			}
			in := RouteInput{Path: &fields[0], TargetURL: ptr("http://b")}
			if len(fields) > 1 && fields[1] != "-" {
				in.Host = &fields[1]
			}
			if len(fields) > 2 {
				ms := strings.Split(fields[2], ",")
				in.Methods = &ms
			}
			if r := NewRouteFromInput(in); r.Validate() == nil {
				r.Priority = len(routes) % 3
				routes = append(routes, r)
			}
		}
		tab, err := directTable(routes)
		if err != nil {
			t.Fatalf("valid routes do not build: %v", err)
		}
		r, matched, ok := tab.Match(host, method, path)
		if ok {
			if matched < 0 || matched > len(path) {
				t.Fatalf("matched %d of %q", matched, path)
			}
			if matched < len(path) && path[matched] != '/' {
				t.Fatalf("route %q matched %q up to %d, not a segment boundary", r.Path, path, matched)
			}
			segs, _ := parsePath(r.Path)
			reqSegs := strings.Split(path[:matched], "/")[1:]
			if matched == 0 {
				reqSegs = nil
			}
			if len(segs) != len(reqSegs) {
				t.Fatalf("route %q matched %q: %d segments for %d", r.Path, path[:matched], len(reqSegs), len(segs))
			}
			for i, s := range segs {
				if (s.param && reqSegs[i] == "") || (!s.param && s.literal != reqSegs[i]) {
					t.Fatalf("route %q does not match %q", r.Path, path[:matched])
				}
			}
		}
		wr, wm, wok := referenceMatch(tab, host, method, path)
		if ok != wok || r != wr || matched != wm {
			t.Fatalf("Match(%q, %q, %q) = %s %d %v; reference %s %d %v", host, method, path, idOf(r), matched, ok, idOf(wr), wm, wok)
		}
	})
}
