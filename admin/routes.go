package admin

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

const (
	headerPosition       = "Isekai-Position"
	headerReason         = "X-Isekai-Reason"
	headerIdempotencyKey = "Idempotency-Key"
	headerReplayed       = "Idempotent-Replayed"
	maxReasonLength      = 500
	maxIdempotencyKeyLen = 255
	// maxWriteAttempts bounds the retries of a write that lost the race for
	// the log's head to another write.
	maxWriteAttempts = 5
)

func (s *Server) listRoutes(c *fiber.Ctx) error {
	t, _, err := s.tableAt(c)
	if err != nil {
		return err
	}
	return ok(c, fiber.StatusOK, t.List())
}

func (s *Server) getRoute(c *fiber.Ctx) error {
	id, err := routeID(c)
	if err != nil {
		return err
	}
	var (
		r          *projections.Route
		found      bool
		historical = c.Query("at") != ""
	)
	if historical {
		r, found, err = s.routeAt(c, id)
	} else {
		t := s.routes.Table()
		c.Set(headerPosition, strconv.FormatInt(t.Position(), 10))
		r, found = t.Get(id)
	}
	if err != nil {
		return err
	}
	if !found {
		return errNotFound()
	}
	// An ETag is for If-Match on the next write: only the current version
	// has one.
	if !historical {
		c.Set(fiber.HeaderETag, etag(r.Version))
	}
	return ok(c, fiber.StatusOK, r)
}

func (s *Server) createRoute(c *fiber.Ctx) error {
	in, err := decodeInput(c)
	if err != nil {
		return err
	}
	meta, err := s.metadata(c)
	if err != nil {
		return err
	}
	r := projections.NewRouteFromInput(in)
	r.ID = uuid.New()
	var eventID uuid.UUID
	key := c.Get(headerIdempotencyKey)
	if key != "" {
		if len(key) > maxIdempotencyKeyLen {
			return errBadRequest("invalid_header", "Idempotency-Key is longer than 255 characters", projections.FieldError{Field: headerIdempotencyKey, Message: "at most 255 characters"})
		}
		// The route's id comes from the key too, so a retry after the
		// first attempt was applied is not mistaken for a path conflict
		// with its own route.
		r.ID = events.IdempotentID("route-id", key)
		eventID = events.IdempotentID("POST /api/routes", key)
	}
	if err := r.Validate(); err != nil {
		return err
	}
	ev, dup, err := s.commit(c, func(t *projections.RouteTable) (events.Proposed, error) {
		if err := checkConflict(t, &r); err != nil {
			return events.Proposed{}, err
		}
		return routeEvent(eventID, projections.EventRouteCreated, events.NoStream, &r, meta)
	})
	if err != nil {
		return err
	}
	out, err := routeAfter(nil, ev)
	if err != nil {
		return err
	}
	if dup {
		c.Set(headerReplayed, "true")
	}
	c.Location("/api/routes/" + out.ID.String())
	return written(c, fiber.StatusCreated, ev, out)
}

func (s *Server) replaceRoute(c *fiber.Ctx) error {
	return s.updateRoute(c, func(in projections.RouteInput, cur *projections.Route) projections.Route {
		r := projections.NewRouteFromInput(in)
		r.ID, r.CreatedAt = cur.ID, cur.CreatedAt
		return r
	})
}

func (s *Server) patchRoute(c *fiber.Ctx) error {
	return s.updateRoute(c, func(in projections.RouteInput, cur *projections.Route) projections.Route {
		return in.Merge(*cur)
	})
}

// routeWrite is what a write to an existing route reads from its request.
type routeWrite struct {
	id         uuid.UUID
	ifMatch    int64
	hasIfMatch bool
	meta       events.Metadata
}

func (s *Server) parseRouteWrite(c *fiber.Ctx) (routeWrite, error) {
	var w routeWrite
	var err error
	if w.id, err = routeID(c); err != nil {
		return w, err
	}
	if w.ifMatch, w.hasIfMatch, err = parseIfMatch(c); err != nil {
		return w, err
	}
	w.meta, err = s.metadata(c)
	return w, err
}

// current is the route as the table has it: 404 when there is none, 412
// when If-Match names another version.
func (w routeWrite) current(t *projections.RouteTable) (*projections.Route, error) {
	cur, found := t.Get(w.id)
	if !found {
		return nil, errNotFound()
	}
	if w.hasIfMatch && w.ifMatch != cur.Version {
		return nil, errPrecondition()
	}
	return cur, nil
}

// result turns a version conflict into 412 when the client named the
// version it expected.
func (w routeWrite) result(err error) error {
	if w.hasIfMatch && errors.Is(err, events.ErrConflict) {
		return errPrecondition()
	}
	return err
}

