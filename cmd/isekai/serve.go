package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/zakirkun/isekai/admin"
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/gateway"
	"github.com/zakirkun/isekai/projections"
)

// startupCatchUp bounds how long a starting node waits to apply the log
// before it opens the proxy listener anyway (and reports not ready).
const startupCatchUp = 30 * time.Second

// serve runs one node until ctx ends.
func serve(ctx context.Context, cfg Config, log *slog.Logger) error {
	n, err := startNode(ctx, cfg, log)
	if err != nil {
		return err
	}
	return n.wait()
}

// node is one running gateway node.
type node struct {
	id        string
	proxyAddr string
	adminAddr string
	routes    *projections.Routes
	listener  *events.Listener
	done      chan struct{}
	err       error
}

// wait blocks until the node has shut down and returns why.
func (n *node) wait() error {
	<-n.done
	return n.err
}

// startNode opens the database, migrates, follows the log and opens both
// listeners; when ctx ends it shuts down in order: stop accepting and drain
// in-flight requests, flush the request log, stop following the log, close
// the pool, stop a managed Postgres.
func startNode(ctx context.Context, cfg Config, log *slog.Logger) (_ *node, err error) {
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	db, err := openDatabase(ctx, cfg, log, false)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { db.close(log) })
	id, err := nodeID(cfg)
	if err != nil {
		return nil, err
	}
	log = log.With("node", id)
	pool, err := newPool(ctx, cfg, db.url)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, pool.Close)
	store := events.NewPostgresStore(pool)

	routes := projections.NewRoutes()
	listener := events.NewListener(events.ListenerConfig{
		ConnConfig:   pool.Config().ConnConfig,
		Store:        store,
		PollInterval: cfg.PollInterval,
		Logger:       log,
		Handler: func(_ context.Context, evs []events.Event) error {
			t, err := routes.Apply(evs)
			if err != nil {
				log.Error("rejected a route table; the previous one keeps serving", "err", err)
				return err
			}
			log.Debug("route table swapped", "position", t.Position(), "routes", t.Len())
			return nil
		},
	})
	if err := listener.Start(ctx); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, listener.Stop)
	waitCaughtUp(ctx, listener, startupCatchUp, log)

	var recorder gateway.Recorder
	var requestLog *events.RequestLogWriter
	if cfg.RequestLogEnabled {
		rc := cfg.RequestLog
		rc.SpoolDir = events.RequestLogSpoolDir(cfg.DataDir)
		rc.NodeID = id
		rc.Logger = log
		if requestLog, err = events.NewRequestLogWriter(pool, rc); err != nil {
			return nil, err
		}
		// Started on its own context: the final drain happens in the
		// shutdown sequence below, after the proxy has drained.
		if err := requestLog.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, err
		}
		cleanup = append(cleanup, func() { _ = requestLog.Stop(context.Background()) })
		recorder = requestLogRecorder{w: requestLog, node: id}
	}

	gw, err := gateway.New(gateway.Config{
		ReadTimeout:         cfg.ReadTimeout,
		WriteTimeout:        cfg.WriteTimeout,
		IdleTimeout:         cfg.IdleTimeout,
		MaxHeaderBytes:      cfg.MaxHeaderBytes,
		MaxBodyBytes:        cfg.MaxBodyBytes,
		TrustedProxies:      cfg.TrustedProxies,
		StreamThreshold:     cfg.StreamThreshold,
		Concurrency:         cfg.Concurrency,
		MaxConnsPerTarget:   cfg.UpstreamMaxConns,
		UpstreamIdleTimeout: cfg.UpstreamIdleTimeout,
		Recorder:            recorder,
		LogQuery:            cfg.RequestLogQuery,
		Logger:              log,
	}, func() gateway.Routes { return routes.Table() })
	if err != nil {
		return nil, err
	}
	acfg := admin.Config{
		NodeID:       id,
		Version:      version,
		Logger:       log,
		StoreTimeout: cfg.AdminStoreTimeout,
		Features: map[string]bool{
			"auth": false, "rate_limit": false, "load_balancing": false, "circuit_breaker": false,
			"metrics": false, "tracing": false, "websocket_proxy": false, "event_feed": true, "cache": false, "request_log": cfg.RequestLogEnabled,
		},
	}
	acfg.Verifier = admin.PostgresVerifier{Pool: pool}
	if requestLog != nil {
		acfg.RequestLogs = admin.PostgresRequestLogs{Pool: pool}
		acfg.RequestLogStats = requestLog.Stats
	}
	adm, err := admin.New(acfg, store, routes, listener)
	if err != nil {
		return nil, err
	}
	proxyLn, err := net.Listen("tcp", net.JoinHostPort(cfg.ServerHost, strconv.Itoa(cfg.ServerPort)))
	if err != nil {
		return nil, fmt.Errorf("opening proxy listener: %w", err)
	}
	adminLn, err := net.Listen("tcp", net.JoinHostPort(cfg.AdminHost, strconv.Itoa(cfg.AdminPort)))
	if err != nil {
		proxyLn.Close()
		return nil, fmt.Errorf("opening admin listener: %w", err)
	}
	log.Info("isekai node serving", "proxy", proxyLn.Addr().String(), "admin", adminLn.Addr().String(),
		"applied_position", routes.Table().Position(), "version", version)

	n := &node{id: id, proxyAddr: proxyLn.Addr().String(), adminAddr: adminLn.Addr().String(),
		routes: routes, listener: listener, done: make(chan struct{})}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return gw.Serve(proxyLn) })
	g.Go(func() error { return adm.Serve(adminLn) })
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down: draining in-flight requests", "timeout", cfg.ShutdownTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		return errors.Join(gw.Shutdown(sctx), adm.Shutdown(sctx))
	})
	go func() {
		defer close(n.done)
		n.err = g.Wait()
		if requestLog != nil {
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			if err := requestLog.Stop(sctx); err != nil {
				log.Error("request log: entries lost at shutdown", "err", err)
			}
			cancel()
		}
		listener.Stop()
		pool.Close()
		db.close(log)
		if n.err == nil {
			log.Info("shut down cleanly")
		}
	}()
	return n, nil
}

// waitCaughtUp holds the start until the node has applied the log, so a new
// node does not answer 404 for routes that exist. Past the bound it starts
// anyway and /ready says it is not ready.
func waitCaughtUp(ctx context.Context, l *events.Listener, bound time.Duration, log *slog.Logger) {
	deadline := time.Now().Add(bound)
	for !l.CaughtUp() {
		if ctx.Err() != nil || time.Now().After(deadline) {
			log.Warn("serving before catching up with the event log", "last_error", l.LastError())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
