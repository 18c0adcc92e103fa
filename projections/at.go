package projections

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/zakirkun/isekai/events"
)

// At names a point of the log: the table as it stood after Position, or
// after the last event created at or before Time. The zero value is the
// head; when both are set, the earlier point wins.
type At struct {
	Position int64
	Time     time.Time
}

// IsHead reports whether at names no point, i.e. the log's head.
func (at At) IsHead() bool { return at.Position == 0 && at.Time.IsZero() }

// ParseAt reads a point of the log as clients write it: a position (an
// integer >= 1) or an RFC 3339 time such as 2025-01-02T15:04:05Z.
func ParseAt(s string) (At, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 1 {
			return At{}, errors.New("must be a log position >= 1 or an RFC 3339 time")
		}
		return At{Position: n}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return At{}, errors.New("must be a log position >= 1 or an RFC 3339 time")
	}
	return At{Time: t}, nil
}

// EventReader is the part of an events.Store a replay reads through.
type EventReader interface {
	Read(ctx context.Context, f events.Filter) ([]events.Event, error)
}

// Replay folds the log from its start up to at into a table, whose Position
// is that of the last event folded (0 for none). A Position past the head
// gives the table at the head: callers that must refuse it compare.
func Replay(ctx context.Context, r EventReader, at At) (*RouteTable, error) {
	t, _, err := ReplayFrom(ctx, r, nil, at)
	return t, err
}
