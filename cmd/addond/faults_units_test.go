package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/vmtest/nspawn"
)

// The systemd tier of the fault-injection suite (`make faults`, issue 7):
// each TestFault<Case> boots one Debian machine and runs addond inside as
// the lingering addond user with systemd.manager "user", so add-ons run as
// transient units of its user manager, and injects one kind of fault:
// addond killed at each staging step or in a rollback, the manager
// re-executed under it, an add-on flooding stdout, an add-on leaving
// children behind. Every case asserts the invariants of
// invariants_test.go and logs what it measured.

const (
	faultStoreDir = "/srv/store"
	faultStore    = "file://" + faultStoreDir
	faultKey      = "/srv/keys/signing.key"
)

// faultBoot boots a machine for the calling TestFault* test with addond,
// addonctl and the example add-ons (plus extra files) in /test/bin, and an
// empty store and a publisher key the addond user owns.
func faultBoot(t *testing.T, extra ...string) {
	t.Helper()
	e := newEnv(t, "file")
	files := []string{"addond", "addonctl", "hello", "ticker"}
	for i, f := range files {
		files[i] = filepath.Join(bin, f)
	}
	nspawn.RunTest(t, nspawn.RunOptions{
		Files:   append(files, extra...),
		Dirs:    map[string]string{filepath.Join(e.dir, "store"): "/srv/store", filepath.Join(e.dir, "keys"): "/srv/keys"},
		Setup:   "chown -R addond:addond /srv/store /srv/keys",
		Timeout: 6 * time.Minute,
	})
}

// faultAgent is one addond, with its own agent id (so its own assignment
// document), runtime root and log, inside a machine.
type faultAgent struct {
	t         *testing.T
	agent     string
	dir       string
	root      string
	sock      string
	config    string
	overrides string
	logf      *os.File
	mgr       *systemd.Manager
}

// newFaultAgent sets up an agent; when the test ends addond is stopped and
// every add-on unit with it, so that the next subtest starts clean.
func newFaultAgent(t *testing.T, agent string, extra map[string]any) *faultAgent {
	t.Helper()
	dir := filepath.Join("/var/lib/addond", agent)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &faultAgent{t: t, agent: agent, dir: dir, root: filepath.Join(dir, "root"), sock: filepath.Join(dir, "addond.sock"),
		config: filepath.Join(dir, "addond.json"), overrides: filepath.Join(dir, "addons.local.json")}
	cfg := map[string]any{
		"agent_id": agent, "runtime_root": f.root, "store": faultStore,
		"assignments":     map[string]string{"store_key": "agents/" + agent + "/assignments.json"},
		"trust":           map[string]any{"public_keys": []string{"/srv/keys/signing.pub"}, "require_signatures": true},
		"status_socket":   f.sock,
		"systemd":         map[string]string{"manager": "user"},
		"local_overrides": f.overrides,
		"poll_interval":   "1s", "probation": "4s", "min_free_bytes": 1 << 20,
	}
	for k, v := range extra {
		cfg[k] = v
	}
	b, _ := json.Marshal(cfg)
	os.WriteFile(f.config, b, 0o644)
	f.logf, _ = os.Create(filepath.Join(dir, "addond.log"))
	f.mgr = systemd.NewManager(systemd.UserTarget(), nil)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(f.logf.Name())
			t.Logf("addond log (%s):\n%s", agent, b)
		}
		// Runs after the daemons' own cleanups (registered later, run
		// earlier): no addond is left to restart what is stopped here.
		out, _ := exec.Command("systemctl", "--user", "stop", "addond-*").CombinedOutput()
		exec.Command("systemctl", "--user", "reset-failed", "addond-*").Run()
		if len(bytes.TrimSpace(out)) > 0 {
			t.Logf("stopping the add-on units: %s", out)
		}
		f.mgr.Close()
	})
	return f
}

// start runs `addond run` with env added (e.g. ADDOND_FAULT=…).
func (f *faultAgent) start(env ...string) *daemonProc {
	f.t.Helper()
	cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", f.config)
	cmd.Env = append(append(os.Environ(), "ADDOND_LOG_LEVEL=debug"), env...)
	cmd.Stdout, cmd.Stderr = f.logf, f.logf
	fmt.Fprintf(f.logf, "=== test: addond run %v\n", env)
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, log: f.logf, socket: f.sock, client: daemon.NewClient(f.sock)}
	f.t.Cleanup(func() { d.stop(f.t) })
	return d
}

// waitKilled waits for d to die of the SIGKILL its fault point sends.
func (f *faultAgent) waitKilled(d *daemonProc, point string, timeout time.Duration) {
	f.t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-done
		f.t.Fatalf("addond did not reach the fault point %s within %v", point, timeout)
	}
	ws := d.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		f.t.Fatalf("addond with ADDOND_FAULT=%s ended with %v, want SIGKILL at the fault point", point, d.cmd.ProcessState)
	}
}

