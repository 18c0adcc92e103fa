package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zakirkun/isekai/admin"
	"github.com/zakirkun/isekai/events"
	"github.com/zakirkun/isekai/events/pgtest"
)

// newFeedEnv is newEnv with a feed configuration.
func newFeedEnv(t *testing.T, feed admin.FeedConfig) env {
	t.Helper()
	e, _ := startEnv(t, pgtest.NewMigratedDatabase(t), envOptions{configure: func(cfg *admin.Config, _ *pgxpool.Pool) {
		cfg.Feed = feed
	}})
	return e
}

// appendNotes appends n events (in one transaction) that the projection
// ignores.
func appendNotes(t *testing.T, store events.Store, n int) int64 {
	t.Helper()
	return appendNotesSized(t, store, n, 100)
}

func appendNotesSized(t *testing.T, store events.Store, n, size int) int64 {
	t.Helper()
	ps := make([]events.Proposed, n)
	for i := range ps {
		ps[i] = events.Proposed{Stream: "note", ExpectedVersion: events.AnyVersion, Type: "note.added", Data: json.RawMessage(`{"text":"` + strings.Repeat("x", size) + `"}`)}
	}
	res, err := store.Append(context.Background(), events.AppendRequest{Events: ps})
	if err != nil {
		t.Error(err)
		return 0
	}
	return res.Events[n-1].Position
}

type feedClient struct {
	t    *testing.T
	conn *websocket.Conn
}

type feedMsg struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

func dialFeed(t *testing.T, e env, query string, d *websocket.Dialer) feedClient {
	t.Helper()
	if d == nil {
		d = &websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	}
	conn, resp, err := d.Dial(strings.Replace(e.base, "http://", "ws://", 1)+"/ws"+query, nil)
	if err != nil {
		t.Fatalf("dial /ws%s: %v (%v)", query, err, resp)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return feedClient{t: t, conn: conn}
}

func (c feedClient) next() (feedMsg, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var m feedMsg
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("message is not JSON: %q", data)
	}
	return m, nil
}

func (c feedClient) hello(wantAfter int64) {
	c.t.Helper()
	m, err := c.next()
	if err != nil {
		c.t.Fatal(err)
	}
	var h struct {
		NodeID string `json:"node_id"`
		After  int64  `json:"after"`
	}
	if m.Type != "hello" || json.Unmarshal(m.Payload, &h) != nil || h.NodeID != "node-test" || h.After != wantAfter {
		c.t.Fatalf("first message %s %s, want hello after %d", m.Type, m.Payload, wantAfter)
	}
}

// event reads the next event's position.
func (c feedClient) event() (int64, error) {
	m, err := c.next()
	if err != nil {
		return 0, err
	}
	var ev events.Event
	if m.Type != "event" || json.Unmarshal(m.Payload, &ev) != nil || ev.Position < 1 || ev.Type == "" {
		return 0, fmt.Errorf("not an event: %s %s", m.Type, m.Payload)
	}
	return ev.Position, nil
}

// expectEvents reads events from first to last and fails on any gap or
// duplicate.
func (c feedClient) expectEvents(first, last int64) {
	c.t.Helper()
	for want := first; want <= last; want++ {
		pos, err := c.event()
		if err != nil {
			c.t.Fatalf("waiting for position %d: %v", want, err)
		}
		if pos != want {
			c.t.Fatalf("got position %d, want %d", pos, want)
		}
	}
}

type wsStats struct {
	Connections     int64  `json:"connections"`
	MessagesSent    uint64 `json:"messages_sent"`
	SlowDisconnects uint64 `json:"slow_disconnects"`
}

