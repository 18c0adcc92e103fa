package gateway

import (
	"bufio"
	"crypto/tls"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/zakirkun/isekai/projections"
)

// upstreamKey names one upstream: scheme and host:port. A struct key keeps
// lookups allocation-free (a string key built per request would not be).
type upstreamKey struct {
	tls  bool
	addr string
}

// upstream is the per-target state that outlives route tables: a pooled
// keep-alive HostClient, shared by every route pointing at the same
// scheme+addr.
type upstream struct {
	hc fasthttp.HostClient
	// streamAbove is the response body size above which the body is
	// streamed to the client instead of buffered.
	streamAbove int
}

// upstreams is the registry of upstreams. Reads are a lock-free load of an
// immutable map; a new target copies the map under a mutex, once, and
// leaves out on the way the targets no route points at any more and no
// connection is open to: the registry holds the targets of the current
// table, and those still draining, not every target it ever saw.
type upstreams struct {
	m   atomic.Pointer[map[upstreamKey]*upstream]
	mu  sync.Mutex
	new func(upstreamKey) *upstream
	// live returns the targets of the current table; nil (the function, or
	// its result) keeps every target.
	live func() map[upstreamKey]bool
}

func (r *upstreams) get(useTLS bool, addr string) *upstream {
	key := upstreamKey{tls: useTLS, addr: addr}
	if m := r.m.Load(); m != nil {
		if u := (*m)[key]; u != nil {
			return u
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.m.Load()
	if old != nil {
		if u := (*old)[key]; u != nil {
			return u
		}
	}
	next := make(map[upstreamKey]*upstream, 1+lenMap(old))
	if old != nil {
		var live map[upstreamKey]bool
		if r.live != nil {
			live = r.live()
		}
		for k, u := range *old {
			if live != nil && !live[k] && u.hc.ConnsCount() == 0 {
				continue // pruned: unreferenced and idle
			}
			next[k] = u
		}
	}
	u := r.new(key)
	next[key] = u
	r.m.Store(&next)
	return u
}

func lenMap(m *map[upstreamKey]*upstream) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// routeLister is the part of a route table the registry prunes by (a
// *projections.RouteTable has it); tables without it are never pruned.
type routeLister interface {
	List() []*projections.Route
}

// liveTargets returns the upstream keys of the current table's routes, or
// nil when the table cannot list them.
func (s *Server) liveTargets() map[upstreamKey]bool {
	l, ok := s.routes().(routeLister)
	if !ok || l == nil {
		return nil
	}
	routes := l.List()
	keys := make(map[upstreamKey]bool, len(routes))
	for _, r := range routes {
		t := r.Target()
		keys[upstreamKey{tls: t.Scheme == "https", addr: t.Addr}] = true
	}
	return keys
}

// closeIdle closes every pooled idle upstream connection.
func (r *upstreams) closeIdle() {
	if m := r.m.Load(); m != nil {
		for _, u := range *m {
			u.hc.CloseIdleConnections()
		}
	}
}

// newUpstream builds the HostClient of one target.
//
// The proxy drives the exchange itself (roundTrip below) on the HostClient's
// connection pool rather than through HostClient.Do, for two reasons
// fasthttp v1.78 leaves no other way to meet: the per-request deadline must
// reach the exchange (Request has no timeout getter for a custom
// Transport), and whether to buffer or stream a body is decided per
// response, after its header, where StreamResponseBody decides per client.
// The Do-related fields are still set safely, for any other user of the
// client (health checks): no retries of any request
// (MaxIdemponentCallAttempts 1), no default User-Agent, header names and
// paths passed as they are, response bodies streamed.
func (s *Server) newUpstream(key upstreamKey) *upstream {
	u := &upstream{streamAbove: s.cfg.StreamThreshold}
	var tlsConfig *tls.Config
	if key.tls {
		tlsConfig = upstreamTLSConfig(s.cfg.UpstreamTLS, key.addr)
	}
	u.hc = fasthttp.HostClient{
		Addr:                          key.addr,
		IsTLS:                         key.tls,
		DialTimeout:                   dialUpstream(tlsConfig, s.cfg.MaxHeaderBytes),
		MaxConns:                      s.cfg.MaxConnsPerTarget,
		MaxIdleConnDuration:           s.cfg.UpstreamIdleTimeout,
		MaxConnWaitTimeout:            math.MaxInt64, // bounded by each request's deadline
		ConnPoolStrategy:              fasthttp.LIFO,
		ReadBufferSize:                s.cfg.MaxHeaderBytes,
		MaxIdemponentCallAttempts:     1,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		StreamResponseBody:            true,
		SecureErrorLogMessage:         true,
	}
	return u
}

// maxInterimResponses bounds the 1xx responses skipped before the final one.
const maxInterimResponses = 8

// maxStaleRetries bounds how often a request is resent after a pooled
// connection turned out to be closed by the upstream.
const maxStaleRetries = 2

// exchange is what roundTrip needs besides the request and response.
type exchange struct {
	deadline time.Time
	// idle bounds each read of a streamed response body after the first
	// (the route timeout, as nginx's proxy_read_timeout).
	idle time.Duration
	// replayable requests (GET, HEAD, OPTIONS without a body) may be resent
	// on a fresh connection when a pooled one proves dead before answering.
	replayable bool
	// bufferUnknown, when positive, buffers a body of unknown length (chunked
	// or read-until-close) up to that many bytes instead of streaming it:
	// an HTTP/1.0 client cannot read the chunked stream it would become.
	bufferUnknown int
}

// roundTrip sends req to the upstream and reads the response header into
// resp. A body of known length up to streamAbove is read into resp and the
// connection goes back to the pool at once; any other body is handed to
// resp as a stream that returns the connection when the server has written
// it to the client. resp must be the handler's response: its header then
// keeps the upstream's field-name case.
func (u *upstream) roundTrip(req *fasthttp.Request, resp *fasthttp.Response, x exchange) error {
	for attempt := 0; ; attempt++ {
		stale, err := u.try(req, resp, x)
		if err == nil || !stale || !x.replayable || attempt == maxStaleRetries {
			return err
		}
	}
}

// try makes one attempt. stale reports an error on a reused connection
// before any byte of a response arrived: the upstream closed it while it
// sat in the pool, and the request never reached anything.
func (u *upstream) try(req *fasthttp.Request, resp *fasthttp.Response, x exchange) (stale bool, err error) {
	hc := &u.hc
	wait := time.Until(x.deadline)
	if wait <= 0 {
		return false, fasthttp.ErrTimeout
	}
	cc, err := hc.AcquireConn(wait, false)
	if err != nil {
		return false, err
	}
	conn := cc.Conn()
	fc, _ := conn.(*framedConn)
	reused := !cc.LastUseTime().IsZero()
	if err = conn.SetDeadline(x.deadline); err != nil {
		hc.CloseConn(cc)
		return false, err
	}

	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		hc.CloseConn(cc)
		return reused && fc != nil && fc.received == 0 && !isTimeout(err), err
	}

	br := hc.AcquireReader(conn)
	resp.Header.DisableNormalizing()
	for n := 0; ; n++ {
		if err = resp.Header.Read(br); err != nil {
			stale = reused && fc != nil && fc.received == 0 && !isTimeout(err)
			break
		}
		status := resp.Header.StatusCode()
		if status == fasthttp.StatusSwitchingProtocols {
			// The request's Upgrade was stripped; a 101 is not an answer
			// the gateway can relay.
			err = errUnexpectedUpgrade
			break
		}
		if status >= 200 {
			break
		}
		if n == maxInterimResponses {
			err = errTooManyInterim
			break
		}
	}
	if err != nil {
		hc.ReleaseReader(br)
		hc.CloseConn(cc)
		return stale, err
	}

	// Ambiguous framing (Content-Length with Transfer-Encoding) or bytes
	// beyond the response mean the connection's stream position cannot be
	// trusted: never reuse it (RFC 9112 §6.3).
	closeConn := resp.Header.ConnectionClose() || (fc != nil && fc.takeAmbiguous())
	// done ends an exchange whose response was read whole: the connection
	// goes back to the pool unless it must not be reused, or bytes beyond
	// the response wait on it.
	done := func(closeConn bool) {
		closeConn = closeConn || br.Buffered() > 0 || (fc != nil && fc.pending() > 0)
		hc.ReleaseReader(br)
		if closeConn {
			hc.CloseConn(cc)
		} else {
			hc.ReleaseConn(cc)
		}
	}
	status := resp.Header.StatusCode()
	if req.Header.IsHead() || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified {
		done(closeConn)
		return false, nil
	}

	cl := resp.Header.ContentLength()
	if (cl >= 0 && cl <= u.streamAbove) || (cl < 0 && x.bufferUnknown > 0) {
		resp.StreamBody = false
		limit := 0 // a known length is already bounded by streamAbove
		if cl < 0 {
			limit = x.bufferUnknown
		}
		err = resp.ReadBody(br, limit)
		if err == nil && cl == -1 {
			err = resp.Header.ReadTrailer(br)
		}
		if err != nil {
			hc.ReleaseReader(br)
			hc.CloseConn(cc)
			return false, err
		}
		done(closeConn || cl == -2)
		return false, nil
	}

	// Stream: a separate Response carries fasthttp's body reader (chunked
	// decoding, Content-Length accounting), framed as the upstream framed
	// it; resp gets a reader that returns the connection once drained.
	body := acquireResponseStream()
	body.up = u
	body.br = br
	body.conn = conn
	body.idle = x.idle
	body.closeConn = closeConn || cl == -2 // identity: read until close
	body.release = func(reuse bool) {
		if reuse {
			hc.ReleaseConn(cc)
		} else {
			hc.CloseConn(cc)
		}
	}
	body.resp.Header.SetContentLength(cl)
	body.resp.StreamBody = true
	_ = body.resp.ReadBody(br, 0) // in stream mode this only attaches the reader
	body.stream = body.resp.BodyStream()
	if cl < 0 {
		cl = -1
	}
	resp.SetBodyStream(body, cl)
	return false, nil
}

// responseStream is the body of a streamed upstream response, as the client
// response's body stream. fasthttp's server reads it while writing to the
// client and closes it when done, which returns the upstream connection to
// the pool if the body was read to its end, and closes it otherwise.
type responseStream struct {
	up        *upstream
	resp      *fasthttp.Response // kept across pooling
	stream    io.Reader
	br        *bufio.Reader
	conn      net.Conn
	release   func(reuse bool)
	idle      time.Duration
	eof       bool
	closeConn bool
}

var responseStreamPool sync.Pool

func acquireResponseStream() *responseStream {
	if v := responseStreamPool.Get(); v != nil {
		return v.(*responseStream)
	}
	return &responseStream{resp: new(fasthttp.Response)}
}

// Read reads the body, renewing the read deadline so that the route timeout
// bounds the gap between two reads, not the whole transfer.
func (s *responseStream) Read(p []byte) (int, error) {
	if s.stream == nil {
		return 0, io.ErrClosedPipe
	}
	if s.idle > 0 {
		if err := s.conn.SetReadDeadline(time.Now().Add(s.idle)); err != nil {
			return 0, err
		}
	}
	n, err := s.stream.Read(p)
	if err == io.EOF {
		s.eof = true
	}
	return n, err
}

// CloseWithError implements fasthttp.ReadCloserWithError; fasthttp calls it
// with the error that ended writing the body, if any.
func (s *responseStream) CloseWithError(err error) error {
	if s.stream == nil {
		return nil
	}
	fc, _ := s.conn.(*framedConn)
	reuse := err == nil && s.eof && !s.closeConn && s.br.Buffered() == 0 && (fc == nil || fc.pending() == 0)
	_ = s.resp.CloseBodyStream()
	s.up.hc.ReleaseReader(s.br)
	s.release(reuse)
	s.resp.Reset()
	resp := s.resp
	*s = responseStream{resp: resp}
	responseStreamPool.Put(s)
	return nil
}

// requestBody is the body stream sent upstream for a request body that is
// streamed from the client (longer than the stream threshold, or chunked).
// It enforces MaxBodyBytes on chunked bodies, whose length fasthttp does
// not bound, and tags the client's read errors so they are not blamed on
// the upstream.
type requestBody struct {
	r     io.Reader
	left  int64
	err   error
	limit bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	if b.limit {
		b.left -= int64(n)
		if b.left < 0 {
			b.err = errRequestBodyTooBig
			return 0, b.err
		}
	}
	if err != nil && err != io.EOF {
		b.err = &clientBodyError{err}
		return n, b.err
	}
	return n, err
}

// clientBodyError marks a failure to read the request body from the client.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string   { return errClientBody.Error() + ": " + e.err.Error() }
func (e *clientBodyError) Unwrap() []error { return []error{errClientBody, e.err} }
