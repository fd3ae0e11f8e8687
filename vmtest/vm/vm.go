// Package vm boots a real Debian 12 virtual machine — its own kernel,
// systemd as PID 1, cgroup v2 that enforces resource limits — for tests of
// what only a whole machine shows: the packages' maintainer scripts, the
// packaged hardened units, reboots, memory limits. No network: the guest
// has no NIC (-nic none); everything a test needs is copied in.
//
// A test copies its own test binary into a fresh root, boots it, and runs
// the binary inside as root from a oneshot unit (the driver) once the
// system is up; the driver writes the output to /results and powers off,
// and the host reads /results back from the disk image with debugfs. A
// test can ask for a reboot (RequestReboot) and continues in a second
// phase on the same disk.
//
// The bootable root (mmdebstrap with a kernel and an initramfs) is built
// once into the test cache, keyed by its recipe (about 90 s, 600 MB), and
// extracted per machine. A boot under TCG takes about 15 s; KVM is used
// only when a short probe boot proves it works here. Needs root,
// mmdebstrap, qemu-system-x86 and e2fsprogs (`make deps` installs them).
package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// Packages in the root: systemd as init, the user manager's bus (addond's
// Depends), a kernel that boots it, and the tools tests use.
var packages = []string{
	"systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
	"libcap2-bin", "ca-certificates", "procps",
	"linux-image-amd64", "initramfs-tools", "udev", "kmod",
}

// hooks run in the finished root ($1) before it is packed.
var hooks = []string{
	// The kernel's postinst leaves backups next to the initrd.
	`rm -f "$1"/boot/*.dpkg-bak "$1"/boot/*.new`,
	`echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"`,
	`echo addond-vm > "$1/etc/hostname"`,
	// No login prompt on the console we capture.
	`ln -sf /dev/null "$1/etc/systemd/system/serial-getty@ttyS0.service"`,
	`ln -sf /dev/null "$1/etc/systemd/system/getty@tty1.service"`,
}

// recipe is what the cached root is built from: its cache key.
func recipe() string {
	return "bookworm minbase\n" + strings.Join(packages, ",") + "\n" + strings.Join(hooks, "\n")
}

// rootfs is the cached bootable root, keyed by its recipe.
var rootfs = &vmtest.Rootfs{Name: "vmroot-bookworm", Recipe: recipe(), Args: mmdebstrapArgs()}

func mmdebstrapArgs() []string {
	args := []string{"--variant=minbase", "--include=" + strings.Join(packages, ",")}
	for _, h := range hooks {
		args = append(args, "--customize-hook="+h)
	}
	return args
}

var tools = []string{"mmdebstrap", "qemu-system-x86_64", "mkfs.ext4", "debugfs"}

// Require fails the test under `make test` (ADDOND_TEST_STRICT=1) and skips
// it elsewhere when a machine cannot be booted here.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	vmtest.Unavailable(t, "needs "+strings.Join(missing, ", ")+" to boot a VM (apt-get install mmdebstrap qemu-system-x86 e2fsprogs)")
}

// Machine is one root filesystem, made into a disk image and booted by
// Boot.
type Machine struct {
	Root string // the root tree; what is written here before the first boot is on the disk
	dir  string
	disk string // the disk image, made at the first boot
	// Kernel and Initrd boot it (from Root/boot).
	Kernel, Initrd string
	boots          int
}

// New extracts a fresh bootable root.
func New(t testing.TB) *Machine {
	t.Helper()
	Require(t)
	if err := rootfs.Build(); err != nil {
		t.Fatal(err)
	}
	go Accel() // probes KVM (once) while the machine is made
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(root, 0o755)
	if out, err := exec.Command("tar", "--xattrs", "--xattrs-include=*", "-xf", rootfs.Path(), "-C", root).CombinedOutput(); err != nil {
		t.Fatalf("extract root: %v\n%s", err, out)
	}
	m := &Machine{Root: root, dir: dir}
	for _, f := range []struct {
		dst  *string
		glob string
	}{{&m.Kernel, "vmlinuz-*"}, {&m.Initrd, "initrd.img-*"}} {
		found, _ := filepath.Glob(filepath.Join(root, "boot", f.glob))
		if len(found) != 1 {
			t.Fatalf("the root's /boot has %d %s, want one", len(found), f.glob)
		}
		*f.dst = found[0]
	}
	return m
}

// WriteFile writes a file into the machine (before its first boot).
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

