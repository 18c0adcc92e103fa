package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// defaultDialTimeout bounds a dial when the caller gives no deadline.
const defaultDialTimeout = 3 * time.Second

// dialUpstream returns the HostClient dialer: TCP, TLS when tlsConfig is
// set, and every connection wrapped in a framedConn. TLS is done here, not
// by fasthttp, so that the wrapper sees plaintext; fasthttp recognizes the
// result as TLS already (it has a Handshake method) and does not wrap it
// again.
func dialUpstream(tlsConfig *tls.Config, maxHeaderBytes int) fasthttp.DialFuncWithTimeout {
	return func(addr string, timeout time.Duration) (net.Conn, error) {
		if timeout <= 0 {
			timeout = defaultDialTimeout
		}
		d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		if tlsConfig != nil {
			tc := tls.Client(conn, tlsConfig)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err = tc.HandshakeContext(ctx)
			cancel()
			if err != nil {
				_ = conn.Close()
				return nil, err
			}
			conn = tc
		}
		return &framedConn{Conn: conn, maxHeader: maxHeaderBytes}, nil
	}
}

// upstreamTLSConfig clones base (or a default) with the target's host as
// ServerName.
func upstreamTLSConfig(base *tls.Config, addr string) *tls.Config {
	var c *tls.Config
	if base != nil {
		c = base.Clone()
	} else {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			c.ServerName = host
		}
	}
	return c
}

// framedConn guards the HTTP client against ambiguous response framing.
//
// fasthttp v1.78's client gives Transfer-Encoding precedence over
// Content-Length, as RFC 9112 §6.3 says, but then keeps the connection: a
// response carrying both is exactly what a hostile or desynchronized
// upstream sends so that bytes it framed differently are read as the
// response to the next request, which may be another client's. RFC 9112
// §6.3 requires such a connection to be closed after the response.
//
// The wrapper holds back the header block of every response until it is
// complete (a request written marks the start of a response), and when a
// header block has both fields it rewrites each Content-Length line, in
// place and at the same length, into "Connection: close". Any HTTP client
// reading through the wrapper then frames the body by Transfer-Encoding
// alone and closes the connection afterwards; the proxy also checks
// takeAmbiguous. Interim (1xx) header blocks are checked too, and the one
// after them.
type framedConn struct {
	net.Conn
	maxHeader int
	// buf holds bytes read but not yet handed to the reader: buf[r:w].
	buf  []byte
	r, w int
	// err is a read error held back until buf is drained.
	err error
	// scanning is set from a request write until the final response's
	// header block has been checked.
	scanning bool
	// ambiguous is set when a checked header block had both fields.
	ambiguous bool
	// received counts response bytes since the last request write.
	received int
}

func (c *framedConn) Write(p []byte) (int, error) {
	if !c.scanning {
		c.scanning = true
		c.received = 0
	}
	return c.Conn.Write(p)
}

func (c *framedConn) Read(p []byte) (int, error) {
	if c.r < c.w {
		n := copy(p, c.buf[c.r:c.w])
		c.r += n
		return n, nil
	}
	if c.err != nil {
		err := c.err
		c.err = nil
		return 0, err
	}
	if !c.scanning {
		n, err := c.Conn.Read(p)
		c.received += n
		return n, err
	}
	return c.readHeader(p)
}

// readHeader reads until the final response header block is complete,
// neutralizes ambiguous framing in it, then serves the bytes. Usually the
// whole block arrives in one read: it is checked and rewritten right in
// the caller's buffer. Only a block split across reads is held back in buf
// until it is complete.
func (c *framedConn) readHeader(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.received += n
	start := c.scanBlocks(p[:n], 0)
	if err != nil {
		c.scanning = false
		if n > 0 {
			c.err = err
			return n, nil
		}
		return 0, err
	}
	if !c.scanning || n == 0 {
		return n, nil
	}
	if c.buf == nil {
		c.buf = make([]byte, max(c.maxHeader, len(p)))
	}
	c.r, c.w = 0, copy(c.buf, p[:n])
	for c.scanning {
		if c.w == len(c.buf) {
			// A header block the client's buffer cannot hold either: let
			// its parser reject it.
			c.scanning = false
			break
		}
		n, err := c.Conn.Read(c.buf[c.w:])
		c.w += n
		c.received += n
		start = c.scanBlocks(c.buf[:c.w], start)
		if err != nil {
			c.err = err
			c.scanning = false
		}
	}
	n = copy(p, c.buf[:c.w])
	c.r = n
	if n == 0 && c.err != nil {
		err := c.err
		c.err = nil
		return 0, err
	}
	return n, nil
}

