package admin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// Config configures the admin listener.
type Config struct {
	// NodeID names this node in status and in event metadata (ISEKAI_NODE_ID).
	NodeID string
	// Version is the binary's version, reported by /api/status.
	Version string
	// StoreTimeout bounds every database call of a request, so an outage
	// answers 503 quickly instead of hanging (ADMIN_STORE_TIMEOUT, 3s).
	StoreTimeout time.Duration
	// Features are reported by /api/status, e.g. {"auth": false}.
	Features map[string]bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// RequestLogs serves /api/logs and /api/routes/{id}/stats; nil when
	// request logging is off.
	RequestLogs RequestLogs
	// RequestLogStats reports the request-log pipeline's counters in
	// /api/status; nil when request logging is off.
	RequestLogStats func() events.RequestLogStats
	// Verifier serves GET /api/events/verify (e.g. PostgresVerifier); nil
	// answers 501.
	Verifier ChainVerifier
	// Feed configures the /ws event feed; zero fields take its defaults.
	Feed FeedConfig
	// Snapshots speed up point-in-time reads and rollbacks (?at=): they
	// start from the newest snapshot at or before the point. Nil folds the
	// log from its start.
	Snapshots projections.SnapshotSource
	// Cluster serves GET /api/cluster and ?wait=cluster on writes; nil
	// answers 501 to both.
	Cluster Cluster
	// Persistence reports the node's snapshots and local last-good file in
	// /api/status; nil leaves them out.
	Persistence func() any
}

// RouteReader is the read side of the node's route projection.
type RouteReader interface {
	Table() *projections.RouteTable
	// WaitFor returns once the applied table reaches position.
	WaitFor(ctx context.Context, position int64) error
}

// SyncState is what the node's listener reports about following the log.
type SyncState interface {
	CaughtUp() bool
	Connected() bool
	LastError() string
	// StaleSince is zero while the node follows the log; otherwise it is
	// when the table served was last known current: a node cut off from
	// the database, or started from its local last-good file while the
	// database was down, serves a table that may be stale.
	StaleSince() time.Time
}

// Server is the admin API.
type Server struct {
	cfg     Config
	store   events.Store
	routes  RouteReader
	sync    SyncState
	app     *fiber.App
	log     *slog.Logger
	started time.Time
}

// New builds the admin API; Serve runs it.
func New(cfg Config, store events.Store, routes RouteReader, sync SyncState) (*Server, error) {
	if store == nil || routes == nil || sync == nil {
		return nil, errors.New("admin: store, routes and sync state are required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("admin: NodeID is required")
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, store: store, routes: routes, sync: sync, log: cfg.Logger, started: time.Now()}
	s.app = fiber.New(fiber.Config{
		AppName:               "isekai-admin",
		DisableStartupMessage: true,
		ErrorHandler:          s.errorHandler,
		// Handlers keep strings past the request (event metadata, logs).
		Immutable:      true,
		ReadTimeout:    15 * time.Second,
		WriteTimeout:   15 * time.Second,
		IdleTimeout:    60 * time.Second,
		ReadBufferSize: 16 << 10,
		BodyLimit:      1 << 20,
		// The API is JSON; strict routing keeps /api/routes/ distinct.
		StrictRouting: false,
		CaseSensitive: true,
	})
	s.app.Use(requestID)
	s.app.Get("/health", s.health)
	s.app.Get("/ready", s.ready)
	api := s.app.Group("/api")
	api.Get("/status", s.status)
	api.Get("/cluster", s.clusterView)
	api.Get("/routes", s.listRoutes)
	api.Post("/routes", s.createRoute)
	api.Get("/routes/:id", s.getRoute)
	api.Put("/routes/:id", s.replaceRoute)
	api.Patch("/routes/:id", s.patchRoute)
	api.Delete("/routes/:id", s.deleteRoute)
	api.Get("/routes/:id/history", s.routeHistory)
	api.Post("/routes/:id/revert", s.revertRoute)
	api.Get("/events/verify", s.verifyEvents)
	api.Get("/events", s.listEvents)
	api.Post("/config/rollback", s.rollback)
	api.Get("/config/export", s.exportConfig)
	api.Post("/config/apply", s.applyConfig)
	s.mountLogs(api)
	s.mountFeed(api)
	s.app.Use(func(c *fiber.Ctx) error { return fiber.ErrNotFound })
	return s, nil
}

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.app.Listener(ln) }

// Shutdown stops accepting and waits for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.app.ShutdownWithContext(ctx) }

// envelope is the seed's success envelope; Position is set on writes.
type envelope struct {
	Success  bool  `json:"success"`
	Data     any   `json:"data"`
	Position int64 `json:"position,omitempty"`
}

func ok(c *fiber.Ctx, status int, data any) error {
	return c.Status(status).JSON(envelope{Success: true, Data: data})
}

// storeCtx bounds a database call of one request.
func (s *Server) storeCtx(c *fiber.Ctx) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.UserContext(), s.cfg.StoreTimeout)
}

const headerRequestID = "X-Request-ID"

// requestID keeps a sane client request id or makes one, for the response
// and the metadata of any event the request appends.
func requestID(c *fiber.Ctx) error {
	id := c.Get(headerRequestID)
	if !saneID(id) {
		id = uuid.NewString()
	}
	c.Locals(headerRequestID, id)
	c.Set(headerRequestID, id)
	return c.Next()
}

func saneID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b == '.') {
			return false
		}
	}
	return true
}
