package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/vmtest/miniotest"
)

// The package's life in a real machine: a fresh Debian 12 VM with the
// addond deb from `make packages`, installed with dpkg as an administrator
// would, driving the packaged, hardened addond.service with the packaged
// addonctl — add-ons published into a store inside the guest (no
// network), signed by a publisher key addond trusts.
//
// A boot costs about 25 s of TCG time before a test does anything, so the
// steps that need no boot of their own share one: TestPackageLifecycle runs
// them in order in one machine, each step a subtest that starts from what
// the ones before left (as an administrator's host would). Reboots
// (TestStoreOutageReboot) and the clock (TestClockJump) get machines of
// their own.

// publishExamples publishes hello (1.0.0), pingsweep (with cap_net_raw)
// and ticker into the store and assigns all three: hello and pingsweep as
// go-plugin sidecars, ticker as a timer job every 5 s.
func publishExamples(t *testing.T, p *publisher) {
	t.Helper()
	p.publish(t, "hello", "1.0.0", "agent_sidecar", BinDir+"/hello")
	p.publish(t, "pingsweep", "1.0.0", "agent_sidecar", BinDir+"/pingsweep", "--os-capability", "cap_net_raw")
	p.publish(t, "ticker", "1.0.0", "systemd_timer", BinDir+"/ticker")
	p.assign(t, "--addon", "hello@1.0.0", "--addon", "pingsweep@1.0.0", "--addon", "ticker@1.0.0",
		"--schedule", "ticker=*:*:0/5", "--arg", "ticker=ticks")
}

// waitExamples waits for the three add-ons of publishExamples to run.
func waitExamples(t *testing.T, timeout time.Duration) {
	t.Helper()
	waitAddon(t, "hello", timeout, "running", runningHealthy("1.0.0"))
	waitAddon(t, "pingsweep", timeout, "running with cap_net_raw", runningHealthy("1.0.0"))
	waitAddon(t, "ticker", timeout, "scheduled", func(a addonStatus) string {
		if a.State != "running" || a.ActiveVersion != "1.0.0" {
			return "want running 1.0.0"
		}
		return ""
	})
}

// checkPackagedUnit checks that addond runs from the packaged unit file,
// with no drop-in.
func checkPackagedUnit(t *testing.T) {
	t.Helper()
	frag := unitProp(t, "addond", "FragmentPath")
	if real, _ := filepath.EvalSymlinks(frag); real != "/usr/lib/systemd/system/addond.service" {
		t.Errorf("addond.service is %s (%s), not the packaged unit", frag, real)
	}
	if dropins := unitProp(t, "addond", "DropInPaths"); dropins != "" {
		t.Errorf("addond.service has drop-ins: %s", dropins)
	}
}

// lifecycle is what the steps of TestPackageLifecycle hand on.
type lifecycle struct {
	p *publisher // from addons on
}

// TestPackageLifecycle: the package from install to purge in one machine,
// step by step; a step that fails ends the run (the later ones would only
// fail for its sake).
func TestPackageLifecycle(t *testing.T) {
	if !InVM() {
		boot(t, scenario{upgrade: true, timeout: 25 * time.Minute})
		return
	}
	l := &lifecycle{}
	for _, step := range []struct {
		name string
		run  func(*testing.T, *lifecycle)
	}{
		{"FreshInstall", freshInstall},
		{"Addons", addons},
		{"PtraceRace", ptraceRaceStep},
		{"Revoke", revoke},
		{"PackageUpgrade", packageUpgrade},
		{"MemoryLimit", memoryLimit},
		{"UpgradeRollback", upgradeRollback},
		{"Purge", purge},
	} {
		start := time.Now()
		if !t.Run(step.name, func(t *testing.T) { step.run(t, l) }) {
			t.Fatalf("step %s failed; the later steps build on it and were not run", step.name)
		}
		t.Logf("step %s: %v", step.name, time.Since(start).Round(100*time.Millisecond))
	}
}

