package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// NotifyChannel is the channel isekai_append NOTIFYs with the new head.
const NotifyChannel = "isekai_events"

// PostgresStore is the Store on PostgreSQL. Appends run the isekai_append
// function (migrations/0001_events.sql) in one round trip: it takes the
// append lock, checks idempotency and expected versions, inserts at the next
// positions and NOTIFYs, all in one transaction.
type PostgresStore struct {
	pool *pgxpool.Pool
}

// NewPostgresStore returns a Store on an already migrated database.
func NewPostgresStore(pool *pgxpool.Pool) *PostgresStore {
	return &PostgresStore{pool: pool}
}

const appendSQL = `SELECT o_position, o_event_id, o_stream, o_version, o_type, o_data, o_metadata, o_created_at, o_duplicate
FROM isekai_append($1, $2, $3, $4, $5, $6, $7)`

// Append implements Store.
func (s *PostgresStore) Append(ctx context.Context, req AppendRequest) (AppendResult, error) {
	n := len(req.Events)
	if n == 0 {
		return AppendResult{}, fmt.Errorf("appending events: %w: nothing to append", ErrInvalidEvent)
	}
	ids := make([]uuid.UUID, n)
	streams := make([]string, n)
	expected := make([]int64, n)
	types := make([]string, n)
	data := make([]string, n)
	metas := make([]string, n)
	for i, p := range req.Events {
		if p.Stream == "" || p.Type == "" || p.ExpectedVersion < AnyVersion || !json.Valid(p.Data) {
			return AppendResult{}, fmt.Errorf("appending events: %w: event %d needs a stream, a type, an expected version >= -1 and JSON data", ErrInvalidEvent, i)
		}
		ids[i] = p.ID
		if ids[i] == uuid.Nil {
			ids[i] = uuid.Must(uuid.NewV7())
		}
		meta, err := json.Marshal(p.Metadata)
		if err != nil {
			return AppendResult{}, fmt.Errorf("appending events: encoding metadata: %w", err)
		}
		streams[i], expected[i], types[i], data[i], metas[i] = p.Stream, p.ExpectedVersion, p.Type, string(p.Data), string(meta)
	}
	var head *int64
	if req.CheckHead {
		head = &req.ExpectedHead
	}
	rows, err := s.pool.Query(ctx, appendSQL, ids, streams, expected, types, data, metas, head)
	if err != nil {
		return AppendResult{}, translate("appending events", err)
	}
	var res AppendResult
	res.Events = make([]Event, 0, n)
	for rows.Next() {
		var (
			e    Event
			d, m []byte
		)
		if err := rows.Scan(&e.Position, &e.ID, &e.Stream, &e.Version, &e.Type, &d, &m, &e.CreatedAt, &res.Duplicate); err != nil {
			rows.Close()
			return AppendResult{}, translate("appending events", err)
		}
		e.Data = json.RawMessage(d)
		if err := json.Unmarshal(m, &e.Metadata); err != nil {
			rows.Close()
			return AppendResult{}, fmt.Errorf("appending events: decoding metadata: %w", err)
		}
		res.Events = append(res.Events, e)
	}
	if err := rows.Err(); err != nil {
		return AppendResult{}, translate("appending events", err)
	}
	return res, nil
}

const (
	selectEvents           = `SELECT position, event_id, stream, version, type, data, metadata, created_at FROM events `
	selectEventsNoMetadata = `SELECT position, event_id, stream, version, type, data, NULL::jsonb, created_at FROM events `
)

// Read implements Store.
func (s *PostgresStore) Read(ctx context.Context, f Filter) ([]Event, error) {
	q, args, limit := readQuery(f)
	// Pages above the default are bulk reads: size them up front.
	capacity := 0
	if limit > DefaultReadLimit {
		capacity = limit
	}
	return s.query(ctx, "reading events", capacity, q, args...)
}

// readQuery is the statement Read runs for f, its arguments, and its limit.
func readQuery(f Filter) (q string, args []any, limit int) {
	limit = f.Limit
	if limit <= 0 {
		limit = DefaultReadLimit
	}
	limit = min(limit, MaxReadLimit)
	q = selectEvents + `WHERE position > $1`
	if f.NoMetadata {
		q = selectEventsNoMetadata + `WHERE position > $1`
	}
	args = []any{f.After}
	if f.Stream != "" {
		args = append(args, f.Stream)
		q += ` AND stream = $` + strconv.Itoa(len(args))
	}
	if f.Type != "" {
		args = append(args, f.Type)
		q += ` AND type = $` + strconv.Itoa(len(args))
	}
	if f.To > 0 {
		args = append(args, f.To)
		q += ` AND position <= $` + strconv.Itoa(len(args))
	}
	if f.Actor != "" {
		args = append(args, f.Actor)
		q += ` AND metadata->>'actor' = $` + strconv.Itoa(len(args))
	}
	// created_at does not decrease with position (0007), so a time bound is
	// also a position bound, found on the created_at index: the read walks
	// only that range of the position index instead of filtering the log.
	if !f.Since.IsZero() {
		args = append(args, f.Since)
		n := strconv.Itoa(len(args))
		q += ` AND created_at >= $` + n + ` AND position >= (SELECT coalesce(min(position), 9223372036854775807) FROM events
			WHERE created_at = (SELECT min(created_at) FROM events WHERE created_at >= $` + n + `))`
	}
	if !f.Until.IsZero() {
		args = append(args, f.Until)
		n := strconv.Itoa(len(args))
		q += ` AND created_at <= $` + n + ` AND position <= (` + positionAtSQL(n) + `)`
	}
	args = append(args, limit)
	q += ` ORDER BY position LIMIT $` + strconv.Itoa(len(args))
	return q, args, limit
}

