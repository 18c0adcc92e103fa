package projections

import (
	"errors"
	"strings"
	"testing"
)

func TestRouteValidate(t *testing.T) {
	t.Parallel()
	many := func(n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString("/{p")
			b.WriteString(strings.Repeat("x", i))
			b.WriteString("}")
		}
		return b.String()
	}
	tests := []struct {
		name      string
		edit      func(r *Route)
		wantField string // "" for valid
		wantMsg   string // substring of the message
	}{
		{name: "valid", edit: func(r *Route) {}},
		{name: "root path", edit: func(r *Route) { r.Path = "/" }},
		{name: "params", edit: func(r *Route) { r.Path = "/u/{id}/o/{order_id}/{_x1}" }},
		{name: "16 params", edit: func(r *Route) { r.Path = many(16) }},
		{name: "utf-8 and sub-delims", edit: func(r *Route) { r.Path = "/café/a:b@c;d=e,f+g!$&'()*~" }},
		{name: "path required", edit: func(r *Route) { r.Path = "" }, wantField: "path", wantMsg: "required"},
		{name: "relative path", edit: func(r *Route) { r.Path = "api" }, wantField: "path", wantMsg: "start with /"},
		{name: "double slash", edit: func(r *Route) { r.Path = "/a//b" }, wantField: "path", wantMsg: "//"},
		{name: "only slashes", edit: func(r *Route) { r.Path = "//" }, wantField: "path"},
		{name: "trailing slash", edit: func(r *Route) { r.Path = "/a/" }, wantField: "path", wantMsg: "end with /"},
		{name: "dot segment", edit: func(r *Route) { r.Path = "/a/./b" }, wantField: "path", wantMsg: ". or .."},
		{name: "dot dot segment", edit: func(r *Route) { r.Path = "/.." }, wantField: "path", wantMsg: ". or .."},
		{name: "dots inside a segment are fine", edit: func(r *Route) { r.Path = "/a..b/.well-known" }},
		{name: "percent escape", edit: func(r *Route) { r.Path = "/%2e%2e" }, wantField: "path", wantMsg: "decoded"},
		{name: "query", edit: func(r *Route) { r.Path = "/a?b" }, wantField: "path", wantMsg: "query"},
		{name: "fragment", edit: func(r *Route) { r.Path = "/a#b" }, wantField: "path", wantMsg: "fragment"},
		{name: "space", edit: func(r *Route) { r.Path = "/a b" }, wantField: "path", wantMsg: "spaces"},
		{name: "NUL", edit: func(r *Route) { r.Path = "/a\x00" }, wantField: "path", wantMsg: "control"},
		{name: "DEL", edit: func(r *Route) { r.Path = "/a\x7f" }, wantField: "path", wantMsg: "control"},
		{name: "backslash", edit: func(r *Route) { r.Path = "/a\\..\\b" }, wantField: "path", wantMsg: "backslash"},
		{name: "invalid utf-8", edit: func(r *Route) { r.Path = "/\xff" }, wantField: "path", wantMsg: "UTF-8"},
		{name: "too long", edit: func(r *Route) { r.Path = "/" + strings.Repeat("a", MaxPathLength) }, wantField: "path", wantMsg: "at most"},
		{name: "open brace", edit: func(r *Route) { r.Path = "/{" }, wantField: "path", wantMsg: "whole segment"},
		{name: "two params in a segment", edit: func(r *Route) { r.Path = "/{a}{b}" }, wantField: "path", wantMsg: "whole segment"},
		{name: "param inside a segment", edit: func(r *Route) { r.Path = "/x{a}" }, wantField: "path", wantMsg: "braces"},
		{name: "empty param", edit: func(r *Route) { r.Path = "/{}" }, wantField: "path", wantMsg: "name"},
		{name: "param name starts with digit", edit: func(r *Route) { r.Path = "/{1a}" }, wantField: "path"},
		{name: "param name with dash", edit: func(r *Route) { r.Path = "/{a-b}" }, wantField: "path"},
		{name: "duplicate param", edit: func(r *Route) { r.Path = "/{a}/x/{a}" }, wantField: "path", wantMsg: "twice"},
		{name: "17 params", edit: func(r *Route) { r.Path = many(17) }, wantField: "path", wantMsg: "at most 16"},
		{name: "40 params", edit: func(r *Route) { r.Path = many(40) }, wantField: "path", wantMsg: "at most 16"},
		{name: "host", edit: func(r *Route) { r.Host = "api.example.com" }},
		{name: "host with port", edit: func(r *Route) { r.Host = "api.example.com:8443" }},
		{name: "ipv4 host", edit: func(r *Route) { r.Host = "10.0.0.1:80" }},
		{name: "ipv6 host", edit: func(r *Route) { r.Host = "[2001:db8::1]:8080" }},
		{name: "wildcard", edit: func(r *Route) { r.Host = "*.example.com" }},
		{name: "single-label wildcard", edit: func(r *Route) { r.Host = "*.localhost" }},
		{name: "upper-case host", edit: func(r *Route) { r.Host = "API.example.com" }, wantField: "host", wantMsg: "lower case"},
		{name: "host with underscore", edit: func(r *Route) { r.Host = "a_b.com" }, wantField: "host"},
		{name: "label with leading dash", edit: func(r *Route) { r.Host = "-a.com" }, wantField: "host"},
		{name: "empty label", edit: func(r *Route) { r.Host = "a..com" }, wantField: "host"},
		{name: "trailing dot", edit: func(r *Route) { r.Host = "a.com." }, wantField: "host"},
		{name: "label too long", edit: func(r *Route) { r.Host = strings.Repeat("a", 64) + ".com" }, wantField: "host"},
		{name: "bare wildcard", edit: func(r *Route) { r.Host = "*" }, wantField: "host"},
		{name: "wildcard without label", edit: func(r *Route) { r.Host = "*." }, wantField: "host", wantMsg: "wildcard"},
		{name: "wildcard in the middle", edit: func(r *Route) { r.Host = "a.*.com" }, wantField: "host"},
		{name: "wildcard with port", edit: func(r *Route) { r.Host = "*.example.com:80" }, wantField: "host", wantMsg: "wildcard"},
		{name: "port zero", edit: func(r *Route) { r.Host = "a.com:0" }, wantField: "host", wantMsg: "port"},
		{name: "port too big", edit: func(r *Route) { r.Host = "a.com:65536" }, wantField: "host", wantMsg: "port"},
		{name: "port leading zero", edit: func(r *Route) { r.Host = "a.com:080" }, wantField: "host", wantMsg: "port"},
		{name: "empty port", edit: func(r *Route) { r.Host = "a.com:" }, wantField: "host", wantMsg: "port"},
		{name: "unbracketed ipv6", edit: func(r *Route) { r.Host = "::1" }, wantField: "host"},
		{name: "non-canonical ipv6", edit: func(r *Route) { r.Host = "[2001:DB8:0::1]" }, wantField: "host"},
		{name: "ipv4 in brackets", edit: func(r *Route) { r.Host = "[10.0.0.1]" }, wantField: "host"},
		{name: "host with path", edit: func(r *Route) { r.Host = "a.com/x" }, wantField: "host"},
		{name: "custom method", edit: func(r *Route) { r.Methods = []string{"GET", "PURGE"} }},
		{name: "lower-case method", edit: func(r *Route) { r.Methods = []string{"get"} }, wantField: "methods", wantMsg: "upper case"},
		{name: "empty method", edit: func(r *Route) { r.Methods = []string{""} }, wantField: "methods", wantMsg: "empty"},
		{name: "star method", edit: func(r *Route) { r.Methods = []string{"*"} }, wantField: "methods", wantMsg: "any method"},
		{name: "method with space", edit: func(r *Route) { r.Methods = []string{"GET POST"} }, wantField: "methods", wantMsg: "token"},
		{name: "method too long", edit: func(r *Route) { r.Methods = []string{strings.Repeat("A", 33)} }, wantField: "methods"},
		{name: "no target", edit: func(r *Route) { r.TargetURL = "" }, wantField: "target_url"},
		{name: "ftp target", edit: func(r *Route) { r.TargetURL = "ftp://a" }, wantField: "target_url"},
		{name: "target with user", edit: func(r *Route) { r.TargetURL = "http://u:p@a" }, wantField: "target_url"},
		{name: "timeout zero", edit: func(r *Route) { r.Timeout = 0 }, wantField: "timeout"},
		{name: "timeout max", edit: func(r *Route) { r.Timeout = MaxTimeoutSeconds }},
		{name: "timeout too big", edit: func(r *Route) { r.Timeout = MaxTimeoutSeconds + 1 }, wantField: "timeout"},
		{name: "negative rate limit", edit: func(r *Route) { r.RateLimit = -1 }, wantField: "rate_limit"},
		{name: "priority bounds", edit: func(r *Route) { r.Priority = -1000 }},
		{name: "priority too high", edit: func(r *Route) { r.Priority = 1001 }, wantField: "priority"},
		{name: "priority too low", edit: func(r *Route) { r.Priority = -1001 }, wantField: "priority"},
		{name: "name", edit: func(r *Route) { r.Name = "users-v1.2_beta" }},
		{name: "name with space", edit: func(r *Route) { r.Name = "a b" }, wantField: "name"},
		{name: "name too long", edit: func(r *Route) { r.Name = strings.Repeat("n", MaxNameLength+1) }, wantField: "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := route(1, "/api/v1")
			tt.edit(&r)
			err := r.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want a *ValidationError", err)
			}
			msg := ve.Field(tt.wantField)
			if msg == "" {
				t.Fatalf("Validate() = %v, want an error on %q", err, tt.wantField)
			}
			if !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("%s: message %q does not mention %q", tt.wantField, msg, tt.wantMsg)
			}
			if len(ve.Errors) != 1 {
				t.Fatalf("Validate() = %v, want only %q to fail", err, tt.wantField)
			}
		})
	}
}

