package admin

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/events"
)

// FeedConfig configures the /ws event feed. Zero values take the defaults.
type FeedConfig struct {
	// MaxLag is how many events a live client may fall behind the node's
	// table before it is disconnected as too slow (default 10000). A client
	// still reading history from ?after is never cut for lag, only for a
	// write that exceeds WriteTimeout.
	MaxLag int64
	// MaxConnections bounds concurrent feed clients; more are answered 503
	// (default 1000).
	MaxConnections int
	// PageSize is the most events read from the store per query (default 500).
	PageSize int
	// PollInterval is the safety poll: a store read even when the node's
	// table did not move, e.g. while it rejects an event (default 5s).
	PollInterval time.Duration
	// PingInterval is how often the server pings; a client silent for two
	// intervals is dropped (default 30s).
	PingInterval time.Duration
	// WriteTimeout bounds one message write (default 10s).
	WriteTimeout time.Duration
}

func (c *FeedConfig) defaults() {
	if c.MaxLag <= 0 {
		c.MaxLag = 10000
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1000
	}
	if c.PageSize <= 0 {
		c.PageSize = 500
	}
	c.PageSize = min(c.PageSize, events.MaxReadLimit)
	if c.PollInterval <= 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 30 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
}

// feedQueue is each connection's bound on messages read from the store but
// not yet written to the socket.
const feedQueue = 64

// errTooSlow ends a live connection that fell more than MaxLag behind.
var errTooSlow = errors.New("client too slow")

// feed streams the log to websocket clients. Each connection keeps its own
// cursor and reads position > cursor from the store, so the switch from
// history to live events has no gap and no duplicate by construction: the
// log's positions are gapless and in commit order. The node's table moving
// (RouteReader.WaitFor) is only the wake-up, so clients add no LISTEN
// sessions and no load while the log is quiet.
type feed struct {
	cfg      FeedConfig
	s        *Server
	upgrader websocket.FastHTTPUpgrader

	ctx    context.Context // ends at shutdown
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup

	conns      atomic.Int64
	connsTotal atomic.Uint64
	sent       atomic.Uint64
	slow       atomic.Uint64
}

// mountFeed serves GET /ws and GET /api/websocket/stats, and ends every
// feed connection when the admin server shuts down: fasthttp does not wait
// for hijacked connections.
func (s *Server) mountFeed(api fiber.Router) {
	f := &feed{cfg: s.cfg.Feed, s: s}
	f.cfg.defaults()
	f.ctx, f.cancel = context.WithCancel(context.Background())
	// The default CheckOrigin refuses browsers on other origins, so a page
	// the operator visits cannot read the feed through the loopback port.
	f.upgrader = websocket.FastHTTPUpgrader{
		HandshakeTimeout: 5 * time.Second,
		Error:            func(*fasthttp.RequestCtx, int, error) {},
	}
	s.app.Get("/ws", f.handle)
	api.Get("/websocket/stats", f.stats)
	s.app.Hooks().OnShutdown(func() error { f.close(); return nil })
}

type feedStats struct {
	Connections      int64  `json:"connections"`
	ConnectionsTotal uint64 `json:"connections_total"`
	MessagesSent     uint64 `json:"messages_sent"`
	SlowDisconnects  uint64 `json:"slow_disconnects"`
}

func (f *feed) stats(c *fiber.Ctx) error {
	return ok(c, fiber.StatusOK, feedStats{
		Connections: f.conns.Load(), ConnectionsTotal: f.connsTotal.Load(),
		MessagesSent: f.sent.Load(), SlowDisconnects: f.slow.Load(),
	})
}

// feedMessage is the seed's websocket envelope.
type feedMessage struct {
	Type    string `json:"type"`
	Payload any    `json:"payload"`
}

type feedHello struct {
	NodeID string `json:"node_id"`
	After  int64  `json:"after"`
}

func (f *feed) handle(c *fiber.Ctx) error {
	if !websocket.FastHTTPIsWebSocketUpgrade(c.Context()) {
		return &apiError{status: fiber.StatusUpgradeRequired, code: "websocket_required", message: "GET /ws needs a websocket upgrade"}
	}
	after, err := intParam(c, "after", -1, 0, 1<<62)
	if err != nil {
		return err
	}
	if after < 0 {
		ctx, cancel := f.s.storeCtx(c)
		after, err = f.s.store.Head(ctx)
		cancel()
		if err != nil {
			return err
		}
	}
	if f.conns.Load() >= int64(f.cfg.MaxConnections) {
		c.Set(fiber.HeaderRetryAfter, "1")
		return &apiError{status: fiber.StatusServiceUnavailable, code: "too_many_connections", message: "too many feed connections"}
	}
	if err := f.upgrader.Upgrade(c.Context(), func(conn *websocket.Conn) { f.serve(conn, after) }); err != nil {
		return errBadRequest("websocket_handshake_failed", err.Error())
	}
	return nil
}

// close ends every connection and waits for them; it is safe twice.
func (f *feed) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(f.cfg.WriteTimeout + 2*time.Second):
		f.s.log.Warn("feed connections still open after shutdown")
	}
}

func (f *feed) register() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	return true
}

type queued struct {
	position int64
	data     []byte
}

// session is one feed connection.
type session struct {
	f       *feed
	conn    *websocket.Conn
	queue   chan queued
	control chan []byte // replies to the client's {"type":"ping"}
	written atomic.Int64
}

