package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// failure is one way a request can end without an upstream response. Every
// failure is written as the JSON envelope {"success":false,"error":...,
// "code":...} with a fixed, generic message: nothing from the request or
// the upstream (addresses, raw bytes, Go errors) ever reaches the client.
type failure uint8

const (
	failBadRequest failure = iota
	failRouteNotFound
	failMethodNotAllowed
	failRequestTimeout
	failBodyTooLarge
	failHeadersTooLarge
	failInternal
	failNotImplemented
	failBadGateway
	failUnavailable
	failGatewayTimeout
	failureCount
)

type failureSpec struct {
	status int
	code   string
	msg    string
}

var failureSpecs = [failureCount]failureSpec{
	failBadRequest:       {fasthttp.StatusBadRequest, "bad_request", "malformed request"},
	failRouteNotFound:    {fasthttp.StatusNotFound, "route_not_found", "no route matches the request"},
	failMethodNotAllowed: {fasthttp.StatusMethodNotAllowed, "method_not_allowed", "method not allowed"},
	failRequestTimeout:   {fasthttp.StatusRequestTimeout, "request_timeout", "request not received in time"},
	failBodyTooLarge:     {fasthttp.StatusRequestEntityTooLarge, "payload_too_large", "request body too large"},
	failHeadersTooLarge:  {fasthttp.StatusRequestHeaderFieldsTooLarge, "request_header_fields_too_large", "request headers too large"},
	failInternal:         {fasthttp.StatusInternalServerError, "internal_error", "internal error"},
	failNotImplemented:   {fasthttp.StatusNotImplemented, "not_implemented", "method not implemented"},
	failBadGateway:       {fasthttp.StatusBadGateway, "bad_gateway", "upstream unavailable"},
	failUnavailable:      {fasthttp.StatusServiceUnavailable, "service_unavailable", "service unavailable"},
	failGatewayTimeout:   {fasthttp.StatusGatewayTimeout, "gateway_timeout", "upstream timed out"},
}

// failureBodies holds the JSON body of each failure, built once so writing
// one allocates nothing.
var failureBodies = func() (b [failureCount][]byte) {
	for f, s := range failureSpecs {
		b[f] = []byte(`{"success":false,"error":"` + s.msg + `","code":"` + s.code + `"}`)
	}
	return b
}()

// closesConnection reports whether the client connection must close after
// the failure: the request body may be unread, or the stream is out of step.
func (f failure) closesConnection() bool {
	switch f {
	case failBadRequest, failRequestTimeout, failBodyTooLarge, failHeadersTooLarge:
		return true
	}
	return false
}

var (
	strApplicationJSON = []byte("application/json")
	strNoStore         = []byte("no-store")
)

// writeFailure replaces whatever the response holds (a half-read upstream
// response included) with the failure's JSON body. Resetting first is what
// keeps a truncated upstream body from turning into a mixed or "500 OK"
// response.
func writeFailure(ctx *fasthttp.RequestCtx, f failure, requestID []byte) {
	ctx.Response.Reset()
	ctx.Response.Header.SetNoDefaultContentType(true)
	ctx.SetStatusCode(failureSpecs[f].status)
	ctx.Response.Header.SetContentTypeBytes(strApplicationJSON)
	ctx.Response.Header.SetBytesKV(strCacheControl, strNoStore)
	if len(requestID) > 0 {
		ctx.Response.Header.SetBytesKV(strXRequestID, requestID)
	}
	ctx.Response.SetBodyRaw(failureBodies[f])
	if f.closesConnection() {
		ctx.SetConnectionClose()
	}
}

// Errors the exchange with an upstream can end in, besides fasthttp's and
// the network's.
var (
	errUnexpectedUpgrade = errors.New("gateway: upstream switched protocols unasked")
	errTooManyInterim    = errors.New("gateway: too many interim responses")
	errRequestBodyTooBig = errors.New("gateway: request body exceeds the limit")
	errClientBody        = errors.New("gateway: reading the request body from the client failed")
)

// upstreamFailure maps an error from the upstream exchange to what the
// client is told: a timeout anywhere (waiting for a connection, dialing,
// writing, reading) is 504, a saturated connection pool 503, a request
// body the client failed to deliver 400 or 408, and anything else (refused,
// reset, malformed response) 502.
func upstreamFailure(err error) failure {
	switch {
	case errors.Is(err, errRequestBodyTooBig):
		return failBodyTooLarge
	case errors.Is(err, errClientBody):
		if isTimeout(err) {
			return failRequestTimeout
		}
		return failBadRequest
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return failUnavailable
	case isTimeout(err):
		return failGatewayTimeout
	}
	return failBadGateway
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serverFailure maps an error fasthttp met while reading a request, before
// any handler ran, to its failure: headers beyond MaxHeaderBytes 431, a slow
// client 408, a body beyond the limit 413, anything malformed 400. It
// replaces fiber's own mapping, which turns a client's network error into
// 502 and echoes the parser's message, raw request bytes included.
func serverFailure(err error) failure {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		return failHeadersTooLarge
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return failBodyTooLarge
	case isTimeout(err):
		return failRequestTimeout
	}
	return failBadRequest
}

// statusFailure maps a status carried by an error a fiber handler returned
// (a future middleware's fiber.NewError, say) to the nearest failure; its
// message is never used.
func statusFailure(status int) failure {
	for f, s := range failureSpecs {
		if s.status == status {
			return failure(f)
		}
	}
	switch {
	case status >= 400 && status < 500:
		return failBadRequest
	}
	return failInternal
}

// handlerError is the fiber ErrorHandler: errors returned by handlers are
// written as failures, never with their text.
func (s *Server) handlerError(c *fiber.Ctx, err error) error {
	f := failInternal
	var fe *fiber.Error
	if errors.As(err, &fe) {
		f = statusFailure(fe.Code)
	}
	if f == failInternal {
		s.log.Error("gateway handler failed", "error", err)
	}
	writeFailure(c.Context(), f, nil)
	return nil
}

// readError is fasthttp's ErrorHandler, called when a request cannot be
// read or parsed; fasthttp closes the connection after it.
func (s *Server) readError(ctx *fasthttp.RequestCtx, err error) {
	writeFailure(ctx, serverFailure(err), nil)
	s.record(ctx, nil, &logState{start: time.Now(), client: peerAddr(ctx)})
}

// logUpstreamFailure records why an upstream exchange failed, at Debug so
// a dead upstream under load does not flood the log.
func (s *Server) logUpstreamFailure(routeID any, addr string, elapsed time.Duration, err error) {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("upstream exchange failed", "route", routeID, "upstream", addr,
			"elapsed", elapsed, "error", err)
	}
}
