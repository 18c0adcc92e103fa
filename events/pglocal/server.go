// Package pglocal runs a private PostgreSQL server on this machine: it finds
// the server binaries, creates a cluster with initdb on first use, starts
// postgres listening on 127.0.0.1 only, and stops it again.
//
// It is what `isekai serve` uses when no DATABASE_URL is set, and what the
// tests use through pgtest. It is not a way to share a database between
// nodes: a cluster of gateway nodes points every node at one DATABASE_URL.
// Run as root, it runs initdb and postgres as the "postgres" user, because
// both refuse to run as root.
//
// pglocal does not know Isekai's schema; migrations are applied by the
// caller.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultDatabase is the database Start creates for Isekai.
const DefaultDatabase = "isekai"

const (
	// stopTimeout is how long a fast shutdown (SIGINT, pg_ctl stop -m fast)
	// may take before postgres is told to quit immediately.
	stopTimeout = 60 * time.Second
	// maxLogSize is the size above which the server log is rotated (once,
	// to postgres.log.1) at the next start.
	maxLogSize = 16 << 20
	// maxSocketPath is the longest Unix socket path Linux accepts
	// (sizeof(sun_path) - 1).
	maxSocketPath = 107
)

// Config configures a local server.
type Config struct {
	// Dir is the root of the server's files (required; ISEKAI_DATA_DIR for
	// `isekai serve`). The cluster lives in Dir/pgdata, created with initdb
	// when missing and reused otherwise; the server log is Dir/postgres.log
	// and the Unix socket lives in Dir/run. As root, every directory above
	// Dir must be searchable by the postgres user (so not a 0700 directory
	// such as /root or a t.TempDir()).
	Dir string
	// Port is the TCP port on 127.0.0.1. Zero picks a free port at each
	// Start; the Server keeps it across Stop, Start and Restart.
	Port int
	// Settings are extra `postgres -c name=value` settings; nil means none.
	// Tests pass fsync=off, synchronous_commit=off and full_page_writes=off
	// (with fsync=off, initdb also skips its final sync). port,
	// listen_addresses, unix_socket_directories and data_directory are
	// pglocal's and may not be set here. lc_messages defaults to C, because
	// pglocal reads the server log.
	Settings map[string]string
	// BinDir is the directory holding initdb, pg_ctl and postgres. Empty
	// searches PATH, then the newest /usr/lib/postgresql/*/bin (the
	// version of an existing cluster first).
	BinDir string
	// Logf receives progress messages (initdb, start, stop). nil discards
	// them. It is called only from inside Start, Stop and Restart.
	Logf func(format string, args ...any)
}

// reservedSettings are set by pglocal itself.
var reservedSettings = []string{"port", "listen_addresses", "unix_socket_directories", "data_directory"}

// ErrInUse is returned by Start when another live process runs a server on
// the same cluster (another node given the same data directory).
var ErrInUse = errors.New("the data directory's postgres is in use by another process")

// errPortInUse marks a start that failed because another process holds the
// port, so that Start can pick another free one.
var errPortInUse = errors.New("port already in use")

// Server is a local PostgreSQL server. Its methods are safe for concurrent
// use.
type Server struct {
	cfg     Config
	bins    binaries
	user    osUser
	dir     string // absolute Config.Dir
	dataDir string // dir/pgdata
	sockDir string // dir/run; empty when the path is too long for a socket
	logPath string // dir/postgres.log
	port    int    // fixed once Start returns

	life sync.Mutex // serializes starting and stopping
	proc *process   // the running postmaster; nil when stopped. Guarded by life.

	cancelMu    sync.Mutex
	cancelStart context.CancelFunc // interrupts a start in progress, so Stop need not wait for it
}

// process is one run of the postmaster.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster has exited and been reaped
	err  error         // cmd.Wait's result, set before done is closed
}

