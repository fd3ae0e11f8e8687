package packaging

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/vmtest/nspawn"
)

// TestInstallPurge installs the amd64 deb with dpkg into a booted Debian
// 12 (systemd as PID 1 in systemd-nspawn) and follows it through its life:
// install (the user and groups, lingering, the directories, addond READY on
// the shipped config, addonctl status, the updater's socket), the add-on
// template's pingsweep package (dormant until assigned, then running from
// its os_package binary), an upgrade (addond restarts, the add-on's unit
// does not), removal (addond and the add-on's unit stop) and purge
// (lingering off, the state directories gone).
func TestInstallPurge(t *testing.T) {
	if nspawn.InMachine() {
		installPurge(t)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the machine runs the amd64 package")
	}
	nspawn.Require(t)
	dir := dist(t)
	nspawn.RunTest(t, nspawn.RunOptions{
		Files:  []string{filepath.Join(dir, debs["amd64"]), filepath.Join(dir, addonDebs["amd64"])},
		AsRoot: true,
		// The machine comes with an addond user (uid nspawn.AddonUID,
		// lingering): remove it, so that the package is what creates it.
		Setup: fmt.Sprintf(`loginctl disable-linger addond; systemctl stop user@%d.service; userdel addond; rm -rf /var/lib/addond /var/lib/systemd/linger/addond`,
			nspawn.AddonUID),
		Env: []string{
			"ADDOND_TEST_DEB=" + filepath.Join(nspawn.BinDir, debs["amd64"]),
			"ADDOND_TEST_ADDON_DEB=" + filepath.Join(nspawn.BinDir, addonDebs["amd64"]),
		},
		Timeout: 4 * time.Minute,
	})
}

// sh runs a shell command in the machine and returns its output; it fails
// the test when the command fails.
func sh(t *testing.T, script string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return strings.TrimSpace(string(out))
}

