// Package migrations holds Isekai's database schema as numbered SQL files
// (NNNN_name.sql), embedded in the binary, and the runner that applies them.
//
// Apply runs under a session-level advisory lock, so any number of nodes
// may start at once against one database: exactly one applies each pending
// migration, the others wait for it and find nothing left to do. Each file
// runs in its own transaction together with its row in schema_migrations,
// so a failed migration leaves no trace and is retried at the next start.
//
// Files are never edited once released; a change is a new file. The runner
// refuses a database that has migrations this binary does not know (a newer
// Isekai migrated it), rather than run against a schema it cannot read.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

//go:embed *.sql
var files embed.FS

// lockKey is the advisory lock held for a whole migration run. It differs
// from the append lock (7305692533, taken by isekai_append), so migrating
// never waits for appends in an already migrated database, nor blocks them.
const lockKey int64 = 7305692534

// ErrNewerSchema means the database was migrated by a newer Isekai: it has
// migrations this binary does not know.
var ErrNewerSchema = errors.New("database schema is newer than this binary")

// fileName is NNNN_name.sql; the number is the version.
var fileName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9][a-z0-9_]*)\.sql$`)

// migration is one embedded file.
type migration struct {
	version int
	name    string // the part after the number, recorded in schema_migrations
	file    string
	sql     string
}

var loadEmbedded = sync.OnceValues(func() ([]migration, error) { return load(files) })

// load reads and validates the migrations in fsys, in version order.
func load(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var ms []migration
	byVersion := map[int]string{}
	for _, e := range entries { // sorted by name, hence by version
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil || e.IsDir() {
			return nil, fmt.Errorf("migration file %q: name must be NNNN_name.sql (lower case, digits and _)", e.Name())
		}
		version, _ := strconv.Atoi(m[1])
		if version == 0 {
			return nil, fmt.Errorf("migration file %q: versions start at 0001", e.Name())
		}
		if other, dup := byVersion[version]; dup {
			return nil, fmt.Errorf("migration files %q and %q have the same version %04d", other, e.Name(), version)
		}
		byVersion[version] = e.Name()
		sql, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		if len(sql) == 0 {
			return nil, fmt.Errorf("migration file %q is empty", e.Name())
		}
		ms = append(ms, migration{version: version, name: m[2], file: e.Name(), sql: string(sql)})
	}
	if len(ms) == 0 {
		return nil, errors.New("no migration files")
	}
	return ms, nil
}

// Versions returns the embedded migration file names in the order Apply
// applies them.
func Versions() []string {
	entries, _ := fs.ReadDir(files, ".")
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// Apply applies the pending migrations in order, each in its own
// transaction, and returns the file names it applied (none when the
// database is up to date). It holds a session-level advisory lock for the
// whole run, so concurrent callers on one database migrate it exactly once.
// conn must be a direct session (not through a transaction-pooling proxy,
// which would not keep the session lock) and not in a transaction.
func Apply(ctx context.Context, conn *pgx.Conn) (applied []string, err error) {
	ms, err := loadEmbedded()
	if err != nil {
		return nil, fmt.Errorf("loading migrations: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return nil, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer func() {
		// Released even when ctx is done; if the session is broken, its end
		// releases the lock anyway.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", lockKey); uerr != nil && err == nil {
			err = fmt.Errorf("releasing the migration lock: %w", uerr)
		}
	}()

	// Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can
	// fail with a unique violation in the catalog.
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    int         PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return nil, fmt.Errorf("creating schema_migrations: %w", err)
	}
	done, err := appliedVersions(ctx, conn)
	if err != nil {
		return nil, err
	}
	if err := checkKnown(ms, done); err != nil {
		return nil, err
	}
	for _, m := range ms {
		if _, ok := done[m.version]; ok {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("applying migration %s: %w", m.file, err)
		}
		applied = append(applied, m.file)
	}
	return applied, nil
}

// ApplyURL connects to databaseURL, applies the pending migrations and
// disconnects. It returns the file names it applied.
func ApplyURL(ctx context.Context, databaseURL string) ([]string, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connecting to migrate: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return Apply(ctx, conn)
}

func appliedVersions(ctx context.Context, conn *pgx.Conn) (map[int]string, error) {
	rows, err := conn.Query(ctx, "SELECT version, name FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	done := map[int]string{}
	var version int
	var name string
	_, err = pgx.ForEachRow(rows, []any{&version, &name}, func() error {
		done[version] = name
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	return done, nil
}

// checkKnown refuses a database whose recorded migrations are not a subset
// of ours: it was migrated by another (newer) Isekai.
func checkKnown(ms []migration, done map[int]string) error {
	known := make(map[int]migration, len(ms))
	for _, m := range ms {
		known[m.version] = m
	}
	latest := ms[len(ms)-1]
	recorded := slices.Sorted(maps.Keys(done))
	slices.Reverse(recorded) // report the newest unknown one
	for _, version := range recorded {
		name := done[version]
		m, ok := known[version]
		switch {
		case !ok && version > latest.version:
			return fmt.Errorf("%w: the database has migration %04d_%s, this binary knows up to %s; upgrade Isekai", ErrNewerSchema, version, name, latest.file)
		case !ok:
			return fmt.Errorf("%w: the database has migration %04d_%s, which this binary does not know", ErrNewerSchema, version, name)
		case m.name != name:
			return fmt.Errorf("migration %04d is recorded as %q in the database but is %q in this binary", version, name, m.file)
		}
	}
	return nil
}
