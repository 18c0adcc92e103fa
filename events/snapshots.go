package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// StoredSnapshot is a projection snapshot as the snapshots table keeps it:
// opaque encoded data (projections.Snapshot) tied to the log by the hash of
// the event at Position.
type StoredSnapshot struct {
	Position  int64
	EventHash []byte
	Format    int
	Routes    int
	Data      []byte
	Node      string
	CreatedAt time.Time
}

// snapshotLock is the try-lock snapshot writers take (see
// migrations/0005_snapshots.sql).
const snapshotLock = 7305692536

// SnapshotStore reads and writes the snapshots table.
type SnapshotStore struct {
	pool *pgxpool.Pool
}

// NewSnapshotStore returns a SnapshotStore on pool.
func NewSnapshotStore(pool *pgxpool.Pool) *SnapshotStore { return &SnapshotStore{pool: pool} }

// Latest returns the newest snapshot whose event is still in the log with
// the hash it names, at or before position (0: any) and whose event was
// created at or before until (zero: any). found is false when there is none.
func (s *SnapshotStore) Latest(ctx context.Context, position int64, until time.Time) (_ StoredSnapshot, found bool, _ error) {
	q := `SELECT s.position, s.event_hash, s.format, s.routes, s.data, s.node, s.created_at
	      FROM snapshots s JOIN events e ON e.position = s.position AND e.hash = s.event_hash
	      WHERE true`
	var args []any
	if position > 0 {
		args = append(args, position)
		q += ` AND s.position <= $` + strconv.Itoa(len(args))
	}
	if !until.IsZero() {
		args = append(args, until)
		q += ` AND e.created_at <= $` + strconv.Itoa(len(args))
	}
	q += ` ORDER BY s.position DESC LIMIT 1`
	var snap StoredSnapshot
	err := s.pool.QueryRow(ctx, q, args...).Scan(&snap.Position, &snap.EventHash, &snap.Format, &snap.Routes, &snap.Data, &snap.Node, &snap.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return StoredSnapshot{}, false, nil
	}
	if err != nil {
		return StoredSnapshot{}, false, translate("reading the latest snapshot", err)
	}
	return snap, true, nil
}

// EventHash returns the chain hash of the event at position; found is false
// when the log has no such position.
func (s *SnapshotStore) EventHash(ctx context.Context, position int64) (_ []byte, found bool, _ error) {
	var h []byte
	err := s.pool.QueryRow(ctx, `SELECT hash FROM events WHERE position = $1`, position).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, translate("reading an event hash", err)
	}
	return h, true, nil
}

// Save stores snap unless another writer holds the snapshot lock, or a
// snapshot exists at snap.Position or within minGap positions before it:
// saved says whether it wrote. The insert checks that the event at
// snap.Position has snap.EventHash, and fails otherwise.
func (s *SnapshotStore) Save(ctx context.Context, snap StoredSnapshot, minGap int64) (saved bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(snapshotLock)).Scan(&locked); err != nil || !locked {
			return err
		}
		var newest int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM snapshots`).Scan(&newest); err != nil {
			return err
		}
		if newest >= snap.Position || snap.Position-newest < minGap {
			return nil
		}
		tag, err := tx.Exec(ctx, `INSERT INTO snapshots (position, event_hash, format, routes, data, node)
			SELECT $1, e.hash, $3, $4, $5, $6 FROM events e WHERE e.position = $1 AND e.hash = $2`,
			snap.Position, snap.EventHash, snap.Format, snap.Routes, snap.Data, snap.Node)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errNotInLog
		}
		saved = true
		return nil
	})
	if errors.Is(err, errNotInLog) {
		return false, fmt.Errorf("saving a snapshot: %w: the log has no event %d with the snapshot's hash", ErrInvalidEvent, snap.Position)
	}
	if err != nil {
		return false, translate("saving a snapshot", err)
	}
	return saved, nil
}

// Prune keeps the newest keep snapshots and, among older ones, the first of
// each run of thin positions (position / thin), so that point-in-time reads
// far back still find a snapshot near them while the table stays bounded by
// the log's length / thin. It returns how many it deleted. keep <= 0 keeps
// every snapshot.
func (s *SnapshotStore) Prune(ctx context.Context, keep int, thin int64) (int64, error) {
	if keep <= 0 || thin <= 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM snapshots s
		WHERE s.position < (SELECT position FROM snapshots ORDER BY position DESC OFFSET $1 LIMIT 1)
		  AND EXISTS (SELECT 1 FROM snapshots o
		              WHERE o.position / $2 = s.position / $2 AND o.position < s.position)`,
		keep-1, thin)
	if err != nil {
		return 0, translate("pruning snapshots", err)
	}
	return tag.RowsAffected(), nil
}

var errNotInLog = errors.New("snapshot event not in the log")

// SnapshotSummary describes the snapshots table.
type SnapshotSummary struct {
	Count          int64 `json:"count"`
	Bytes          int64 `json:"bytes"`
	Newest         int64 `json:"newest_position"`
	OldestPosition int64 `json:"oldest_position"`
}

// Summary counts the stored snapshots.
func (s *SnapshotStore) Summary(ctx context.Context) (SnapshotSummary, error) {
	var sum SnapshotSummary
	err := s.pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(octet_length(data)), 0),
		coalesce(max(position), 0), coalesce(min(position), 0) FROM snapshots`).
		Scan(&sum.Count, &sum.Bytes, &sum.Newest, &sum.OldestPosition)
	if err != nil {
		return sum, translate("summarizing snapshots", err)
	}
	return sum, nil
}
