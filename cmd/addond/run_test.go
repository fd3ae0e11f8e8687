package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/vmtest"
)

// notifySocket is a real sd_notify socket (unixgram) that records what
// addond sends.
type notifySocket struct {
	path string
	msgs chan string
}

func newNotifySocket(t *testing.T) *notifySocket {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifySocket{path: path, msgs: make(chan string, 256)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

func (n *notifySocket) waitFor(t *testing.T, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, want) {
				return m
			}
		case <-deadline:
			t.Fatalf("no sd_notify message with %q within %v", want, timeout)
		}
	}
}

// daemonProc is a running `addond run`.
type daemonProc struct {
	cmd     *exec.Cmd
	log     *os.File
	socket  string
	client  *daemon.Client
	metrics string // its metrics_address
}

func (e *env) startDaemon(t *testing.T, notify *notifySocket) *daemonProc {
	t.Helper()
	sock := filepath.Join(e.dir, "addond.sock")
	cfg := map[string]any{
		"status_socket": sock, "systemd": map[string]string{"manager": "none"},
		"poll_interval": "1s", "probation": "3s",
	}
	metrics, _ := e.extra["metrics_address"].(string)
	if metrics == "" {
		metrics = arFreeAddr(t)
		cfg["metrics_address"] = metrics
	}
	e.writeConfig(cfg)
	logf, _ := os.Create(filepath.Join(e.dir, "run.log"))
	cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", e.config)
	cmd.Env = append(append(os.Environ(), e.extraEnv...), "NOTIFY_SOCKET="+notify.path, "ADDOND_LOG_LEVEL=debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, log: logf, socket: sock, client: daemon.NewClient(sock), metrics: metrics}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("addond log:\n%s", b)
		}
	})
	return d
}

// logText is what addond has logged so far.
func (d *daemonProc) logText() string {
	b, _ := os.ReadFile(d.log.Name())
	return string(b)
}

func (d *daemonProc) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("addond run after SIGTERM: %v, want a clean exit", err)
		}
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		t.Error("addond run did not stop within 20s of SIGTERM")
	}
}

