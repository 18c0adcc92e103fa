package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/events/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func newPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func newStore(t testing.TB) (*events.PostgresStore, *pgxpool.Pool) {
	pool := newPool(t, pgtest.NewMigratedDatabase(t))
	return events.NewPostgresStore(pool), pool
}

func TestPostgresStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) events.Store { s, _ := newStore(t); return s })
}

// The log is immutable in the database itself, whatever client writes.
func TestEventsAreImmutable(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	if _, err := s.Append(ctx, events.AppendRequest{Events: []events.Proposed{{Stream: "s", Type: "t", Data: json.RawMessage(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, sql string }{
		{name: "update", sql: `UPDATE events SET type = 'x'`},
		{name: "delete", sql: `DELETE FROM events`},
		{name: "truncate", sql: `TRUNCATE events`},
	} {
		_, err := pool.Exec(ctx, tc.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "IS403" {
			t.Errorf("%s: err = %v, want IS403 immutability error", tc.name, err)
		}
	}
	if h, _ := s.Head(ctx); h != 1 {
		t.Errorf("head = %d after tampering attempts, want 1", h)
	}
}

// An append to a database that is gone reports ErrUnavailable promptly.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	url := srv.URL("isekai")
	if _, err := migrateURL(url); err != nil {
		t.Fatal(err)
	}
	s := events.NewPostgresStore(newPool(t, url))
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Append(ctx, events.AppendRequest{Events: []events.Proposed{{Stream: "s", Type: "t", Data: json.RawMessage(`{}`)}}})
	if !errors.Is(err, events.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if _, err := s.Head(ctx); !errors.Is(err, events.ErrUnavailable) {
		t.Errorf("Head err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to report an outage", d)
	}
}

// The audit filters of GET /api/events page through indexes, not a scan of
// the log: by actor (0006), type, stream, and time (a time bound becomes a
// position bound found on created_at, 0007). EXPLAINs Read's own statement.
func TestReadFiltersUseIndexes(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// Whether the planner can use an index, not which plan it prefers on
	// an empty table.
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name  string
		f     events.Filter
		index string
	}{
		{"actor", events.Filter{Actor: "alice"}, "events_actor_position"},
		{"type", events.Filter{Type: "route.updated"}, "events_type_position"},
		{"stream", events.Filter{Stream: "route-x"}, "events_stream_version_key"},
		{"since", events.Filter{Since: hour}, "events_created_at"},
		{"until", events.Filter{Until: hour}, "events_created_at"},
	} {
		q, args := events.ReadQuery(tc.f)
		if p := explain(t, conn.Conn(), q, args...); !strings.Contains(p, tc.index) || strings.Contains(p, "Seq Scan") {
			t.Errorf("%s: want %s:\n%s", tc.name, tc.index, p)
		}
	}
}

// explain returns the plan of sql.
func explain(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "EXPLAIN "+sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, l)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "\n")
}

// created_at never decreases with position, even when the database's clock
// is behind the newest event (an NTP step back, a failover): an append is
// stamped no earlier than the event before it.
func TestCreatedAtNeverGoesBack(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	first := mustAppendOne(t, s)
	// An event from "the future", as if the clock had been an hour ahead.
	ahead := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	if _, err := pool.Exec(ctx, `INSERT INTO events (position, event_id, stream, version, type, data, created_at, hash)
		VALUES ($1, gen_random_uuid(), 'clock', 1, 't', '{}', $2, decode(repeat('00', 32), 'hex'))`, first.Position+1, ahead); err != nil {
		t.Fatal(err)
	}
	next := mustAppendOne(t, s)
	if next.CreatedAt.Before(ahead) {
		t.Fatalf("appended at %v after an event at %v", next.CreatedAt, ahead)
	}
	got, err := s.Read(ctx, events.Filter{After: first.Position})
	if err != nil || len(got) != 2 || !got[1].CreatedAt.Equal(next.CreatedAt) {
		t.Fatalf("stored: %+v, %v", got, err)
	}
	// A time bound finds both by position.
	if got, err := s.Read(ctx, events.Filter{Since: ahead}); err != nil || len(got) != 2 {
		t.Fatalf("since the future event: %d events, %v", len(got), err)
	}
}

func mustAppendOne(t *testing.T, s events.Store) events.Event {
	t.Helper()
	res, err := s.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{
		Stream: "s", ExpectedVersion: events.AnyVersion, Type: "t", Data: json.RawMessage(`{}`),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return res.Events[0]
}
