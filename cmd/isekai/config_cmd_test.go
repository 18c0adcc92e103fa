package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zakirkun/isekai/events/pgtest"
)

// apply, diff and export work on the database directly: apply twice
// appends once, diff and --dry-run append nothing, export round-trips.
func TestConfigCommands(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigratedDatabase(t)
	env := envMap(map[string]string{"DATABASE_URL": db, "ISEKAI_DATA_DIR": t.TempDir(), "LOG_LEVEL": "error"})
	dir := t.TempDir()
	file := filepath.Join(dir, "routes.yaml")
	doc := "routes:\n  - name: users\n    path: /users\n    methods: [GET]\n    target_url: http://127.0.0.1:9/u\n  - name: orders\n    path: /orders\n    target_url: http://127.0.0.1:9/o\n    timeout: 5\n"
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	runOK := func(args ...string) string {
		t.Helper()
		var out, errOut strings.Builder
		if code := run(args, env, &out, &errOut); code != 0 {
			t.Fatalf("%v: exit %d: %s%s", args, code, out.String(), errOut.String())
		}
		return out.String()
	}

	if out := runOK("diff", "-f", file); !strings.Contains(out, "plan at position 0: 2 to create, 0 to update, 0 to delete") ||
		!strings.Contains(out, `+ create`) || !strings.Contains(out, `("users") GET /users -> http://127.0.0.1:9/u`) {
		t.Fatalf("diff:\n%s", out)
	}
	if out := runOK("apply", "-f", file, "--dry-run"); strings.Contains(out, "applied") {
		t.Fatalf("apply --dry-run applied:\n%s", out)
	}
	if out := runOK("apply", "-f", file); !strings.Contains(out, "applied: 2 events, log at position 2") {
		t.Fatalf("apply:\n%s", out)
	}
	if out := runOK("apply", "-f", file); !strings.Contains(out, "plan at position 2: 0 to create, 0 to update, 0 to delete") || strings.Contains(out, "applied") {
		t.Fatalf("second apply:\n%s", out)
	}

	// The export, edited, applies as one update.
	exported := runOK("export", "--format", "yaml")
	if !strings.Contains(exported, "name: orders") || strings.Contains(exported, "version") {
		t.Fatalf("export:\n%s", exported)
	}
	edited := filepath.Join(dir, "edited.yml")
	if err := os.WriteFile(edited, []byte(strings.Replace(exported, "timeout: 5", "timeout: 7", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runOK("diff", "-f", edited); !strings.Contains(out, "0 to create, 1 to update, 0 to delete") || !strings.Contains(out, "timeout: 5 -> 7") {
		t.Fatalf("diff of the edited export:\n%s", out)
	}
	jsonFile := filepath.Join(dir, "routes.json")
	if err := os.WriteFile(jsonFile, []byte(runOK("export")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runOK("apply", "-f", jsonFile); !strings.Contains(out, "0 to create, 0 to update, 0 to delete") {
		t.Fatalf("applying the json export:\n%s", out)
	}
	// --prune=false keeps what the document does not list.
	one := filepath.Join(dir, "one.json")
	if err := os.WriteFile(one, []byte(`{"routes": [{"name": "users", "path": "/users", "methods": ["GET"], "target_url": "http://127.0.0.1:9/u"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runOK("diff", "-f", one); !strings.Contains(out, "0 to create, 0 to update, 1 to delete") {
		t.Fatalf("diff with prune:\n%s", out)
	}
	if out := runOK("apply", "-f", one, "--prune=false"); !strings.Contains(out, "0 to create, 0 to update, 0 to delete") {
		t.Fatalf("apply --prune=false:\n%s", out)
	}

	// An invalid document fails naming the entry and field.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("routes:\n  - name: x\n    path: /x\n    target_url: nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut strings.Builder
	if code := run([]string{"apply", "-f", bad}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "routes[0].target_url") {
		t.Fatalf("bad document: exit %d: %s", code, errOut.String())
	}
}
