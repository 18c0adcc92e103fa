package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"gopkg.in/yaml.v3"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// maxApplyAttempts bounds the retries of an apply that lost the race for
// the log's head to another write.
const maxApplyAttempts = 5

// exportCmd prints the current route table as a configuration document.
func exportCmd(ctx context.Context, cfg Config, log *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	format := fs.String("format", "json", "json or yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *format != "json" && *format != "yaml" {
		return fmt.Errorf("--format must be json or yaml, not %q", *format)
	}
	return withStore(ctx, cfg, log, func(store events.Store, snaps projections.SnapshotSource) error {
		t, _, err := projections.ReplayFrom(ctx, store, snaps, projections.At{})
		if err != nil {
			return err
		}
		doc := projections.ExportConfig(t)
		if *format == "yaml" {
			enc := yaml.NewEncoder(stdout)
			enc.SetIndent(2)
			if err := enc.Encode(doc); err != nil {
				return err
			}
			return enc.Close()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	})
}

// applyCmd is `isekai apply` and, with diff set, `isekai diff` (a dry run):
// plan the document against the table at the log's head and append the
// plan in one transaction that checks the head is still there.
func applyCmd(ctx context.Context, cfg Config, log *slog.Logger, args []string, stdout io.Writer, diff bool) error {
	name := "apply"
	if diff {
		name = "diff"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	file := fs.String("f", "", "the configuration document (JSON or YAML)")
	dryRun := fs.Bool("dry-run", false, "print the plan without applying it")
	prune := fs.Bool("prune", true, "delete routes the document does not list")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		return errors.New("-f FILE is required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	doc, err := decodeConfigFile(*file, data)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	return withStore(ctx, cfg, log, func(store events.Store, snaps projections.SnapshotSource) error {
		for attempt := 1; ; attempt++ {
			t, _, err := projections.ReplayFrom(ctx, store, snaps, projections.At{})
			if err != nil {
				return err
			}
			plan, err := projections.PlanApply(t, doc, *prune)
			if err != nil {
				return fmt.Errorf("%s: %w", *file, err)
			}
			if err := plan.ResolveStreams(ctx, store); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "plan at position %d: %s", t.Position(), plan)
			if diff || *dryRun || plan.Empty() {
				return nil
			}
			evs, err := plan.Events(events.Metadata{Actor: "cli", Source: events.SourceApply, Reason: "isekai apply -f " + filepath.Base(*file), Node: cfg.NodeID})
			if err != nil {
				return err
			}
			res, err := store.Append(ctx, events.AppendRequest{Events: evs, CheckHead: true, ExpectedHead: t.Position()})
			if (errors.Is(err, events.ErrHeadMoved) || errors.Is(err, events.ErrConflict)) && attempt < maxApplyAttempts {
				fmt.Fprintln(stdout, "the log moved on; planning again")
				continue
			}
			if err != nil {
				return fmt.Errorf("appending the plan: %w", err)
			}
			fmt.Fprintf(stdout, "applied: %d events, log at position %d\n", len(res.Events), res.Events[len(res.Events)-1].Position)
			return nil
		}
	})
}

// decodeConfigFile reads JSON when the file says so (by extension, or by
// starting with "{"), YAML otherwise.
func decodeConfigFile(name string, data []byte) ([]projections.ConfigEntry, error) {
	ext := strings.ToLower(filepath.Ext(name))
	if ext == ".json" || ext != ".yaml" && ext != ".yml" && strings.HasPrefix(strings.TrimSpace(string(data)), "{") {
		return projections.DecodeConfig(data)
	}
	return projections.DecodeConfigYAML(data)
}

// withStore opens the database as replay does and runs fn on its store.
func withStore(ctx context.Context, cfg Config, log *slog.Logger, fn func(events.Store, projections.SnapshotSource) error) error {
	return withPool(ctx, cfg, log, func(pool *pgxpool.Pool) error {
		return fn(events.NewPostgresStore(pool), events.NewSnapshotStore(pool))
	})
}
