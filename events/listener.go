package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// ListenerConfig configures a Listener. Zero values take the documented
// defaults.
type ListenerConfig struct {
	// ConnConfig opens the dedicated LISTEN session. It must reach Postgres
	// directly: LISTEN does not survive PgBouncer transaction pooling.
	ConnConfig *pgx.ConnConfig
	// Store is read for catch-up.
	Store Store
	// Handler receives every event after From exactly in position order, in
	// batches. An error leaves the cursor where it was; the same events are
	// offered again at the next wake-up.
	Handler func(ctx context.Context, evs []Event) error
	// From is the position already applied; events after it are delivered.
	From int64
	// Channel is the NOTIFY channel (default NotifyChannel).
	Channel string
	// PollInterval is the safety poll: a catch-up read even when no
	// notification came, and a ping of the LISTEN session (default 5s).
	PollInterval time.Duration
	// BatchSize is the most events read per query (default 1000).
	BatchSize int
	// MaxHandOver is how many events a catch-up gathers into one handler
	// call, in full pages, before it stops at the end of the append it is
	// in (default DefaultMaxHandOver). Whatever the bound, the events of one
	// append reach the handler together.
	MaxHandOver int
	// MinBackoff and MaxBackoff bound the reconnect delay (100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Listener follows the log: it LISTENs on a dedicated session, then catches
// up from its cursor, and catches up again on every notification, every
// reconnect and every PollInterval. Notifications are only wake-ups, so lost
// or duplicate ones are harmless.
type Listener struct {
	cfg    ListenerConfig
	cursor atomic.Int64
	head   atomic.Int64 // newest position seen in a notification or read

	caughtUp  atomic.Bool  // a catch-up has reached the head since start
	syncedAt  atomic.Int64 // unix nanoseconds of the last catch-up that reached the head
	connected atomic.Bool  // the LISTEN session is up
	lastErr   atomic.Value // string

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// NewListener returns a Listener; Start runs it.
func NewListener(cfg ListenerConfig) *Listener {
	if cfg.Channel == "" {
		cfg.Channel = NotifyChannel
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultReadLimit
	}
	if cfg.MaxHandOver <= 0 {
		cfg.MaxHandOver = DefaultMaxHandOver
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ConnConfig != nil {
		cfg.ConnConfig = cfg.ConnConfig.Copy()
		if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
			cfg.ConnConfig.RuntimeParams["application_name"] = "isekai-listener"
		}
	}
	l := &Listener{cfg: cfg}
	l.cursor.Store(cfg.From)
	l.lastErr.Store("")
	return l
}

// Start runs the listener in the background until Stop or ctx ends. It
// returns at once; a database that is down is retried, not an error.
func (l *Listener) Start(ctx context.Context) error {
	if l.cfg.ConnConfig == nil || l.cfg.Store == nil || l.cfg.Handler == nil {
		return errors.New("starting listener: ConnConfig, Store and Handler are required")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return errors.New("starting listener: already started")
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
	return nil
}

// Stop ends the listener and waits for it. It is safe before Start and twice.
func (l *Listener) Stop() {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// Cursor is the position of the last event the handler accepted.
func (l *Listener) Cursor() int64 { return l.cursor.Load() }

// Head is the newest position the listener has heard of.
func (l *Listener) Head() int64 { return max(l.head.Load(), l.cursor.Load()) }

// CaughtUp reports whether a catch-up has reached the head of the log since
// Start: the node has applied everything that was committed before it.
func (l *Listener) CaughtUp() bool { return l.caughtUp.Load() }

// SyncedAt is when a catch-up last reached the head of the log (zero
// before the first): the node's table was current then.
func (l *Listener) SyncedAt() time.Time {
	if ns := l.syncedAt.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// StaleSince is zero while the listener is connected, or before its first
// catch-up (the node is not ready then, rather than stale); after losing
// the session it is SyncedAt, the last time the table was known current.
func (l *Listener) StaleSince() time.Time {
	if !l.CaughtUp() || l.Connected() {
		return time.Time{}
	}
	return l.SyncedAt()
}

// Connected reports whether the LISTEN session is up.
func (l *Listener) Connected() bool { return l.connected.Load() }

// LastError is the most recent error, "" after a successful catch-up.
func (l *Listener) LastError() string { return l.lastErr.Load().(string) }

func (l *Listener) run(ctx context.Context) {
	backoff := l.cfg.MinBackoff
	for ctx.Err() == nil {
		err := l.session(ctx)
		l.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		l.setErr(err)
		l.cfg.Logger.Warn("event listener disconnected; reconnecting", "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, l.cfg.MaxBackoff)
		if err == nil {
			backoff = l.cfg.MinBackoff
		}
	}
}

// session runs one LISTEN session: connect, LISTEN, catch up, then wait for
// notifications with the safety poll as a timeout. It returns on any
// session error.
func (l *Listener) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, l.cfg.ConnConfig)
	cancel()
	if err != nil {
		// The log may still be readable through the store's pool; keep the
		// table fresh by polling while the LISTEN session is down.
		_ = l.catchUp(ctx)
		return fmt.Errorf("connecting listener: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.cfg.Channel}.Sanitize()); err != nil {
		return fmt.Errorf("listening on %s: %w", l.cfg.Channel, err)
	}
	l.connected.Store(true)
	// LISTEN first, then catch up: anything committed after LISTEN wakes
	// us; anything before is read now.
	if err := l.catchUp(ctx); err != nil {
		return err
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, l.cfg.PollInterval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			if pos, perr := strconv.ParseInt(n.Payload, 10, 64); perr == nil {
				if pos <= l.cursor.Load() {
					continue // a duplicate or an echo of what we read already
				}
				l.raiseHead(pos)
			}
		case errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil:
			// Safety poll: prove the session is alive, then read.
			pctx, cancel := context.WithTimeout(ctx, l.cfg.PollInterval)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("pinging listener session: %w", err)
			}
		default:
			return fmt.Errorf("waiting for notification: %w", err)
		}
		if err := l.catchUp(ctx); err != nil && ctx.Err() == nil {
			// A failed read or handler is retried at the next wake-up or
			// poll; the session itself is fine.
			l.cfg.Logger.Warn("event catch-up failed", "err", err)
		}
	}
}

// catchUp reads and hands over every event after the cursor until a read
// comes back short, i.e. the head is reached.
func (l *Listener) catchUp(ctx context.Context) error {
	for {
		// Full pages are gathered into one hand-over, up to MaxHandOver
		// events, so that an append of many events (a rollback, an apply)
		// reaches the handler whole and a node swaps straight from the
		// table before it to the table after it.
		var evs []Event
		full := false
		for {
			page, err := l.cfg.Store.Read(ctx, Filter{After: l.cursor.Load() + int64(len(evs)), Limit: l.cfg.BatchSize})
			if err != nil {
				l.setErr(err)
				return err
			}
			if len(evs) >= l.cfg.MaxHandOver {
				// Past the bound, take only the rest of the last append:
				// its events share one created_at (isekai_append stamps
				// them once), and an append is never split.
				n := 0
				for n < len(page) && page[n].CreatedAt.Equal(evs[len(evs)-1].CreatedAt) {
					n++
				}
				evs = append(evs, page[:n]...)
				full = n < len(page) || len(page) == l.cfg.BatchSize
				if n < len(page) || len(page) < l.cfg.BatchSize {
					break
				}
				continue
			}
			evs = append(evs, page...)
			full = len(page) == l.cfg.BatchSize
			if !full {
				break
			}
		}
		if len(evs) > 0 {
			if err := l.cfg.Handler(ctx, evs); err != nil {
				err = fmt.Errorf("applying events %d..%d: %w", evs[0].Position, evs[len(evs)-1].Position, err)
				l.setErr(err)
				return err
			}
			last := evs[len(evs)-1].Position
			l.cursor.Store(last)
			l.raiseHead(last)
		}
		if !full {
			l.syncedAt.Store(time.Now().UnixNano())
			l.caughtUp.Store(true)
			l.setErr(nil)
			return nil
		}
	}
}

// DefaultMaxHandOver bounds the events handed to the handler at once,
// except that an append is never split: one larger than the bound arrives
// whole.
const DefaultMaxHandOver = 50000

func (l *Listener) raiseHead(pos int64) {
	for {
		h := l.head.Load()
		if pos <= h || l.head.CompareAndSwap(h, pos) {
			return
		}
	}
}

func (l *Listener) setErr(err error) {
	if err == nil {
		l.lastErr.Store("")
		return
	}
	l.lastErr.Store(err.Error())
}

// sleep waits for d, or until ctx ends: it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
