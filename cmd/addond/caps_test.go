package main

import (
	"encoding/json"
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
	"github.com/addond/addond/vmtest/nspawn"
)

// TestCapsInMachine: pingsweep, whose signed package asks for
// cap_net_raw, is delivered to the unprivileged addond; addond-updater
// (root, on its socket) makes the capped, root-owned copy; the sidecar
// runs from it as a unit of addond's user manager and opens its raw ICMP
// socket — HEALTHY only because the capability arrived. With the updater
// gone, a new version waits (the running one stays, nothing is marked
// failed) and a restarted addond runs its last-known-good from the copy
// made earlier; with the updater back, the new version is capped and
// promoted.
func TestCapsInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		e := newEnv(t, "file")
		for _, v := range []string{"1.0.0", "1.1.0"} {
			e.run("addonctl", "publish", "--store", e.storeURL, "--key", filepath.Join(e.dir, "keys", "signing.key"),
				"--id", "pingsweep", "--version", v, "--os-capability", "cap_net_raw", "linux/amd64="+filepath.Join(bin, "pingsweep"))
		}
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
	assign := func(ref string) {
		t.Helper()
		cfg := "/var/lib/addond/pingsweep.json"
		os.WriteFile(cfg, []byte(`{"targets": ["127.0.0.1"], "interval": "200ms"}`), 0o644)
		out, err := exec.Command(filepath.Join(bin, "addonctl"), "assign", "--store", store, "--agent", "edge-01",
			"--key", "/srv/keys/signing.key", "--addon", ref, "--config", "pingsweep="+cfg, "--addon", "hello@1.0.0").CombinedOutput()
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
	// checkProcess: the sidecar runs the capped copy with CAP_NET_RAW
	// effective.
	checkProcess := func(pid int, version string) {
		t.Helper()
		// (A process with file capabilities is not dumpable: its
		// /proc/<pid>/exe is root's. Its command line is not.)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != capped(version) {
			t.Fatalf("pingsweep runs %q, want the capped copy %s", argv0, capped(version))
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(status), "\n") {
			if hexCaps, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
				v, _ := strconv.ParseUint(hexCaps, 16, 64)
				if v&(1<<13) == 0 {
					t.Fatalf("CapEff %s lacks CAP_NET_RAW", hexCaps)
				}
				return
			}
		}
		t.Fatal("no CapEff in /proc/pid/status")
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
}
