package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/toggle"
	"github.com/addond/addond/vmtest"
)

type heartbeatFile struct {
	Time    time.Time     `json:"time"`
	AgentID string        `json:"agent_id"`
	Ready   bool          `json:"ready"`
	Serial  uint64        `json:"serial"`
	Addons  []AddonStatus `json:"addons"`
}

func readHeartbeat(t *testing.T, path string) heartbeatFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("heartbeat file: %v", err)
	}
	var hb heartbeatFile
	if err := json.Unmarshal(b, &hb); err != nil {
		t.Fatalf("heartbeat file is not JSON: %v\n%s", err, b)
	}
	return hb
}

// waitHeartbeat waits for a heartbeat newer than after in path.
func waitHeartbeat(t *testing.T, path string, after time.Time) heartbeatFile {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			var hb heartbeatFile
			if json.Unmarshal(b, &hb) == nil && hb.Time.After(after) {
				return hb
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no heartbeat after %v", path, after)
	return heartbeatFile{}
}

func TestHeartbeatWritesUpdatesStops(t *testing.T) {
	ctx := context.Background()
	root, out := t.TempDir(), t.TempDir()
	var serial atomic.Uint64
	status := func() Status {
		return Status{AgentID: "edge-01", Version: Version, Ready: true, Serial: serial.Add(1),
			Addons: []AddonStatus{{AddonID: "beat", State: "running", Health: "healthy"}}}
	}
	hb := NewHeartbeat(status, root)
	baseline := runtime.NumGoroutine()

	path := filepath.Join(out, "hb.json")
	start := time.Now().Add(-time.Second)
	if err := hb.Enable(ctx, []byte(`{"interval":"1s","path":"`+path+`"}`)); err != nil {
		t.Fatal(err)
	}
	// Written before Enable returns, with the agent's status.
	first := readHeartbeat(t, path)
	if first.AgentID != "edge-01" || !first.Ready || len(first.Addons) != 1 || first.Addons[0].AddonID != "beat" || !first.Time.After(start) {
		t.Fatalf("first heartbeat %+v", first)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("heartbeat file mode %v, want 0644", fi.Mode().Perm())
	}
	// Updated every interval, with a fresh status.
	second := waitHeartbeat(t, path, first.Time)
	if second.Serial <= first.Serial {
		t.Fatalf("second heartbeat carries the old status: serial %d → %d", first.Serial, second.Serial)
	}
	if h, reason := hb.Health(); h != supervisors.HealthHealthy {
		t.Fatalf("health %s %q", h, reason)
	}
	// Written atomically: no temporary file is left behind.
	if entries, _ := os.ReadDir(out); len(entries) != 1 {
		t.Fatalf("%s holds %d entries, want only hb.json", out, len(entries))
	}

	// Reconfigured in place: the new path from now on, not the old one.
	path2 := filepath.Join(out, "hb2.json")
	if err := hb.Enable(ctx, []byte(`{"interval":"1s","path":"`+path2+`"}`)); err != nil {
		t.Fatal(err)
	}
	moved := readHeartbeat(t, path).Time
	waitHeartbeat(t, path2, readHeartbeat(t, path2).Time)
	if got := readHeartbeat(t, path).Time; !got.Equal(moved) {
		t.Fatal("the old path is still written after a reconfiguration")
	}

	// A refused configuration leaves it running as it was.
	if err := hb.Enable(ctx, []byte(`{"interval":"1ms"}`)); !errors.Is(err, toggle.ErrInvalidConfig) {
		t.Fatalf("Enable(interval 1ms) = %v, want ErrInvalidConfig", err)
	}
	waitHeartbeat(t, path2, readHeartbeat(t, path2).Time)

	// Disable stops it: no goroutine left, the file no longer changes.
	if err := hb.Disable(ctx); err != nil {
		t.Fatal(err)
	}
	vmtest.Goroutines(t, baseline)
	last := readHeartbeat(t, path2).Time
	time.Sleep(1500 * time.Millisecond)
	if got := readHeartbeat(t, path2).Time; !got.Equal(last) {
		t.Fatal("heartbeat written after Disable")
	}
	if err := hb.Disable(ctx); err != nil {
		t.Fatalf("second Disable: %v", err)
	}
}

func TestHeartbeatDefaultPathAndFailures(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	hb := NewHeartbeat(func() Status { return Status{AgentID: "edge-01"} }, root)
	if err := hb.Enable(ctx, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	defer hb.Disable(ctx)
	if got := readHeartbeat(t, filepath.Join(root, DefaultHeartbeatFile)); got.AgentID != "edge-01" {
		t.Fatalf("default heartbeat %+v", got)
	}

	// A path that cannot be written fails Enable, and is not a
	// configuration error (it may be retried).
	hb2 := NewHeartbeat(func() Status { return Status{} }, root)
	missing := filepath.Join(t.TempDir(), "gone", "hb.json")
	err := hb2.Enable(ctx, []byte(`{"path":"`+missing+`"}`))
	if err == nil || errors.Is(err, toggle.ErrInvalidConfig) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Enable on a missing directory = %v; want a write error naming the path", err)
	}

	// A write failure while on is reported as degraded health.
	dir := filepath.Join(t.TempDir(), "d")
	os.Mkdir(dir, 0o755)
	if err := hb2.Enable(ctx, []byte(`{"interval":"1s","path":"`+filepath.Join(dir, "hb.json")+`"}`)); err != nil {
		t.Fatal(err)
	}
	defer hb2.Disable(ctx)
	os.RemoveAll(dir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		h, reason := hb2.Health()
		if h == supervisors.HealthDegraded && strings.Contains(reason, "hb.json") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %s %q after the directory vanished; want degraded", h, reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestParseHeartbeatConfig(t *testing.T) {
	root := "/var/lib/addond"
	for _, tc := range []struct {
		in       string
		interval time.Duration
		path     string
		err      string
	}{
		{in: ``, interval: DefaultHeartbeatInterval, path: "/var/lib/addond/heartbeat.json"},
		{in: `{}`, interval: DefaultHeartbeatInterval, path: "/var/lib/addond/heartbeat.json"},
		{in: `{"interval":"5s","path":"/run/addond/heartbeat.json"}`, interval: 5 * time.Second, path: "/run/addond/heartbeat.json"},
		{in: `{"path":"/var/lib/addond/heartbeat.json"}`, interval: DefaultHeartbeatInterval, path: "/var/lib/addond/heartbeat.json"},
		{in: `{"interval":"500ms"}`, err: "outside"},
		{in: `{"interval":"48h"}`, err: "outside"},
		{in: `{"interval":"soon"}`, err: "not a duration"},
		{in: `{"interval":30}`, err: "heartbeat config"},
		{in: `{"path":"heartbeat.json"}`, err: "not an absolute, clean path"},
		{in: `{"path":"/run/../etc/x.json"}`, err: "not an absolute, clean path"},
		{in: `{"path":"/run/addond/addond.sock"}`, err: "does not name a .json file"},
		{in: `{"path":"/run/addond/.json"}`, err: "does not name a .json file"},
		{in: `{"path":"/var/lib/addond/state/assignments.json"}`, err: "inside the runtime root"},
		{in: `{"path":"/var/lib/addond/addons/x/state.json"}`, err: "inside the runtime root"},
		{in: `{"colour":"red"}`, err: "unknown field"},
		{in: `{} {}`, err: "trailing data"},
		{in: `[]`, err: "heartbeat config"},
	} {
		c, err := parseHeartbeatConfig([]byte(tc.in), root)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || c.Interval != tc.interval || c.Path != tc.path {
			t.Errorf("%s: %+v, %v; want %s %s", tc.in, c, err, tc.interval, tc.path)
		}
	}
}

func FuzzHeartbeatConfig(f *testing.F) {
	f.Add([]byte(`{"interval":"30s","path":"/run/addond/heartbeat.json"}`))
	f.Add([]byte(`{"path":"/var/lib/addond/../addond/state/x.json"}`))
	f.Add([]byte(`{"interval":"-1s"}`))
	root := "/var/lib/addond"
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseHeartbeatConfig(data, root)
		if err != nil {
			return
		}
		if c.Interval < MinHeartbeatInterval || c.Interval > MaxHeartbeatInterval {
			t.Fatalf("accepted interval %s", c.Interval)
		}
		if !filepath.IsAbs(c.Path) || filepath.Clean(c.Path) != c.Path || !strings.HasSuffix(c.Path, ".json") {
			t.Fatalf("accepted path %q", c.Path)
		}
		if rel, err := filepath.Rel(root, c.Path); err == nil && filepath.IsLocal(rel) && c.Path != filepath.Join(root, DefaultHeartbeatFile) {
			t.Fatalf("accepted path %q inside the runtime root", c.Path)
		}
	})
}
