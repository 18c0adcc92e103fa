package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// osUser is who runs initdb, pg_ctl and postgres.
type osUser struct {
	name     string
	uid, gid int
	cred     *syscall.Credential // nil: run as ourselves
}

// serverUser returns the current user, or the "postgres" user when we are
// root: initdb and postgres refuse to run as root.
func serverUser() (osUser, error) {
	if os.Geteuid() != 0 {
		return osUser{name: "the current user", uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return osUser{}, fmt.Errorf("running as root, which postgres refuses, and looking up the postgres user to run it as: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return osUser{}, fmt.Errorf("reading the postgres user's ids: %w", err)
	}
	return osUser{
		name: "postgres",
		uid:  uid,
		gid:  gid,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
	}, nil
}

// own hands path to the server user (a no-op unless we are root).
func (u osUser) own(path string) error {
	if u.cred == nil {
		return nil
	}
	return os.Chown(path, u.uid, u.gid)
}

// searchHint explains a start failure caused by an ancestor of dir the
// server user cannot enter (the usual trap as root: a data directory under
// /root or under a 0700 temporary directory). Empty when there is none.
func (u osUser) searchHint(dir string) string {
	if u.cred == nil {
		return ""
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return ""
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return ""
		}
		perm := fi.Mode().Perm()
		if perm&0o001 == 0 && !(int(st.Uid) == u.uid && perm&0o100 != 0) && !(int(st.Gid) == u.gid && perm&0o010 != 0) {
			return fmt.Sprintf("hint: %s (mode %v, uid %d) is not searchable by the postgres user; choose a data directory it can reach", p, perm, st.Uid)
		}
		if p == filepath.Dir(p) {
			return ""
		}
	}
}

// command prepares one of the server programs to run as u, with the PG*
// variables of our environment removed so that PGDATA, PGPORT and friends
// cannot redirect it.
func (u osUser) command(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred}
	return cmd
}

