package admin_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/admin"
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

// newVerifyEnv serves an admin API with a PostgresVerifier on its pool.
func newVerifyEnv(t *testing.T) (env, *pgxpool.Pool) {
	t.Helper()
	return startEnv(t, pgtest.NewMigratedDatabase(t), envOptions{
		sync:      caughtUp{},
		configure: func(cfg *admin.Config, pool *pgxpool.Pool) { cfg.Verifier = admin.PostgresVerifier{Pool: pool} },
	})
}

func verifyResult(t *testing.T, r response) events.VerifyResult {
	t.Helper()
	expect(t, r, 200, "")
	var out events.VerifyResult
	if !r.body.Success || json.Unmarshal(r.body.Data, &out) != nil {
		t.Fatalf("not a verification result: %s", r.raw)
	}
	return out
}

// The tamper test through the API: a valid log verifies, and after someone
// disables the immutability trigger and edits an event, the endpoint names
// that event's position (still with 200: the verification itself worked).
func TestVerifyEvents(t *testing.T) {
	t.Parallel()
	e, pool := newVerifyEnv(t)
	for i := range 10 {
		if _, err := e.store.Append(context.Background(), events.AppendRequest{Events: []events.Proposed{{
			Stream: "route-1", ExpectedVersion: int64(i), Type: "RouteUpdated", Data: json.RawMessage(`{"path":"/a"}`),
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	if res := verifyResult(t, e.do(t, "GET", "/api/events/verify", nil)); !res.OK || res.Checked != 10 || res.Head != 10 || res.FirstBadPosition != 0 {
		t.Fatalf("valid log: %+v", res)
	}

	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		for _, sql := range []string{
			`ALTER TABLE events DISABLE TRIGGER events_immutable`,
			`UPDATE events SET data = '{"path":"/evil"}' WHERE position = 6`,
			`ALTER TABLE events ENABLE TRIGGER events_immutable`,
		} {
			if _, err := tx.Exec(context.Background(), sql); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	res := verifyResult(t, e.do(t, "GET", "/api/events/verify", nil))
	if res.OK || res.FirstBadPosition != 6 || res.Reason != events.ReasonHashMismatch || res.Checked != 5 {
		t.Fatalf("tampered log: %+v", res)
	}
	if res := verifyResult(t, e.do(t, "GET", "/api/events/verify?from=2&to=5", nil)); !res.OK || res.From != 2 || res.To != 5 || res.Checked != 4 {
		t.Fatalf("range before the edit: %+v", res)
	}
	expect(t, e.do(t, "GET", "/api/events/verify?from=-1", nil), 400, "invalid_query")
	expect(t, e.do(t, "GET", "/api/events/verify?to=x", nil), 400, "invalid_query")
}

func TestVerifyEventsWithoutVerifier(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pgtest.NewMigratedDatabase(t))
	expect(t, e.do(t, "GET", "/api/events/verify", nil), 501, "verify_unavailable")
}
