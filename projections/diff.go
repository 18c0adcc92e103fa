package projections

import "slices"

// FieldChange is one field of a route that differs between two versions,
// named as in the route's JSON. From and To are the JSON values; nil (null)
// stands for a route that does not exist on that side.
type FieldChange struct {
	Field string `json:"field"`
	From  any    `json:"from"`
	To    any    `json:"to"`
}

// routeField is one field of a route's spec as a diff sees it.
type routeField struct {
	name string
	get  func(*Route) any
	// omitEmpty fields are absent from the JSON when empty: a create or
	// delete does not list them then.
	omitEmpty bool
}

// specFields are the fields a client sets, in the order of the route's
// JSON. The id is the stream and never changes within it; version,
// created_at and updated_at follow from the events themselves.
var specFields = []routeField{
	{name: "name", get: func(r *Route) any { return r.Name }, omitEmpty: true},
	{name: "path", get: func(r *Route) any { return r.Path }},
	{name: "methods", get: func(r *Route) any {
		if r.Methods == nil {
			return []string{}
		}
		return slices.Clone(r.Methods)
	}},
	{name: "host", get: func(r *Route) any { return r.Host }, omitEmpty: true},
	{name: "target_url", get: func(r *Route) any { return r.TargetURL }},
	{name: "strip_path", get: func(r *Route) any { return r.StripPath }},
	{name: "priority", get: func(r *Route) any { return r.Priority }},
	{name: "enabled", get: func(r *Route) any { return r.Enabled }},
	{name: "rate_limit", get: func(r *Route) any { return r.RateLimit }},
	{name: "timeout", get: func(r *Route) any { return r.Timeout }},
}

// DiffRoutes lists the fields that differ from prev to next, in JSON field
// order; nil prev is a create, nil next a delete. A create lists every field
// the new route's JSON carries, from nil; a delete lists every field the
// old route's JSON carried, to nil; so the changes of a route's history,
// applied in order, rebuild each version. Two nil routes, or two equal
// specs, give an empty, non-nil slice.
func DiffRoutes(prev, next *Route) []FieldChange {
	out := []FieldChange{}
	for _, f := range specFields {
		var from, to any
		if prev != nil {
			from = f.get(prev)
		}
		if next != nil {
			to = f.get(next)
		}
		switch {
		case prev == nil && next == nil:
			return out
		case prev == nil || next == nil:
			v := from
			if v == nil {
				v = to
			}
			if f.omitEmpty && v == "" {
				continue
			}
		case equalValues(from, to):
			continue
		}
		out = append(out, FieldChange{Field: f.name, From: from, To: to})
	}
	return out
}

func equalValues(a, b any) bool {
	if as, ok := a.([]string); ok {
		bs, ok := b.([]string)
		return ok && slices.Equal(as, bs)
	}
	return a == b
}
