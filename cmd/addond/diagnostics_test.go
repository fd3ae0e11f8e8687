package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/diagnostics"
)

// TestDiagnosticsBundle: `addonctl diagnostics` against a running addond
// writes a bundle with status, config, overrides, state, trust and the
// index — and none of the secrets planted in an add-on's config_json (from
// the document and from the local overrides), in a URL or in addond's
// environment.
func TestDiagnosticsBundle(t *testing.T) {
	e := newEnv(t, "file")
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{"password": "PLANTED-A", "targets": ["PLANTED-B"], "db": {"dsn": "postgres://u:PLANTED-C@db/x"}}`)
	ov := filepath.Join(e.dir, "addons.local.json")
	os.WriteFile(ov, []byte(`{"addons": [{"addon_id": "hello", "config_json": {"api_key": "PLANTED-D"}}]}`), 0o644)
	os.WriteFile(filepath.Join(e.dir, "capabilities.allow"), []byte("cap_net_raw\n"), 0o644)
	e.extra = map[string]any{"local_overrides": ov}
	e.extraEnv = append(e.extraEnv, "AWS_SECRET_ACCESS_KEY=PLANTED-E", "MINIO_SECRET_KEY=PLANTED-F")
	d, _ := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))

	out := filepath.Join(e.dir, "bundle.tar.gz")
	if got := e.run("addonctl", "diagnostics", "--socket", d.socket, "--config", e.config, "--out", out); got != out+"\n" {
		t.Fatalf("addonctl diagnostics printed %q", got)
	}
	if r := e.exec(nil, "addonctl", "diagnostics", "--socket", d.socket, "--config", e.config, "--out", out); r.code == 0 {
		t.Fatal("diagnostics overwrote an existing bundle")
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, _ := f.Stat(); fi.Mode().Perm() != 0o600 {
		t.Errorf("bundle mode %v, want 0600", fi.Mode().Perm())
	}
	members, err := diagnostics.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range members {
		if strings.Contains(b, "PLANTED") || strings.Contains(name, "PLANTED") {
			t.Errorf("a planted secret is in %s:\n%s", name, b)
		}
	}
	for _, m := range []string{"INDEX.txt", "versions.txt", "status.json", "config/addond.json", "config/addons.local.json",
		"config/capabilities.allow", "trust.txt", "state/tree.txt", "state/state/assignments.json", "state/state/agent.json",
		"state/addons/hello/state.json", "logs/addond.txt", "logs/addon-hello.txt", "system/os-release.txt"} {
		if _, ok := members[m]; !ok {
			t.Errorf("no %s; index:\n%s", m, members["INDEX.txt"])
		}
	}
	for m, want := range map[string]string{
		"status.json":                  `"addon_id": "hello"`,
		"state/state/assignments.json": `"password": "<redacted>"`,
		"config/addons.local.json":     `"api_key": "<redacted>"`,
		"trust.txt":                    "signing.pub: sha256 ",
		"versions.txt":                 "addond: ",
	} {
		if !strings.Contains(members[m], want) {
			t.Errorf("%s lacks %q:\n%s", m, want, members[m])
		}
	}
}
