package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

// BenchmarkAppendChained measures single-event appends with the hash chain
// (migration 0003), from 1 and from 8 concurrent writers. pgtest's local
// server runs with fsync off, so this is the cost of the append itself,
// not of the disk; set TEST_DATABASE_URL to measure a real server.
func BenchmarkAppendChained(b *testing.B) {
	benchmarkAppend(b, pgtest.NewMigratedDatabase(b))
}

// BenchmarkAppendUnchained is the baseline: the same appends on a database
// migrated only up to 0002, before the chain.
func BenchmarkAppendUnchained(b *testing.B) {
	benchmarkAppend(b, legacyDatabase(b))
}

func benchmarkAppend(b *testing.B, url string) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	s := events.NewPostgresStore(pool)
	data := json.RawMessage(`{"path":"/users","target_url":"http://127.0.0.1:9/u","methods":["GET"],"timeout":30}`)
	meta := events.Metadata{Actor: "bench", Source: events.SourceAPI, Node: "n1"}
	for _, writers := range []int{1, 8} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			var next atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for w := range writers {
				stream := fmt.Sprintf("route-bench-%d", w)
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						_, err := s.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{
							Stream: stream, ExpectedVersion: events.AnyVersion, Type: "RouteUpdated", Data: data, Metadata: meta,
						}}})
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}
