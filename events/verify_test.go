package events_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

func proposed(stream string, n int) events.Proposed {
	return events.Proposed{
		Stream: stream, ExpectedVersion: events.AnyVersion, Type: "t.x",
		Data:     json.RawMessage(fmt.Sprintf(`{"n":%d,"name":"日本-%d"}`, n, n)),
		Metadata: events.Metadata{Actor: "tester", Source: events.SourceAPI, Reason: "chain"},
	}
}

// appendEvents appends n events in requests of batch events each.
func appendEvents(t testing.TB, s events.Store, n, batch int) {
	t.Helper()
	for done := 0; done < n; {
		var req events.AppendRequest
		for i := 0; i < batch && done < n; i++ {
			req.Events = append(req.Events, proposed(fmt.Sprintf("route-ü%d", done%7), done))
			done++
		}
		if _, err := s.Append(context.Background(), req); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
}

// tamper runs sql the way someone with table-owner rights would get past
// the immutability trigger.
func tamper(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(context.Background(), `ALTER TABLE events DISABLE TRIGGER events_immutable`); err != nil {
			return err
		}
		tag, err := tx.Exec(context.Background(), sql, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%s changed %d rows, want 1", sql, tag.RowsAffected())
		}
		_, err = tx.Exec(context.Background(), `ALTER TABLE events ENABLE TRIGGER events_immutable`)
		return err
	})
	if err != nil {
		t.Fatalf("tampering: %v", err)
	}
}

func verify(t *testing.T, pool *pgxpool.Pool, from, to int64) events.VerifyResult {
	t.Helper()
	res, err := events.VerifyChain(context.Background(), pool, from, to)
	if err != nil {
		t.Fatalf("VerifyChain(%d, %d): %v", from, to, err)
	}
	return res
}

func wantBroken(t *testing.T, res events.VerifyResult, position int64, reason string) {
	t.Helper()
	if res.OK || res.FirstBadPosition != position || res.Reason != reason || res.Checked != position-res.From {
		t.Fatalf("VerifyChain = %+v; want broken at %d (%s) after %d valid events", res, position, reason, position-res.From)
	}
}

func wantOK(t *testing.T, res events.VerifyResult, from, to int64) {
	t.Helper()
	if !res.OK || res.FirstBadPosition != 0 || res.Reason != "" || res.From != from || res.To != to || res.Checked != to-from+1 {
		t.Fatalf("VerifyChain = %+v; want %d..%d verified", res, from, to)
	}
}

func TestVerifyChainEmptyLog(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t)
	res := verify(t, pool, 0, 0)
	if !res.OK || res.Head != 0 || res.Checked != 0 {
		t.Fatalf("VerifyChain on an empty log = %+v", res)
	}
}

// Concurrent appenders serialize on the append lock; the chain must come
// out whole whatever the interleaving of single and batched appends.
func TestVerifyChainAfterConcurrentAppends(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	const writers, perWriter = 8, 30
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				req := events.AppendRequest{Events: []events.Proposed{proposed(fmt.Sprintf("w%d", w), i)}}
				if i%2 == 1 {
					req.Events = append(req.Events, proposed(fmt.Sprintf("w%d-b", w), i), proposed(fmt.Sprintf("w%d", w), i))
				}
				if _, err := s.Append(context.Background(), req); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	const total = writers * (perWriter/2 + perWriter/2*3)
	res := verify(t, pool, 0, 0)
	wantOK(t, res, 1, total)
	if res.Head != total || len(res.LastHash) != 64 {
		t.Errorf("head %d, last hash %q", res.Head, res.LastHash)
	}
}