// updateRoute is PUT and PATCH: build the next spec from the current one,
// validate, and append it expecting the current version.
func (s *Server) updateRoute(c *fiber.Ctx, next func(projections.RouteInput, *projections.Route) projections.Route) error {
	w, err := s.parseRouteWrite(c)
	if err != nil {
		return err
	}
	in, err := decodeInput(c)
	if err != nil {
		return err
	}
	var cur *projections.Route
	ev, _, err := s.commit(c, func(t *projections.RouteTable) (events.Proposed, error) {
		found, err := w.current(t)
		if err != nil {
			return events.Proposed{}, err
		}
		cur = found
		r := next(in, cur)
		if err := r.Validate(); err != nil {
			return events.Proposed{}, err
		}
		if err := checkConflict(t, &r); err != nil {
			return events.Proposed{}, err
		}
		return routeEvent(uuid.Nil, projections.EventRouteUpdated, cur.Version, &r, w.meta)
	})
	if err != nil {
		return w.result(err)
	}
	out, err := routeAfter(cur, ev)
	if err != nil {
		return err
	}
	return written(c, fiber.StatusOK, ev, out)
}

func (s *Server) deleteRoute(c *fiber.Ctx) error {
	w, err := s.parseRouteWrite(c)
	if err != nil {
		return err
	}
	ev, _, err := s.commit(c, func(t *projections.RouteTable) (events.Proposed, error) {
		cur, err := w.current(t)
		if err != nil {
			return events.Proposed{}, err
		}
		data, _ := json.Marshal(map[string]string{"id": w.id.String()})
		return events.Proposed{Stream: projections.RouteStream(w.id), ExpectedVersion: cur.Version, Type: projections.EventRouteDeleted, Data: data, Metadata: w.meta}, nil
	})
	if err != nil {
		return w.result(err)
	}
	return written(c, fiber.StatusOK, ev, fiber.Map{"id": w.id, "deleted": true, "version": ev.Version})
}

// historyEntry is one version of a route as GET /api/routes/{id}/history
// shows it: the event, the full spec after it (null after a delete) and the
// fields it changed (projections.DiffRoutes: a create lists its fields
// from null, a delete its fields to null).
type historyEntry struct {
	Position  int64                     `json:"position"`
	Version   int64                     `json:"version"`
	Type      string                    `json:"type"`
	Actor     string                    `json:"actor"`
	Source    string                    `json:"source"`
	Reason    string                    `json:"reason,omitempty"`
	RequestID string                    `json:"request_id,omitempty"`
	Node      string                    `json:"node,omitempty"`
	Time      time.Time                 `json:"time"`
	Route     *projections.Route        `json:"route"`
	Changes   []projections.FieldChange `json:"changes"`
}

func (s *Server) routeHistory(c *fiber.Ctx) error {
	id, err := routeID(c)
	if err != nil {
		return err
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	evs, err := s.store.ReadStream(ctx, projections.RouteStream(id))
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		return errNotFound()
	}
	out := make([]historyEntry, 0, len(evs))
	var prev *projections.Route
	for _, ev := range evs {
		r, err := routeAfter(prev, ev)
		if err != nil {
			return err
		}
		m := ev.Metadata
		out = append(out, historyEntry{Position: ev.Position, Version: ev.Version, Type: ev.Type, Actor: m.Actor, Source: m.Source,
			Reason: m.Reason, RequestID: m.RequestID, Node: m.Node, Time: ev.CreatedAt, Route: r, Changes: projections.DiffRoutes(prev, r)})
		// After a delete the next event re-creates the route, as the
		// projection folds it: from nothing.
		prev = r
	}
	return ok(c, fiber.StatusOK, out)
}

