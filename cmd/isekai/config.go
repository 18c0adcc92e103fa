package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/zakirkun/isekai/events"
)

// Config is the node's configuration, read from the environment once at
// start and validated with messages that name the variable.
type Config struct {
	// ServerHost:ServerPort is the proxy listener (SERVER_HOST, default
	// all interfaces; SERVER_PORT, default 8080).
	ServerHost string
	ServerPort int
	// AdminHost:AdminPort is the admin listener (ADMIN_HOST, default
	// 127.0.0.1; ADMIN_PORT, default 8081). Until authentication is built
	// the admin API must stay on loopback.
	AdminHost string
	AdminPort int
	// AdminStoreTimeout bounds each database call of an admin request, so
	// an outage answers 503 quickly (ADMIN_STORE_TIMEOUT, 3s).
	AdminStoreTimeout time.Duration

	// Proxy server limits (SERVER_READ_TIMEOUT 15s, SERVER_WRITE_TIMEOUT
	// 15s, SERVER_IDLE_TIMEOUT 60s, SERVER_MAX_HEADER_BYTES 16384,
	// SERVER_MAX_BODY_BYTES 10485760).
	ReadTimeout    time.Duration
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration
	MaxHeaderBytes int
	MaxBodyBytes   int
	// StreamThreshold: bodies above it are streamed, not buffered
	// (SERVER_STREAM_THRESHOLD, 1 MiB). Concurrency caps simultaneous
	// proxy connections (SERVER_CONCURRENCY, 262144).
	StreamThreshold int
	Concurrency     int
	// UpstreamMaxConns caps connections per upstream target
	// (UPSTREAM_MAX_CONNS, 1024); idle ones close after UpstreamIdleTimeout
	// (UPSTREAM_IDLE_TIMEOUT, 4s).
	UpstreamMaxConns    int
	UpstreamIdleTimeout time.Duration
	// ShutdownTimeout bounds draining in-flight requests on SIGTERM
	// (SERVER_SHUTDOWN_TIMEOUT, 30s).
	ShutdownTimeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For is kept
	// (TRUSTED_PROXIES, comma-separated CIDRs or IPs; default none).
	TrustedProxies []netip.Prefix

	// DatabaseURL is the cluster's shared Postgres (DATABASE_URL, or built
	// from DB_HOST, DB_PORT 5432, DB_USER postgres, DB_PASSWORD, DB_NAME
	// isekai_gateway, DB_SSL_MODE disable). Empty: the node manages a local
	// Postgres under DataDir.
	DatabaseURL string
	// DBMaxConns and DBMinIdleConns size the pool (DB_MAX_OPEN_CONNS 10,
	// DB_MAX_IDLE_CONNS 2).
	DBMaxConns     int
	DBMinIdleConns int

	// DataDir holds the node id, a managed Postgres and local state
	// (ISEKAI_DATA_DIR, default ./.isekai).
	DataDir string
	// NodeID names the node (ISEKAI_NODE_ID; default generated once and
	// kept in DataDir/node_id).
	NodeID string
	// ManagedPGPort is the loopback port of a managed Postgres
	// (ISEKAI_PG_PORT, default 0: a free port at each start).
	ManagedPGPort int
	// PollInterval is the listener's safety poll (ISEKAI_POLL_INTERVAL, 5s).
	PollInterval time.Duration
	// SnapshotInterval: a node writes a snapshot of the route table to
	// Postgres once the log has moved this many events past the newest one
	// (ISEKAI_SNAPSHOT_INTERVAL, 1000; 0 writes none). SnapshotRetain
	// snapshots are kept, and one per 10 intervals before them
	// (ISEKAI_SNAPSHOT_RETAIN, 100; 0 keeps all). The local last-good file
	// (DataDir/state/routes.snapshot) is written regardless.
	SnapshotInterval int64
	SnapshotRetain   int
	// HeartbeatInterval is how often a node refreshes its row in the node
	// registry (ISEKAI_HEARTBEAT_INTERVAL, 2s); a node whose heartbeat is
	// older than NodeStaleAfter is not live (ISEKAI_NODE_STALE_AFTER, 10s).
	HeartbeatInterval time.Duration
	NodeStaleAfter    time.Duration
	// RequestLog configures the request log written to Postgres through
	// COPY (REQUEST_LOG_ENABLED, default true; REQUEST_LOG_QUERY records
	// query strings, default false; REQUEST_LOG_BATCH_SIZE 5000,
	// REQUEST_LOG_FLUSH_INTERVAL 200ms, REQUEST_LOG_QUEUE_SIZE 65536,
	// REQUEST_LOG_SPOOL_BYTES 268435456, REQUEST_LOG_RETENTION 168h,
	// REQUEST_LOG_SAMPLE_RATE 1.0). The spool lives in DataDir.
	RequestLogEnabled bool
	RequestLogQuery   bool
	RequestLog        events.RequestLogConfig
	// LogLevel is debug, info, warn or error (LOG_LEVEL, info); LogFormat
	// is text or json (LOG_FORMAT, text).
	LogLevel  slog.Level
	LogFormat string
}

