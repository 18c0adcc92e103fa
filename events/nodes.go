package events

// The node registry: the nodes table in the shared Postgres
// (migrations/0004_nodes.sql), where every gateway node registers, reports
// each log position it applies and heartbeats, so that the cluster's
// convergence is visible (NodeRegistry.View) and waitable (WaitApplied).
//
// Liveness is computed with the database clock, never a node's. Reports
// never block the caller: the newest position is kept in memory and sent by
// one goroutine, coalesced and retried across outages. Waiters are woken by
// NOTIFY on isekai_nodes through a dedicated LISTEN session, with a short
// poll while that session is down.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// NodesNotifyChannel is the channel the node functions NOTIFY with "id:position"
// when a node joins, moves or leaves.
const NodesNotifyChannel = "isekai_nodes"

// MaxNodeIDLen bounds a node id, which travels in NOTIFY payloads (capped
// at 8000 bytes by Postgres).
const MaxNodeIDLen = 255

// NodeRegistryConfig configures a NodeRegistry. Zero values take the documented defaults.
type NodeRegistryConfig struct {
	// Pool runs reports, heartbeats and reads of the nodes table (required).
	Pool *pgxpool.Pool
	// ConnConfig opens the dedicated LISTEN session (application_name
	// "isekai-cluster" unless set). It must reach Postgres directly: LISTEN
	// does not survive PgBouncer transaction pooling. nil uses the pool's.
	ConnConfig *pgx.ConnConfig
	// NodeID names this node (ISEKAI_NODE_ID; required, at most
	// MaxNodeIDLen bytes). Two processes must not share one.
	NodeID string
	// ProxyAddr, AdminAddr and Version are shown in the node list.
	ProxyAddr, AdminAddr, Version string
	// HeartbeatInterval is how often the node refreshes its row when it has
	// no position to report (default 2s).
	HeartbeatInterval time.Duration
	// StaleAfter is how long after its last heartbeat a node stops counting
	// as live (default 10s). It must exceed HeartbeatInterval.
	StaleAfter time.Duration
	// ForgetAfter is how long after its last heartbeat a node's row is
	// deleted, by any node's heartbeat (default 24h). It must exceed
	// StaleAfter.
	ForgetAfter time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

const (
	defaultNodeHeartbeat = 2 * time.Second
	defaultNodeStale     = 10 * time.Second
	defaultNodeForget    = 24 * time.Hour

	// nodeOpTimeout bounds one report, heartbeat or registration, so that a
	// hung connection delays the next report instead of stopping them.
	nodeOpTimeout = 5 * time.Second
	// nodeLeaveTimeout bounds Stop's final write when its ctx has no deadline.
	nodeLeaveTimeout = 5 * time.Second
	// nodeConflictLogEvery throttles the error about a shared node id.
	nodeConflictLogEvery = time.Minute
)

// NodeRegistry is this node's entry in the node registry, and the cluster view
// from it. Start registers and runs the background loops; Report is called
// for every applied position; Stop leaves gracefully.
type NodeRegistry struct {
	cfg       NodeRegistryConfig
	instance  uuid.UUID
	hostname  string
	pid       int
	startedAt time.Time

	position atomic.Int64  // the newest position reported by the node
	wake     chan struct{} // 1-buffered: a position to send

	// Waiters' broadcast: changed is closed and replaced on every
	// notification, LISTEN (re)connect and disconnect, and own report.
	changedMu sync.Mutex
	changed   chan struct{}
	listening atomic.Bool // the LISTEN session is up

	lastConflictLog time.Time // touched by the sender goroutine only

	// Tuning, fixed after New; tests shorten or lengthen them.
	pollDown   time.Duration // waiters' re-read interval while LISTEN is down
	pollUp     time.Duration // waiters' safety re-read while LISTEN is up
	listenPing time.Duration // ping of an idle LISTEN session
	minBackoff time.Duration
	maxBackoff time.Duration

	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{} // closed when both loops have returned
	stopped bool
}

// NewNodeRegistry validates cfg, fills in the defaults and returns a
// NodeRegistry; Start runs it.
func NewNodeRegistry(cfg NodeRegistryConfig) (*NodeRegistry, error) {
	if cfg.Pool == nil {
		return nil, errors.New("configuring node registry: Pool is required")
	}
	if cfg.NodeID == "" || len(cfg.NodeID) > MaxNodeIDLen {
		return nil, fmt.Errorf("configuring node registry: NodeID must be 1 to %d bytes, got %d", MaxNodeIDLen, len(cfg.NodeID))
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = defaultNodeHeartbeat
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = defaultNodeStale
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = defaultNodeForget
	}
	if cfg.StaleAfter <= cfg.HeartbeatInterval {
		return nil, fmt.Errorf("configuring node registry: StaleAfter (%s) must exceed HeartbeatInterval (%s)", cfg.StaleAfter, cfg.HeartbeatInterval)
	}
	if cfg.ForgetAfter <= cfg.StaleAfter {
		return nil, fmt.Errorf("configuring node registry: ForgetAfter (%s) must exceed StaleAfter (%s)", cfg.ForgetAfter, cfg.StaleAfter)
	}
	if cfg.ConnConfig == nil {
		cfg.ConnConfig = cfg.Pool.Config().ConnConfig
	}
	cfg.ConnConfig = cfg.ConnConfig.Copy()
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "isekai-cluster"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	instance, err := uuid.NewRandom()
	if err != nil {
		return nil, fmt.Errorf("configuring node registry: %w", err)
	}
	hostname, _ := os.Hostname()
	return &NodeRegistry{
		cfg:        cfg,
		instance:   instance,
		hostname:   hostname,
		pid:        os.Getpid(),
		wake:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
		pollDown:   100 * time.Millisecond,
		pollUp:     time.Second,
		listenPing: 5 * time.Second,
		minBackoff: 100 * time.Millisecond,
		maxBackoff: 5 * time.Second,
	}, nil
}

// Start registers the node and runs the report, heartbeat and LISTEN loops
// in the background until Stop or ctx ends. It returns at once: a database
// that is down is retried, not an error. A NodeRegistry starts once.
func (r *NodeRegistry) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done != nil || r.stopped {
		return errors.New("starting node registry: already started")
	}
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.startedAt = time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { r.send(ctx) })
	wg.Go(func() { r.listen(ctx) })
	go func() {
		wg.Wait()
		close(r.done)
	}()
	return nil
}

