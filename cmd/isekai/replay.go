package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// replayCmd rebuilds the route table from the log, from scratch, up to --at,
// and prints it.
func replayCmd(ctx context.Context, cfg Config, log *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	at := fs.Int64("at", 0, "stop at this log position (0 = the head)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *at < 0 {
		return fmt.Errorf("--at must be a position >= 0")
	}
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
	table, err := replay(ctx, events.NewPostgresStore(pool), *at)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Position int64                `json:"position"`
			Routes   []*projections.Route `json:"routes"`
		}{table.Position(), table.List()})
	}
	return printTable(stdout, table)
}

// replay folds the log from position 0 up to at (0 = everything).
func replay(ctx context.Context, store events.Store, at int64) (*projections.RouteTable, error) {
	state := projections.NewRouteState()
	var cursor int64
	for {
		evs, err := store.Read(ctx, events.Filter{After: cursor, Limit: events.MaxReadLimit})
		if err != nil {
			return nil, fmt.Errorf("replaying: %w", err)
		}
		for _, ev := range evs {
			if at > 0 && ev.Position > at {
				return build(state)
			}
			if err := state.Apply(ev); err != nil {
				return nil, fmt.Errorf("replaying event %d: %w", ev.Position, err)
			}
			cursor = ev.Position
		}
		if len(evs) < events.MaxReadLimit {
			return build(state)
		}
	}
}

func build(s *projections.RouteState) (*projections.RouteTable, error) {
	t, err := s.Build()
	if err != nil {
		return nil, fmt.Errorf("building the route table: %w", err)
	}
	return t, nil
}

func printTable(w io.Writer, t *projections.RouteTable) error {
	fmt.Fprintf(w, "route table at position %d: %d routes\n\n", t.Position(), t.Len())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMETHODS\tHOST\tPATH\tTARGETS\tENABLED\tVERSION")
	for _, r := range t.List() {
		methods := strings.Join(r.Methods, ",")
		if methods == "" {
			methods = "*"
		}
		host := r.Host
		if host == "" {
			host = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%t\t%s\n", r.ID, methods, host, r.Path, r.TargetURL, r.Enabled, strconv.FormatInt(r.Version, 10))
	}
	return tw.Flush()
}
