package state

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// State files live in the runtime root, which an unsandboxed add-on (it
// runs as addond's uid) can write: their parsers get outside input.

// FuzzLoadAddon: addons/<id>/state.json loads to a state with its maps
// made, or is refused with nothing; what loads saves and loads back to
// the same state (a fixed point after one save), and a refusal leaves the
// file as it was.
func FuzzLoadAddon(f *testing.F) {
	for _, s := range []string{
		`{"current":"1.0.0","previous":"0.9.0","staged":{"1.0.0":{"sha256":"` + hex64 + `","binary":"hello","size":12,"staged_at":"2026-01-02T03:04:05Z"}},"failed":{"2.0.0":{"reason":"probation: unhealthy","at":"2026-01-02T03:04:05.123456789+02:00"}},"highest_version":"1.0.0","probation":{"version":"1.0.0","previous":"0.9.0","deadline":"2026-01-02T03:05:05Z"}}`,
		`{"last_known_good":{"addon_id":"hello","version":"1.0.0","enabled":true,"delivery":"pushed_artifact","supervision":"agent_sidecar","args":["-v"],"config_json":{"a":1},"timeout":"30s","resources":{"cpu_max_percent":50}}}`,
		`{}`, `null`, `{"staged":null,"failed":null}`, `[]`, ``, `{"current":1}`,
		`{"probation":{"deadline":"0000-01-01T00:00:00Z"}}`,
		`{"failed":{"x":{"at":"9999-12-31T23:59:59.999999999-23:59"}}}`,
		`{"current":"1","current":"2"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		root := fuzzDir(t)
		path := AddonPath(root, "hello")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := LoadAddon(root, "hello")
		if err != nil {
			if a != nil {
				t.Fatalf("refused (%v) with a state", err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
				t.Fatal("a refused state file was changed")
			}
			return
		}
		if a.Staged == nil || a.Failed == nil {
			t.Fatalf("loaded %+v without its maps", a)
		}
		if err := SaveAddon(root, "hello", a); err != nil {
			// What loaded must save: the agent must be able to go on.
			t.Fatalf("loaded state does not save: %v", err)
		}
		b, err := LoadAddon(root, "hello")
		if err != nil {
			t.Fatalf("saved state does not load: %v", err)
		}
		if ja, jb := mustJSON(t, a), mustJSON(t, b); !bytes.Equal(ja, jb) {
			t.Fatalf("state changed across save and load:\n%s\n%s", ja, jb)
		}
		first, _ := os.ReadFile(path)
		if err := SaveAddon(root, "hello", b); err != nil {
			t.Fatal(err)
		}
		if second, _ := os.ReadFile(path); !bytes.Equal(first, second) {
			t.Fatalf("saving twice differs:\n%s\n%s", first, second)
		}
		assertNoTemp(t, filepath.Dir(path))
	})
}

// FuzzLoadAgent: state/agent.json, the same properties.
func FuzzLoadAgent(f *testing.F) {
	for _, s := range []string{
		`{"last_serial":7,"config_version":"ab","document_token":"\"etag\"","applied_at":"2026-01-02T03:04:05Z"}`,
		`{"last_serial":18446744073709551615}`,
		`{"last_serial":18446744073709551616}`,
		`{"last_serial":-1}`, `{"last_serial":1e3}`, `{}`, `null`, ``, `{"applied_at":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		root := fuzzDir(t)
		path := filepath.Join(agentDir(root), "agent.json")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := LoadAgent(root)
		if err != nil {
			if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
				t.Fatal("a refused state file was changed")
			}
			return
		}
		if err := SaveAgent(root, a); err != nil {
			t.Fatalf("loaded state does not save: %v", err)
		}
		b, err := LoadAgent(root)
		if err != nil {
			t.Fatalf("saved state does not load: %v", err)
		}
		if ja, jb := mustJSON(t, a), mustJSON(t, b); !bytes.Equal(ja, jb) {
			t.Fatalf("state changed across save and load:\n%s\n%s", ja, jb)
		}
		if b.LastSerial != a.LastSerial {
			t.Fatalf("serial %d became %d", a.LastSerial, b.LastSerial)
		}
		assertNoTemp(t, filepath.Dir(path))
	})
}

const hex64 = "abababababababababababababababababababababababababababababababab"

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if len(e.Name()) > 0 && e.Name()[0] == '.' {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}

// fuzzDir is a temporary directory on tmpfs when there is one: the state
// files are written durably (fsync), which on a disk would make each
// execution cost milliseconds.
func fuzzDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "addond-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
