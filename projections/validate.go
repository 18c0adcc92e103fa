package projections

import (
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Bounds checked by Route.Validate, besides those next to the defaults.
const (
	MinPriority = -1000
	MaxPriority = 1000
	// MaxMethods bounds a route's method set; MaxMethodLength one method.
	MaxMethods      = 32
	MaxMethodLength = 32
	// MaxHostLength is a DNS name (253) plus ":65535".
	MaxHostLength = 253 + 6
)

// FieldError is one invalid field. Field is the JSON name of the field
// ("path", "target_url"), or "" when the error concerns the whole body.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// ValidationError lists every invalid field of a route or a route input,
// at most one message per field. Admin handlers map it to 400.
type ValidationError struct {
	Errors []FieldError `json:"errors"`
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid route: ")
	for i, fe := range e.Errors {
		if i > 0 {
			b.WriteString("; ")
		}
		if fe.Field != "" {
			b.WriteString(fe.Field)
			b.WriteString(": ")
		}
		b.WriteString(fe.Message)
	}
	return b.String()
}

// Field returns the message for one field, "" when that field is valid.
func (e *ValidationError) Field(name string) string {
	for _, fe := range e.Errors {
		if fe.Field == name {
			return fe.Message
		}
	}
	return ""
}

// add records msg for field unless the field already has a message: the
// first problem found is the one worth reporting.
func (e *ValidationError) add(field, msg string) {
	if msg == "" || e.Field(field) != "" {
		return
	}
	e.Errors = append(e.Errors, FieldError{Field: field, Message: msg})
}

// err returns e as an error, or a nil interface when nothing was added.
func (e *ValidationError) err() error {
	if len(e.Errors) == 0 {
		return nil
	}
	return e
}

// Validate checks every field of r and reports all invalid ones in a
// *ValidationError (nil when r is valid). Path, host and methods must be in
// normal form (NormalizePath, lower-case host, upper-case methods), which
// NewRouteFromInput and RouteInput.Merge produce.
func (r *Route) Validate() error {
	var v ValidationError
	r.check(&v)
	return v.err()
}

// check validates r into v and returns what the table needs of a valid
// route, so that a build parses each field once.
func (r *Route) check(v *ValidationError) (segs []pathSegment, target Target) {
	v.add("name", checkName(r.Name))
	segs, msg := parsePath(r.Path)
	v.add("path", msg)
	v.add("methods", checkMethods(r.Methods))
	v.add("host", checkHost(r.Host))
	target, err := parseTarget(r.TargetURL)
	if err != nil {
		v.add("target_url", err.Error())
	}
	if r.Priority < MinPriority || r.Priority > MaxPriority {
		v.add("priority", "must be between "+strconv.Itoa(MinPriority)+" and "+strconv.Itoa(MaxPriority))
	}
	if r.RateLimit < 0 {
		v.add("rate_limit", "must not be negative (0 means unlimited)")
	}
	if r.Timeout < 1 || r.Timeout > MaxTimeoutSeconds {
		v.add("timeout", "must be between 1 and "+strconv.Itoa(MaxTimeoutSeconds)+" seconds")
	}
	return segs, target
}

func checkName(name string) string {
	if len(name) > MaxNameLength {
		return "must be at most " + strconv.Itoa(MaxNameLength) + " bytes"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return "may contain only letters, digits, '.', '_' and '-'"
		}
	}
	return ""
}

// NormalizePath returns p in the form routes are stored and matched in: a
// trailing slash is dropped ("/api/" → "/api"), except for the root "/".
// A path ending in "//" is left alone, so that "/api//" and "//" stay
// invalid rather than being silently repaired (into the catch-all "/", for
// "//"). Everything else is left for Validate to judge. NormalizePath is
// idempotent.
func NormalizePath(p string) string {
	if len(p) > 1 && p[len(p)-1] == '/' && p[len(p)-2] != '/' {
		return p[:len(p)-1]
	}
	return p
}

// pathSegment is one segment of a route path: a literal, or a parameter
// that matches any one non-empty segment.
type pathSegment struct {
	literal string // the segment, or the parameter's name when param
	param   bool
}