// CopyFile copies a host file into the machine (before its first boot).
func (m *Machine) CopyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(m.Root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

// Boot is what one boot left behind.
type Boot struct {
	Console string        // the serial console (kernel, systemd, the driver's output)
	Results string        // /results, copied out of the disk after the boot
	Took    time.Duration // from starting qemu to its exit
	Accel   string        // kvm or tcg
}

// DiskSize is the size of the machine's disk image.
const DiskSize = "3G"

// Boot boots the machine (making its disk image from Root the first time;
// later boots reuse the disk, so they see what earlier ones left) until
// the guest powers off or reboots (qemu runs with -no-reboot), or until
// timeout. Then it copies /results out of the disk.
//
// A guest whose kernel reports a CPU stall or soft lockup before the test
// driver started is stopped and booted again (twice at most): under TCG on
// a loaded host, boots now and then deadlock in early userspace.
func (m *Machine) Boot(t testing.TB, timeout time.Duration) (Boot, error) {
	t.Helper()
	m.boots++
	var b Boot
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if m.disk == "" || (m.boots == 1 && attempt > 1) {
			m.disk = filepath.Join(m.dir, "disk.img")
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "root", "-d", m.Root, m.disk, DiskSize).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4: %v\n%s", err, out)
			}
		}
		var stalled bool
		b, stalled, err = m.boot(timeout, attempt)
		if !stalled {
			break
		}
		t.Logf("boot %d (%s), attempt %d: the guest stalled before the test driver started, after %v; booting again:\n%s",
			m.boots, b.Accel, attempt, b.Took.Round(100*time.Millisecond), tail(b.Console, 1500))
		if b.Accel == "kvm" {
			t.Logf("KVM does not boot the machine: TCG from now on")
			accelMu.Lock()
			accel, accelWhy = "tcg", "a boot under KVM stalled"
			accelMu.Unlock()
		}
	}
	return b, err
}

// startTimeout is how long, by accelerator, a guest may take to start its
// test driver before it counts as stalled (a TCG boot takes 15 to 60 s
// on a loaded host, a KVM boot a few seconds).
var startTimeout = map[string]time.Duration{"tcg": 3 * time.Minute, "kvm": time.Minute}

// stallMarks are what a deadlocked guest kernel prints.
var stallMarks = []string{"soft lockup - CPU", "self-detected stall on CPU", "rcu_preempt detected stalls"}

// boot is one attempt of Boot; stalled reports a guest stopped for a CPU
// stall before its driver started.
func (m *Machine) boot(timeout time.Duration, attempt int) (b Boot, stalled bool, err error) {
	accel := Accel()
	b.Accel = accel
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stallCtx, stop := context.WithCancel(ctx)
	defer stop()
	console := filepath.Join(m.dir, fmt.Sprintf("console-%d.%d.log", m.boots, attempt))
	done := make(chan struct{})
	start := time.Now()
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			data, _ := os.ReadFile(console)
			if bytes.Contains(data, []byte(driverStarted)) {
				return
			}
			if time.Since(start) > startTimeout[accel] {
				stalled = true
				stop()
				return
			}
			for _, mark := range stallMarks {
				if bytes.Contains(data, []byte(mark)) {
					stalled = true
					stop()
					return
				}
			}
		}
	}()
	err = qemu(stallCtx, accel, m.Kernel, m.Initrd, "root=/dev/vda rw console=ttyS0 quiet panic=-1", m.disk, console)
	b.Took = time.Since(start)
	close(done)
	watch.Wait()
	data, _ := os.ReadFile(console)
	b.Console = string(data)
	switch {
	case stalled:
		return b, true, fmt.Errorf("the guest stalled (boot %d, %s)", m.boots, accel)
	case ctx.Err() != nil:
		return b, false, fmt.Errorf("the machine did not power off within %v (boot %d, %s)", timeout, m.boots, accel)
	case err != nil:
		return b, false, fmt.Errorf("qemu (boot %d, %s): %v", m.boots, accel, err)
	}
	out := filepath.Join(m.dir, fmt.Sprintf("results-%d", m.boots))
	os.RemoveAll(out)
	os.MkdirAll(out, 0o755)
	if o, err := exec.Command("debugfs", "-R", "rdump /results "+out, m.disk).CombinedOutput(); err != nil {
		return b, false, fmt.Errorf("debugfs: %v\n%s", err, o)
	}
	b.Results = filepath.Join(out, "results")
	return b, false, nil
}

