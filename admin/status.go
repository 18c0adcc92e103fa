package admin

import (
	"context"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// health is liveness: the process answers.
func (s *Server) health(c *fiber.Ctx) error {
	return ok(c, fiber.StatusOK, fiber.Map{"status": "ok", "node_id": s.cfg.NodeID})
}

// ready is 200 once the projection has caught up with the log since start,
// or while the node serves a table it restored from its local last-good
// file (the database being down): then the body says stale, and since when.
// Otherwise 503.
func (s *Server) ready(c *fiber.Ctx) error {
	pos := s.routes.Table().Position()
	stale := s.sync.StaleSince()
	if !s.sync.CaughtUp() && (stale.IsZero() || pos == 0) {
		c.Set(fiber.HeaderRetryAfter, "1")
		return c.Status(fiber.StatusServiceUnavailable).JSON(errorBody{Error: "not ready: catching up with the event log", Code: "not_ready"})
	}
	body := fiber.Map{"ready": true, "applied_position": pos, "stale": !stale.IsZero()}
	if !stale.IsZero() {
		body["stale_since"] = stale.UTC()
		body["reason"] = "not following the event log (" + s.sync.LastError() + "): serving the table as of stale_since"
	}
	return ok(c, fiber.StatusOK, body)
}

type statusBody struct {
	NodeID            string            `json:"node_id"`
	Version           string            `json:"version"`
	StartedAt         time.Time         `json:"started_at"`
	UptimeSeconds     float64           `json:"uptime_seconds"`
	AppliedPosition   int64             `json:"applied_position"`
	HeadPosition      *int64            `json:"head_position"`
	Lag               *int64            `json:"lag"`
	Database          string            `json:"database"`
	ListenerConnected bool              `json:"listener_connected"`
	CaughtUp          bool              `json:"caught_up"`
	Stale             bool              `json:"stale"`
	StaleSince        *time.Time        `json:"stale_since,omitempty"`
	LastError         string            `json:"last_error,omitempty"`
	Routes            int               `json:"routes"`
	Conflicts         any               `json:"conflicts"`
	Features          map[string]bool   `json:"features"`
	RequestLog        *requestLogStatus `json:"request_log,omitempty"`
	Snapshots         any               `json:"snapshots,omitempty"`
}

// requestLogStatus is the request-log pipeline as /api/status shows it.
type requestLogStatus struct {
	Enqueued         uint64  `json:"enqueued"`
	SampledOut       uint64  `json:"sampled_out"`
	Written          uint64  `json:"written"`
	Spooled          uint64  `json:"spooled"`
	Replayed         uint64  `json:"replayed"`
	Dropped          uint64  `json:"dropped"`
	DroppedQueueFull uint64  `json:"dropped_queue_full"`
	DroppedSpoolFull uint64  `json:"dropped_spool_full"`
	DroppedBadRow    uint64  `json:"dropped_bad_row"`
	Batches          uint64  `json:"batches"`
	CopyErrors       uint64  `json:"copy_errors"`
	LastBatchSize    int     `json:"last_batch_size"`
	LastFlushMillis  float64 `json:"last_flush_ms"`
	QueueLen         int     `json:"queue_len"`
	QueueCap         int     `json:"queue_cap"`
	SpoolBytes       int64   `json:"spool_bytes"`
	DatabaseUp       bool    `json:"database_up"`
}

func (s *Server) status(c *fiber.Ctx) error {
	t := s.routes.Table()
	out := statusBody{
		NodeID: s.cfg.NodeID, Version: s.cfg.Version, StartedAt: s.started.UTC(),
		UptimeSeconds:   time.Since(s.started).Seconds(),
		AppliedPosition: t.Position(), Database: "ok",
		ListenerConnected: s.sync.Connected(), CaughtUp: s.sync.CaughtUp(), LastError: s.sync.LastError(),
		Routes: t.Len(), Conflicts: conflictsOf(t), Features: s.cfg.Features,
	}
	if since := s.sync.StaleSince(); !since.IsZero() {
		since = since.UTC()
		out.Stale, out.StaleSince = true, &since
	}
	if s.cfg.Persistence != nil {
		out.Snapshots = s.cfg.Persistence()
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), min(s.cfg.StoreTimeout, time.Second))
	defer cancel()
	if head, err := s.store.Head(ctx); err != nil {
		out.Database = "unavailable"
	} else {
		lag := max(head-t.Position(), 0)
		out.HeadPosition, out.Lag = &head, &lag
	}
	if s.cfg.RequestLogStats != nil {
		st := s.cfg.RequestLogStats()
		out.RequestLog = &requestLogStatus{
			Enqueued: st.Enqueued, SampledOut: st.SampledOut, Written: st.Written, Spooled: st.Spooled, Replayed: st.Replayed,
			Dropped: st.Dropped.Total(), DroppedQueueFull: st.Dropped.QueueFull, DroppedSpoolFull: st.Dropped.SpoolFull,
			DroppedBadRow: st.Dropped.BadRow, Batches: st.Batches, CopyErrors: st.CopyErrors, LastBatchSize: st.LastBatchSize,
			LastFlushMillis: float64(st.LastFlushDuration) / float64(time.Millisecond), QueueLen: st.QueueLen,
			QueueCap: st.QueueCap, SpoolBytes: st.SpoolBytes, DatabaseUp: st.DatabaseUp,
		}
	}
	if out.Features == nil {
		out.Features = map[string]bool{}
	}
	return ok(c, fiber.StatusOK, out)
}

