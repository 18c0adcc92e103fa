package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// nodeSync is the node's answer to "am I following the log?" for the admin
// (admin.SyncState): its listener's, once it has one, and before that (a
// node started on its local file while the database is down) the restored
// table's age.
type nodeSync struct {
	mu         sync.Mutex
	listener   *events.Listener
	restored   bool
	restoredAt time.Time
	startErr   string
	src        restoreSource
}

// restore records that the node serves its local file, saved at, because
// the database did not answer (err).
func (s *nodeSync) restore(at time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restored, s.restoredAt, s.startErr = true, at, "database unavailable at start: "+err.Error()
	s.src = restoreSource{Source: "local_file_unverified"}
}

func (s *nodeSync) follow(l *events.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listener = l
}

func (s *nodeSync) setSource(src restoreSource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.src = src
}

func (s *nodeSync) source() restoreSource {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src
}

func (s *nodeSync) listenerOf() *events.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listener
}

// stop stops the listener, if any.
func (s *nodeSync) stop() {
	if l := s.listenerOf(); l != nil {
		l.Stop()
	}
}

func (s *nodeSync) CaughtUp() bool {
	l := s.listenerOf()
	return l != nil && l.CaughtUp()
}

func (s *nodeSync) Connected() bool {
	l := s.listenerOf()
	return l != nil && l.Connected()
}

func (s *nodeSync) LastError() string {
	s.mu.Lock()
	l, startErr := s.listener, s.startErr
	s.mu.Unlock()
	if l == nil {
		return startErr
	}
	if e := l.LastError(); e != "" || l.CaughtUp() {
		return e
	}
	return startErr
}

func (s *nodeSync) StaleSince() time.Time {
	s.mu.Lock()
	l, restored, at := s.listener, s.restored, s.restoredAt
	s.mu.Unlock()
	switch {
	case l == nil && restored, l != nil && restored && !l.CaughtUp():
		return at
	case l == nil:
		return time.Time{}
	}
	return l.StaleSince()
}

// databaseUnavailable reports whether err says the database could not be
// reached (as opposed to, say, a schema newer than this binary).
func databaseUnavailable(err error) bool {
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) || errors.Is(err, events.ErrUnavailable) ||
		errors.Is(err, context.DeadlineExceeded)
}

// attachWhenUp retries migrating the database until it answers, then
// attaches the node to the log (attach), with backoff from 100ms to 5s.
func attachWhenUp(ctx context.Context, url string, attach func(context.Context) error, s *nodeSync, log *slog.Logger) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := migrate(ctx, url, log)
		if err == nil {
			if err = attach(ctx); err == nil {
				log.Info("database available again: following the event log")
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.startErr = "database unavailable: " + err.Error()
		s.mu.Unlock()
		log.Debug("database still unavailable", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// reconcileLocal checks, once the database answers, that the table a node
// restored from its local file is a state of this database's log. If not
// (the database was restored from a backup, or is another cluster's), it
// rebuilds the table from the log — from the newest snapshot — and swaps it
// in whole, so the node goes straight from the old table to the right one.
func reconcileLocal(ctx context.Context, routes *projections.Routes, store events.Store, snaps *events.SnapshotStore, file string, log *slog.Logger) (restoreSource, error) {
	t := routes.Table()
	local, ok := readLocalSnapshot(file, log)
	if ok && local.Position == t.Position() {
		belongsHere, err := belongs(ctx, snaps, local)
		if err != nil {
			return restoreSource{}, err
		}
		if belongsHere {
			return restoreSource{Source: "local_file", Position: local.Position}, nil
		}
	}
	log.Warn("the route table restored from the data directory is not a state of this database's log; rebuilding it from the log",
		"position", t.Position())
	state, stats, err := projections.ReplayState(ctx, store, snaps, projections.At{})
	if err != nil {
		return restoreSource{}, err
	}
	if _, err := routes.Restore(state); err != nil {
		return restoreSource{}, err
	}
	log.Info("rebuilt the route table from the log", "position", state.Position(), "snapshot", stats.SnapshotPosition, "events", stats.Events)
	return restoreSource{Source: "rebuilt", Position: state.Position()}, nil
}
