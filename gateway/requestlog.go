package gateway

import (
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fasthttp"
)

// Record is one answered request, for the request log. Its strings are
// copies: the recorder may keep them.
type Record struct {
	Time            time.Time
	RouteID         uuid.UUID // uuid.Nil when no route matched
	Method          string
	Host            string // as matched: lower case, no port
	Path            string // as the client asked, normalized
	Query           string // only with Config.LogQuery
	Status          int    // the status the client got
	Upstream        string // the route's target URL; "" when none was asked
	UpstreamStatus  int    // 0 when the upstream gave no response
	Latency         time.Duration
	UpstreamLatency time.Duration
	BytesIn         int64
	BytesOut        int64 // 0 when a streamed body's length is unknown
	ClientIP        netip.Addr
	UserAgent       string
	RequestID       string
	TraceID         string
}

// Recorder receives the Record of every request. Record is called on the
// request path: it must not block (enqueue and return) and must not keep r
// past the call except by copying it, as passing by value does.
type Recorder interface {
	Record(r Record)
}

// logState is what proxy learns about a request as it goes, for its Record.
type logState struct {
	start      time.Time
	client     netip.Addr
	route      uuid.UUID
	path       string
	query      string
	upstream   string
	upStatus   int
	upLatency  time.Duration
	bodyStream bool // the request body was streamed through sc.body
}

// record hands the request's Record to the recorder. It runs as the
// handler ends, while ctx and sc still hold the request.
func (s *Server) record(ctx *fasthttp.RequestCtx, sc *scratch, ls *logState) {
	if s.cfg.Recorder == nil {
		return
	}
	req, resp := &ctx.Request, &ctx.Response
	r := Record{
		Time:            ls.start,
		RouteID:         ls.route,
		Method:          methodString(req.Header.Method()),
		Path:            ls.path,
		Query:           ls.query,
		Status:          resp.StatusCode(),
		Upstream:        ls.upstream,
		UpstreamStatus:  ls.upStatus,
		Latency:         time.Since(ls.start),
		UpstreamLatency: ls.upLatency,
		ClientIP:        ls.client,
		UserAgent:       string(req.Header.UserAgent()),
	}
	if sc != nil {
		r.Host = string(sc.host)
		r.RequestID = string(sc.reqID)
		if validTraceparent(sc.trace) {
			r.TraceID = string(sc.trace[3:35])
		}
	}
	if r.Path == "" {
		r.Path = string(req.URI().Path())
	}
	// Never req.Body() on a streamed request: it would read the stream.
	switch cl := req.Header.ContentLength(); {
	case ls.bodyStream && sc != nil && sc.body.limit:
		r.BytesIn = int64(s.cfg.MaxBodyBytes) - sc.body.left // chunked: counted
	case cl > 0:
		r.BytesIn = int64(cl)
	case !req.IsBodyStream():
		r.BytesIn = int64(len(req.Body()))
	}
	if resp.IsBodyStream() {
		r.BytesOut = int64(max(resp.Header.ContentLength(), 0))
	} else {
		r.BytesOut = int64(len(resp.Body()))
	}
	s.cfg.Recorder.Record(r)
}

// methodString returns the standard methods as constants, so a record
// copies only what is unusual.
func methodString(m []byte) string {
	switch string(m) {
	case fasthttp.MethodGet:
		return fasthttp.MethodGet
	case fasthttp.MethodPost:
		return fasthttp.MethodPost
	case fasthttp.MethodPut:
		return fasthttp.MethodPut
	case fasthttp.MethodDelete:
		return fasthttp.MethodDelete
	case fasthttp.MethodPatch:
		return fasthttp.MethodPatch
	case fasthttp.MethodHead:
		return fasthttp.MethodHead
	case fasthttp.MethodOptions:
		return fasthttp.MethodOptions
	}
	return string(m)
}
