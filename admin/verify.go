package admin

import (
	"context"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
)

// ChainVerifier checks the event log's hash chain (issue 3, item 6).
type ChainVerifier interface {
	// VerifyChain checks positions from..to, both included; from <= 1 means
	// the first event and to <= 0 the head.
	VerifyChain(ctx context.Context, from, to int64) (events.VerifyResult, error)
}

// PostgresVerifier is the ChainVerifier on the node's database pool.
type PostgresVerifier struct{ Pool *pgxpool.Pool }

// VerifyChain implements ChainVerifier.
func (v PostgresVerifier) VerifyChain(ctx context.Context, from, to int64) (events.VerifyResult, error) {
	return events.VerifyChain(ctx, v.Pool, from, to)
}

// verifyTimeout bounds a whole verification: it reads the log in pages,
// so it takes far longer than one StoreTimeout on a large log.
const verifyTimeout = 2 * time.Minute

// verifyEvents is GET /api/events/verify?from=&to=. A broken chain is still
// a 200: the verification succeeded, and its result says where the log was
// altered.
func (s *Server) verifyEvents(c *fiber.Ctx) error {
	if s.cfg.Verifier == nil {
		return &apiError{status: fiber.StatusNotImplemented, code: "verify_unavailable", message: "this node cannot verify the event log"}
	}
	from, err := intParam(c, "from", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	to, err := intParam(c, "to", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), verifyTimeout)
	defer cancel()
	res, err := s.cfg.Verifier.VerifyChain(ctx, from, to)
	if err != nil {
		return err
	}
	if !res.OK {
		s.log.Warn("event log hash chain broken", "first_bad_position", res.FirstBadPosition, "reason", res.Reason)
	}
	return ok(c, fiber.StatusOK, res)
}
