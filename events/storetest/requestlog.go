package storetest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events"
)

// DefaultNodeID is the node WriteRequestLogs records entries under when
// they name none.
const DefaultNodeID = "node-default"

// WriteRequestLogs records entries through a RequestLogWriter, as the
// gateway does, and returns once every one is committed: a fixture for the
// request-log queries and the admin endpoints over them.
func WriteRequestLogs(t testing.TB, pool *pgxpool.Pool, entries []events.RequestLogEntry) {
	t.Helper()
	w, err := events.NewRequestLogWriter(pool, events.RequestLogConfig{
		FlushInterval: 5 * time.Millisecond, QueueSize: len(entries) + 1, MaintainInterval: -1,
		NodeID: DefaultNodeID, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range entries {
		if !w.Enqueue(&entries[i]) {
			t.Fatalf("entry %d not enqueued", i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != uint64(len(entries)) {
		t.Fatalf("written %d of %d entries: %+v", st.Written, len(entries), st)
	}
}
