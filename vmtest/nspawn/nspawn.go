// Package nspawn boots a real systemd — Debian 12 as PID 1 in a
// systemd-nspawn container — for tests of code that talks to systemd over
// D-Bus. No D-Bus mocks: a test copies its own test binary into a fresh
// root, boots it, runs the binary inside as the lingering addond user (whose
// user manager is what addond drives), and reads the results back.
//
// The root is built once with mmdebstrap into the test cache (about 15 s,
// 220 MB) and extracted per machine (about 1 s). Needs root,
// systemd-container and mmdebstrap (`make test` installs both).
package nspawn

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// Packages in the root: systemd as init, the user manager's bus, and the
// tools tests use.
var packages = []string{
	"systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
	"libcap2-bin", "ca-certificates", "procps",
}

// AddonUID is the uid of the addond user inside machines.
const AddonUID = 990

// rootfs is the cached root, keyed by its package list.
var rootfs = &vmtest.Rootfs{
	Name:   "rootfs-bookworm",
	Recipe: strings.Join(packages, ","),
	Args:   []string{"--variant=minbase", "--include=" + strings.Join(packages, ",")},
}

// Require fails the test under `make test` (ADDOND_TEST_STRICT=1) and skips
// it elsewhere when a machine cannot be booted here.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"systemd-nspawn", "mmdebstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	vmtest.Unavailable(t, "needs "+strings.Join(missing, ", ")+" to boot systemd (apt-get install systemd-container mmdebstrap)")
}

// Machine is one root filesystem, booted by Boot.
type Machine struct {
	Root string
}

// New extracts a fresh root with the addond user (uid AddonUID, lingering)
// in it.
func New(t testing.TB) *Machine {
	t.Helper()
	Require(t)
	if err := rootfs.Build(); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root")
	os.MkdirAll(root, 0o755)
	if out, err := exec.Command("tar", "-xf", rootfs.Path(), "-C", root).CombinedOutput(); err != nil {
		t.Fatalf("extract root: %v\n%s", err, out)
	}
	m := &Machine{Root: root}
	if out, err := exec.Command("chroot", root, "useradd", "--system", "--uid", fmt.Sprint(AddonUID), "--user-group",
		"--home-dir", "/var/lib/addond", "--create-home", "--shell", "/usr/sbin/nologin", "addond").CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	m.WriteFile(t, "/var/lib/systemd/linger/addond", nil, 0o644)
	return m
}

// WriteFile writes a file into the machine.
func (m *Machine) WriteFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(m.Root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

// CopyFile copies a host file into the machine.
func (m *Machine) CopyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	m.WriteFile(t, dst, data, mode)
}

// Result is what a boot's driver left behind.
type Result struct {
	Output   string // the driver's stdout and stderr
	ExitCode int
	Console  string // the container's console, for diagnosis
}

// Boot boots the machine with systemd as PID 1, runs script (sh) as root
// once the system and the addond user's manager are up, powers off, and
// returns what the script printed and its exit status.
func (m *Machine) Boot(t testing.TB, script string, timeout time.Duration) Result {
	t.Helper()
	m.WriteFile(t, "/usr/local/sbin/addond-test-driver", []byte("#!/bin/sh\n"+script+"\n"), 0o755)
	m.WriteFile(t, "/etc/systemd/system/addond-test.service", []byte(fmt.Sprintf(`[Unit]
Description=addond test driver
After=multi-user.target user@%d.service
Wants=user@%d.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c '/usr/local/sbin/addond-test-driver >/addond-test.out 2>&1; echo $? >/addond-test.rc; systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
`, AddonUID, AddonUID)), 0o644)
	os.MkdirAll(filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants"), 0o755)
	os.Symlink("/etc/systemd/system/addond-test.service", filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants/addond-test.service"))
	os.Remove(filepath.Join(m.Root, "addond-test.out"))
	os.Remove(filepath.Join(m.Root, "addond-test.rc"))

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The machine's cgroup tree is rooted where nspawn starts
	// (--keep-unit): each machine gets a cgroup of its own, or machines
	// booted side by side (go test runs packages in parallel) share
	// .../app.slice/addond-x.service and disturb each other.
	cgroups := machineCgroups(t)
	cmd := exec.CommandContext(ctx, "sh", "-c", `for cg in $ADDOND_MACHINE_CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 1; done; exec "$@"`,
		"sh", "systemd-nspawn", "-D", m.Root, "--boot", "--register=no", "--keep-unit", "--console=pipe", "-q")
	cmd.Env = append(os.Environ(), "ADDOND_MACHINE_CGROUPS="+strings.Join(cgroups, " "))
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	err := cmd.Run()
	res := Result{Console: console.String(), ExitCode: -1}
	out, _ := os.ReadFile(filepath.Join(m.Root, "addond-test.out"))
	res.Output = string(out)
	rc, rerr := os.ReadFile(filepath.Join(m.Root, "addond-test.rc"))
	if rerr != nil {
		t.Fatalf("the machine's test driver did not finish (nspawn: %v):\n--- driver output:\n%s\n--- console:\n%s", err, res.Output, res.Console)
	}
	fmt.Sscan(string(rc), &res.ExitCode)
	return res
}

// machineCgroups creates a fresh cgroup, under this process's own, in each
// hierarchy that tracks processes for systemd (cgroup2, and the v1
// name=systemd hierarchy of a hybrid host), and removes them — with
// whatever the machine left inside, empty after its poweroff — when the
// test ends.
func machineCgroups(t testing.TB) []string {
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	mountOf := func(v2 bool) string {
		for _, line := range strings.Split(string(mountinfo), "\n") {
			pre, post, ok := strings.Cut(line, " - ")
			f, g := strings.Fields(pre), strings.Fields(post)
			if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" {
				continue
			}
			if (v2 && g[0] == "cgroup2") || (!v2 && g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "name=systemd")) {
				return f[4]
			}
		}
		return ""
	}
	var buf [6]byte
	rand.Read(buf[:])
	name := fmt.Sprintf("addond-machine-%x", buf)
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var at string
		switch {
		case parts[0] == "0" && parts[1] == "":
			at = mountOf(true)
		case parts[1] == "name=systemd":
			at = mountOf(false)
		}
		if at == "" {
			continue
		}
		dir := filepath.Join(at, parts[2], name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Logf("no cgroup of its own for the machine: %v", err)
			continue
		}
		dirs = append(dirs, dir)
		t.Cleanup(func() {
			var all []string
			filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					all = append(all, path)
				}
				return nil
			})
			for _, d := range slices.Backward(all) {
				os.Remove(d)
			}
		})
	}
	return dirs
}

