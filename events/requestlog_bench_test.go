package events

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events/pgtest"
)

func benchEntry(i int) RequestLogEntry {
	return RequestLogEntry{
		Time:            time.Now(),
		NodeID:          "node-a",
		RouteID:         uuid.MustParse("0190c5a2-7d3e-7b1a-9f00-000000000001"),
		Method:          "GET",
		Host:            "api.example.com",
		Path:            fmt.Sprintf("/v1/items/%d", i),
		Status:          200,
		Upstream:        "http://10.0.0.7:9000",
		UpstreamStatus:  200,
		Latency:         1500 * time.Microsecond,
		UpstreamLatency: 1200 * time.Microsecond,
		BytesIn:         120,
		BytesOut:        2048,
		ClientIP:        netip.MustParseAddr("192.0.2.10"),
		UserAgent:       "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		RequestID:       "01J2ZQ3K4M5N6P7Q8R9S0T1V2W",
		TraceID:         "4bf92f3577b34da6a3ce929d0e0e4736",
	}
}

// BenchmarkRequestLogEnqueue measures the request path's cost: Enqueue
// from every core, with the queue drained as fast as a channel allows
// ("accepted"), and with it full ("full", the drop path).
func BenchmarkRequestLogEnqueue(b *testing.B) {
	pool, err := pgxpool.New(context.Background(), "postgres://unused@127.0.0.1:1/x")
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	for _, full := range []bool{false, true} {
		name := "accepted"
		if full {
			name = "full"
		}
		b.Run(name, func(b *testing.B) {
			w, err := NewRequestLogWriter(pool, RequestLogConfig{QueueSize: 4096})
			if err != nil {
				b.Fatal(err)
			}
			stop := make(chan struct{})
			drained := make(chan struct{})
			if full {
				for e := benchEntry(0); w.Enqueue(&e); {
				}
				close(drained)
			} else {
				go func() {
					defer close(drained)
					for {
						select {
						case <-w.queue:
						case <-stop:
							return
						}
					}
				}()
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				e := benchEntry(1)
				for pb.Next() {
					w.Enqueue(&e)
				}
			})
			b.StopTimer()
			close(stop)
			<-drained
		})
	}
}

// BenchmarkRequestLogCopy measures the sustained rate of the writer into
// Postgres: b.N entries enqueued as fast as the queue takes them, timed
// until the last is committed.
func BenchmarkRequestLogCopy(b *testing.B) {
	for _, size := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			pool, err := pgxpool.New(context.Background(), pgtest.NewMigratedDatabase(b))
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			w, err := NewRequestLogWriter(pool, RequestLogConfig{BatchSize: size, MaintainInterval: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			if err := w.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			entries := make([]RequestLogEntry, 1024)
			for i := range entries {
				entries[i] = benchEntry(i)
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				for !w.Enqueue(&entries[i%len(entries)]) {
					time.Sleep(100 * time.Microsecond)
				}
			}
			if err := w.Stop(context.Background()); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			s := w.Stats()
			if s.Written != uint64(b.N) {
				b.Fatalf("wrote %d rows of %d (stats %+v)", s.Written, b.N, s)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "rows/s")
			b.ReportMetric(float64(s.Batches), "copies")
		})
	}
}
