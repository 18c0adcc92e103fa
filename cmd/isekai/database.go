package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events/pglocal"
	"github.com/zakirkun/isekai/migrations"
)

// database is the node's Postgres: the configured one, or a local server
// the node manages under its data directory.
type database struct {
	url     string
	managed *pglocal.Server
}

// openDatabase opens the node's database and applies the migrations to it.
// A serving node owns its managed Postgres; a one-off command (attach) uses
// the one a running node on the same data directory manages, if any,
// instead of starting its own.
func openDatabase(ctx context.Context, cfg Config, log *slog.Logger, attach bool) (*database, error) {
	db, err := startDatabase(ctx, cfg, log, attach)
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, db.url, log); err != nil {
		db.close(log)
		return nil, err
	}
	return db, nil
}

func startDatabase(ctx context.Context, cfg Config, log *slog.Logger, attach bool) (*database, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	if cfg.DatabaseURL != "" {
		return &database{url: cfg.DatabaseURL}, nil
	}
	if port, ok := pglocal.Running(cfg.DataDir); ok && attach {
		log.Info("using the managed Postgres of the node running on this data directory", "port", port)
		return &database{url: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, pglocal.DefaultDatabase)}, nil
	}
	log.Info("no DATABASE_URL or DB_* set: starting a managed local Postgres", "dir", cfg.DataDir)
	srv, err := pglocal.Start(ctx, pglocal.Config{
		Dir:  cfg.DataDir,
		Port: cfg.ManagedPGPort,
		Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
	})
	if errors.Is(err, pglocal.ErrInUse) {
		return nil, fmt.Errorf("another isekai node is running with ISEKAI_DATA_DIR=%s: give each node its own data directory, and share one database through DATABASE_URL (%w)", cfg.DataDir, err)
	}
	if err != nil {
		return nil, err
	}
	log.Info("managed Postgres is up", "port", srv.Port())
	return &database{url: srv.URL("isekai"), managed: srv}, nil
}

// close stops a managed server; a configured one is left alone.
func (d *database) close(log *slog.Logger) {
	if d == nil || d.managed == nil {
		return
	}
	if err := d.managed.Stop(); err != nil {
		log.Warn("stopping managed Postgres", "err", err)
	}
}

func migrate(ctx context.Context, url string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	applied, err := migrations.ApplyURL(ctx, url)
	if err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	for _, name := range applied {
		log.Info("applied migration", "name", name)
	}
	return nil
}

func newPool(ctx context.Context, cfg Config, url string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	pc.MaxConns = int32(cfg.DBMaxConns)
	pc.MinIdleConns = int32(cfg.DBMinIdleConns)
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > 5*time.Second {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = "isekai"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("opening database pool: %w", err)
	}
	return pool, nil
}

func migrateCmd(ctx context.Context, cfg Config, log *slog.Logger) error {
	db, err := openDatabase(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	db.close(log)
	return nil
}

// postgresCmd runs the managed Postgres alone, in the foreground, so that
// several nodes on one machine can share it: it prints the DATABASE_URL to
// give them and stops the server on SIGINT/SIGTERM.
func postgresCmd(ctx context.Context, cfg Config, log *slog.Logger, stdout io.Writer) error {
	if cfg.DatabaseURL != "" {
		return fmt.Errorf("isekai postgres manages a local server; unset DATABASE_URL and DB_*")
	}
	db, err := openDatabase(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer db.close(log)
	fmt.Fprintf(stdout, "DATABASE_URL=%s\n", db.url)
	<-ctx.Done()
	return nil
}

// withPool runs a one-off command's fn on a pool of the node's database
// (attaching to a running node's managed Postgres when there is one).
func withPool(ctx context.Context, cfg Config, log *slog.Logger, fn func(*pgxpool.Pool) error) error {
	db, err := openDatabase(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	defer db.close(log)
	pool, err := newPool(ctx, cfg, db.url)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}
