package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerPort != 8080 || c.AdminPort != 8081 || c.AdminHost != "127.0.0.1" || c.DataDir != "./.isekai" ||
		c.ReadTimeout != 15*time.Second || c.ShutdownTimeout != 30*time.Second || c.PollInterval != 5*time.Second ||
		c.DatabaseURL != "" || c.MaxHeaderBytes != 16<<10 || c.MaxBodyBytes != 10<<20 {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestConfigFromSeedDBVariables(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(envMap(map[string]string{"DB_HOST": "db.internal", "DB_PASSWORD": "p@ss word", "DB_SSL_MODE": "require"}))
	if err != nil {
		t.Fatal(err)
	}
	want := "postgres://postgres:p%40ss%20word@db.internal:5432/isekai_gateway?sslmode=require"
	if c.DatabaseURL != want {
		t.Fatalf("DatabaseURL = %q, want %q", c.DatabaseURL, want)
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "port not a number", env: map[string]string{"SERVER_PORT": "http"}, want: "SERVER_PORT"},
		{name: "port out of range", env: map[string]string{"ADMIN_PORT": "70000"}, want: "ADMIN_PORT"},
		{name: "same ports", env: map[string]string{"SERVER_PORT": "9000", "ADMIN_PORT": "9000"}, want: "ADMIN_PORT must differ"},
		{name: "bad duration", env: map[string]string{"SERVER_READ_TIMEOUT": "soon"}, want: "SERVER_READ_TIMEOUT"},
		{name: "bad level", env: map[string]string{"LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		{name: "public admin without auth", env: map[string]string{"ADMIN_HOST": "0.0.0.0"}, want: "ADMIN_HOST"},
		{name: "auth not built", env: map[string]string{"AUTH_ENABLED": "true"}, want: "AUTH_ENABLED"},
		{name: "bad trusted proxy", env: map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8, nope"}, want: "TRUSTED_PROXIES"},
		{name: "bad database url", env: map[string]string{"DATABASE_URL": "mysql://x"}, want: "DATABASE_URL"},
		{name: "bad node id", env: map[string]string{"ISEKAI_NODE_ID": "a b"}, want: "ISEKAI_NODE_ID"},
		{name: "poll too fast", env: map[string]string{"ISEKAI_POLL_INTERVAL": "1ms"}, want: "ISEKAI_POLL_INTERVAL"},
	} {
		_, err := loadConfig(envMap(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.want)
		}
	}
	// Every problem at once, not one per start attempt.
	_, err := loadConfig(envMap(map[string]string{"SERVER_PORT": "x", "LOG_LEVEL": "y"}))
	if err == nil || !strings.Contains(err.Error(), "SERVER_PORT") || !strings.Contains(err.Error(), "LOG_LEVEL") {
		t.Errorf("err = %v, want both problems", err)
	}
}

func TestNodeIDIsKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := Config{DataDir: dir}
	id, err := nodeID(c)
	if err != nil || !validNodeID(id) {
		t.Fatalf("nodeID = %q, %v", id, err)
	}
	again, _ := nodeID(c)
	if again != id {
		t.Errorf("node id changed across starts: %q then %q", id, again)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "node_id")); strings.TrimSpace(string(b)) != id {
		t.Errorf("node_id file holds %q", b)
	}
	if got, _ := nodeID(Config{DataDir: dir, NodeID: "explicit"}); got != "explicit" {
		t.Errorf("ISEKAI_NODE_ID ignored: %q", got)
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	var out, errOut strings.Builder
	if code := run([]string{"frobnicate"}, envMap(nil), &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Errorf("code %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"serve"}, envMap(map[string]string{"SERVER_PORT": "x"}), &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "SERVER_PORT") {
		t.Errorf("invalid config: code %d, stderr %q", code, errOut.String())
	}
}
