package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/migrations"
	"github.com/zakirkun/isekai/projections"
)

// replayRun measures the cost of history: it appends nevents route events
// (nroutes creates, then updates round-robin) in batches, then times
//   - a replay of the whole log from scratch;
//   - snapshots written as nodes write them by default (every 1000 events
//     for the newest 100, every 10 000 before), then a replay from the
//     newest snapshot, with no tail and with 999 events of tail;
//   - a node's start on that database (restoring the newest snapshot);
//   - point-in-time reads (?at=POSITION, uniformly random positions) through
//     the admin API of that node: one route, and the whole table.
func replayRun(ctx context.Context, dir, db, bin, backend string, nevents, nroutes int) {
	_, err := migrations.ApplyURL(ctx, db)
	check(err)
	pool, err := pgxpool.New(ctx, db)
	check(err)
	defer pool.Close()
	store := events.NewPostgresStore(pool)
	snaps := events.NewSnapshotStore(pool)
	head, err := store.Head(ctx)
	check(err)
	var ids []uuid.UUID
	if head == int64(nevents) {
		fmt.Printf("reusing the log of %d events\n", head)
		ids = routeIDs(ctx, pool, nroutes)
	} else {
		ids = generate(ctx, store, backend, nevents, nroutes)
	}

	fmt.Printf("\nreplay of %d events (%d routes):\n", nevents, nroutes)
	for i := range 3 {
		start := time.Now()
		t, _, err := projections.ReplayFrom(ctx, store, nil, projections.At{})
		check(err)
		fmt.Printf("  from scratch, run %d: %v (table at %d, %d routes)\n", i+1, time.Since(start).Round(time.Millisecond), t.Position(), t.Len())
	}

	_, err = pool.Exec(ctx, `TRUNCATE snapshots`)
	check(err)
	start := time.Now()
	count, bytes := writeSnapshots(ctx, store, snaps, int64(nevents))
	fmt.Printf("  wrote %d snapshots (%.1f MB, %.2f MB each) in %v\n", count, float64(bytes)/1e6, float64(bytes)/1e6/float64(count), time.Since(start).Round(time.Millisecond))
	for _, tc := range []struct {
		name string
		at   projections.At
	}{{"newest snapshot, no tail", projections.At{}}, {"snapshot + 999 events", projections.At{Position: int64(nevents) - 1}}} {
		var ds []time.Duration
		var stats projections.ReplayStats
		for range 5 {
			start := time.Now()
			_, stats, err = projections.ReplayFrom(ctx, store, snaps, tc.at)
			check(err)
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		fmt.Printf("  from the %s: median %v, best %v (snapshot %d + %d events)\n", tc.name, ds[len(ds)/2].Round(time.Millisecond), ds[0].Round(time.Millisecond), stats.SnapshotPosition, stats.Events)
	}

	start = time.Now()
	n := startNode(bin, db, filepath.Join(dir, "replay-node"), 9)
	fmt.Printf("  node start on this log, until /ready: %v\n", time.Since(start).Round(time.Millisecond))
	n.stop()
	start = time.Now()
	n = startNode(bin, db, filepath.Join(dir, "replay-node"), 9)
	fmt.Printf("  node restart (local last-good file), until /ready: %v\n", time.Since(start).Round(time.Millisecond))
	defer n.stop()

	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		k    int
		url  func(pos int64) string
	}{
		{"GET /api/routes/{id}?at=P", 200, func(pos int64) string {
			// A route that exists at pos: the first nroutes events create them.
			id := ids[rng.IntN(min(int(pos), nroutes))]
			return fmt.Sprintf("%s/api/routes/%s?at=%d", n.admin, id, pos)
		}},
		{"GET /api/routes?at=P (whole table)", 50, func(pos int64) string { return fmt.Sprintf("%s/api/routes?at=%d", n.admin, pos) }},
	} {
		var ds []time.Duration
		for range tc.k {
			pos := 1 + rng.Int64N(int64(nevents))
			start := time.Now()
			resp, err := client.Get(tc.url(pos))
			check(err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				log.Fatalf("%s at %d: %d", tc.name, pos, resp.StatusCode)
			}
			ds = append(ds, time.Since(start))
		}
		report(fmt.Sprintf("point-in-time read %s, %d random positions", tc.name, tc.k), ds)
	}
}

