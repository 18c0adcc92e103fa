package projections

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
)

// RouteInput is a route as an admin client sends it (POST, PUT, PATCH
// /api/routes). A nil field was omitted; JSON null counts as omitted.
//
// Method is the seed's single-method field: "" or "*" mean any method,
// anything else the set of that one method. When both Method and Methods
// are given, Method must be the only element of Methods (or "" / "*" with
// an empty Methods).
type RouteInput struct {
	Name      *string   `json:"name"`
	Path      *string   `json:"path"`
	Methods   *[]string `json:"methods"`
	Method    *string   `json:"method"`
	Host      *string   `json:"host"`
	TargetURL *string   `json:"target_url"`
	StripPath *bool     `json:"strip_path"`
	Priority  *int      `json:"priority"`
	Enabled   *bool     `json:"enabled"`
	RateLimit *int      `json:"rate_limit"`
	Timeout   *int      `json:"timeout"`
}

// routeInputKinds names the JSON kind of each RouteInput field, for type
// error messages; its keys are the only field names DecodeRouteInput
// accepts.
var routeInputKinds = map[string]string{
	"name":       "a string",
	"path":       "a string",
	"methods":    "an array of strings",
	"method":     "a string",
	"host":       "a string",
	"target_url": "a string",
	"strip_path": "a boolean",
	"priority":   "an integer",
	"enabled":    "a boolean",
	"rate_limit": "an integer",
	"timeout":    "an integer",
}

// DecodeRouteInput decodes one JSON object into a RouteInput. Every error
// is a *ValidationError: a field of the wrong type names the field
// ({"timeout":"x"} → "timeout"); an unknown field, a field given twice or a
// field name in the wrong case is named too; malformed JSON, a body that is
// not one object, or trailing data reports field "". It also runs
// RouteInput.Validate. It does not apply defaults nor validate values:
// that is NewRouteFromInput / Merge, then Route.Validate.
func DecodeRouteInput(data []byte) (RouteInput, error) {
	var in RouteInput
	if err := checkInputKeys(data); err != nil {
		return RouteInput{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return RouteInput{}, decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return RouteInput{}, bodyError("unexpected data after the JSON object")
	}
	if err := in.Validate(); err != nil {
		return RouteInput{}, err
	}
	return in, nil
}

// checkInputKeys requires a single JSON object whose keys are known field
// names, exactly as spelled, each at most once. encoding/json alone would
// accept "PATH" for "path" and let a repeated key silently win.
func checkInputKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return bodyError("the body must be a JSON object")
		}
		return bodyError("malformed JSON: " + err.Error())
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return bodyError("the body must be a JSON object")
	}
	seen := make(map[string]bool, len(routeInputKinds))
	var v ValidationError
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bodyError("malformed JSON: " + err.Error())
		}
		key, _ := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return bodyError("malformed JSON: " + err.Error())
		}
		switch {
		case routeInputKinds[key] == "":
			v.add(key, "unknown field")
		case seen[key]:
			v.add(key, "given more than once")
		}
		seen[key] = true
	}
	return v.err()
}

func bodyError(msg string) error {
	return &ValidationError{Errors: []FieldError{{Message: msg}}}
}

func decodeError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		// Field is a dotted path ("methods.0" in some versions); the
		// top-level name is the one a client knows.
		field, _, _ := strings.Cut(te.Field, ".")
		if kind := routeInputKinds[field]; kind != "" {
			return &ValidationError{Errors: []FieldError{{Field: field, Message: "must be " + kind}}}
		}
		return bodyError("the body must be a JSON object")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return &ValidationError{Errors: []FieldError{{Field: strings.Trim(name, `"`), Message: "unknown field"}}}
	}
	return bodyError("malformed JSON: " + err.Error())
}

