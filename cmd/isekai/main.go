// Command isekai is the Isekai API gateway: `isekai serve` (the default)
// runs a node, `isekai migrate` applies the schema, `isekai replay` rebuilds
// the route table from the event log and prints it.
//
// This package is wiring only: configuration, start and stop order,
// subcommands.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `isekai - an API gateway whose configuration is an event log in PostgreSQL

Usage:
  isekai [serve]                 run a gateway node (the default)
  isekai migrate                 apply database migrations and exit
  isekai replay [--at POSITION|TIME] [--json] [--from-scratch]
                                 rebuild the route table from the event log
                                 from the newest snapshot at or before
                                 POSITION (or the whole log) and print it
  isekai events verify [--from N] [--to N]
                                 check the log's hash chain; exits 1 and names
                                 the first altered position if it was tampered
  isekai export [--format json|yaml]
                                 print the route table as a configuration
                                 document
  isekai apply -f FILE [--dry-run] [--prune=false]
                                 make the table hold the document's routes,
                                 in one transaction; prune deletes the others
  isekai diff -f FILE            print what apply would change
  isekai postgres                run only the managed local Postgres (under
                                 ISEKAI_DATA_DIR) and print its DATABASE_URL,
                                 for several nodes on one machine
  isekai version                 print the version

Configuration comes from the environment; see README.md.
`

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return 0
	case "serve", "migrate", "replay", "postgres", "events", "export", "apply", "diff":
	default:
		fmt.Fprintf(stderr, "isekai: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "isekai: invalid configuration:\n%v\n", indent(err.Error()))
		return 2
	}
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "migrate":
		err = migrateCmd(ctx, cfg, log)
	case "postgres":
		err = postgresCmd(ctx, cfg, log, stdout)
	case "events":
		err = eventsCmd(ctx, cfg, log, args, stdout)
	case "replay":
		err = replayCmd(ctx, cfg, log, args, stdout)
	case "export":
		err = exportCmd(ctx, cfg, log, args, stdout)
	case "apply", "diff":
		err = applyCmd(ctx, cfg, log, args, stdout, cmd == "diff")
	default:
		err = serve(ctx, cfg, log)
	}
	if err != nil {
		log.Error("isekai "+cmd+" failed", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func indent(s string) string {
	out := "  "
	for _, r := range s {
		out += string(r)
		if r == '\n' {
			out += "  "
		}
	}
	return out
}
