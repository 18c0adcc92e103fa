package events

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Limits of RequestLogFilter.Limit.
const (
	DefaultRequestLogLimit = 100
	MaxRequestLogLimit     = 1000
)

// RequestLogCursor is the position of a row in the newest-first order of
// request_logs. The table has no id column, so a row is ordered by
// (time, node_id, request_id), all descending: request ids are unique per
// node, so this is a total order over distinct requests. The only rows it
// cannot tell apart are one request written twice (a COPY whose commit
// answer was lost, see RequestLogWriter); a page boundary falling between
// the two copies shows only one of them.
type RequestLogCursor struct {
	Time      time.Time
	NodeID    string
	RequestID string
}

// RequestLogFilter selects rows of request_logs. Zero fields select
// everything.
type RequestLogFilter struct {
	// RouteID is the matched route; uuid.Nil means any route, matched or not.
	RouteID uuid.UUID
	// Status is an exact status (100..999), a status class (1..5 mean
	// 1xx..5xx), or 0 for any.
	Status int
	// Method is matched exactly (the gateway records it upper case); empty
	// means any.
	Method string
	// Since (inclusive) and Until (exclusive) bound the time; zero is
	// unbounded.
	Since, Until time.Time
	// Before pages: only rows strictly older than the cursor, in the
	// newest-first order. Nil starts at the newest row.
	Before *RequestLogCursor
	// Limit is the most rows returned: DefaultRequestLogLimit when zero or
	// negative, at most MaxRequestLogLimit.
	Limit int
}

// RequestLogRow is one row of request_logs. As in RequestLogEntry, a NULL
// column is the zero value, and is omitted from JSON.
type RequestLogRow struct {
	Time              time.Time  `json:"time"`
	NodeID            string     `json:"node_id"`
	RouteID           uuid.UUID  `json:"route_id,omitzero"` // uuid.Nil: no route matched
	Method            string     `json:"method"`
	Host              string     `json:"host"`
	Path              string     `json:"path"`
	Query             string     `json:"query,omitzero"`
	Status            int        `json:"status"`
	Upstream          string     `json:"upstream,omitzero"`
	UpstreamStatus    int        `json:"upstream_status,omitzero"`
	LatencyUS         int64      `json:"latency_us"`
	UpstreamLatencyUS int64      `json:"upstream_latency_us,omitzero"`
	BytesIn           int64      `json:"bytes_in"`
	BytesOut          int64      `json:"bytes_out"`
	ClientIP          netip.Addr `json:"client_ip,omitzero"`
	UserAgent         string     `json:"user_agent,omitzero"`
	RequestID         string     `json:"request_id"`
	TraceID           string     `json:"trace_id,omitzero"`
	Consumer          string     `json:"consumer,omitzero"`
}

// Cursor is the position of r, for RequestLogFilter.Before of the next page.
func (r RequestLogRow) Cursor() RequestLogCursor {
	return RequestLogCursor{Time: r.Time, NodeID: r.NodeID, RequestID: r.RequestID}
}