// The tamper test of issue 3: disable the trigger, edit one event, enable
// it again. Whatever column was edited, the chain breaks at that event.
func TestVerifyChainDetectsEditedEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sql  string
	}{
		{name: "data", sql: `UPDATE events SET data = '{"n":999}' WHERE position = $1`},
		{name: "data key added", sql: `UPDATE events SET data = data || '{"extra":true}' WHERE position = $1`},
		{name: "metadata", sql: `UPDATE events SET metadata = '{"actor":"mallory"}' WHERE position = $1`},
		{name: "type", sql: `UPDATE events SET type = 'RouteDeleted' WHERE position = $1`},
		{name: "stream", sql: `UPDATE events SET stream = 'route-other' WHERE position = $1`},
		{name: "created_at", sql: `UPDATE events SET created_at = created_at - interval '1 microsecond' WHERE position = $1`},
		{name: "version", sql: `UPDATE events SET version = version + 1000 WHERE position = $1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, pool := newStore(t)
			appendEvents(t, s, 20, 3)
			wantOK(t, verify(t, pool, 0, 0), 1, 20)
			tamper(t, pool, tc.sql, 13)
			wantBroken(t, verify(t, pool, 0, 0), 13, events.ReasonHashMismatch)
			// The prefix before the edit still verifies on its own.
			wantOK(t, verify(t, pool, 0, 12), 1, 12)
			// So does the part after it, anchored at the edited event's
			// stored hash, which nobody changed.
			wantOK(t, verify(t, pool, 14, 0), 14, 20)
		})
	}
}

func TestVerifyChainDetectsDeletedEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		position int64
	}{
		{name: "first", position: 1},
		{name: "middle", position: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, pool := newStore(t)
			appendEvents(t, s, 20, 4)
			tamper(t, pool, `DELETE FROM events WHERE position = $1`, tc.position)
			wantBroken(t, verify(t, pool, 0, 0), tc.position, events.ReasonPositionGap)
			// A range starting right after the hole has no anchor.
			if tc.position > 1 {
				res := verify(t, pool, tc.position+1, 0)
				if res.OK || res.FirstBadPosition != tc.position || res.Reason != events.ReasonPositionGap {
					t.Errorf("range after the hole: %+v", res)
				}
			}
		})
	}
}

// An editor who also recomputes the edited event's hash moves the break to
// the next event, whose stored hash was chained to the original.
func TestVerifyChainDetectsRehashedEvent(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendEvents(t, s, 20, 1)
	tamper(t, pool, `UPDATE events e SET data = '{"n":999}',
		hash = sha256((SELECT p.hash FROM events p WHERE p.position = e.position - 1)
			|| isekai_event_canonical(e.position, e.event_id, e.stream, e.version, e.type, '{"n":999}', e.metadata, e.created_at))
		WHERE position = $1`, 7)
	wantOK(t, verify(t, pool, 0, 7), 1, 7)
	wantBroken(t, verify(t, pool, 0, 0), 8, events.ReasonHashMismatch)
}

// Breaks are found across verification pages (10 000 events each).
func TestVerifyChainAcrossPages(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendEvents(t, s, 20005, 1000)
	wantOK(t, verify(t, pool, 0, 0), 1, 20005)
	wantOK(t, verify(t, pool, 9990, 10010), 9990, 10010)
	tamper(t, pool, `UPDATE events SET type = 'x' WHERE position = $1`, 10001)
	wantBroken(t, verify(t, pool, 0, 0), 10001, events.ReasonHashMismatch)
	tamper(t, pool, `DELETE FROM events WHERE position = $1`, 20000)
	wantBroken(t, verify(t, pool, 10002, 0), 20000, events.ReasonPositionGap)
}

// ChainHash recomputes in Go exactly the hashes isekai_append stored.
func TestChainHashMatchesDatabase(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	appendEvents(t, s, 12, 5)
	checkChainInGo(t, pool, 12)
}

func checkChainInGo(t *testing.T, pool *pgxpool.Pool, want int) {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT position, event_id, stream, version, type, data::text, metadata::text, created_at, hash
		FROM events ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		prev                  [32]byte
		position, version     int64
		id                    uuid.UUID
		stream, typ, data, md string
		createdAt             time.Time
		stored                []byte
		n                     int
	)
	_, err = pgx.ForEachRow(rows, []any{&position, &id, &stream, &version, &typ, &data, &md, &createdAt, &stored}, func() error {
		got := events.ChainHash(prev, position, id, stream, version, typ, data, md, createdAt)
		if hex.EncodeToString(got[:]) != hex.EncodeToString(stored) {
			return fmt.Errorf("position %d: Go hash %x, stored %x", position, got, stored)
		}
		prev = got
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("checked %d events, want %d", n, want)
	}
}

// legacyDatabase is a database as Isekai left it before the hash chain:
// migrations 0001 and 0002 applied and recorded, as the runner does.
func legacyDatabase(t testing.TB) string {
	t.Helper()
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE schema_migrations (
		version    int         PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"events", "request_logs"} {
		sql, err := os.ReadFile(fmt.Sprintf("../migrations/%04d_%s.sql", i+1, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, string(sql)); err != nil {
			t.Fatalf("applying %s: %v", name, err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, i+1, name); err != nil {
			t.Fatal(err)
		}
	}
	return url
}

// Migrating a log written before the chain existed backfills a valid chain,
// and appends after the migration continue it.
func TestMigrationBackfillsChain(t *testing.T) {
	t.Parallel()
	url := legacyDatabase(t)
	pool := newPool(t, url)
	s := events.NewPostgresStore(pool)
	appendEvents(t, s, 25, 4)
	applied, err := migrateURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) == 0 || applied[0] != "0003_event_hash_chain.sql" {
		t.Fatalf("applied %q, want the hash chain first", applied)
	}
	// New sessions: the pool's prepared statements predate the column.
	pool.Reset()
	wantOK(t, verify(t, pool, 0, 0), 1, 25)
	appendEvents(t, s, 5, 2)
	wantOK(t, verify(t, pool, 0, 0), 1, 30)
	checkChainInGo(t, pool, 30)
	var nullable string
	if err := pool.QueryRow(context.Background(), `SELECT is_nullable FROM information_schema.columns
		WHERE table_name = 'events' AND column_name = 'hash'`).Scan(&nullable); err != nil || nullable != "NO" {
		t.Errorf("events.hash is_nullable = %q (%v), want NO", nullable, err)
	}
	// The backfill turned the trigger off only inside the migration.
	_, err = pool.Exec(context.Background(), `UPDATE events SET type = 'x' WHERE position = 1`)
	if err == nil {
		t.Error("events are mutable after the migration")
	}
}
