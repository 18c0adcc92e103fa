package pglocal

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoBinaries means initdb, pg_ctl and postgres were not found together,
// neither in Config.BinDir, on PATH nor under /usr/lib/postgresql/*/bin.
var ErrNoBinaries = errors.New("postgres server binaries (initdb, pg_ctl, postgres) not found")

// installRoot holds one bin directory per major version on Debian and
// Ubuntu (/usr/lib/postgresql/15/bin).
const installRoot = "/usr/lib/postgresql"

// binaries are the absolute paths of the server programs pglocal runs.
type binaries struct {
	initdb, pgCtl, postgres string
}

// findBinaries looks in binDir when it is set; otherwise on PATH, then in
// the newest installRoot/*/bin, preferring the major version of an
// existing cluster (clusterVersion, from its PG_VERSION file) because a
// cluster only starts under the major version that created it.
func findBinaries(binDir, clusterVersion string) (binaries, error) {
	if binDir != "" {
		b, err := binariesIn(binDir)
		if err != nil {
			return binaries{}, fmt.Errorf("%w in BinDir %s: %v", ErrNoBinaries, binDir, err)
		}
		return b, nil
	}
	if b, err := binariesOnPath(); err == nil {
		return b, nil
	}
	for _, dir := range installedBinDirs(installRoot, clusterVersion) {
		if b, err := binariesIn(dir); err == nil {
			return b, nil
		}
	}
	return binaries{}, fmt.Errorf("%w on PATH or in %s/*/bin; install the PostgreSQL server (Debian: apt-get install postgresql)", ErrNoBinaries, installRoot)
}

func binariesOnPath() (binaries, error) {
	var b binaries
	for _, p := range []struct {
		name string
		dst  *string
	}{{"initdb", &b.initdb}, {"pg_ctl", &b.pgCtl}, {"postgres", &b.postgres}} {
		path, err := exec.LookPath(p.name)
		if err != nil {
			return binaries{}, err
		}
		if path, err = filepath.Abs(path); err != nil {
			return binaries{}, err
		}
		*p.dst = path
	}
	return b, nil
}

func binariesIn(dir string) (binaries, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return binaries{}, err
	}
	b := binaries{
		initdb:   filepath.Join(dir, "initdb"),
		pgCtl:    filepath.Join(dir, "pg_ctl"),
		postgres: filepath.Join(dir, "postgres"),
	}
	for _, path := range []string{b.initdb, b.pgCtl, b.postgres} {
		fi, err := os.Stat(path)
		if err != nil {
			return binaries{}, err
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return binaries{}, fmt.Errorf("%s is not an executable file", path)
		}
	}
	return b, nil
}

// installedBinDirs lists root/*/bin, newest major version first, with the
// directory of version prefer (if installed) moved to the front.
func installedBinDirs(root, prefer string) []string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var versions []string
	for _, e := range entries {
		if e.IsDir() && parseVersion(e.Name()) != nil {
			versions = append(versions, e.Name())
		}
	}
	slices.SortFunc(versions, func(a, b string) int {
		return -slices.Compare(parseVersion(a), parseVersion(b))
	})
	if i := slices.Index(versions, prefer); i > 0 {
		versions = slices.Insert(slices.Delete(versions, i, i+1), 0, prefer)
	}
	dirs := make([]string, len(versions))
	for i, v := range versions {
		dirs[i] = filepath.Join(root, v, "bin")
	}
	return dirs
}

// parseVersion turns "15" or "9.6" into comparable numbers; nil if the name
// is not a version.
func parseVersion(s string) []int {
	var v []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil
		}
		v = append(v, n)
	}
	return v
}
