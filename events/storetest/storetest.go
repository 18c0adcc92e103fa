// Package storetest is the conformance suite every events.Store must pass:
// ordering under concurrent appenders, expected-version conflicts,
// idempotent retries, head checks and reads; and fixtures the tests of the
// Postgres side share (WriteRequestLogs).
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/zakirkun/isekai/events"
)

// Run runs the suite. newStore must return an empty store of its own for
// each call.
func Run(t *testing.T, newStore func(t *testing.T) events.Store) {
	t.Run("AppendAssignsGaplessPositions", func(t *testing.T) { t.Parallel(); testAppend(t, newStore(t)) })
	t.Run("ExpectedVersion", func(t *testing.T) { t.Parallel(); testExpectedVersion(t, newStore(t)) })
	t.Run("AtomicMultiEventAppend", func(t *testing.T) { t.Parallel(); testAtomic(t, newStore(t)) })
	t.Run("IdempotentRetry", func(t *testing.T) { t.Parallel(); testIdempotent(t, newStore(t)) })
	t.Run("CheckHead", func(t *testing.T) { t.Parallel(); testCheckHead(t, newStore(t)) })
	t.Run("ReadFilters", func(t *testing.T) { t.Parallel(); testReadFilters(t, newStore(t)) })
	t.Run("ReadFiltersByActorTimeAndRange", func(t *testing.T) { t.Parallel(); testReadFiltersAudit(t, newStore(t)) })
	t.Run("InvalidEvents", func(t *testing.T) { t.Parallel(); testInvalid(t, newStore(t)) })
	t.Run("ConcurrentAppendersAndFollower", func(t *testing.T) { t.Parallel(); testConcurrent(t, newStore(t)) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func ev(stream string, expected int64, typ string, n int) events.Proposed {
	return events.Proposed{
		Stream: stream, ExpectedVersion: expected, Type: typ,
		Data:     json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)),
		Metadata: events.Metadata{Actor: "tester", Source: events.SourceAPI, Reason: "conformance", Node: "n1", RequestID: "r1"},
	}
}

func mustAppend(t *testing.T, s events.Store, ps ...events.Proposed) events.AppendResult {
	t.Helper()
	res, err := s.Append(ctx(t), events.AppendRequest{Events: ps})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return res
}

func testAppend(t *testing.T, s events.Store) {
	if h, err := s.Head(ctx(t)); err != nil || h != 0 {
		t.Fatalf("Head of empty store = %d, %v; want 0, nil", h, err)
	}
	before := time.Now().Add(-time.Minute)
	for i := 1; i <= 5; i++ {
		res := mustAppend(t, s, ev("a", events.AnyVersion, "t.x", i))
		if len(res.Events) != 1 || res.Events[0].Position != int64(i) || res.Events[0].Version != int64(i) || res.Duplicate {
			t.Fatalf("append %d returned %+v", i, res)
		}
	}
	got, err := s.Read(ctx(t), events.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("Read returned %d events, want 5", len(got))
	}
	for i, e := range got {
		if e.Position != int64(i+1) || e.Stream != "a" || e.Type != "t.x" || e.ID == uuid.Nil {
			t.Errorf("event %d = %+v", i, e)
		}
		if string(e.Data) != fmt.Sprintf(`{"n": %d}`, i+1) && string(e.Data) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Errorf("event %d data = %s", i, e.Data)
		}
		want := events.Metadata{Actor: "tester", Source: events.SourceAPI, Reason: "conformance", Node: "n1", RequestID: "r1"}
		if e.Metadata != want {
			t.Errorf("event %d metadata = %+v, want %+v", i, e.Metadata, want)
		}
		if e.CreatedAt.Before(before) || (i > 0 && e.CreatedAt.Before(got[i-1].CreatedAt)) {
			t.Errorf("event %d created_at %v not monotonic", i, e.CreatedAt)
		}
	}
	if h, _ := s.Head(ctx(t)); h != 5 {
		t.Errorf("Head = %d, want 5", h)
	}
	bare, err := s.Read(ctx(t), events.Filter{NoMetadata: true})
	if err != nil || len(bare) != 5 {
		t.Fatalf("Read without metadata: %d events, %v", len(bare), err)
	}
	for i, e := range bare {
		if e.Metadata != (events.Metadata{}) || e.Position != got[i].Position || string(e.Data) != string(got[i].Data) || e.Stream != got[i].Stream {
			t.Errorf("event %d without metadata = %+v", i, e)
		}
	}
	after, _ := s.Read(ctx(t), events.Filter{After: 3})
	if len(after) != 2 || after[0].Position != 4 {
		t.Errorf("Read after 3 = %+v", after)
	}
}