// refreshes is how many refreshes of the desired set addond has applied
// (its reconcile histogram's count).
func (d *daemonProc) refreshes(t *testing.T) int {
	t.Helper()
	for _, line := range strings.Split(arMetrics(t, d.metrics), "\n") {
		if v, ok := strings.CutPrefix(line, "addond_reconcile_duration_seconds_count "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// afterRefreshes waits until addond has applied n more refreshes: what a
// test waits for when it asserts that nothing changes for a few polls (a
// fixed sleep could pass with none under load).
func (d *daemonProc) afterRefreshes(t *testing.T, n int) {
	t.Helper()
	want := d.refreshes(t) + n
	eventually(t, 30*time.Second, fmt.Sprintf("%d more refreshes applied", n), func() bool { return d.refreshes(t) >= want })
}

// startReady starts `addond run` with a fresh notify socket and waits for
// READY=1.
func (e *env) startReady(t *testing.T) (*daemonProc, *notifySocket) {
	t.Helper()
	notify := newNotifySocket(t)
	d := e.startDaemon(t, notify)
	notify.waitFor(t, "READY=1", 10*time.Second)
	return d, notify
}

// waitAddon polls /v1/status until id satisfies ok.
func (d *daemonProc) waitAddon(t *testing.T, id string, timeout time.Duration, what string, ok func(daemon.AddonStatus) bool) daemon.AddonStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last daemon.AddonStatus
	for time.Now().Before(deadline) {
		if st, err := d.client.Status(context.Background()); err == nil {
			for _, a := range st.Addons {
				if a.AddonID == id {
					last = a
					if ok(a) {
						return a
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not %s within %v; last status %+v", id, what, timeout, last)
	return last
}

func runningHealthy(version string) func(daemon.AddonStatus) bool {
	return func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.Health == "healthy" && a.ActiveVersion == version
	}
}

// alive: the process exists (EPERM: it does, under a uid this one may not
// signal — a capped add-on's).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

func (e *env) publishFile(id, version, path string) {
	e.t.Helper()
	e.run("addonctl", "publish", "--store", e.storeURL, "--key", filepath.Join(e.dir, "keys", "signing.key"),
		"--id", id, "--version", version, "linux/amd64="+path)
}

func (e *env) assignWithConfig(ref, id, config string) {
	e.t.Helper()
	cfg := filepath.Join(e.t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(config), 0o644)
	e.run("addonctl", "assign", "--store", e.storeURL, "--agent", "edge-01", "--key", filepath.Join(e.dir, "keys", "signing.key"),
		"--addon", ref, "--config", id+"="+cfg)
}

// TestRunRollback: healthy 1.0.0 → unhealthy 1.1.0 → back on 1.0.0, state
// rolled_back, 1.1.0 not retried (also across a restart of addond) until
// the assignment changes.
func TestRunRollback(t *testing.T) {
	e := newEnv(t, "file")
	hello := filepath.Join(bin, "hello")
	e.publishFile("hello", "1.0.0", hello)
	e.publishFile("hello", "1.1.0", hello)
	e.publishFile("hello", "1.2.0", hello)
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	metricsAddr := l.Addr().String()
	l.Close()
	e.extra = map[string]any{"metrics_address": metricsAddr}

	d, notify := e.startReady(t)
	first := d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	// addonctl status's exit status: 0 when all is well, 1 when an add-on
	// is not (below), 2 when addond cannot be reached.
	if r := e.exec(nil, "addonctl", "status", "--socket", d.socket); r.code != 0 || !strings.Contains(r.stdout, "hello") {
		t.Errorf("addonctl status, all running and healthy: %+v", r)
	}
	if r := e.exec(nil, "addonctl", "status", "--socket", filepath.Join(e.dir, "nobody.sock")); r.code != 2 || !strings.Contains(r.stderr, "cannot be reached") {
		t.Errorf("addonctl status, no addond: %+v", r)
	}

	e.assignWithConfig("hello@1.1.0", "hello", `{"health":"unhealthy"}`)
	if err := d.client.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	rb := d.waitAddon(t, "hello", 20*time.Second, "rolled back", func(a daemon.AddonStatus) bool {
		return a.State == "rolled_back" && a.ActiveVersion == "1.0.0" && a.Health == "healthy"
	})
	if rb.Version != "1.1.0" || !strings.Contains(rb.LastError, "probation") || rb.PID == first.PID {
		t.Fatalf("after rollback: %+v", rb)
	}
	if target, _ := os.Readlink(filepath.Join(e.root, "addons/hello/current")); target != "versions/1.0.0" {
		t.Fatalf("current -> %s after rollback, want versions/1.0.0", target)
	}
	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		r := e.exec(nil, "addonctl", append(args, "--socket", d.socket)...)
		if r.code != 1 || !strings.Contains(r.stderr, "hello is rolled_back, healthy") || !strings.Contains(r.stdout, "rolled_back") {
			t.Errorf("addonctl %v after a rollback: %+v", args, r)
		}
	}
	var st struct {
		Failed map[string]struct{ Reason string } `json:"failed"`
	}
	b, _ := os.ReadFile(filepath.Join(e.root, "addons/hello/state.json"))
	json.Unmarshal(b, &st)
	if st.Failed["1.1.0"].Reason == "" {
		t.Fatalf("1.1.0 not persisted as failed: %s", b)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`addond_rollbacks_total{addon_id="hello"} 1`,
		`addond_addon_state{addon_id="hello",state="rolled_back"} 1`,
		`addond_delivery_bytes_total `,
		`addond_reconcile_duration_seconds_count `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// STATUS= follows the add-ons.
	notify.waitFor(t, "STATUS=", time.Second)

	// Reconciles do not retry it.
	d.client.Reconcile(context.Background())
	d.afterRefreshes(t, 2)
	if a := d.waitAddon(t, "hello", time.Second, "still rolled back", func(a daemon.AddonStatus) bool { return true }); a.State != "rolled_back" || a.PID != rb.PID {
		t.Fatalf("1.1.0 was retried: %+v", a)
	}

	// Across a restart of addond: its sidecars are children and stop with
	// it; the new addond starts 1.0.0 and still reports rolled_back.
	d.stop(t)
	notify.waitFor(t, "STOPPING=1", time.Second)
	if alive(rb.PID) {
		t.Fatalf("sidecar %d outlived addond (manager none: sidecars are children)", rb.PID)
	}
	d = e.startDaemon(t, notify)
	notify.waitFor(t, "READY=1", 10*time.Second)
	rbr := d.waitAddon(t, "hello", 15*time.Second, "rolled back after a restart", func(a daemon.AddonStatus) bool {
		return a.State == "rolled_back" && a.ActiveVersion == "1.0.0" && a.Version == "1.1.0" && a.PID != 0
	})

	// The assignment goes back to the version that runs: the rollback is
	// over, nothing restarts.
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d.client.Reconcile(context.Background())
	back := d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0, no longer rolled back", func(a daemon.AddonStatus) bool {
		return runningHealthy("1.0.0")(a) && a.Version == "1.0.0" && a.LastError == "" && !a.FromLKG
	})
	if back.PID != rbr.PID || !alive(back.PID) {
		t.Fatalf("hello restarted (pid %d → %d) when the assignment came back to what runs", rbr.PID, back.PID)
	}

	// A new assignment is tried.
	e.assignWithConfig("hello@1.2.0", "hello", `{}`)
	d.client.Reconcile(context.Background())
	d.waitAddon(t, "hello", 20*time.Second, "running 1.2.0", runningHealthy("1.2.0"))
}

// TestRunStoreDownAtStart: READY is sent and last-known-good add-ons run
// without the store.
func TestRunStoreDownAtStart(t *testing.T) {
	e := newEnv(t, "file")
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	e.run("addond", "stage", "--config", e.config)
	os.Rename(filepath.Join(e.dir, "store"), filepath.Join(e.dir, "store.away"))

	start := time.Now()
	e.extraEnv = append(e.extraEnv, "WATCHDOG_USEC=1000000") // WatchdogSec=1
	d, notify := e.startReady(t)
	t.Logf("READY=1 after %v with the store down", time.Since(start))
	notify.waitFor(t, "WATCHDOG=1", 2*time.Second)
	d.waitAddon(t, "hello", 15*time.Second, "running from last-known-good", runningHealthy("1.0.0"))
	st, err := d.client.Status(context.Background())
	if err != nil || !strings.Contains(st.DocumentError, "unreachable") {
		t.Fatalf("status does not name the store outage: %+v, %v", st, err)
	}
}

// TestStatusAPIRefusesBadRequests: 4xx with a message, never a crash.
func TestStatusAPIRefusesBadRequests(t *testing.T) {
	e := newEnv(t, "file")
	d, _ := e.startReady(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", d.socket)
	}}}
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/v1/nope", 404},
		{"POST", "/v1/status", 405},
		{"GET", "/v1/reconcile", 405},
		{"POST", "/v1/retry/..%2F..%2Fetc", 400},
		{"POST", "/v1/retry/", 400},
		{"POST", "/v1/retry/unknown", 404},
		{"GET", "/v1/status", 200},
	} {
		req, _ := http.NewRequest(tc.method, "http://addond"+tc.path, strings.NewReader("{not json"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, resp.StatusCode, body, tc.code)
		}
		if tc.code != 200 && !strings.Contains(string(body), `"error"`) {
			t.Errorf("%s %s: no error message in %s", tc.method, tc.path, body)
		}
	}
	// Still alive and serving.
	if _, err := d.client.Status(context.Background()); err != nil {
		t.Fatalf("status after bad requests: %v", err)
	}
}

func TestOverrideCommands(t *testing.T) {
	e := newEnv(t, "file")
	ov := filepath.Join(e.dir, "addons.local.json")
	e.extra = map[string]any{"local_overrides": ov}
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d, _ := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running", runningHealthy("1.0.0"))

	e.run("addonctl", "override", "set", "hello", "--enabled=false", "--config", e.config)
	d.waitAddon(t, "hello", 15*time.Second, "disabled", func(a daemon.AddonStatus) bool { return a.State == "disabled" })
	if out := e.run("addonctl", "override", "show", "--config", e.config); !strings.Contains(out, `"enabled": false`) {
		t.Fatalf("override show:\n%s", out)
	}
	cfg := filepath.Join(e.dir, "degraded.json")
	os.WriteFile(cfg, []byte(`{"health":"degraded"}`), 0o644)
	e.run("addonctl", "override", "set", "hello", "--enabled=true", "--config-json", cfg, "--config", e.config)
	d.waitAddon(t, "hello", 15*time.Second, "degraded", func(a daemon.AddonStatus) bool { return a.State == "degraded" })
	e.run("addonctl", "override", "clear", "hello", "--config", e.config)
	d.waitAddon(t, "hello", 15*time.Second, "running again", runningHealthy("1.0.0"))

	// Refusals write nothing.
	before, _ := os.ReadFile(ov)
	for _, args := range [][]string{
		{"override", "set", "../x", "--enabled=false"},
		{"override", "set", "hello", "--version", ".."},
		{"override", "set", "hello"},
	} {
		if r := e.exec(nil, "addonctl", append(args, "--config", e.config)...); r.code == 0 {
			t.Errorf("addonctl %v succeeded", args)
		}
	}
	if after, _ := os.ReadFile(ov); string(after) != string(before) {
		t.Fatalf("a refused override changed the file:\n%s", after)
	}
}

// TestReloadOnSIGHUP: SIGHUP re-reads the config, the document and the
// overrides at once, between RELOADING=1 and READY=1.
func TestReloadOnSIGHUP(t *testing.T) {
	e := newEnv(t, "file")
	e.extra = map[string]any{"poll_interval": "1h"} // nothing but SIGHUP
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.publishFile("hello", "1.1.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d, notify := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))

	// The document.
	e.assignWithConfig("hello@1.1.0", "hello", `{}`)
	d.cmd.Process.Signal(syscall.SIGHUP)
	notify.waitFor(t, "RELOADING=1", 5*time.Second)
	notify.waitFor(t, "READY=1", 5*time.Second)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.1.0", runningHealthy("1.1.0"))

	// The config: an overrides file appears in it.
	ov := filepath.Join(e.dir, "addons.local.json")
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","enabled":false}]}`), 0o644)
	e.extra["local_overrides"] = ov
	e.writeConfig(map[string]any{
		"status_socket": d.socket, "systemd": map[string]string{"manager": "none"}, "probation": "3s",
	})
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitAddon(t, "hello", 15*time.Second, "disabled by the reloaded config", func(a daemon.AddonStatus) bool { return a.State == "disabled" })

	// A bad config: the reload is refused and the running config stays —
	// the overrides it named still apply, after a reconcile too.
	good, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, []byte(`{"agent_id": "edge-01", "runtime_root": "relative/root"}`), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logText(), "SIGHUP: config not reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal of the bad config logged:\n%s", d.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d.client.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a := d.waitAddon(t, "hello", 5*time.Second, "still disabled", func(a daemon.AddonStatus) bool { return a.State == "disabled" }); a.Version != "1.1.0" {
		t.Errorf("after a bad reload: %+v", a)
	}
	if err := d.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("addond exited on a bad config: %v", err)
	}
	// Fixed: taken on the next SIGHUP.
	os.WriteFile(e.config, good, 0o644)
	os.WriteFile(ov, []byte(`{"addons":[]}`), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitAddon(t, "hello", 15*time.Second, "running again once the config is good", runningHealthy("1.1.0"))
}

// TestReconcileLeavesUnchangedAlone: a reconcile touches only what
// changed, and a configuration-only change is applied in place.
func TestReconcileLeavesUnchangedAlone(t *testing.T) {
	e := newEnv(t, "file")
	e.publishFile("a", "1.0.0", filepath.Join(bin, "hello"))
	e.publishFile("b", "1.0.0", filepath.Join(bin, "hello"))
	assign := func(aConfig string) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "a.json"), []byte(aConfig), 0o644)
		e.run("addonctl", "assign", "--store", e.storeURL, "--agent", "edge-01", "--key", filepath.Join(e.dir, "keys", "signing.key"),
			"--addon", "a@1.0.0", "--addon", "b@1.0.0", "--config", "a="+filepath.Join(dir, "a.json"))
	}
	assign(`{}`)
	d, _ := e.startReady(t)
	a0 := d.waitAddon(t, "a", 15*time.Second, "running", runningHealthy("1.0.0"))
	b0 := d.waitAddon(t, "b", 15*time.Second, "running", runningHealthy("1.0.0"))

	assign(`{"health":"degraded"}`)
	d.client.Reconcile(context.Background())
	a1 := d.waitAddon(t, "a", 15*time.Second, "degraded", func(s daemon.AddonStatus) bool { return s.State == "degraded" })
	if a1.PID != a0.PID || a1.Restarts != 0 {
		t.Fatalf("a configuration-only change restarted a: pid %d → %d, restarts %d", a0.PID, a1.PID, a1.Restarts)
	}
	for i := 0; i < 3; i++ {
		d.client.Reconcile(context.Background())
	}
	d.afterRefreshes(t, 2)
	b1 := d.waitAddon(t, "b", time.Second, "running", runningHealthy("1.0.0"))
	if b1.PID != b0.PID || b1.Restarts != 0 || !b1.Since.Equal(b0.Since) {
		t.Fatalf("an unchanged add-on was touched: %+v → %+v", b0, b1)
	}
}

