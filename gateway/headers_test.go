package gateway

import (
	"bytes"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

func TestAppendUpstreamPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		base string
		rest string
		want string
	}{
		{name: "base, empty rest", base: "/v1", rest: "", want: "/v1"},
		{name: "no base, empty rest", base: "", rest: "", want: "/"},
		{name: "base, slash", base: "/v1", rest: "/", want: "/v1/"},
		{name: "no base, slash", base: "", rest: "/", want: "/"},
		{name: "base, rest", base: "/v1", rest: "/users/7", want: "/v1/users/7"},
		{name: "base, rest without slash", base: "/v1", rest: "users", want: "/v1/users"},
		{name: "base, rest with many slashes", base: "/v1", rest: "///users", want: "/v1/users"},
		{name: "trailing slash kept", base: "/v1", rest: "/users/", want: "/v1/users/"},
		{name: "escaped base kept", base: "/a%20b", rest: "/c", want: "/a%20b/c"},
		{name: "space escaped", base: "", rest: "/a b", want: "/a%20b"},
		{name: "percent escaped", base: "", rest: "/100%", want: "/100%25"},
		{name: "query and fragment characters escaped", base: "", rest: "/a?b#c", want: "/a%3Fb%23c"},
		{name: "sub-delims kept", base: "", rest: "/a;b=c,d@e:f!$&'()*+", want: "/a;b=c,d@e:f!$&'()*+"},
		{name: "non-ASCII escaped", base: "", rest: "/é", want: "/%C3%A9"},
		{name: "control escaped", base: "", rest: "/a\r\nb", want: "/a%0D%0Ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := string(appendUpstreamPath(nil, tt.base, []byte(tt.rest))); got != tt.want {
				t.Errorf("appendUpstreamPath(%q, %q) = %q, want %q", tt.base, tt.rest, got, tt.want)
			}
		})
	}
}

func TestAppendQuery(t *testing.T) {
	t.Parallel()
	tests := []struct{ target, request, want string }{
		{"", "", ""},
		{"a=1", "", "a=1"},
		{"", "b=2", "b=2"},
		{"a=1", "b=2&c", "a=1&b=2&c"},
	}
	for _, tt := range tests {
		if got := string(appendQuery(nil, tt.target, []byte(tt.request))); got != tt.want {
			t.Errorf("appendQuery(%q, %q) = %q, want %q", tt.target, tt.request, got, tt.want)
		}
	}
}

func TestAppendMatchHost(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"api.example.com", "api.example.com"},
		{"API.Example.COM:8080", "api.example.com"},
		{"example.com.", "example.com"},
		{"[::1]:8080", "[::1]"},
		{"[::1]", "[::1]"},
		{"::1", "::1"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := string(appendMatchHost(nil, []byte(tt.in))); got != tt.want {
			t.Errorf("appendMatchHost(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestClientFromChain(t *testing.T) {
	t.Parallel()
	s := &Server{trusted: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("fd00::/8"),
	}}
	peer := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		name  string
		chain string
		want  string
	}{
		{name: "one hop", chain: "1.2.3.4", want: "1.2.3.4"},
		{name: "past trusted hops", chain: "1.2.3.4, 10.0.0.2, 10.0.0.1", want: "1.2.3.4"},
		{name: "spoofed left part ignored", chain: "6.6.6.6, 1.2.3.4, 10.0.0.1", want: "1.2.3.4"},
		{name: "all trusted", chain: "10.0.0.3, 10.0.0.2", want: "10.0.0.3"},
		{name: "garbage nearest", chain: "1.2.3.4, bogus", want: "127.0.0.1"},
		{name: "garbage after trusted", chain: "bogus, 10.0.0.1", want: "10.0.0.1"},
		{name: "port not accepted", chain: "1.2.3.4:80", want: "127.0.0.1"},
		{name: "mapped IPv4", chain: "::ffff:1.2.3.4", want: "1.2.3.4"},
		{name: "IPv6", chain: "2001:db8::1, fd00::1", want: "2001:db8::1"},
		{name: "empty entries", chain: " , 1.2.3.4 ,", want: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := s.clientFromChain(peer, []byte(tt.chain)).String(); got != tt.want {
				t.Errorf("clientFromChain(%q) = %s, want %s", tt.chain, got, tt.want)
			}
		})
	}
}

func TestClassifyHeader(t *testing.T) {
	t.Parallel()
	for kind := kindConnection; kind <= kindExpect; kind++ {
		for _, name := range []string{kindNames[kind], strings.ToLower(kindNames[kind]), strings.ToUpper(kindNames[kind])} {
			if got := classifyHeader([]byte(name)); got != kind {
				t.Errorf("classifyHeader(%q) = %d, want %d", name, got, kind)
			}
		}
	}
	for _, name := range []string{"Content-Length", "Host", "X-Forwarded", "Tea", ""} {
		if got := classifyHeader([]byte(name)); got != kindOther {
			t.Errorf("classifyHeader(%q) = %d, want other", name, got)
		}
	}
}

func TestValidRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id   string
		want bool
	}{
		{"abc", true},
		{"A-b_c.9", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{"a b", false},
		{"a\nb", false},
		{"a/b", false},
		{"<x>", false},
		{"é", false},
	}
	for _, tt := range tests {
		if got := validRequestID([]byte(tt.id)); got != tt.want {
			t.Errorf("validRequestID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
	for range 100 {
		if id := appendNewRequestID(nil); !validRequestID(id) || len(id) != 32 {
			t.Fatalf("generated request ID %q is not valid", id)
		}
	}
}

func TestValidTraceparent(t *testing.T) {
	t.Parallel()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{name: "spec example", in: tp, want: true},
		{name: "not sampled", in: tp[:53] + "00", want: true},
		{name: "version 00 with extra", in: tp + "-x", want: false},
		{name: "future version with extra", in: "01" + tp[2:] + "-x", want: true},
		{name: "future version without dash", in: "01" + tp[2:] + "x", want: false},
		{name: "version ff", in: "ff" + tp[2:], want: false},
		{name: "upper case", in: strings.ToUpper(tp), want: false},
		{name: "zero trace id", in: "00-" + strings.Repeat("0", 32) + tp[35:], want: false},
		{name: "zero parent id", in: tp[:36] + strings.Repeat("0", 16) + tp[52:], want: false},
		{name: "short", in: tp[:54], want: false},
		{name: "bad separator", in: strings.Replace(tp, "-", "_", 1), want: false},
		{name: "empty", in: "", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := validTraceparent([]byte(tt.in)); got != tt.want {
				t.Errorf("validTraceparent(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	for range 100 {
		if tp := appendNewTraceparent(nil); !validTraceparent(tp) {
			t.Fatalf("generated traceparent %q is not valid", tp)
		}
	}
}

// FuzzJoinPath checks the upstream path: one leading slash, no empty
// segment at the join, only characters a path may carry, and decoding the
// part after the base gives back the rest.
func FuzzJoinPath(f *testing.F) {
	for _, s := range [][2]string{{"/v1", ""}, {"", ""}, {"/v1", "/"}, {"/v1", "//a//b"},
		{"", "/a b%?#"}, {"/a%20b", "/é\x00"}, {"/v1", "/../x"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, base, rest string) {
		// The target's base is an escaped path without a trailing slash,
		// as projections.Target guarantees.
		u := url.URL{Path: "/" + base}
		base = strings.TrimSuffix(u.EscapedPath(), "/")
		got := appendUpstreamPath(nil, base, []byte(rest))
		if len(got) == 0 || got[0] != '/' {
			t.Fatalf("path %q does not start with /", got)
		}
		if !bytes.HasPrefix(got, []byte(base)) {
			t.Fatalf("path %q lost its base %q", got, base)
		}
		tail := got[len(base):]
		if bytes.HasPrefix(tail, []byte("//")) {
			t.Fatalf("path %q has two slashes at the join", got)
		}
		for _, c := range tail {
			if !pathSafe[c] && c != '%' {
				t.Fatalf("path %q carries %q unescaped", got, c)
			}
		}
		decoded, err := url.PathUnescape(string(tail))
		if err != nil {
			t.Fatalf("path %q does not decode: %v", got, err)
		}
		if want := "/" + strings.TrimLeft(rest, "/"); decoded != want && !(rest == "" && decoded == "") {
			t.Fatalf("rest %q came back as %q", rest, decoded)
		}
	})
}

// FuzzRequestID checks that an accepted X-Request-ID is only ever made of
// the safe characters, within the length bound.
func FuzzRequestID(f *testing.F) {
	for _, s := range []string{"abc", "", "a b", strings.Repeat("z", 129), "\r\n", "é"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, id []byte) {
		if !validRequestID(id) {
			return
		}
		if len(id) > maxRequestIDLen {
			t.Fatalf("accepted %d bytes", len(id))
		}
		for _, c := range id {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", rune(c)) {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}

// FuzzTraceparent checks the parser never accepts what W3C forbids.
func FuzzTraceparent(f *testing.F) {
	f.Add([]byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
	f.Add([]byte("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
	f.Add([]byte("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-zz"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, tp []byte) {
		if !validTraceparent(tp) {
			return
		}
		if len(tp) < 55 || string(tp[:2]) == "ff" || !isLowerHex(tp[:55:55][3:35]) ||
			allZero(tp[3:35]) || allZero(tp[36:52]) {
			t.Fatalf("accepted %q", tp)
		}
		if string(tp[:2]) == "00" && len(tp) != 55 {
			t.Fatalf("accepted version 00 of length %d", len(tp))
		}
	})
}