// Validate checks what can be judged of the input alone: the seed's
// "method" is a token (or "", "*") and agrees with "methods" when both are
// given. Values are judged by Route.Validate after defaults are applied.
func (in RouteInput) Validate() error {
	if in.Method == nil {
		return nil
	}
	var v ValidationError
	m := asciiUpper(*in.Method)
	if m != "" && m != "*" {
		v.add("method", checkMethod(m))
	}
	if in.Methods != nil && v.err() == nil {
		given := normalizeMethods(*in.Methods)
		want := methodsFromSingle(*in.Method)
		if !slices.Equal(given, want) {
			v.add("method", `must be the only element of "methods" when both are given`)
		}
	}
	return v.err()
}

// NewRouteFromInput returns the route a POST or PUT describes: given fields
// normalized (path by NormalizePath, host lower case without a trailing
// dot, methods upper case, sorted and deduplicated), omitted fields at
// their defaults (strip_path true, enabled true, timeout
// DefaultTimeoutSeconds, priority 0, rate_limit 0, methods empty = any).
// ID, Version and timestamps are left zero for the caller to set. Call
// Route.Validate on the result.
func NewRouteFromInput(in RouteInput) Route {
	return in.Merge(Route{
		Methods:   []string{},
		StripPath: true,
		Enabled:   true,
		Timeout:   DefaultTimeoutSeconds,
	})
}

// Merge returns base with the given fields of in replaced, normalized as
// NewRouteFromInput does (PATCH). Methods wins over Method when both are
// given; RouteInput.Validate rejects inputs where they disagree. Call
// Route.Validate on the result.
func (in RouteInput) Merge(base Route) Route {
	r := base
	r.Methods = slices.Clone(base.Methods)
	if in.Name != nil {
		r.Name = *in.Name
	}
	if in.Path != nil {
		r.Path = NormalizePath(*in.Path)
	}
	switch {
	case in.Methods != nil:
		r.Methods = normalizeMethods(*in.Methods)
	case in.Method != nil:
		r.Methods = methodsFromSingle(*in.Method)
	}
	if r.Methods == nil {
		r.Methods = []string{}
	}
	if in.Host != nil {
		r.Host = normalizeHost(*in.Host)
	}
	if in.TargetURL != nil {
		r.TargetURL = *in.TargetURL
	}
	if in.StripPath != nil {
		r.StripPath = *in.StripPath
	}
	if in.Priority != nil {
		r.Priority = *in.Priority
	}
	if in.Enabled != nil {
		r.Enabled = *in.Enabled
	}
	if in.RateLimit != nil {
		r.RateLimit = *in.RateLimit
	}
	if in.Timeout != nil {
		r.Timeout = *in.Timeout
	}
	return r
}

// normalizeMethods upper-cases, sorts and deduplicates; never nil.
func normalizeMethods(in []string) []string {
	out := make([]string, len(in))
	for i, m := range in {
		out[i] = asciiUpper(m)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func methodsFromSingle(m string) []string {
	m = asciiUpper(m)
	if m == "" || m == "*" {
		return []string{}
	}
	return []string{m}
}

// normalizeHost lower-cases a host and drops the trailing dot of a fully
// qualified name ("API.Example.com." → "api.example.com"), the forms in
// which the matcher compares request hosts.
func normalizeHost(h string) string {
	h = asciiLower(h)
	if name, port, ok := strings.Cut(h, ":"); ok && !strings.HasPrefix(h, "[") {
		return strings.TrimSuffix(name, ".") + ":" + port
	}
	return strings.TrimSuffix(h, ".")
}

// asciiUpper and asciiLower change ASCII letters only: methods and host
// names are ASCII, and strings.ToUpper would map some non-ASCII letters
// to ASCII ones ("ſ" → "S"), turning an invalid name into a valid one.
func asciiUpper(s string) string { return asciiMap(s, 'a', 'z', 'A'-'a') }
func asciiLower(s string) string { return asciiMap(s, 'A', 'Z', 'a'-'A') }

func asciiMap(s string, lo, hi byte, delta int) string {
	i := 0
	for i < len(s) && (s[i] < lo || s[i] > hi) {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if lo <= b[i] && b[i] <= hi {
			b[i] = byte(int(b[i]) + delta)
		}
	}
	return string(b)
}