// qemu runs one boot, the serial console into the file console.
func qemu(ctx context.Context, accel, kernel, initrd, cmdline, disk, console string) error {
	args := []string{
		"-accel", accel, "-m", "2048", "-smp", "2",
		"-nographic", "-no-reboot", "-nic", "none", "-monitor", "none",
		"-serial", "file:" + console,
		"-kernel", kernel, "-append", cmdline,
	}
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	if disk != "" {
		args = append(args, "-drive", "file="+disk+",format=raw,if=virtio")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

var (
	accelOnce sync.Once
	accelMu   sync.Mutex
	accel     string
	accelWhy  string
)

// Accel is the accelerator machines boot with: "kvm" only when /dev/kvm
// exists and a probe boot under it (the kernel up to its panic for want of
// a root, with a timeout) finishes; else "tcg". Nested KVM on some hosts
// opens /dev/kvm fine and then hangs the guest. ADDOND_VM_ACCEL=kvm|tcg
// skips the probe.
func Accel() string {
	accelOnce.Do(func() {
		a, why := probeAccel()
		accelMu.Lock()
		accel, accelWhy = a, why
		accelMu.Unlock()
	})
	accelMu.Lock()
	defer accelMu.Unlock()
	return accel
}

// AccelReason says why Accel chose what it did.
func AccelReason() string {
	Accel()
	accelMu.Lock()
	defer accelMu.Unlock()
	return accelWhy
}

// probeTimeout bounds the KVM probe boot: where KVM works, the kernel
// reaches its panic in a second or two.
const probeTimeout = 10 * time.Second

func probeAccel() (string, string) {
	switch a := os.Getenv("ADDOND_VM_ACCEL"); a {
	case "kvm", "tcg":
		return a, "ADDOND_VM_ACCEL=" + a
	case "":
	default:
		return "tcg", "ADDOND_VM_ACCEL=" + a + " is neither kvm nor tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", "no usable /dev/kvm: " + err.Error()
	}
	f.Close()
	kernels, _ := filepath.Glob(filepath.Join(probeDir(), "vmlinuz-*"))
	if len(kernels) == 0 {
		return "tcg", "no kernel to probe KVM with"
	}
	dir, err := os.MkdirTemp("", "addond-kvm-probe")
	if err != nil {
		return "tcg", err.Error()
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	start := time.Now()
	err = qemu(ctx, "kvm", kernels[0], "", "console=ttyS0 panic=-1 root=/dev/vdz", "", console)
	out, _ := os.ReadFile(console)
	switch {
	case ctx.Err() != nil:
		return "tcg", fmt.Sprintf("a KVM probe boot hung (%v)", probeTimeout)
	case err != nil:
		return "tcg", "a KVM probe boot failed: " + err.Error()
	case !bytes.Contains(out, []byte("Kernel panic")):
		return "tcg", "a KVM probe boot did not reach the kernel's panic"
	}
	return "kvm", fmt.Sprintf("a KVM probe boot finished in %v", time.Since(start).Round(time.Millisecond))
}

// probeDir holds a kernel for the KVM probe: the cached root's /boot.
func probeDir() string {
	dir := filepath.Join(vmtest.CacheDir(), strings.TrimSuffix(filepath.Base(rootfs.Path()), ".tar")+"-boot")
	if k, _ := filepath.Glob(filepath.Join(dir, "vmlinuz-*")); len(k) > 0 {
		return dir
	}
	if rootfs.Build() != nil {
		return dir
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "boot")
	if err != nil {
		return dir
	}
	defer os.RemoveAll(tmp)
	if exec.Command("tar", "-xf", rootfs.Path(), "-C", tmp, "--wildcards", "./boot/vmlinuz-*").Run() != nil {
		return dir
	}
	os.Rename(filepath.Join(tmp, "boot"), dir)
	return dir
}

// In the guest.

// InVM reports whether this test binary runs inside a machine booted by
// RunTest.
func InVM() bool { return os.Getenv("ADDOND_IN_VM") == "1" }

// Phase is the boot the test runs in: 1, or 2 after RequestReboot.
func Phase() int {
	n, _ := strconv.Atoi(os.Getenv("ADDOND_VM_PHASE"))
	return n
}

// RequestReboot asks the driver to reboot the machine once this phase's
// tests end; the tests run again in the next phase (see Phase).
func RequestReboot(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("%s/phase-%d.reboot", ResultsDir, Phase()), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ResultsDir is where the driver (and tests) leave what the host reads
// back after the machine powered off.
const ResultsDir = "/results"

// BinDir is where RunTest puts Files inside the machine.
const BinDir = "/test/bin"

// RunOptions are one RunTest.
type RunOptions struct {
	// Run is the -test.run pattern of the tests to run inside (the
	// calling test by default).
	Run string
	// Files are host files copied into BinDir under their base names.
	Files []string
	// Copy are host files copied into the machine (host → machine
	// path), executable.
	Copy map[string]string
	// Env is extra environment for the tests.
	Env []string
	// Boots is how many boots the test may ask for [1]: each phase but
	// the last may end with RequestReboot.
	Boots int
	// Timeout bounds each boot [5m].
	Timeout time.Duration
}

// driverStarted is what the driver prints on the console first.
const driverStarted = "addond-vmtest: phase"

// driver runs the test binary from a oneshot unit after boot, counts the
// phases on the disk, and reboots or powers off.
const driver = `#!/bin/sh
mkdir -p /results /var/lib/addond-vmtest
phase=$(cat /var/lib/addond-vmtest/phase 2>/dev/null || echo 0)
phase=$((phase + 1))
echo "%[4]s $phase" >/dev/ttyS0
echo $phase >/var/lib/addond-vmtest/phase
sync
{
	cd /test && env ADDOND_IN_VM=1 ADDOND_VM_PHASE=$phase %[1]s \
		/test/addond.test -test.run '%[2]s' -test.v -test.count=1 -test.timeout=%[3]s
	echo $? >/results/phase-$phase.rc
} 2>&1 | tee /dev/ttyS0 >/results/phase-$phase.out
sync
if [ -e /results/phase-$phase.reboot ]; then
	systemctl --no-block reboot
else
	systemctl --no-block poweroff
fi
`

const driverUnit = `[Unit]
Description=addond VM test driver
After=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
StandardOutput=journal+console
ExecStart=/usr/local/sbin/addond-vmtest-driver

[Install]
WantedBy=multi-user.target
`

// PhaseResult is what one boot's tests did.
type PhaseResult struct {
	Output   string
	ExitCode int
	Reboot   bool // the tests asked for another boot
	Boot     Boot
}

// RunTest boots a fresh machine, runs this test binary's tests matching
// o.Run inside it as root from a oneshot unit once the system is up, and
// fails t unless they pass — in every phase, rebooting as they ask. Each
// phase's output is logged. Call it from a test that, when InVM(), does
// the real work instead.
func RunTest(t *testing.T, o RunOptions) []PhaseResult {
	t.Helper()
	m := New(t)
	if o.Run == "" {
		o.Run = "^" + t.Name() + "$"
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Boots == 0 {
		o.Boots = 1
	}
	m.CopyFile(t, os.Args[0], "/test/addond.test", 0o755)
	for _, f := range o.Files {
		m.CopyFile(t, f, filepath.Join(BinDir, filepath.Base(f)), 0o755)
	}
	for src, dst := range o.Copy {
		m.CopyFile(t, src, dst, 0o755)
	}
	env := ""
	for _, e := range append([]string{"HOME=/root"}, o.Env...) {
		env += " '" + strings.ReplaceAll(e, "'", `'\''`) + "'"
	}
	m.WriteFile(t, "/usr/local/sbin/addond-vmtest-driver",
		[]byte(fmt.Sprintf(driver, env, o.Run, (o.Timeout-30*time.Second).String(), driverStarted)), 0o755)
	m.WriteFile(t, "/etc/systemd/system/addond-vmtest.service", []byte(driverUnit), 0o644)
	os.MkdirAll(filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants"), 0o755)
	os.Symlink("/etc/systemd/system/addond-vmtest.service", filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants/addond-vmtest.service"))

	var phases []PhaseResult
	for phase := 1; phase <= o.Boots; phase++ {
		b, err := m.Boot(t, o.Timeout)
		if err != nil {
			t.Fatalf("phase %d: %v\n--- console:\n%s", phase, err, tail(b.Console, 8000))
		}
		if phase == 1 {
			t.Logf("accelerator %s: %s", b.Accel, AccelReason())
		}
		t.Logf("boot %d (%s) took %v", phase, b.Accel, b.Took.Round(100*time.Millisecond))
		p := PhaseResult{ExitCode: -1, Boot: b}
		out, err := os.ReadFile(filepath.Join(b.Results, fmt.Sprintf("phase-%d.out", phase)))
		p.Output = string(out)
		rc, rerr := os.ReadFile(filepath.Join(b.Results, fmt.Sprintf("phase-%d.rc", phase)))
		if err != nil || rerr != nil {
			t.Fatalf("phase %d: the machine's test driver did not finish:\n--- output:\n%s\n--- console:\n%s", phase, p.Output, tail(b.Console, 8000))
		}
		fmt.Sscan(string(rc), &p.ExitCode)
		_, err = os.Stat(filepath.Join(b.Results, fmt.Sprintf("phase-%d.reboot", phase)))
		p.Reboot = err == nil
		phases = append(phases, p)
		if p.ExitCode != 0 || !strings.Contains(p.Output, "--- PASS") || strings.Contains(p.Output, "--- FAIL") {
			t.Fatalf("inside the machine, phase %d: exit %d\n%s\n--- console:\n%s", phase, p.ExitCode, p.Output, tail(b.Console, 8000))
		}
		t.Logf("inside the machine, phase %d:\n%s", phase, p.Output)
		if !p.Reboot {
			if phase < o.Boots {
				t.Fatalf("phase %d ended without asking for the reboot the test expects (%d boots)", phase, o.Boots)
			}
			break
		}
		if phase == o.Boots {
			t.Fatalf("phase %d asked for a reboot, but the test allows %d boots", phase, o.Boots)
		}
	}
	return phases
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