// Start starts a server for cfg, creating its cluster first if Dir/pgdata
// holds none, waits until it accepts connections and creates the database
// "isekai" if missing. ctx bounds the start-up only, not the server's life:
// the server runs until Stop, and is killed if this process dies without
// calling it.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	if err := s.prepareCluster(ctx); err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	for attempt := 1; ; attempt++ {
		s.port = cfg.Port
		if s.port == 0 {
			if s.port, err = freePort(); err != nil {
				return nil, fmt.Errorf("starting postgres: picking a port: %w", err)
			}
		}
		err = s.start(ctx)
		if err == nil {
			break
		}
		// A port we picked can be taken by someone else before postgres
		// binds it (parallel test binaries do this to each other).
		if cfg.Port != 0 || attempt == 3 || !errors.Is(err, errPortInUse) {
			return nil, fmt.Errorf("starting postgres: %w", err)
		}
		s.logf("pglocal: port %d was taken before postgres could bind it; trying another", s.port)
	}
	if err := s.CreateDatabase(ctx, DefaultDatabase); err != nil {
		return nil, errors.Join(fmt.Errorf("starting postgres: %w", err), s.Stop())
	}
	return s, nil
}

func newServer(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("Config.Dir is required")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("Config.Port %d is not a TCP port", cfg.Port)
	}
	for _, k := range reservedSettings {
		if _, ok := cfg.Settings[k]; ok {
			return nil, fmt.Errorf("Config.Settings: %s is set by pglocal", k)
		}
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("Config.Dir: %w", err)
	}
	u, err := serverUser()
	if err != nil {
		return nil, err
	}
	cfg.Settings = maps.Clone(cfg.Settings) // the caller may reuse its map
	s := &Server{
		cfg:     cfg,
		user:    u,
		dir:     dir,
		dataDir: filepath.Join(dir, "pgdata"),
		sockDir: filepath.Join(dir, "run"),
		logPath: filepath.Join(dir, "postgres.log"),
	}
	if len(s.sockDir)+len("/.s.PGSQL.65535") > maxSocketPath || strings.ContainsAny(s.sockDir, `,"`) {
		s.sockDir = "" // TCP only; pglocal never uses the socket itself
	}
	if s.bins, err = findBinaries(cfg.BinDir, clusterVersion(s.dataDir)); err != nil {
		return nil, err
	}
	return s, nil
}

// URL returns the connection URL of database on this server:
// postgres://postgres@127.0.0.1:PORT/DATABASE?sslmode=disable.
func (s *Server) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, url.PathEscape(database))
}

// Port returns the TCP port the server listens on, the same across Stop,
// Start and Restart.
func (s *Server) Port() int { return s.port }

// Start starts the server again after Stop, on the same port and data
// directory, and waits until it accepts connections. It does nothing if the
// server is running. A Stop called meanwhile interrupts it.
func (s *Server) Start(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	return s.startInterruptible(ctx)
}

// Restart stops the server and starts it again on the same port. Tests use
// it to simulate a database outage.
func (s *Server) Restart(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.stop(); err != nil {
		return err
	}
	return s.startInterruptible(ctx)
}

// Stop shuts the server down the way pg_ctl stop -m fast does: open
// sessions are disconnected and the cluster is checkpointed. It interrupts
// a Start or Restart in progress, and does nothing if the server is not
// running; calling it twice, or on a nil Server, is safe.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	s.cancelMu.Lock()
	if s.cancelStart != nil {
		s.cancelStart()
	}
	s.cancelMu.Unlock()

	s.life.Lock()
	defer s.life.Unlock()
	return s.stop()
}

// stop runs with life held.
func (s *Server) stop() error {
	p := s.proc
	s.proc = nil
	if p == nil {
		return nil
	}
	s.logf("pglocal: stopping postgres on port %d", s.port)
	if err := s.terminate(p); err != nil {
		return fmt.Errorf("stopping postgres: %w", err)
	}
	return nil
}

// startInterruptible runs with life held.
func (s *Server) startInterruptible(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.cancelMu.Lock()
	s.cancelStart = cancel
	s.cancelMu.Unlock()
	defer func() {
		s.cancelMu.Lock()
		s.cancelStart = nil
		s.cancelMu.Unlock()
	}()
	if err := s.start(ctx); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	return nil
}