func (e env) wsStats(t *testing.T) wsStats {
	t.Helper()
	r := e.do(t, "GET", "/api/websocket/stats", nil)
	expect(t, r, 200, "")
	var s wsStats
	if err := json.Unmarshal(r.body.Data, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// The client connects while writers keep appending: its catch-up pages and
// the switch to live events must neither skip nor repeat a position.
func TestFeedNoGapAcrossCatchUp(t *testing.T) {
	t.Parallel()
	e := newFeedEnv(t, admin.FeedConfig{PageSize: 7})
	for range 10 {
		appendNotes(t, e.store, 10)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				appendNotes(t, e.store, 1)
			}
		}()
	}
	c := dialFeed(t, e, "?after=0", nil)
	c.hello(0)
	c.expectEvents(1, 300)
	wg.Wait()
	appendNotes(t, e.store, 1)
	c.expectEvents(301, 301)
	// The server counts a message once its write returned.
	waitFor(t, func() bool { return e.wsStats(t).MessagesSent == 302 })
	if s := e.wsStats(t); s.Connections != 1 {
		t.Errorf("stats %+v, want 1 connection", s)
	}
}

func TestFeedStartsAfter(t *testing.T) {
	t.Parallel()
	e := newFeedEnv(t, admin.FeedConfig{})
	appendNotes(t, e.store, 5)

	from3 := dialFeed(t, e, "?after=3", nil)
	from3.hello(3)
	from3.expectEvents(4, 5)
	// Without after, only events committed after the connection arrive.
	live := dialFeed(t, e, "", nil)
	live.hello(5)
	appendNotes(t, e.store, 2)
	live.expectEvents(6, 7)
	from3.expectEvents(6, 7)

	// Pings are answered, websocket's and the seed format's.
	pong := make(chan string, 1)
	live.conn.SetPongHandler(func(data string) error { pong <- data; return nil })
	if err := live.conn.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := live.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := live.next(); err != nil || m.Type != "pong" {
		t.Fatalf("answer to a ping: %+v %v", m, err)
	}
	select {
	case data := <-pong:
		if data != "hi" {
			t.Errorf("pong %q", data)
		}
	case <-time.After(5 * time.Second):
		t.Error("no pong")
	}

	if s := e.wsStats(t); s.Connections != 2 {
		t.Errorf("stats %+v, want 2 connections", s)
	}
	// A client that says goodbye is counted out.
	_ = from3.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	if _, err := from3.next(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("after closing: %v", err)
	}
	waitFor(t, func() bool { return e.wsStats(t).Connections == 1 })

	expect(t, e.do(t, "GET", "/ws?after=0", nil), 426, "websocket_required")
	if _, resp, err := (&websocket.Dialer{}).Dial(strings.Replace(e.base, "http://", "ws://", 1)+"/ws?after=-1", nil); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Errorf("after=-1: %v %v", err, resp)
	}
}

// A client that stops reading falls behind and is cut; a client reading
// along sees every event.
func TestFeedSlowClientDisconnected(t *testing.T) {
	t.Parallel()
	e := newFeedEnv(t, admin.FeedConfig{MaxLag: 50, WriteTimeout: time.Minute})
	slow := dialFeed(t, e, "", nil)
	fast := dialFeed(t, e, "", nil)
	fast.hello(0)

	var fastAt atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			pos, err := fast.event()
			if err != nil {
				return
			}
			if pos != fastAt.Load()+1 {
				t.Errorf("fast client: position %d after %d", pos, fastAt.Load())
				return
			}
			fastAt.Store(pos)
		}
	}()
	defer func() { _ = fast.conn.Close(); <-done }()
	deadline := time.Now().Add(60 * time.Second)
	for e.wsStats(t).SlowDisconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow client was never disconnected")
		}
		// Paced by the fast client, which so never falls behind.
		last := appendNotesSized(t, e.store, 10, 32<<10)
		waitFor(t, func() bool { return fastAt.Load() >= last })
	}
	appendNotes(t, e.store, 1)
	head, err := e.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return fastAt.Load() == head })
	// The cut connection is counted out once its socket is closed.
	waitFor(t, func() bool { return e.wsStats(t).Connections == 1 })
	if s := e.wsStats(t); s.SlowDisconnects != 1 {
		t.Errorf("stats %+v, want one slow disconnect", s)
	}

	// What the slow client was sent before the cut is in order. (The close
	// frame, if the full socket had room for one, comes after it all.)
	slow.hello(0)
	slow.expectEvents(1, 20)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}
