package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/publish"
)

// startAgent starts `addond run` as agent id on e's store, with a runtime
// root, socket and notify socket of its own, and waits for READY.
func (e *env) startAgent(t *testing.T, id string) *daemonProc {
	t.Helper()
	dir := filepath.Join(e.dir, id)
	os.MkdirAll(dir, 0o755)
	cfg := map[string]any{
		"agent_id":       id,
		"runtime_root":   filepath.Join(dir, "root"),
		"store":          e.storeURL,
		"assignments":    map[string]string{"store_key": "agents/" + id + "/assignments.json"},
		"trust":          map[string]any{"public_keys": []string{filepath.Join(e.dir, "keys", "signing.pub")}, "require_signatures": true},
		"min_free_bytes": 1 << 20,
		"status_socket":  filepath.Join(dir, "addond.sock"),
		"systemd":        map[string]string{"manager": "none"},
		"poll_interval":  "1s", "probation": "3s",
		"report": map[string]string{"min_interval": "1s"},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(dir, "addond.json")
	os.WriteFile(path, b, 0o644)
	notify := newNotifySocket(t)
	logf, _ := os.Create(filepath.Join(dir, "run.log"))
	cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", path)
	cmd.Env = append(append(os.Environ(), e.extraEnv...), "NOTIFY_SOCKET="+notify.path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, log: logf, socket: filepath.Join(dir, "addond.sock"), client: daemon.NewClient(filepath.Join(dir, "addond.sock"))}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s's log:\n%s", id, b)
		}
	})
	notify.waitFor(t, "READY=1", 20*time.Second)
	return d
}

// docOf is agent a's document as it is in the store.
func (e *env) docOf(a string) *assignment.Document {
	e.t.Helper()
	path := filepath.Join(strings.TrimPrefix(e.storeURL, "file://"), publish.AssignmentsKey(a))
	raw, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := assignment.Parse(raw)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// TestRolloutRealAgents: three real addond agents; a rollout of a healthy
// version reaches all of them wave by wave and exits 0; a rollout of a
// version that cannot start halts after the canary rolled it back (exit
// 3), touches no other agent, and --revert-on-halt gives the canary its
// previous entry back. The fleet's view agrees.
func TestRolloutRealAgents(t *testing.T) {
	e := newEnv(t, "file")
	key := filepath.Join(e.dir, "keys", "signing.key")
	hello := filepath.Join(bin, "hello")
	e.publishFile("hello", "1.0.0", hello)
	e.publishFile("hello", "1.1.0", hello)
	broken := filepath.Join(e.dir, "broken")
	os.WriteFile(broken, []byte("#!/bin/sh\necho no plugin here >&2\nexit 3\n"), 0o755)
	e.run("addonctl", "publish", "--store", e.storeURL, "--key", key, "--id", "hello", "--version", "1.2.0", "--binary-name", "hello", "linux/amd64="+broken)
	agents := []string{"edge-01", "edge-02", "edge-03"}
	procs := map[string]*daemonProc{}
	for _, a := range agents {
		e.run("addonctl", "assign", "--store", e.storeURL, "--agent", a, "--key", key, "--addon", "hello@1.0.0", "--arg", "hello=--agent="+a)
		procs[a] = e.startAgent(t, a)
	}
	for _, a := range agents {
		procs[a].waitAddon(t, "hello", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	}

	rollout := func(ref string, extra ...string) result {
		args := append([]string{"rollout", "--store", e.storeURL, "--key", key, "--addon", ref, "--all", "--canary", "1", "--waves", "50%,100%", "--wait", "90s", "--poll", "500ms"}, extra...)
		start := time.Now()
		r := e.exec(nil, "addonctl", args...)
		t.Logf("addonctl %s: exit %d after %v\n%s%s", strings.Join(args, " "), r.code, time.Since(start).Round(100*time.Millisecond), r.stdout, r.stderr)
		return r
	}
	if r := rollout("hello@1.1.0"); r.code != 0 || !strings.Contains(r.stdout, "done: hello@1.1.0 promoted on 3 of 3 agents") {
		t.Fatalf("rollout of a healthy version: exit %d", r.code)
	}
	for _, a := range agents {
		st := procs[a].waitAddon(t, "hello", 10*time.Second, "running 1.1.0", runningHealthy("1.1.0"))
		if d := e.docOf(a); d.Serial != 2 || d.Addons[0].Version != "1.1.0" || strings.Join(d.Addons[0].Args, " ") != "--agent="+a {
			t.Fatalf("%s's document after the rollout: serial %d, %+v", a, d.Serial, d.Addons[0])
		}
		if st.Probation {
			t.Fatalf("%s: promoted but on probation: %+v", a, st)
		}
	}

	r := rollout("hello@1.2.0", "--revert-on-halt")
	if r.code != 3 || !strings.Contains(r.stdout, "halted: 1 agents failed") || !strings.Contains(r.stdout, "edge-01: failed: rolled_back") {
		t.Fatalf("rollout of a version that cannot start: exit %d", r.code)
	}
	// The canary rolled back (addond's own doing) and got its 1.1.0 entry
	// back (the rollout's); the others were never touched.
	if d := e.docOf("edge-01"); d.Serial != 4 || d.Addons[0].Version != "1.1.0" {
		t.Fatalf("the canary's document: serial %d, hello %s; want 1.1.0 at serial 4", d.Serial, d.Addons[0].Version)
	}
	procs["edge-01"].waitAddon(t, "hello", 30*time.Second, "running 1.1.0 again", func(a daemon.AddonStatus) bool {
		return runningHealthy("1.1.0")(a) && a.Version == "1.1.0"
	})
	for _, a := range agents[1:] {
		if d := e.docOf(a); d.Serial != 2 || d.Addons[0].Version != "1.1.0" {
			t.Fatalf("%s was touched after the halt: serial %d, hello %s", a, d.Serial, d.Addons[0].Version)
		}
	}
	var p struct {
		State  string
		Agents map[string]struct{ Status, Reason string }
	}
	raw, _ := os.ReadFile(filepath.Join(strings.TrimPrefix(e.storeURL, "file://"), "rollouts/hello/1.2.0.json"))
	if err := json.Unmarshal(raw, &p); err != nil || p.State != "halted" || p.Agents["edge-02"].Status != "waiting" {
		t.Fatalf("progress record: %v\n%s", err, raw)
	}
	e.fleetJSON("with every agent back on 1.1.0", func(s fleet.Status, code int) bool {
		return code == 0 && len(s.Agents) == 3 && s.Addons["hello"]["1.1.0"]["running"] == 3
	})
}
