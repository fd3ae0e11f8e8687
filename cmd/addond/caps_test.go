package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon"
	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/nspawn"
)

// TestCapsInMachine: pingsweep, whose signed package asks for
// cap_net_raw, is delivered to the unprivileged addond; addond-updater
// (root, on its socket) makes the capped, root-owned copy and starts the
// sidecar from it as addond-pingsweep.service in the system manager, under
// a uid of its own with exactly cap_net_raw; it opens its raw ICMP socket —
// HEALTHY only because the capability arrived. With the updater gone, a
// new version waits (the running one stays, nothing is marked failed) and
// a restarted addond reattaches to the unit running its last-known-good;
// with the updater back, the new version is capped and promoted. Then
// capprobe, a capped service, tries what no capped add-on may — signal,
// trace or read addond, write its runtime root, reach its user bus, join
// its cgroup — and is refused each.
func TestCapsInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		e := newEnv(t, "file")
		for _, v := range []string{"1.0.0", "1.1.0"} {
			e.run("addonctl", "publish", "--store", e.storeURL, "--key", filepath.Join(e.dir, "keys", "signing.key"),
				"--id", "pingsweep", "--version", v, "--os-capability", "cap_net_raw", "linux/amd64="+filepath.Join(bin, "pingsweep"))
		}
		e.run("addonctl", "publish", "--store", e.storeURL, "--key", filepath.Join(e.dir, "keys", "signing.key"),
			"--id", "capprobe", "--version", "1.0.0", "--os-capability", "cap_net_raw", "linux/amd64="+filepath.Join(bin, "capprobe"))
		// hello: an add-on without capabilities beside it, which the
		// updater's absence must not touch.
		e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
		nspawn.RunTest(t, nspawn.RunOptions{
			Files: []string{filepath.Join(bin, "addond"), filepath.Join(bin, "addonctl"), filepath.Join(bin, "addond-updater")},
			Dirs:  map[string]string{filepath.Join(e.dir, "store"): "/srv/store", filepath.Join(e.dir, "keys"): "/srv/keys"},
			Setup: `
chown -R addond:addond /srv/store /srv/keys
mkdir -p /etc/addond/trust.d /var/lib/addond/root && chown addond:addond /var/lib/addond/root
cp /srv/keys/signing.pub /etc/addond/trust.d/ && chown -R root:root /etc/addond && chmod 644 /etc/addond/trust.d/signing.pub
printf 'cap_net_raw\n' > /etc/addond/capabilities.allow
systemd-run --unit addond-updater-test /test/bin/addond-updater serve --listen /run/addond-updater.sock \
	--runtime-root /var/lib/addond/root --agent-cgroup /system.slice/addond-test.service --idle-exit 0
for i in $(seq 1 100); do [ -S /run/addond-updater.sock ] && break; sleep 0.05; done`,
		})
		return
	}

	const store = "file:///srv/store"
	assign := func(ref string, more ...string) {
		t.Helper()
		cfg := "/var/lib/addond/pingsweep.json"
		os.WriteFile(cfg, []byte(`{"targets": ["127.0.0.1"], "interval": "200ms"}`), 0o644)
		args := append([]string{"assign", "--store", store, "--agent", "edge-01",
			"--key", "/srv/keys/signing.key", "--addon", ref, "--config", "pingsweep=" + cfg, "--addon", "hello@1.0.0"}, more...)
		out, err := exec.Command(filepath.Join(bin, "addonctl"), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("addonctl assign: %v\n%s", err, out)
		}
	}
	root := "/var/lib/addond/root"
	sock := "/var/lib/addond/addond.sock"
	config := "/var/lib/addond/addond.json"
	writeConfig := func(updater string) {
		cfg, _ := json.Marshal(map[string]any{
			"agent_id": "edge-01", "runtime_root": root, "store": store,
			"assignments":   map[string]string{"store_key": "agents/edge-01/assignments.json"},
			"trust":         map[string]any{"public_keys": []string{"/srv/keys/signing.pub"}, "require_signatures": true},
			"status_socket": sock, "systemd": map[string]string{"manager": "user"}, "updater_socket": updater,
			"poll_interval": "1s", "probation": "5s", "min_free_bytes": 1 << 20,
		})
		os.WriteFile(config, cfg, 0o644)
	}
	logf, _ := os.Create("/var/lib/addond/addond.log")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("addond log:\n%s", b)
		}
	}()
	start := func() *daemonProc {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", config)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		d := &daemonProc{cmd: cmd, log: logf, socket: sock, client: daemon.NewClient(sock)}
		t.Cleanup(func() { d.stop(t) })
		return d
	}
	capped := func(version string) string {
		return filepath.Join(capabilities.DefaultPrivilegedRoot, "pingsweep", version, "pingsweep")
	}
	// checkProcess: the sidecar runs the capped copy in the system
	// manager's unit, under a uid that is not addond's, with exactly
	// CAP_NET_RAW effective and in its bounding set.
	checkProcess := func(pid int, version string) {
		t.Helper()
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if got := capabilities.CgroupOf(cg); got != "/system.slice/addond-pingsweep.service" {
			t.Fatalf("pingsweep runs in cgroup %q, want the system manager's addond-pingsweep.service", got)
		}
		if uid := procStatus(t, pid, "Uid"); strings.Fields(uid)[0] == strconv.Itoa(os.Getuid()) {
			t.Fatalf("pingsweep runs as addond's uid (Uid: %s)", uid)
		}
		for _, k := range []string{"CapEff", "CapBnd", "CapPrm"} {
			if v := procStatus(t, pid, k); v != fmt.Sprintf("%016x", 1<<13) {
				t.Fatalf("pingsweep %s %s, want exactly CAP_NET_RAW", k, v)
			}
		}
		// (A process with file capabilities is not dumpable: its
		// /proc/<pid>/exe is root's. Its command line is not.)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != capped(version) {
			t.Fatalf("pingsweep runs %q, want the capped copy %s", argv0, capped(version))
		}
	}

	assign("pingsweep@1.0.0")
	writeConfig("/run/addond-updater.sock")
	d := start()
	a := d.waitAddon(t, "pingsweep", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	checkProcess(a.PID, "1.0.0")
	fi, err := os.Stat(capped("1.0.0"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("capped copy: %v, %v", fi, err)
	}

	// The updater is gone (addond points at a socket nobody serves).
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	before := pids(t, d.client, "hello", "pingsweep")
	d.stop(t)
	writeConfig("/run/no-updater.sock")
	assign("pingsweep@1.1.0")
	restart := time.Now()
	d = start()
	a = d.waitAddon(t, "pingsweep", 30*time.Second, "1.0.0 from the earlier copy, 1.1.0 waiting for the updater", func(s daemon.AddonStatus) bool {
		return s.ActiveVersion == "1.0.0" && s.Health == "healthy" && s.Version == "1.1.0" && strings.Contains(s.LastError, "addond-updater is not available")
	})
	t.Logf("updater gone: pingsweep 1.1.0 waiting, 1.0.0 healthy %v after the restart; last_error %q", time.Since(restart).Round(time.Millisecond), a.LastError)
	checkProcess(a.PID, "1.0.0")
	// The invariants: nothing restarted (hello does not wait on the
	// updater; pingsweep 1.0.0 is reattached from the copy made earlier),
	// current stays on the verified 1.0.0, no partial file is left.
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	samePIDs(t, d.client, before)
	t.Logf("updater gone: PIDs kept across the restart %v", before)
	published := func(id, version string) string { return publishedSHA(t, "/srv/store", id, version) }
	if v := checkCurrent(t, root, "pingsweep", published); v != "1.0.0" {
		t.Fatalf("current -> %s while 1.1.0 waits for the updater, want 1.0.0", v)
	}
	checkCurrent(t, root, "hello", published)
	if b, _ := os.ReadFile(logf.Name()); !strings.Contains(string(b), "running the capped copy made earlier") {
		t.Fatal("the last-known-good did not come from the copy made earlier")
	}
	time.Sleep(2 * time.Second) // a few reconciles: still waiting, never failed
	st, _ := os.ReadFile(filepath.Join(root, "addons", "pingsweep", "state.json"))
	if strings.Contains(string(st), `"failed"`) && strings.Contains(string(st), "1.1.0") {
		t.Fatalf("1.1.0 was marked failed for the updater's absence:\n%s", st)
	}
	checkNoPartials(t, root)
	samePIDs(t, d.client, before)

	// The updater is back: 1.1.0 is capped and promoted.
	d.stop(t)
	writeConfig("/run/addond-updater.sock")
	d = start()
	a = d.waitAddon(t, "pingsweep", 30*time.Second, "1.1.0 running healthy", runningHealthy("1.1.0"))
	checkProcess(a.PID, "1.1.0")

	// capprobe: a capped service tries to act as addond.
	probeCfg := "/var/lib/addond/capprobe.json"
	os.WriteFile(probeCfg, fmt.Appendf(nil, `{"addond_pid": %d, "runtime_root": %q, "user_bus": "/run/user/%d/bus", "agent_cgroup": "/system.slice/addond-test.service"}`,
		d.cmd.Process.Pid, root, os.Getuid()), 0o644)
	assign("pingsweep@1.1.0", "--addon", "capprobe@1.0.0", "--supervision", "capprobe=systemd_service", "--config", "capprobe="+probeCfg)
	d.waitAddon(t, "capprobe", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	var report map[string]string
	vmtest.Eventually(t, 10*time.Second, "capprobe's report", func() bool {
		b, err := os.ReadFile(filepath.Join(capabilities.DefaultRunRoot, "capprobe", "sock", "report.json"))
		return err == nil && json.Unmarshal(b, &report) == nil
	})
	t.Logf("capprobe: %v", report)
	if report["uid"] == strconv.Itoa(os.Getuid()) || report["uid"] == "0" {
		t.Errorf("capprobe runs as uid %s", report["uid"])
	}
	want := fmt.Sprintf("%016x", 1<<13)
	for k, v := range map[string]string{"CapEff": want, "CapBnd": want, "CapPrm": want, "NoNewPrivs": "1", "raw_socket": "allowed"} {
		if report[k] != v {
			t.Errorf("capprobe %s = %q, want %q", k, report[k], v)
		}
	}
	for _, k := range []string{"kill", "ptrace_attach", "ptrace_seize", "read_environ", "write_runtime_root", "read_runtime_root", "user_bus", "cgroup_procs", "cgroup_mkdir", "updater_socket"} {
		if !strings.HasPrefix(report[k], "denied") {
			t.Errorf("capprobe %s: %q, want denied", k, report[k])
		}
	}
	if _, err := os.Stat(filepath.Join(root, "capprobe-was-here")); err == nil {
		t.Error("capprobe wrote under addond's runtime root")
	}
	// The template's exposure, as systemd rates it (docs/SECURITY.md).
	for _, unit := range []string{"addond-pingsweep.service", "addond-capprobe.service"} {
		out, _ := exec.Command("systemd-analyze", "security", "--no-pager", unit).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		last := lines[len(lines)-1]
		var open []string
		for _, l := range lines {
			if strings.Contains(l, "✗") {
				open = append(open, strings.Join(strings.Fields(l), " "))
			}
		}
		t.Logf("%s: %s; left open:\n%s", unit, last, strings.Join(open, "\n"))
		var exposure float64
		if i := strings.Index(last, ": "); i < 0 {
			t.Errorf("systemd-analyze security %s: %s", unit, out)
		} else if _, err := fmt.Sscanf(last[i+2:], "%f", &exposure); err != nil || exposure > 3.0 {
			t.Errorf("%s: exposure %q, want at most 3.0\n%s", unit, last, out)
		}
	}

	// capprobe unassigned: its unit stops, and its runtime directory goes
	// with it.
	assign("pingsweep@1.1.0")
	vmtest.Eventually(t, 30*time.Second, "capprobe's unit stopped and its runtime directory gone", func() bool {
		_, err := os.Stat(filepath.Join(capabilities.DefaultRunRoot, "capprobe"))
		out, _ := exec.Command("systemctl", "is-active", "addond-capprobe.service").Output()
		return errors.Is(err, os.ErrNotExist) && strings.TrimSpace(string(out)) != "active"
	})
	d.waitAddon(t, "pingsweep", 10*time.Second, "1.1.0 running healthy", runningHealthy("1.1.0"))
}

// procStatus is field k of /proc/<pid>/status.
func procStatus(t *testing.T, pid int, k string) string {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, k+":\t"); ok {
			return v
		}
	}
	t.Fatalf("no %s in /proc/%d/status", k, pid)
	return ""
}