// scanBlocks checks the complete header blocks in b from start on, and
// returns where the next block starts. It ends scanning at the final
// (non-1xx, or 101) response's block.
func (c *framedConn) scanBlocks(b []byte, start int) int {
	for c.scanning {
		end := headerBlockEnd(b[start:])
		if end < 0 {
			break
		}
		status, ambiguous := neutralizeFraming(b[start : start+end])
		c.ambiguous = c.ambiguous || ambiguous
		start += end
		if status < 100 || status > 199 || status == 101 {
			c.scanning = false
		}
	}
	return start
}

// pending reports bytes read from the connection and not yet consumed.
func (c *framedConn) pending() int { return c.w - c.r }

// takeAmbiguous reports whether a response since the last call had
// ambiguous framing, and clears the flag.
func (c *framedConn) takeAmbiguous() bool {
	a := c.ambiguous
	c.ambiguous = false
	return a
}

// Handshake makes fasthttp treat a wrapped TLS connection as TLS already.
func (c *framedConn) Handshake() error {
	if h, ok := c.Conn.(interface{ Handshake() error }); ok {
		return h.Handshake()
	}
	return nil
}

// headerBlockEnd returns the length of the header block at the start of b,
// through the empty line that ends it, or -1 if b does not hold it all.
// Lines may end in CRLF or a bare LF.
func headerBlockEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
}

// connectionClose replaces a Content-Length line; it is as short as the
// shortest valid one ("Content-Length:0"), and longer lines are padded with
// whitespace before the value, which parsers strip.
const connectionClose = "Connection:close"

// neutralizeFraming inspects one header block (status line through the
// empty line) and returns its status code, 0 if the status line is not
// HTTP. If the block has both Transfer-Encoding and Content-Length, every
// Content-Length line is rewritten in place into "Connection: close" and
// ambiguous is true: Transfer-Encoding then frames the body alone and the
// connection is not reused (RFC 9112 §6.3).
func neutralizeFraming(block []byte) (status int, ambiguous bool) {
	nl := bytes.IndexByte(block, '\n')
	if nl < 0 {
		return 0, false
	}
	status = parseStatus(block[:nl])
	fields := block[nl+1:]

	hasTE, hasCL := false, false
	forEachField(fields, func(name []byte, line []byte) {
		switch {
		case equalFold(name, "transfer-encoding"):
			hasTE = true
		case equalFold(name, "content-length"):
			hasCL = true
		}
	})
	if !hasTE || !hasCL {
		return status, false
	}
	forEachField(fields, func(name []byte, line []byte) {
		if !equalFold(name, "content-length") || len(line) < len(connectionClose) {
			return // too short to be valid: the client's parser rejects it
		}
		pad := len(line) - len(connectionClose)
		n := copy(line, "Connection:")
		for i := range pad {
			line[n+i] = ' '
		}
		copy(line[n+pad:], "close")
	})
	return status, true
}

// forEachField calls f with the name and the whole line (without its line
// ending) of every field line in fields, up to the empty line.
func forEachField(fields []byte, f func(name, line []byte)) {
	for len(fields) > 0 {
		i := bytes.IndexByte(fields, '\n')
		if i < 0 {
			return
		}
		line := fields[:i]
		fields = fields[i+1:]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			return
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := line[:colon]
		for len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t') {
			name = name[:len(name)-1]
		}
		f(name, line)
	}
}

// parseStatus reads the code of an "HTTP/x.y NNN reason" status line.
func parseStatus(line []byte) int {
	if !bytes.HasPrefix(line, []byte("HTTP/")) {
		return 0
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 || len(line) < sp+4 {
		return 0
	}
	code := 0
	for _, c := range line[sp+1 : sp+4] {
		if c < '0' || c > '9' {
			return 0
		}
		code = code*10 + int(c-'0')
	}
	return code
}
