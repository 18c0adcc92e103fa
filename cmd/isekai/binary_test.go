package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// The real binary with no DATABASE_URL: it manages its own Postgres,
// serves, drains an in-flight request on SIGTERM, exits 0, stops Postgres,
// and comes back with the same state and node id.
func TestBinaryManagedPostgresAndGracefulShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "isekai")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The managed server runs as the postgres user when we are root, so its
	// directory must be reachable by it (t.TempDir is 0700).
	data, err := os.MkdirTemp("", "isekai-binary-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	if err := os.Chmod(data, 0o755); err != nil {
		t.Fatal(err)
	}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond)
		fmt.Fprint(w, "slow done")
	}))
	defer slow.Close()

	pp, ap := freePort(t), freePort(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "DB_") && !strings.HasPrefix(kv, "PG") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "ISEKAI_DATA_DIR="+data, "SERVER_HOST=127.0.0.1", fmt.Sprintf("SERVER_PORT=%d", pp),
			fmt.Sprintf("ADMIN_PORT=%d", ap), "SERVER_SHUTDOWN_TIMEOUT=10s", "LOG_LEVEL=warn")
		var logs strings.Builder
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
			if t.Failed() {
				t.Logf("node output:\n%s", logs.String())
			}
		})
		eventually(t, 90*time.Second, "binary ready", func() (bool, string) {
			code, body := get(fmt.Sprintf("http://127.0.0.1:%d/ready", ap))
			return code == 200, fmt.Sprint(code, body)
		})
		return cmd
	}
	admin := fmt.Sprintf("http://127.0.0.1:%d", ap)
	proxy := fmt.Sprintf("http://127.0.0.1:%d", pp)

	cmd := start()
	if status, res, _ := call(t, "POST", admin+"/api/routes", map[string]any{"path": "/slow", "target_url": slow.URL}); status != 201 {
		t.Fatalf("create: %d %+v", status, res)
	}
	_, st1, _ := call(t, "GET", admin+"/api/status", nil)

	// One-off commands on the running node's data directory use its
	// Postgres; they must not stop it. A second node there is refused.
	env := func(extra ...string) []string {
		var out []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "DB_") && !strings.HasPrefix(kv, "PG") {
				out = append(out, kv)
			}
		}
		return append(append(out, "ISEKAI_DATA_DIR="+data), extra...)
	}
	replay := exec.Command(bin, "replay")
	replay.Env = env()
	if out, err := replay.CombinedOutput(); err != nil || !strings.Contains(string(out), "/slow") {
		t.Fatalf("replay beside a running node: %v\n%s", err, out)
	}
	second := exec.Command(bin, "serve")
	second.Env = env("SERVER_PORT=0", "ADMIN_PORT=0")
	if out, err := second.CombinedOutput(); err == nil || !strings.Contains(string(out), "ISEKAI_DATA_DIR") {
		t.Fatalf("second node on the same data directory: %v\n%s", err, out)
	}
	if status, res, _ := call(t, "POST", admin+"/api/routes", map[string]any{"path": "/after-replay", "target_url": slow.URL}); status != 201 {
		t.Fatalf("node's database after replay and a refused second node: %d %+v", status, res)
	}

	done := make(chan string, 1)
	go func() {
		code, body := get(proxy + "/slow")
		done <- fmt.Sprint(code, " ", body)
	}()
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != "200 slow done" {
		t.Errorf("in-flight request during shutdown: %q", got)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20s of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(data, "pgdata", "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("managed Postgres still running after exit (postmaster.pid: %v)", err)
	}

	// Same data directory: same node, same routes.
	cmd = start()
	code, body := get(proxy + "/slow")
	if code != 200 || body != "slow done" {
		t.Errorf("after restart: %d %q", code, body)
	}
	_, st2, _ := call(t, "GET", admin+"/api/status", nil)
	id := func(raw []byte) string {
		i := strings.Index(string(raw), `"node_id":"`)
		if i < 0 {
			return ""
		}
		rest := string(raw)[i+11:]
		return rest[:strings.IndexByte(rest, '"')]
	}
	if id(st1.Data) == "" || id(st1.Data) != id(st2.Data) {
		t.Errorf("node id changed across restarts: %q vs %q", id(st1.Data), id(st2.Data))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = cmd.Process.Signal(syscall.SIGINT)
	go func() { <-ctx.Done(); _ = cmd.Process.Kill() }()
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGINT: %v", err)
	}
}