func TestRouteValidateReportsEveryField(t *testing.T) {
	t.Parallel()
	r := Route{Path: "x", Host: "A", TargetURL: "nope", Timeout: 0, RateLimit: -1, Priority: 5000, Name: "?", Methods: []string{"get"}}
	var ve *ValidationError
	if !errors.As(r.Validate(), &ve) {
		t.Fatal("Validate() accepted an invalid route")
	}
	want := []string{"name", "path", "methods", "host", "target_url", "priority", "rate_limit", "timeout"}
	if len(ve.Errors) != len(want) {
		t.Fatalf("got %d field errors, want %d: %v", len(ve.Errors), len(want), ve)
	}
	for i, f := range want {
		if ve.Errors[i].Field != f {
			t.Errorf("error %d is on %q, want %q", i, ve.Errors[i].Field, f)
		}
	}
	if s := ve.Error(); !strings.HasPrefix(s, "invalid route: name: ") || !strings.Contains(s, "; timeout: ") {
		t.Errorf("Error() = %q", s)
	}
}

func TestNormalizePath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{name: "root stays", in: "/", want: "/"},
		{name: "trailing slash dropped", in: "/api/", want: "/api"},
		{name: "double trailing slash kept", in: "/api//", want: "/api//"},
		{name: "no slash", in: "/api", want: "/api"},
		{name: "empty", in: "", want: ""},
		{name: "double root kept", in: "//", want: "//"},
		{name: "relative", in: "api/", want: "api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := NormalizePath(tt.in); got != tt.want {
				t.Fatalf("NormalizePath(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