func testExpectedVersion(t *testing.T, s events.Store) {
	mustAppend(t, s, ev("s", events.NoStream, "t", 1))
	mustAppend(t, s, ev("s", 1, "t", 2))
	for _, tc := range []struct {
		name     string
		expected int64
	}{
		{name: "stream exists", expected: events.NoStream},
		{name: "stale version", expected: 1},
		{name: "future version", expected: 7},
	} {
		_, err := s.Append(ctx(t), events.AppendRequest{Events: []events.Proposed{ev("s", tc.expected, "t", 3)}})
		if !errors.Is(err, events.ErrConflict) {
			t.Fatalf("%s: err = %v, want ErrConflict", tc.name, err)
		}
		var ce *events.ConflictError
		if !errors.As(err, &ce) || ce.Stream != "s" || ce.Actual != 2 || ce.Expected != tc.expected {
			t.Errorf("%s: conflict detail = %+v", tc.name, ce)
		}
	}
	if h, _ := s.Head(ctx(t)); h != 2 {
		t.Errorf("a conflict appended something: head = %d", h)
	}
	mustAppend(t, s, ev("s", 2, "t", 3))
	mustAppend(t, s, ev("s", events.AnyVersion, "t", 4))
	got, _ := s.ReadStream(ctx(t), "s")
	if len(got) != 4 || got[3].Version != 4 {
		t.Errorf("ReadStream = %+v", got)
	}
	if none, err := s.ReadStream(ctx(t), "unknown"); err != nil || len(none) != 0 {
		t.Errorf("ReadStream(unknown) = %v, %v; want empty, nil", none, err)
	}
}