// parsePath validates a normalized route path and splits it into segments
// (none for the root "/"). It returns a message for the first problem.
//
// Route paths are compared with request paths the server has already
// percent-decoded and cleaned of "." and ".." segments and empty segments,
// so a route path must be written in that same decoded, clean form;
// anything else could never match, or would match something other than
// what it appears to say.
func parsePath(p string) ([]pathSegment, string) {
	switch {
	case p == "":
		return nil, "is required"
	case len(p) > MaxPathLength:
		return nil, "must be at most " + strconv.Itoa(MaxPathLength) + " bytes"
	case p[0] != '/':
		return nil, "must start with /"
	case !utf8.ValidString(p):
		return nil, "must be valid UTF-8"
	case p == "/":
		return nil, ""
	case p[len(p)-1] == '/':
		return nil, "must not end with /"
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '?' || c == '#':
			return nil, "must not contain a query (?) or fragment (#)"
		case c == '%':
			return nil, "must be written decoded: percent-escapes (%) are not allowed"
		case c == '\\':
			return nil, "must not contain a backslash"
		case c <= ' ' || c == 0x7f:
			return nil, "must not contain spaces or control characters"
		}
	}
	segs := make([]pathSegment, 0, strings.Count(p, "/"))
	params := 0
	for rest := p[1:]; ; {
		seg, tail, more := strings.Cut(rest, "/")
		switch {
		case seg == "":
			return nil, "must not contain empty segments (//)"
		case seg == "." || seg == "..":
			return nil, "must not contain . or .. segments"
		case seg[0] == '{':
			name, ok := strings.CutSuffix(seg[1:], "}")
			if !ok || !isParamName(name) {
				return nil, "a parameter must be a whole segment {name}, name matching [A-Za-z_][A-Za-z0-9_]*"
			}
			for _, s := range segs {
				if s.param && s.literal == name {
					return nil, "parameter {" + name + "} appears twice"
				}
			}
			if params++; params > MaxPathParams {
				return nil, "must have at most " + strconv.Itoa(MaxPathParams) + " parameters"
			}
			segs = append(segs, pathSegment{literal: name, param: true})
		case strings.ContainsAny(seg, "{}"):
			return nil, "a parameter must be a whole segment {name}; braces are not allowed elsewhere"
		default:
			segs = append(segs, pathSegment{literal: seg})
		}
		if !more {
			return segs, ""
		}
		rest = tail
	}
}

func isParamName(s string) bool {
	if s == "" || isDigit(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) && s[i] != '_' {
			return false
		}
	}
	return true
}

// checkHost validates a route host: "" (any host), a lower-case DNS name
// or IP address with an optional port ("api.example.com",
// "api.example.com:8443", "10.0.0.1", "[2001:db8::1]:8080"), or a suffix
// wildcard without a port ("*.example.com", which matches
// "a.example.com" and "a.b.example.com" but not "example.com").
func checkHost(h string) string {
	if h == "" {
		return ""
	}
	if len(h) > MaxHostLength {
		return "must be at most " + strconv.Itoa(MaxHostLength) + " bytes"
	}
	if suffix, ok := strings.CutPrefix(h, "*."); ok {
		if msg := checkHostname(suffix); msg != "" {
			return "a wildcard must be *. followed by a host name without a port: " + msg
		}
		return ""
	}
	var port string
	if h[0] == '[' {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "an IPv6 address must be written in brackets: [2001:db8::1]"
		}
		addr, err := netip.ParseAddr(h[1:end])
		if err != nil || !addr.Is6() || addr.Zone() != "" || addr.String() != h[1:end] {
			return "must be a canonical IPv6 address without a zone, in brackets"
		}
		rest := h[end+1:]
		if rest == "" {
			return ""
		}
		var ok bool
		if port, ok = strings.CutPrefix(rest, ":"); !ok {
			return "must be a host name with an optional :port"
		}
	} else {
		i := strings.LastIndexByte(h, ':')
		if i < 0 {
			return checkHostname(h)
		}
		if msg := checkHostname(h[:i]); msg != "" {
			return msg
		}
		port = h[i+1:]
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || port[0] == '0' || port[0] == '+' || port[0] == '-' {
		return "port must be a number between 1 and 65535 without leading zeros"
	}
	return ""
}

// checkHostname validates a lower-case DNS name of RFC 1123 labels.
func checkHostname(name string) string {
	if name == "" || len(name) > 253 {
		return "must be a host name of 1 to 253 bytes"
	}
	for label, rest, more := "", name, true; more; {
		label, rest, more = strings.Cut(rest, ".")
		if label == "" || len(label) > 63 {
			return "each dot-separated label must have 1 to 63 characters"
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "a label must not start or end with '-'"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if 'A' <= c && c <= 'Z' {
				return "must be lower case"
			}
			if !isLowerAlnum(c) && c != '-' {
				return "labels may contain only a-z, 0-9 and '-'"
			}
		}
	}
	return ""
}

// checkMethods validates a normalized method set: RFC 9110 tokens in
// upper case, as NewRouteFromInput writes them.
func checkMethods(methods []string) string {
	if len(methods) > MaxMethods {
		return "must list at most " + strconv.Itoa(MaxMethods) + " methods"
	}
	for _, m := range methods {
		if msg := checkMethod(m); msg != "" {
			return msg
		}
	}
	return ""
}

func checkMethod(m string) string {
	switch {
	case m == "":
		return "a method must not be empty (an empty list means any method)"
	case m == "*":
		return `"*" is not a method: use an empty list for any method`
	case len(m) > MaxMethodLength:
		return "a method must be at most " + strconv.Itoa(MaxMethodLength) + " bytes"
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'a' <= c && c <= 'z' {
			return "methods must be upper case"
		}
		if !isTokenChar(c) {
			return "a method must be an RFC 9110 token (letters, digits and !#$%&'*+-.^_`|~)"
		}
	}
	return ""
}

// isTokenChar reports whether c is a tchar of RFC 9110, section 5.6.2.
func isTokenChar(c byte) bool {
	if isAlnum(c) {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isDigit(c byte) bool      { return '0' <= c && c <= '9' }
func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || isDigit(c) }
func isAlnum(c byte) bool      { return isLowerAlnum(c) || 'A' <= c && c <= 'Z' }