// loadConfig reads the environment. It collects every problem, so one start
// attempt shows them all.
func loadConfig(getenv func(string) string) (Config, error) {
	p := &envParser{getenv: getenv}
	c := Config{
		ServerHost:          p.str("SERVER_HOST", ""),
		ServerPort:          p.port("SERVER_PORT", 8080),
		AdminHost:           p.str("ADMIN_HOST", "127.0.0.1"),
		AdminPort:           p.port("ADMIN_PORT", 8081),
		ReadTimeout:         p.duration("SERVER_READ_TIMEOUT", 15*time.Second),
		WriteTimeout:        p.duration("SERVER_WRITE_TIMEOUT", 15*time.Second),
		IdleTimeout:         p.duration("SERVER_IDLE_TIMEOUT", 60*time.Second),
		ShutdownTimeout:     p.duration("SERVER_SHUTDOWN_TIMEOUT", 30*time.Second),
		MaxHeaderBytes:      p.intRange("SERVER_MAX_HEADER_BYTES", 16<<10, 1<<10, 1<<20),
		MaxBodyBytes:        p.intRange("SERVER_MAX_BODY_BYTES", 10<<20, 0, 1<<30),
		StreamThreshold:     p.intRange("SERVER_STREAM_THRESHOLD", 1<<20, 4<<10, 1<<30),
		Concurrency:         p.intRange("SERVER_CONCURRENCY", 256*1024, 1, 1<<24),
		UpstreamMaxConns:    p.intRange("UPSTREAM_MAX_CONNS", 1024, 1, 1<<20),
		UpstreamIdleTimeout: p.duration("UPSTREAM_IDLE_TIMEOUT", 4*time.Second),
		DBMaxConns:          p.intRange("DB_MAX_OPEN_CONNS", 10, 2, 1000),
		DBMinIdleConns:      p.intRange("DB_MAX_IDLE_CONNS", 2, 0, 1000),
		DataDir:             p.str("ISEKAI_DATA_DIR", "./.isekai"),
		NodeID:              p.str("ISEKAI_NODE_ID", ""),
		ManagedPGPort:       p.port("ISEKAI_PG_PORT", 0),
		PollInterval:        p.duration("ISEKAI_POLL_INTERVAL", 5*time.Second),
		SnapshotInterval:    int64(p.intRange("ISEKAI_SNAPSHOT_INTERVAL", 1000, 0, 1<<30)),
		SnapshotRetain:      p.intRange("ISEKAI_SNAPSHOT_RETAIN", 100, 0, 1<<20),
		HeartbeatInterval:   p.duration("ISEKAI_HEARTBEAT_INTERVAL", 2*time.Second),
		NodeStaleAfter:      p.duration("ISEKAI_NODE_STALE_AFTER", 10*time.Second),
		LogFormat:           p.str("LOG_FORMAT", "text"),
	}
	c.TrustedProxies = p.prefixes("TRUSTED_PROXIES")
	c.RequestLogEnabled = p.boolean("REQUEST_LOG_ENABLED", true)
	c.RequestLogQuery = p.boolean("REQUEST_LOG_QUERY", false)
	c.RequestLog = events.RequestLogConfig{
		BatchSize:     p.intRange("REQUEST_LOG_BATCH_SIZE", events.DefaultRequestLogBatchSize, 1, 100000),
		FlushInterval: p.duration("REQUEST_LOG_FLUSH_INTERVAL", events.DefaultRequestLogFlushInterval),
		QueueSize:     p.intRange("REQUEST_LOG_QUEUE_SIZE", events.DefaultRequestLogQueueSize, 1, 1<<24),
		SpoolMaxBytes: int64(p.intRange("REQUEST_LOG_SPOOL_BYTES", events.DefaultRequestLogSpoolMaxBytes, 0, 1<<40)),
		Retention:     p.duration("REQUEST_LOG_RETENTION", events.DefaultRequestLogRetention),
		SampleRate:    p.fraction("REQUEST_LOG_SAMPLE_RATE", 1),
	}
	c.DatabaseURL = p.databaseURL()
	switch lvl := strings.ToLower(p.str("LOG_LEVEL", "info")); lvl {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "info":
		c.LogLevel = slog.LevelInfo
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		p.fail("LOG_LEVEL", "must be debug, info, warn or error, not %q", lvl)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		p.fail("LOG_FORMAT", "must be text or json, not %q", c.LogFormat)
	}
	if c.AdminPort == c.ServerPort && c.AdminPort != 0 {
		p.fail("ADMIN_PORT", "must differ from SERVER_PORT (%d): no proxied path may collide with the admin API", c.ServerPort)
	}
	if c.NodeID != "" && !validNodeID(c.NodeID) {
		p.fail("ISEKAI_NODE_ID", "must be 1-64 characters of letters, digits, '.', '_' or '-'")
	}
	if c.PollInterval < 100*time.Millisecond {
		p.fail("ISEKAI_POLL_INTERVAL", "must be at least 100ms")
	}
	if c.NodeStaleAfter <= c.HeartbeatInterval {
		p.fail("ISEKAI_NODE_STALE_AFTER", "must be longer than ISEKAI_HEARTBEAT_INTERVAL (%s)", c.HeartbeatInterval)
	}
	if c.DBMinIdleConns > c.DBMaxConns {
		p.fail("DB_MAX_IDLE_CONNS", "must not exceed DB_MAX_OPEN_CONNS (%d)", c.DBMaxConns)
	}
	if ip, err := netip.ParseAddr(c.AdminHost); c.AdminHost != "localhost" && (err != nil || !ip.IsLoopback()) {
		p.fail("ADMIN_HOST", "must be a loopback address (127.0.0.1, ::1 or localhost): the admin API has no authentication yet")
	}
	if v := strings.ToLower(getenv("AUTH_ENABLED")); v == "true" || v == "1" {
		p.fail("AUTH_ENABLED", "authentication is not available in this build; keep the admin listener on loopback")
	}
	if len(p.errs) > 0 {
		return c, errors.Join(p.errs...)
	}
	return c, nil
}

