package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// Routes is the read side of the route projection the data path matches
// against. Match returns the route for a request and how many bytes of path
// its path prefix consumed (for strip_path). The gateway passes host
// lower-cased without port or trailing dot, method as sent (upper case for
// the standard methods), and path decoded and normalized (no dot segments,
// no repeated slashes). The strings are only valid during the call: Match
// must not retain them.
type Routes interface {
	Match(host, method, path string) (r *projections.Route, matched int, ok bool)
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("gateway: server closed")

// Server is the proxy listener: a fiber app with one catch-all handler that
// matches each request against the current route table and proxies it.
type Server struct {
	cfg       Config
	routes    func() Routes
	app       *fiber.App
	fiberHTTP fasthttp.RequestHandler
	upstreams upstreams
	trusted   []netip.Prefix
	log       *slog.Logger

	mu     sync.Mutex
	ln     net.Listener
	closed bool
}

// New builds a Server. routes is called once per request and must be cheap
// and safe for concurrent use (an atomic load of the current table); it may
// return nil while no table is loaded, and the gateway then answers 503.
func New(cfg Config, routes func() Routes) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validating gateway config: %w", err)
	}
	if routes == nil {
		return nil, errors.New("validating gateway config: routes must not be nil")
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, routes: routes, trusted: cfg.TrustedProxies, log: cfg.Logger}
	s.upstreams.new = s.newUpstream
	s.upstreams.live = s.liveTargets

	s.app = fiber.New(fiber.Config{
		ServerHeader:          "", // no Server header of our own
		DisableStartupMessage: true,
		ErrorHandler:          s.handlerError,
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		ReadBufferSize:        cfg.MaxHeaderBytes,
		// With StreamRequestBody, fasthttp's body limit is the size it
		// buffers before handing over a stream; the proxy enforces
		// MaxBodyBytes itself.
		BodyLimit:                    cfg.StreamThreshold,
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true, // bodies are forwarded, never parsed
		Concurrency:                  cfg.Concurrency,
		DisableDefaultDate:           true, // the upstream's Date passes through
		DisableDefaultContentType:    true, // and so does its absence of one
		CaseSensitive:                true, // spares fiber lower-casing every path
		StrictRouting:                true,
		RequestMethods:               fiber.DefaultMethods,
	})
	s.app.Use(s.handle)
	s.fiberHTTP = s.app.Handler()

	srv := s.app.Server()
	srv.Handler = s.serveHTTP
	srv.ErrorHandler = s.readError
	srv.CloseOnShutdown = true
	srv.SecureErrorLogMessage = true
	return s, nil
}

// Handler returns the request handler Serve uses, for serving from other
// listeners (fasthttputil.NewInmemoryListener in tests).
func (s *Server) Handler() fasthttp.RequestHandler { return s.serveHTTP }

// ListenAndServe listens on cfg.ListenAddr and serves until Shutdown.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.ListenAddr, err)
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln until Shutdown, and returns nil then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	s.log.Info("gateway listening", "addr", ln.Addr().String())
	return s.app.Listener(ln)
}

// Shutdown stops accepting connections, waits for in-flight requests to
// finish (responses written during the drain carry Connection: close), then
// closes idle upstream connections. If ctx ends first it returns ctx.Err();
// requests still in flight then end at their own route timeouts. Shutdown
// may be called before Serve and more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()

	err := s.app.ShutdownWithContext(ctx)
	if ln != nil {
		// Serve may not have handed ln to fasthttp yet; closing it makes
		// that Serve return instead of serving on.
		_ = ln.Close()
	}
	s.upstreams.closeIdle()
	if err != nil {
		return fmt.Errorf("draining gateway connections: %w", err)
	}
	return nil
}

// serveHTTP is the fasthttp handler: fiber's, behind a recover (a panic
// would otherwise end the process) and a method gate (fiber answers methods
// it does not know with a plain-text 400 of its own).
func (s *Server) serveHTTP(ctx *fasthttp.RequestCtx) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("gateway handler panicked", "panic", r)
			writeFailure(ctx, failInternal, nil)
		}
	}()
	switch string(ctx.Method()) {
	case fiber.MethodGet, fiber.MethodHead, fiber.MethodPost, fiber.MethodPut,
		fiber.MethodDelete, fiber.MethodOptions, fiber.MethodPatch:
		s.fiberHTTP(ctx)
	case fiber.MethodConnect, fiber.MethodTrace:
		// Never proxied: CONNECT would turn the gateway into a tunnel, and
		// TRACE echoes headers back (cross-site tracing).
		writeFailure(ctx, failMethodNotAllowed, nil)
		s.record(ctx, nil, &logState{start: time.Now(), client: peerAddr(ctx)})
	default:
		writeFailure(ctx, failNotImplemented, nil)
		s.record(ctx, nil, &logState{start: time.Now(), client: peerAddr(ctx)})
	}
}

// handle is the one fiber handler: every request, whatever its path, is
// matched against the projection by proxy.
func (s *Server) handle(c *fiber.Ctx) error {
	s.proxy(c.Context(), c.Method())
	return nil
}
