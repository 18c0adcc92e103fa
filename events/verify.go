package events

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Reasons VerifyChain gives for a broken chain.
const (
	// ReasonPositionGap: a position between the first and the last checked
	// is missing (a deleted or renumbered row).
	ReasonPositionGap = "position gap"
	// ReasonHashMismatch: the event's stored hash is not sha256 of the
	// previous event's stored hash and the event's canonical bytes. Either
	// this event was edited, or the event before it was edited and its hash
	// recomputed to match (which breaks this link instead); the chain alone
	// cannot tell the two apart.
	ReasonHashMismatch = "hash mismatch"
)

// VerifyResult is what VerifyChain found.
type VerifyResult struct {
	// From and To are the positions checked, both included.
	From int64 `json:"from"`
	To   int64 `json:"to"`
	// Checked counts the events whose hash and link were verified, from
	// From up to (not including) FirstBadPosition when the chain is broken.
	Checked int64 `json:"checked"`
	// Head is the log's head when the verification started.
	Head int64 `json:"head"`
	OK   bool  `json:"ok"`
	// FirstBadPosition is the first position where the chain breaks; 0 when
	// OK.
	FirstBadPosition int64 `json:"first_bad_position"`
	// Reason is ReasonPositionGap or ReasonHashMismatch; empty when OK.
	Reason string `json:"reason,omitempty"`
	// LastHash is the hex hash of the last verified event. Recording it
	// outside the database is what makes a wholesale rewrite of the log,
	// hashes included, detectable later.
	LastHash string `json:"last_hash,omitempty"`
}

// verifyPageSize bounds the rows one verification query reads.
const verifyPageSize = 10000

// verifyPageSQL reads events lo-1 .. hi (at most $3 of them at or after lo)
// and recomputes each hash from its predecessor's stored hash. The
// canonical encoding is spelled out here rather than by calling
// isekai_event_canonical, so a replaced database function cannot make a
// tampered log verify. It must stay identical to the one in
// migrations/0003_event_hash_chain.sql and to ChainHash.
var verifyPageSQL = `
WITH page AS (
    SELECT position, hash, lag(position) OVER w AS prev_position, lag(hash) OVER w AS prev_hash,
        ` + chainField("position::text") + ` || ` + chainField("event_id::text") + ` || ` + chainField("stream") +
	` || ` + chainField("version::text") + ` || ` + chainField("type") + ` || ` + chainField("data::text") +
	` || ` + chainField("metadata::text") + ` || ` + chainField("((extract(epoch FROM created_at) * 1000000)::bigint)::text") + ` AS body
    FROM (SELECT * FROM events WHERE position >= $1 - 1 AND position <= $2 ORDER BY position LIMIT $3 + 1) e
    WINDOW w AS (ORDER BY position)
)
SELECT position, prev_position, hash,
    coalesce(hash = sha256(CASE WHEN position = 1 THEN decode(repeat('00', 32), 'hex') ELSE prev_hash END || body), false)
FROM page WHERE position >= $1 ORDER BY position`

// chainField is isekai_chain_field inline: the UTF-8 byte length of expr
// in decimal, ':', then its UTF-8 bytes.
func chainField(expr string) string {
	b := "convert_to(" + expr + ", 'UTF8')"
	return "convert_to(octet_length(" + b + ")::text || ':', 'UTF8') || " + b
}

// VerifyChain walks the events from position from to position to (both
// included) in position order and checks that each one's stored hash chains
// it to the one before, as isekai_append computed it under the append lock.
// from <= 1 starts at the first event; to <= 0 or past the head stops at the
// head. When from > 1, the stored hash of event from-1 is trusted as the
// anchor. It reports the first position where the chain breaks: the
// position an edited row is at, the next one when the editor recomputed
// the row's hash too, or the first missing position of a deleted row.
// Dropping events at the head leaves no break: compare LastHash with a
// copy kept elsewhere for that.
func VerifyChain(ctx context.Context, pool *pgxpool.Pool, from, to int64) (VerifyResult, error) {
	var head int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM events`).Scan(&head); err != nil {
		return VerifyResult{}, translate("verifying the event chain", err)
	}
	from = max(from, 1)
	if to <= 0 || to > head {
		to = head
	}
	res := VerifyResult{From: from, To: to, Head: head, OK: true}
	lo := from
	for lo <= to {
		rows, err := pool.Query(ctx, verifyPageSQL, lo, to, verifyPageSize)
		if err != nil {
			return VerifyResult{}, translate("verifying the event chain", err)
		}
		var (
			position, n int64
			prevPos     *int64
			hash        []byte
			ok          bool
		)
		for rows.Next() {
			if err := rows.Scan(&position, &prevPos, &hash, &ok); err != nil {
				rows.Close()
				return VerifyResult{}, translate("verifying the event chain", err)
			}
			n++
			switch {
			case position != lo:
				res.FirstBadPosition, res.Reason = lo, ReasonPositionGap
			case position > 1 && (prevPos == nil || *prevPos != position-1):
				// Only the first row of a range can get here: its anchor
				// (the event before from) is missing.
				res.FirstBadPosition, res.Reason = position-1, ReasonPositionGap
			case !ok:
				res.FirstBadPosition, res.Reason = position, ReasonHashMismatch
			}
			if res.Reason != "" {
				break
			}
			res.Checked++
			res.LastHash = hex.EncodeToString(hash)
			lo = position + 1
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return VerifyResult{}, translate("verifying the event chain", err)
		}
		if res.Reason != "" {
			res.OK = false
			return res, nil
		}
		if n == 0 {
			// Positions lo..to were there when we read the head.
			res.OK, res.FirstBadPosition, res.Reason = false, lo, ReasonPositionGap
			return res, nil
		}
	}
	return res, nil
}

// ChainHash computes an event's hash as isekai_append does
// (migrations/0003_event_hash_chain.sql): sha256 of prev, the hash of the
// event before (32 zero bytes before position 1), followed by the event's
// canonical bytes. The canonical bytes are eight fields, each its byte
// length in decimal, ':' and its UTF-8 bytes: position, the event id
// (lower-case hex with hyphens), stream, version, type, data and metadata
// as PostgreSQL's jsonb text (SELECT data::text, not the client's input),
// and created_at in microseconds since the Unix epoch.
func ChainHash(prev [32]byte, position int64, id uuid.UUID, stream string, version int64, typ, data, metadata string, createdAt time.Time) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	for _, f := range []string{
		strconv.FormatInt(position, 10), id.String(), stream, strconv.FormatInt(version, 10), typ, data, metadata,
		strconv.FormatInt(createdAt.UnixMicro(), 10),
	} {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
