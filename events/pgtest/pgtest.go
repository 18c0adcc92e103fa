// Package pgtest gives each test its own PostgreSQL database, so that tests
// run in parallel without seeing each other's rows, NOTIFY channels or
// advisory locks (all three are per database).
//
// Databases live on one server per test binary: the server named by
// TEST_DATABASE_URL when it is set (databases are created and dropped
// through a connection to that URL, which needs CREATEDB), otherwise a
// local server started on first use with pglocal in a temporary directory,
// tuned for speed (fsync, synchronous_commit and full_page_writes off) and
// stopped by Main. Use it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// pgtest is for tests only; it never touches a database it did not create.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/zakirkun/isekai/events/pglocal"
	"github.com/zakirkun/isekai/migrations"
)

// EnvURL names the environment variable that points the tests at an
// existing server instead of a local one; for example
// postgres://postgres@localhost:5432/postgres?sslmode=disable.
const EnvURL = "TEST_DATABASE_URL"

// settings are the postgres settings of the servers pgtest starts: no
// durability, which tests do not need.
var settings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
}

const (
	startTimeout = 2 * time.Minute
	opTimeout    = time.Minute
)

// shared is the local server of this test binary, started on first use.
var shared struct {
	mu  sync.Mutex
	srv *pglocal.Server
	dir string
	err error // a failed start, reported to every test that needs the server
}

// template is a cleanly stopped cluster that NewServer copies instead of
// running initdb for every private server (a copy takes a tenth of the
// time).
var template struct {
	mu  sync.Mutex
	dir string // its pglocal Dir; the cluster is in dir/pgdata
	err error
}

// Main runs the tests, stops the shared server if one was started, and
// exits with m.Run's code. When the tests passed, it then fails the binary
// on goroutines left running, like goleak.VerifyTestMain; opts are passed
// to goleak (for example goleak.IgnoreTopFunction for a library's
// long-lived goroutine).
func Main(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: goroutines left running after the tests passed: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func stopShared() error {
	template.mu.Lock()
	if template.dir != "" {
		os.RemoveAll(template.dir)
		template.dir = ""
	}
	template.mu.Unlock()

	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dir == "" {
		return nil
	}
	err := shared.srv.Stop()
	if rerr := os.RemoveAll(shared.dir); rerr != nil {
		err = errors.Join(err, rerr)
	}
	shared.srv, shared.dir = nil, ""
	if err != nil {
		return fmt.Errorf("stopping the shared postgres: %w", err)
	}
	return nil
}

// adminURL is the URL pgtest creates databases through.
func adminURL() (string, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return u, nil
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		return shared.srv.URL("postgres"), nil
	}
	if shared.err != nil {
		return "", shared.err
	}
	dir, err := tempDir("isekai-pgtest-")
	if err != nil {
		shared.err = err
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	srv, err := pglocal.Start(ctx, pglocal.Config{Dir: dir, Settings: settings})
	if err != nil {
		os.RemoveAll(dir)
		shared.err = fmt.Errorf("starting the shared test postgres (or set %s): %w", EnvURL, err)
		return "", shared.err
	}
	shared.srv, shared.dir = srv, dir
	return srv.URL("postgres"), nil
}

// NewDatabase creates an empty database for t and returns its URL. The
// database is dropped when t's cleanups run, after the ones t registered
// later (so close your pools in t.Cleanup); sessions still open are
// disconnected.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin, err := adminURL()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := "isekai_test_" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := execOn(ctx, admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := execOn(ctx, admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	u, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// NewMigratedDatabase is NewDatabase with every migration applied.
func NewMigratedDatabase(t testing.TB) string {
	t.Helper()
	u := NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := migrations.ApplyURL(ctx, u); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// NewServer starts a private local server for t, for tests that stop or
// restart the database; it is stopped and its files removed when t's
// cleanups run. It has the database "isekai"; NewDatabase does not use it.
// It needs the PostgreSQL server binaries even when TEST_DATABASE_URL is
// set, and skips t when they are missing in that case.
func NewServer(t testing.TB) *pglocal.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	dir, err := tempDir("isekai-pgtest-server-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := startFromTemplate(ctx, dir, t.Logf)
	if errors.Is(err, pglocal.ErrNoBinaries) && os.Getenv(EnvURL) != "" {
		t.Skipf("pgtest: this test needs a local postgres: %v", err)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return srv
}

// startFromTemplate copies the template cluster into dir, building the
// template first if needed, and starts a server on the copy.
func startFromTemplate(ctx context.Context, dir string, logf func(string, ...any)) (*pglocal.Server, error) {
	template.mu.Lock()
	if template.dir == "" && template.err == nil {
		template.dir, template.err = buildTemplate(ctx)
	}
	src, err := template.dir, template.err
	if err == nil {
		err = copyTree(filepath.Join(src, "pgdata"), filepath.Join(dir, "pgdata"))
	}
	template.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return pglocal.Start(ctx, pglocal.Config{Dir: dir, Settings: settings, Logf: logf})
}

func buildTemplate(ctx context.Context) (string, error) {
	dir, err := tempDir("isekai-pgtest-template-")
	if err != nil {
		return "", err
	}
	srv, err := pglocal.Start(ctx, pglocal.Config{Dir: dir, Settings: settings})
	if err == nil {
		err = srv.Stop() // a clean shutdown: the files are a consistent cold copy
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("building the template cluster: %w", err)
	}
	return dir, nil
}

// copyTree copies a stopped cluster: directories and regular files, with
// their modes and owners (the postgres user when the tests run as root).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("copying the template cluster: %s is not a regular file", path)
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
			return os.Lchown(target, int(st.Uid), int(st.Gid))
		}
		return nil
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// tempDir makes a directory the postgres user can reach when the tests run
// as root: os.MkdirTemp makes it 0700, and t.TempDir() sits under such a
// directory.
func tempDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func execOn(ctx context.Context, connString, sql string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase points connString (a URL or keyword/value string) at
// database name.
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parsing %s: %w", EnvURL, err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		q := u.Query()
		if q.Has("dbname") {
			q.Set("dbname", name)
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	// Keyword/value: a later keyword overrides an earlier one.
	if _, err := pgconn.ParseConfig(connString); err != nil {
		return "", fmt.Errorf("parsing %s: %w", EnvURL, err)
	}
	return connString + " dbname=" + name, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