// TestProbationInterruptedByACrash: addond killed while a new version is on
// probation starts the last-known-good version first (before it knows
// anything of the store), does not mark the new version failed, and puts
// the new version on probation again.
func TestProbationInterruptedByACrash(t *testing.T) {
	e := newEnv(t, "file")
	hello := filepath.Join(bin, "hello")
	e.publishFile("hello", "1.0.0", hello)
	e.publishFile("hello", "1.1.0", hello)
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	e.extra = map[string]any{"probation": "1h"}
	d, notify := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))

	e.assignWithConfig("hello@1.1.0", "hello", `{"health":"degraded"}`)
	d.client.Reconcile(context.Background())
	p := d.waitAddon(t, "hello", 15*time.Second, "1.1.0 on probation", func(a daemon.AddonStatus) bool {
		return a.ActiveVersion == "1.1.0" && a.State == "degraded"
	})
	d.cmd.Process.Kill() // SIGKILL: no cleanup
	d.cmd.Wait()
	syscall.Kill(p.PID, syscall.SIGKILL) // Pdeathsig does this in production; do not race it here
	os.Truncate(filepath.Join(e.dir, "run.log"), 0)

	d = e.startDaemon(t, notify)
	notify.waitFor(t, "READY=1", 10*time.Second)
	d.waitAddon(t, "hello", 15*time.Second, "1.1.0 on probation again", func(a daemon.AddonStatus) bool {
		return a.ActiveVersion == "1.1.0" && a.State == "degraded" && a.PreviousVersion == "1.0.0"
	})
	log, _ := os.ReadFile(filepath.Join(e.dir, "run.log"))
	first := strings.Index(string(log), "version=1.0.0 state=running")
	second := strings.Index(string(log), "version=1.1.0 state=starting")
	if first < 0 || second < 0 || first > second {
		t.Fatalf("after the crash addond did not start the last-known-good 1.0.0 first:\n%s", log)
	}
	b, _ := os.ReadFile(filepath.Join(e.root, "addons/hello/state.json"))
	if strings.Contains(string(b), `"failed"`) {
		t.Fatalf("an interrupted probation marked the version failed:\n%s", b)
	}
}

