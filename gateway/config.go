package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Defaults for the zero values of Config.
const (
	DefaultReadTimeout         = 15 * time.Second
	DefaultWriteTimeout        = 15 * time.Second
	DefaultIdleTimeout         = 60 * time.Second
	DefaultMaxHeaderBytes      = 16 << 10
	DefaultMaxBodyBytes        = 10 << 20
	DefaultStreamThreshold     = 1 << 20
	DefaultMaxConnsPerTarget   = 1024
	DefaultUpstreamIdleTimeout = 4 * time.Second

	// minHeaderBytes keeps the header cap above what ordinary clients send
	// (a browser with a few cookies needs 1-2 KiB).
	minHeaderBytes = 1 << 10
)

// Config configures the proxy listener. A zero field takes the default named
// in its comment; negative values are invalid. The wiring (cmd/isekai)
// reads the environment variables; this package never does.
type Config struct {
	// ListenAddr is the proxy listen address, used by ListenAndServe
	// (SERVER_PORT; the wiring turns it into ":8080" by default).
	ListenAddr string

	// ReadTimeout bounds reading one request, headers and body, from the
	// first byte (SERVER_READ_TIMEOUT, default 15s). A client slower than
	// this gets 408.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response to the client, streamed
	// bodies included (SERVER_WRITE_TIMEOUT, default 15s).
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive client connection that sends no new
	// request for this long (SERVER_IDLE_TIMEOUT, default 60s).
	IdleTimeout time.Duration

	// MaxHeaderBytes caps the request line plus headers
	// (SERVER_MAX_HEADER_BYTES, default 16 KiB); larger requests get 431.
	// It is fasthttp's ReadBufferSize, which is also its header cap, and the
	// size of the buffer upstream response headers must fit in.
	MaxHeaderBytes int
	// MaxBodyBytes caps a request body (SERVER_MAX_BODY_BYTES, default
	// 10 MiB); larger bodies get 413. Response bodies are not capped: above
	// StreamThreshold they are streamed, never held in memory.
	MaxBodyBytes int
	// StreamThreshold is the body size above which request and response
	// bodies are streamed between client and upstream instead of being
	// buffered (SERVER_STREAM_THRESHOLD, default 1 MiB). Bodies of unknown
	// length (chunked) are always streamed.
	StreamThreshold int

	// TrustedProxies are the peers whose X-Forwarded-For, X-Forwarded-Proto
	// and X-Forwarded-Host are believed (TRUSTED_PROXIES, comma-separated
	// CIDRs; default none: every peer is the client).
	TrustedProxies []netip.Prefix

	// MaxConnsPerTarget caps the connections to one upstream address
	// (UPSTREAM_MAX_CONNS, default 1024). Requests beyond it wait for a free
	// connection until their route timeout.
	MaxConnsPerTarget int
	// UpstreamIdleTimeout closes a pooled upstream connection left idle this
	// long (UPSTREAM_IDLE_TIMEOUT, default 4s). Keep it below the upstreams'
	// own keep-alive timeout (Node.js and uvicorn use 5s) so the gateway,
	// not the upstream, closes idle connections.
	UpstreamIdleTimeout time.Duration
	// UpstreamTLS is the TLS configuration for https targets; nil means the
	// system roots and TLS 1.2 or later. ServerName is set per target.
	UpstreamTLS *tls.Config

	// Concurrency caps the client connections served at once
	// (SERVER_CONCURRENCY, default fasthttp's 256 Ki).
	Concurrency int

	// Recorder receives a Record of every request the gateway answers, for
	// the request log (REQUEST_LOG_ENABLED, default on); nil records
	// nothing. LogQuery includes query strings in records
	// (REQUEST_LOG_QUERY, default off: they often carry secrets).
	Recorder Recorder
	LogQuery bool

	// Logger receives lifecycle events and upstream failures (at Debug);
	// nil means slog.Default(). Nothing is logged per successful request.
	Logger *slog.Logger
}

// Validate reports the first invalid field by name. Zero values are valid:
// they stand for the defaults.
func (c *Config) Validate() error {
	var errs []error
	nonNegative := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	nonNegative("ReadTimeout", int64(c.ReadTimeout))
	nonNegative("WriteTimeout", int64(c.WriteTimeout))
	nonNegative("IdleTimeout", int64(c.IdleTimeout))
	nonNegative("MaxHeaderBytes", int64(c.MaxHeaderBytes))
	nonNegative("MaxBodyBytes", int64(c.MaxBodyBytes))
	nonNegative("StreamThreshold", int64(c.StreamThreshold))
	nonNegative("MaxConnsPerTarget", int64(c.MaxConnsPerTarget))
	nonNegative("UpstreamIdleTimeout", int64(c.UpstreamIdleTimeout))
	nonNegative("Concurrency", int64(c.Concurrency))
	if c.MaxHeaderBytes > 0 && c.MaxHeaderBytes < minHeaderBytes {
		errs = append(errs, fmt.Errorf("MaxHeaderBytes must be at least %d", minHeaderBytes))
	}
	for i, p := range c.TrustedProxies {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("TrustedProxies[%d] is not a valid prefix", i))
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	setDuration := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setDuration(&c.ReadTimeout, DefaultReadTimeout)
	setDuration(&c.WriteTimeout, DefaultWriteTimeout)
	setDuration(&c.IdleTimeout, DefaultIdleTimeout)
	setDuration(&c.UpstreamIdleTimeout, DefaultUpstreamIdleTimeout)
	setInt(&c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setInt(&c.MaxBodyBytes, DefaultMaxBodyBytes)
	setInt(&c.StreamThreshold, DefaultStreamThreshold)
	setInt(&c.MaxConnsPerTarget, DefaultMaxConnsPerTarget)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	prefixes := make([]netip.Prefix, len(c.TrustedProxies))
	for i, p := range c.TrustedProxies {
		prefixes[i] = p.Masked()
	}
	c.TrustedProxies = prefixes
	return c
}
