// Package units holds addond's systemd units; its test boots Debian 12
// with systemd as PID 1, installs the units and the real binaries where the
// units name them, and proves that the hardening leaves everything addond
// and addond-updater must do working.
package units

import (
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
	"testing"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon"
	"github.com/addond/addond/vmtest/nspawn"
)

// unitFiles are the files of this package that are units.
var unitFiles = []string{"addond.service", "addond-updater.socket", "addond-updater.service"}

// The highest `systemd-analyze security` exposure each service may have.
var maxExposure = map[string]float64{"addond.service": 2.0, "addond-updater.service": 3.0}

// Capability bits (linux/capability.h).
const (
	capChown        = 0
	capDacReadSrch  = 2
	capNetRaw       = 13
	capSetfcap      = 31
	updaterCaps     = 1<<capChown | 1<<capDacReadSrch | 1<<capSetfcap
	agentID         = "vm-1"
	statusSocket    = "/run/addond/addond.sock"
	updaterSocket   = "/run/addond-updater.sock"
	privilegedRoot  = capabilities.DefaultPrivilegedRoot
	machineStoreDir = "/srv/store"
)

// TestUnitsInMachine installs the three units and the binaries in a booted
// Debian 12 and checks: `systemd-analyze verify` is clean; the exposure
// scores are within bounds; addond.service reaches READY with the shipped
// minimal config, answers on its status socket, reloads, and runs as addond
// with no capability and NoNewPrivs; after a reload onto a file:// store it
// runs its add-ons as units of its user manager (reached through the
// hardening): a sidecar with cap_net_raw, capped by the socket-activated
// addond-updater, and a sandboxed ephemeral helper, which a capped add-on
// calls back through the status socket; the updater runs with exactly its
// three capabilities and its privileged tree is not nosuid in its mount
// namespace and /etc/shadow is not there; restarting addond restarts no
// add-on, and its metrics listen on TCP; members of addond-status may read
// the status socket, other users may not; after a restart of the user
// manager addond finds the new bus and starts its add-ons again.
func TestUnitsInMachine(t *testing.T) {
	if nspawn.InMachine() {
		inMachine(t)
		return
	}
	nspawn.Require(t)
	start := time.Now()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", bin+"/",
		"./cmd/addond", "./cmd/addonctl", "./cmd/addond-updater",
		"github.com/addond/addond/sdk/examples/pingsweep", "github.com/addond/addond/sdk/examples/hello", "github.com/addond/addond/sdk/examples/probe")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built the binaries in %v", time.Since(start).Round(time.Millisecond))

	// A file:// store with three signed packages and the agent's signed
	// assignments, made on the host with addonctl; inside it is /srv/store.
	work := t.TempDir()
	store, keys := filepath.Join(work, "store"), filepath.Join(work, "keys")
	os.MkdirAll(store, 0o755)
	storeURL := "file://" + store
	addonctl := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(filepath.Join(bin, "addonctl"), args...).CombinedOutput(); err != nil {
			t.Fatalf("addonctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	addonctl("keygen", "--out", keys)
	key := filepath.Join(keys, "signing.key")
	publish := func(id, binary string, extra ...string) {
		args := append([]string{"publish", "--store", storeURL, "--key", key, "--id", id, "--version", "1.0.0"}, extra...)
		addonctl(append(args, "linux/amd64="+filepath.Join(bin, binary))...)
	}
	publish("pingsweep", "pingsweep", "--os-capability", "cap_net_raw")
	publish("caller", "hello", "--os-capability", "cap_net_raw")
	publish("probe", "probe")
	pingCfg, callerCfg := filepath.Join(work, "pingsweep.json"), filepath.Join(work, "caller.json")
	os.WriteFile(pingCfg, []byte(`{"targets": ["127.0.0.1"], "interval": "200ms"}`), 0o644)
	os.WriteFile(callerCfg, []byte(`{"run_helper": "probe", "run_helper_args": ["from", "caller"]}`), 0o644)
	addonctl("assign", "--store", storeURL, "--agent", agentID, "--key", key,
		"--addon", "pingsweep@1.0.0", "--config", "pingsweep="+pingCfg,
		"--addon", "caller@1.0.0", "--config", "caller="+callerCfg,
		"--addon", "probe@1.0.0", "--supervision", "probe=ephemeral_helper", "--timeout", "probe=10s", "--helper-caller", "probe=caller")

	// The machine shares the host's network: a free port for the metrics.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := ln.Addr().String()
	ln.Close()

	units := filepath.Join(work, "units")
	os.MkdirAll(units, 0o755)
	for _, u := range unitFiles {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(units, u), data, 0o644)
	}
	var files []string
	for _, b := range []string{"addond", "addonctl", "addond-updater"} {
		files = append(files, filepath.Join(bin, b))
	}
	// What a package would install: the binaries where the units name
	// them, the units, the shipped minimal config, the users and groups
	// (addond itself, uid 990 and lingering, exists in every machine),
	// trust keys and the capability policy.
	nspawn.RunTest(t, nspawn.RunOptions{
		Files: files,
		Dirs:  map[string]string{units: "/test/units", store: machineStoreDir, keys: "/test/keys"},
		Setup: `set -e
install -m 0755 /test/bin/addond /test/bin/addonctl /usr/bin/
install -D -m 0755 /test/bin/addond-updater /usr/libexec/addond/addond-updater
install -m 0644 /test/units/* /usr/lib/systemd/system/
groupadd --system addond-status
usermod -a -G addond-status addond
useradd --no-create-home --groups addond-status opuser
useradd --no-create-home otheruser
install -d -m 0750 -o root -g addond /run/addond-cap
install -d -m 0755 /etc/addond /etc/addond/trust.d
install -m 0644 /test/keys/signing.pub /etc/addond/trust.d/publisher.pub
printf 'cap_net_raw\n' >/etc/addond/capabilities.allow
printf '{"agent_id": "` + agentID + `"}\n' >/etc/addond/addond.json
chown -R root:root /etc/addond
chown -R addond:addond ` + machineStoreDir + `
systemctl daemon-reload
set +e`,
		Env:     []string{"ADDOND_TEST_METRICS=" + metrics},
		AsRoot:  true,
		Timeout: 2 * time.Minute,
	})
	t.Logf("whole test, boot included: %v", time.Since(start).Round(time.Millisecond))
}

