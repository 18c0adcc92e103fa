package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"gopkg.in/yaml.v3"

	"github.com/zakirkun/isekai/events"
)

// Plan is what turns one route table into another: the routes to create,
// update and delete. Its events are meant for one atomic append, so that
// every node swaps straight from the old table to the new one.
type Plan struct {
	Creates []PlanStep `json:"creates"`
	Updates []PlanStep `json:"updates"`
	Deletes []PlanStep `json:"deletes"`
}

// PlanStep is one route a plan changes.
type PlanStep struct {
	// Route is the spec after the step; for a delete, the route deleted.
	Route Route `json:"route"`
	// Before is the route as it is now; nil for a create.
	Before *Route `json:"before,omitempty"`
	// Changes are the fields the step changes (DiffRoutes): a create lists
	// its fields from null, a delete its fields to null.
	Changes []FieldChange `json:"changes"`
	// StreamVersion is the version of the route's stream the step's event
	// follows: Before's version for updates and deletes; for a create, 0
	// (a new stream) or, for a route re-created after a delete, the
	// stream's version, which ResolveStreams reads.
	StreamVersion int64 `json:"-"`
	// fresh says a create has a new random ID: its stream cannot exist.
	fresh bool
}

func newPlan() Plan {
	return Plan{Creates: []PlanStep{}, Updates: []PlanStep{}, Deletes: []PlanStep{}}
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool { return len(p.Creates)+len(p.Updates)+len(p.Deletes) == 0 }

// Len is the number of steps, hence of events.
func (p Plan) Len() int { return len(p.Creates) + len(p.Updates) + len(p.Deletes) }

// PlanTo plans the steps that turn current into target, matching routes by
// ID: a route only in target is created (re-created, when its stream
// exists: see ResolveStreams), one only in current deleted, one in both
// with another spec updated. Creates and updates follow target's listing
// order, deletes current's. Whether target is conflict-free is the
// caller's question (target.Conflicts()).
func PlanTo(current, target *RouteTable) Plan {
	p := newPlan()
	for _, want := range target.List() {
		r := specOf(want)
		cur, ok := current.Get(want.ID)
		if !ok {
			r.CreatedAt = want.CreatedAt
			p.Creates = append(p.Creates, PlanStep{Route: r, Changes: DiffRoutes(nil, &r)})
			continue
		}
		if changes := DiffRoutes(cur, &r); len(changes) > 0 {
			r.CreatedAt = cur.CreatedAt
			p.Updates = append(p.Updates, PlanStep{Route: r, Before: cur, Changes: changes, StreamVersion: cur.Version})
		}
	}
	for _, cur := range current.List() {
		if _, ok := target.Get(cur.ID); !ok {
			p.Deletes = append(p.Deletes, deleteStep(cur))
		}
	}
	return p
}

func deleteStep(cur *Route) PlanStep {
	return PlanStep{Route: specOf(cur), Before: cur, Changes: DiffRoutes(cur, nil), StreamVersion: cur.Version}
}

// specOf copies the fields a client sets, and the ID, of r.
func specOf(r *Route) Route {
	return Route{ID: r.ID, Name: r.Name, Path: r.Path, Methods: slices.Clone(r.Methods), Host: r.Host, TargetURL: r.TargetURL,
		StripPath: r.StripPath, Priority: r.Priority, Enabled: r.Enabled, RateLimit: r.RateLimit, Timeout: r.Timeout}
}

// StreamReader reads one stream of the log (events.Store has it).
type StreamReader interface {
	ReadStream(ctx context.Context, stream string) ([]events.Event, error)
}

// ResolveStreams sets the StreamVersion of each create whose route ID may
// already have a stream (a route deleted since, re-created by the plan),
// as the projection folds a route.created that follows a route.deleted.
// The versions hold for the log as read: an append that checks the head
// at the table's position fails rather than use stale ones.
func (p *Plan) ResolveStreams(ctx context.Context, r StreamReader) error {
	for i := range p.Creates {
		step := &p.Creates[i]
		if step.fresh {
			continue
		}
		evs, err := r.ReadStream(ctx, RouteStream(step.Route.ID))
		if err != nil {
			return fmt.Errorf("reading route stream %s: %w", step.Route.ID, err)
		}
		step.StreamVersion = events.NoStream
		if n := len(evs); n > 0 {
			step.StreamVersion = evs[n-1].Version
		}
	}
	return nil
}

// Events returns the plan's events, deletes first, then updates, then
// creates, each expecting its step's StreamVersion, all with meta. They
// are meant for one append that also checks the log's head.
func (p Plan) Events(meta events.Metadata) ([]events.Proposed, error) {
	out := make([]events.Proposed, 0, p.Len())
	for _, s := range p.Deletes {
		data, err := json.Marshal(map[string]string{"id": s.Route.ID.String()})
		if err != nil {
			return nil, err
		}
		out = append(out, events.Proposed{Stream: RouteStream(s.Route.ID), ExpectedVersion: s.StreamVersion, Type: EventRouteDeleted, Data: data, Metadata: meta})
	}
	add := func(steps []PlanStep, typ string) error {
		for _, s := range steps {
			r := s.Route
			r.Version = 0
			data, err := json.Marshal(&r)
			if err != nil {
				return fmt.Errorf("encoding route %s: %w", r.ID, err)
			}
			out = append(out, events.Proposed{Stream: RouteStream(r.ID), ExpectedVersion: s.StreamVersion, Type: typ, Data: data, Metadata: meta})
		}
		return nil
	}
	if err := add(p.Updates, EventRouteUpdated); err != nil {
		return nil, err
	}
	if err := add(p.Creates, EventRouteCreated); err != nil {
		return nil, err
	}
	return out, nil
}

// ConfigEntry is one route of a declarative configuration document: a
// route input (fields omitted take their defaults, as in a POST) keyed by
// its ID when given, else by its name.
type ConfigEntry struct {
	ID    uuid.UUID // uuid.Nil when not given
	Input RouteInput
}

// ConfigDocument is the exported configuration: {"routes": [...]}.
type ConfigDocument struct {
	Routes []ConfigRoute `json:"routes" yaml:"routes"`
}

// ConfigRoute is a route's spec as exported: what a client sets, and its
// ID; never its version or timestamps, which the log owns.
type ConfigRoute struct {
	ID        string   `json:"id" yaml:"id"`
	Name      string   `json:"name,omitempty" yaml:"name,omitempty"`
	Path      string   `json:"path" yaml:"path"`
	Methods   []string `json:"methods" yaml:"methods,flow"`
	Host      string   `json:"host,omitempty" yaml:"host,omitempty"`
	TargetURL string   `json:"target_url" yaml:"target_url"`
	StripPath bool     `json:"strip_path" yaml:"strip_path"`
	Priority  int      `json:"priority" yaml:"priority"`
	Enabled   bool     `json:"enabled" yaml:"enabled"`
	RateLimit int      `json:"rate_limit" yaml:"rate_limit"`
	Timeout   int      `json:"timeout" yaml:"timeout"`
}

// ExportConfig is the document of a table's routes, in listing order.
func ExportConfig(t *RouteTable) ConfigDocument {
	doc := ConfigDocument{Routes: []ConfigRoute{}}
	for _, r := range t.List() {
		methods := slices.Clone(r.Methods)
		if methods == nil {
			methods = []string{}
		}
		doc.Routes = append(doc.Routes, ConfigRoute{ID: r.ID.String(), Name: r.Name, Path: r.Path, Methods: methods, Host: r.Host,
			TargetURL: r.TargetURL, StripPath: r.StripPath, Priority: r.Priority, Enabled: r.Enabled, RateLimit: r.RateLimit, Timeout: r.Timeout})
	}
	return doc
}

// DecodeConfigYAML decodes a YAML configuration document; see
// DecodeConfig. YAML is read as the JSON it denotes, so both formats
// accept and reject the same documents.
func DecodeConfigYAML(data []byte) ([]ConfigEntry, error) {
	var v any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, bodyError(`the document must be {"routes": [...]}`)
		}
		return nil, bodyError("malformed YAML: " + err.Error())
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, bodyError("the YAML document must use string keys: " + err.Error())
	}
	return DecodeConfig(j)
}

