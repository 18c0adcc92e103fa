package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// RequestLogs reads the request log; nil when request logging is off (the
// endpoints then answer 404 with code "request_log_disabled").
type RequestLogs interface {
	// Query returns the rows matching f, newest first.
	Query(ctx context.Context, f events.RequestLogFilter) ([]events.RequestLogRow, error)
	// RouteStats summarises routeID over the window ending now.
	RouteStats(ctx context.Context, routeID uuid.UUID, window time.Duration) (events.RouteStats, error)
}

// PostgresRequestLogs adapts a pool to RequestLogs.
type PostgresRequestLogs struct{ Pool *pgxpool.Pool }

// Query implements RequestLogs.
func (p PostgresRequestLogs) Query(ctx context.Context, f events.RequestLogFilter) ([]events.RequestLogRow, error) {
	return events.QueryRequestLogs(ctx, p.Pool, f)
}

// RouteStats implements RequestLogs.
func (p PostgresRequestLogs) RouteStats(ctx context.Context, routeID uuid.UUID, window time.Duration) (events.RouteStats, error) {
	return events.QueryRouteStats(ctx, p.Pool, routeID, window, time.Now())
}

// Bounds of GET /api/routes/{id}/stats?window=.
const (
	defaultStatsWindow = 15 * time.Minute
	minStatsWindow     = time.Minute
	maxStatsWindow     = 7 * 24 * time.Hour
)

// mountLogs registers the request log endpoints; New calls it before its
// catch-all 404, which would otherwise answer first.
func (s *Server) mountLogs(api fiber.Router) {
	api.Get("/logs", s.listLogs)
	api.Get("/routes/:id/stats", s.routeStats)
}

// requestLogs is the configured source, or nil when logging is off.
func (s *Server) requestLogs() (RequestLogs, error) {
	l := s.cfg.RequestLogs
	if p, ok := l.(PostgresRequestLogs); ok && p.Pool == nil {
		l = nil
	}
	if l == nil {
		return nil, &apiError{status: fiber.StatusNotFound, code: "request_log_disabled", message: "request logging is disabled on this node"}
	}
	return l, nil
}

// logsPage is GET /api/logs: rows newest first, and the cursor of the next
// page. NextBefore is set whenever the page is full (the next one may be
// empty) and null once the log is exhausted.
type logsPage struct {
	Success    bool                   `json:"success"`
	Data       []events.RequestLogRow `json:"data"`
	NextBefore *string                `json:"next_before"`
}

// listLogs is GET /api/logs?route_id=&status=&method=&since=&until=&limit=&before=.
// status is a status (100..599) or a class ("5xx"); since is inclusive and
// until exclusive (RFC 3339); before is the next_before of a previous page.
func (s *Server) listLogs(c *fiber.Ctx) error {
	logs, err := s.requestLogs()
	if err != nil {
		return err
	}
	f := events.RequestLogFilter{}
	if raw := c.Query("route_id"); raw != "" {
		if f.RouteID, err = uuid.Parse(raw); err != nil {
			return queryError("route_id", "must be a UUID")
		}
	}
	if f.Status, err = statusParam(c.Query("status")); err != nil {
		return err
	}
	if raw := c.Query("method"); raw != "" {
		if !methodToken(raw) {
			return queryError("method", "must be an HTTP method")
		}
		f.Method = strings.ToUpper(raw)
	}
	if f.Since, err = timeParam(c, "since"); err != nil {
		return err
	}
	if f.Until, err = timeParam(c, "until"); err != nil {
		return err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return queryError("until", "must not be before since")
	}
	limit, err := intParam(c, "limit", events.DefaultRequestLogLimit, 1, events.MaxRequestLogLimit)
	if err != nil {
		return err
	}
	f.Limit = int(limit)
	if raw := c.Query("before"); raw != "" {
		cur, ok := decodeLogCursor(raw)
		if !ok {
			return queryError("before", "must be the next_before of a previous page")
		}
		f.Before = &cur
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	rows, err := logs.Query(ctx, f)
	if err != nil {
		return err
	}
	out := logsPage{Success: true, Data: rows}
	if rows == nil {
		out.Data = []events.RequestLogRow{}
	}
	if len(rows) == f.Limit {
		next := encodeLogCursor(rows[len(rows)-1].Cursor())
		out.NextBefore = &next
	}
	return c.JSON(out)
}

// routeStats is GET /api/routes/{id}/stats?window=15m. The stats come from
// the log alone: a route deleted since, or never seen, has the stats of its
// rows in the window, zeros when there are none, not a 404. The nil UUID
// names the requests no route matched.
func (s *Server) routeStats(c *fiber.Ctx) error {
	logs, err := s.requestLogs()
	if err != nil {
		return err
	}
	id, err := routeID(c)
	if err != nil {
		return err
	}
	window := defaultStatsWindow
	if raw := c.Query("window"); raw != "" {
		window, err = durationParam(raw)
		if err != nil || window < minStatsWindow || window > maxStatsWindow {
			return queryError("window", "must be a duration from 1m to 7d, e.g. 15m, 2h or 1d")
		}
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	st, err := logs.RouteStats(ctx, id, window)
	if err != nil {
		return err
	}
	return ok(c, fiber.StatusOK, st)
}

func queryError(name, msg string) error {
	return errBadRequest("invalid_query", name+" "+msg, projections.FieldError{Field: name, Message: msg})
}

// statusParam parses status: an exact status 100..599, or a class "1xx" to
// "5xx" (events.RequestLogFilter's 1..5); empty is any.
func statusParam(raw string) (int, error) {
	const msg = `must be a status from 100 to 599 or a class from "1xx" to "5xx"`
	if raw == "" {
		return 0, nil
	}
	if len(raw) == 3 && raw[0] >= '1' && raw[0] <= '5' && strings.EqualFold(raw[1:], "xx") {
		return int(raw[0] - '0'), nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 100 || n > 599 {
		return 0, queryError("status", msg)
	}
	return n, nil
}

// durationParam is time.ParseDuration that also takes whole days, "7d".
func durationParam(raw string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(raw, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 365 {
			return 0, strconv.ErrSyntax
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(raw)
}

func timeParam(c *fiber.Ctx, name string) (time.Time, error) {
	raw := c.Query(name)
	if raw == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		return time.Time{}, queryError(name, "must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
	}
	return t, nil
}

// methodToken reports whether s is a plausible method: 1 to 32 letters.
func methodToken(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i] | 0x20; b < 'a' || b > 'z' {
			return false
		}
	}
	return true
}

// logCursor is the JSON inside the opaque before/next_before string:
// base64url, so it travels in a query string as is.
type logCursor struct {
	T int64  `json:"t"` // µs since the Unix epoch, the table's precision
	N string `json:"n"`
	R string `json:"r"`
}

func encodeLogCursor(c events.RequestLogCursor) string {
	j, _ := json.Marshal(logCursor{T: c.Time.UnixMicro(), N: c.NodeID, R: c.RequestID})
	return base64.RawURLEncoding.EncodeToString(j)
}

func decodeLogCursor(s string) (events.RequestLogCursor, bool) {
	if len(s) > 2048 {
		return events.RequestLogCursor{}, false
	}
	j, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return events.RequestLogCursor{}, false
	}
	var c logCursor
	if err := json.Unmarshal(j, &c); err != nil || c.N == "" || c.R == "" {
		return events.RequestLogCursor{}, false
	}
	return events.RequestLogCursor{Time: time.UnixMicro(c.T).UTC(), NodeID: c.N, RequestID: c.R}, true
}
