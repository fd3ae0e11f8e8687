package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAddonctlRefusesReadOnlyStore: publish, assign, rollout and fleet
// status refuse an http(s) store before they do anything else — the host
// below does not exist, so an attempt to reach it would fail otherwise —
// with an error that names the store.
func TestAddonctlRefusesReadOnlyStore(t *testing.T) {
	e := newEnv(t, "file")
	key := filepath.Join(e.dir, "keys", "signing.key")
	artifact := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(artifact, []byte("hello"), 0o755)
	for _, storeURL := range []string{"https://addons.invalid/fleet", "http://addons.invalid:8080"} {
		for name, args := range map[string][]string{
			"publish":      {"publish", "--store", storeURL, "--key", key, "--id", "hello", "--version", "1.0.0", "linux/amd64=" + artifact},
			"assign":       {"assign", "--store", storeURL, "--agent", "edge-01", "--key", key, "--addon", "hello@1.0.0"},
			"rollout":      {"rollout", "--store", storeURL, "--key", key, "--addon", "hello@1.0.0", "--all"},
			"fleet status": {"fleet", "status", "--store", storeURL},
		} {
			r := e.exec(nil, "addonctl", args...)
			if r.code != 1 || !strings.Contains(r.stderr, strings.TrimSuffix(storeURL, "/fleet")) || !strings.Contains(r.stderr, "read-only") || strings.Contains(r.stderr, "lookup") {
				t.Errorf("addonctl %s --store %s: exit %d\n%s%s; want 1 and a refusal that names the store", name, storeURL, r.code, r.stdout, r.stderr)
			}
		}
	}
}
