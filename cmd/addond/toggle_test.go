package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
)

// putDocument writes a signed assignment document into the env's file
// store, for entries `addonctl assign` does not build (compiled_in,
// os_package).
func (e *env) putDocument(serial int, addons ...map[string]any) {
	e.t.Helper()
	raw, _ := json.Marshal(map[string]any{"agent_id": "edge-01", "serial": serial, "addons": addons})
	dir := filepath.Join(e.dir, "store", "agents", "edge-01")
	os.MkdirAll(dir, 0o755)
	doc := filepath.Join(dir, "assignments.json")
	if err := os.WriteFile(doc, raw, 0o644); err != nil {
		e.t.Fatal(err)
	}
	sig := e.run("addonctl", "sign", "--key", filepath.Join(e.dir, "keys", "signing.key"), doc)
	os.WriteFile(doc+".sig", []byte(sig), 0o644)
}

// TestRunHeartbeatFeature: `addond run` offers the compiled-in heartbeat
// under config_toggle; it writes the agent's status to its file; an
// unknown feature is reported unsupported, naming it.
func TestRunHeartbeatFeature(t *testing.T) {
	e := newEnv(t, "file")
	hb := filepath.Join(e.dir, "heartbeat.json")
	e.putDocument(1,
		map[string]any{"addon_id": "heartbeat", "version": "1", "delivery": "compiled_in",
			"config_json": map[string]string{"interval": "1s", "path": hb}},
		map[string]any{"addon_id": "snmp", "supervision": "config_toggle"},
	)
	d, _ := e.startReady(t)
	st := d.waitAddon(t, "heartbeat", 15*time.Second, "running and healthy", runningHealthy("1"))
	if st.Supervision != "config_toggle" {
		t.Fatalf("heartbeat supervision %q", st.Supervision)
	}
	u := d.waitAddon(t, "snmp", 15*time.Second, "unsupported", func(a daemon.AddonStatus) bool { return a.State == "unsupported" })
	if !strings.Contains(u.LastError, `"snmp"`) {
		t.Fatalf("unknown feature: %+v; want the reason naming it", u)
	}

	var file struct {
		Time    time.Time            `json:"time"`
		AgentID string               `json:"agent_id"`
		Ready   bool                 `json:"ready"`
		Addons  []daemon.AddonStatus `json:"addons"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(hb)
		json.Unmarshal(b, &file)
		if file.AgentID == "edge-01" && file.Ready && len(file.Addons) == 2 && time.Since(file.Time) < 5*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat file:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
