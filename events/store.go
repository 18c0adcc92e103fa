package events

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store is the event log. Implementations must pass the conformance suite in
// storetest.
type Store interface {
	// Append commits the events atomically, in order, at the next positions
	// of the log. It fails with ErrConflict when a stream is not at the
	// expected version, and with ErrHeadMoved when req.CheckHead is set and
	// the log's head is not req.ExpectedHead.
	Append(ctx context.Context, req AppendRequest) (AppendResult, error)
	// Read returns events after f.After in position order.
	Read(ctx context.Context, f Filter) ([]Event, error)
	// ReadStream returns every event of one stream in version order; an
	// unknown stream gives an empty slice, not an error.
	ReadStream(ctx context.Context, stream string) ([]Event, error)
	// Head returns the position of the newest event, 0 for an empty log.
	Head(ctx context.Context) (int64, error)
	// PositionAt returns the position of the last event created at or
	// before t, 0 when there is none.
	PositionAt(ctx context.Context, t time.Time) (int64, error)
}

// AppendRequest is one atomic append.
type AppendRequest struct {
	Events []Proposed
	// CheckHead makes the append fail with ErrHeadMoved unless the log's
	// head is exactly ExpectedHead. It serializes decisions that span streams
	// (two routes may not claim one path) without a lock held across a
	// round trip: read at head H, decide, append expecting H, retry on
	// ErrHeadMoved.
	CheckHead    bool
	ExpectedHead int64
}

// AppendResult is what an append committed.
type AppendResult struct {
	Events []Event
	// Duplicate reports an idempotent retry: the events were already in the
	// log, and Events are the stored ones.
	Duplicate bool
}

// Filter selects events for Read. Zero fields do not filter.
type Filter struct {
	After  int64  // positions greater than After
	To     int64  // positions up to and including To
	Limit  int    // at most Limit events; 0 means DefaultReadLimit
	Stream string // exactly this stream
	Type   string // exactly this type
	Actor  string // exactly this Metadata.Actor
	// Since and Until bound CreatedAt, both inclusive. Every event of one
	// append shares its CreatedAt, and CreatedAt does not decrease with
	// position (isekai_append never stamps an event earlier than the one
	// before it, from migration 0007 on).
	Since time.Time
	Until time.Time
	// NoMetadata leaves every event's Metadata empty: for readers that fold
	// data only (replays), which then skip decoding it.
	NoMetadata bool
}

// DefaultReadLimit bounds a Read with no Limit; MaxReadLimit bounds any.
const (
	DefaultReadLimit = 1000
	MaxReadLimit     = 10000
)

// Errors returned by a Store, to be inspected with errors.Is.
var (
	ErrConflict     = errors.New("stream version conflict")
	ErrHeadMoved    = errors.New("log head moved")
	ErrUnavailable  = errors.New("event store unavailable")
	ErrInvalidEvent = errors.New("invalid event")
)

// ConflictError details an ErrConflict.
type ConflictError struct {
	Stream   string
	Expected int64
	Actual   int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("stream %s is at version %d, expected %d", e.Stream, e.Actual, e.Expected)
}

func (e *ConflictError) Is(target error) bool { return target == ErrConflict }