type envParser struct {
	getenv func(string) string
	errs   []error
}

func (p *envParser) fail(name, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s %s", name, fmt.Sprintf(format, args...)))
}

func (p *envParser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *envParser) intRange(name string, def, lo, hi int) int {
	v := p.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < lo || n > hi {
		p.fail(name, "must be an integer from %d to %d, not %q", lo, hi, v)
		return def
	}
	return n
}

func (p *envParser) boolean(name string, def bool) bool {
	switch v := strings.ToLower(strings.TrimSpace(p.getenv(name))); v {
	case "":
		return def
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	default:
		p.fail(name, "must be true or false, not %q", v)
		return def
	}
}

// fraction is a number in (0, 1].
func (p *envParser) fraction(name string, def float64) float64 {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f > 0 && f <= 1) {
		p.fail(name, "must be a number in (0, 1], not %q", v)
		return def
	}
	return f
}

func (p *envParser) port(name string, def int) int { return p.intRange(name, def, 0, 65535) }

// duration accepts Go durations ("15s", "1m") and bare seconds ("15").
func (p *envParser) duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		p.fail(name, "must be a positive duration such as 15s or 2m, not %q", v)
		return def
	}
	return d
}

func (p *envParser) prefixes(name string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range strings.Split(p.getenv(name), ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if pre, err := netip.ParsePrefix(f); err == nil {
			out = append(out, pre.Masked())
		} else if ip, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		} else {
			p.fail(name, "has %q, which is neither an IP nor a CIDR", f)
		}
	}
	return out
}

// databaseURL is DATABASE_URL, else a URL from the seed's DB_* variables,
// else "" (a managed local Postgres).
func (p *envParser) databaseURL() string {
	if v := strings.TrimSpace(p.getenv("DATABASE_URL")); v != "" {
		if u, err := url.Parse(v); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			p.fail("DATABASE_URL", "must be a postgres:// URL")
		}
		return v
	}
	set := false
	for _, k := range []string{"DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSL_MODE"} {
		if p.getenv(k) != "" {
			set = true
		}
	}
	if !set {
		return ""
	}
	port := p.port("DB_PORT", 5432)
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(p.str("DB_USER", "postgres"), p.getenv("DB_PASSWORD")),
		Host:     net.JoinHostPort(p.str("DB_HOST", "localhost"), strconv.Itoa(port)),
		Path:     "/" + p.str("DB_NAME", "isekai_gateway"),
		RawQuery: "sslmode=" + url.QueryEscape(p.str("DB_SSL_MODE", "disable")),
	}
	return u.String()
}

func validNodeID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// nodeID returns the configured id, else the one kept in the data
// directory, else a new one that it keeps there.
func nodeID(c Config) (string, error) {
	if c.NodeID != "" {
		return c.NodeID, nil
	}
	file := filepath.Join(c.DataDir, "node_id")
	if b, err := os.ReadFile(file); err == nil {
		if id := strings.TrimSpace(string(b)); validNodeID(id) {
			return id, nil
		}
		return "", fmt.Errorf("reading node id: %s does not hold a valid id", file)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := "node-" + hex.EncodeToString(b[:])
	if err := os.WriteFile(file, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("keeping node id: %w", err)
	}
	return id, nil
}
