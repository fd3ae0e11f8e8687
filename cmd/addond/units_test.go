package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/vmtest/nspawn"
)

// TestRunUnitsInMachine drives `addond run` in a booted Debian, as the
// lingering addond user with systemd.manager "user": a go-plugin sidecar,
// a service, a timer and an ephemeral helper all run as transient units;
// `addonctl run-helper` returns a helper's output and exit status;
// restarting addond restarts no add-on (the service is adopted, the
// sidecar reattached: same PIDs); a unit whose add-on was removed while
// addond was down is stopped when it comes back.
func TestRunUnitsInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		e := newEnv(t, "file")
		e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
		e.publishFile("svc", "1.0.0", filepath.Join(bin, "hello"))
		e.publishFile("tick", "1.0.0", filepath.Join(bin, "ticker"))
		e.publishFile("probe", "1.0.0", filepath.Join(bin, "probe"))
		e.publishFile("caller", "1.0.0", filepath.Join(bin, "hello"))
		crash := filepath.Join(t.TempDir(), "svc")
		os.WriteFile(crash, []byte("#!/bin/sh\necho 'svc 1.1.0: crashing' >&2\nexit 3\n"), 0o755)
		e.publishFile("svc", "1.1.0", crash)
		// The store keeps its layout; inside it lives at /srv/store.
		nspawn.RunTest(t, nspawn.RunOptions{
			Files: []string{filepath.Join(bin, "addond"), filepath.Join(bin, "addonctl")},
			Dirs:  map[string]string{filepath.Join(e.dir, "store"): "/srv/store", filepath.Join(e.dir, "keys"): "/srv/keys"},
			Setup: "chown -R addond:addond /srv/store /srv/keys",
		})
		return
	}

	const store = "file:///srv/store"
	key := "/srv/keys/signing.key"
	assign := func(args ...string) {
		t.Helper()
		base := []string{"assign", "--store", store, "--agent", "edge-01", "--key", key}
		out, err := exec.Command(filepath.Join(bin, "addonctl"), append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("addonctl assign: %v\n%s", err, out)
		}
	}
	callerConfig := "/var/lib/addond/caller.json"
	os.WriteFile(callerConfig, []byte(`{"run_helper": "probe", "run_helper_args": ["from", "hello"]}`), 0o644)
	all := []string{"--addon", "hello@1.0.0",
		"--addon", "caller@1.0.0", "--config", "caller=" + callerConfig,
		"--addon", "svc@1.0.0", "--supervision", "svc=systemd_service",
		"--addon", "tick@1.0.0", "--supervision", "tick=systemd_timer", "--schedule", "tick=*:*:0/2", "--arg", "tick=ticks",
		"--addon", "probe@1.0.0", "--supervision", "probe=ephemeral_helper", "--timeout", "probe=10s"}
	assign(all...)

	dir := "/var/lib/addond"
	root := filepath.Join(dir, "root")
	sock := filepath.Join(dir, "addond.sock")
	cfg, _ := json.Marshal(map[string]any{
		"agent_id": "edge-01", "runtime_root": root, "store": store,
		"assignments":   map[string]string{"store_key": "agents/edge-01/assignments.json"},
		"trust":         map[string]any{"public_keys": []string{"/srv/keys/signing.pub"}, "require_signatures": true},
		"status_socket": sock, "systemd": map[string]string{"manager": "user"},
		"poll_interval": "1s", "probation": "8s", "min_free_bytes": 1 << 20,
	})
	config := filepath.Join(dir, "addond.json")
	os.WriteFile(config, cfg, 0o644)
	logf, _ := os.Create(filepath.Join(dir, "addond.log"))
	defer func() {
		b, _ := os.ReadFile(logf.Name())
		if t.Failed() {
			t.Logf("addond log:\n%s", b)
			return
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "adopted") || strings.Contains(l, "reattach") || strings.Contains(l, "orphan") || strings.Contains(l, "helper run") {
				t.Log(l)
			}
		}
	}()
	start := func() *daemonProc {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", config)
		cmd.Env = append(os.Environ(), "ADDOND_LOG_LEVEL=debug")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		d := &daemonProc{cmd: cmd, log: logf, socket: sock, client: daemon.NewClient(sock)}
		t.Cleanup(func() { d.stop(t) })
		return d
	}
	ctx := context.Background()
	m := systemd.NewManager(systemd.UserTarget(), nil)
	defer m.Close()
	unit := func(name string) systemd.UnitState {
		t.Helper()
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		u, err := systemd.ReadUnit(ctx, conn, name)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	d := start()
	healthy := runningHealthy("1.0.0")
	side := d.waitAddon(t, "hello", 30*time.Second, "running healthy", healthy)
	// addond is not dumpable: add-ons share its uid, and one without a
	// sandbox must not ptrace it (its /proc files are root's).
	if fi, err := os.Stat(fmt.Sprintf("/proc/%d/mem", d.cmd.Process.Pid)); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("addond is dumpable: /proc/%d/mem %v", d.cmd.Process.Pid, err)
	}
	svc := d.waitAddon(t, "svc", 30*time.Second, "running healthy", healthy)
	d.waitAddon(t, "tick", 30*time.Second, "running healthy", healthy)
	d.waitAddon(t, "probe", 30*time.Second, "running healthy", healthy)
	// A sandboxed sidecar unit asked for another add-on's helper through
	// the SDK: refused, as probe's signed entry does not list it; then,
	// listed (helper_callers), it ran: addond authorized it by its unit
	// and logged it with its id.
	d.waitAddon(t, "caller", 30*time.Second, "refused probe's helper", func(a daemon.AddonStatus) bool {
		return strings.Contains(a.LastError, `addon \"caller\" may not run addon \"probe\"'s helper`) ||
			strings.Contains(a.LastError, `addon "caller" may not run addon "probe"'s helper`)
	})
	all = append(all, "--helper-caller", "probe=caller")
	assign(all...)
	d.client.Reconcile(ctx)
	d.waitAddon(t, "caller", 30*time.Second, "reporting the helper's answer", func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.LastError == "helper probe exited 0: probe: from hello"
	})
	if b, _ := os.ReadFile(logf.Name()); !strings.Contains(string(b), `caller="addon caller"`) {
		t.Fatal("the helper run requested by add-on caller was not logged with its id")
	}
	if u := unit("addond-hello.service"); !u.Up() || u.MainPID != side.PID {
		t.Fatalf("the sidecar is not the unit's main process: status pid %d, unit %+v", side.PID, u)
	}
	if u := unit("addond-svc.service"); !u.Up() || u.MainPID != svc.PID {
		t.Fatalf("svc: status pid %d, unit %+v", svc.PID, u)
	}
	ticks := filepath.Join(root, "addons", "tick", "data", "ticks")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, _ := os.ReadFile(ticks); strings.Count(string(data), " tick\n") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timer did not fire twice within 10s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// run-helper: output and exit status, through the status socket.
	out, err := exec.Command(filepath.Join(bin, "addonctl"), "--socket", sock, "run-helper", "probe", "--", "a", "b").Output()
	if err != nil || string(out) != "probe: a b\n" {
		t.Fatalf("run-helper probe -- a b: %q, %v", out, err)
	}
	err = exec.Command(filepath.Join(bin, "addonctl"), "--socket", sock, "run-helper", "probe", "--", "--exit", "3", "x").Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("run-helper probe --exit 3: %v, want exit status 3", err)
	}
	if units, _ := systemd.ListAddonUnits(ctx, mustConn(t, m)); strings.Contains(unitNames(units), ".run-") {
		t.Fatalf("helper runs left units behind: %s", unitNames(units))
	}

	// Restart addond: nothing restarts.
	d.stop(t)
	if !alive(side.PID) || !alive(svc.PID) {
		t.Fatal("stopping addond stopped add-ons")
	}
	d = start()
	side2 := d.waitAddon(t, "hello", 30*time.Second, "running healthy", healthy)
	svc2 := d.waitAddon(t, "svc", 30*time.Second, "running healthy", healthy)
	if side2.PID != side.PID || svc2.PID != svc.PID {
		t.Fatalf("after an addond restart: sidecar pid %d → %d, service pid %d → %d: restarted instead of reattached/adopted",
			side.PID, side2.PID, svc.PID, svc2.PID)
	}

	// A crash-looping svc 1.1.0 is rolled back to 1.0.0, health read from
	// the unit's state.
	upgraded := append([]string{}, all...)
	for i, a := range upgraded {
		if a == "svc@1.0.0" {
			upgraded[i] = "svc@1.1.0"
		}
	}
	assign(upgraded...)
	d.client.Reconcile(ctx)
	rb := d.waitAddon(t, "svc", 30*time.Second, "rolled back to 1.0.0", func(a daemon.AddonStatus) bool {
		return a.State == "rolled_back" && a.ActiveVersion == "1.0.0" && a.Health == "healthy"
	})
	if u := unit("addond-svc.service"); !u.Up() || u.MainPID != rb.PID || !strings.Contains(u.Description, "svc 1.0.0") {
		t.Fatalf("after the rollback the unit is %+v, status pid %d", u, rb.PID)
	}
	svc = rb

	// svc is removed while addond is down: its unit goes when addond is back.
	d.stop(t)
	assign("--addon", "hello@1.0.0")
	d = start()
	// The unit leaves "active" before its process has gone: it is
	// "deactivating" while the process handles SIGTERM. Both must end.
	deadline = time.Now().Add(20 * time.Second)
	for {
		u := unit("addond-svc.service")
		if !u.Up() && u.ActiveState != "deactivating" && !alive(svc.PID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20s after addond came back without svc: unit %+v, process %d alive %v", u, svc.PID, alive(svc.PID))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if d2 := d.waitAddon(t, "hello", 30*time.Second, "running healthy", healthy); d2.PID != side.PID {
		t.Fatalf("the sidecar was restarted (pid %d → %d)", side.PID, d2.PID)
	}
}

func mustConn(t *testing.T, m *systemd.Manager) *sd.Conn {
	t.Helper()
	c, err := m.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func unitNames(units []sd.UnitStatus) string {
	var names []string
	for _, u := range units {
		names = append(names, u.Name)
	}
	return strings.Join(names, " ")
}
