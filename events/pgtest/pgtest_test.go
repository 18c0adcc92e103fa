package pgtest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/zakirkun/isekai/events/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func currentDatabase(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var name string
	if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestDatabasesAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	a, b := connect(t, pgtest.NewDatabase(t)), connect(t, pgtest.NewDatabase(t))
	if currentDatabase(t, a) == currentDatabase(t, b) {
		t.Fatal("two tests got the same database")
	}
	if !strings.HasPrefix(currentDatabase(t, a), "isekai_test_") {
		t.Errorf("database %q lacks the isekai_test_ prefix", currentDatabase(t, a))
	}

	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var found bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_in_a') IS NOT NULL").Scan(&found); err != nil || found {
		t.Errorf("a table of one database is visible in the other (%v)", err)
	}

	// The same advisory lock key is free in the other database.
	if _, err := a.Exec(ctx, "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatal(err)
	}
	var got bool
	if err := b.QueryRow(ctx, "SELECT pg_try_advisory_lock(42)").Scan(&got); err != nil || !got {
		t.Errorf("advisory lock 42 taken in one database blocks the other (%v)", err)
	}

	// A NOTIFY reaches listeners of its own database only.
	for _, c := range []*pgx.Conn{a, b} {
		if _, err := c.Exec(ctx, "LISTEN isekai_events"); err != nil {
			t.Fatal(err)
		}
	}
	notifier := connect(t, a.Config().ConnString())
	if _, err := notifier.Exec(ctx, "NOTIFY isekai_events, '7'"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n, err := a.WaitForNotification(wctx); err != nil || n.Payload != "7" {
		t.Errorf("listener in the same database: %v, %v", n, err)
	}
	wctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if n, err := b.WaitForNotification(wctx); err == nil {
		t.Errorf("a listener in another database got %+v", n)
	}
}

func TestDatabaseDroppedAtCleanup(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("user", func(t *testing.T) {
		conn := connect(t, pgtest.NewDatabase(t))
		name = currentDatabase(t, conn)
		// The connection is still open when the drop runs (its Close was
		// registered later, but do not rely on it): WITH (FORCE).
	})
	probe := connect(t, pgtest.NewDatabase(t))
	var exists bool
	if err := probe.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s outlived its test", name)
	}
}

func TestNewMigratedDatabase(t *testing.T) {
	t.Parallel()
	conn := connect(t, pgtest.NewMigratedDatabase(t))
	var events bool
	var migrated int
	if err := conn.QueryRow(t.Context(), "SELECT to_regclass('events') IS NOT NULL, (SELECT count(*) FROM schema_migrations)").Scan(&events, &migrated); err != nil {
		t.Fatal(err)
	}
	if !events || migrated == 0 {
		t.Errorf("events table: %v, migrations recorded: %d", events, migrated)
	}
}

func TestNewServerOutage(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := pgtest.NewServer(t)
	port := srv.Port()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if c, err := pgx.Connect(ctx, srv.URL("isekai")); err == nil {
		c.Close(ctx)
		t.Fatal("connected during the outage")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if srv.Port() != port {
		t.Errorf("port moved from %d to %d", port, srv.Port())
	}
	connect(t, srv.URL("isekai"))
}

// TestExternalServer covers TEST_DATABASE_URL, pointing it at a private
// server in both connection-string forms.
func TestExternalServer(t *testing.T) {
	srv := pgtest.NewServer(t)
	for _, tc := range []struct {
		name, url string
	}{
		{name: "url", url: srv.URL("postgres")},
		{name: "keyword/value", url: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", srv.Port())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(pgtest.EnvURL, tc.url)
			conn := connect(t, pgtest.NewDatabase(t))
			if got := int(conn.Config().Port); got != srv.Port() {
				t.Errorf("database created on port %d, want %d", got, srv.Port())
			}
			if db := currentDatabase(t, conn); !strings.HasPrefix(db, "isekai_test_") {
				t.Errorf("connected to %q, want a fresh isekai_test_ database", db)
			}
		})
	}
}
