package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/projections"
)

// snapshotFile is where a node keeps its last-good route table.
func snapshotFile(dataDir string) string {
	return filepath.Join(dataDir, "state", "routes.snapshot")
}

// persistDelay is how long the persister lets changes settle before it
// writes: under a burst of changes it writes about once per persistDelay.
const persistDelay = time.Second

// persister keeps the node's table outside its memory: in the local
// last-good file (every change, coalesced), and as a snapshot in Postgres
// once the log has moved SnapshotInterval events past the newest one.
type persister struct {
	routes   *projections.Routes
	store    *events.SnapshotStore
	file     string
	node     string
	interval int64
	retain   int
	delay    time.Duration
	log      *slog.Logger
	kick     chan struct{}

	mu     sync.Mutex
	fileAt int64 // position of the table in the local file
	dbAt   int64 // newest snapshot position known in Postgres
	status persistStatus
}

// persistStatus is what /api/status shows of the persister.
type persistStatus struct {
	File            string    `json:"file"`
	FilePosition    int64     `json:"file_position"`
	FileWrittenAt   time.Time `json:"file_written_at,omitzero"`
	Interval        int64     `json:"interval"`
	NewestPosition  int64     `json:"newest_position"`
	SavedByThisNode int       `json:"saved_by_this_node"`
	LastError       string    `json:"last_error,omitempty"`
}

func newPersister(cfg Config, routes *projections.Routes, store *events.SnapshotStore, node string, log *slog.Logger) *persister {
	return &persister{
		routes: routes, store: store, file: snapshotFile(cfg.DataDir), node: node,
		interval: cfg.SnapshotInterval, retain: cfg.SnapshotRetain, delay: persistDelay,
		log: log, kick: make(chan struct{}, 1),
	}
}

// changed tells the persister that the table moved. It never blocks.
func (p *persister) changed() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run persists after each change until ctx ends, then once more.
func (p *persister) run(ctx context.Context) {
	final := func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		p.persist(fctx)
	}
	for {
		select {
		case <-ctx.Done():
			final()
			return
		case <-p.kick:
		}
		select {
		case <-ctx.Done():
			final()
			return
		case <-time.After(p.delay):
		}
		p.persist(ctx)
	}
}

// persist writes what is due. Without the event's hash (the database is
// down) it writes nothing: the next change retries.
func (p *persister) persist(ctx context.Context) {
	t := p.routes.Table()
	pos := t.Position()
	p.mu.Lock()
	fileDue := pos > 0 && pos != p.fileAt
	dbDue := pos > 0 && p.interval > 0 && pos-p.dbAt >= p.interval
	p.mu.Unlock()
	if !fileDue && !dbDue {
		return
	}
	hash, found, err := p.store.EventHash(ctx, pos)
	if err != nil || !found {
		if err == nil {
			err = errors.New("the log has no event at the table's position")
		}
		p.fail(err)
		return
	}
	snap := projections.NewSnapshot(t, hash, p.node)
	data, err := snap.Encode()
	if err != nil {
		p.fail(err)
		return
	}
	if fileDue {
		if err := projections.WriteSnapshotFile(p.file, data); err != nil {
			p.fail(err)
		} else {
			p.mu.Lock()
			p.fileAt = pos
			p.status.FileWrittenAt = snap.TakenAt
			p.mu.Unlock()
		}
	}
	if dbDue {
		p.saveToDB(ctx, pos, hash, t.Len(), data)
	}
}

