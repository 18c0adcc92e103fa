package projections

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/zakirkun/isekai/events"
)

// SnapshotFormat is the version of the snapshot encoding; a snapshot of
// another format is not used (a rebuild from the log replaces it).
const SnapshotFormat = 1

// maxSnapshotBytes bounds a decoded snapshot, so that a corrupt or hostile
// file cannot exhaust memory (10 000 routes take about 4 MB).
const maxSnapshotBytes = 1 << 30

// Snapshot is a route table as of one log position, in the form kept in
// the snapshots table and in a node's local last-good file.
type Snapshot struct {
	Format   int   `json:"format"`
	Position int64 `json:"position"`
	// EventHash is the hex chain hash of the event at Position: it ties
	// the snapshot to one log, so a node never resumes a log that is not
	// the one its snapshot came from.
	EventHash string    `json:"event_hash"`
	TakenAt   time.Time `json:"taken_at"`
	Node      string    `json:"node,omitempty"`
	// Routes are the table's routes, disabled ones included, each with its
	// version and times.
	Routes []*Route `json:"routes"`
}

// NewSnapshot captures t, whose event at t.Position() has the chain hash
// eventHash.
func NewSnapshot(t *RouteTable, eventHash []byte, node string) Snapshot {
	return Snapshot{
		Format: SnapshotFormat, Position: t.Position(), EventHash: hex.EncodeToString(eventHash),
		TakenAt: time.Now().UTC(), Node: node, Routes: t.List(),
	}
}

// Hash returns EventHash decoded.
func (s Snapshot) Hash() ([]byte, error) { return hex.DecodeString(s.EventHash) }

// Encode returns the snapshot as gzip'd JSON.
func (s Snapshot) Encode() ([]byte, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err := json.NewEncoder(zw).Encode(s); err != nil {
		return nil, fmt.Errorf("encoding snapshot: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("encoding snapshot: %w", err)
	}
	return buf.Bytes(), nil
}

// DecodeSnapshot reads what Encode wrote. It refuses other formats.
func DecodeSnapshot(data []byte) (Snapshot, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return Snapshot{}, fmt.Errorf("decoding snapshot: %w", err)
	}
	var s Snapshot
	dec := json.NewDecoder(io.LimitReader(zr, maxSnapshotBytes))
	if err := dec.Decode(&s); err != nil {
		return Snapshot{}, fmt.Errorf("decoding snapshot: %w", err)
	}
	if s.Format != SnapshotFormat {
		return Snapshot{}, fmt.Errorf("decoding snapshot: format %d, this binary reads %d", s.Format, SnapshotFormat)
	}
	if s.Position < 1 {
		return Snapshot{}, fmt.Errorf("decoding snapshot: position %d", s.Position)
	}
	return s, nil
}

// State returns the fold the snapshot captured, from which events after
// Position continue. It fails on a route that does not validate or a
// duplicate ID: a snapshot only ever holds a table that built.
func (s Snapshot) State() (*RouteState, error) {
	st := NewRouteState()
	st.position = s.Position
	st.sorted = make([]*compiledRoute, 0, len(s.Routes))
	for _, r := range s.Routes {
		if r == nil || r.ID == uuid.Nil {
			return nil, fmt.Errorf("snapshot at %d: a route without an id", s.Position)
		}
		if _, dup := st.routes[r.ID]; dup {
			return nil, fmt.Errorf("snapshot at %d: route %s twice", s.Position, r.ID)
		}
		c := compileRoute(r)
		if c.err != nil {
			return nil, fmt.Errorf("snapshot at %d: route %s: %w", s.Position, r.ID, c.err)
		}
		st.routes[r.ID] = c
		st.sorted = append(st.sorted, c)
	}
	slices.SortFunc(st.sorted, func(a, b *compiledRoute) int { return compareCreated(a.route, b.route) })
	return st, nil
}

// WriteSnapshotFile writes data to path atomically: a temporary file in the
// same directory, synced, then renamed over path, so a crash leaves the old
// file or the new one, never a torn one.
func WriteSnapshotFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing snapshot file: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing snapshot file: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing snapshot file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return nil
}

// ReadSnapshotFile reads and decodes a file WriteSnapshotFile wrote. A
// missing file is an error satisfying errors.Is(err, fs.ErrNotExist).
func ReadSnapshotFile(path string) (Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Snapshot{}, err
	}
	s, err := DecodeSnapshot(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// SnapshotSource finds stored snapshots: an *events.SnapshotStore. Latest
// returns the newest one at or before position (0: any) whose event was
// created at or before until (zero: any).
type SnapshotSource interface {
	Latest(ctx context.Context, position int64, until time.Time) (events.StoredSnapshot, bool, error)
}

// ReplayStats says how a replay got its table.
type ReplayStats struct {
	// SnapshotPosition is the position of the snapshot the replay started
	// from; 0 when it folded the log from its start.
	SnapshotPosition int64 `json:"snapshot_position"`
	// Events is the number of events folded after the snapshot.
	Events int `json:"events"`
}

// ReplayFrom is Replay starting from the newest snapshot at or before at
// that snaps has (nil: none), folding only the events after it. A stored
// snapshot this binary cannot decode is passed over: the replay folds the
// log from its start instead.
func ReplayFrom(ctx context.Context, r EventReader, snaps SnapshotSource, at At) (*RouteTable, ReplayStats, error) {
	state, stats, err := ReplayState(ctx, r, snaps, at)
	if err != nil {
		return nil, stats, err
	}
	t, err := state.Build()
	if err != nil {
		return nil, stats, fmt.Errorf("replaying the log: %w", err)
	}
	return t, stats, nil
}

// ReplayState is ReplayFrom's fold, before the table is built: a node
// restores it (Routes.Restore) and goes on applying events after it.
func ReplayState(ctx context.Context, r EventReader, snaps SnapshotSource, at At) (*RouteState, ReplayStats, error) {
	state := NewRouteState()
	var stats ReplayStats
	if snaps != nil {
		stored, found, err := snaps.Latest(ctx, at.Position, at.Time)
		if err != nil {
			return nil, stats, fmt.Errorf("replaying the log: %w", err)
		}
		if found {
			if snap, err := DecodeSnapshot(stored.Data); err == nil && snap.Position == stored.Position {
				if st, err := snap.State(); err == nil {
					state, stats.SnapshotPosition = st, snap.Position
				}
			}
		}
	}
	f := events.Filter{After: state.Position(), To: at.Position, Until: at.Time, Limit: events.MaxReadLimit, NoMetadata: true}
	fold := NewBatchFold(state)
	for {
		evs, err := r.Read(ctx, f)
		if err != nil {
			return nil, stats, fmt.Errorf("replaying the log: %w", err)
		}
		if err := fold.Add(evs); err != nil {
			return nil, stats, fmt.Errorf("replaying the log: %w", err)
		}
		if len(evs) > 0 {
			f.After = evs[len(evs)-1].Position
		}
		stats.Events += len(evs)
		if len(evs) < events.MaxReadLimit {
			break
		}
	}
	state, err := fold.Finish()
	if err != nil {
		return nil, stats, fmt.Errorf("replaying the log: %w", err)
	}
	return state, stats, nil
}