// QueryRequestLogs returns the rows matching f, newest first. An
// unreachable database is ErrUnavailable.
//
// The query walks request_logs_time, or request_logs_route_time when
// f.RouteID is set, backwards from f.Before (or f.Until): both indexes
// order by time, and the few rows sharing a timestamp are sorted on top.
func QueryRequestLogs(ctx context.Context, pool *pgxpool.Pool, f RequestLogFilter) ([]RequestLogRow, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.RouteID != uuid.Nil {
		where = append(where, "route_id = "+arg(f.RouteID))
	}
	switch {
	case f.Status == 0:
	case f.Status >= 1 && f.Status <= 5:
		lo := f.Status * 100
		where = append(where, "status BETWEEN "+arg(lo)+" AND "+arg(lo+99))
	case f.Status >= 100 && f.Status <= 999:
		where = append(where, "status = "+arg(f.Status))
	default:
		return nil, fmt.Errorf("querying request logs: status %d is neither a class 1..5 nor a status 100..999", f.Status)
	}
	if f.Method != "" {
		where = append(where, "method = "+arg(f.Method))
	}
	if !f.Since.IsZero() {
		where = append(where, "time >= "+arg(f.Since))
	}
	if !f.Until.IsZero() {
		where = append(where, "time < "+arg(f.Until))
	}
	if b := f.Before; b != nil {
		// The time bound alone is what an index on time can use; the row
		// comparison then settles the ties.
		t := arg(b.Time)
		where = append(where, "time <= "+t,
			"(time, node_id, request_id) < ("+t+", "+arg(b.NodeID)+", "+arg(b.RequestID)+")")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultRequestLogLimit
	}
	limit = min(limit, MaxRequestLogLimit)

	var sb strings.Builder
	sb.WriteString(`SELECT time, node_id, route_id, method, host, path, coalesce(query, ''), status,
	coalesce(upstream, ''), coalesce(upstream_status, 0), latency_us, coalesce(upstream_latency_us, 0),
	bytes_in, bytes_out, client_ip, coalesce(user_agent, ''), request_id, coalesce(trace_id, ''), coalesce(consumer, '')
FROM request_logs`)
	for i, w := range where {
		if i == 0 {
			sb.WriteString("\nWHERE ")
		} else {
			sb.WriteString("\n  AND ")
		}
		sb.WriteString(w)
	}
	sb.WriteString("\nORDER BY time DESC, node_id DESC, request_id DESC\nLIMIT " + arg(limit))

	rows, err := pool.Query(ctx, sb.String(), args...)
	if err != nil {
		return nil, translate("querying request logs", err)
	}
	out := make([]RequestLogRow, 0, min(limit, 64))
	var (
		r        RequestLogRow
		routeID  pgtype.UUID
		clientIP *netip.Prefix
	)
	_, err = pgx.ForEachRow(rows, []any{
		&r.Time, &r.NodeID, &routeID, &r.Method, &r.Host, &r.Path, &r.Query, &r.Status,
		&r.Upstream, &r.UpstreamStatus, &r.LatencyUS, &r.UpstreamLatencyUS,
		&r.BytesIn, &r.BytesOut, &clientIP, &r.UserAgent, &r.RequestID, &r.TraceID, &r.Consumer,
	}, func() error {
		row := r
		row.Time = r.Time.UTC()
		if routeID.Valid {
			row.RouteID = routeID.Bytes
		}
		if clientIP != nil {
			row.ClientIP = clientIP.Addr()
		}
		out = append(out, row)
		return nil
	})
	if err != nil {
		return nil, translate("querying request logs", err)
	}
	return out, nil
}

// RouteStats summarises a route's requests over a window of the log.
type RouteStats struct {
	RouteID uuid.UUID
	Window  time.Duration
	// Since (exclusive) and Until (inclusive) are the window's bounds.
	Since, Until time.Time
	Requests     int64
	// Errors counts 5xx answers, the gateway's or the upstream's fault;
	// ClientErrors counts 4xx answers, which are not errors of the route.
	Errors, ClientErrors int64
	// ErrorRate is Errors / Requests, 0 without requests.
	ErrorRate float64
	// P50, P95 and P99 are latency percentiles (total latency, linearly
	// interpolated); zero without requests.
	P50, P95, P99     time.Duration
	BytesIn, BytesOut int64
	// ByClass counts requests by status class: always "1xx" to "5xx", and
	// "other" when some status is outside 100..599.
	ByClass map[string]int64
}

