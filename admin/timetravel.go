package admin

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// tableAt is the table a read answers from: the node's applied table, or,
// with ?at=POSITION or ?at=RFC3339-TIME, the log as it stood then, folded
// afresh from the store. A time names the last event created at or before
// it (a time before the first event gives the empty table at position 0; a
// future time gives the head). A position past the log's head is refused
// with 400 rather than clamped, so that one URL never answers two tables.
// Every read sets Isekai-Position to the table's position.
func (s *Server) tableAt(c *fiber.Ctx) (table *projections.RouteTable, historical bool, err error) {
	raw := c.Query("at")
	if raw == "" {
		t := s.routes.Table()
		c.Set(headerPosition, strconv.FormatInt(t.Position(), 10))
		return t, false, nil
	}
	at, err := projections.ParseAt(raw)
	if err != nil {
		return nil, true, errBadRequest("invalid_query", "at "+err.Error(), projections.FieldError{Field: "at", Message: err.Error()})
	}
	if cur := s.routes.Table(); at.Time.IsZero() && at.Position == cur.Position() {
		c.Set(headerPosition, strconv.FormatInt(cur.Position(), 10))
		return cur, true, nil
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	t, _, err := projections.ReplayFrom(ctx, s.store, s.cfg.Snapshots, at)
	if err != nil {
		return nil, true, err
	}
	// Positions are gapless: a replay that stops short of at.Position
	// reached the head.
	if at.Position > t.Position() {
		msg := "is past the log's head (" + strconv.FormatInt(t.Position(), 10) + ")"
		return nil, true, errBadRequest("invalid_query", "at "+msg, projections.FieldError{Field: "at", Message: msg})
	}
	c.Set(headerPosition, strconv.FormatInt(t.Position(), 10))
	return t, true, nil
}

// routeAt is one route as of ?at=: the fold of its own stream up to that
// point (a route's state depends on its events alone), which spares a
// point-in-time read of one route the whole table. Isekai-Position is the
// point's log position, as for tableAt.
func (s *Server) routeAt(c *fiber.Ctx, id uuid.UUID) (*projections.Route, bool, error) {
	at, err := projections.ParseAt(c.Query("at"))
	if err != nil {
		return nil, false, errBadRequest("invalid_query", "at "+err.Error(), projections.FieldError{Field: "at", Message: err.Error()})
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	var pos int64
	if !at.Time.IsZero() {
		if pos, err = s.store.PositionAt(ctx, at.Time); err != nil {
			return nil, false, err
		}
	} else {
		head, err := s.store.Head(ctx)
		if err != nil {
			return nil, false, err
		}
		if at.Position > head {
			msg := "is past the log's head (" + strconv.FormatInt(head, 10) + ")"
			return nil, false, errBadRequest("invalid_query", "at "+msg, projections.FieldError{Field: "at", Message: msg})
		}
		pos = at.Position
	}
	evs, err := s.store.ReadStream(ctx, projections.RouteStream(id))
	if err != nil {
		return nil, false, err
	}
	state := projections.NewRouteState()
	for _, ev := range evs {
		if ev.Position > pos {
			break
		}
		if err := state.Apply(ev); err != nil {
			return nil, false, err
		}
	}
	c.Set(headerPosition, strconv.FormatInt(pos, 10))
	t, err := state.Build()
	if err != nil {
		return nil, false, err
	}
	r, found := t.Get(id)
	return r, found, nil
}

// revertRequest is the body of POST /api/routes/{id}/revert.
type revertRequest struct {
	Version int64 `json:"version"`
}

// revertRoute appends one event that restores the route's spec as of an
// earlier version: route.updated when the route exists, route.created
// (following the stream's delete) when it was deleted since. History is
// never rewritten. The event's source is "revert" and its reason names the
// version, followed by X-Isekai-Reason when given. If-Match, validation
// and the path-conflict check are those of any write; If-Match on a
// deleted route names the stream's version (the delete's ETag). Reverting
// to the current version appends an event that changes nothing.
func (s *Server) revertRoute(c *fiber.Ctx) error {
	w, err := s.parseRouteWrite(c)
	if err != nil {
		return err
	}
	var req revertRequest
	dec := json.NewDecoder(bytes.NewReader(c.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errBadRequest("invalid_json", `the request body must be {"version": N}`)
	}
	if req.Version < 1 {
		return errBadRequest("invalid_version", "version must be a route version >= 1", projections.FieldError{Field: "version", Message: "must be a route version >= 1"})
	}
	ctx, cancel := s.storeCtx(c)
	evs, err := s.store.ReadStream(ctx, projections.RouteStream(w.id))
	cancel()
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		return errNotFound()
	}
	// With an Idempotency-Key, the event's id comes from it: a retry after
	// the first attempt committed finds that event and answers as the
	// first attempt did, instead of reverting again (or failing If-Match).
	var eventID uuid.UUID
	if key := c.Get(headerIdempotencyKey); key != "" {
		if len(key) > maxIdempotencyKeyLen {
			return errBadRequest("invalid_header", "Idempotency-Key is longer than 255 characters", projections.FieldError{Field: headerIdempotencyKey, Message: "at most 255 characters"})
		}
		eventID = events.IdempotentID("POST /api/routes/"+w.id.String()+"/revert", key)
		for i, ev := range evs {
			if ev.ID == eventID {
				return s.replayRevert(c, evs[:i], ev)
			}
		}
	}
	streamVersion := evs[len(evs)-1].Version
	var restored projections.Route
	switch n := req.Version; {
	case n > streamVersion:
		msg := "is not a version of this route (latest is " + strconv.FormatInt(streamVersion, 10) + ")"
		return errBadRequest("invalid_version", "version "+msg, projections.FieldError{Field: "version", Message: msg})
	case evs[n-1].Type == projections.EventRouteDeleted:
		return errBadRequest("invalid_version", "version "+strconv.FormatInt(n, 10)+" is the route's delete",
			projections.FieldError{Field: "version", Message: "is a delete, which has no spec to restore"})
	default:
		if err := json.Unmarshal(evs[n-1].Data, &restored); err != nil {
			return err
		}
	}
	w.meta.Source = events.SourceRevert
	reason := "revert to version " + strconv.FormatInt(req.Version, 10)
	if w.meta.Reason != "" {
		reason += ": " + w.meta.Reason
	}
	w.meta.Reason = reason

	var cur *projections.Route
	ev, dup, err := s.commit(c, func(t *projections.RouteTable) (events.Proposed, error) {
		r := restored
		r.ID, r.Version = w.id, 0
		typ, expected := projections.EventRouteUpdated, streamVersion
		found, exists := t.Get(w.id)
		if exists {
			cur, expected = found, found.Version
			r.CreatedAt, r.UpdatedAt = found.CreatedAt, found.UpdatedAt
		} else {
			cur, typ = nil, projections.EventRouteCreated
			// The projection dates a re-created route from its new event.
			r.CreatedAt, r.UpdatedAt = time.Time{}, time.Time{}
		}
		if w.hasIfMatch && w.ifMatch != expected {
			return events.Proposed{}, errPrecondition()
		}
		if err := r.Validate(); err != nil {
			return events.Proposed{}, err
		}
		if err := checkConflict(t, &r); err != nil {
			return events.Proposed{}, err
		}
		return routeEvent(eventID, typ, expected, &r, w.meta)
	})
	if err != nil {
		return w.result(err)
	}
	out, err := routeAfter(cur, ev)
	if err != nil {
		return err
	}
	if dup {
		// A concurrent retry committed it first: the store returned it.
		c.Set(headerReplayed, "true")
	}
	return written(c, fiber.StatusOK, ev, out)
}

// replayRevert answers a retried revert with the event its first attempt
// appended; before are the stream's events before it.
func (s *Server) replayRevert(c *fiber.Ctx, before []events.Event, ev events.Event) error {
	var prev *projections.Route
	if len(before) > 0 {
		var err error
		if prev, err = routeAfter(nil, before[0]); err != nil {
			return err
		}
		for _, b := range before[1:] {
			if prev, err = routeAfter(prev, b); err != nil {
				return err
			}
		}
	}
	out, err := routeAfter(prev, ev)
	if err != nil {
		return err
	}
	c.Set(headerReplayed, "true")
	return written(c, fiber.StatusOK, ev, out)
}
