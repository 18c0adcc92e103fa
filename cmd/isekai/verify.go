package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
)

// errChainBroken makes `isekai events verify` exit non-zero on tampering.
var errChainBroken = errors.New("the event log's hash chain is broken")

// eventsCmd runs `isekai events verify [--from N] [--to N]`: it walks the
// hash chain of the log and reports the first position where it was
// altered.
func eventsCmd(ctx context.Context, cfg Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return fmt.Errorf("usage: isekai events verify [--from POSITION] [--to POSITION]")
	}
	fs := flag.NewFlagSet("events verify", flag.ContinueOnError)
	from := fs.Int64("from", 1, "first position to check")
	to := fs.Int64("to", 0, "last position to check (0 = the head)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var res events.VerifyResult
	err := withPool(ctx, cfg, log, func(pool *pgxpool.Pool) (err error) {
		res, err = events.VerifyChain(ctx, pool, *from, *to)
		return err
	})
	if err != nil {
		return err
	}
	if res.OK {
		fmt.Fprintf(stdout, "ok: %d events verified (positions %d..%d, head %d)\n", res.Checked, res.From, res.To, res.Head)
		return nil
	}
	fmt.Fprintf(stdout, "TAMPERED: %s at position %d (%d events before it verified)\n", res.Reason, res.FirstBadPosition, res.Checked)
	return errChainBroken
}