// assign writes this agent's assignment document.
func (f *faultAgent) assign(args ...string) {
	f.t.Helper()
	base := []string{"assign", "--store", faultStore, "--agent", f.agent, "--key", faultKey}
	out, err := exec.Command(filepath.Join(bin, "addonctl"), append(base, args...)...).CombinedOutput()
	if err != nil {
		f.t.Fatalf("addonctl assign %v: %v\n%s", args, err, out)
	}
}

// unit reads an add-on unit's state from the user manager.
func (f *faultAgent) unit(name string) systemd.UnitState {
	f.t.Helper()
	// The test's own connection goes down too when the bus restarts:
	// retry until it is back.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := f.mgr.Conn(ctx)
		var u systemd.UnitState
		if err == nil {
			u, err = systemd.ReadUnit(ctx, conn, name)
		}
		cancel()
		if err == nil {
			return u
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("reading %s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unitPIDs asserts that each add-on's status PID is its unit's MainPID and
// returns them.
func (f *faultAgent) unitPIDs(c *daemon.Client, ids ...string) map[string]int {
	f.t.Helper()
	p := pids(f.t, c, ids...)
	for _, id := range ids {
		if u := f.unit(systemd.ServiceName(id)); !u.Up() || u.MainPID != p[id] {
			f.t.Fatalf("%s: status pid %d, unit %s %s MainPID %d", id, p[id], u.Name, u.ActiveState, u.MainPID)
		}
	}
	return p
}

// sameUnitPIDs is samePIDs plus the units' MainPIDs.
func (f *faultAgent) sameUnitPIDs(c *daemon.Client, before map[string]int) {
	f.t.Helper()
	samePIDs(f.t, c, before)
	for id, pid := range before {
		if u := f.unit(systemd.ServiceName(id)); u.MainPID != pid {
			f.t.Fatalf("%s: unit MainPID %d, was %d", id, u.MainPID, pid)
		}
	}
}

// current asserts checkCurrent for each id against the publisher's
// package.json and returns the versions.
func (f *faultAgent) current(ids ...string) map[string]string {
	f.t.Helper()
	published := func(id, version string) string { return publishedSHA(f.t, faultStoreDir, id, version) }
	out := map[string]string{}
	for _, id := range ids {
		out[id] = checkCurrent(f.t, f.root, id, published)
	}
	return out
}

// settled asks for a reconcile, waits for it to be applied, and asserts
// that no partial file is left.
func (f *faultAgent) settled(d *daemonProc) {
	f.t.Helper()
	if err := d.client.Reconcile(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	checkNoPartials(f.t, f.root)
}

func (f *faultAgent) log() string {
	b, _ := os.ReadFile(f.logf.Name())
	return string(b)
}

// faultPublish publishes the file at path (padded with pad random bytes,
// which neither ELF nor sh reads) as id@version under the base name of
// path.
func faultPublish(t *testing.T, id, version, path string, pad int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if pad > 0 {
		junk := make([]byte, pad)
		rand.Read(junk)
		if !bytes.HasPrefix(data, []byte("\x7fELF")) {
			data = append(data, "\nexit 0\n"...)
		}
		data = append(data, junk...)
	}
	dir, err := os.MkdirTemp("/var/lib/addond", "pub-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(bin, "addonctl"), "publish", "--store", faultStore, "--key", faultKey,
		"--id", id, "--version", version, "linux/amd64="+p).CombinedOutput()
	if err != nil {
		t.Fatalf("addonctl publish %s@%s: %v\n%s", id, version, err, out)
	}
}

// faultScript writes an executable shell script named name.
func faultScript(t *testing.T, name, body string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/var/lib/addond", "script-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, name)
	os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755)
	return p
}

// faultTicks counts the timer's runs so far.
func faultTicks(f *faultAgent, id string) int {
	data, _ := os.ReadFile(filepath.Join(f.root, "addons", id, "data", "ticks"))
	return strings.Count(string(data), " tick\n")
}

// waitTicks waits for the timer to have fired more than n times.
func waitTicks(f *faultAgent, id string, n int, timeout time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for faultTicks(f, id) <= n {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: the timer did not fire within %v (still %d runs)", id, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// faultAssignAll is the sidecar, the service and the timer at versions.
func faultAssignAll(sideV, svcV, tickV string) []string {
	return []string{"--addon", "side@" + sideV,
		"--addon", "svc@" + svcV, "--supervision", "svc=systemd_service",
		"--addon", "tick@" + tickV, "--supervision", "tick=systemd_timer", "--schedule", "tick=*:*:0/2", "--arg", "tick=ticks"}
}

// TestFaultStaging: addond is killed (SIGKILL) at each staging step of a
// new version of one add-on while a sidecar, a service and a timer run as
// units. The units outlive addond; restarted without the fault, addond
// adopts or reattaches the unchanged ones (same PIDs) and the updated one
// converges to the new version.
func TestFaultStaging(t *testing.T) {
	if !nspawn.InMachine() {
		faultBoot(t)
		return
	}
	hello, ticker := filepath.Join(bin, "hello"), filepath.Join(bin, "ticker")
	for _, id := range []string{"side", "svc"} {
		faultPublish(t, id, "1.0.0", hello, 0)
		faultPublish(t, id, "2.0.0", hello, 16<<20) // big enough to be caught mid-download
	}
	faultPublish(t, "tick", "1.0.0", ticker, 0)
	faultPublish(t, "tick", "2.0.0", ticker, 16<<20)

	for _, c := range []struct{ point, update string }{
		{"download-partial", "svc"},
		{"after-rename", "side"},
		{"before-swap", "tick"},
		{"after-swap", "side"},
		{"after-swap", "svc"},
	} {
		t.Run(c.point+"/"+c.update, func(t *testing.T) {
			f := newFaultAgent(t, "st-"+c.point+"-"+c.update, nil)
			f.assign(faultAssignAll("1.0.0", "1.0.0", "1.0.0")...)
			d := f.start()
			for _, id := range []string{"side", "svc", "tick"} {
				d.waitAddon(t, id, 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
			}
			// addond restarted with the fault armed: it adopts the units
			// (the initial downloads must not hit the fault point).
			d.stop(t)
			d = f.start("ADDOND_FAULT=" + c.point)
			for _, id := range []string{"side", "svc", "tick"} {
				d.waitAddon(t, id, 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
			}
			waitTicks(f, "tick", 0, 10*time.Second)
			var unchanged []string
			for _, id := range []string{"side", "svc"} {
				if id != c.update {
					unchanged = append(unchanged, id)
				}
			}
			before := f.unitPIDs(d.client, "side", "svc")
			timerInv := f.unit(systemd.TimerName("tick")).InvocationID

			v := map[string]string{"side": "1.0.0", "svc": "1.0.0", "tick": "1.0.0"}
			v[c.update] = "2.0.0"
			f.assign(faultAssignAll(v["side"], v["svc"], v["tick"])...)
			start := time.Now()
			d.client.Reconcile(context.Background())
			f.waitKilled(d, c.point, 60*time.Second)
			t.Logf("%s: addond killed at %s %v after the reconcile", c.point, c.point, time.Since(start).Round(time.Millisecond))

			// While addond is dead: the units run on; current is complete.
			for _, id := range []string{"side", "svc"} {
				if u := f.unit(systemd.ServiceName(id)); !u.Up() || u.MainPID != before[id] || !alive(before[id]) {
					t.Fatalf("%s: after addond's SIGKILL the unit is %s with MainPID %d, was %d", id, u.ActiveState, u.MainPID, before[id])
				}
			}
			cur := f.current("side", "svc", "tick")
			t.Logf("%s: after the kill current: %v", c.point, cur)
			if c.point == "download-partial" {
				if fi, err := os.Stat(filepath.Join(f.root, "tmp", c.update+"@2.0.0.part")); err != nil || fi.Size() == 0 {
					t.Fatalf("no partial download of %s left to resume: %v", c.update, err)
				}
			}

			restart := time.Now()
			d = f.start()
			up := d.waitAddon(t, c.update, 60*time.Second, "running 2.0.0", runningHealthy("2.0.0"))
			t.Logf("%s: %s running healthy on 2.0.0 %v after the restart (pid %d)", c.point, c.update, time.Since(restart).Round(time.Millisecond), up.PID)
			for _, id := range []string{"side", "svc", "tick"} {
				d.waitAddon(t, id, 30*time.Second, "running "+v[id], runningHealthy(v[id]))
			}
			// Promoted: the probation is over.
			deadline := time.Now().Add(20 * time.Second)
			for {
				b, _ := os.ReadFile(filepath.Join(f.root, "addons", c.update, "state.json"))
				if !strings.Contains(string(b), `"probation"`) && strings.Contains(f.log(), `msg=promoted addon_id=`+c.update) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s 2.0.0 not promoted within 20s:\n%s", c.update, b)
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("%s: %s 2.0.0 promoted %v after the restart", c.point, c.update, time.Since(restart).Round(time.Millisecond))

			kept := map[string]int{}
			for _, id := range unchanged {
				kept[id] = before[id]
			}
			f.sameUnitPIDs(d.client, kept)
			if c.update != "tick" {
				if inv := f.unit(systemd.TimerName("tick")).InvocationID; inv != timerInv {
					t.Fatalf("the unchanged timer was restarted (invocation %s → %s)", timerInv, inv)
				}
			}
			n := faultTicks(f, "tick")
			waitTicks(f, "tick", n, 10*time.Second)
			got := f.current("side", "svc", "tick")
			for id, want := range v {
				if got[id] != want {
					t.Fatalf("%s: current -> %s, want %s", id, got[id], want)
				}
			}
			f.settled(d)
			t.Logf("%s: unchanged add-ons kept their PIDs (unit MainPID = status pid) %v", c.point, kept)
			// What names the fault: the fault kills addond, so only what
			// the next addond finds says so.
			if c.point == "download-partial" && !strings.Contains(f.log(), "resuming download") {
				t.Fatal("the restarted addond did not resume the partial download")
			}
			if st, _ := d.client.Status(context.Background()); st != nil {
				for _, a := range st.Addons {
					t.Logf("%s: status %s %s/%s active %s last_error %q", c.point, a.AddonID, a.State, a.Health, a.ActiveVersion, a.LastError)
				}
			}
		})
	}
}

// TestFaultRollback: addond is killed (SIGKILL) in the middle of a
// rollback — after the failed version is recorded (rollback-marked) and
// after current is swapped back (rollback-activated) — of a service whose
// new version crash-loops on probation. Restarted without the fault, it
// ends rolled_back on the previous version, running and healthy, current
// on that version, the failed version not retried; a sidecar beside it
// keeps its PID throughout.
func TestFaultRollback(t *testing.T) {
	if !nspawn.InMachine() {
		faultBoot(t)
		return
	}
	hello := filepath.Join(bin, "hello")
	faultPublish(t, "side", "1.0.0", hello, 0)
	faultPublish(t, "svc", "1.0.0", hello, 0)
	crash := faultScript(t, "svc", "echo 'svc 1.1.0: crashing' >&2\nexit 3\n")
	faultPublish(t, "svc", "1.1.0", crash, 0)
	all := func(svc string) []string {
		return []string{"--addon", "side@1.0.0", "--addon", "svc@" + svc, "--supervision", "svc=systemd_service"}
	}

	// rollback-marked and rollback-activated are in the rollback itself;
	// after-swap kills addond as 1.1.0 becomes current, before its
	// probation is recorded: the restarted addond must not run the
	// unproven 1.1.0 as if it were good — it goes back to 1.0.0, tries
	// 1.1.0 again on probation and rolls it back.
	for _, point := range []string{"rollback-marked", "rollback-activated", "after-swap"} {
		t.Run(point, func(t *testing.T) {
			f := newFaultAgent(t, "rb-"+point, nil)
			f.assign(all("1.0.0")...)
			// The rollback's fault points are armed from the start;
			// after-swap once 1.0.0 is in place.
			var d *daemonProc
			if point == "after-swap" {
				d = f.start()
			} else {
				d = f.start("ADDOND_FAULT=" + point)
			}
			d.waitAddon(t, "side", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
			d.waitAddon(t, "svc", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
			// Promoted (last-known-good) before the new version comes.
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(f.log(), "msg=promoted addon_id=svc") {
				if time.Now().After(deadline) {
					t.Fatal("svc 1.0.0 not promoted")
				}
				time.Sleep(200 * time.Millisecond)
			}
			before := f.unitPIDs(d.client, "side")
			if point == "after-swap" {
				d.stop(t)
				d = f.start("ADDOND_FAULT=" + point)
				d.waitAddon(t, "svc", 30*time.Second, "running 1.0.0 again", runningHealthy("1.0.0"))
			}

			f.assign(all("1.1.0")...)
			start := time.Now()
			d.client.Reconcile(context.Background())
			f.waitKilled(d, point, 60*time.Second)
			t.Logf("%s: addond killed in the rollback %v after 1.1.0 was assigned", point, time.Since(start).Round(time.Millisecond))
			if u := f.unit(systemd.ServiceName("side")); u.MainPID != before["side"] || !alive(before["side"]) {
				t.Fatalf("the sidecar did not outlive addond: %+v", u)
			}
			stateJSON, _ := os.ReadFile(filepath.Join(f.root, "addons", "svc", "state.json"))
			link, _ := os.Readlink(filepath.Join(f.root, "addons", "svc", "current"))
			t.Logf("%s: after the kill current -> %s, state.json:\n%s", point, link, stateJSON)
			f.current("side", "svc")

			restart := time.Now()
			d = f.start()
			rb := d.waitAddon(t, "svc", 30*time.Second, "rolled back to 1.0.0, healthy", func(a daemon.AddonStatus) bool {
				return a.State == "rolled_back" && a.ActiveVersion == "1.0.0" && a.Health == "healthy" && a.Version == "1.1.0"
			})
			t.Logf("%s: svc rolled_back on 1.0.0, healthy, %v after the restart (pid %d): last_error %q", point, time.Since(restart).Round(time.Millisecond), rb.PID, rb.LastError)
			if want := map[string]string{"rollback-marked": "a rollback", "after-swap": "an activation"}[point]; want != "" &&
				!strings.Contains(f.log(), want+" was interrupted by a restart; back on last-known-good") {
				t.Fatalf("the restarted addond did not say it went back from %s", want)
			}
			// The circuit (3 restarts) or the probation's deadline, whichever
			// comes first on a loaded machine: either way the exit is named.
			if !strings.Contains(rb.LastError, "exited with status 3") ||
				!strings.Contains(rb.LastError, "crash-looped on probation") && !strings.Contains(rb.LastError, "not healthy within the") {
				t.Fatalf("status does not name the failure that caused the rollback: last_error %q", rb.LastError)
			}
			if u := f.unit(systemd.ServiceName("svc")); !u.Up() || u.MainPID != rb.PID || !strings.Contains(u.Description, "svc 1.0.0") {
				t.Fatalf("after the restart addond-svc.service is %+v, status pid %d", u, rb.PID)
			}
			if got := f.current("side", "svc"); got["svc"] != "1.0.0" {
				t.Fatalf("current -> %s after the rollback, want 1.0.0", got["svc"])
			}
			f.sameUnitPIDs(d.client, before)

			// Not retried: a few reconciles later the same process runs 1.0.0.
			for i := 0; i < 3; i++ {
				d.client.Reconcile(context.Background())
				time.Sleep(700 * time.Millisecond)
			}
			if a := d.waitAddon(t, "svc", time.Second, "still rolled back", func(daemon.AddonStatus) bool { return true }); a.State != "rolled_back" || a.PID != rb.PID {
				t.Fatalf("1.1.0 was retried: %+v", a)
			}
			if point != "after-swap" && strings.Count(f.log()[strings.LastIndex(f.log(), "=== test:"):], "version=1.1.0 state=starting") > 0 {
				t.Fatal("the restarted addond started 1.1.0 again")
			}
			var st struct {
				Failed    map[string]struct{ Reason string } `json:"failed"`
				Probation any                                `json:"probation"`
			}
			b, _ := os.ReadFile(filepath.Join(f.root, "addons", "svc", "state.json"))
			json.Unmarshal(b, &st)
			if st.Failed["1.1.0"].Reason == "" || st.Probation != nil {
				t.Fatalf("state after the rollback: %s", b)
			}
			f.settled(d)
			f.sameUnitPIDs(d.client, before)
		})
	}
}

// TestFaultReexec: the user manager re-executes (`systemctl --user
// daemon-reexec`, as on a systemd upgrade) and the user's bus restarts
// under a running addond: the sidecar, service and timer units run on with
// the same PIDs, addond reconnects, status is healthy again, and an add-on
// assigned afterwards is started (the new connection works).
func TestFaultReexec(t *testing.T) {
	if !nspawn.InMachine() {
		faultBoot(t)
		return
	}
	hello, ticker := filepath.Join(bin, "hello"), filepath.Join(bin, "ticker")
	for _, id := range []string{"side", "svc", "extra1", "extra2"} {
		faultPublish(t, id, "1.0.0", hello, 0)
	}
	faultPublish(t, "tick", "1.0.0", ticker, 0)
	f := newFaultAgent(t, "reexec", nil)
	base := faultAssignAll("1.0.0", "1.0.0", "1.0.0")
	f.assign(base...)
	d := f.start()
	for _, id := range []string{"side", "svc", "tick"} {
		d.waitAddon(t, id, 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	}
	before := f.unitPIDs(d.client, "side", "svc")
	timerInv := f.unit(systemd.TimerName("tick")).InvocationID

	disrupt := func(name string, cmd []string, extra string, assigned []string) []string {
		t.Helper()
		mark := len(f.log())
		start := time.Now()
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
		t.Logf("%s: %s returned after %v", name, strings.Join(cmd, " "), time.Since(start).Round(time.Millisecond))
		// Status answers and is healthy throughout; PIDs unchanged.
		for _, id := range []string{"side", "svc", "tick"} {
			d.waitAddon(t, id, 30*time.Second, "running healthy after "+name, runningHealthy("1.0.0"))
		}
		f.sameUnitPIDs(d.client, before)
		if inv := f.unit(systemd.TimerName("tick")).InvocationID; inv != timerInv {
			t.Fatalf("%s restarted the timer (invocation %s → %s)", name, timerInv, inv)
		}
		// A change assigned afterwards is applied: a new unit.
		assigned = append(assigned, "--addon", extra+"@1.0.0", "--supervision", extra+"=systemd_service")
		f.assign(assigned...)
		d.client.Reconcile(context.Background())
		x := d.waitAddon(t, extra, 30*time.Second, "started after "+name, runningHealthy("1.0.0"))
		if u := f.unit(systemd.ServiceName(extra)); !u.Up() || u.MainPID != x.PID {
			t.Fatalf("%s: %s runs as pid %d, its unit is %+v", name, extra, x.PID, u)
		}
		t.Logf("%s: add-ons healthy with the same PIDs %v; %s assigned afterwards running (pid %d) %v after the disruption",
			name, before, extra, x.PID, time.Since(start).Round(time.Millisecond))
		n := faultTicks(f, "tick")
		waitTicks(f, "tick", n, 10*time.Second)
		var lines []string
		for _, l := range strings.Split(f.log()[mark:], "\n") {
			if strings.Contains(l, "systemd manager") || strings.Contains(l, "reconnect") || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "plugin process exited") {
				lines = append(lines, l)
			}
		}
		t.Logf("%s: addond's log about it:\n%s", name, strings.Join(lines, "\n"))
		return assigned
	}

	assigned := disrupt("daemon-reexec", []string{"systemctl", "--user", "daemon-reexec"}, "extra1", base)

	// The user's bus (what addond dials first) restarts: the connection
	// itself dies, and addond must say so and dial again.
	busUnit := ""
	for _, u := range []string{"dbus-broker.service", "dbus.service"} {
		if out, _ := exec.Command("systemctl", "--user", "show", "-P", "ActiveState", u).Output(); strings.TrimSpace(string(out)) == "active" {
			busUnit = u
			break
		}
	}
	if busUnit == "" {
		t.Log("no user bus unit active in the machine: bus restart not exercised")
	} else {
		mark := len(f.log())
		disrupt("bus restart", []string{"systemctl", "--user", "restart", busUnit}, "extra2", assigned)
		tail := f.log()[mark:]
		if !strings.Contains(tail, "lost the systemd manager's bus") || !strings.Contains(tail, "connected to the systemd manager") {
			t.Fatalf("addond did not notice the bus restart and reconnect (log since):\n%s", tail)
		}
	}
	f.current("side", "svc", "tick", "extra1")
	f.settled(d)
	f.sameUnitPIDs(d.client, before)
	st, err := d.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.DocumentError != "" {
		t.Fatalf("document_error after the disruptions: %s", st.DocumentError)
	}
}

// faultFloodSource is an add-on that, once configured, writes to stdout as
// fast as it can: as a sidecar through go-plugin's forwarding of the
// plugin's stdout to addond, as a service into the journal.
const faultFloodSource = `package main

import (
	"context"
	"os"
	"sync"

	"github.com/addond/addond/sdk"
)

type flood struct{ once sync.Once }

func (*flood) Info(context.Context) (sdk.Info, error) { return sdk.Info{ID: "flood", Version: "1.0.0"}, nil }

func (f *flood) Configure(context.Context, []byte) error {
	f.once.Do(func() {
		go func() {
			line := []byte("flood flood flood flood flood flood flood flood flood flood flood flood flood flood\n")
			buf := make([]byte, 0, 64<<10)
			for len(buf)+len(line) <= cap(buf) {
				buf = append(buf, line...)
			}
			for {
				os.Stdout.Write(buf)
			}
		}()
	})
	return nil
}

func (*flood) Health(context.Context) (sdk.Health, error) { return sdk.Health{Status: sdk.Healthy}, nil }

func main() { sdk.Serve(&flood{}) }
`

// buildFlood builds faultFloodSource against this module (a workspace of
// a throw-away module and this one: no network).
func buildFlood(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	mod, _ := filepath.Abs("../..")
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(faultFloodSource), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module flood\n\ngo 1.26.0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.work"), []byte("go 1.26.0\n\nuse (\n\t.\n\t"+mod+"\n)\n"), 0o644)
	out := filepath.Join(t.TempDir(), "flood")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(dir, "go.work"), "GOFLAGS=-mod=readonly")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the flooding add-on: %v\n%s", err, b)
	}
	return out
}

// procStatus reads a field of /proc/<pid>/status in kB.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// procCPU is the CPU time (user+system) pid used so far.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// TestFaultFlood: add-ons that write to stdout as fast as they can, one as
// a service unit (into the journal) and one as a sidecar unit (go-plugin
// forwards a plugin's stdout to the host): addond's resident memory stays
// bounded, its status API answers promptly, a quiet add-on beside them
// keeps its PID, and the flooders keep running.
func TestFaultFlood(t *testing.T) {
	if !nspawn.InMachine() {
		faultBoot(t, buildFlood(t))
		return
	}
	faultPublish(t, "calm", "1.0.0", filepath.Join(bin, "hello"), 0)
	faultPublish(t, "calmsvc", "1.0.0", filepath.Join(bin, "hello"), 0)
	faultPublish(t, "floodsvc", "1.0.0", filepath.Join(bin, "flood"), 0)
	faultPublish(t, "floodside", "1.0.0", filepath.Join(bin, "flood"), 0)
	f := newFaultAgent(t, "flood", nil)
	calm := []string{"--addon", "calm@1.0.0", "--addon", "calmsvc@1.0.0", "--supervision", "calmsvc=systemd_service"}
	f.assign(calm...)
	d := f.start()
	d.waitAddon(t, "calm", 30*time.Second, "running", runningHealthy("1.0.0"))
	d.waitAddon(t, "calmsvc", 30*time.Second, "running", runningHealthy("1.0.0"))
	before := f.unitPIDs(d.client, "calm", "calmsvc")
	pid := d.cmd.Process.Pid
	time.Sleep(2 * time.Second) // past the start-up allocations
	rss0 := procStatusKB(t, pid, "VmRSS")

	f.assign(append(calm, "--addon", "floodsvc@1.0.0", "--supervision", "floodsvc=systemd_service", "--addon", "floodside@1.0.0")...)
	d.client.Reconcile(context.Background())
	fs := d.waitAddon(t, "floodsvc", 30*time.Second, "running", runningHealthy("1.0.0"))
	fsd := d.waitAddon(t, "floodside", 30*time.Second, "running", runningHealthy("1.0.0"))
	cpu0 := procCPU(t, pid)
	start := time.Now()
	var worst time.Duration
	maxRSS := rss0
	for time.Since(start) < 10*time.Second {
		q := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := d.client.Status(ctx)
		cancel()
		if err != nil {
			t.Fatalf("status during the flood: %v", err)
		}
		worst = max(worst, time.Since(q))
		maxRSS = max(maxRSS, procStatusKB(t, pid, "VmRSS"))
		time.Sleep(200 * time.Millisecond)
	}
	flooded := time.Since(start)
	rss1 := procStatusKB(t, pid, "VmRSS")
	cpu := procCPU(t, pid) - cpu0
	t.Logf("flood: addond VmRSS %d kB before, %d kB after %v of flood (max %d kB, +%d kB); status answered within %v at worst; addond used %v CPU (%.0f%% of a core)",
		rss0, rss1, flooded.Round(time.Millisecond), maxRSS, maxRSS-rss0, worst.Round(time.Millisecond), cpu, 100*cpu.Seconds()/flooded.Seconds())
	if maxRSS-rss0 > 50<<10 {
		t.Errorf("addond's RSS grew by %d kB during the flood (bound 50 MiB)", maxRSS-rss0)
	}
	if worst > time.Second {
		t.Errorf("the status API took %v to answer during the flood", worst)
	}
	f.sameUnitPIDs(d.client, before)
	// The flooders: still running as the same processes, or reported.
	for _, a := range []daemon.AddonStatus{fs, fsd} {
		now := d.waitAddon(t, a.AddonID, time.Second, "reported", func(daemon.AddonStatus) bool { return true })
		u := f.unit(systemd.ServiceName(a.AddonID))
		t.Logf("flood: %s: %s/%s pid %d → %d (alive %v), restarts %d, unit %s MainPID %d, last_error %q",
			a.AddonID, now.State, now.Health, a.PID, now.PID, alive(a.PID), now.Restarts, u.ActiveState, u.MainPID, now.LastError)
		if now.PID != a.PID && now.LastError == "" {
			t.Errorf("%s was restarted without a reason in status", a.AddonID)
		}
	}
	hs, _ := os.Stat(filepath.Join(f.root, "plugins", "floodside.handshake"))
	if hs != nil {
		t.Logf("flood: the sidecar's handshake file (its raw stdout) is %d bytes", hs.Size())
	}
	f.current("calm", "calmsvc", "floodsvc", "floodside")
	// Stopping the flooders works and brings addond back down.
	f.assign(calm...)
	d.client.Reconcile(context.Background())
	for _, id := range []string{"floodsvc", "floodside"} {
		deadline := time.Now().Add(20 * time.Second)
		for f.unit(systemd.ServiceName(id)).Up() {
			if time.Now().After(deadline) {
				t.Fatalf("%s still runs after it was unassigned", id)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	time.Sleep(2 * time.Second)
	t.Logf("flood: addond VmRSS %d kB once the flooders were removed", procStatusKB(t, pid, "VmRSS"))
	f.settled(d)
	f.sameUnitPIDs(d.client, before)
}

// faultForker is an add-on that leaves children behind in every way a
// process can — a plain background child, one in its own session, a
// double-forked (daemonized) one and a double-forked one in its own
// session — all marked by `sleep <marker>` in their argv, and then runs
// hello (as a sidecar or standalone as a service).
func faultForker(marker int) string {
	return fmt.Sprintf(`M=%d
sleep $M </dev/null >/dev/null 2>&1 &
setsid sleep $M </dev/null >/dev/null 2>&1 &
sh -c 'sleep '$M' </dev/null >/dev/null 2>&1 & exit 0'
setsid sh -c 'setsid sleep '$M' </dev/null >/dev/null 2>&1 & exit 0'
exec /test/bin/hello
`, marker)
}

// markedChildren lists the processes whose argv is `sleep <marker>`.
func markedChildren(marker int) []int {
	want := fmt.Sprintf("sleep\x00%d\x00", marker)
	var found []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); string(b) == want {
			found = append(found, pid)
		}
	}
	return found
}

// waitChildren waits until exactly n processes carry marker, and returns
// how long that took.
func waitChildren(t *testing.T, marker, n int, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got := markedChildren(marker)
		if len(got) == n {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: %d processes `sleep %d` (%v), want %d", what, len(got), marker, got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFaultOrphanChildren: add-ons (a service and a sidecar) that fork
// children, in sessions of their own and double-forked: when the add-on
// is disabled by an override, upgraded, and removed from the assignment,
// every child is gone (the unit's control group is killed as a whole).
func TestFaultOrphanChildren(t *testing.T) {
	if !nspawn.InMachine() {
		faultBoot(t)
		return
	}
	const children = 4
	faultPublish(t, "calm", "1.0.0", filepath.Join(bin, "hello"), 0)
	for _, c := range []struct {
		id              string
		v1, v2          int // markers
		supervisionArgs []string
	}{
		{"forksvc", 1007, 1017, []string{"--supervision", "forksvc=systemd_service"}},
		{"forkside", 1008, 1018, nil},
	} {
		faultPublish(t, c.id, "1.0.0", faultScript(t, c.id, faultForker(c.v1)), 0)
		faultPublish(t, c.id, "2.0.0", faultScript(t, c.id, faultForker(c.v2)), 0)
		t.Run(c.id, func(t *testing.T) {
			f := newFaultAgent(t, "fork-"+c.id, nil)
			assign := func(version string) {
				f.assign(append([]string{"--addon", "calm@1.0.0", "--addon", c.id + "@" + version}, c.supervisionArgs...)...)
			}
			assign("1.0.0")
			d := f.start()
			d.waitAddon(t, "calm", 30*time.Second, "running", runningHealthy("1.0.0"))
			d.waitAddon(t, c.id, 30*time.Second, "running", runningHealthy("1.0.0"))
			before := f.unitPIDs(d.client, "calm")
			waitChildren(t, c.v1, children, 10*time.Second, "started")

			// Disabled by a local override.
			os.WriteFile(f.overrides, []byte(`{"addons":[{"addon_id":"`+c.id+`","enabled":false}]}`), 0o644)
			d.client.Reconcile(context.Background())
			d.waitAddon(t, c.id, 20*time.Second, "disabled", func(a daemon.AddonStatus) bool { return a.State == "disabled" })
			took := waitChildren(t, c.v1, 0, 10*time.Second, "disabled")
			t.Logf("%s: disabled: all %d children gone %v after the state said disabled", c.id, children, took.Round(time.Millisecond))

			// Enabled again, then upgraded: the old version's children go.
			os.WriteFile(f.overrides, []byte(`{"addons":[]}`), 0o644)
			d.client.Reconcile(context.Background())
			d.waitAddon(t, c.id, 30*time.Second, "running again", runningHealthy("1.0.0"))
			waitChildren(t, c.v1, children, 10*time.Second, "re-enabled")
			assign("2.0.0")
			d.client.Reconcile(context.Background())
			d.waitAddon(t, c.id, 30*time.Second, "running 2.0.0", runningHealthy("2.0.0"))
			took = waitChildren(t, c.v1, 0, 10*time.Second, "upgraded")
			waitChildren(t, c.v2, children, 10*time.Second, "the new version started")
			t.Logf("%s: upgraded: the old version's children gone %v after 2.0.0 ran", c.id, took.Round(time.Millisecond))

			// Restarted by addond after its main process died (a sidecar
			// is restarted by addond, a service by its unit).
			up := d.waitAddon(t, c.id, time.Second, "running", runningHealthy("2.0.0"))
			syscall.Kill(up.PID, syscall.SIGKILL)
			d.waitAddon(t, c.id, 30*time.Second, "running again after its main process was killed", func(a daemon.AddonStatus) bool {
				return a.PID != up.PID && a.PID != 0 && runningHealthy("2.0.0")(a)
			})
			waitChildren(t, c.v2, children, 10*time.Second, "restarted after a crash: only the new run's children")

			// Removed from the assignment.
			f.assign("--addon", "calm@1.0.0")
			d.client.Reconcile(context.Background())
			deadline := time.Now().Add(20 * time.Second)
			for f.unit(systemd.ServiceName(c.id)).Up() {
				if time.Now().After(deadline) {
					t.Fatalf("addond-%s.service still runs after its add-on was removed", c.id)
				}
				time.Sleep(100 * time.Millisecond)
			}
			took = waitChildren(t, c.v2, 0, 10*time.Second, "removed")
			t.Logf("%s: removed: all children gone %v after the unit stopped", c.id, took.Round(time.Millisecond))
			f.current("calm")
			f.settled(d)
			f.sameUnitPIDs(d.client, before)
			st, _ := d.client.Status(context.Background())
			for _, a := range st.Addons {
				if a.AddonID == c.id {
					t.Fatalf("%s still in status after its removal: %+v", c.id, a)
				}
			}
		})
	}
}