func conflictsOf(t *projections.RouteTable) []projections.Conflict {
	cs := t.Conflicts()
	if cs == nil {
		return []projections.Conflict{}
	}
	return cs
}

// eventsPage is GET /api/events: events in position order and the cursor
// for the next page.
type eventsPage struct {
	Success   bool           `json:"success"`
	Data      []events.Event `json:"data"`
	NextAfter int64          `json:"next_after"`
}

const defaultEventsLimit, maxEventsLimit = 100, 1000

// listEvents pages the log by position (after, next_after) and filters it by
// stream, type, actor, created_at (since, until: RFC 3339, inclusive) and a
// position range (from, to: inclusive).
func (s *Server) listEvents(c *fiber.Ctx) error {
	f := events.Filter{Stream: c.Query("stream"), Type: c.Query("type"), Actor: c.Query("actor"), Limit: defaultEventsLimit}
	var err error
	if f.After, err = intParam(c, "after", 0, 0, 1<<62); err != nil {
		return err
	}
	from, err := intParam(c, "from", 0, 1, 1<<62)
	if err != nil {
		return err
	}
	f.After = max(f.After, from-1)
	if f.To, err = intParam(c, "to", 0, 1, 1<<62); err != nil {
		return err
	}
	if from > 0 && f.To > 0 && f.To < from {
		return errBadRequest("invalid_query", "to must not be less than from", projections.FieldError{Field: "to", Message: "must not be less than from"})
	}
	if f.Since, err = timeParam(c, "since"); err != nil {
		return err
	}
	if f.Until, err = timeParam(c, "until"); err != nil {
		return err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return errBadRequest("invalid_query", "until must not be before since", projections.FieldError{Field: "until", Message: "must not be before since"})
	}
	limit, err := intParam(c, "limit", defaultEventsLimit, 1, maxEventsLimit)
	if err != nil {
		return err
	}
	f.Limit = int(limit)
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	evs, err := s.store.Read(ctx, f)
	if err != nil {
		return err
	}
	next := f.After
	if len(evs) > 0 {
		next = evs[len(evs)-1].Position
	}
	return c.JSON(eventsPage{Success: true, Data: evs, NextAfter: next})
}

func intParam(c *fiber.Ctx, name string, def, lo, hi int64) (int64, error) {
	raw := c.Query(name)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < lo || n > hi {
		msg := "must be an integer from " + strconv.FormatInt(lo, 10) + " to " + strconv.FormatInt(hi, 10)
		return 0, errBadRequest("invalid_query", name+" "+msg, projections.FieldError{Field: name, Message: msg})
	}
	return n, nil
}