// freshInstall: the shipped configuration (no store, no keys) reaches
// READY under the packaged unit and says so.
func freshInstall(t *testing.T, l *lifecycle) {
	start := time.Now()
	install(t, debPath)
	t.Logf("dpkg -i to active: %v", time.Since(start).Round(100*time.Millisecond))

	pid := mainPID(t, "addond")
	if pgrep := sh(t, "pgrep -x addond"); pgrep != pid {
		t.Errorf("MainPID %s, but the addond processes are %q", pid, pgrep)
	}
	if exe, _ := os.Readlink("/proc/" + pid + "/exe"); exe != "/usr/bin/addond" {
		t.Errorf("MainPID runs %q", exe)
	}
	if user := sh(t, "ps -o user= -p "+pid); user != "addond" {
		t.Errorf("addond runs as %q", user)
	}
	if c := capEff(t, pid); c != 0 {
		t.Errorf("addond has capabilities %#x", c)
	}
	checkPackagedUnit(t)
	for prop, want := range map[string]string{
		"Type":            "notify",
		"NoNewPrivileges": "yes", "User": "addond", "UnitFileState": "enabled",
	} {
		if got := unitProp(t, "addond", prop); got != want {
			t.Errorf("addond.service %s=%q, want %q", prop, got, want)
		}
	}
	var text string
	eventually(t, 30*time.Second, "StatusText", func() error {
		if text = unitProp(t, "addond", "StatusText"); !strings.Contains(text, "no add-ons") {
			return fmt.Errorf("StatusText %q", text)
		}
		return nil
	})
	t.Logf("StatusText: %s", text)
	st, err := status()
	if err != nil || !st.Ready || len(st.Addons) != 0 {
		t.Errorf("addonctl status: %+v, %v", st, err)
	}
	if got := unitProp(t, "addond-updater.socket", "ActiveState"); got != "active" {
		t.Errorf("addond-updater.socket is %s", got)
	}
	// The shipped configuration, untouched: no store, no keys.
	cfg := sh(t, "cat /etc/addond/addond.json")
	if strings.Contains(cfg, `"store"`) {
		t.Errorf("the shipped configuration names a store:\n%s", cfg)
	}
	if keys := sh(t, "ls -A /etc/addond/trust.d"); keys != "" {
		t.Errorf("trust.d is not empty: %s", keys)
	}
	if out := sh(t, "dpkg -V addond; echo ok"); out != "ok" {
		t.Errorf("dpkg -V addond:\n%s", out)
	}
	// Lingering: the user manager add-ons run in is up.
	if _, err := os.Stat("/var/lib/systemd/linger/addond"); err != nil {
		t.Errorf("lingering: %v", err)
	}
	uid := sh(t, "id -u addond")
	if got := unitProp(t, "user@"+uid+".service", "ActiveState"); got != "active" {
		t.Errorf("user@%s.service is %s", uid, got)
	}
}