func testAtomic(t *testing.T, s events.Store) {
	res := mustAppend(t, s, ev("a", 0, "t", 1), ev("a", 1, "t", 2), ev("b", 0, "t", 3))
	if len(res.Events) != 3 || res.Events[2].Position != 3 || res.Events[1].Version != 2 || res.Events[2].Version != 1 {
		t.Fatalf("multi-event append = %+v", res.Events)
	}
	// The third event conflicts: nothing of the request may be written.
	_, err := s.Append(ctx(t), events.AppendRequest{Events: []events.Proposed{ev("c", 0, "t", 4), ev("a", 2, "t", 5), ev("b", 0, "t", 6)}})
	if !errors.Is(err, events.ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	if h, _ := s.Head(ctx(t)); h != 3 {
		t.Errorf("partial append: head = %d, want 3", h)
	}
	if c, _ := s.ReadStream(ctx(t), "c"); len(c) != 0 {
		t.Errorf("partial append wrote stream c: %+v", c)
	}
}

func testIdempotent(t *testing.T, s events.Store) {
	p := ev("r", events.NoStream, "t", 1)
	p.ID = events.IdempotentID("POST /x", "key-1")
	first := mustAppend(t, s, p)
	mustAppend(t, s, ev("other", events.AnyVersion, "t", 2))
	// A retry carries the same expected version, which is now stale: the
	// idempotency check must come first and answer with the stored event.
	again := mustAppend(t, s, p)
	if !again.Duplicate || len(again.Events) != 1 || again.Events[0].Position != first.Events[0].Position || again.Events[0].ID != p.ID {
		t.Fatalf("retry = %+v, want duplicate of %+v", again, first)
	}
	if h, _ := s.Head(ctx(t)); h != 2 {
		t.Errorf("retry appended: head = %d, want 2", h)
	}
	// Part of a request already in the log is a conflict, not a duplicate.
	q := ev("r2", events.NoStream, "t", 3)
	_, err := s.Append(ctx(t), events.AppendRequest{Events: []events.Proposed{q, p}})
	if !errors.Is(err, events.ErrConflict) {
		t.Errorf("partial duplicate: err = %v, want ErrConflict", err)
	}
	if events.IdempotentID("POST /x", "key-1") == events.IdempotentID("POST /y", "key-1") {
		t.Error("idempotency ids must be scoped")
	}
}

func testCheckHead(t *testing.T, s events.Store) {
	mustAppend(t, s, ev("a", events.AnyVersion, "t", 1))
	_, err := s.Append(ctx(t), events.AppendRequest{Events: []events.Proposed{ev("b", 0, "t", 2)}, CheckHead: true, ExpectedHead: 0})
	if !errors.Is(err, events.ErrHeadMoved) {
		t.Fatalf("err = %v, want ErrHeadMoved", err)
	}
	res, err := s.Append(ctx(t), events.AppendRequest{Events: []events.Proposed{ev("b", 0, "t", 2)}, CheckHead: true, ExpectedHead: 1})
	if err != nil || res.Events[0].Position != 2 {
		t.Fatalf("append at expected head: %+v, %v", res, err)
	}
}

func testReadFilters(t *testing.T, s events.Store) {
	for i := 0; i < 30; i++ {
		typ := "even"
		if i%2 == 1 {
			typ = "odd"
		}
		mustAppend(t, s, ev(fmt.Sprintf("s%d", i%3), events.AnyVersion, typ, i))
	}
	for _, tc := range []struct {
		name  string
		f     events.Filter
		count int
		first int64
	}{
		{name: "all", f: events.Filter{}, count: 30, first: 1},
		{name: "limit", f: events.Filter{Limit: 7}, count: 7, first: 1},
		{name: "after", f: events.Filter{After: 25}, count: 5, first: 26},
		{name: "stream", f: events.Filter{Stream: "s1"}, count: 10, first: 2},
		{name: "type", f: events.Filter{Type: "odd"}, count: 15, first: 2},
		{name: "stream and type", f: events.Filter{Stream: "s0", Type: "odd"}, count: 5, first: 4},
		{name: "past head", f: events.Filter{After: 30}, count: 0},
	} {
		got, err := s.Read(ctx(t), tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(got) != tc.count || (tc.count > 0 && got[0].Position != tc.first) {
			t.Errorf("%s: got %d events starting at %v, want %d from %d", tc.name, len(got), firstPos(got), tc.count, tc.first)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Position <= got[i-1].Position {
				t.Errorf("%s: not in position order", tc.name)
			}
		}
	}
}

// testReadFiltersAudit covers the audit filters: actor, created_at bounds
// (inclusive) and the upper position bound, alone and combined with After
// and Limit as a pager uses them.
func testReadFiltersAudit(t *testing.T, s events.Store) {
	var all []events.Event
	for i := 0; i < 12; i++ {
		p := ev(fmt.Sprintf("s%d", i%2), events.AnyVersion, "t", i)
		p.Metadata.Actor = []string{"alice", "bob", "carol"}[i%3]
		all = append(all, mustAppend(t, s, p).Events...)
		// Separate the timestamps, so a time range can cut between events.
		time.Sleep(2 * time.Millisecond)
	}
	since, until := all[3].CreatedAt, all[8].CreatedAt
	if !since.Before(until) {
		t.Fatalf("created_at does not advance: %v, %v", since, until)
	}
	for _, tc := range []struct {
		at   time.Time
		want int64
	}{
		{all[0].CreatedAt.Add(-time.Hour), 0},
		{all[0].CreatedAt, all[0].Position},
		{until, all[8].Position},
		{until.Add(time.Microsecond), all[8].Position},
		{all[11].CreatedAt.Add(time.Hour), all[11].Position},
	} {
		if got, err := s.PositionAt(ctx(t), tc.at); err != nil || got != tc.want {
			t.Errorf("PositionAt(%v) = %d, %v; want %d", tc.at, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		f    events.Filter
		want func(e events.Event) bool
	}{
		{name: "actor", f: events.Filter{Actor: "bob"}, want: func(e events.Event) bool { return e.Metadata.Actor == "bob" }},
		{name: "unknown actor", f: events.Filter{Actor: "mallory"}, want: func(events.Event) bool { return false }},
		{name: "since", f: events.Filter{Since: since}, want: func(e events.Event) bool { return !e.CreatedAt.Before(since) }},
		{name: "until", f: events.Filter{Until: until}, want: func(e events.Event) bool { return !e.CreatedAt.After(until) }},
		{name: "since and until", f: events.Filter{Since: since, Until: until}, want: func(e events.Event) bool {
			return !e.CreatedAt.Before(since) && !e.CreatedAt.After(until)
		}},
		{name: "until before the log", f: events.Filter{Until: all[0].CreatedAt.Add(-time.Hour)}, want: func(events.Event) bool { return false }},
		{name: "to", f: events.Filter{To: 5}, want: func(e events.Event) bool { return e.Position <= 5 }},
		{name: "after and to", f: events.Filter{After: 4, To: 9}, want: func(e events.Event) bool { return e.Position > 4 && e.Position <= 9 }},
		{name: "to past head", f: events.Filter{To: 100}, want: func(events.Event) bool { return true }},
		{name: "actor, stream and range", f: events.Filter{Actor: "alice", Stream: "s1", After: 1, To: 11}, want: func(e events.Event) bool {
			return e.Metadata.Actor == "alice" && e.Stream == "s1" && e.Position > 1 && e.Position <= 11
		}},
	} {
		got, err := s.Read(ctx(t), tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var want []int64
		for _, e := range all {
			if tc.want(e) {
				want = append(want, e.Position)
			}
		}
		if fmt.Sprint(positions(got)) != fmt.Sprint(want) {
			t.Errorf("%s: got positions %v, want %v", tc.name, positions(got), want)
		}
	}
	// Paging a filtered read with After and Limit visits each match once.
	var paged []int64
	for cursor := int64(0); ; {
		page, err := s.Read(ctx(t), events.Filter{After: cursor, Limit: 2, Actor: "carol", To: 11})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, positions(page)...)
		cursor = page[len(page)-1].Position
	}
	if fmt.Sprint(paged) != "[3 6 9]" {
		t.Errorf("paged actor read = %v, want [3 6 9]", paged)
	}
}

func positions(evs []events.Event) []int64 {
	out := make([]int64, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.Position)
	}
	return out
}

func firstPos(evs []events.Event) any {
	if len(evs) == 0 {
		return nil
	}
	return evs[0].Position
}

func testInvalid(t *testing.T, s events.Store) {
	for _, tc := range []struct {
		name string
		p    []events.Proposed
	}{
		{name: "nothing", p: nil},
		{name: "no stream", p: []events.Proposed{{Type: "t", Data: json.RawMessage(`{}`)}}},
		{name: "no type", p: []events.Proposed{{Stream: "s", Data: json.RawMessage(`{}`)}}},
		{name: "bad json", p: []events.Proposed{{Stream: "s", Type: "t", Data: json.RawMessage(`{`)}}},
		{name: "bad version", p: []events.Proposed{{Stream: "s", Type: "t", ExpectedVersion: -2, Data: json.RawMessage(`{}`)}}},
	} {
		if _, err := s.Append(ctx(t), events.AppendRequest{Events: tc.p}); !errors.Is(err, events.ErrInvalidEvent) {
			t.Errorf("%s: err = %v, want ErrInvalidEvent", tc.name, err)
		}
	}
}

// testConcurrent: many goroutines append at once while a follower reads
// position > cursor in a loop. The follower must see every position exactly
// once, in order: positions are gapless and commit-ordered.
func testConcurrent(t *testing.T, s events.Store) {
	const writers, perWriter = 8, 40
	total := int64(writers * perWriter)
	c := ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := fmt.Sprintf("w%d", w)
			for i := 0; i < perWriter; i++ {
				// Alternate single appends and two-event batches on a
				// shared stream to mix lock waits with version checks.
				if _, err := s.Append(c, events.AppendRequest{Events: []events.Proposed{ev(stream, int64(i), "t", i)}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	seen := make([]int64, 0, total)
	followerDone := make(chan error, 1)
	go func() {
		var cursor int64
		for cursor < total {
			evs, err := s.Read(c, events.Filter{After: cursor, Limit: 7})
			if err != nil {
				followerDone <- err
				return
			}
			for _, e := range evs {
				seen = append(seen, e.Position)
				cursor = e.Position
			}
		}
		followerDone <- nil
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent append: %v", err)
	}
	select {
	case err := <-followerDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("follower did not reach the head")
	}
	for i, p := range seen {
		if p != int64(i+1) {
			t.Fatalf("follower saw position %d at index %d: a gap or reorder (seen %v...)", p, i, seen[max(0, i-3):min(len(seen), i+3)])
		}
	}
	for w := 0; w < writers; w++ {
		evs, _ := s.ReadStream(c, fmt.Sprintf("w%d", w))
		if len(evs) != perWriter {
			t.Errorf("stream w%d has %d events, want %d", w, len(evs), perWriter)
		}
	}
}
