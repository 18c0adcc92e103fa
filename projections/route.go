package projections

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Route event types and the stream naming scheme.
const (
	EventRouteCreated = "route.created"
	EventRouteUpdated = "route.updated"
	EventRouteDeleted = "route.deleted"

	routeStreamPrefix = "route-"
)

// RouteStream is the event stream of one route.
func RouteStream(id uuid.UUID) string { return routeStreamPrefix + id.String() }

// Defaults for fields a client omits, and bounds checked by Validate.
// Omitted fields otherwise default to: strip_path true, enabled true,
// priority 0, rate_limit 0 (unlimited), methods empty (any), host empty
// (any), name empty.
const (
	DefaultTimeoutSeconds = 30
	MaxTimeoutSeconds     = 3600
	// MaxPathParams stays well under the 30 parameters that panic fiber's
	// own router (GHSA-mrq8); Isekai matches routes itself, but a route
	// that cannot be served by common routers is a mistake anyway.
	MaxPathParams = 16
	MaxPathLength = 1024
	MaxNameLength = 128
)

// Route is one routing rule as stored in route.created / route.updated
// events (the full spec after the change) and served by the table.
type Route struct {
	ID   uuid.UUID `json:"id"`
	Name string    `json:"name,omitempty"`
	// Path is matched segment-aware as a prefix: "/api" matches "/api" and
	// "/api/x", not "/apix". "{name}" segments match any one segment.
	Path string `json:"path"`
	// Methods the route accepts, upper case, sorted, without duplicates;
	// empty means any method. JSON always carries the array ([] for any)
	// and, for the seed's clients, "method" when there is exactly one.
	Methods []string `json:"methods"`
	// Host, when set, is an exact host ("api.example.com") or a suffix
	// wildcard ("*.example.com"); empty matches any host.
	Host string `json:"host,omitempty"`
	// TargetURL is the upstream: an absolute http or https URL whose path is
	// the base the unmatched rest of the request path is appended to.
	TargetURL string `json:"target_url"`
	// StripPath drops the matched path prefix before forwarding (default
	// true); false forwards the whole request path after the target's path.
	StripPath bool `json:"strip_path"`
	// Priority breaks ties between equally specific routes; higher wins.
	Priority int  `json:"priority"`
	Enabled  bool `json:"enabled"`
	// RateLimit is requests per second per client; 0 means unlimited.
	RateLimit int `json:"rate_limit"`
	// Timeout is the upstream timeout in seconds (default 30).
	Timeout   int       `json:"timeout"`
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// target is TargetURL compiled by the table build; see Target.
	target Target
}

// routeJSON has Route's fields without its methods, so that MarshalJSON
// can add the seed's "method" without recursing.
type routeJSON Route

// MarshalJSON writes the route with "methods" always an array and, when
// the route has exactly one method, the seed's "method" field too.
// Unmarshalling needs no counterpart: "method" is derived, and ignored.
func (r Route) MarshalJSON() ([]byte, error) {
	out := struct {
		routeJSON
		Methods []string `json:"methods"`
		Method  string   `json:"method,omitempty"`
	}{routeJSON: routeJSON(r), Methods: r.Methods}
	if out.Methods == nil {
		out.Methods = []string{}
	}
	if len(r.Methods) == 1 {
		out.Method = r.Methods[0]
	}
	return json.Marshal(out)
}

// Target is a route's upstream, parsed once when the table is built.
type Target struct {
	Scheme string // "http" or "https"
	// Addr is host:port, with the scheme's default port filled in.
	Addr string
	// Host is the target's host (and port, when given) as written, for the
	// upstream Host header when the route asks for it.
	Host string
	// BasePath is the target URL's path without a trailing slash ("" for /).
	BasePath string
	// Query is the target URL's raw query, prepended to the request's.
	Query string
}

// Target returns the compiled upstream of a route taken from a table.
func (r *Route) Target() Target { return r.target }

// Compile parses TargetURL into the route's Target. Routes in a table are
// compiled already (once, when their event is applied); Compile is for
// callers that build routes by hand (tests, tools). It must not be called
// on a route taken from a table, which is shared.
func (r *Route) Compile() error {
	t, err := parseTarget(r.TargetURL)
	if err != nil {
		return err
	}
	r.target = t
	return nil
}

func parseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, fmt.Errorf("must be an absolute http or https URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return Target{}, fmt.Errorf("must be an absolute http or https URL")
	}
	if u.Host == "" || u.Hostname() == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return Target{}, fmt.Errorf("must be an absolute http or https URL with a host, and no user info or fragment")
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return Target{
		Scheme:   u.Scheme,
		Addr:     net.JoinHostPort(u.Hostname(), port),
		Host:     u.Host,
		BasePath: strings.TrimSuffix(u.EscapedPath(), "/"),
		Query:    u.RawQuery,
	}, nil
}
