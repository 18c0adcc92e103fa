package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

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
// the log: by actor (0006), by type, by stream, by time.
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
	const sel = "SELECT position FROM events WHERE position > $1 AND "
	for _, tc := range []struct{ name, where, index string }{
		{"actor", "metadata->>'actor' = 'alice' ORDER BY position LIMIT 100", "events_actor_position"},
		{"type", "type = 'route.updated' ORDER BY position LIMIT 100", "events_type_position"},
		{"stream", "stream = 'route-x' ORDER BY position LIMIT 100", "events_stream_version_key"},
		{"until", "created_at <= now() ORDER BY position LIMIT 100", "events_"},
	} {
		var plan []string
		rows, err := conn.Query(ctx, "EXPLAIN "+sel+tc.where, int64(0))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var l string
			_ = rows.Scan(&l)
			plan = append(plan, l)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		p := strings.Join(plan, "\n")
		if !strings.Contains(p, tc.index) || strings.Contains(p, "Seq Scan") {
			t.Errorf("%s: want %s:\n%s", tc.name, tc.index, p)
		}
	}
}
