package gateway

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// proxy serves one request: match it against the current route table,
// rewrite it in place into the upstream request, exchange it with the
// route's upstream, and rewrite the upstream response in place into the
// client's. The request and response objects are fasthttp's own, so a
// proxied request costs no copies of headers or bodies, and nothing is
// allocated once the pools are warm.
func (s *Server) proxy(ctx *fasthttp.RequestCtx, method string) {
	sc := acquireScratch()
	defer releaseScratch(sc)
	ls := logState{start: time.Now()}
	defer s.record(ctx, sc, &ls)
	req := &ctx.Request

	http10 := !req.Header.IsHTTP11() // before the rewrite makes it HTTP/1.1
	peer := peerAddr(ctx)
	trusted := len(s.trusted) > 0 && s.isTrusted(peer)
	scanRequest(&req.Header, sc, trusted)
	if !validRequestID(sc.reqID) {
		sc.reqID = appendNewRequestID(sc.reqID[:0])
	}
	ls.client = peer
	if trusted && len(sc.xff) > 0 {
		ls.client = s.clientFromChain(peer, sc.xff)
	}

	table := s.routes()
	if table == nil {
		writeFailure(ctx, failUnavailable, sc.reqID)
		return
	}
	uri := req.URI()
	sc.host = appendMatchHost(sc.host[:0], uri.Host())
	path := uri.Path()
	if s.cfg.Recorder != nil {
		// Copied now: the rewrite below reuses the URI's buffers.
		ls.path = string(path)
		if s.cfg.LogQuery {
			ls.query = string(uri.QueryString())
		}
	}
	route, matched, ok := table.Match(b2s(sc.host), method, b2s(path))
	if !ok || route == nil {
		writeFailure(ctx, failRouteNotFound, sc.reqID)
		return
	}
	ls.route, ls.upstream = route.ID, route.TargetURL
	target := route.Target()
	if target.Addr == "" {
		s.log.Error("gateway matched a route without a compiled target", "route", route.ID)
		writeFailure(ctx, failInternal, sc.reqID)
		return
	}

	cl := req.Header.ContentLength()
	if cl > s.cfg.MaxBodyBytes {
		writeFailure(ctx, failBodyTooLarge, sc.reqID)
		return
	}
	if req.IsBodyStream() && (cl < 0 || cl > s.cfg.StreamThreshold) {
		// The body is still on the client connection: stream it through,
		// counting what a chunked body has not declared.
		sc.body = requestBody{r: req.BodyStream(), left: int64(s.cfg.MaxBodyBytes), limit: cl < 0}
		req.SetBodyStream(&sc.body, cl)
		ls.bodyStream = true
	}

	// The upstream path and query first: path aliases the URI's buffers.
	rest := path
	if route.StripPath {
		rest = path[max(0, min(matched, len(path))):]
	}
	sc.path = appendUpstreamPath(sc.path[:0], target.BasePath, rest)
	if target.Query != "" {
		sc.query = appendQuery(sc.query[:0], target.Query, uri.QueryString())
	}
	s.rewriteRequest(ctx, sc, peer, ls.client, trusted)
	uri.DisablePathNormalizing = true // send sc.path exactly as built
	uri.SetPathBytes(sc.path)
	if target.Query != "" {
		uri.SetQueryStringBytes(sc.query)
	}
	// The upstream's Host header is the target's host (and port, when the
	// target URL names one), as for any client of that URL; the client's
	// Host travels in X-Forwarded-Host.
	uri.SetHost(target.Host)

	timeout := time.Duration(route.Timeout) * time.Second
	if timeout <= 0 {
		timeout = projections.DefaultTimeoutSeconds * time.Second
	}
	start := time.Now()
	up := s.upstreams.get(target.Scheme == "https", target.Addr)
	x := exchange{
		deadline:   start.Add(timeout),
		idle:       timeout,
		replayable: !req.IsBodyStream() && (req.Header.IsGet() || req.Header.IsHead() || req.Header.IsOptions()),
	}
	if http10 {
		x.bufferUnknown = s.cfg.MaxBodyBytes
	}
	err := up.roundTrip(req, &ctx.Response, x)
	ls.upLatency = time.Since(start)
	if sc.body.r != nil {
		_ = req.CloseBodyStream()
	}
	if err == nil {
		ls.upStatus = ctx.Response.StatusCode()
	}
	if err != nil {
		s.logUpstreamFailure(route.ID, target.Addr, time.Since(start), err)
		writeFailure(ctx, upstreamFailure(err), sc.reqID)
		return
	}
	rewriteResponse(&ctx.Response.Header, sc)
}
