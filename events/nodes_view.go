package events

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Node is one row of the registry as seen at one moment.
type Node struct {
	ID string `json:"id"`
	// Instance is the process (one per start) that holds the row.
	Instance  string    `json:"instance"`
	ProxyAddr string    `json:"proxy_addr"`
	AdminAddr string    `json:"admin_addr"`
	Version   string    `json:"version"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	// AppliedPosition is the last log position the node reported applied;
	// AppliedAt when it last moved (nil before the first).
	AppliedPosition int64      `json:"applied_position"`
	AppliedAt       *time.Time `json:"applied_at"`
	HeartbeatAt     time.Time  `json:"heartbeat_at"`
	// StoppedAt is set by a graceful stop.
	StoppedAt *time.Time `json:"stopped_at"`
	// Live: not stopped, and a heartbeat within StaleAfter by the
	// database's clock.
	Live bool `json:"live"`
	// Lag is how many events the node is behind the head of the log.
	Lag int64 `json:"lag"`
	// Self marks the row of the NodeRegistry that read it.
	Self bool `json:"self"`
}

// ClusterView is the registry with the head of the log, read in one statement.
type ClusterView struct {
	Head int64 `json:"head"`
	// Nodes lists live nodes first, then by id.
	Nodes []Node `json:"nodes"`
}

// clusterViewSQL reads the head, the database clock and every node in one
// statement; the LEFT JOIN keeps the head when there are no nodes.
const clusterViewSQL = `SELECT h.head, h.now, n.id, coalesce(n.instance::text, ''),
	coalesce(n.proxy_addr, ''), coalesce(n.admin_addr, ''), coalesce(n.version, ''),
	coalesce(n.hostname, ''), coalesce(n.pid, 0), n.started_at,
	coalesce(n.applied_position, 0), n.applied_at, n.heartbeat_at, n.stopped_at,
	coalesce(n.stopped_at IS NULL AND n.heartbeat_at > h.now - $1::bigint * interval '1 microsecond', false) AS live
FROM (SELECT coalesce(max(position), 0) AS head, now() AS now FROM events) h
LEFT JOIN nodes n ON true
ORDER BY live DESC, n.id`

// ClusterView reads the registry: every node with its liveness and lag.
func (r *NodeRegistry) View(ctx context.Context) (ClusterView, error) {
	v, _, err := r.read(ctx)
	return v, err
}

// read returns the view and the database's clock at the read.
func (r *NodeRegistry) read(ctx context.Context) (ClusterView, time.Time, error) {
	rows, err := r.cfg.Pool.Query(ctx, clusterViewSQL, r.cfg.StaleAfter.Microseconds())
	if err != nil {
		return ClusterView{}, time.Time{}, fmt.Errorf("reading nodes: %w", err)
	}
	defer rows.Close()
	v := ClusterView{Nodes: []Node{}}
	var now time.Time
	self := r.instance.String()
	for rows.Next() {
		var (
			n                    Node
			id                   *string
			pid                  int32
			started, heartbeat   *time.Time
			appliedAt, stoppedAt *time.Time
		)
		if err := rows.Scan(&v.Head, &now, &id, &n.Instance, &n.ProxyAddr, &n.AdminAddr, &n.Version,
			&n.Hostname, &pid, &started, &n.AppliedPosition, &appliedAt, &heartbeat, &stoppedAt, &n.Live); err != nil {
			return ClusterView{}, time.Time{}, fmt.Errorf("reading nodes: %w", err)
		}
		if id == nil {
			continue // no nodes: the head alone
		}
		n.ID, n.PID, n.AppliedAt, n.StoppedAt = *id, int(pid), appliedAt, stoppedAt
		if started != nil {
			n.StartedAt = *started
		}
		if heartbeat != nil {
			n.HeartbeatAt = *heartbeat
		}
		n.Lag = max(v.Head-n.AppliedPosition, 0)
		n.Self = n.ID == r.cfg.NodeID && n.Instance == self
		v.Nodes = append(v.Nodes, n)
	}
	if err := rows.Err(); err != nil {
		return ClusterView{}, time.Time{}, fmt.Errorf("reading nodes: %w", err)
	}
	return v, now, nil
}

// WaitApplied returns nil once every live node has applied position (at
// once when no node is live). When ctx ends first, it returns the live
// nodes still behind at the last read and an error wrapping ctx.Err().
//
// It records the wait in node_waits, which makes the reports that reach
// position NOTIFY, and re-reads the registry whenever a notification on
// NodesNotifyChannel arrives, when a node that is behind would turn stale, every ~100ms while
// the LISTEN session is down, and every second regardless. Each waiter
// reads on its own; waits are meant for writes (a few at a time), not for
// every request.
func (r *NodeRegistry) WaitApplied(ctx context.Context, position int64) ([]Node, error) {
	if position <= 0 {
		return nil, nil
	}
	// Announce the wait, so that reports reaching position NOTIFY (they
	// stay silent otherwise). Without it (the database is down) the wait
	// still ends, by polling.
	id := uuid.New()
	if _, err := r.cfg.Pool.Exec(ctx, nodeWaitBeginSQL, id, position); err == nil {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), nodeOpTimeout)
			defer cancel()
			_, _ = r.cfg.Pool.Exec(dctx, nodeWaitEndSQL, id)
		}()
	}
	var (
		behind  []Node
		readErr error
	)
	for {
		changed := r.changes()
		v, now, err := r.read(ctx)
		next := r.pollDown
		if err == nil {
			behind, readErr = behind[:0], nil
			for _, n := range v.Nodes {
				if n.Live && n.AppliedPosition < position {
					behind = append(behind, n)
				}
			}
			if len(behind) == 0 {
				return nil, nil
			}
			if r.listening.Load() {
				next = r.pollUp
				// A laggard that dies stops counting when it turns stale,
				// which no notification announces.
				for _, n := range behind {
					next = min(next, n.HeartbeatAt.Add(r.cfg.StaleAfter).Sub(now)+5*time.Millisecond)
				}
				next = max(next, time.Millisecond)
			}
		} else if ctx.Err() == nil {
			readErr = err
		}
		if ctx.Err() != nil {
			return r.gaveUp(ctx, position, behind, readErr)
		}
		t := time.NewTimer(next)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return r.gaveUp(ctx, position, behind, readErr)
		}
		t.Stop()
	}
}

func (r *NodeRegistry) gaveUp(ctx context.Context, position int64, behind []Node, readErr error) ([]Node, error) {
	switch {
	case readErr != nil:
		return behind, fmt.Errorf("waiting for every live node to apply position %d: %w (last read: %w)", position, ctx.Err(), readErr)
	case len(behind) == 0: // ended during the first read
		return nil, fmt.Errorf("waiting for every live node to apply position %d: %w", position, ctx.Err())
	}
	return behind, fmt.Errorf("waiting for every live node to apply position %d: %d behind: %w", position, len(behind), ctx.Err())
}
