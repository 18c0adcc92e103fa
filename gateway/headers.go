package gateway

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"sync"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// Header names the gateway reads or writes.
var (
	strXForwardedFor   = []byte("X-Forwarded-For")
	strXForwardedProto = []byte("X-Forwarded-Proto")
	strXForwardedHost  = []byte("X-Forwarded-Host")
	strXRealIP         = []byte("X-Real-IP")
	strXRequestID      = []byte("X-Request-ID")
	strTraceparent     = []byte("Traceparent")
	strCacheControl    = []byte("Cache-Control")
	strHTTP11          = []byte("HTTP/1.1")
	strHTTP            = []byte("http")
	strHTTPS           = []byte("https")
	strCommaSpace      = []byte(", ")
)

// headerKind classifies the header fields the gateway acts on.
type headerKind uint8

const (
	kindOther headerKind = iota
	kindConnection
	kindKeepAlive
	kindProxyConnection
	kindProxyAuthenticate
	kindProxyAuthorization
	kindTE
	kindTrailer
	kindTransferEncoding
	kindUpgrade
	kindXForwardedFor
	kindXForwardedProto
	kindXForwardedHost
	kindXRealIP
	kindXRequestID
	kindTraceparent
	kindTracestate
	kindForwarded
	kindExpect
)

// hopByHop reports whether a field of this kind describes one connection
// rather than the message, and so is never forwarded in either direction.
// RFC 9110 §7.6.1 names Connection and the fields it lists, plus
// Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade; Trailer
// (RFC 9110 §6.6.2) and Proxy-Authenticate/Proxy-Authorization (RFC 9110
// §11.7, addressed to the proxy) complete the list net/http/httputil uses.
func (k headerKind) hopByHop() bool {
	return k >= kindConnection && k <= kindUpgrade
}

// kindNames are the canonical names, used to delete request fields (whose
// names fasthttp has normalized) by kind.
var kindNames = [...]string{
	kindConnection:         "Connection",
	kindKeepAlive:          "Keep-Alive",
	kindProxyConnection:    "Proxy-Connection",
	kindProxyAuthenticate:  "Proxy-Authenticate",
	kindProxyAuthorization: "Proxy-Authorization",
	kindTE:                 "Te",
	kindTrailer:            "Trailer",
	kindTransferEncoding:   "Transfer-Encoding",
	kindUpgrade:            "Upgrade",
	kindXForwardedFor:      "X-Forwarded-For",
	kindXForwardedProto:    "X-Forwarded-Proto",
	kindXForwardedHost:     "X-Forwarded-Host",
	kindXRealIP:            "X-Real-Ip",
	kindXRequestID:         "X-Request-Id",
	kindTraceparent:        "Traceparent",
	kindTracestate:         "Tracestate",
	kindForwarded:          "Forwarded",
	kindExpect:             "Expect",
}

// classifyHeader tells the kind of a field name, case-insensitively.
func classifyHeader(k []byte) headerKind {
	switch len(k) {
	case 2:
		if equalFold(k, "te") {
			return kindTE
		}
	case 6:
		if equalFold(k, "expect") {
			return kindExpect
		}
	case 7:
		if equalFold(k, "trailer") {
			return kindTrailer
		}
		if equalFold(k, "upgrade") {
			return kindUpgrade
		}
	case 9:
		if equalFold(k, "x-real-ip") {
			return kindXRealIP
		}
		if equalFold(k, "forwarded") {
			return kindForwarded
		}
	case 10:
		if equalFold(k, "connection") {
			return kindConnection
		}
		if equalFold(k, "keep-alive") {
			return kindKeepAlive
		}
		if equalFold(k, "tracestate") {
			return kindTracestate
		}
	case 11:
		if equalFold(k, "traceparent") {
			return kindTraceparent
		}
	case 12:
		if equalFold(k, "x-request-id") {
			return kindXRequestID
		}
	case 15:
		if equalFold(k, "x-forwarded-for") {
			return kindXForwardedFor
		}
	case 16:
		if equalFold(k, "proxy-connection") {
			return kindProxyConnection
		}
		if equalFold(k, "x-forwarded-host") {
			return kindXForwardedHost
		}
	case 17:
		if equalFold(k, "transfer-encoding") {
			return kindTransferEncoding
		}
		if equalFold(k, "x-forwarded-proto") {
			return kindXForwardedProto
		}
	case 18:
		if equalFold(k, "proxy-authenticate") {
			return kindProxyAuthenticate
		}
	case 19:
		if equalFold(k, "proxy-authorization") {
			return kindProxyAuthorization
		}
	}
	return kindOther
}

// protectedFromConnection reports whether a field must survive being named
// in Connection. Host routes the request and Content-Length frames its
// body; letting a client (or an upstream) drop them by listing them would
// desynchronize the next hop, the classic hop-by-hop abuse.
func protectedFromConnection(name []byte) bool {
	return equalFold(name, "host") || equalFold(name, "content-length")
}