// InMachine reports whether this test binary runs inside a machine booted
// by RunTest.
func InMachine() bool { return os.Getenv("ADDOND_IN_MACHINE") == "1" }

// BinDir is where RunTest puts Files inside the machine.
const BinDir = "/test/bin"

// RunOptions are one RunTest.
type RunOptions struct {
	// Run is the -test.run pattern of the tests to run inside (the
	// calling test by default).
	Run string
	// Files are host executables copied into BinDir under their base
	// names.
	Files []string
	// Dirs are host directories copied into the machine (host → machine
	// path).
	Dirs map[string]string
	// Setup is shell run as root before the tests (e.g. setcap).
	Setup string
	// AsRoot runs the tests as root instead of the addond user.
	AsRoot bool
	// Env is extra environment for the tests.
	Env []string
	// Timeout bounds the boot [3m].
	Timeout time.Duration
}

// RunTest boots a fresh machine, runs this test binary's tests matching
// o.Run inside it — as the lingering addond user, with its user manager
// up — and fails t unless they pass. The inside run's output is logged.
// Call it from a test that, when InMachine(), does the real work instead.
func RunTest(t *testing.T, o RunOptions) *Machine {
	t.Helper()
	m := New(t)
	if o.Run == "" {
		o.Run = "^" + t.Name() + "$"
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	m.CopyFile(t, os.Args[0], "/test/addond.test", 0o755)
	for _, f := range o.Files {
		m.CopyFile(t, f, filepath.Join(BinDir, filepath.Base(f)), 0o755)
	}
	for src, dst := range o.Dirs {
		dst = filepath.Join(m.Root, dst)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("copy %s into the machine: %v\n%s", src, err, out)
		}
	}
	user := "runuser -u addond --"
	if o.AsRoot {
		user = ""
	}
	env := strings.Join(append([]string{"ADDOND_IN_MACHINE=1", fmt.Sprintf("XDG_RUNTIME_DIR=/run/user/%d", AddonUID)}, o.Env...), " ")
	script := fmt.Sprintf(`
for i in $(seq 1 200); do [ -S /run/user/%[1]d/bus ] && [ -S /run/user/%[1]d/systemd/private ] && break; sleep 0.05; done
chmod 0755 /test
%[2]s
cd /var/lib/addond
%[3]s env %[4]s /test/addond.test -test.run '%[5]s' -test.v -test.count=1 -test.timeout=%[6]s`,
		AddonUID, o.Setup, user, env, o.Run, (o.Timeout - 20*time.Second).String())
	res := m.Boot(t, script, o.Timeout)
	if res.ExitCode != 0 || !strings.Contains(res.Output, "--- PASS") || strings.Contains(res.Output, "--- FAIL") {
		t.Fatalf("inside the machine: exit %d\n%s\n--- console:\n%s", res.ExitCode, res.Output, tail(res.Console, 4000))
	}
	t.Logf("inside the machine:\n%s", res.Output)
	return m
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
