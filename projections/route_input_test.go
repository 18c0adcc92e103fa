package projections

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestDecodeRouteInputErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		body      string
		wantField string
		wantMsg   string
	}{
		{name: "string for int", body: `{"timeout":"x"}`, wantField: "timeout", wantMsg: "integer"},
		{name: "fraction for int", body: `{"priority":1.5}`, wantField: "priority", wantMsg: "integer"},
		{name: "overflowing int", body: `{"rate_limit":1e100}`, wantField: "rate_limit", wantMsg: "integer"},
		{name: "number for string", body: `{"path":1}`, wantField: "path", wantMsg: "string"},
		{name: "string for bool", body: `{"enabled":"yes"}`, wantField: "enabled", wantMsg: "boolean"},
		{name: "string for methods", body: `{"methods":"GET"}`, wantField: "methods", wantMsg: "array"},
		{name: "number in methods", body: `{"methods":[1]}`, wantField: "methods", wantMsg: "array"},
		{name: "unknown field", body: `{"path":"/a","id":"x"}`, wantField: "id", wantMsg: "unknown"},
		{name: "field in the wrong case", body: `{"PATH":"/a"}`, wantField: "PATH", wantMsg: "unknown"},
		{name: "field given twice", body: `{"path":"/a","path":"/b"}`, wantField: "path", wantMsg: "more than once"},
		{name: "array body", body: `[]`, wantMsg: "object"},
		{name: "null body", body: `null`, wantMsg: "object"},
		{name: "empty body", body: ``, wantMsg: "object"},
		{name: "string body", body: `"x"`, wantMsg: "object"},
		{name: "malformed", body: `{"path":}`, wantMsg: "malformed"},
		{name: "unterminated", body: `{"path":"/a"`, wantMsg: "malformed"},
		{name: "trailing data", body: `{"path":"/a"} {"path":"/b"}`, wantMsg: "after"},
		{name: "method disagrees", body: `{"method":"GET","methods":["GET","POST"]}`, wantField: "method", wantMsg: "only element"},
		{name: "method not in methods", body: `{"method":"PUT","methods":["GET"]}`, wantField: "method", wantMsg: "only element"},
		{name: "any method against a list", body: `{"method":"","methods":["GET"]}`, wantField: "method", wantMsg: "only element"},
		{name: "method not a token", body: `{"method":"GE T"}`, wantField: "method", wantMsg: "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeRouteInput([]byte(tt.body))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("DecodeRouteInput(%s) = %v, want a *ValidationError", tt.body, err)
			}
			if len(ve.Errors) == 0 || ve.Errors[0].Field != tt.wantField || !strings.Contains(ve.Errors[0].Message, tt.wantMsg) {
				t.Fatalf("DecodeRouteInput(%s) = %+v, want field %q with %q", tt.body, ve.Errors, tt.wantField, tt.wantMsg)
			}
		})
	}
}

func TestDecodeRouteInputAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		wantMethods []string
	}{
		{name: "seed body", body: `{"path":"/api/users","target_url":"http://backend:3000/users","method":"GET","enabled":true,"rate_limit":100,"timeout":30}`, wantMethods: []string{"GET"}},
		{name: "method agrees after upper-casing", body: `{"method":"get","methods":["GET","get"]}`, wantMethods: []string{"GET"}},
		{name: "star with empty list", body: `{"method":"*","methods":[]}`, wantMethods: []string{}},
		{name: "empty method alone is any", body: `{"method":""}`, wantMethods: []string{}},
		{name: "custom methods", body: `{"methods":["purge","GET","PURGE"]}`, wantMethods: []string{"GET", "PURGE"}},
		{name: "nulls are omissions", body: `{"path":null,"methods":null}`, wantMethods: []string{}},
		{name: "whitespace around", body: " \n{}\n ", wantMethods: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, err := DecodeRouteInput([]byte(tt.body))
			if err != nil {
				t.Fatalf("DecodeRouteInput(%s) = %v", tt.body, err)
			}
			if r := NewRouteFromInput(in); !slices.Equal(r.Methods, tt.wantMethods) || r.Methods == nil {
				t.Fatalf("methods = %#v, want %#v", r.Methods, tt.wantMethods)
			}
		})
	}
}