type routeStatsJSON struct {
	RouteID       uuid.UUID        `json:"route_id"`
	Window        string           `json:"window"`
	WindowSeconds float64          `json:"window_seconds"`
	Since         time.Time        `json:"since"`
	Until         time.Time        `json:"until"`
	Requests      int64            `json:"requests"`
	Errors        int64            `json:"errors"`
	ClientErrors  int64            `json:"client_errors"`
	ErrorRate     float64          `json:"error_rate"`
	P50           float64          `json:"p50_ms"`
	P95           float64          `json:"p95_ms"`
	P99           float64          `json:"p99_ms"`
	BytesIn       int64            `json:"bytes_in"`
	BytesOut      int64            `json:"bytes_out"`
	ByClass       map[string]int64 `json:"by_class"`
}

// MarshalJSON writes durations as a Go duration string (window) and
// milliseconds (p50_ms, p95_ms, p99_ms).
func (s RouteStats) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return json.Marshal(routeStatsJSON{
		RouteID: s.RouteID, Window: s.Window.String(), WindowSeconds: s.Window.Seconds(),
		Since: s.Since, Until: s.Until,
		Requests: s.Requests, Errors: s.Errors, ClientErrors: s.ClientErrors, ErrorRate: s.ErrorRate,
		P50: ms(s.P50), P95: ms(s.P95), P99: ms(s.P99),
		BytesIn: s.BytesIn, BytesOut: s.BytesOut, ByClass: s.ByClass,
	})
}

// routeStatsSQL computes everything in one pass over the window's rows,
// found through request_logs_route_time. %s is the route predicate.
const routeStatsSQL = `SELECT count(*),
	count(*) FILTER (WHERE status BETWEEN 100 AND 199),
	count(*) FILTER (WHERE status BETWEEN 200 AND 299),
	count(*) FILTER (WHERE status BETWEEN 300 AND 399),
	count(*) FILTER (WHERE status BETWEEN 400 AND 499),
	count(*) FILTER (WHERE status BETWEEN 500 AND 599),
	coalesce(sum(bytes_in), 0)::bigint, coalesce(sum(bytes_out), 0)::bigint,
	percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency_us)
FROM request_logs
WHERE %s AND time > $1 AND time <= $2`

// QueryRouteStats summarises the requests of routeID in the window
// (now-window, now]. uuid.Nil selects the requests no route matched. A
// route without requests, or unknown, has zero stats. An unreachable
// database is ErrUnavailable.
func QueryRouteStats(ctx context.Context, pool *pgxpool.Pool, routeID uuid.UUID, window time.Duration, now time.Time) (RouteStats, error) {
	if window <= 0 {
		return RouteStats{}, fmt.Errorf("querying route stats: window %v is not positive", window)
	}
	now = now.UTC()
	st := RouteStats{RouteID: routeID, Window: window, Since: now.Add(-window), Until: now}
	args := []any{st.Since, st.Until}
	pred := "route_id IS NULL"
	if routeID != uuid.Nil {
		pred = "route_id = $3"
		args = append(args, routeID)
	}
	var (
		class [5]int64
		pcts  []float64
	)
	err := pool.QueryRow(ctx, fmt.Sprintf(routeStatsSQL, pred), args...).Scan(
		&st.Requests, &class[0], &class[1], &class[2], &class[3], &class[4], &st.BytesIn, &st.BytesOut, &pcts)
	if err != nil {
		return RouteStats{}, translate("querying route stats", err)
	}
	st.ByClass = map[string]int64{"1xx": class[0], "2xx": class[1], "3xx": class[2], "4xx": class[3], "5xx": class[4]}
	if other := st.Requests - class[0] - class[1] - class[2] - class[3] - class[4]; other > 0 {
		st.ByClass["other"] = other
	}
	st.Errors, st.ClientErrors = class[4], class[3]
	if st.Requests > 0 {
		st.ErrorRate = float64(st.Errors) / float64(st.Requests)
	}
	if len(pcts) == 3 { // NULL without rows
		us := func(v float64) time.Duration { return time.Duration(math.Round(v * float64(time.Microsecond))) }
		st.P50, st.P95, st.P99 = us(pcts[0]), us(pcts[1]), us(pcts[2])
	}
	return st, nil
}
