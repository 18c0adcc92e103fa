package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// Cluster is the node registry as the admin reads it (an
// *events.NodeRegistry).
type Cluster interface {
	View(ctx context.Context) (events.ClusterView, error)
	// WaitApplied returns once every live node has applied position, or at
	// ctx's end with the live nodes still behind.
	WaitApplied(ctx context.Context, position int64) ([]events.Node, error)
}

// Bounds of ?timeout= on writes with ?wait=cluster.
const (
	defaultClusterWait = 5 * time.Second
	maxClusterWait     = time.Minute
)

// clusterBody is GET /api/cluster.
type clusterBody struct {
	Head  int64         `json:"head"`
	Live  int           `json:"live"`
	Stale int           `json:"stale"`
	Nodes []events.Node `json:"nodes"`
}

// clusterView lists the nodes of the cluster, live ones first, with their
// applied position and lag behind the log's head.
func (s *Server) clusterView(c *fiber.Ctx) error {
	if s.cfg.Cluster == nil {
		return &apiError{status: fiber.StatusNotImplemented, code: "not_implemented", message: "this node has no node registry"}
	}
	ctx, cancel := s.storeCtx(c)
	defer cancel()
	v, err := s.cfg.Cluster.View(ctx)
	if err != nil {
		return err
	}
	out := clusterBody{Head: v.Head, Nodes: v.Nodes}
	if out.Nodes == nil {
		out.Nodes = []events.Node{}
	}
	for _, n := range v.Nodes {
		if n.Live {
			out.Live++
		} else {
			out.Stale++
		}
	}
	return ok(c, fiber.StatusOK, out)
}

// waitOption is a write's ?wait= and ?timeout=.
type waitOption struct {
	cluster bool
	timeout time.Duration
}

// parseWait reads ?wait=cluster and ?timeout= (a Go duration or seconds,
// default 5s, at most 1m). It runs before a write commits, so a bad value
// changes nothing.
func (s *Server) parseWait(c *fiber.Ctx) (waitOption, error) {
	w := waitOption{timeout: defaultClusterWait}
	switch v := c.Query("wait"); v {
	case "":
	case "cluster":
		if s.cfg.Cluster == nil {
			return w, &apiError{status: fiber.StatusNotImplemented, code: "not_implemented", message: "wait=cluster needs the node registry"}
		}
		w.cluster = true
	default:
		return w, errBadRequest("invalid_query", "wait must be cluster", projections.FieldError{Field: "wait", Message: "must be cluster"})
	}
	if raw := c.Query("timeout"); raw != "" {
		d, err := time.ParseDuration(raw)
		if n, nerr := strconv.Atoi(raw); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
		if err != nil || d <= 0 || d > maxClusterWait {
			msg := "must be a duration from 1ms to " + maxClusterWait.String() + " (e.g. 2s, 500ms)"
			return w, errBadRequest("invalid_query", "timeout "+msg, projections.FieldError{Field: "timeout", Message: msg})
		}
		w.timeout = d
	}
	return w, nil
}

// waitCluster holds a committed write's answer until every live node has
// applied position. Past the timeout it answers 504 naming the laggards;
// the write stays committed (the body says at which position).
func (s *Server) waitCluster(c *fiber.Ctx, w waitOption, position int64) error {
	if !w.cluster {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), w.timeout)
	defer cancel()
	behind, err := s.cfg.Cluster.WaitApplied(ctx, position)
	if err == nil {
		return nil
	}
	names := make([]string, len(behind))
	for i, n := range behind {
		names[i] = fmt.Sprintf("%s (at %d)", n.ID, n.AppliedPosition)
	}
	msg := fmt.Sprintf("committed at position %d, but not applied by every live node within %s", position, w.timeout)
	if len(names) > 0 {
		msg += ": " + strings.Join(names, ", ")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		msg += " (the node registry could not be read)"
	}
	if behind == nil {
		behind = []events.Node{}
	}
	c.Set(headerPosition, strconv.FormatInt(position, 10))
	return &apiError{status: fiber.StatusGatewayTimeout, code: "cluster_timeout", message: msg, position: position, laggards: behind}
}