// commit decides on the table this node has applied and appends the result
// expecting the log's head to be that table's position, so that checks
// spanning routes (path conflicts) hold across the cluster: a decision on a
// stale table never commits. When another write landed first it waits for
// the table to catch up and decides again.
func (s *Server) commit(c *fiber.Ctx, decide func(*projections.RouteTable) (events.Proposed, error)) (events.Event, bool, error) {
	wait, err := s.parseWait(c)
	if err != nil {
		return events.Event{}, false, err
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	// catchUp brings the table to the log's head before deciding again.
	catchUp := func() error {
		head, err := s.store.Head(ctx)
		if err != nil {
			return err
		}
		return s.routes.WaitFor(ctx, head)
	}
	for attempt := 1; ; attempt++ {
		t := s.routes.Table()
		p, err := decide(t)
		if err != nil {
			// A refusal (404, 412, 409) must not come from a table that
			// is behind the log: check the head, and decide again if the
			// table was stale. Commits need no such check: the append
			// below fails unless the table was at the head.
			var ae *apiError
			if !errors.As(err, &ae) || attempt >= maxWriteAttempts {
				return events.Event{}, false, err
			}
			head, herr := s.store.Head(ctx)
			if herr != nil {
				return events.Event{}, false, herr
			}
			if head <= t.Position() {
				return events.Event{}, false, err
			}
			if err := s.routes.WaitFor(ctx, head); err != nil {
				return events.Event{}, false, err
			}
			continue
		}
		res, err := s.store.Append(ctx, events.AppendRequest{Events: []events.Proposed{p}, CheckHead: true, ExpectedHead: t.Position()})
		if errors.Is(err, events.ErrHeadMoved) && attempt < maxWriteAttempts {
			if err := catchUp(); err != nil {
				return events.Event{}, false, err
			}
			continue
		}
		if err != nil {
			return events.Event{}, false, err
		}
		ev := res.Events[0]
		// Read your writes on this node: answer once the table has it, or
		// after a short bound (the write has committed either way).
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		_ = s.routes.WaitFor(wctx, ev.Position)
		wcancel()
		if err := s.waitCluster(c, wait, ev.Position); err != nil {
			return events.Event{}, false, err
		}
		return ev, res.Duplicate, nil
	}
}

func written(c *fiber.Ctx, status int, ev events.Event, data any) error {
	c.Set(fiber.HeaderETag, etag(ev.Version))
	c.Set(headerPosition, strconv.FormatInt(ev.Position, 10))
	return c.Status(status).JSON(envelope{Success: true, Data: data, Position: ev.Position})
}

func routeEvent(id uuid.UUID, typ string, expected int64, r *projections.Route, meta events.Metadata) (events.Proposed, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return events.Proposed{}, err
	}
	return events.Proposed{ID: id, Stream: projections.RouteStream(r.ID), ExpectedVersion: expected, Type: typ, Data: data, Metadata: meta}, nil
}

// routeAfter folds one event onto the previous spec the way the projection
// does: nil after a delete.
func routeAfter(prev *projections.Route, ev events.Event) (*projections.Route, error) {
	if ev.Type == projections.EventRouteDeleted {
		return nil, nil
	}
	var r projections.Route
	if err := json.Unmarshal(ev.Data, &r); err != nil {
		return nil, err
	}
	r.Version, r.UpdatedAt, r.CreatedAt = ev.Version, ev.CreatedAt, ev.CreatedAt
	if prev != nil && ev.Version > 1 {
		r.CreatedAt = prev.CreatedAt
	}
	return &r, nil
}

func checkConflict(t *projections.RouteTable, r *projections.Route) error {
	if !r.Enabled {
		return nil
	}
	if other, found := t.ConflictsWith(r); found {
		return &apiError{status: fiber.StatusConflict, code: "route_conflict",
			message: "another enabled route (" + other.ID.String() + ") already serves this host, method and path",
			fields:  []projections.FieldError{{Field: "path", Message: "conflicts with route " + other.ID.String()}}}
	}
	return nil
}

func errPrecondition() error {
	return &apiError{status: fiber.StatusPreconditionFailed, code: "precondition_failed", message: "If-Match does not match the route's current version"}
}

func decodeInput(c *fiber.Ctx) (projections.RouteInput, error) {
	in, err := projections.DecodeRouteInput(c.Body())
	if err != nil {
		var ve *projections.ValidationError
		if errors.As(err, &ve) {
			return in, err
		}
		return in, errBadRequest("invalid_json", "the request body is not a valid route JSON object")
	}
	return in, nil
}

// routeID parses the :id parameter; anything that is not a UUID names no
// route.
func routeID(c *fiber.Ctx) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Params("id"))
	if err != nil {
		return uuid.Nil, errNotFound()
	}
	return id, nil
}

func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// parseIfMatch reads If-Match as a route version: "3", 3 or W/"3".
func parseIfMatch(c *fiber.Ctx) (int64, bool, error) {
	v := strings.TrimSpace(c.Get(fiber.HeaderIfMatch))
	if v == "" || v == "*" {
		return 0, false, nil
	}
	v = strings.Trim(strings.TrimPrefix(v, "W/"), `"`)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, false, errBadRequest("invalid_header", "If-Match must be a route version (its ETag)", projections.FieldError{Field: fiber.HeaderIfMatch, Message: "must be a route version such as \"3\""})
	}
	return n, true, nil
}

// metadata is what the request's events record about it.
func (s *Server) metadata(c *fiber.Ctx) (events.Metadata, error) {
	reason := strings.TrimSpace(c.Get(headerReason))
	if len(reason) > maxReasonLength || strings.ContainsFunc(reason, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return events.Metadata{}, errBadRequest("invalid_header", "X-Isekai-Reason must be at most 500 printable characters",
			projections.FieldError{Field: headerReason, Message: "at most 500 printable characters"})
	}
	rid, _ := c.Locals(headerRequestID).(string)
	return events.Metadata{Actor: actor(c), RequestID: rid, Source: events.SourceAPI, Reason: reason, Node: s.cfg.NodeID}, nil
}

// actor names who made a change. Authentication comes later; until then the
// admin listener is loopback-only and every change is "anonymous".
func actor(*fiber.Ctx) string { return "anonymous" }