func (p *persister) saveToDB(ctx context.Context, pos int64, hash []byte, routes int, data []byte) {
	saved, err := p.store.Save(ctx, events.StoredSnapshot{
		Position: pos, EventHash: hash, Format: projections.SnapshotFormat, Routes: routes, Data: data, Node: p.node,
	}, p.interval)
	if err != nil {
		p.fail(err)
		return
	}
	newest := pos
	if !saved {
		// Another node wrote one (or holds the lock): learn where it is.
		s, err := p.store.Summary(ctx)
		if err != nil {
			p.fail(err)
			return
		}
		newest = s.Newest
	}
	p.mu.Lock()
	p.dbAt = max(p.dbAt, newest)
	if saved {
		p.status.SavedByThisNode++
	}
	p.status.LastError = ""
	p.mu.Unlock()
	if saved {
		p.log.Info("wrote a route table snapshot", "position", pos, "routes", routes, "bytes", len(data))
		if n, err := p.store.Prune(ctx, p.retain, 10*p.interval); err != nil {
			p.fail(err)
		} else if n > 0 {
			p.log.Info("pruned route table snapshots", "deleted", n)
		}
	}
}

func (p *persister) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status.LastError != err.Error() {
		p.log.Warn("persisting the route table", "err", err)
	}
	p.status.LastError = err.Error()
}

// known records positions learned at start: the local file's and the
// newest snapshot's in Postgres.
func (p *persister) known(file, db int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fileAt, p.dbAt = max(p.fileAt, file), max(p.dbAt, db)
}

// Status reports the persister for /api/status.
func (p *persister) Status() persistStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.File, s.FilePosition, s.Interval, s.NewestPosition = p.file, p.fileAt, p.interval, p.dbAt
	return s
}

// readLocalSnapshot reads the node's last-good file; found is false when
// there is none, or it is unreadable (logged: the log rebuilds the table).
func readLocalSnapshot(file string, log *slog.Logger) (projections.Snapshot, bool) {
	s, err := projections.ReadSnapshotFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return s, false
	}
	if err != nil {
		log.Warn("ignoring the local route table snapshot", "err", err)
		return s, false
	}
	return s, true
}

// belongs reports whether snapshot s was taken from this database's log:
// the log has an event at its position with the hash it names.
func belongs(ctx context.Context, store *events.SnapshotStore, s projections.Snapshot) (bool, error) {
	want, err := s.Hash()
	if err != nil {
		return false, nil
	}
	got, found, err := store.EventHash(ctx, s.Position)
	if err != nil {
		return false, err
	}
	return found && bytes.Equal(got, want), nil
}

// restoreSource says where a node's first table came from.
type restoreSource struct {
	Source   string `json:"source"` // "local_file", "snapshot", "log"
	Position int64  `json:"position"`
}

// restoreTable gives routes the best starting point the database confirms:
// the local file when it belongs to this log and is newer than the newest
// snapshot in Postgres, else that snapshot; with neither the table stays
// empty and the listener folds the log from its start. It returns the
// positions it learned for the persister.
func restoreTable(ctx context.Context, routes *projections.Routes, store *events.SnapshotStore, file string, log *slog.Logger) (src restoreSource, fileAt, dbAt int64, err error) {
	src = restoreSource{Source: "log"}
	var best *projections.Snapshot
	if local, ok := readLocalSnapshot(file, log); ok {
		ok, err := belongs(ctx, store, local)
		if err != nil {
			return src, 0, 0, err
		}
		if ok {
			best, fileAt = &local, local.Position
		} else {
			log.Warn("the local route table snapshot is not from this database's log; ignoring it", "file", file, "position", local.Position)
		}
	}
	stored, found, err := store.Latest(ctx, 0, time.Time{})
	if err != nil {
		return src, 0, 0, err
	}
	if found {
		dbAt = stored.Position
		// Decoded only when it is newer than the local file.
		if best == nil || stored.Position > best.Position {
			if snap, err := projections.DecodeSnapshot(stored.Data); err == nil && snap.Position == stored.Position {
				best = &snap
			}
		}
	}
	if best == nil {
		return src, fileAt, dbAt, nil
	}
	state, err := best.State()
	if err == nil {
		_, err = routes.Restore(state)
	}
	if err != nil {
		log.Warn("a route table snapshot did not load; folding the log from its start", "position", best.Position, "err", err)
		return src, fileAt, dbAt, nil
	}
	src = restoreSource{Source: "snapshot", Position: best.Position}
	if best.Position == fileAt {
		src.Source = "local_file"
	}
	return src, fileAt, dbAt, nil
}