// addons: hello and pingsweep as sidecars and ticker as a timer, from a
// file:// store, all run under the packaged hardened unit; pingsweep gets
// cap_net_raw from addond-updater.
func addons(t *testing.T, l *lifecycle) {
	l.p = newPublisher(t, fileStore)
	publishExamples(t, l.p)
	start := time.Now()
	configure(t, fileStore)
	waitExamples(t, 2*time.Minute)
	t.Logf("reload to all running: %v", time.Since(start).Round(100*time.Millisecond))
	eventually(t, 30*time.Second, "ticker ticked", func() error {
		data, err := os.ReadFile("/var/lib/addond/addons/ticker/data/ticks")
		if err != nil || !strings.Contains(string(data), " tick") {
			return fmt.Errorf("ticks: %q, %v", data, err)
		}
		return nil
	})

	for _, u := range []string{"addond-hello.service", "addond-pingsweep.service", "addond-ticker.timer"} {
		if got := addonUnitProp(t, u, "ActiveState"); got != "active" {
			t.Errorf("%s is %s", u, got)
		}
	}
	// pingsweep: the root-owned capped copy, run by the system manager in
	// the unit addond-updater made, under a uid of its own with exactly
	// CAP_NET_RAW.
	capped := "/var/lib/addond-privileged/pingsweep/1.0.0/pingsweep"
	if got := sh(t, "getcap "+capped); !strings.Contains(got, "cap_net_raw") {
		t.Errorf("getcap %s: %q", capped, got)
	}
	if got := sh(t, "stat -c '%U:%G %a' "+capped); got != "root:addond 750" {
		t.Errorf("%s is %s", capped, got)
	}
	if got := userUnitProp(t, "addond-pingsweep.service", "LoadState"); got == "loaded" {
		t.Errorf("pingsweep's unit is in addond's user manager")
	}
	pid := unitProp(t, "addond-pingsweep.service", "MainPID")
	if exe, _ := os.Readlink("/proc/" + pid + "/exe"); exe != capped {
		t.Errorf("pingsweep runs %q, want the capped copy", exe)
	}
	for prop, want := range map[string]string{"DynamicUser": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "cap_net_raw",
		"AmbientCapabilities": "cap_net_raw", "ProtectSystem": "strict", "ProtectControlGroups": "yes"} {
		if got := unitProp(t, "addond-pingsweep.service", prop); got != want {
			t.Errorf("pingsweep %s=%s, want %s", prop, got, want)
		}
	}
	if uid := sh(t, "stat -c %u /proc/"+pid); uid == sh(t, "id -u addond") || uid == "0" {
		t.Errorf("pingsweep runs as uid %s", uid)
	}
	if got := sh(t, "grep CapBnd /proc/"+pid+"/status"); got != "CapBnd:\t0000000000002000" {
		t.Errorf("pingsweep %q, want exactly CAP_NET_RAW", got)
	}
	pingExposure := sh(t, "systemd-analyze security --no-pager addond-pingsweep.service | tail -1")
	t.Logf("addond-pingsweep.service (capped, system manager): %s", pingExposure)
	if c := capEff(t, pid); c&(1<<13) == 0 {
		t.Errorf("pingsweep CapEff %#x lacks CAP_NET_RAW", c)
	}
	// hello: sandboxed, no capability, the cgroup tree read-only.
	for prop, want := range map[string]string{"PrivateUsers": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "NoNewPrivileges": "yes"} {
		if got := userUnitProp(t, "addond-hello.service", prop); got != want {
			t.Errorf("hello %s=%s, want %s", prop, got, want)
		}
	}
	// Its exposure, as systemd rates it (docs/SECURITY.md).
	uid := sh(t, "id -u addond")
	score := sh(t, "runuser -u addond -- env XDG_RUNTIME_DIR=/run/user/"+uid+" systemd-analyze security --user --no-pager addond-hello.service | tail -1")
	t.Logf("addond-hello.service: %s", score)
	var exposure float64
	if _, err := fmt.Sscanf(score[strings.Index(score, ": ")+2:], "%f", &exposure); err != nil || exposure > 3.0 {
		t.Errorf("hello's exposure %q: want at most 3.0", score)
	}
	// addond itself: still the packaged unit, unprivileged.
	checkPackagedUnit(t)
	if c := capEff(t, mainPID(t, "addond")); c != 0 {
		t.Errorf("addond has capabilities %#x", c)
	}
	if text := unitProp(t, "addond", "StatusText"); !strings.Contains(text, "3/3 add-ons running") {
		t.Errorf("StatusText %q", text)
	}
}