// Report records that the node has applied every event up to position. It
// never blocks: the newest position is kept and sent by the registry's own
// goroutine, one report at a time, so a burst of calls costs one or two
// round trips. Positions lower than one already reported are ignored.
func (r *NodeRegistry) Report(position int64) {
	for {
		cur := r.position.Load()
		if position <= cur {
			return
		}
		if r.position.CompareAndSwap(cur, position) {
			break
		}
	}
	select {
	case r.wake <- struct{}{}:
	default: // a send is already due; it will read the newest position
	}
}

// Stop ends the loops, then marks the node stopped (a graceful leave: it
// stops counting as live at once) with its last position. The final write
// is bounded by ctx (and by 5s when ctx has no deadline); a database that
// is down only costs the mark, and the node then turns stale by itself.
// Stop is safe before Start and twice; call it before closing the Pool.
func (r *NodeRegistry) Stop(ctx context.Context) {
	if !r.halt() {
		return
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, nodeLeaveTimeout)
		defer cancel()
	}
	var ours bool
	err := r.cfg.Pool.QueryRow(ctx, `SELECT isekai_node_leave($1, $2, $3)`,
		r.cfg.NodeID, r.instance, r.position.Load()).Scan(&ours)
	switch {
	case err != nil:
		r.cfg.Logger.Warn("marking the node stopped failed; it will turn stale instead", "node", r.cfg.NodeID, "err", err)
	case !ours:
		r.cfg.Logger.Warn("marking the node stopped: its row is gone or held by another process", "node", r.cfg.NodeID)
	}
}

// halt ends the loops without leaving, as a crash would, and reports
// whether they were running.
func (r *NodeRegistry) halt() bool {
	r.mu.Lock()
	cancel, done, was := r.cancel, r.done, !r.stopped
	r.stopped = true
	r.mu.Unlock()
	if cancel == nil || !was {
		return false
	}
	cancel()
	<-done
	return true
}