// prepareCluster creates Dir, its socket directory and, when missing, the
// cluster in Dir/pgdata.
func (s *Server) prepareCluster(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	if s.sockDir != "" {
		if err := os.MkdirAll(s.sockDir, 0o700); err != nil {
			return fmt.Errorf("creating socket directory: %w", err)
		}
		if err := s.user.own(s.sockDir); err != nil {
			return fmt.Errorf("creating socket directory: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "PG_VERSION")); err == nil {
		return nil
	}
	// No cluster. Refuse to touch a non-empty directory we did not make;
	// initdb works in a side directory renamed into place at the end, so a
	// crash mid-initdb never leaves a half cluster at pgdata.
	switch entries, err := os.ReadDir(s.dataDir); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading %s: %w", s.dataDir, err)
	case len(entries) > 0:
		return fmt.Errorf("%s exists but holds no cluster (no PG_VERSION file); move it away or choose another data directory", s.dataDir)
	default:
		if err := os.Remove(s.dataDir); err != nil {
			return fmt.Errorf("removing empty %s: %w", s.dataDir, err)
		}
	}
	tmp := s.dataDir + ".initdb"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("removing leftover %s: %w", tmp, err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	if err := s.user.own(tmp); err != nil {
		return fmt.Errorf("handing %s to the postgres user: %w", tmp, err)
	}
	args := []string{"-D", tmp, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions"}
	if s.cfg.Settings["fsync"] == "off" {
		args = append(args, "--no-sync") // the caller does not want durability anyway
	}
	s.logf("pglocal: initdb %s", s.dataDir)
	cmd := s.user.command(ctx, s.bins.initdb, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return withHint(fmt.Errorf("running initdb: %w\n%s", err, indent(out)), s.user.searchHint(s.dir))
	}
	if err := os.Rename(tmp, s.dataDir); err != nil {
		return fmt.Errorf("moving the new cluster into place: %w", err)
	}
	return nil
}

// clusterVersion is the major version recorded in an existing cluster, ""
// when there is none.
func clusterVersion(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// clearStaleLock deals with a postmaster.pid left by a previous run that
// crashed. Postgres itself recognizes a lock file whose process is gone
// (and then checks that no orphaned backend still uses the old shared
// memory, so we leave that case to it). It is fooled when the PID has been
// reused by an unrelated process, which is common after a reboot or a
// container restart; we remove such a file. A live postmaster on our data
// directory whose starter has died is an orphan of a previous run: we stop it
// with pg_ctl. One whose starter lives is in use (another node given the
// same data directory): ErrInUse.
func (s *Server) clearStaleLock(ctx context.Context) error {
	path := filepath.Join(s.dataDir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		s.logf("pglocal: removing unreadable %s", path)
		return s.removeLocks(path)
	}
	switch processState(pid, s.dataDir) {
	case procGone, procUnknown:
		return nil
	case procOurPostmaster:
		if owner, alive := parentAlive(pid); alive {
			return fmt.Errorf("%w: postgres pid %d, started by the running process %d", ErrInUse, pid, owner)
		}
		s.logf("pglocal: stopping postgres (pid %d) left running on %s by a previous run", pid, s.dataDir)
		cmd := s.user.command(ctx, s.bins.pgCtl, "stop", "-D", s.dataDir, "-m", "fast", "-w", "-t", "60")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("stopping the postgres left running by a previous run (pid %d): %w\n%s", pid, err, indent(out))
		}
		return nil
	default:
		s.logf("pglocal: removing stale %s (pid %d is not a postgres on this data directory)", path, pid)
		return s.removeLocks(path)
	}
}

// removeLocks removes a stale postmaster.pid and the socket lock files
// next to our sockets, which would otherwise block a start on the same port.
func (s *Server) removeLocks(pidFile string) error {
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale lock file: %w", err)
	}
	if s.sockDir == "" {
		return nil
	}
	locks, _ := filepath.Glob(filepath.Join(s.sockDir, ".s.PGSQL.*.lock"))
	for _, l := range locks {
		if err := os.Remove(l); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing stale lock file: %w", err)
		}
	}
	return nil
}

type procState int

const (
	procGone          procState = iota // no such process
	procUnknown                        // cannot tell (no /proc access)
	procOther                          // a zombie or an unrelated process
	procOurPostmaster                  // postgres running on dataDir
)

func processState(pid int, dataDir string) procState {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return procGone
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return procGone
	}
	if err != nil {
		return procUnknown
	}
	// Fields after the parenthesized command name: "S ppid ...".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
		return procOther
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return procUnknown
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if filepath.Base(args[0]) == "postgres" && slices.Contains(args, dataDir) {
		return procOurPostmaster
	}
	return procOther
}

// parentAlive reports the parent of pid and whether it is a live process
// other than init: a postmaster whose starter still runs is in use, not a
// leftover (a starter that dies takes its postmaster with it, see
// process.start, so leftovers are reparented).
func parentAlive(pid int) (int, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil || ppid <= 1 {
		return ppid, false
	}
	if processState(ppid, "") == procGone {
		return ppid, false
	}
	return ppid, true
}

// Running reports the port of a server that another live process runs on
// the cluster under dir (as Config.Dir), so that a short-lived command can
// use it instead of starting its own.
func Running(dir string) (port int, ok bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0, false
	}
	dataDir := filepath.Join(abs, "pgdata")
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	// postmaster.pid: pid, data directory, start time, port, ...
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	port, err2 := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err1 != nil || err2 != nil || processState(pid, dataDir) != procOurPostmaster {
		return 0, false
	}
	if _, alive := parentAlive(pid); !alive {
		return 0, false
	}
	return port, true
}

// logTail returns the end of the server log written since offset, indented,
// for error messages.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 4 << 10
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return "server log " + path + ":\n" + indent([]byte(strings.Join(lines, "\n")))
}

func indent(b []byte) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func withHint(err error, hint string) error {
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w\n%s", err, hint)
}