// start launches the postmaster unless it is running and waits until it
// accepts connections. It runs with life held (or before s is shared).
func (s *Server) start(ctx context.Context) error {
	if p := s.proc; p != nil {
		select {
		case <-p.done:
			s.logf("pglocal: postgres had exited (%v); starting it again", p.err)
			s.proc = nil
		default:
			return nil
		}
	}
	if err := s.clearStaleLock(ctx); err != nil {
		return err
	}
	p, logOffset, err := s.launch()
	if err != nil {
		return err
	}
	if err := s.waitReady(ctx, p); err != nil {
		if terr := s.terminate(p); terr != nil {
			err = errors.Join(err, terr)
		}
		tail := logTail(s.logPath, logOffset)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		if tail != "" {
			err = fmt.Errorf("%w\n%s", err, tail)
		}
		return withHint(err, s.user.searchHint(s.dir))
	}
	s.proc = p
	s.logf("pglocal: postgres listening on 127.0.0.1:%d, data in %s", s.port, s.dataDir)
	return nil
}

// launch starts the postmaster with its output appended to the server log,
// and returns the log offset where this run's output begins.
func (s *Server) launch() (*process, int64, error) {
	if fi, err := os.Stat(s.logPath); err == nil && fi.Size() > maxLogSize {
		_ = os.Rename(s.logPath, s.logPath+".1")
	}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("opening server log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	offset, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, fmt.Errorf("opening server log: %w", err)
	}

	cmd := s.user.command(context.Background(), s.bins.postgres, s.args()...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A process group of its own, so that a Ctrl-C in the terminal reaches
	// only us and we stop postgres last, after draining. The parent-death
	// signal stops it if we die without calling Stop (a crash, a test
	// binary panicking), instead of it holding the port and the data
	// directory. Go sets it after switching user, which would clear it.
	// Linux sends it when the thread that started postgres ends; Go ends
	// a thread only when a goroutine exits while locked to it
	// (runtime.LockOSThread), so do not call Start from such a goroutine.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("running postgres: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, offset, nil
}

func (s *Server) args() []string {
	sock := s.sockDir
	if sock != "" {
		sock = `"` + sock + `"` // a list; quoted so spaces in the path survive
	}
	args := []string{
		"-D", s.dataDir,
		"-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + sock,
	}
	settings := map[string]string{"lc_messages": "C"}
	maps.Copy(settings, s.cfg.Settings)
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

// waitReady polls until the server accepts a connection and proves to be
// ours (another server may answer on a port we picked before postgres
// could bind it), or until the postmaster exits or ctx ends.
func (s *Server) waitReady(ctx context.Context, p *process) error {
	// An attempt hanging on whoever else holds the port ends when our
	// postmaster exits.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := s.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			select {
			case <-p.done:
				return fmt.Errorf("postgres exited during start-up: %v", p.err)
			default:
				return fmt.Errorf("waiting for postgres to accept connections: %w (last attempt: %v)", ctx.Err(), err)
			}
		case <-tick.C:
		}
	}
}

func (s *Server) ping(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.URL("postgres"))
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return err
	}
	if dataDir != s.dataDir {
		return fmt.Errorf("port %d is served by another postgres (data directory %s)", s.port, dataDir)
	}
	return nil
}

// terminate stops the postmaster: a fast shutdown (SIGINT, what pg_ctl
// stop -m fast sends), then an immediate one (SIGQUIT) if that takes longer
// than stopTimeout, then SIGKILL.
func (s *Server) terminate(p *process) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, stopTimeout}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, 0}}
	for i, step := range steps {
		if err := p.cmd.Process.Signal(step.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("sending %v to postgres: %w", step.sig, err)
		}
		var timeout <-chan time.Time
		if step.wait > 0 {
			t := time.NewTimer(step.wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-p.done:
			if i > 0 {
				return fmt.Errorf("postgres did not shut down within %v of SIGINT; stopped it with %v", stopTimeout, step.sig)
			}
			return nil
		case <-timeout:
			s.logf("pglocal: postgres still running %v after %v", step.wait, step.sig)
		}
	}
	return nil // unreachable: the SIGKILL step waits for done
}

// CreateDatabase creates database name unless it exists.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("creating database: empty name")
	}
	err := s.withAdmin(ctx, func(conn *pgx.Conn) error {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil || exists {
			return err
		}
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
			return nil // created concurrently: duplicate_database, or the catalog's unique index
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("creating database %q: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name if it exists, disconnecting its
// sessions (DROP DATABASE ... WITH (FORCE)).
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	err := s.withAdmin(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		return err
	})
	if err != nil {
		return fmt.Errorf("dropping database %q: %w", name, err)
	}
	return nil
}

func (s *Server) withAdmin(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before postgres binds it; Start retries then.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