// send is the only goroutine that writes the node's row: it registers,
// reports the newest position whenever it moved, and heartbeats when it has
// been quiet for HeartbeatInterval. A failed write is retried with backoff
// and always carries the newest position, so a report lost in an outage is
// re-sent when the database returns.
func (r *NodeRegistry) send(ctx context.Context) {
	var (
		registered bool
		sent       int64 = -1
		beatDue    bool
		failing    bool
		backoff    = r.minBackoff
	)
	beat := time.NewTimer(r.cfg.HeartbeatInterval)
	defer beat.Stop()
	for {
		pos := r.position.Load()
		if !registered || beatDue || pos > sent {
			err := r.write(ctx, pos, !registered, beatDue)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if !failing {
					r.cfg.Logger.Warn("node registry cannot write its row; retrying", "node", r.cfg.NodeID, "err", err)
					failing = true
				}
				if !sleep(ctx, backoff) {
					return
				}
				backoff = min(backoff*2, r.maxBackoff)
				continue
			}
			if failing {
				r.cfg.Logger.Info("node registry writes its row again", "node", r.cfg.NodeID, "position", pos)
				failing = false
			}
			if pos > sent {
				r.broadcast() // local waiters need not wait for the NOTIFY
			}
			registered, sent, beatDue, backoff = true, pos, false, r.minBackoff
			beat.Reset(r.cfg.HeartbeatInterval)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-beat.C:
			beatDue = true
		}
	}
}

const (
	nodeRegisterSQL = `SELECT isekai_node_register($1, $2, $3, $4, $5, $6, $7, $8, $9)`
	nodeReportSQL   = `SELECT isekai_node_report($1, $2, $3)`
	nodeForgetSQL   = `DELETE FROM nodes WHERE heartbeat_at < now() - $1::bigint * interval '1 microsecond'`
	// Waits last at most a minute; older rows were left by a crash.
	nodeForgetWaitsSQL = `DELETE FROM node_waits WHERE since < now() - interval '5 minutes'`
	nodeWaitBeginSQL   = `SELECT isekai_node_wait_begin($1, $2)`
	nodeWaitEndSQL     = `DELETE FROM node_waits WHERE id = $1`
)

// write sends one registration, or one report (with the forgetting of long
// dead nodes when it is a heartbeat), in one round trip. A report that
// finds the row gone registers again.
func (r *NodeRegistry) write(ctx context.Context, pos int64, register, heartbeat bool) error {
	ctx, cancel := context.WithTimeout(ctx, nodeOpTimeout)
	defer cancel()
	if !register {
		var owner pgtype.UUID
		b := &pgx.Batch{}
		b.Queue(nodeReportSQL, r.cfg.NodeID, r.instance, pos).QueryRow(func(row pgx.Row) error {
			return row.Scan(&owner)
		})
		if heartbeat {
			b.Queue(nodeForgetSQL, r.cfg.ForgetAfter.Microseconds())
			b.Queue(nodeForgetWaitsSQL)
		}
		if err := r.cfg.Pool.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("reporting position %d: %w", pos, err)
		}
		switch {
		case owner.Valid && uuid.UUID(owner.Bytes) == r.instance:
			return nil
		case owner.Valid:
			r.conflict(uuid.UUID(owner.Bytes))
			return nil
		}
		r.cfg.Logger.Info("node row is missing; registering again", "node", r.cfg.NodeID)
	}
	_, err := r.cfg.Pool.Exec(ctx, nodeRegisterSQL, r.cfg.NodeID, r.instance,
		r.cfg.ProxyAddr, r.cfg.AdminAddr, r.cfg.Version, r.hostname, r.pid, r.startedAt, pos)
	if err != nil {
		return fmt.Errorf("registering node: %w", err)
	}
	return nil
}

// conflict reports, at most once a minute, that another process holds this
// node's row: two processes run with one node id, and the cluster view
// shows only the other one. Taking the row back would make the two flap.
func (r *NodeRegistry) conflict(owner uuid.UUID) {
	now := time.Now()
	if !r.lastConflictLog.IsZero() && now.Sub(r.lastConflictLog) < nodeConflictLogEvery {
		return
	}
	r.lastConflictLog = now
	r.cfg.Logger.Error("node id is used by two processes: another process took over this node's row, and this node's reports are ignored; give each node its own ISEKAI_NODE_ID",
		"node", r.cfg.NodeID, "instance", r.instance, "other_instance", owner)
}