// try runs a shell command and returns its output and whether it
// succeeded.
func try(script string) (string, bool) {
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

// props reads unit properties with `systemctl show`.
func props(t *testing.T, systemctl, unit string, names ...string) map[string]string {
	t.Helper()
	out := sh(t, systemctl+" show -p "+strings.Join(names, ",")+" "+unit)
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (string, bool)) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last, ok := cond()
		if ok {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type status struct {
	AgentID string `json:"agent_id"`
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	Addons  []struct {
		AddonID   string `json:"addon_id"`
		State     string `json:"state"`
		Health    string `json:"health"`
		LastError string `json:"last_error"`
	} `json:"addons"`
}

func addonctlStatus(t *testing.T, args ...string) status {
	t.Helper()
	var s status
	// Exit status 1 is an add-on not running and healthy: the JSON is
	// all there still.
	cmd := exec.Command("addonctl", append([]string{"status", "--json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); err != nil && !(ok && ee.ExitCode() == 1) {
		t.Fatalf("addonctl status --json: %v\n%s%s\n%s", err, out, stderr.Bytes(),
			sh(t, "systemctl status --no-pager addond; journalctl --no-pager -n 40 -u addond"))
	}
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("addonctl status --json: %v\n%s", err, out)
	}
	return s
}

func mode(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

func installPurge(t *testing.T) {
	deb, addonDeb := os.Getenv("ADDOND_TEST_DEB"), os.Getenv("ADDOND_TEST_ADDON_DEB")
	if _, ok := try("getent passwd addond"); ok {
		t.Fatal("the addond user exists before the package is installed")
	}

	// Install.
	t.Log(sh(t, "dpkg -i "+deb))

	pw := strings.Split(sh(t, "getent passwd addond"), ":")
	uid, _ := strconv.Atoi(pw[2])
	gid, _ := strconv.Atoi(pw[3])
	if uid == 0 || uid >= 1000 || pw[5] != "/var/lib/addond" || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("addond user: %q, want a system user with home /var/lib/addond and shell /usr/sbin/nologin", pw)
	}
	if g := strings.Split(sh(t, "getent group addond"), ":"); g[2] != pw[3] {
		t.Errorf("group addond %q is not the user's primary group %s", g, pw[3])
	}
	if groups := strings.Fields(sh(t, "id -nG addond")); !containsAll(groups, "addond", "addond-status") {
		t.Errorf("addond's groups: %q, want addond and addond-status", groups)
	}
	if _, err := os.Stat("/var/lib/systemd/linger/addond"); err != nil {
		t.Errorf("lingering: %v", err)
	}
	if l := sh(t, "loginctl show-user addond -p Linger --value"); l != "yes" {
		t.Errorf("loginctl Linger=%s, want yes", l)
	}
	userManager := fmt.Sprintf("user@%d.service", uid)
	waitFor(t, userManager+" active", 30*time.Second, func() (string, bool) {
		out, _ := try("systemctl is-active " + userManager)
		return out, out == "active"
	})
	for path, want := range map[string][3]uint32{
		"/var/lib/addond":            {0o700, uint32(uid), uint32(gid)},
		"/var/lib/addond-privileged": {0o755, 0, 0},
		"/etc/addond/trust.d":        {0o755, 0, 0},
	} {
		m, u, g := mode(t, path)
		if !m.IsDir() || uint32(m.Perm()) != want[0] || u != want[1] || g != want[2] {
			t.Errorf("%s: %v %d:%d, want a directory %o %d:%d", path, m, u, g, want[0], want[1], want[2])
		}
	}

	// addond is READY (Type=notify: active/running only after READY=1) on
	// the shipped config, which has no store and no keys.
	waitFor(t, "addond.service active", 60*time.Second, func() (string, bool) {
		p := props(t, "systemctl", "addond.service", "ActiveState", "SubState", "StatusText")
		return fmt.Sprint(p), p["ActiveState"] == "active" && p["SubState"] == "running"
	})
	p := props(t, "systemctl", "addond.service", "ActiveState", "SubState", "StatusText", "MainPID")
	t.Logf("addond.service: %v", p)
	if p["StatusText"] != "no add-ons assigned" {
		t.Errorf("StatusText=%q, want %q", p["StatusText"], "no add-ons assigned")
	}
	if out, ok := try("systemctl is-enabled addond.service addond-updater.socket"); !ok || out != "enabled\nenabled" {
		t.Errorf("is-enabled: %q", out)
	}
	st := addonctlStatus(t)
	if !st.Ready || len(st.Addons) != 0 || st.Version != testVersion {
		t.Errorf("addonctl status: %+v, want ready, version %s, no add-ons", st, testVersion)
	}
	t.Log(sh(t, "addonctl status"))

	// The updater's socket listens, root:addond 0660, and the updater
	// starts on it.
	if out, _ := try("systemctl is-active addond-updater.socket"); out != "active" {
		t.Errorf("addond-updater.socket: %s", out)
	}
	m, u, g := mode(t, "/run/addond-updater.sock")
	if m&os.ModeSocket == 0 || m.Perm() != 0o660 || u != 0 || g != uint32(gid) {
		t.Errorf("/run/addond-updater.sock: %v %d:%d, want a socket 0660 root:addond", m, u, g)
	}
	if !listening(t, "/run/addond-updater.sock") {
		t.Error("nothing listens on /run/addond-updater.sock")
	}
	sh(t, "systemctl start addond-updater.service")
	if out, _ := try("systemctl is-active addond-updater.service"); out != "active" {
		t.Errorf("addond-updater.service: %s\n%s", out, sh(t, "journalctl -u addond-updater.service --no-pager | tail -20"))
	}

	// The add-on package installs dormant: no unit appears.
	userctl := fmt.Sprintf("runuser -u addond -- env XDG_RUNTIME_DIR=/run/user/%d systemctl --user", uid)
	t.Log(sh(t, "dpkg -i "+addonDeb))
	time.Sleep(time.Second)
	if out := sh(t, userctl+" list-units --all --plain --no-legend 'addond-*'"); out != "" {
		t.Errorf("units after installing the add-on package: %s", out)
	}
	if st := addonctlStatus(t); len(st.Addons) != 0 {
		t.Errorf("add-ons after installing the add-on package: %+v", st.Addons)
	}

	// Assigned as its README says, it runs from the package's binary.
	host, _ := os.Hostname()
	doc := fmt.Sprintf(`{"agent_id": %q, "serial": 1, "addons": [{"addon_id": "pingsweep", "version": %q,
	  "delivery": "os_package", "binary_path": "/usr/libexec/addond-addons/pingsweep/pingsweep"}]}`, host, pkgVersion)
	if err := os.WriteFile("/etc/addond/assignments.json", []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	// No poll during the test: whatever stops an add-on below is the
	// package's doing, or a reload's.
	editConfig(t, map[string]any{"assignments": map[string]string{"file": "/etc/addond/assignments.json"}, "poll_interval": "1h"})
	sh(t, "systemctl reload addond.service")
	waitFor(t, "pingsweep running from its package", 60*time.Second, func() (string, bool) {
		st := addonctlStatus(t)
		active, _ := try(userctl + " is-active addond-pingsweep.service")
		return fmt.Sprintf("%+v; unit %s", st.Addons, active),
			len(st.Addons) == 1 && st.Addons[0].AddonID == "pingsweep" && !pendingState(st.Addons[0].State) && active == "active"
	})
	st = addonctlStatus(t)
	t.Logf("pingsweep from the add-on package: %+v", st.Addons)
	if st.Addons[0].State == "failed" || strings.Contains(st.Addons[0].LastError, "os_package binary") {
		t.Errorf("pingsweep's binary refused: %+v", st.Addons[0])
	}
	// An os_package add-on has no last-known-good: a restart of addond
	// must still leave its unit alone (no orphan sweep before the first
	// document) and adopt it.
	osPID := props(t, userctl, "addond-pingsweep.service", "MainPID")["MainPID"]
	sh(t, "systemctl restart addond.service")
	waitFor(t, "pingsweep adopted after a restart of addond", 60*time.Second, func() (string, bool) {
		st := addonctlStatus(t)
		return fmt.Sprintf("%+v", st.Addons), len(st.Addons) == 1 && !pendingState(st.Addons[0].State)
	})
	if pid := props(t, userctl, "addond-pingsweep.service", "MainPID")["MainPID"]; pid != osPID {
		t.Fatalf("restarting addond restarted the os_package add-on: MainPID %s → %s", osPID, pid)
	}

	// A pushed add-on, published and assigned with addonctl into a
	// file:// store and signed with a key the package's trust.d holds:
	// the same binary as a systemd_service, which its unit's state makes
	// healthy (once up for 3 s), so that it passes probation and becomes
	// last-known-good — addond adopts such units when it starts.
	sh(t, "mkdir -p /srv/store && addonctl keygen --out /root/keys && cp /root/keys/signing.pub /etc/addond/trust.d/publisher.pub")
	sh(t, "addonctl publish --store file:///srv/store --key /root/keys/signing.key --id sweep --version 1.0.0 "+
		"--supervision systemd_service linux/amd64=/usr/libexec/addond-addons/pingsweep/pingsweep")
	sh(t, "addonctl assign --store file:///srv/store --key /root/keys/signing.key --agent "+host+" --addon sweep@1.0.0")
	editConfig(t, map[string]any{
		"store":       "file:///srv/store",
		"assignments": map[string]string{"store_key": "agents/" + host + "/assignments.json"},
		"probation":   "4s",
	})
	sh(t, "systemctl reload addond.service")
	waitFor(t, "sweep running and healthy", 60*time.Second, func() (string, bool) {
		st := addonctlStatus(t)
		active, _ := try(userctl + " is-active addond-sweep.service")
		return fmt.Sprintf("%+v; unit %s", st.Addons, active),
			len(st.Addons) == 1 && st.Addons[0].AddonID == "sweep" && st.Addons[0].State == "running" && st.Addons[0].Health == "healthy" && active == "active"
	})
	time.Sleep(5 * time.Second) // past probation: promoted to last-known-good
	if st := addonctlStatus(t); len(st.Addons) != 1 || st.Addons[0].State != "running" {
		t.Fatalf("sweep after probation: %+v", st.Addons)
	}
	t.Log(sh(t, "addonctl status")) // exit status 0: sweep runs, healthy
	addonPID := props(t, userctl, "addond-sweep.service", "MainPID")["MainPID"]
	addondPID := props(t, "systemctl", "addond.service", "MainPID")["MainPID"]

	// Upgrade (the same package again: prerm upgrade, postinst configure
	// with the old version): addond restarts, the add-on's unit does not.
	t.Log(sh(t, "dpkg -i "+deb))
	waitFor(t, "addond restarted and READY", 60*time.Second, func() (string, bool) {
		p := props(t, "systemctl", "addond.service", "ActiveState", "SubState", "MainPID")
		return fmt.Sprint(p), p["ActiveState"] == "active" && p["SubState"] == "running" && p["MainPID"] != addondPID
	})
	waitFor(t, "sweep adopted after the upgrade", 60*time.Second, func() (string, bool) {
		st := addonctlStatus(t)
		return fmt.Sprintf("%+v", st.Addons), len(st.Addons) == 1 && st.Addons[0].State == "running"
	})
	if pid := props(t, userctl, "addond-sweep.service", "MainPID")["MainPID"]; pid != addonPID {
		t.Errorf("the upgrade restarted the add-on: MainPID %s, was %s\n%s", pid, addonPID,
			sh(t, "journalctl --no-pager -o short-monotonic -u addond.service | tail -30"))
	}

	badReload(t)
	journalFields(t, host)

	// Remove: addond, its updater and the add-on's unit stop; the user,
	// lingering, the state and the configuration stay.
	t.Log(sh(t, "dpkg -r addond-addon-pingsweep addond"))
	for _, unit := range []string{"addond.service", "addond-updater.socket", "addond-updater.service"} {
		if out, _ := try("systemctl is-active " + unit); out != "inactive" {
			t.Errorf("after removal %s is %s", unit, out)
		}
	}
	if out, _ := try(userctl + " list-units --plain --no-legend --state=active 'addond-*'"); out != "" {
		t.Errorf("after removal add-on units still run: %s", out)
	}
	for _, path := range []string{"/var/lib/systemd/linger/addond", "/var/lib/addond/addons/sweep/current", "/etc/addond/addond.json"} {
		if _, err := os.Stat(path); err != nil {
			t.Errorf("after removal: %v", err)
		}
	}

	// Purge: lingering off (the user manager stops), the state gone.
	t.Log(sh(t, "dpkg --purge addond"))
	if _, err := os.Stat("/var/lib/systemd/linger/addond"); !os.IsNotExist(err) {
		t.Errorf("lingering after purge: %v", err)
	}
	if l, _ := try("loginctl show-user addond -p Linger --value"); l == "yes" {
		t.Error("loginctl: still lingering after purge")
	}
	waitFor(t, userManager+" stopped", 30*time.Second, func() (string, bool) {
		out, _ := try("systemctl is-active " + userManager)
		return out, out == "inactive"
	})
	for _, path := range []string{"/var/lib/addond", "/var/lib/addond-privileged", "/etc/addond/addond.json", "/etc/addond/capabilities.allow"} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("after purge %s: %v", path, err)
		}
	}
	if p := props(t, "systemctl", "addond.service", "LoadState"); p["LoadState"] != "not-found" {
		t.Errorf("after purge addond.service: %v", p)
	}
	if out, _ := try("ls /etc/systemd/system/*/addond.service /etc/systemd/system/*/addond-updater.* 2>/dev/null"); out != "" {
		t.Errorf("after purge, enablement links are left: %s", out)
	}
}

// editConfig sets keys of /etc/addond/addond.json.
func editConfig(t *testing.T, set map[string]any) {
	t.Helper()
	data, err := os.ReadFile("/etc/addond/addond.json")
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		c[k] = v
	}
	data, _ = json.Marshal(c)
	if err := os.WriteFile("/etc/addond/addond.json", data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func pendingState(s string) bool {
	return s == "" || s == "pending" || s == "downloading" || s == "staged" || s == "starting"
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// listening reports whether a unix stream socket listens at path
// (/proc/net/unix: flags __SO_ACCEPTCON).
func listening(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path && f[3] == "00010000" {
			return true
		}
	}
	return false
}

// TestInstallChroot installs the deb into a Debian 12 root that is not
// booted (an image build: no systemd running, no /proc): the user and
// groups, the linger flag file and the units' enablement come from the
// scripts all the same, and purge takes them back.
func TestInstallChroot(t *testing.T) {
	if _, ok := debs[runtime.GOARCH]; !ok {
		t.Skipf("no package for %s", runtime.GOARCH)
	}
	nspawn.Require(t)
	deb := filepath.Join(dist(t), debs[runtime.GOARCH])
	m := nspawn.New(t)
	chroot := func(script string) (string, error) {
		out, err := exec.Command("chroot", m.Root, "sh", "-c", script).CombinedOutput()
		return string(out), err
	}
	// The root comes with an addond user: the package is to create it.
	if out, err := chroot("userdel addond && rm -rf /var/lib/addond /var/lib/systemd/linger/addond"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	m.CopyFile(t, deb, "/tmp/addond.deb", 0o644)
	if out, err := chroot("dpkg -i /tmp/addond.deb"); err != nil {
		t.Fatalf("dpkg -i in a chroot: %v\n%s", err, out)
	}
	if out, err := chroot("id -nG addond"); err != nil || !containsAll(strings.Fields(out), "addond", "addond-status") {
		t.Errorf("addond's groups: %q %v", out, err)
	}
	for _, p := range []string{
		"/var/lib/systemd/linger/addond",
		"/etc/systemd/system/multi-user.target.wants/addond.service",
		"/etc/systemd/system/sockets.target.wants/addond-updater.socket",
	} {
		if _, err := os.Lstat(filepath.Join(m.Root, p)); err != nil {
			t.Errorf("after install: %v", err)
		}
	}
	if out, err := chroot("dpkg --purge addond"); err != nil {
		t.Fatalf("dpkg --purge in a chroot: %v\n%s", err, out)
	}
	for _, p := range []string{
		"/var/lib/systemd/linger/addond",
		"/etc/systemd/system/multi-user.target.wants/addond.service",
		"/etc/systemd/system/sockets.target.wants/addond-updater.socket",
		"/etc/addond/addond.json",
	} {
		if _, err := os.Lstat(filepath.Join(m.Root, p)); !os.IsNotExist(err) {
			t.Errorf("after purge %s: %v", p, err)
		}
	}
}

// journalFields: addond writes native journal entries, their attributes
// both as fields and, for the journal's default view, in MESSAGE. A version that
// crash-loops is rolled back, and that is an error: `journalctl -u addond
// -p err` shows it, with the add-on's id, version and unit as fields, and
// nothing of lower priority; `journalctl ADDON_ID=sweep` shows the
// add-on's story, every entry with its version and unit.
func journalFields(t *testing.T, host string) {
	t.Helper()
	sh(t, `printf '#!/bin/sh\necho "sweep 1.1.0: crashing" >&2\nexit 3\n' >/root/crash && chmod 755 /root/crash`)
	sh(t, "addonctl publish --store file:///srv/store --key /root/keys/signing.key --id sweep --version 1.1.0 "+
		"--supervision systemd_service --binary-name pingsweep linux/amd64=/root/crash")
	sh(t, "addonctl assign --store file:///srv/store --key /root/keys/signing.key --agent "+host+" --addon sweep@1.1.0")
	sh(t, "addonctl reconcile")
	type entry map[string]any
	entries := func(args string) []entry {
		out := sh(t, "journalctl --no-pager -o json "+args)
		var es []entry
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			var e entry
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("journalctl -o json: %v: %q", err, line)
			}
			es = append(es, e)
		}
		return es
	}
	field := func(e entry, k string) string { s, _ := e[k].(string); return s }
	var rollback entry
	waitFor(t, "the rollback of sweep 1.1.0 in `journalctl -u addond -p err`", 60*time.Second, func() (string, bool) {
		errs := entries("-u addond.service -p err")
		for _, e := range errs {
			if strings.HasPrefix(field(e, "MESSAGE"), "rolling back ") {
				rollback = e
			}
		}
		return fmt.Sprint(errs), rollback != nil
	})
	for k, want := range map[string]string{"PRIORITY": "3", "ADDON_ID": "sweep", "ADDON_VERSION": "1.1.0", "UNIT": "addond-sweep.service",
		"_SYSTEMD_UNIT": "addond.service", "SYSLOG_IDENTIFIER": "addond"} {
		if got := field(rollback, k); got != want {
			t.Errorf("the rollback's entry: %s=%q, want %q (%v)", k, got, want, rollback)
		}
	}
	for _, e := range entries("-u addond.service -p err") {
		if p := field(e, "PRIORITY"); p > "3" {
			t.Errorf("-p err shows priority %s: %v", p, e)
		}
	}
	waitFor(t, "sweep back on 1.0.0", 60*time.Second, func() (string, bool) {
		st := addonctlStatus(t)
		ok := len(st.Addons) == 1 && st.Addons[0].State == "rolled_back" && st.Addons[0].Health == "healthy"
		if !ok {
			out, _ := try("addonctl status; journalctl --no-pager -o cat -n 30 ADDON_ID=sweep")
			return out, false
		}
		return "", true
	})
	story := entries("ADDON_ID=sweep")
	var messages []string
	for _, e := range story {
		msg, _, _ := strings.Cut(field(e, "MESSAGE"), " addon_id=")
		messages = append(messages, msg+"@"+field(e, "ADDON_VERSION"))
		if field(e, "ADDON_VERSION") == "" || field(e, "UNIT") == "" || field(e, "_SYSTEMD_UNIT") != "addond.service" {
			t.Errorf("an entry of sweep's story without its version or unit: %v", e)
		}
	}
	joined := strings.Join(messages, "\n")
	for _, want := range []string{"promoted@1.0.0", "rolling back@1.1.0"} {
		if !strings.Contains(joined, want) {
			t.Errorf("journalctl ADDON_ID=sweep has no %q:\n%s", want, joined)
		}
	}
	t.Logf("journalctl ADDON_ID=sweep: %d entries:\n%s", len(story), joined)
}

// badReload: a config that does not check fails `systemctl reload` — the
// unit's ExecReload runs `addond check-config` first — with the error's
// file, line and column in the journal, and addond runs on with the
// config it has.
func badReload(t *testing.T) {
	t.Helper()
	pid := props(t, "systemctl", "addond.service", "MainPID")["MainPID"]
	before := addonctlStatus(t)
	sh(t, `cp /etc/addond/addond.json /root/addond.json.good && printf '{\n  "agent_id": "x",\n  "probation": "4 s"\n}\n' >/etc/addond/addond.json`)
	if out, ok := try("systemctl reload addond.service"); ok {
		t.Errorf("systemctl reload took a bad config: %s", out)
	}
	waitFor(t, "check-config's error in the journal", 30*time.Second, func() (string, bool) {
		out, _ := try("journalctl --no-pager -o cat -u addond.service -p err")
		return out, strings.Contains(out, `/etc/addond/addond.json:3:3: key "probation"`)
	})
	if p := props(t, "systemctl", "addond.service", "MainPID", "ActiveState"); p["MainPID"] != pid || p["ActiveState"] != "active" {
		t.Errorf("after a bad reload addond.service is %v (MainPID was %s)", p, pid)
	}
	// --socket: addonctl would look for it in the (bad) config.
	if st := addonctlStatus(t, "--socket", "/run/addond/addond.sock"); fmt.Sprint(st.Addons) != fmt.Sprint(before.Addons) || !st.Ready {
		t.Errorf("after a bad reload: %+v, was %+v", st, before)
	}
	sh(t, "cp /root/addond.json.good /etc/addond/addond.json && addond check-config && systemctl reload addond.service")
}