// revoke: a grant ends when policy ends it. revokee, a capped sidecar
// granted cap_net_raw and cap_net_admin, runs beside pingsweep (cap_net_raw
// alone); the operator takes cap_net_admin out of capabilities.allow and
// restarts the helper, which removes revokee's copy and stops its unit:
// addond reports revokee failed with the reason, pingsweep runs on as the
// same process. The policy and the examples' assignment come back after.
func revoke(t *testing.T, l *lifecycle) {
	l.p.publish(t, "revokee", "1.0.0", "agent_sidecar", BinDir+"/pingsweep", "--os-capability", "cap_net_raw", "--os-capability", "cap_net_admin")
	assignExamples := func(more ...string) {
		l.p.assign(t, append([]string{"--addon", "hello@1.0.0", "--addon", "pingsweep@1.0.0", "--addon", "ticker@1.0.0",
			"--schedule", "ticker=*:*:0/5", "--arg", "ticker=ticks"}, more...)...)
	}
	assignExamples("--addon", "revokee@1.0.0")
	waitAddon(t, "revokee", 2*time.Minute, "running with its grant", runningHealthy("1.0.0"))
	revPID := unitProp(t, "addond-revokee.service", "MainPID")
	if c := capEff(t, revPID); c != 1<<12|1<<13 {
		t.Errorf("revokee CapEff %#x, want cap_net_admin and cap_net_raw", c)
	}
	pingPID := unitProp(t, "addond-pingsweep.service", "MainPID")
	policy := sh(t, "cat /etc/addond/capabilities.allow")
	sh(t, "sed -i '/^cap_net_admin$/d' /etc/addond/capabilities.allow && systemctl restart addond-updater.service")
	a := waitAddon(t, "revokee", time.Minute, "failed for the narrowed policy", func(a addonStatus) string {
		if a.State == "running" && a.Health == "healthy" || !strings.Contains(a.LastError, "cap_net_admin") {
			return "want it down, naming cap_net_admin"
		}
		return ""
	})
	t.Logf("revokee after the policy lost cap_net_admin: %s", a)
	if got := unitProp(t, "addond-revokee.service", "ActiveState"); got == "active" {
		t.Errorf("addond-revokee.service is still %s", got)
	}
	if _, err := os.Stat("/var/lib/addond-privileged/revokee/1.0.0"); !os.IsNotExist(err) {
		t.Errorf("revokee's capped copy is still there: %v", err)
	}
	if logs := sh(t, "journalctl -b -o cat --no-pager -u addond-updater.service | grep -c 'revoked a capped copy' || true"); logs == "0" {
		t.Errorf("the helper did not log the revocation")
	}
	if got := unitProp(t, "addond-pingsweep.service", "MainPID"); got != pingPID {
		t.Errorf("pingsweep (still granted) changed process: %s -> %s", pingPID, got)
	}
	// Back to the examples alone, and the shipped policy.
	assignExamples()
	eventually(t, time.Minute, "revokee removed", func() error {
		st, err := status()
		if err != nil {
			return err
		}
		if _, err := st.addon("revokee"); err == nil {
			return errors.New("still there")
		}
		return nil
	})
	if err := os.WriteFile("/etc/addond/capabilities.allow", []byte(policy+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitExamples(t, time.Minute)
}

// memhog needs 128 MiB in its main process (the shell holds it in a
// variable), then stays up.
const memhog = `#!/bin/sh
hog=$(head -c 134217728 /dev/zero | tr '\0' x)
exec sleep infinity
`

// memoryLimit: an add-on whose memory_max_bytes is smaller than it
// needs is OOM-killed (cgroup v2 enforces MemoryMax in the VM) and
// reported; addond and the other add-ons are unaffected.
func memoryLimit(t *testing.T, l *lifecycle) {
	p := l.p
	if err := os.WriteFile("/root/memhog", []byte(memhog), 0o755); err != nil {
		t.Fatal(err)
	}
	p.publish(t, "memhog", "1.0.0", "systemd_service", "/root/memhog")
	p.assign(t, "--addon", "hello@1.0.0", "--addon", "memhog@1.0.0")
	p.withResources(t, map[string]assignment.Resources{
		"memhog": {MemoryMaxBytes: 32 << 20},
		"hello":  {MemoryMaxBytes: 256 << 20},
	})
	agentPID := mainPID(t, "addond")
	restarts := unitProp(t, "addond", "NRestarts")
	sh(t, "addonctl reconcile")

	waitAddon(t, "hello", 2*time.Minute, "running", runningHealthy("1.0.0"))
	eventually(t, 2*time.Minute, "memhog OOM-killed", func() error {
		out, _ := try("journalctl --no-pager -o cat USER_UNIT=addond-memhog.service")
		if !strings.Contains(out, "oom-kill") && !strings.Contains(out, "OOM killer") {
			return fmt.Errorf("the user manager's log of addond-memhog.service:\n%s", out)
		}
		return nil
	})
	t.Logf("kernel: %s", sh(t, "journalctl -k --no-pager -o cat --grep 'Memory cgroup out of memory' | head -3"))
	a := waitAddon(t, "memhog", time.Minute, "reported", func(a addonStatus) string {
		if a.State == "running" || !strings.Contains(a.LastError, "OOM killer") {
			return "want not running, reported as killed by the OOM killer"
		}
		return ""
	})
	t.Logf("memhog: %s", a)
	if got := unitProp(t, "addond", "MainPID"); got != agentPID {
		t.Errorf("addond's MainPID went from %s to %s", agentPID, got)
	}
	if got := unitProp(t, "addond", "NRestarts"); got != restarts {
		t.Errorf("addond restarted: NRestarts %s, %s before", got, restarts)
	}
	waitAddon(t, "hello", 10*time.Second, "still running", runningHealthy("1.0.0"))
	if got := userUnitProp(t, "addond-hello.service", "MemoryMax"); got != fmt.Sprint(256<<20) {
		t.Errorf("hello MemoryMax=%s", got)
	}
}

// upgradeRollback: a new version that stays unhealthy through its
// probation is rolled back; a healthy one is promoted.
func upgradeRollback(t *testing.T, l *lifecycle) {
	p := l.p
	for _, v := range []string{"1.1.0", "1.2.0"} {
		p.publish(t, "hello", v, "agent_sidecar", BinDir+"/hello")
	}
	p.assign(t, "--addon", "hello@1.0.0")
	sh(t, "addonctl reconcile")
	waitAddon(t, "hello", 2*time.Minute, "running", runningHealthy("1.0.0"))

	if err := os.WriteFile("/root/unhealthy.json", []byte(`{"health": "unhealthy"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	p.assign(t, "--addon", "hello@1.1.0", "--config", "hello=/root/unhealthy.json")
	a := waitAddon(t, "hello", 2*time.Minute, "1.1.0 rolled back", func(a addonStatus) string {
		if a.State != "rolled_back" || a.Version != "1.1.0" || a.ActiveVersion != "1.0.0" || a.Health != "healthy" {
			return "want rolled_back to a healthy 1.0.0"
		}
		return ""
	})
	t.Logf("after the unhealthy upgrade: %s", a)
	if cur := sh(t, "readlink /var/lib/addond/addons/hello/current"); cur != "versions/1.0.0" {
		t.Errorf("current -> %s", cur)
	}

	p.assign(t, "--addon", "hello@1.2.0")
	a = waitAddon(t, "hello", 2*time.Minute, "1.2.0 promoted", runningHealthy("1.2.0"))
	t.Logf("after the healthy upgrade: %s", a)
	eventually(t, 30*time.Second, "promoted in the log", func() error {
		out, _ := try("journalctl --no-pager -u addond -o cat --grep promoted")
		if !strings.Contains(out, "1.2.0") {
			return fmt.Errorf("no promotion of 1.2.0 logged: %q", out)
		}
		return nil
	})
	if cur := sh(t, "readlink /var/lib/addond/addons/hello/current"); cur != "versions/1.2.0" {
		t.Errorf("current -> %s", cur)
	}
}

// TestStoreOutageReboot: with the store (MinIO on the guest's loopback)
// gone, a rebooted machine brings addond to READY and its add-ons back
// from last-known-good. It also proves the harness: the guest boots its
// own kernel with systemd as PID 1 on cgroup v2, and the test goes on
// after a reboot on the same disk.
func TestStoreOutageReboot(t *testing.T) {
	if !InVM() {
		boot(t, scenario{boots: 2, minio: true, timeout: 10 * time.Minute})
		return
	}
	comm, _ := os.ReadFile("/proc/1/comm")
	if strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q", comm)
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		t.Fatalf("no cgroup v2: %v", err)
	}
	const marker = "/var/lib/addond-vmtest/marker"
	switch Phase() {
	case 1:
		if err := os.WriteFile(marker, []byte("phase 1"), 0o644); err != nil {
			t.Fatal(err)
		}
		srv, err := miniotest.Start()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		store := srv.NewBucket(t)
		install(t, debPath)
		// addond's credentials for the store, as docs/operator-guide.md
		// says: root's file, handed to addond as a systemd credential.
		creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey)
		if err := os.WriteFile("/etc/addond/credentials/s3", []byte(creds), 0o600); err != nil {
			t.Fatal(err)
		}
		sh(t, "systemctl restart addond")
		p := newPublisher(t, store, srv.Env()...)
		publishExamples(t, p)
		// A sandboxed add-on tries to read them.
		probe := "#!/bin/sh\nif cat /run/credentials/addond.service/s3 >/dev/null 2>&1; then r=readable; else r=denied; fi\necho $r > \"$ADDOND_STATE_DIRECTORY/creds\"\nexec sleep infinity\n"
		if err := os.WriteFile("/root/credprobe", []byte(probe), 0o755); err != nil {
			t.Fatal(err)
		}
		p.publish(t, "credprobe", "1.0.0", "systemd_service", "/root/credprobe")
		p.assign(t, "--addon", "hello@1.0.0", "--addon", "pingsweep@1.0.0", "--addon", "ticker@1.0.0", "--addon", "credprobe@1.0.0",
			"--schedule", "ticker=*:*:0/5", "--arg", "ticker=ticks")
		configure(t, store)
		waitExamples(t, 2*time.Minute)
		eventually(t, time.Minute, "the probe's verdict", func() error {
			b, err := os.ReadFile("/var/lib/addond/addons/credprobe/data/creds")
			if err != nil {
				return err
			}
			if got := strings.TrimSpace(string(b)); got != "denied" {
				t.Fatalf("a sandboxed add-on read addond's S3 credentials: %s", got)
			}
			return nil
		})
		if mode := sh(t, "stat -c '%a %U' /etc/addond/credentials/s3"); mode != "600 root" {
			t.Errorf("/etc/addond/credentials/s3 is %s, want 600 root", mode)
		}

		srv.Stop()
		eventually(t, time.Minute, "the store outage noticed", func() error {
			st, err := status()
			if err != nil || st.DocumentError == "" {
				return fmt.Errorf("document_error %q, %v", st.DocumentError, err)
			}
			return nil
		})
		waitExamples(t, 10*time.Second)
		RequestReboot(t)
	case 2:
		if data, err := os.ReadFile(marker); err != nil || string(data) != "phase 1" {
			t.Fatalf("phase 1's file after the reboot: %q, %v", data, err)
		}
		eventually(t, 2*time.Minute, "addond READY after the reboot", func() error {
			st, err := status()
			if err != nil || !st.Ready {
				return fmt.Errorf("ready %v, %v", st.Ready, err)
			}
			return nil
		})
		// The store cannot be reached: the add-ons run as last accepted
		// (from their last-known-good specs and staged versions; the
		// transient units died with the old boot and were made anew).
		for _, id := range []string{"hello", "pingsweep", "ticker"} {
			a := waitAddon(t, id, 2*time.Minute, "running from last-known-good", func(a addonStatus) string {
				if a.State != "running" || a.ActiveVersion != "1.0.0" || a.Health != "healthy" {
					return "want running and healthy at 1.0.0"
				}
				return ""
			})
			t.Logf("%s", a)
		}
		for _, u := range []string{"addond-hello.service", "addond-pingsweep.service", "addond-ticker.timer"} {
			if got := addonUnitProp(t, u, "ActiveState"); got != "active" {
				t.Errorf("%s is %s", u, got)
			}
		}
		st, _ := status()
		if st.DocumentError == "" {
			t.Errorf("the store is gone, but addond reports no document error")
		}
		if text := unitProp(t, "addond", "StatusText"); !strings.Contains(text, "4/4 add-ons running, store unreachable") {
			t.Errorf("StatusText %q", text)
		}
		t.Logf("document_error: %s", st.DocumentError)
	}
}

// packageUpgrade: installing a newer build of the package restarts
// addond, and every add-on unit (sidecars included) keeps its process.
func packageUpgrade(t *testing.T, l *lifecycle) {
	waitExamples(t, 2*time.Minute)
	units := []string{"addond-hello.service", "addond-pingsweep.service"}
	before := addonUnitPIDs(t, units...)
	agentBefore := mainPID(t, "addond")
	timerBefore := userUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic")
	oldVersion := sh(t, "dpkg-query -W -f '${Version}' addond")

	sh(t, "DEBIAN_FRONTEND=noninteractive dpkg -i "+debUpgrade)
	newVersion := sh(t, "dpkg-query -W -f '${Version}' addond")
	if newVersion == oldVersion {
		t.Fatalf("still version %s after the upgrade", newVersion)
	}
	eventually(t, time.Minute, "addond restarted", func() error {
		if pid := unitProp(t, "addond", "MainPID"); pid == agentBefore || pid == "0" {
			return fmt.Errorf("MainPID %s (before: %s)", pid, agentBefore)
		}
		if st, err := status(); err != nil || !st.Ready {
			return fmt.Errorf("not ready: %v", err)
		}
		return nil
	})
	waitExamples(t, time.Minute)
	if after := addonUnitPIDs(t, units...); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("add-on processes changed across the package upgrade: %v -> %v", before, after)
	}
	if after := userUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic"); after != timerBefore {
		t.Errorf("the ticker timer was restarted: %s -> %s", timerBefore, after)
	}
	t.Logf("%s -> %s; add-on PIDs kept: %v", oldVersion, newVersion, before)
}

// purge: dpkg --purge stops the add-on units, disables lingering and
// deletes addond's state.
func purge(t *testing.T, l *lifecycle) {
	// Every kind of add-on runs when the package goes: a sandboxed
	// sidecar, a capped one, a timer.
	l.p.assign(t, "--addon", "hello@1.2.0", "--addon", "pingsweep@1.0.0", "--addon", "ticker@1.0.0",
		"--schedule", "ticker=*:*:0/5", "--arg", "ticker=ticks")
	sh(t, "addonctl reconcile")
	waitAddon(t, "hello", 2*time.Minute, "running", runningHealthy("1.2.0"))
	waitAddon(t, "pingsweep", 2*time.Minute, "running with cap_net_raw", runningHealthy("1.0.0"))
	uid := sh(t, "id -u addond")

	sh(t, "DEBIAN_FRONTEND=noninteractive dpkg --purge addond")
	eventually(t, time.Minute, "add-ons stopped", func() error {
		if out, err := try("pgrep -u addond -a"); err == nil {
			return fmt.Errorf("processes of addond left:\n%s", out)
		}
		return nil
	})
	for _, path := range []string{"/var/lib/addond", "/var/lib/addond-privileged", "/var/lib/systemd/linger/addond"} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after purge (%v)", path, err)
		}
	}
	if got := sh(t, "loginctl show-user "+uid+" -p Linger --value 2>/dev/null || echo gone"); got != "no" && got != "gone" {
		t.Errorf("lingering: %s", got)
	}
	if got, _ := try("systemctl is-active user@" + uid + ".service"); got == "active" {
		t.Errorf("user@%s.service is still active", uid)
	}
	for _, u := range []string{"addond.service", "addond-updater.socket"} {
		if got := unitProp(t, u, "LoadState"); got != "not-found" {
			t.Errorf("%s LoadState=%s after purge", u, got)
		}
	}
}
