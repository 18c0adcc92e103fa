package migrations_test

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/zakirkun/isekai/events/pgtest"
	"github.com/zakirkun/isekai/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Main(m)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestVersions(t *testing.T) {
	t.Parallel()
	versions := migrations.Versions()
	if len(versions) == 0 || versions[0] != "0001_events.sql" {
		t.Fatalf("Versions() = %q, want it to start with 0001_events.sql", versions)
	}
	valid := regexp.MustCompile(`^[0-9]{4}_[a-z0-9][a-z0-9_]*\.sql$`)
	for i, v := range versions {
		if !valid.MatchString(v) {
			t.Errorf("%q is not NNNN_name.sql", v)
		}
		if i > 0 && v[:4] <= versions[i-1][:4] {
			t.Errorf("%q does not come after %q", v, versions[i-1])
		}
	}
}

// TestApplyConcurrentNodes starts three nodes at the same moment on one
// fresh database: exactly one migrates, the others find nothing to do.
func TestApplyConcurrentNodes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)

	const nodes = 3
	conns := make([]*pgx.Conn, nodes)
	for i := range conns {
		conns[i] = connect(t, url)
	}
	applied := make([][]string, nodes)
	errs := make([]error, nodes)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			<-start
			applied[i], errs[i] = migrations.Apply(ctx, conns[i])
		})
	}
	close(start)
	wg.Wait()

	winners := 0
	for i := range nodes {
		if errs[i] != nil {
			t.Errorf("node %d: %v", i, errs[i])
		}
		if len(applied[i]) > 0 {
			winners++
			if !slices.Equal(applied[i], migrations.Versions()) {
				t.Errorf("node %d applied %q, want %q", i, applied[i], migrations.Versions())
			}
		}
	}
	if winners != 1 {
		t.Errorf("%d nodes applied migrations (%q), want exactly 1", winners, applied)
	}

	again, err := migrations.ApplyURL(ctx, url)
	if err != nil || len(again) != 0 {
		t.Errorf("second Apply: applied %q, err %v; want nothing", again, err)
	}

	var events bool
	var recorded []string
	if err := conns[0].QueryRow(ctx, "SELECT to_regclass('events') IS NOT NULL").Scan(&events); err != nil || !events {
		t.Errorf("events table exists: %v (%v)", events, err)
	}
	rows, _ := conns[0].Query(ctx, "SELECT format('%s_%s.sql', lpad(version::text, 4, '0'), name) FROM schema_migrations ORDER BY version")
	recorded, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || !slices.Equal(recorded, migrations.Versions()) {
		t.Errorf("schema_migrations holds %q (%v), want %q", recorded, err, migrations.Versions())
	}
	// The lock is released: a session-level lock would otherwise outlive Apply.
	var free bool
	if err := conns[1].QueryRow(ctx, `SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&free); err != nil || !free {
		t.Errorf("an advisory lock is still held after Apply (%v)", err)
	}
}

func TestEventsAreImmutable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, pgtest.NewMigratedDatabase(t))

	var position int64
	err := conn.QueryRow(ctx, `SELECT o_position FROM isekai_append(
		ARRAY[gen_random_uuid()], ARRAY['route-1'], ARRAY[0]::bigint[], ARRAY['RouteCreated'],
		ARRAY['{"path":"/a"}'::jsonb], ARRAY['{"actor":"test"}'::jsonb], NULL)`).Scan(&position)
	if err != nil || position != 1 {
		t.Fatalf("appending: position %d, err %v", position, err)
	}

	for _, sql := range []string{
		"UPDATE events SET type = 'RouteDeleted'",
		"DELETE FROM events",
		"TRUNCATE events",
	} {
		_, err := conn.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "IS403" {
			t.Errorf("%s: err = %v, want SQLSTATE IS403", sql, err)
		}
	}
	var typ string
	if err := conn.QueryRow(ctx, "SELECT type FROM events WHERE position = 1").Scan(&typ); err != nil || typ != "RouteCreated" {
		t.Errorf("the event after the attempts: type %q, err %v", typ, err)
	}
}

func TestApplyRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewMigratedDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')"); err != nil {
		t.Fatal(err)
	}
	_, err := migrations.ApplyURL(ctx, url)
	if !errors.Is(err, migrations.ErrNewerSchema) || !strings.Contains(err.Error(), "9999_from_the_future") {
		t.Errorf("err = %v, want ErrNewerSchema naming 9999_from_the_future", err)
	}
}

func TestApplyRefusesRenamedMigration(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewMigratedDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, "UPDATE schema_migrations SET name = 'something_else' WHERE version = 1"); err != nil {
		t.Fatal(err)
	}
	_, err := migrations.ApplyURL(ctx, url)
	if err == nil || !strings.Contains(err.Error(), "something_else") {
		t.Errorf("err = %v, want one naming the recorded migration", err)
	}
}

// The node functions of 0004_nodes.sql: register takes a row over,
// report only raises the position of the instance that holds the row and
// tells others who does, leave stops it; each change NOTIFYs isekai_nodes.
func TestNodeFunctions(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewMigratedDatabase(t)
	conn := connect(t, url)
	watch := connect(t, url)
	if _, err := watch.Exec(ctx, "LISTEN isekai_nodes"); err != nil {
		t.Fatal(err)
	}
	const a, b = "0190a1b2-0000-7000-8000-00000000000a", "0190a1b2-0000-7000-8000-00000000000b"
	register := func(instance string, position int64) {
		t.Helper()
		if _, err := conn.Exec(ctx, `SELECT isekai_node_register('n1', $1, 'p:1', 'a:2', 'v1', 'host', 42, now(), $2)`, instance, position); err != nil {
			t.Fatal(err)
		}
	}
	report := func(id, instance string, position int64) *string {
		t.Helper()
		var owner *string
		if err := conn.QueryRow(ctx, `SELECT isekai_node_report($1, $2, $3)::text`, id, instance, position).Scan(&owner); err != nil {
			t.Fatal(err)
		}
		return owner
	}
	row := func() (instance string, position int64, applied, stopped bool) {
		t.Helper()
		err := conn.QueryRow(ctx, `SELECT instance::text, applied_position, applied_at IS NOT NULL, stopped_at IS NOT NULL FROM nodes WHERE id = 'n1'`).
			Scan(&instance, &position, &applied, &stopped)
		if err != nil {
			t.Fatal(err)
		}
		return
	}

	register(a, 0)
	if inst, pos, applied, stopped := row(); inst != a || pos != 0 || applied || stopped {
		t.Errorf("registered: instance %s, position %d, applied_at set %v, stopped %v", inst, pos, applied, stopped)
	}
	if owner := report("n1", a, 5); owner == nil || *owner != a {
		t.Errorf("report by the owner returned %v", owner)
	}
	report("n1", a, 3) // lower: kept at 5, no notification
	if _, pos, applied, _ := row(); pos != 5 || !applied {
		t.Errorf("after reports 5 then 3: position %d, applied_at set %v", pos, applied)
	}
	// Reports notify only once a write waits for a position they reach.
	if _, err := conn.Exec(ctx, `SELECT isekai_node_wait_begin(gen_random_uuid(), 7)`); err != nil {
		t.Fatal(err)
	}
	report("n1", a, 6) // below the wait: silent
	report("n1", a, 7) // reaches it: n1:7
	if owner := report("n1", b, 9); owner == nil || *owner != a {
		t.Errorf("report by another instance returned %v, want the owner %s", owner, a)
	}
	if owner := report("missing", a, 1); owner != nil {
		t.Errorf("report on a missing row returned %v, want NULL", *owner)
	}
	register(b, 2) // a takeover starts from its own position
	if inst, pos, _, _ := row(); inst != b || pos != 2 {
		t.Errorf("after the takeover: instance %s, position %d", inst, pos)
	}
	var left bool
	if err := conn.QueryRow(ctx, `SELECT isekai_node_leave('n1', $1, 1)`, a).Scan(&left); err != nil || left {
		t.Errorf("leave by the old instance: %v, %v; want false", left, err)
	}
	if err := conn.QueryRow(ctx, `SELECT isekai_node_leave('n1', $1, 4)`, b).Scan(&left); err != nil || !left {
		t.Errorf("leave by the owner: %v, %v; want true", left, err)
	}
	if _, pos, _, stopped := row(); pos != 4 || !stopped {
		t.Errorf("after leave: position %d, stopped %v", pos, stopped)
	}

	var payloads []string
	for {
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		n, err := watch.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		payloads = append(payloads, n.Payload)
	}
	if want := []string{"n1:0", "n1:7", "n1:2", "n1:4"}; !slices.Equal(payloads, want) {
		t.Errorf("notifications %q, want %q", payloads, want)
	}
}
