package main

import (
	"bufio"
	"context"
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
	"github.com/addond/addond/daemon/rollout"
	"github.com/addond/addond/daemon/store"
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
	return objectJSON(e, publish.AssignmentsKey(a), func(raw []byte) (*assignment.Document, error) { return assignment.Parse(raw) })
}

// objectJSON reads key from e's store (whatever its kind) and parses it.
func objectJSON[T any](e *env, key string, parse func([]byte) (T, error)) T {
	e.t.Helper()
	for _, kv := range e.extraEnv {
		k, v, _ := strings.Cut(kv, "=")
		e.t.Setenv(k, v)
	}
	st, err := store.Open(e.storeURL)
	if err != nil {
		e.t.Fatal(err)
	}
	raw, _, err := store.ReadSmall(context.Background(), st, key, 16<<20, store.OpenOptions{})
	if err != nil {
		e.t.Fatalf("%s: %v", key, err)
	}
	v, err := parse(raw)
	if err != nil {
		e.t.Fatalf("%s: %v", key, err)
	}
	return v
}

// TestRolloutRealAgents: five real addond agents on the real MinIO. A
// rollout of a healthy version reaches all of them in two waves and exits
// 0; a rollout of a version that cannot start halts after the canary
// rolled it back (exit 3), touches no other agent, and --revert-on-halt
// gives the canary its previous entry back; a rollout whose addonctl is
// killed mid-wave is finished by --resume, every agent changed once. The
// fleet's view agrees.
func TestRolloutRealAgents(t *testing.T) {
	e := newEnv(t, "s3")
	key := filepath.Join(e.dir, "keys", "signing.key")
	hello := filepath.Join(bin, "hello")
	e.publishFile("hello", "1.0.0", hello)
	e.publishFile("hello", "1.1.0", hello)
	e.publishFile("hello", "1.3.0", hello)
	broken := filepath.Join(e.dir, "broken")
	os.WriteFile(broken, []byte("#!/bin/sh\necho no plugin here >&2\nexit 3\n"), 0o755)
	e.run("addonctl", "publish", "--store", e.storeURL, "--key", key, "--id", "hello", "--version", "1.2.0", "--binary-name", "hello", "linux/amd64="+broken)
	agents := []string{"edge-01", "edge-02", "edge-03", "edge-04", "edge-05"}
	procs := map[string]*daemonProc{}
	for _, a := range agents {
		e.run("addonctl", "assign", "--store", e.storeURL, "--agent", a, "--key", key, "--addon", "hello@1.0.0", "--arg", "hello=--agent="+a)
		procs[a] = e.startAgent(t, a)
	}
	for _, a := range agents {
		procs[a].waitAddon(t, "hello", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	}

	args := func(ref string, extra ...string) []string {
		return append([]string{"rollout", "--store", e.storeURL, "--key", key, "--addon", ref, "--all", "--canary", "1", "--waves", "100%", "--wait", "90s", "--poll", "500ms"}, extra...)
	}
	run := func(ref string, extra ...string) result {
		args := args(ref, extra...)
		start := time.Now()
		r := e.exec(nil, "addonctl", args...)
		t.Logf("addonctl %s: exit %d after %v\n%s%s", strings.Join(args, " "), r.code, time.Since(start).Round(100*time.Millisecond), r.stdout, r.stderr)
		return r
	}
	serials := func(want map[string]uint64, version string) {
		t.Helper()
		for _, a := range agents {
			if d := e.docOf(a); d.Serial != want[a] || d.Addons[0].Version != version || strings.Join(d.Addons[0].Args, " ") != "--agent="+a {
				t.Fatalf("%s's document: serial %d, %+v; want serial %d, hello %s", a, d.Serial, d.Addons[0], want[a], version)
			}
		}
	}
	if r := run("hello@1.1.0"); r.code != 0 || !strings.Contains(r.stdout, "wave 2/2: 4 agents") || !strings.Contains(r.stdout, "done: hello@1.1.0 promoted on 5 of 5 agents") {
		t.Fatalf("rollout of a healthy version: exit %d", r.code)
	}
	serials(map[string]uint64{"edge-01": 2, "edge-02": 2, "edge-03": 2, "edge-04": 2, "edge-05": 2}, "1.1.0")
	for _, a := range agents {
		if st := procs[a].waitAddon(t, "hello", 10*time.Second, "running 1.1.0", runningHealthy("1.1.0")); st.Probation {
			t.Fatalf("%s: promoted but on probation: %+v", a, st)
		}
	}

	r := run("hello@1.2.0", "--revert-on-halt")
	if r.code != 3 || !strings.Contains(r.stdout, "halted: 1 agents failed") || !strings.Contains(r.stdout, "edge-01: failed: rolled_back") {
		t.Fatalf("rollout of a version that cannot start: exit %d", r.code)
	}
	// The canary rolled back (addond's own doing) and got its 1.1.0 entry
	// back (the rollout's, serial 4); the other four were never touched.
	serials(map[string]uint64{"edge-01": 4, "edge-02": 2, "edge-03": 2, "edge-04": 2, "edge-05": 2}, "1.1.0")
	procs["edge-01"].waitAddon(t, "hello", 30*time.Second, "running 1.1.0 again", func(a daemon.AddonStatus) bool {
		return runningHealthy("1.1.0")(a) && a.Version == "1.1.0"
	})
	p := objectJSON(e, "rollouts/hello/1.2.0.json", func(raw []byte) (rollout.Progress, error) {
		var p rollout.Progress
		return p, json.Unmarshal(raw, &p)
	})
	if p.State != "halted" || p.Agents["edge-02"].Status != rollout.StatusWaiting || !p.Agents["edge-01"].Reverted {
		t.Fatalf("progress record: %+v", p)
	}

	// Killed mid-wave: once it has changed the canary, before the agent
	// can have promoted it (a poll and a 3 s probation).
	cmd := exec.Command(filepath.Join(bin, "addonctl"), args("hello@1.3.0")...)
	cmd.Env = append(os.Environ(), e.extraEnv...)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		seen.WriteString(lines.Text() + "\n")
		if strings.Contains(lines.Text(), "edge-01: hello 1.1.0 -> 1.3.0") {
			cmd.Process.Kill()
			break
		}
	}
	cmd.Wait()
	if !strings.Contains(seen.String(), "-> 1.3.0") || strings.Contains(seen.String(), "promoted") {
		t.Fatalf("addonctl was not killed mid-wave:\n%s", seen.String())
	}
	if r := run("hello@1.3.0", "--resume"); r.code != 0 || !strings.Contains(r.stdout, "resuming the rollout of hello@1.3.0") ||
		!strings.Contains(r.stdout, "done: hello@1.3.0 promoted on 5 of 5 agents") {
		t.Fatalf("--resume after a kill: exit %d", r.code)
	}
	// Every agent changed exactly once, the canary's change not repeated.
	serials(map[string]uint64{"edge-01": 5, "edge-02": 3, "edge-03": 3, "edge-04": 3, "edge-05": 3}, "1.3.0")
	e.fleetJSON("with every agent on 1.3.0", func(s fleet.Status, code int) bool {
		return code == 0 && len(s.Agents) == 5 && s.Addons["hello"]["1.3.0"]["running"] == 5
	})
}