// serve runs one connection on the hijacked socket: a reader, a writer and
// the cursor loop in this goroutine; it returns when all three have ended.
func (f *feed) serve(conn *websocket.Conn, after int64) {
	defer conn.Close()
	if !f.register() {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "shutting down"), time.Now().Add(time.Second))
		return
	}
	defer f.wg.Done()
	f.conns.Add(1)
	f.connsTotal.Add(1)
	defer f.conns.Add(-1)

	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	ss := &session{f: f, conn: conn, queue: make(chan queued, feedQueue), control: make(chan []byte, 1)}
	ss.written.Store(after)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); defer cancel(); ss.read() }()
	go func() { defer wg.Done(); defer cancel(); ss.write(ctx) }()

	hello, _ := json.Marshal(feedMessage{Type: "hello", Payload: feedHello{NodeID: f.s.cfg.NodeID, After: after}})
	err := ss.enqueue(ctx, queued{position: after, data: hello}, false)
	if err == nil {
		err = ss.follow(ctx, after)
	}
	code, reason := websocket.CloseGoingAway, "shutting down"
	if errors.Is(err, errTooSlow) {
		f.slow.Add(1)
		code = websocket.ClosePolicyViolation
		reason = "client too slow: more than " + strconv.FormatInt(f.cfg.MaxLag, 10) + " events behind; reconnect with ?after=<last position received>"
		f.s.log.Info("feed client disconnected as too slow", "remote", conn.RemoteAddr().String(), "written", ss.written.Load())
	}
	cancel()
	if f.ctx.Err() != nil || errors.Is(err, errTooSlow) {
		// Control frames may be written concurrently with the writer; if the
		// socket is full this gives up after a second.
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	}
	// Unblock the reader and a writer stuck on a full socket. Closing would
	// not: fasthttp closes a hijacked connection only when serve returns.
	// Repeated, because each websocket read or write sets its own deadline.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		_ = conn.NetConn().SetDeadline(time.Now())
		select {
		case <-done:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// follow moves the cursor from after to the head, then follows it: read a
// page after the cursor, queue it, and when a read comes back short wait
// for the node's table to pass the cursor (or the safety poll).
func (ss *session) follow(ctx context.Context, cursor int64) error {
	f := ss.f
	live := false
	for {
		rctx, cancel := context.WithTimeout(ctx, f.s.cfg.StoreTimeout)
		evs, err := f.s.store.Read(rctx, events.Filter{After: cursor, Limit: f.cfg.PageSize})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			f.s.log.Warn("feed: reading events failed; retrying", "after", cursor, "err", err)
			if !sleep(ctx, min(f.cfg.PollInterval, time.Second)) {
				return ctx.Err()
			}
			continue
		}
		for i := range evs {
			data, err := json.Marshal(feedMessage{Type: "event", Payload: &evs[i]})
			if err != nil {
				return err
			}
			if err := ss.enqueue(ctx, queued{position: evs[i].Position, data: data}, live); err != nil {
				return err
			}
			cursor = evs[i].Position
		}
		if len(evs) == f.cfg.PageSize {
			continue
		}
		live = true
		wctx, cancel := context.WithTimeout(ctx, f.cfg.PollInterval)
		_ = f.s.routes.WaitFor(wctx, cursor+1)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// enqueue waits for room in the queue. A live client whose queue is full
// and which is more than MaxLag behind the head is too slow; waiting here
// never delays another connection.
func (ss *session) enqueue(ctx context.Context, m queued, live bool) error {
	select {
	case ss.queue <- m:
		return nil
	default:
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if live && max(ss.f.s.routes.Table().Position(), m.position)-ss.written.Load() > ss.f.cfg.MaxLag {
			return errTooSlow
		}
		select {
		case ss.queue <- m:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (ss *session) write(ctx context.Context) {
	f := ss.f
	ping := time.NewTicker(f.cfg.PingInterval)
	defer ping.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case m := <-ss.queue:
			if ctx.Err() != nil {
				return
			}
			_ = ss.conn.SetWriteDeadline(time.Now().Add(f.cfg.WriteTimeout))
			if err = ss.conn.WriteMessage(websocket.TextMessage, m.data); err == nil {
				ss.written.Store(m.position)
				f.sent.Add(1)
			}
		case data := <-ss.control:
			_ = ss.conn.SetWriteDeadline(time.Now().Add(f.cfg.WriteTimeout))
			err = ss.conn.WriteMessage(websocket.TextMessage, data)
		case <-ping.C:
			err = ss.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(f.cfg.WriteTimeout))
		}
		if err != nil {
			return
		}
	}
}

var feedPong = []byte(`{"type":"pong","payload":null}`)

// read answers pings, websocket and {"type":"ping"} alike, and notices the
// client going away; the feed takes no other input.
func (ss *session) read() {
	wait := 2 * ss.f.cfg.PingInterval
	extend := func() { _ = ss.conn.SetReadDeadline(time.Now().Add(wait)) }
	extend()
	ss.conn.SetReadLimit(4 << 10)
	ss.conn.SetPongHandler(func(string) error { extend(); return nil })
	ss.conn.SetPingHandler(func(data string) error {
		extend()
		err := ss.conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(ss.f.cfg.WriteTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	for {
		_, data, err := ss.conn.ReadMessage()
		if err != nil {
			return
		}
		extend()
		var m feedMessage
		if json.Unmarshal(data, &m) == nil && m.Type == "ping" {
			select {
			case ss.control <- feedPong:
			default: // a pong is already on its way
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
