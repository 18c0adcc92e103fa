package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
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
	sync      *nodeSync
	done      chan struct{}
	err       error
}

// wait blocks until the node has shut down and returns why.
func (n *node) wait() error {
	<-n.done
	return n.err
}

// startNode opens the database, migrates, restores the route table from the
// newest snapshot (the local last-good file or Postgres), follows the log
// and opens both listeners; when ctx ends it shuts down in order: stop
// accepting and drain in-flight requests, flush the request log, persist
// the table, stop following the log, close the pool, stop a managed
// Postgres.
//
// With DATABASE_URL set and the database unreachable, a node that has a
// local last-good file starts anyway: it serves that table, reports it
// stale in /ready and /api/status, and attaches to the log in the
// background once the database answers.
func startNode(ctx context.Context, cfg Config, log *slog.Logger) (_ *node, err error) {
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	id, err := nodeID(cfg)
	if err != nil {
		return nil, err
	}
	log = log.With("node", id)
	routes := projections.NewRoutes()
	following := &nodeSync{}

	db, err := openDatabase(ctx, cfg, log, false)
	degraded := false
	if err != nil {
		if cfg.DatabaseURL == "" || !databaseUnavailable(err) {
			return nil, err
		}
		local, ok := readLocalSnapshot(snapshotFile(cfg.DataDir), log)
		if !ok {
			return nil, fmt.Errorf("%w (and no local route table in %s to serve until it answers)", err, snapshotFile(cfg.DataDir))
		}
		state, serr := local.State()
		if serr == nil {
			_, serr = routes.Restore(state)
		}
		if serr != nil {
			return nil, fmt.Errorf("%w (and the local route table does not load: %v)", err, serr)
		}
		log.Warn("database unavailable: serving the route table saved in the data directory until it answers",
			"err", err, "position", local.Position, "routes", len(local.Routes), "saved_at", local.TakenAt)
		following.restore(local.TakenAt, err)
		db, degraded = &database{url: cfg.DatabaseURL}, true
	}
	cleanup = append(cleanup, func() { db.close(log) })
	pool, err := newPool(ctx, cfg, db.url)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, pool.Close)
	store := events.NewPostgresStore(pool)
	snaps := events.NewSnapshotStore(pool)
	pers := newPersister(cfg, routes, snaps, id, log)
	// registry is set once the listeners are open (it names their
	// addresses); the handler reports each applied position to it.
	var registry atomic.Pointer[events.NodeRegistry]

	handler := func(_ context.Context, evs []events.Event) error {
		t, err := routes.Apply(evs)
		if err != nil {
			log.Error("rejected a route table; the previous one keeps serving", "err", err)
			return err
		}
		log.Debug("route table swapped", "position", t.Position(), "routes", t.Len())
		pers.changed()
		if reg := registry.Load(); reg != nil {
			reg.Report(t.Position())
		}
		return nil
	}
	// background runs until shutdown; the sequence below waits for it.
	bctx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	stopAll := func() { stopBackground(); background.Wait() }
	// attach ties the table to the log and starts following it, until the
	// shutdown sequence stops the listener (after the proxy has drained).
	attach := func(ctx context.Context) error {
		if degraded {
			src, err := reconcileLocal(ctx, routes, store, snaps, snapshotFile(cfg.DataDir), log)
			if err != nil {
				return err
			}
			following.setSource(src)
		} else {
			src, fileAt, dbAt, err := restoreTable(ctx, routes, snaps, snapshotFile(cfg.DataDir), log)
			if err != nil {
				return err
			}
			pers.known(fileAt, dbAt)
			following.setSource(src)
			if src.Position > 0 {
				log.Info("restored the route table from a snapshot", "source", src.Source, "position", src.Position, "routes", routes.Table().Len())
			}
		}
		listener := events.NewListener(events.ListenerConfig{
			ConnConfig:   pool.Config().ConnConfig,
			Store:        store,
			From:         routes.Table().Position(),
			PollInterval: cfg.PollInterval,
			Logger:       log,
			Handler:      handler,
		})
		if err := listener.Start(bctx); err != nil {
			return err
		}
		following.follow(listener)
		return nil
	}
	cleanup = append(cleanup, func() {
		stopAll()
		following.stop()
	})
	background.Go(func() { pers.run(bctx) })
	if degraded {
		background.Go(func() { attachWhenUp(bctx, db.url, attach, following, log) })
	} else {
		if err := attach(ctx); err != nil {
			return nil, err
		}
		waitCaughtUp(ctx, following.listenerOf(), startupCatchUp, log)
	}

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

	proxyLn, err := net.Listen("tcp", net.JoinHostPort(cfg.ServerHost, strconv.Itoa(cfg.ServerPort)))
	if err != nil {
		return nil, fmt.Errorf("opening proxy listener: %w", err)
	}
	cleanup = append(cleanup, func() { proxyLn.Close() })
	adminLn, err := net.Listen("tcp", net.JoinHostPort(cfg.AdminHost, strconv.Itoa(cfg.AdminPort)))
	if err != nil {
		return nil, fmt.Errorf("opening admin listener: %w", err)
	}
	cleanup = append(cleanup, func() { adminLn.Close() })
	reg, err := events.NewNodeRegistry(events.NodeRegistryConfig{
		Pool: pool, NodeID: id, ProxyAddr: proxyLn.Addr().String(), AdminAddr: adminLn.Addr().String(),
		Version: version, HeartbeatInterval: cfg.HeartbeatInterval, StaleAfter: cfg.NodeStaleAfter, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := reg.Start(bctx); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { reg.Stop(context.Background()) })
	registry.Store(reg)
	reg.Report(routes.Table().Position())

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
	acfg.Snapshots = snaps
	acfg.Cluster = reg
	acfg.Persistence = func() any {
		return struct {
			persistStatus
			Restored restoreSource `json:"restored"`
		}{pers.Status(), following.source()}
	}
	if requestLog != nil {
		acfg.RequestLogs = admin.PostgresRequestLogs{Pool: pool}
		acfg.RequestLogStats = requestLog.Stats
	}
	adm, err := admin.New(acfg, store, routes, following)
	if err != nil {
		return nil, err
	}
	log.Info("isekai node serving", "proxy", proxyLn.Addr().String(), "admin", adminLn.Addr().String(),
		"applied_position", routes.Table().Position(), "version", version)

	n := &node{id: id, proxyAddr: proxyLn.Addr().String(), adminAddr: adminLn.Addr().String(),
		routes: routes, sync: following, done: make(chan struct{})}
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
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		reg.Stop(rctx) // a graceful leave: waits stop counting this node
		rcancel()
		stopAll()
		following.stop()
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