func inMachine(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now()

	if v, err := exec.Command("systemctl", "--version").Output(); err == nil {
		t.Logf("%s", strings.SplitN(string(v), "\n", 2)[0])
	}
	// systemd-analyze verify: nothing to say about any of the units.
	for _, u := range unitFiles {
		out, err := exec.Command("systemd-analyze", "verify", "/usr/lib/systemd/system/"+u).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) != 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		} else {
			t.Logf("systemd-analyze verify %s: clean", u)
		}
	}

	// Exposure scores, with the full tables in the log.
	for _, u := range []string{"addond.service", "addond-updater.service"} {
		out, _ := exec.Command("systemd-analyze", "security", "--no-pager", u).CombinedOutput()
		t.Logf("systemd-analyze security %s:\n%s", u, out)
		score, ok := exposure(string(out), u)
		switch {
		case !ok:
			t.Errorf("systemd-analyze security %s: no overall exposure level", u)
		case score > maxExposure[u]:
			t.Errorf("%s: exposure %.1f, want at most %.1f", u, score, maxExposure[u])
		default:
			t.Logf("EXPOSURE %s %.1f (at most %.1f)", u, score, maxExposure[u])
		}
	}
	if t.Failed() {
		return
	}

	// addond.service: READY with the shipped minimal config.
	systemctl(t, "start", "addond.service")
	show := unitProps(t, "addond.service")
	if show["ActiveState"] != "active" || show["SubState"] != "running" || show["StatusText"] != "no add-ons assigned" {
		t.Fatalf("addond.service after start: %v", show)
	}
	t.Logf("addond.service: %v (READY in %v)", show, time.Since(t0).Round(time.Millisecond))
	if wd, _ := exec.Command("systemctl", "show", "-p", "WatchdogUSec", "--value", "addond.service").Output(); strings.TrimSpace(string(wd)) != "30s" {
		t.Fatalf("addond.service WatchdogUSec %q, want 30s", wd)
	}
	pid, _ := strconv.Atoi(show["MainPID"])
	st := procStatus(t, pid)
	uid := strings.Fields(st["Uid"])
	if len(uid) != 4 || uid[0] != strconv.Itoa(nspawn.AddonUID) || uid[1] != uid[0] || uid[2] != uid[0] || uid[3] != uid[0] ||
		capHex(st["CapEff"]) != 0 || capHex(st["CapPrm"]) != 0 || capHex(st["CapBnd"]) != 0 || capHex(st["CapAmb"]) != 0 ||
		st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Fatalf("addond (pid %d) is not unprivileged: %v", pid, st)
	}
	t.Logf("addond pid %d: Uid %s, CapEff %s, CapBnd %s, NoNewPrivs %s, Seccomp %s", pid, st["Uid"], st["CapEff"], st["CapBnd"], st["NoNewPrivs"], st["Seccomp"])
	expectMode(t, "/var/lib/addond", 0o700, "addond", "addond")
	expectMode(t, "/run/addond", 0o755, "addond", "addond")
	expectMode(t, statusSocket, 0o660|os.ModeSocket, "addond", "addond-status")
	expectMode(t, updaterSocket, 0o660|os.ModeSocket, "root", "addond")

	out, err := exec.Command("/usr/bin/addonctl", "status").CombinedOutput()
	if err != nil {
		t.Fatalf("addonctl status: %v\n%s", err, out)
	}
	t.Logf("addonctl status (root, default socket):\n%s", out)
	// Operators (group addond-status) may read; other users cannot connect.
	if out, err := exec.Command("runuser", "-u", "opuser", "--", "/usr/bin/addonctl", "status").CombinedOutput(); err != nil {
		t.Fatalf("addonctl status as a member of addond-status: %v\n%s", err, out)
	}
	if out, err := exec.Command("runuser", "-u", "otheruser", "--", "/usr/bin/addonctl", "status").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "permission denied") {
		t.Fatalf("addonctl status as a user outside addond-status: %v\n%s", err, out)
	} else {
		t.Logf("addonctl status: an addond-status member reads it; another user gets %q", strings.TrimSpace(string(out)))
	}

	// Reload onto the store: addond now runs add-ons.
	cfg, _ := json.Marshal(map[string]any{
		"agent_id": agentID, "store": "file://" + machineStoreDir,
		"assignments":   map[string]string{"store_key": "agents/" + agentID + "/assignments.json"},
		"trust":         map[string]any{"public_keys": []string{"/etc/addond/trust.d"}, "require_signatures": true},
		"poll_interval": "2s", "metrics_address": os.Getenv("ADDOND_TEST_METRICS"),
	})
	if err := os.WriteFile("/etc/addond/addond.json", cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl(t, "reload", "addond.service")
	client := daemon.NewClient(statusSocket)
	ping := waitAddon(t, client, "pingsweep", func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.Health == "healthy" && a.PID > 0
	})
	caller := waitAddon(t, client, "caller", func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.LastError == "helper probe exited 0: probe: from caller"
	})
	t.Logf("after the reload: pingsweep running healthy (pid %d), caller ran probe through the status socket (pid %d), in %v",
		ping.PID, caller.PID, time.Since(t0).Round(time.Millisecond))
	if show := unitProps(t, "addond.service"); show["MainPID"] != strconv.Itoa(pid) || show["ActiveState"] != "active" ||
		!strings.HasPrefix(show["StatusText"], "3/3 add-ons running") {
		t.Fatalf("addond.service after the reload: %v (pid was %d)", show, pid)
	} else {
		t.Logf("addond.service after the reload: %v", show)
	}

	// The capped sidecars run in the system manager's units addond-updater
	// made, from the root-owned copy, under a uid of their own with
	// CAP_NET_RAW alone — not in addond's manager, not as addond; the
	// caller reached the status socket all the same.
	for _, a := range []daemon.AddonStatus{ping, caller} {
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", a.PID))
		path := capabilities.CgroupOf(cg)
		if want := "/system.slice/addond-" + a.AddonID + ".service"; path != want {
			t.Fatalf("%s (pid %d) is in cgroup %q, want %s", a.AddonID, a.PID, path, want)
		}
		if uid := strings.Fields(procStatus(t, a.PID)["Uid"])[0]; uid == strconv.Itoa(nspawn.AddonUID) || uid == "0" {
			t.Fatalf("%s (pid %d) runs as uid %s", a.AddonID, a.PID, uid)
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.PID))
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		st := procStatus(t, a.PID)
		if !strings.HasPrefix(argv0, filepath.Join(privilegedRoot, a.AddonID, "1.0.0")+"/") || capHex(st["CapEff"]) != 1<<capNetRaw {
			t.Fatalf("%s (pid %d) runs %q with CapEff %s, want the capped copy under %s with CAP_NET_RAW alone", a.AddonID, a.PID, argv0, st["CapEff"], privilegedRoot)
		}
		t.Logf("%s pid %d: cgroup %s, runs %s, CapEff %s", a.AddonID, a.PID, path, argv0, st["CapEff"])
	}

	// A sandboxed helper, run for root through the status socket.
	out, err = exec.Command("/usr/bin/addonctl", "run-helper", "probe", "--", "a", "b").CombinedOutput()
	if err != nil || string(out) != "probe: a b\n" {
		t.Fatalf("addonctl run-helper probe -- a b: %q, %v", out, err)
	}
	t.Logf("addonctl run-helper probe -- a b: %q", out)

	// addond-updater: addond's requests activated it (the capped copies
	// above). Stopped, a root client's ping activates it again; it runs
	// with exactly its three capabilities and no_new_privs, and its
	// privileged tree is not nosuid in its mount namespace.
	if up := unitProps(t, "addond-updater.service"); up["ActiveState"] != "active" {
		t.Fatalf("addond-updater.service after addond's requests: %v", up)
	}
	systemctl(t, "stop", "addond-updater.service")
	if up := unitProps(t, "addond-updater.service"); up["ActiveState"] != "inactive" {
		t.Fatalf("addond-updater.service after stop: %v", up)
	}
	version, proto, err := (&capabilities.Client{Socket: updaterSocket, Timeout: 10 * time.Second}).Ping(ctx)
	if err != nil || proto != capabilities.Protocol {
		t.Fatalf("ping addond-updater as root: %q %d %v", version, proto, err)
	}
	up := unitProps(t, "addond-updater.service")
	upid, _ := strconv.Atoi(up["MainPID"])
	if up["ActiveState"] != "active" || upid == 0 {
		t.Fatalf("addond-updater.service after a ping: %v", up)
	}
	t.Logf("ping addond-updater as root: version %s, protocol %d; socket activation started it: %v", version, proto, up)
	ust := procStatus(t, upid)
	if capHex(ust["CapEff"]) != updaterCaps || capHex(ust["CapBnd"]) != updaterCaps || ust["NoNewPrivs"] != "1" || ust["Seccomp"] != "2" {
		t.Fatalf("addond-updater (pid %d): CapEff %s CapBnd %s NoNewPrivs %s Seccomp %s, want CapEff = CapBnd = %x, NoNewPrivs 1, Seccomp 2",
			upid, ust["CapEff"], ust["CapBnd"], ust["NoNewPrivs"], ust["Seccomp"], updaterCaps)
	}
	t.Logf("addond-updater pid %d: Uid %s, CapEff %s, CapBnd %s, NoNewPrivs %s, Seccomp %s", upid, ust["Uid"], ust["CapEff"], ust["CapBnd"], ust["NoNewPrivs"], ust["Seccomp"])
	// What it reads and writes is there; what root owns besides is not.
	for path, want := range map[string]bool{
		"/etc/addond/capabilities.allow": true, "/etc/addond/trust.d": true, "/etc/passwd": true, "/var/lib/addond/addons": true,
		privilegedRoot: true, "/etc/shadow": false, "/var/lib/systemd": false, "/root": true, "/root/.profile": false,
	} {
		_, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", upid, path))
		if (err == nil) != want {
			t.Errorf("in addond-updater's namespace %s: %v, want it there: %v", path, err, want)
		}
	}
	for _, p := range []string{privilegedRoot, "/var/lib/addond"} {
		mnt, opts := mountOf(t, upid, p)
		if p == privilegedRoot && (contains(opts, "nosuid") || contains(opts, "ro")) {
			t.Fatalf("in addond-updater's namespace %s is on %s with %v: capped copies would not work", p, mnt, opts)
		}
		t.Logf("in addond-updater's namespace %s is on %s (%s)", p, mnt, strings.Join(opts, ","))
	}

	// Restarting addond restarts no add-on: they are not in its cgroup.
	systemctl(t, "restart", "addond.service")
	again := waitAddon(t, client, "pingsweep", func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.Health == "healthy" && a.PID > 0
	})
	if again.PID != ping.PID {
		t.Fatalf("after systemctl restart addond: pingsweep pid %d → %d", ping.PID, again.PID)
	}
	show = unitProps(t, "addond.service")
	t.Logf("after systemctl restart addond: %v; pingsweep still pid %d", show, again.PID)
	// metrics_address took effect with the restart: TCP on 127.0.0.1.
	resp, err := http.Get("http://" + os.Getenv("ADDOND_TEST_METRICS") + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `addond_addon_state{`) {
		t.Fatalf("metrics: %s\n%s", resp.Status, body)
	}
	t.Logf("metrics on %s: %s, %d bytes", os.Getenv("ADDOND_TEST_METRICS"), resp.Status, len(body))

	// The user manager restarts (its /run/user/<uid> is a new mount):
	// addond, whose view of /run/user is a read-only bind that still
	// receives the host's mounts, finds the new bus — a helper runs there
	// again. The capped add-ons run in the system manager: the restart
	// does not touch them.
	systemctl(t, "restart", fmt.Sprintf("user@%d.service", nspawn.AddonUID))
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command("/usr/bin/addonctl", "run-helper", "probe", "--", "again").CombinedOutput()
		if err == nil && string(out) == "probe: again\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after systemctl restart user@%d.service: run-helper probe: %q, %v", nspawn.AddonUID, out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if back := waitAddon(t, client, "pingsweep", func(a daemon.AddonStatus) bool {
		return a.State == "running" && a.Health == "healthy"
	}); back.PID != ping.PID {
		t.Fatalf("after systemctl restart user@%d.service: the capped pingsweep restarted (pid %d → %d)", nspawn.AddonUID, ping.PID, back.PID)
	}
	t.Logf("after systemctl restart user@%d.service: a helper runs again; pingsweep still pid %d", nspawn.AddonUID, ping.PID)

	if logs, err := exec.Command("journalctl", "-b", "-o", "cat", "--no-pager", "-u", "addond.service", "-u", "addond-updater.service").CombinedOutput(); err == nil {
		t.Logf("journal of addond and addond-updater:\n%s", logs)
	}
	t.Logf("inside the machine: %v", time.Since(t0).Round(time.Millisecond))
}