// DecodeConfig decodes a JSON configuration document, {"routes": [...]},
// whose entries are route inputs (DecodeRouteInput) with an optional
// "id". Every error is a *ValidationError whose fields name the entry, as
// in "routes[2].timeout".
func DecodeConfig(data []byte) ([]ConfigEntry, error) {
	var doc struct {
		Routes *[]json.RawMessage `json:"routes"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil || doc.Routes == nil {
		return nil, &ValidationError{Errors: []FieldError{{Field: "routes", Message: `the document must be {"routes": [...]}`}}}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bodyError("unexpected data after the JSON document")
	}
	out := make([]ConfigEntry, 0, len(*doc.Routes))
	var v ValidationError
	for i, raw := range *doc.Routes {
		e, err := decodeEntry(raw)
		if err != nil {
			v.Errors = append(v.Errors, prefixed(i, err)...)
			continue
		}
		out = append(out, e)
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func decodeEntry(raw json.RawMessage) (ConfigEntry, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return ConfigEntry{}, bodyError("must be a route object")
	}
	var e ConfigEntry
	if rawID, ok := fields["id"]; ok {
		var s string
		id, err := uuid.Parse(strings.Trim(string(rawID), `"`))
		if json.Unmarshal(rawID, &s) != nil || err != nil {
			return ConfigEntry{}, &ValidationError{Errors: []FieldError{{Field: "id", Message: "must be a route id (a UUID)"}}}
		}
		e.ID = id
		delete(fields, "id")
	}
	rest, err := json.Marshal(fields)
	if err != nil {
		return ConfigEntry{}, bodyError("must be a route object")
	}
	if e.Input, err = DecodeRouteInput(rest); err != nil {
		return ConfigEntry{}, err
	}
	if e.ID == uuid.Nil && (e.Input.Name == nil || *e.Input.Name == "") {
		return ConfigEntry{}, &ValidationError{Errors: []FieldError{{Field: "name", Message: "is required when the entry has no id"}}}
	}
	return e, nil
}

