package events

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"
)

// Sources of an event, recorded in its metadata.
const (
	SourceAPI       = "api"
	SourceApply     = "apply"
	SourceRevert    = "revert"
	SourceRollback  = "rollback"
	SourceBootstrap = "bootstrap"
)

// Metadata says who appended an event, from where and why. It never holds
// secrets (passwords, tokens).
type Metadata struct {
	Actor     string `json:"actor,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Source    string `json:"source,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Node      string `json:"node,omitempty"`
}

// Event is one committed, immutable entry of the log.
type Event struct {
	// Position is the event's place in the whole log: gapless and in commit
	// order, starting at 1.
	Position int64 `json:"position"`
	// ID is unique across the log; an idempotency key maps to it.
	ID uuid.UUID `json:"id"`
	// Stream names the entity the event belongs to, e.g. "route-<uuid>".
	Stream string `json:"stream"`
	// Version is the event's place in its stream, starting at 1.
	Version   int64           `json:"version"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	Metadata  Metadata        `json:"metadata"`
	CreatedAt time.Time       `json:"created_at"`
}

// AnyVersion, as a Proposed.ExpectedVersion, appends whatever the stream's
// version is. NoStream requires that the stream has no events yet.
const (
	AnyVersion int64 = -1
	NoStream   int64 = 0
)

// Proposed is an event not yet appended.
type Proposed struct {
	// ID, when not zero, makes the append idempotent: appending an event
	// whose ID is already in the log appends nothing and returns the stored
	// events. Zero means a fresh random ID.
	ID     uuid.UUID
	Stream string
	// ExpectedVersion is the stream's version this event must follow:
	// NoStream (0) for a new stream, N to follow version N, AnyVersion to
	// skip the check. Events of one request on the same stream are checked in
	// order, so the second expects the first's version.
	ExpectedVersion int64
	Type            string
	Data            json.RawMessage
	Metadata        Metadata
}

// IdempotentID derives the event ID for a client idempotency key, scoped
// by what the key is used for (e.g. "POST /api/routes") so that one key
// reused on another endpoint does not collide.
func IdempotentID(scope, key string) uuid.UUID {
	return uuid.NewSHA1(idempotencyNamespace, []byte(scope+"\x00"+key))
}

var idempotencyNamespace = uuid.MustParse("8d3f1c9e-5a8b-4f0e-9a61-2b8f7d3c4e10")
