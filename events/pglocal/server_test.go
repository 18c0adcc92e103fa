package pglocal

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fastSettings trade durability for speed, as pgtest does.
var fastSettings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

// testDir returns a fresh directory the postgres user can reach when the
// tests run as root (a t.TempDir() sits under a 0700 directory).
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pglocal-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Settings == nil {
		cfg.Settings = fastSettings
	}
	if cfg.Logf == nil {
		// Elapsed times show the slow steps in -v output.
		t0 := time.Now()
		cfg.Logf = func(f string, a ...any) { t.Logf("%v "+f, append([]any{time.Since(t0)}, a...)...) }
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func countKept(t *testing.T, s *Server) int {
	t.Helper()
	conn := connect(t, s.URL(DefaultDatabase))
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM kept").Scan(&n); err != nil {
		t.Fatalf("reading the table written before: %v", err)
	}
	return n
}

func TestServerLifecycle(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := testDir(t)
	s := startServer(t, Config{Dir: dir})

	port := s.Port()
	if want := "postgres://postgres@127.0.0.1:" + strconv.Itoa(port) + "/isekai?sslmode=disable"; s.URL("isekai") != want {
		t.Errorf("URL = %q, want %q", s.URL("isekai"), want)
	}
	conn := connect(t, s.URL(DefaultDatabase))
	var listen, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_setting('listen_addresses'), current_setting('fsync')").Scan(&listen, &fsync); err != nil {
		t.Fatal(err)
	}
	if listen != "127.0.0.1" || fsync != "off" {
		t.Errorf("listen_addresses = %q, fsync = %q; want 127.0.0.1, off", listen, fsync)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}

	// Down: twice, and nothing answers.
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("a session survived Stop")
	}
	if c, err := pgx.Connect(ctx, s.URL(DefaultDatabase)); err == nil {
		c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}

	// Up again, on the same port, with the data.
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start while running: %v", err)
	}
	if s.Port() != port {
		t.Errorf("port changed from %d to %d", port, s.Port())
	}
	if n := countKept(t, s); n != 1 {
		t.Errorf("kept has %d rows after restart, want 1", n)
	}

	// Restart cuts sessions and comes back on the same port.
	conn = connect(t, s.URL(DefaultDatabase))
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("a session survived Restart")
	}
	if n := countKept(t, s); n != 1 {
		t.Errorf("kept has %d rows after Restart, want 1", n)
	}

	// Databases: create is idempotent, drop disconnects sessions.
	for range 2 {
		if err := s.CreateDatabase(ctx, "other db"); err != nil {
			t.Fatal(err)
		}
	}
	other := connect(t, s.URL("other db"))
	if err := s.DropDatabase(ctx, "other db"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropDatabase(ctx, "other db"); err != nil {
		t.Fatalf("dropping a missing database: %v", err)
	}
	if err := other.Ping(ctx); err == nil {
		t.Error("a session on a dropped database survived")
	}
	_, err := pgx.Connect(ctx, s.URL("other db"))
	if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Errorf("connecting to a dropped database: %v, want invalid_catalog_name", err)
	}

	// Stop during a Start: whichever wins, the server ends up down.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- s.Start(ctx) }()
	time.Sleep(50 * time.Millisecond)
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop during Start: %v", err)
	}
	if err := <-started; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted Start: %v, want nil or context.Canceled", err)
	}
	if c, err := pgx.Connect(ctx, s.URL(DefaultDatabase)); err == nil {
		c.Close(ctx)
		t.Error("the server runs after Stop won over Start")
	}

	// A new Server on the same Dir reuses the cluster.
	var mu sync.Mutex
	var logs []string
	s2 := startServer(t, Config{Dir: dir, Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, format)
	}})
	if n := countKept(t, s2); n != 1 {
		t.Errorf("kept has %d rows in the reused cluster, want 1", n)
	}
	mu.Lock()
	if slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, "initdb") }) {
		t.Errorf("ran initdb on an existing cluster: %q", logs)
	}
	mu.Unlock()
	if err := s2.Stop(); err != nil {
		t.Fatal(err)
	}

	// A failed start says why, with the server log.
	_, err = Start(ctx, Config{Dir: dir, Settings: map[string]string{"shared_buffers": "plenty"}})
	if err == nil {
		t.Fatal("started with an invalid setting")
	}
	for _, want := range []string{"starting postgres: ", "postgres.log", `invalid value for parameter "shared_buffers"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = Start(ctx, Config{Dir: dir, Port: taken.Addr().(*net.TCPAddr).Port, Settings: fastSettings})
	if !errors.Is(err, errPortInUse) || !strings.Contains(err.Error(), "Address already in use") {
		t.Errorf("starting on a taken port: %v, want errPortInUse and the log line", err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no dir", cfg: Config{}, want: "Config.Dir"},
		{name: "bad port", cfg: Config{Dir: "x", Port: 70000}, want: "Config.Port"},
		{name: "reserved setting", cfg: Config{Dir: "x", Settings: map[string]string{"port": "1"}}, want: "Config.Settings: port"},
		{name: "bin dir without binaries", cfg: Config{Dir: "x", BinDir: t.TempDir()}, want: "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStartAfterCrash(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := testDir(t)
	// Commits must reach the WAL before the kill; fsync=off is fine, the
	// page cache outlives the process.
	crashSafe := map[string]string{"fsync": "off", "full_page_writes": "off"}
	s := startServer(t, Config{Dir: dir, Settings: crashSafe})
	if _, err := connect(t, s.URL(DefaultDatabase)).Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "pgdata", "postmaster.pid")

	t.Run("postmaster killed", func(t *testing.T) {
		s.life.Lock()
		p := s.proc
		s.life.Unlock()
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-p.done
		if _, err := os.Stat(pidFile); err != nil {
			t.Fatalf("a killed postmaster should leave its pid file: %v", err)
		}
		// The old Server notices on its next Start, on the same port.
		if err := s.Start(ctx); err != nil {
			t.Fatalf("Start after a crash: %v", err)
		}
		if n := countKept(t, s); n != 1 {
			t.Errorf("kept has %d rows after crash recovery, want 1", n)
		}
	})

	t.Run("postmaster of a live process is not taken over", func(t *testing.T) {
		// Lose the handle while this process, its starter, lives on: the
		// server is in use (another node on the same data directory), not a
		// leftover. A leftover's starter is gone: it dies with its starter.
		s.life.Lock()
		running := s.proc
		s.proc = nil
		s.life.Unlock()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if _, err := Start(ctx, Config{Dir: dir, Settings: crashSafe}); !errors.Is(err, ErrInUse) {
			t.Fatalf("Start on a data directory in use: %v, want ErrInUse", err)
		}
		select {
		case <-running.done:
			t.Fatal("Start stopped a server another process runs")
		default:
		}
		if port, ok := Running(dir); !ok || port != s.Port() {
			t.Errorf("Running = %d, %v; want %d, true", port, ok, s.Port())
		}
		_ = running.cmd.Process.Signal(os.Interrupt)
		<-running.done
		if _, ok := Running(dir); ok {
			t.Error("Running reports a stopped server")
		}
		s2 := startServer(t, Config{Dir: dir, Settings: crashSafe})
		if n := countKept(t, s2); n != 1 {
			t.Errorf("kept has %d rows, want 1", n)
		}
		if err := s2.Stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pid reused by an unrelated process", func(t *testing.T) {
		// Postgres itself takes a live PID in postmaster.pid for a running
		// server and refuses to start.
		sleep := exec.Command("sleep", "60")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			sleep.Process.Kill()
			sleep.Wait()
		}()
		content := strconv.Itoa(sleep.Process.Pid) + "\n" + filepath.Join(dir, "pgdata") + "\n"
		if err := os.WriteFile(pidFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		s3 := startServer(t, Config{Dir: dir, Settings: crashSafe})
		if n := countKept(t, s3); n != 1 {
			t.Errorf("kept has %d rows, want 1", n)
		}
	})
}

func TestInstalledBinDirs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, v := range []string{"9.6", "10", "15", "16", "notaversion"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
			if v == "16" && name == "postgres" {
				continue // an incomplete install (client only)
			}
			if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir := func(v string) string { return filepath.Join(root, v, "bin") }
	for _, tc := range []struct {
		prefer string
		want   []string
	}{
		{prefer: "", want: []string{dir("16"), dir("15"), dir("10"), dir("9.6")}},
		{prefer: "10", want: []string{dir("10"), dir("16"), dir("15"), dir("9.6")}},
		{prefer: "12", want: []string{dir("16"), dir("15"), dir("10"), dir("9.6")}},
	} {
		if got := installedBinDirs(root, tc.prefer); !slices.Equal(got, tc.want) {
			t.Errorf("installedBinDirs(prefer %q) = %q, want %q", tc.prefer, got, tc.want)
		}
	}
	if _, err := binariesIn(dir("16")); err == nil {
		t.Error("binariesIn accepted a directory without postgres")
	}
	if b, err := binariesIn(dir("15")); err != nil || b.postgres != filepath.Join(dir("15"), "postgres") {
		t.Errorf("binariesIn(15) = %+v, %v", b, err)
	}
}

func TestUnreachableDirAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs postgres as another user")
	}
	t.Parallel()
	// t.TempDir() sits under a 0700 directory owned by root.
	_, err := Start(t.Context(), Config{Dir: filepath.Join(t.TempDir(), "isekai"), Settings: fastSettings})
	if err == nil || !strings.Contains(err.Error(), "is not searchable by the postgres user") {
		t.Errorf("err = %v, want the hint about the unreachable directory", err)
	}
}