// prefixed names the entry i in the field errors of err.
func prefixed(i int, err error) []FieldError {
	entry := "routes[" + strconv.Itoa(i) + "]"
	var ve *ValidationError
	if !errors.As(err, &ve) {
		return []FieldError{{Field: entry, Message: err.Error()}}
	}
	out := make([]FieldError, len(ve.Errors))
	for j, fe := range ve.Errors {
		out[j] = FieldError{Field: entry, Message: fe.Message}
		if fe.Field != "" {
			out[j].Field = entry + "." + fe.Field
		}
	}
	return out
}

// PlanApply plans the steps that make current hold the routes of a
// configuration document. Each entry names its route by ID when given,
// else by name, and is the route's whole spec (omitted fields at their
// defaults, as in a POST): a route the table has is updated when its spec
// differs, one it lacks is created (with a new ID when the entry gives
// none). With prune, routes of the table no entry names are deleted.
//
// Every route is validated; the routes of the resulting table must not
// claim one host, method and path twice. Errors are *ValidationError whose
// fields name the entry ("routes[3].path").
func PlanApply(current *RouteTable, doc []ConfigEntry, prune bool) (Plan, error) {
	byName := make(map[string][]*Route)
	for _, r := range current.List() {
		if r.Name != "" {
			byName[r.Name] = append(byName[r.Name], r)
		}
	}
	p := newPlan()
	var v ValidationError
	claimed := make(map[uuid.UUID]int, len(doc)) // route ID → entry index
	target := make([]*Route, 0, len(doc))
	for i, e := range doc {
		fail := func(field, msg string) {
			v.Errors = append(v.Errors, prefixed(i, &ValidationError{Errors: []FieldError{{Field: field, Message: msg}}})...)
		}
		r := NewRouteFromInput(e.Input)
		var cur *Route
		switch {
		case e.ID != uuid.Nil:
			cur, _ = current.Get(e.ID)
			r.ID = e.ID
		default:
			switch same := byName[r.Name]; len(same) {
			case 0:
				r.ID = uuid.New()
			case 1:
				cur = same[0]
				r.ID = cur.ID
			default:
				fail("name", "names "+strconv.Itoa(len(same))+" routes; give the id of the one meant")
				continue
			}
		}
		if j, dup := claimed[r.ID]; dup {
			fail("id", "names the same route as routes["+strconv.Itoa(j)+"]")
			continue
		}
		claimed[r.ID] = i
		if err := r.Validate(); err != nil {
			v.Errors = append(v.Errors, prefixed(i, err)...)
			continue
		}
		if cur == nil {
			step := PlanStep{Route: r, Changes: DiffRoutes(nil, &r), fresh: e.ID == uuid.Nil}
			p.Creates = append(p.Creates, step)
			target = append(target, &step.Route)
			continue
		}
		r.CreatedAt = cur.CreatedAt
		target = append(target, &r)
		if changes := DiffRoutes(cur, &r); len(changes) > 0 {
			p.Updates = append(p.Updates, PlanStep{Route: r, Before: cur, Changes: changes, StreamVersion: cur.Version})
		}
	}
	for _, cur := range current.List() {
		if _, ok := claimed[cur.ID]; ok {
			continue
		}
		if prune {
			p.Deletes = append(p.Deletes, deleteStep(cur))
		} else {
			target = append(target, cur)
		}
	}
	if err := v.err(); err != nil {
		return Plan{}, err
	}
	for _, c := range conflictsOf(target) {
		i, listed := claimed[c.RouteID]
		other := "route " + c.WithRouteID.String()
		if j, ok := claimed[c.WithRouteID]; ok && listed {
			// Both are entries: name the later one, as a reader would.
			i, j = max(i, j), min(i, j)
			other = "routes[" + strconv.Itoa(j) + "]"
		}
		if !listed {
			// An unlisted route kept by prune=false: name the entry
			// that collides with it instead, if any (two unlisted routes
			// are the table's own conflict, not the document's).
			j, ok := claimed[c.WithRouteID]
			if !ok {
				continue
			}
			i, other = j, "route "+c.RouteID.String()
		}
		v.Errors = append(v.Errors, prefixed(i, &ValidationError{Errors: []FieldError{{Field: "path",
			Message: "claims the same host, method and path as " + other}}})...)
	}
	if err := v.err(); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// conflictsOf lists the conflicts of a table holding routes, which are
// not modified.
func conflictsOf(routes []*Route) []Conflict {
	byID := make(map[uuid.UUID]*compiledRoute, len(routes))
	sorted := make([]*compiledRoute, 0, len(routes))
	for _, r := range routes {
		cp := *r
		c := compileRoute(&cp)
		byID[cp.ID] = c
		sorted = append(sorted, c)
	}
	slices.SortFunc(sorted, func(a, b *compiledRoute) int { return compareCreated(a.route, b.route) })
	return newRouteTable(0, byID, sorted).conflicts
}

// String describes the plan for people, one line per step and one per
// changed field of an update.
func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d to create, %d to update, %d to delete\n", len(p.Creates), len(p.Updates), len(p.Deletes))
	line := func(mark, verb string, r *Route) {
		fmt.Fprintf(&b, "%s %s %s%s %s %s -> %s\n", mark, verb, r.ID, quotedName(r.Name), methodsText(r.Methods), r.Path, r.TargetURL)
	}
	for i := range p.Creates {
		line("+", "create", &p.Creates[i].Route)
	}
	for i := range p.Updates {
		s := &p.Updates[i]
		line("~", "update", &s.Route)
		for _, c := range s.Changes {
			fmt.Fprintf(&b, "    %s: %s -> %s\n", c.Field, jsonText(c.From), jsonText(c.To))
		}
	}
	for i := range p.Deletes {
		line("-", "delete", &p.Deletes[i].Route)
	}
	return b.String()
}

func methodsText(m []string) string {
	if len(m) == 0 {
		return "*"
	}
	return strings.Join(m, ",")
}

func jsonText(v any) string {
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(j)
}
