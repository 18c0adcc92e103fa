package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/events/pgtest"
)

// `isekai events verify` passes on an untouched log and names the first
// altered position after someone edits a row behind the trigger's back;
// `isekai replay --at TIME` reads the table as it stood then.
func TestEventsVerifyAndReplayAtTime(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	n, _ := startTestNode(t, db, "v1")
	admin := "http://" + n.adminAddr
	for _, p := range []string{"/v1", "/v2", "/v3"} {
		if status, res, _ := call(t, "POST", admin+"/api/routes", map[string]any{"path": p, "target_url": "http://127.0.0.1:9"}); status != 201 {
			t.Fatalf("create %s: %d %+v", p, status, res)
		}
		if p == "/v1" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	env := envMap(map[string]string{"DATABASE_URL": db, "ISEKAI_DATA_DIR": t.TempDir(), "LOG_LEVEL": "error"})
	var out, errOut strings.Builder
	if code := run([]string{"events", "verify"}, env, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "ok: 3 events verified") {
		t.Fatalf("verify untouched: %d %q %q", code, out.String(), errOut.String())
	}

	pool, err := pgxpool.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var t1 time.Time
	if err := pool.QueryRow(context.Background(), `SELECT created_at FROM events WHERE position = 1`).Scan(&t1); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"replay", "--at", t1.Format(time.RFC3339Nano)}, env, &out, &errOut); code != 0 ||
		!strings.HasPrefix(out.String(), "route table at position 1: 1 routes") {
		t.Fatalf("replay --at time: %d %q %q", code, out.String(), errOut.String())
	}

	for _, sql := range []string{
		`ALTER TABLE events DISABLE TRIGGER events_immutable`,
		`UPDATE events SET data = jsonb_set(data, '{target_url}', '"http://evil.example"') WHERE position = 2`,
		`ALTER TABLE events ENABLE TRIGGER events_immutable`,
	} {
		if _, err := pool.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	out.Reset()
	if code := run([]string{"events", "verify"}, env, &out, &errOut); code != 1 || !strings.Contains(out.String(), "at position 2") {
		t.Fatalf("verify after tampering: %d %q", code, out.String())
	}
	if code := run([]string{"events", "frobnicate"}, env, &out, &errOut); code == 0 {
		t.Error("events with an unknown subcommand succeeded")
	}
}