// ReadStream implements Store.
func (s *PostgresStore) ReadStream(ctx context.Context, stream string) ([]Event, error) {
	return s.query(ctx, "reading stream", 0, selectEvents+`WHERE stream = $1 ORDER BY version`, stream)
}

// Head implements Store.
func (s *PostgresStore) Head(ctx context.Context) (int64, error) {
	var head int64
	err := s.pool.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM events`).Scan(&head)
	if err != nil {
		return 0, translate("reading head", err)
	}
	return head, nil
}

// PositionAt implements Store.
func (s *PostgresStore) PositionAt(ctx context.Context, t time.Time) (int64, error) {
	var pos int64
	err := s.pool.QueryRow(ctx, positionAtSQL("1"), t).Scan(&pos)
	if err != nil {
		return 0, translate("finding the position at a time", err)
	}
	return pos, nil
}

// positionAtSQL selects the position of the last event created at or before
// the time in parameter $n (0 for none). Events of one append share a
// created_at; both lookups run on the created_at index.
func positionAtSQL(n string) string {
	return `SELECT coalesce(max(position), 0) FROM events
		WHERE created_at = (SELECT max(created_at) FROM events WHERE created_at <= $` + n + `)`
}

func (s *PostgresStore) query(ctx context.Context, what string, capacity int, q string, args ...any) ([]Event, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, translate(what, err)
	}
	out, err := scanEvents(rows, capacity)
	if err != nil {
		return nil, translate(what, err)
	}
	return out, nil
}

// scanEvents reads rows of selectEvents. capacity sizes the result up
// front: bulk readers (replays) read pages of thousands of events, and
// growing a slice of them by doubling cost more than reading them.
func scanEvents(rows pgx.Rows, capacity int) ([]Event, error) {
	defer rows.Close()
	out := make([]Event, 0, capacity)
	var id pgtype.UUID
	for rows.Next() {
		var (
			e    Event
			d, m []byte
		)
		// The id scans as 16 binary bytes: uuid.UUID would go through its
		// text form.
		if err := rows.Scan(&e.Position, &id, &e.Stream, &e.Version, &e.Type, &d, &m, &e.CreatedAt); err != nil {
			return nil, err
		}
		e.ID = uuid.UUID(id.Bytes)
		e.Data = json.RawMessage(d)
		if len(m) > 0 {
			if err := json.Unmarshal(m, &e.Metadata); err != nil {
				return nil, fmt.Errorf("decoding metadata of event %d: %w", e.Position, err)
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// translate maps database errors to the package's sentinels at the boundary.
func translate(what string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "IS409":
			if pgErr.Hint != "" {
				actual, _ := strconv.ParseInt(pgErr.Detail, 10, 64)
				return fmt.Errorf("%s: %w", what, &ConflictError{Stream: pgErr.Hint, Expected: expectedFromMessage(pgErr.Message), Actual: actual})
			}
			return fmt.Errorf("%s: %w: %s", what, ErrConflict, pgErr.Message)
		case "IS412":
			return fmt.Errorf("%s: %w: %s", what, ErrHeadMoved, pgErr.Message)
		}
		// Connection exceptions, shutdowns, resource exhaustion: the store is
		// unavailable rather than the request wrong.
		if len(pgErr.Code) == 5 {
			switch pgErr.Code[:2] {
			case "08", "53", "57", "58":
				return fmt.Errorf("%s: %w: %v", what, ErrUnavailable, err)
			}
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", what, err)
	}
	// Anything else that is not a server-side SQL error (refused or reset
	// connections, timeouts, a closed pool) means the database cannot be
	// reached right now.
	return fmt.Errorf("%s: %w: %v", what, ErrUnavailable, err)
}

// expectedFromMessage recovers the expected version from IS409's message
// "stream S is at version A, expected E".
func expectedFromMessage(msg string) int64 {
	for i := len(msg) - 1; i >= 0; i-- {
		if msg[i] == ' ' {
			v, _ := strconv.ParseInt(msg[i+1:], 10, 64)
			return v
		}
	}
	return 0
}
