package events_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

func snapshotEnv(t *testing.T, n int) (*pgxpool.Pool, *events.SnapshotStore) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.NewMigratedDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	appendEvents(t, events.NewPostgresStore(pool), n, 10)
	return pool, events.NewSnapshotStore(pool)
}

func save(t *testing.T, s *events.SnapshotStore, pos, minGap int64) bool {
	t.Helper()
	ctx := context.Background()
	h, found, err := s.EventHash(ctx, pos)
	if err != nil || !found {
		t.Fatalf("hash of %d: %v %v", pos, found, err)
	}
	saved, err := s.Save(ctx, events.StoredSnapshot{Position: pos, EventHash: h, Format: 1, Routes: int(pos), Data: []byte{byte(pos)}, Node: "n1"}, minGap)
	if err != nil {
		t.Fatalf("saving at %d: %v", pos, err)
	}
	return saved
}

func TestSnapshotStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, s := snapshotEnv(t, 100)

	if _, found, err := s.Latest(ctx, 0, time.Time{}); err != nil || found {
		t.Fatalf("empty table: found %v, %v", found, err)
	}
	if !save(t, s, 30, 10) || !save(t, s, 60, 10) {
		t.Fatal("a due snapshot was not saved")
	}
	if save(t, s, 65, 10) || save(t, s, 60, 0) || save(t, s, 40, 0) {
		t.Fatal("saved a snapshot within the gap, twice, or behind the newest")
	}
	for _, tc := range []struct {
		pos  int64
		want int64
	}{{0, 60}, {100, 60}, {60, 60}, {59, 30}, {30, 30}, {29, 0}} {
		got, found, err := s.Latest(ctx, tc.pos, time.Time{})
		if err != nil || found != (tc.want > 0) || got.Position != tc.want {
			t.Errorf("latest at or before %d: %d (found %v, %v), want %d", tc.pos, got.Position, found, err, tc.want)
		}
		if found && (got.Routes != int(tc.want) || got.Data[0] != byte(tc.want) || got.Node != "n1" || len(got.EventHash) != 32) {
			t.Errorf("latest at or before %d: %+v", tc.pos, got)
		}
	}
	// By time: the event's created_at decides.
	var t45 time.Time
	if err := pool.QueryRow(ctx, `SELECT created_at FROM events WHERE position = 45`).Scan(&t45); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Latest(ctx, 0, t45); got.Position != 30 {
		t.Errorf("latest at the time of event 45: %d, want 30", got.Position)
	}

	// A hash that is not the event's is refused.
	if _, err := s.Save(ctx, events.StoredSnapshot{Position: 90, EventHash: make([]byte, 32), Format: 1, Data: []byte{1}}, 0); !errors.Is(err, events.ErrInvalidEvent) {
		t.Errorf("saving with a wrong hash: %v", err)
	}
	// A snapshot whose event was altered is not used: the next older one is.
	if _, err := pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER events_immutable;
		UPDATE events SET hash = sha256(hash) WHERE position = 60;
		ALTER TABLE events ENABLE TRIGGER events_immutable`); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Latest(ctx, 0, time.Time{}); got.Position != 30 {
		t.Errorf("latest after event 60 was altered: %d, want 30", got.Position)
	}
	sum, err := s.Summary(ctx)
	if err != nil || sum.Count != 2 || sum.Newest != 60 || sum.OldestPosition != 30 || sum.Bytes != 2 {
		t.Errorf("summary %+v, %v", sum, err)
	}
}

func TestSnapshotSaveOneWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, s := snapshotEnv(t, 20)
	h, _, _ := s.EventHash(ctx, 20)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		saves int
	)
	for range 8 {
		wg.Go(func() {
			saved, err := s.Save(ctx, events.StoredSnapshot{Position: 20, EventHash: h, Format: 1, Data: []byte{1}}, 5)
			if err != nil {
				t.Error(err)
			}
			if saved {
				mu.Lock()
				saves++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if saves != 1 {
		t.Fatalf("%d writers saved the same snapshot", saves)
	}
}

func TestSnapshotPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, s := snapshotEnv(t, 200)
	for p := int64(5); p <= 200; p += 5 {
		save(t, s, p, 5)
	}
	n, err := s.Prune(ctx, 4, 50)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT position FROM snapshots ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for rows.Next() {
		var p int64
		_ = rows.Scan(&p)
		got = append(got, p)
	}
	// The newest 4 (185..200), and the first of each run of 50 before them.
	want := []int64{5, 50, 100, 150, 185, 190, 195, 200}
	if len(got) != len(want) || n != int64(40-len(want)) {
		t.Fatalf("kept %v (deleted %d), want %v", got, n, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("kept %v, want %v", got, want)
		}
	}
	if n, _ := s.Prune(ctx, 4, 50); n != 0 {
		t.Fatalf("a second prune deleted %d", n)
	}
}