// exposure is the overall exposure level `systemd-analyze security` gave
// unit.
func exposure(out, unit string) (float64, bool) {
	for _, line := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(line, "Overall exposure level for "+unit+": ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseFloat(f[0], 64)
		return v, err == nil
	}
	return 0, false
}

func systemctl(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	if err != nil {
		status, _ := exec.Command("systemctl", "status", "--no-pager", "-l", "addond.service", "addond-updater.service").CombinedOutput()
		logs, _ := exec.Command("journalctl", "-b", "--no-pager", "-u", "addond.service", "-u", "addond-updater.service").CombinedOutput()
		t.Fatalf("systemctl %s: %v\n%s\n%s\n%s", strings.Join(args, " "), err, out, status, logs)
	}
}

// unitProps are the properties of a unit the test looks at.
func unitProps(t *testing.T, unit string) map[string]string {
	t.Helper()
	out, err := exec.Command("systemctl", "show", "-p", "ActiveState,SubState,MainPID,StatusText", unit).Output()
	if err != nil {
		t.Fatalf("systemctl show %s: %v", unit, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// procStatus is /proc/<pid>/status as keys and values.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func capHex(s string) uint64 {
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return ^uint64(0)
	}
	return v
}

// mountOf is the mount point that holds path in pid's mount namespace, and
// its mount options (per-mount and super block).
func mountOf(t *testing.T, pid int, path string) (string, []string) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	var best string
	var opts []string
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 3 {
			continue
		}
		mp := f[4]
		if mp != "/" && mp != path && !strings.HasPrefix(path, mp+"/") {
			continue
		}
		if len(mp) >= len(best) { // the last of equal mount points is on top
			best = mp
			opts = append(strings.Split(f[5], ","), strings.Split(g[2], ",")...)
		}
	}
	return best, opts
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func waitAddon(t *testing.T, c *daemon.Client, id string, ok func(daemon.AddonStatus) bool) daemon.AddonStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last daemon.AddonStatus
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := c.Status(context.Background())
		lastErr = err
		if err == nil {
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
	logs, _ := exec.Command("journalctl", "-b", "--no-pager", "-u", "addond.service", "-u", "addond-updater.service", "--user-unit", "addond-"+id+".service").CombinedOutput()
	t.Fatalf("%s: not there within 30s; last status %+v (error %v)\n%s", id, last, lastErr, logs)
	return last
}

// expectMode checks a path's mode, owner and group.
func expectMode(t *testing.T, path string, mode os.FileMode, owner, group string) {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%f %U %G", path).Output()
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	f := strings.Fields(string(out))
	raw, _ := strconv.ParseUint(f[0], 16, 32)
	got := os.FileMode(raw & 0o777)
	if raw&0o170000 == 0o140000 {
		got |= os.ModeSocket
	}
	if got != mode || f[1] != owner || f[2] != group {
		t.Fatalf("%s: %v %s:%s, want %v %s:%s", path, got, f[1], f[2], mode, owner, group)
	}
	t.Logf("%s: %v %s:%s", path, got, f[1], f[2])
}