// equalFold reports whether b equals the lower-case ASCII s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// forEachToken calls f for every non-empty comma-separated token of v, with
// surrounding whitespace removed (the #token list syntax of RFC 9110 §5.6.1).
func forEachToken(v []byte, f func(tok []byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		if tok = trimOWS(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// scratch holds the per-request buffers of the header work, pooled so a
// proxied request allocates nothing once the pool is warm.
type scratch struct {
	seen    uint32 // bit per headerKind present on the request
	tokens  []byte // names listed in Connection, each followed by ','
	delKeys []byte // response field names to delete, each followed by '\n'
	xff     []byte // X-Forwarded-For from a trusted peer, then the new value
	xfp     []byte
	xfh     []byte
	reqID   []byte
	trace   []byte
	ip      []byte
	host    []byte
	path    []byte
	query   []byte
	body    requestBody
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func acquireScratch() *scratch { return scratchPool.Get().(*scratch) }

// maxPooledScratch keeps one giant request from pinning its buffers.
const maxPooledScratch = 64 << 10

func releaseScratch(sc *scratch) {
	if cap(sc.xff)+cap(sc.path)+cap(sc.query)+cap(sc.tokens)+cap(sc.delKeys) > maxPooledScratch {
		return
	}
	sc.seen = 0
	sc.tokens, sc.delKeys = sc.tokens[:0], sc.delKeys[:0]
	sc.xff, sc.xfp, sc.xfh = sc.xff[:0], sc.xfp[:0], sc.xfh[:0]
	sc.reqID, sc.trace, sc.ip = sc.reqID[:0], sc.trace[:0], sc.ip[:0]
	sc.host, sc.path, sc.query = sc.host[:0], sc.path[:0], sc.query[:0]
	sc.body = requestBody{}
	scratchPool.Put(sc)
}

func (sc *scratch) has(k headerKind) bool { return sc.seen&(1<<k) != 0 }

// scanRequest reads the client's header block once, noting which fields the
// gateway acts on and copying the values it may keep (they live in buffers
// the rewrite is about to change).
func scanRequest(h *fasthttp.RequestHeader, sc *scratch, trusted bool) {
	for k, v := range h.AllInOrder() {
		kind := classifyHeader(k)
		if kind == kindOther {
			continue
		}
		first := !sc.has(kind)
		sc.seen |= 1 << kind
		switch kind {
		case kindConnection:
			forEachToken(v, func(tok []byte) {
				sc.tokens = append(append(sc.tokens, tok...), ',')
			})
		case kindXForwardedFor:
			if trusted {
				if len(sc.xff) > 0 {
					sc.xff = append(sc.xff, strCommaSpace...)
				}
				sc.xff = append(sc.xff, trimOWS(v)...)
			}
		case kindXForwardedProto:
			if trusted && first {
				sc.xfp = append(sc.xfp, trimOWS(v)...)
			}
		case kindXForwardedHost:
			if trusted && first {
				sc.xfh = append(sc.xfh, trimOWS(v)...)
			}
		case kindXRequestID:
			if first {
				sc.reqID = append(sc.reqID, v...)
			} else {
				sc.reqID = sc.reqID[:0] // two IDs: trust neither
			}
		case kindTraceparent:
			if first {
				sc.trace = append(sc.trace, v...)
			} else {
				sc.trace = sc.trace[:0] // W3C: multiple traceparent fields are invalid
			}
		}
	}
}

// rewriteRequest turns the client's request into the upstream's, in place:
// hop-by-hop fields and the fields Connection names go; X-Forwarded-*,
// X-Real-IP, X-Request-ID and traceparent are set from what the gateway
// knows; the upstream sees HTTP/1.1 on a persistent connection whatever the
// client spoke. The client connection's own fate was decided by fasthttp
// before the handler ran.
func (s *Server) rewriteRequest(ctx *fasthttp.RequestCtx, sc *scratch, peer, client netip.Addr, trusted bool) {
	h := &ctx.Request.Header
	for k := kindConnection; k <= kindExpect; k++ {
		if !sc.has(k) {
			continue
		}
		switch k {
		case kindForwarded:
			if trusted {
				continue // RFC 7239 from a trusted proxy passes through
			}
		case kindTraceparent, kindTracestate:
			if validTraceparent(sc.trace) {
				continue // forwarded as sent; tracestate only travels with it (W3C)
			}
		}
		h.Del(kindNames[k])
	}
	for toks := sc.tokens; len(toks) > 0; {
		i := bytes.IndexByte(toks, ',')
		tok := toks[:i]
		toks = toks[i+1:]
		if !protectedFromConnection(tok) {
			h.DelBytes(tok)
		}
	}
	if h.ConnectionClose() {
		h.ResetConnectionClose()
	}
	if !h.IsHTTP11() {
		h.SetProtocolBytes(strHTTP11)
	}

	// X-Forwarded-For: append to a trusted chain, start a new one otherwise.
	// The client was resolved from the same chain by proxy.
	if trusted && len(sc.xff) > 0 {
		sc.xff = append(sc.xff, strCommaSpace...)
	} else {
		sc.xff = sc.xff[:0]
	}
	sc.xff = peer.AppendTo(sc.xff)
	h.SetBytesKV(strXForwardedFor, sc.xff)
	sc.ip = client.AppendTo(sc.ip[:0])
	h.SetBytesKV(strXRealIP, sc.ip)

	proto := strHTTP
	if ctx.IsTLS() {
		proto = strHTTPS
	}
	if trusted && (equalFold(sc.xfp, "http") || equalFold(sc.xfp, "https")) {
		proto = sc.xfp
	}
	h.SetBytesKV(strXForwardedProto, proto)
	if !trusted || len(sc.xfh) == 0 {
		sc.xfh = append(sc.xfh[:0], ctx.Host()...)
	}
	h.SetBytesKV(strXForwardedHost, sc.xfh)

	h.SetBytesKV(strXRequestID, sc.reqID)
	if !validTraceparent(sc.trace) {
		sc.trace = appendNewTraceparent(sc.trace[:0])
		h.SetBytesKV(strTraceparent, sc.trace)
	}
}

// clientFromChain resolves the client behind trusted proxies: walking the
// X-Forwarded-For chain from the right, past addresses of trusted proxies,
// to the first one that is not trusted. An entry that is not a bare IP
// stops the walk; the hop before it is the client, because nothing trusted
// vouches for what lies further left.
func (s *Server) clientFromChain(peer netip.Addr, chain []byte) netip.Addr {
	client := peer
	for len(chain) > 0 {
		i := bytes.LastIndexByte(chain, ',')
		entry := trimOWS(chain[i+1:])
		if i < 0 {
			chain = nil
		} else {
			chain = chain[:i]
		}
		ip, err := netip.ParseAddr(b2s(entry))
		if err != nil {
			break
		}
		client = ip.Unmap()
		if !s.isTrusted(client) {
			break
		}
	}
	return client
}

func (s *Server) isTrusted(ip netip.Addr) bool {
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// peerAddr is the address of the TCP peer, IPv4-mapped addresses unmapped;
// the zero Addr when the peer is not on TCP (in-memory listeners).
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	ip, _ := netip.AddrFromSlice(ctx.RemoteIP())
	return ip.Unmap()
}

// rewriteResponse removes the upstream's hop-by-hop fields (and those its
// Connection names) and any X-Request-ID it sent, then sets the request's.
// Upstream field names keep their case, so matching is case-insensitive.
func rewriteResponse(h *fasthttp.ResponseHeader, sc *scratch) {
	sc.tokens = sc.tokens[:0]
	sc.delKeys = sc.delKeys[:0]
	for k, v := range h.All() {
		switch kind := classifyHeader(k); {
		case kind == kindConnection:
			forEachToken(v, func(tok []byte) {
				if !protectedFromConnection(tok) {
					sc.tokens = append(append(sc.tokens, tok...), ',')
				}
			})
			sc.delKeys = append(append(sc.delKeys, k...), '\n')
		case kind.hopByHop(), kind == kindXRequestID:
			sc.delKeys = append(append(sc.delKeys, k...), '\n')
		}
	}
	if len(sc.tokens) > 0 {
		for k := range h.All() {
			if classifyHeader(k) == kindOther && listed(sc.tokens, k) {
				sc.delKeys = append(append(sc.delKeys, k...), '\n')
			}
		}
	}
	for keys := sc.delKeys; len(keys) > 0; {
		i := bytes.IndexByte(keys, '\n')
		h.DelBytes(keys[:i])
		keys = keys[i+1:]
	}
	h.ResetConnectionClose()
	if !bytes.Equal(h.Protocol(), strHTTP11) {
		h.SetProtocol(strHTTP11)
	}
	h.AddBytesKV(strXRequestID, sc.reqID)
}

// listed reports whether name is one of the ','-terminated tokens,
// case-insensitively.
func listed(tokens, name []byte) bool {
	for len(tokens) > 0 {
		i := bytes.IndexByte(tokens, ',')
		if bytes.EqualFold(tokens[:i], name) {
			return true
		}
		tokens = tokens[i+1:]
	}
	return false
}

// maxRequestIDLen bounds a client-supplied X-Request-ID.
const maxRequestIDLen = 128

// validRequestID reports whether a client-supplied X-Request-ID is kept:
// 1 to 128 characters of [A-Za-z0-9._-], nothing that could smuggle
// structure into a log line or a header.
func validRequestID(b []byte) bool {
	if len(b) == 0 || len(b) > maxRequestIDLen {
		return false
	}
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// appendNewRequestID appends 32 random lower-case hex digits (128 bits).
func appendNewRequestID(dst []byte) []byte {
	return appendHex64(appendHex64(dst, rand.Uint64()), rand.Uint64())
}

const hexDigits = "0123456789abcdef"

func appendHex64(dst []byte, v uint64) []byte {
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, hexDigits[(v>>uint(shift))&0xf])
	}
	return dst
}

// validTraceparent implements the W3C Trace Context parsing rules
// (https://www.w3.org/TR/trace-context/#traceparent-header): version 00 is
// exactly "00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>" in lower
// case, with neither id all zeros; a higher version (not ff) may carry more
// fields after a '-'.
func validTraceparent(b []byte) bool {
	const size = 55
	if len(b) < size {
		return false
	}
	if !isLowerHex(b[0:2]) || (b[0] == 'f' && b[1] == 'f') {
		return false
	}
	if b[2] != '-' || b[35] != '-' || b[52] != '-' {
		return false
	}
	if !isLowerHex(b[3:35]) || allZero(b[3:35]) || !isLowerHex(b[36:52]) || allZero(b[36:52]) ||
		!isLowerHex(b[53:55]) {
		return false
	}
	if b[0] == '0' && b[1] == '0' {
		return len(b) == size
	}
	return len(b) == size || b[size] == '-'
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != '0' {
			return false
		}
	}
	return true
}

// appendNewTraceparent starts a trace for a request that arrived without a
// valid traceparent: a random trace id and, as the parent, a span id that
// stands for the gateway. It is marked sampled, so parent-based samplers in
// the upstreams keep recording exactly as they would without the gateway.
func appendNewTraceparent(dst []byte) []byte {
	dst = append(dst, "00-"...)
	hi, lo := rand.Uint64(), rand.Uint64()
	if hi|lo == 0 {
		lo = 1
	}
	dst = appendHex64(appendHex64(dst, hi), lo)
	dst = append(dst, '-')
	span := rand.Uint64()
	if span == 0 {
		span = 1
	}
	dst = appendHex64(dst, span)
	return append(dst, "-01"...)
}

// appendUpstreamPath appends the path sent upstream: the target's base path
// (already escaped, no trailing slash) and the rest of the request path
// (decoded, from fasthttp's normalized path), joined by exactly one slash
// and with rest escaped again. A bare rest keeps its trailing slash:
//
//	base "/v1", rest ""   -> "/v1"
//	base "/v1", rest "/"  -> "/v1/"
//	base "/v1", rest "/a" -> "/v1/a"
//	base "",    rest ""   -> "/"
//
// The request is matched and forwarded on the same normalized path, so no
// "/a/../b" or "%2e%2e" can reach a path the route did not match. The price
// is that an encoded slash ("%2F") reaches the upstream as a separator.
func appendUpstreamPath(dst []byte, base string, rest []byte) []byte {
	start := len(dst)
	dst = append(dst, base...)
	i := 0
	for i < len(rest) && rest[i] == '/' {
		i++
	}
	if i == len(rest) {
		if i > 0 || len(dst) == start {
			dst = append(dst, '/')
		}
		return dst
	}
	dst = append(dst, '/')
	return appendEscapedPath(dst, rest[i:])
}

// pathSafe marks the bytes a path may carry unescaped: RFC 3986 pchar
// (unreserved, sub-delims, ':' and '@') and '/'.
var pathSafe = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/") {
		t[c] = true
	}
	return t
}()

func appendEscapedPath(dst, p []byte) []byte {
	const upperHex = "0123456789ABCDEF"
	for _, c := range p {
		if pathSafe[c] {
			dst = append(dst, c)
		} else {
			dst = append(dst, '%', upperHex[c>>4], upperHex[c&0xf])
		}
	}
	return dst
}

// appendQuery appends the target's query then the request's, joined by '&'.
func appendQuery(dst []byte, target string, request []byte) []byte {
	dst = append(dst, target...)
	if len(target) > 0 && len(request) > 0 {
		dst = append(dst, '&')
	}
	return append(dst, request...)
}

// appendMatchHost appends the host a route is matched on: the request's
// host lower-cased, without port and without a trailing dot.
func appendMatchHost(dst, host []byte) []byte {
	if len(host) > 0 && host[0] == '[' {
		if i := bytes.IndexByte(host, ']'); i > 0 {
			host = host[:i+1]
		}
	} else if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host, ':') == i {
		host = host[:i]
	}
	host = bytes.TrimSuffix(host, []byte{'.'})
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// b2s views b as a string without copying. The string must not outlive b
// or be used after b changes; the gateway only passes such strings to calls
// that do not retain them (Match, netip.ParseAddr).
func b2s(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