// newCgroup makes a cgroup (in the unified hierarchy where there is one)
// and returns its directory.
func newCgroup(t *testing.T) string {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/pids"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		dir := filepath.Join(root, fmt.Sprintf("addond-test-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() {
			for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		})
		return dir
	}
	t.Fatal("no cgroup hierarchy to create a test cgroup in")
	return ""
}

// TestStatusAuthorization: add-ons run with addond's uid, so changes are
// allowed to root and to processes in addond's own cgroup only; reads to
// anyone who can open the socket.
func TestStatusAuthorization(t *testing.T) {
	vmtest.RequireRoot(t, "to run as another user in another cgroup")
	e := newEnv(t, "file")
	sockDir, _ := os.MkdirTemp("", "addond-sock-")
	os.Chmod(sockDir, 0o755)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.extra = map[string]any{"status_socket": filepath.Join(sockDir, "addond.sock")}
	e.startReady(t)
	sock := filepath.Join(sockDir, "addond.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("status socket mode %v, %v; want 0660", fi.Mode().Perm(), err)
	}
	os.Chmod(sock, 0o666) // let "nobody" connect: what is checked here is the cgroup

	asNobody := func(cgroup string, args ...string) (string, error) {
		script := `exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`
		if cgroup != "" {
			script = `echo $$ > "` + filepath.Join(cgroup, "cgroup.procs") + `" && ` + script
		}
		cmd := exec.Command("sh", append([]string{"-c", script, "sh", filepath.Join(bin, "addonctl")}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// addond's cgroup is not enough: the uid must be addond's too.
	if out, err := asNobody("", "reconcile", "--socket", sock); err == nil || !strings.Contains(out, "neither root nor in addond's cgroup") {
		t.Fatalf("reconcile from addond's own cgroup as another uid: %v\n%s; want a refusal", err, out)
	}
	other := newCgroup(t)
	if out, err := asNobody(other, "reconcile", "--socket", sock); err == nil || !strings.Contains(out, "neither root nor in addond's cgroup") {
		t.Fatalf("reconcile from another cgroup: %v\n%s; want a refusal", err, out)
	}
	if out, err := asNobody(other, "status", "--socket", sock); err != nil {
		t.Fatalf("status from another cgroup: %v\n%s; reads are allowed", err, out)
	}
	// A helper run is a change: refused from another cgroup (and from a
	// process that only shares addond's uid), before anything is run.
	if out, err := asNobody(other, "run-helper", "--socket", sock, "probe", "--", "x"); err == nil || !strings.Contains(out, "neither root, nor addond, nor one of its add-on units") {
		t.Fatalf("run-helper from another cgroup: %v\n%s; want a refusal", err, out)
	}
	// From addond itself (root here: its uid) it is authorized, and then
	// reported as unavailable (manager "none": no helpers here).
	if out, err := exec.Command(filepath.Join(bin, "addonctl"), "run-helper", "--socket", sock, "probe").CombinedOutput(); err == nil || !strings.Contains(string(out), "not available on this host") {
		t.Fatalf("run-helper with manager none: %v\n%s", err, out)
	}
}

// TestKeptAliveConnectionAfterPIDReuse: a connection is judged once, when
// it is accepted. Here its peer — nobody, in another cgroup: it may read —
// hands the connection to a child and exits, and its pid is taken by a
// root process in addond's own cgroup. A change asked for on the
// connection now is still the reader's, and refused (judged by the pid at
// request time, it was the root process's and allowed).
func TestKeptAliveConnectionAfterPIDReuse(t *testing.T) {
	vmtest.RequireRoot(t, "to run as another user in another cgroup, and reuse a pid")
	e := newEnv(t, "file")
	sockDir, _ := os.MkdirTemp("", "addond-sock-")
	os.Chmod(sockDir, 0o755)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "addond.sock")
	e.extra = map[string]any{"status_socket": sock}
	e.startReady(t)
	os.Chmod(sock, 0o666)
	helper := filepath.Join(bin, "peer-helper")
	copyFile(t, os.Args[0], helper, 0o755)

	cg := newCgroup(t)
	script := `echo $$ > "` + filepath.Join(cg, "cgroup.procs") + `" && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`
	a := exec.Command("sh", "-c", script, "sh", helper)
	a.Env = append(os.Environ(), "ADDOND_TEST_HOLD_CONN="+sock)
	// Pipes of the test's own: Wait closes those of StdinPipe and
	// StdoutPipe, and the peer's child goes on using them.
	inR, in, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer in.Close()
	defer outR.Close()
	a.Stdin, a.Stdout, a.Stderr = inR, outW, os.Stderr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	out := bufio.NewReader(outR)
	line := func(what string) string {
		t.Helper()
		done := make(chan string, 1)
		go func() { l, _ := out.ReadString('\n'); done <- strings.TrimSpace(l) }()
		select {
		case l := <-done:
			return l
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s from the peer within 20s", what)
			return ""
		}
	}
	io.WriteString(in, "go\n")
	if got := line("status answer"); got != "A: HTTP/1.1 200 OK" {
		t.Fatalf("the reader's GET /v1/status: %q", got)
	}
	pid := a.Process.Pid
	a.Wait() // the peer is gone; its child holds the connection
	spawnWithPID(t, pid)
	io.WriteString(in, "go\n")
	if got := line("reconcile answer"); got != "B: HTTP/1.1 403 Forbidden" {
		t.Fatalf("a change on the reader's connection after its pid went to a root process in addond's cgroup: %q, want 403", got)
	}
}

// holdConn and useConn are TestKeptAliveConnectionAfterPIDReuse's peer
// (the test binary, run with ADDOND_TEST_HOLD_CONN or _USE_CONN): the
// first connects, reads the status, hands the connection to the second
// and exits; the second, told to, asks for a reconcile on it.
func holdConn(sock string) {
	bufio.NewReader(os.Stdin).ReadString('\n')
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("A:", err)
		os.Exit(1)
	}
	fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\nHost: addond\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		fmt.Println("A:", err)
		os.Exit(1)
	}
	io.Copy(io.Discard, resp.Body)
	fmt.Println("A:", resp.Proto, resp.Status)
	f, _ := c.(*net.UnixConn).File()
	b := exec.Command(os.Args[0])
	b.Env = append(os.Environ(), "ADDOND_TEST_USE_CONN=1")
	b.ExtraFiles = []*os.File{f}
	b.Stdin, b.Stdout, b.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := b.Start(); err != nil {
		fmt.Println("A:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func useConn() {
	bufio.NewReader(os.Stdin).ReadString('\n')
	c, err := net.FileConn(os.NewFile(3, "conn"))
	if err != nil {
		fmt.Println("B:", err)
		os.Exit(1)
	}
	fmt.Fprint(c, "POST /v1/reconcile HTTP/1.1\r\nHost: addond\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		fmt.Println("B:", err)
		os.Exit(1)
	}
	fmt.Println("B:", resp.Proto, resp.Status)
	os.Exit(0)
}

// spawnWithPID starts a root `sleep 30` in this process's cgroup (addond's
// too) as pid, through ns_last_pid (other forks may take it: it tries
// again).
func spawnWithPID(t *testing.T, pid int) {
	t.Helper()
	for attempt := 0; attempt < 200; attempt++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("ns_last_pid: %v", err)
		}
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			return
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Fatalf("could not start a process as pid %d", pid)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}

// TestReenableNeedsNoProbation: disabling and re-enabling the
// last-known-good version starts it again without probation, so a slow
// start cannot get a proven version marked failed.
func TestReenableNeedsNoProbation(t *testing.T) {
	e := newEnv(t, "file")
	ov := filepath.Join(e.dir, "addons.local.json")
	e.extra = map[string]any{"local_overrides": ov}
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d, _ := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running", runningHealthy("1.0.0"))
	e.run("addonctl", "override", "set", "hello", "--enabled=false", "--config", e.config)
	d.waitAddon(t, "hello", 15*time.Second, "disabled", func(a daemon.AddonStatus) bool { return a.State == "disabled" })
	logPath := filepath.Join(e.dir, "run.log")
	mark, _ := os.Stat(logPath)
	e.run("addonctl", "override", "clear", "hello", "--config", e.config)
	d.waitAddon(t, "hello", 15*time.Second, "running again", runningHealthy("1.0.0"))
	time.Sleep(300 * time.Millisecond)
	log, _ := os.ReadFile(logPath)
	if tail := string(log[mark.Size():]); strings.Contains(tail, "msg=promoted") {
		t.Fatalf("the re-enabled last-known-good version went through probation again:\n%s", tail)
	}
}