// routeIDs reads back the IDs of the first nroutes routes, in order.
func routeIDs(ctx context.Context, pool *pgxpool.Pool, nroutes int) []uuid.UUID {
	rows, err := pool.Query(ctx, `SELECT substr(stream, 7)::uuid FROM events WHERE position <= $1 ORDER BY position`, nroutes)
	check(err)
	var ids []uuid.UUID
	for rows.Next() {
		var id uuid.UUID
		check(rows.Scan(&id))
		ids = append(ids, id)
	}
	check(rows.Err())
	return ids
}

// generate appends nevents route events: nroutes creates, then updates of
// the routes in turn, in appends of 1000 events. It returns the route IDs.
func generate(ctx context.Context, store events.Store, backend string, nevents, nroutes int) []uuid.UUID {
	ids := make([]uuid.UUID, nroutes)
	for i := range ids {
		ids[i] = uuid.New()
	}
	start := time.Now()
	const batch = 1000
	for done := 0; done < nevents; {
		var req events.AppendRequest
		for ; len(req.Events) < batch && done < nevents; done++ {
			i := done % nroutes
			typ := projections.EventRouteUpdated
			if done < nroutes {
				typ = projections.EventRouteCreated
			}
			data, _ := json.Marshal(map[string]any{
				"id": ids[i], "name": fmt.Sprintf("route-%d", i), "path": fmt.Sprintf("/svc/%d", i), "methods": []string{"GET", "POST"},
				"target_url": fmt.Sprintf("%s/v%d", backend, done/nroutes), "strip_path": true, "enabled": true, "priority": 0,
				"rate_limit": 0, "timeout": 30,
			})
			req.Events = append(req.Events, events.Proposed{
				Stream: projections.RouteStream(ids[i]), ExpectedVersion: events.AnyVersion, Type: typ, Data: data,
				Metadata: events.Metadata{Actor: "bench", Source: events.SourceAPI},
			})
		}
		_, err := store.Append(ctx, req)
		check(err)
	}
	d := time.Since(start)
	fmt.Printf("appended %d events in appends of %d: %v (%.0f events/s)\n", nevents, batch, d.Round(time.Millisecond), float64(nevents)/d.Seconds())
	return ids
}

// writeSnapshots folds the log once and saves a snapshot where nodes with
// the default settings would have kept one.
func writeSnapshots(ctx context.Context, store events.Store, snaps *events.SnapshotStore, head int64) (count int, size int64) {
	const interval, retain = 1000, 100
	keep := func(p int64) bool {
		return p%interval == 0 && (p > head-retain*interval || p%(10*interval) == 0)
	}
	state := projections.NewRouteState()
	f := events.Filter{Limit: events.MaxReadLimit}
	for {
		evs, err := store.Read(ctx, f)
		check(err)
		for _, ev := range evs {
			check(state.Apply(ev))
			f.After = ev.Position
			if !keep(ev.Position) {
				continue
			}
			t, err := state.Build()
			check(err)
			h, _, err := snaps.EventHash(ctx, ev.Position)
			check(err)
			data, err := projections.NewSnapshot(t, h, "bench").Encode()
			check(err)
			saved, err := snaps.Save(ctx, events.StoredSnapshot{Position: ev.Position, EventHash: h, Format: projections.SnapshotFormat, Routes: t.Len(), Data: data, Node: "bench"}, 0)
			check(err)
			if saved {
				count++
				size += int64(len(data))
			}
		}
		if len(evs) < events.MaxReadLimit {
			return count, size
		}
	}
}
