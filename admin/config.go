package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"gopkg.in/yaml.v3"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// planResult is the answer of a rollback or an apply: the plan and the
// log's position after it (the table's, when nothing was appended).
type planResult struct {
	DryRun   bool             `json:"dry_run"`
	Position int64            `json:"position"`
	Plan     projections.Plan `json:"plan"`
}

// rollbackRequest is the body of POST /api/config/rollback: one of
// Position and At.
type rollbackRequest struct {
	Position int64  `json:"position"`
	At       string `json:"at"`
}

// rollback appends, in one transaction, the events that turn the current
// table into the table as it stood at a point of the log, so that every
// node swaps straight from one to the other. Their source is "rollback"
// and their reason names the point, followed by X-Isekai-Reason.
// ?dry_run=true answers the plan without appending; an empty plan appends
// nothing.
func (s *Server) rollback(c *fiber.Ctx) error {
	var req rollbackRequest
	dec := json.NewDecoder(bytes.NewReader(c.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errBadRequest("invalid_json", `the request body must be {"position": P} or {"at": "RFC3339 time"}`)
	}
	var at projections.At
	var point string
	switch {
	case req.Position != 0 && req.At != "", req.Position == 0 && req.At == "":
		return errBadRequest("invalid_point", `give exactly one of "position" and "at"`,
			projections.FieldError{Field: "position", Message: `give exactly one of "position" and "at"`})
	case req.Position < 0:
		return errBadRequest("invalid_point", "position must be a log position >= 1", projections.FieldError{Field: "position", Message: "must be a log position >= 1"})
	case req.Position > 0:
		at, point = projections.At{Position: req.Position}, "position "+strconv.FormatInt(req.Position, 10)
	default:
		t, err := time.Parse(time.RFC3339Nano, req.At)
		if err != nil {
			return errBadRequest("invalid_point", "at must be an RFC 3339 time", projections.FieldError{Field: "at", Message: "must be an RFC 3339 time"})
		}
		at, point = projections.At{Time: t}, req.At
	}
	meta, err := s.metadata(c)
	if err != nil {
		return err
	}
	meta.Source = events.SourceRollback
	meta.Reason = joinReason("rollback to "+point, meta.Reason)

	ctx, cancel := s.storeCtx(c)
	target, _, err := projections.ReplayFrom(ctx, s.store, s.cfg.Snapshots, at)
	cancel()
	if err != nil {
		return err
	}
	if at.Position > target.Position() {
		msg := "is past the log's head (" + strconv.FormatInt(target.Position(), 10) + ")"
		return errBadRequest("invalid_point", "position "+msg, projections.FieldError{Field: "position", Message: msg})
	}
	if cs := target.Conflicts(); len(cs) > 0 {
		return &apiError{status: fiber.StatusConflict, code: "route_conflict",
			message: "the table at " + point + " has routes claiming one host, method and path (" + cs[0].RouteID.String() + "); restore them one by one"}
	}
	return s.commitPlan(c, meta, func(t *projections.RouteTable) (projections.Plan, error) {
		return projections.PlanTo(t, target), nil
	})
}

// exportConfig answers the current table (or the one ?at= names) as a
// configuration document, JSON or, with ?format=yaml or Accept:
// application/yaml, YAML. The document is bare (no envelope), so that it
// can be applied as it is.
func (s *Server) exportConfig(c *fiber.Ctx) error {
	t, _, err := s.tableAt(c)
	if err != nil {
		return err
	}
	doc := projections.ExportConfig(t)
	switch format := c.Query("format"); {
	case format == "yaml" || format == "" && isYAML(c.Get(fiber.HeaderAccept)):
		out, err := yaml.Marshal(doc)
		if err != nil {
			return err
		}
		c.Set(fiber.HeaderContentType, "application/yaml")
		return c.Status(fiber.StatusOK).Send(out)
	case format == "json" || format == "":
		return c.Status(fiber.StatusOK).JSON(doc)
	default:
		return errBadRequest("invalid_query", "format must be json or yaml", projections.FieldError{Field: "format", Message: "must be json or yaml"})
	}
}

// applyConfig makes the table hold the routes of a configuration document
// (JSON, or YAML by Content-Type), appending the plan in one transaction
// with source "apply". ?prune=false keeps the routes the document does not
// name (by default they are deleted); ?dry_run=true answers the plan only.
// Applying the same document twice appends nothing the second time.
func (s *Server) applyConfig(c *fiber.Ctx) error {
	prune := true
	if raw := c.Query("prune"); raw != "" {
		var err error
		if prune, err = strconv.ParseBool(raw); err != nil {
			return errBadRequest("invalid_query", "prune must be true or false", projections.FieldError{Field: "prune", Message: "must be true or false"})
		}
	}
	decode := projections.DecodeConfig
	if isYAML(c.Get(fiber.HeaderContentType)) {
		decode = projections.DecodeConfigYAML
	}
	doc, err := decode(c.Body())
	if err != nil {
		return err
	}
	meta, err := s.metadata(c)
	if err != nil {
		return err
	}
	meta.Source = events.SourceApply
	return s.commitPlan(c, meta, func(t *projections.RouteTable) (projections.Plan, error) {
		return projections.PlanApply(t, doc, prune)
	})
}

// commitPlan is commit for a plan of many events: plan on the table this
// node has applied, append every event in one transaction expecting the log's head to be
// that table's position, and plan again on a newer table when another
// write landed first.
func (s *Server) commitPlan(c *fiber.Ctx, meta events.Metadata, decide func(*projections.RouteTable) (projections.Plan, error)) error {
	dryRun, err := queryBool(c, "dry_run")
	if err != nil {
		return err
	}
	wait, err := s.parseWait(c)
	if err != nil {
		return err
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	for attempt := 1; ; attempt++ {
		t := s.routes.Table()
		plan, err := decide(t)
		if err != nil {
			return err
		}
		if err := plan.ResolveStreams(ctx, s.store); err != nil {
			return err
		}
		res := planResult{DryRun: dryRun, Position: t.Position(), Plan: plan}
		if dryRun || plan.Empty() {
			c.Set(headerPosition, strconv.FormatInt(t.Position(), 10))
			return ok(c, fiber.StatusOK, res)
		}
		evs, err := plan.Events(meta)
		if err != nil {
			return err
		}
		out, err := s.store.Append(ctx, events.AppendRequest{Events: evs, CheckHead: true, ExpectedHead: t.Position()})
		if (errors.Is(err, events.ErrHeadMoved) || errors.Is(err, events.ErrConflict)) && attempt < maxWriteAttempts {
			// Stream versions read after the table may be newer than
			// it: either error means the table was behind the log.
			head, herr := s.store.Head(ctx)
			if herr != nil {
				return herr
			}
			if err := s.routes.WaitFor(ctx, head); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		last := out.Events[len(out.Events)-1]
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		_ = s.routes.WaitFor(wctx, last.Position)
		wcancel()
		if err := s.waitCluster(c, wait, last.Position); err != nil {
			return err
		}
		res.Position = last.Position
		c.Set(headerPosition, strconv.FormatInt(last.Position, 10))
		return c.Status(fiber.StatusOK).JSON(envelope{Success: true, Data: res, Position: last.Position})
	}
}

func queryBool(c *fiber.Ctx, name string) (bool, error) {
	raw := c.Query(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, errBadRequest("invalid_query", name+" must be true or false", projections.FieldError{Field: name, Message: "must be true or false"})
	}
	return v, nil
}

// isYAML reports whether a Content-Type or Accept value names YAML.
func isYAML(mediaType string) bool {
	for _, part := range strings.Split(mediaType, ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml":
			return true
		}
	}
	return false
}

func joinReason(what, reason string) string {
	if reason == "" {
		return what
	}
	return what + ": " + reason
}