func TestNewRouteFromInputDefaults(t *testing.T) {
	t.Parallel()
	in, err := DecodeRouteInput([]byte(`{"path":"/api/","target_url":"http://b:1","host":"API.Example.com."}`))
	if err != nil {
		t.Fatal(err)
	}
	got := NewRouteFromInput(in)
	want := Route{
		Path:      "/api",
		Host:      "api.example.com",
		Methods:   []string{},
		TargetURL: "http://b:1",
		StripPath: true,
		Enabled:   true,
		Timeout:   DefaultTimeoutSeconds,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("NewRouteFromInput = %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if h := NewRouteFromInput(RouteInput{Host: ptr("A.COM.:8080")}).Host; h != "a.com:8080" {
		t.Fatalf("host with port normalized to %q", h)
	}
}

func TestMergeChangesOnlyGivenFields(t *testing.T) {
	t.Parallel()
	base := route(1, "/api")
	base.Name = "api"
	base.Methods = []string{"GET", "POST"}
	base.Host = "a.com"
	base.Priority = 7
	base.RateLimit = 10
	base.Timeout = 5
	base.StripPath = false
	base.Version = 3

	tests := []struct {
		name string
		body string
		edit func(r *Route)
	}{
		{name: "empty patch", body: `{}`, edit: func(r *Route) {}},
		{name: "disable", body: `{"enabled":false}`, edit: func(r *Route) { r.Enabled = false }},
		{name: "zero values are values", body: `{"priority":0,"rate_limit":0,"strip_path":true,"name":""}`, edit: func(r *Route) {
			r.Priority, r.RateLimit, r.StripPath, r.Name = 0, 0, true, ""
		}},
		{name: "path normalized", body: `{"path":"/v2/"}`, edit: func(r *Route) { r.Path = "/v2" }},
		{name: "seed method narrows", body: `{"method":"put"}`, edit: func(r *Route) { r.Methods = []string{"PUT"} }},
		{name: "empty methods widen to any", body: `{"methods":[]}`, edit: func(r *Route) { r.Methods = []string{} }},
		{name: "host cleared", body: `{"host":""}`, edit: func(r *Route) { r.Host = "" }},
		{name: "target and timeout", body: `{"target_url":"https://x","timeout":60}`, edit: func(r *Route) { r.TargetURL, r.Timeout = "https://x", 60 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, err := DecodeRouteInput([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			want := base
			want.Methods = slices.Clone(base.Methods)
			tt.edit(&want)
			got := in.Merge(base)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Merge = %+v\nwant  %+v", got, want)
			}
		})
	}
	// Merge must not share the base's methods array.
	got := RouteInput{}.Merge(base)
	got.Methods[0] = "X"
	if base.Methods[0] != "GET" {
		t.Fatal("Merge aliased the base's methods")
	}
}

func TestRouteJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		methods     []string
		wantMethods string
		wantMethod  string // "" means absent
	}{
		{name: "nil is any", methods: nil, wantMethods: `[]`},
		{name: "empty is any", methods: []string{}, wantMethods: `[]`},
		{name: "one method", methods: []string{"GET"}, wantMethods: `["GET"]`, wantMethod: `"GET"`},
		{name: "two methods", methods: []string{"GET", "POST"}, wantMethods: `["GET","POST"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := withMethods(route(1, "/a"), tt.methods...)
			r.Methods = tt.methods
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(data, &fields); err != nil {
				t.Fatal(err)
			}
			if got := string(fields["methods"]); got != tt.wantMethods {
				t.Errorf("methods = %s, want %s", got, tt.wantMethods)
			}
			if got := string(fields["method"]); got != tt.wantMethod {
				t.Errorf("method = %s, want %s", got, tt.wantMethod)
			}
			for _, f := range []string{"id", "path", "target_url", "strip_path", "priority", "enabled", "rate_limit", "timeout", "version", "created_at", "updated_at"} {
				if _, ok := fields[f]; !ok {
					t.Errorf("field %q missing from %s", f, data)
				}
			}
			// Through a pointer, as admin handlers hold routes, too.
			pdata, _ := json.Marshal(&r)
			if string(pdata) != string(data) {
				t.Errorf("pointer marshals differently:\n%s\n%s", pdata, data)
			}
			var back Route
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if back.ID != r.ID || back.Path != r.Path || len(back.Methods) != len(tt.methods) {
				t.Errorf("round trip = %+v, want %+v", back, r)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
