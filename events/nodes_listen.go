package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// changes returns the channel closed at the next change worth a re-read.
// A waiter takes it before reading the table, so a change that lands
// between the read and the wait is not missed.
func (r *NodeRegistry) changes() <-chan struct{} {
	r.changedMu.Lock()
	defer r.changedMu.Unlock()
	return r.changed
}

// broadcast wakes every waiter.
func (r *NodeRegistry) broadcast() {
	r.changedMu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.changedMu.Unlock()
}

// listen keeps a LISTEN session on NodesNotifyChannel and broadcasts every
// notification, reconnecting with backoff. Notifications are lost while it
// is down, so it also broadcasts on every (re)connect and disconnect:
// waiters re-read, and poll while it is down.
func (r *NodeRegistry) listen(ctx context.Context) {
	backoff := r.minBackoff
	failing := false
	for ctx.Err() == nil {
		err := r.listenSession(ctx, func() {
			backoff = r.minBackoff
			if failing {
				r.cfg.Logger.Info("node registry listener reconnected", "node", r.cfg.NodeID)
				failing = false
			}
		})
		if r.listening.Swap(false) {
			r.broadcast()
		}
		if ctx.Err() != nil {
			return
		}
		if !failing {
			r.cfg.Logger.Warn("node registry listener disconnected; reconnecting", "node", r.cfg.NodeID, "err", err)
			failing = true
		}
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, r.maxBackoff)
	}
}

// listenSession runs one session: connect, LISTEN, call up, then broadcast
// each notification until the session fails or ctx ends.
func (r *NodeRegistry) listenSession(ctx context.Context, up func()) error {
	cctx, cancel := context.WithTimeout(ctx, nodeOpTimeout)
	conn, err := pgx.ConnectConfig(cctx, r.cfg.ConnConfig)
	cancel()
	if err != nil {
		return fmt.Errorf("connecting node listener: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{NodesNotifyChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listening on %s: %w", NodesNotifyChannel, err)
	}
	r.listening.Store(true)
	r.broadcast() // whatever changed while we were not listening
	up()
	for {
		wctx, cancel := context.WithTimeout(ctx, r.listenPing)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			r.broadcast()
		case errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil:
			// Quiet for a while: prove the session is still alive.
			pctx, cancel := context.WithTimeout(ctx, r.listenPing)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("pinging node listener: %w", err)
			}
		default:
			return fmt.Errorf("waiting for node notification: %w", err)
		}
	}
}
