package diagnostics

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRedact(t *testing.T) {
	in := `{"agent_id": "edge-01", "store": "https://ops:hunter2@cdn.example/addons",
	  "addons": [{"addon_id": "hello", "version": "1.0.0", "serial": 7,
	    "config_json": {"targets": ["10.0.0.1"], "password": "p1", "nested": {"n": 3, "ok": true}}},
	    {"addon_id": "db", "config_json": "a string"}],
	  "auth_token": "t1", "AWS_SECRET_ACCESS_KEY": "s1", "credentials": {"user": "u", "pass": "p"}}`
	out := string(Redact([]byte(in)))
	for _, secret := range []string{"hunter2", "p1", "10.0.0.1", `"a string"`, "t1", "s1", `"u"`, `"p"`, ": 3", "true"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s survived:\n%s", secret, out)
		}
	}
	for _, kept := range []string{`"agent_id": "edge-01"`, `"https://<redacted>@cdn.example/addons"`, `"serial": 7`, `"targets": [`, `"nested": {`, `"version": "1.0.0"`} {
		if !strings.Contains(out, kept) {
			t.Errorf("%s lost:\n%s", kept, out)
		}
	}
	if got := string(Redact([]byte("password=x\n"))); strings.Contains(got, "x") {
		t.Errorf("not JSON: %q", got)
	}
	// However spelled, and the arguments too; any URL userinfo.
	out = string(Redact([]byte(`{"Config_JSON": {"a": "s2"}, "ARGS": ["--password", "s3"], "u": "https://TOKEN4@github.com/x", "v": "https://u:p@ss5@h/p"}`)))
	for _, secret := range []string{"s2", "s3", "TOKEN4", "ss5"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s survived:\n%s", secret, out)
		}
	}
}

func TestRedactText(t *testing.T) {
	in := `Environment=HTTPS_PROXY=http://ops:hunter2@proxy:3128 AWS_SECRET_ACCESS_KEY=abc123
msg="connecting" password: "two words" api_key='k3' Authorization: Bearer-xyz token=t9
unit addond-hello.service started, pid 42`
	out := RedactText(in)
	for _, secret := range []string{"hunter2", "abc123", "two words", "k3", "Bearer-xyz", "t9"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s survived:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, "unit addond-hello.service started, pid 42") || !strings.Contains(out, "AWS_SECRET_ACCESS_KEY=<redacted>") {
		t.Errorf("too much went:\n%s", out)
	}
}

// FuzzRedact: whatever comes in, what goes out is JSON (or the marker
// that replaced what was not), and no string under config_json is left.
func FuzzRedact(f *testing.F) {
	f.Add([]byte(`{"config_json": {"a": ["SECRETVALUE", {"b": "SECRETVALUE"}]}}`))
	f.Add([]byte(`[{"token": "SECRETVALUE"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		out := Redact(data)
		if bytes.HasPrefix(out, []byte(Redacted)) {
			return
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(out))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		var walk func(v any, under bool)
		walk = func(v any, under bool) {
			switch t2 := v.(type) {
			case map[string]any:
				for k, e := range t2 {
					walk(e, under || k == "config_json" || secretKey.MatchString(k))
				}
			case []any:
				for _, e := range t2 {
					walk(e, under)
				}
			default:
				if s, ok := t2.(string); under && (!ok || s != Redacted) {
					t.Fatalf("%v left under a secret key:\n%s", t2, out)
				}
			}
		}
		walk(v, false)
	})
}

// TestCollect: every part lands in the bundle or is noted as missing in
// its index, and a state file's config_json arrives redacted.
func TestCollect(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "state"), 0o700)
	os.MkdirAll(filepath.Join(root, "addons/hello"), 0o700)
	os.WriteFile(filepath.Join(root, "state/assignments.json"), []byte(`{"addons": [{"addon_id": "hello", "config_json": {"password": "PLANTED"}}]}`), 0o600)
	os.WriteFile(filepath.Join(root, "addons/hello/state.json"), []byte(`{"last_known_good": {"version": "1.0.0"}}`), 0o600)
	var buf bytes.Buffer
	b := NewBundle(&buf, time.Unix(0, 0))
	err := Collect(context.Background(), b, Sources{
		RuntimeRoot: root, AddonIDs: []string{"hello"},
		Status:   func(context.Context) ([]byte, error) { return []byte(`{"agent_id": "a"}`), nil },
		Commands: map[string][]string{"echo.txt": {"echo", "hi"}, "absent.txt": {"/nonexistent/cmd"}},
		Versions: map[string]string{"addonctl": "test"},
	})
	if err != nil || b.Close() != nil {
		t.Fatal(err)
	}
	members, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"versions.txt", "status.json", "trust.txt", "state/tree.txt", "state/state/assignments.json", "state/addons/hello/state.json", "echo.txt", "absent.txt", "INDEX.txt"} {
		if _, ok := members[m]; !ok {
			t.Errorf("no %s in %v", m, members)
		}
	}
	if strings.Contains(members["state/state/assignments.json"], "PLANTED") || !strings.Contains(members["echo.txt"], "$ echo hi\nhi\n") {
		t.Errorf("members: %q", members)
	}
	if !strings.Contains(members["INDEX.txt"], "state/state/agent.json") || !strings.Contains(members["INDEX.txt"], "MISSING") {
		t.Errorf("the index does not say what is missing:\n%s", members["INDEX.txt"])
	}
}

// TestCollectRefusesPlantedFiles: the runtime root is writable by the uid
// add-ons share; what an add-on plants there — a link to a file outside
// it, a FIFO — is not followed, not waited on, and said missing.
func TestCollectRefusesPlantedFiles(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret.json")
	os.WriteFile(outside, []byte(`{"note": "OUTSIDE-SECRET"}`), 0o600)
	os.MkdirAll(filepath.Join(root, "state"), 0o700)
	os.MkdirAll(filepath.Join(root, "addons/hello"), 0o700)
	os.Symlink(outside, filepath.Join(root, "state/agent.json"))
	if err := syscall.Mkfifo(filepath.Join(root, "addons/hello/state.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	b := NewBundle(&buf, time.Unix(0, 0))
	done := make(chan error, 1)
	go func() {
		done <- Collect(context.Background(), b, Sources{RuntimeRoot: root, AddonIDs: []string{"hello"}})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Collect hangs on a FIFO in the runtime root")
	}
	b.Close()
	members, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range members {
		if strings.Contains(data, "OUTSIDE-SECRET") {
			t.Errorf("%s holds the file a planted link points to", name)
		}
	}
	for _, want := range []string{"state/state/agent.json", "MISSING", "state/addons/hello/state.json", "not a regular file"} {
		if !strings.Contains(members["INDEX.txt"], want) {
			t.Errorf("the index lacks %q:\n%s", want, members["INDEX.txt"])
		}
	}
}
