package admin

import (
	"context"
	"errors"

	"github.com/gofiber/fiber/v2"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// apiError is an error with the status and code a client sees.
type apiError struct {
	status  int
	code    string
	message string
	fields  []projections.FieldError
	// position and laggards describe a write that committed but did not
	// reach every node in time (cluster_timeout).
	position int64
	laggards []events.Node
}

func (e *apiError) Error() string { return e.message }

func errNotFound() error {
	return &apiError{status: fiber.StatusNotFound, code: "route_not_found", message: "route not found"}
}

func errBadRequest(code, msg string, fields ...projections.FieldError) error {
	return &apiError{status: fiber.StatusBadRequest, code: code, message: msg, fields: fields}
}

// errorBody is the seed's failure envelope.
type errorBody struct {
	Success bool                     `json:"success"`
	Error   string                   `json:"error"`
	Code    string                   `json:"code"`
	Fields  []projections.FieldError `json:"fields,omitempty"`
	// Position and Laggards come with cluster_timeout: the write committed
	// at Position, and these live nodes had not applied it.
	Position int64         `json:"position,omitempty"`
	Laggards []events.Node `json:"laggards,omitempty"`
}

// errorHandler maps every error of the admin listener to a status, in one
// place. Internal details are logged, never returned.
func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	var (
		ae  *apiError
		ve  *projections.ValidationError
		fe  *fiber.Error
		out errorBody
	)
	status := fiber.StatusInternalServerError
	switch {
	case errors.As(err, &ae):
		status, out = ae.status, errorBody{Error: ae.message, Code: ae.code, Fields: ae.fields, Position: ae.position, Laggards: ae.laggards}
	case errors.As(err, &ve):
		status, out = fiber.StatusBadRequest, errorBody{Error: "invalid route: " + ve.Error(), Code: "validation_failed", Fields: ve.Errors}
	case errors.Is(err, events.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		status, out = fiber.StatusServiceUnavailable, errorBody{Error: "the event store is unavailable; retry later", Code: "database_unavailable"}
		c.Set(fiber.HeaderRetryAfter, "1")
	case errors.Is(err, events.ErrConflict):
		status, out = fiber.StatusConflict, errorBody{Error: "the route was changed concurrently; re-read it and retry", Code: "version_conflict"}
	case errors.Is(err, events.ErrHeadMoved):
		status, out = fiber.StatusConflict, errorBody{Error: "the configuration kept changing concurrently; retry", Code: "concurrent_change"}
	case errors.As(err, &fe):
		status, out = fe.Code, errorBody{Error: statusText(fe.Code), Code: codeFor(fe.Code)}
	default:
		out = errorBody{Error: "internal error", Code: "internal_error"}
	}
	if status >= 500 {
		s.log.Error("admin request failed", "method", c.Method(), "path", c.Path(), "status", status, "err", err)
	} else {
		s.log.Debug("admin request rejected", "method", c.Method(), "path", c.Path(), "status", status, "err", err)
	}
	c.Response().ResetBody()
	return c.Status(status).JSON(out)
}

func statusText(code int) string {
	switch code {
	case fiber.StatusNotFound:
		return "not found"
	case fiber.StatusMethodNotAllowed:
		return "method not allowed"
	case fiber.StatusRequestEntityTooLarge:
		return "request body too large"
	case fiber.StatusRequestHeaderFieldsTooLarge:
		return "request headers too large"
	case fiber.StatusRequestTimeout:
		return "request timeout"
	}
	if code >= 500 {
		return "internal error"
	}
	return "bad request"
}

func codeFor(code int) string {
	switch code {
	case fiber.StatusNotFound:
		return "not_found"
	case fiber.StatusMethodNotAllowed:
		return "method_not_allowed"
	case fiber.StatusRequestEntityTooLarge:
		return "body_too_large"
	case fiber.StatusRequestHeaderFieldsTooLarge:
		return "headers_too_large"
	case fiber.StatusRequestTimeout:
		return "request_timeout"
	}
	if code >= 500 {
		return "internal_error"
	}
	return "bad_request"
}
