package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/vmtest"
)

// agentUser is this package's throwaway agent user (capabilities' tests
// use another, so that both packages can run at once).
const agentUser = "addond-capc"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// updater builds addond-updater into a root-owned 0755 directory that
// every user can reach.
func updater(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		vmtest.Unavailable(t, "no go tool to build addond-updater")
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("/var/lib", "capc-bin-"); buildErr != nil {
			return
		}
		if buildErr = os.Chmod(buildDir, 0o755); buildErr != nil {
			return
		}
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(buildDir, "addond-updater"), ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building addond-updater: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(buildDir, "addond-updater")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

type fixture struct {
	base, runtime, priv, trust, policy, pkg string
	uid, gid                                int
	data                                    []byte
}

// newFixture lays out what `apply` needs: an agent user, its runtime
// root with a staged binary, a trust dir and policy (root's), and the
// signed package.json with its .sig beside it.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	vmtest.RequireRoot(t, "addond-updater runs as root")
	if _, err := user.Lookup(agentUser); err == nil {
		exec.Command("userdel", agentUser).Run()
	}
	var out []byte
	var err error
	for range 20 { // the capabilities tests may hold the passwd lock
		out, err = exec.Command("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", agentUser).CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("userdel", agentUser).Run()
		exec.Command("groupdel", agentUser).Run()
	})
	u, err := user.Lookup(agentUser)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{}
	f.uid, _ = strconv.Atoi(u.Uid)
	f.gid, _ = strconv.Atoi(u.Gid)

	if f.base, err = os.MkdirTemp("/var/lib", "capc-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(f.base) })
	os.Chmod(f.base, 0o755)
	f.runtime = filepath.Join(f.base, "runtime")
	f.priv = filepath.Join(f.base, "priv")
	f.trust = filepath.Join(f.base, "trust")
	f.policy = filepath.Join(f.base, "capabilities.allow")
	f.pkg = filepath.Join(f.base, "pkg", "package.json")

	if f.data, err = os.ReadFile("/bin/true"); err != nil {
		t.Fatal(err)
	}
	dir := f.runtime
	for _, p := range []string{"", "addons", "pingsweep", "versions", "1.0.0"} {
		dir = filepath.Join(dir, p)
		os.Mkdir(dir, 0o755)
		if err := os.Chown(dir, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
	}
	staged := filepath.Join(dir, "pingsweep")
	if err := os.WriteFile(staged, f.data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(staged, f.uid, f.gid); err != nil {
		t.Fatal(err)
	}

	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	os.Mkdir(f.trust, 0o755)
	if err := os.WriteFile(filepath.Join(f.trust, "publisher.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.policy, []byte(capabilities.DefaultPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(f.data)
	raw, _ := json.Marshal(map[string]any{
		"addon_id": "pingsweep", "version": "1.0.0", "os_capabilities": []string{"cap_net_raw", "cap_net_admin"},
		"artifacts": map[string]any{runtime.GOOS + "/" + runtime.GOARCH: map[string]any{
			"object_key": "artifacts/pingsweep/1.0.0/linux-amd64/pingsweep", "sha256": hex.EncodeToString(sum[:]),
			"size": len(f.data), "signature": hex.EncodeToString(ed25519.Sign(key, f.data)), "key_id": "00", "binary_name": "pingsweep",
		}},
	})
	os.Mkdir(filepath.Dir(f.pkg), 0o755)
	if err := os.WriteFile(f.pkg, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.pkg+".sig", []byte(hex.EncodeToString(ed25519.Sign(key, raw))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) configFlags() []string {
	return []string{"--runtime-root", f.runtime, "--privileged-root", f.priv, "--trust", f.trust, "--policy", f.policy, "--agent-user", agentUser}
}

func (f *fixture) applyArgs(extra ...string) []string {
	args := append([]string{"apply", "--addon", "pingsweep", "--version", "1.0.0", "--file", "pingsweep", "--package", f.pkg}, f.configFlags()...)
	return append(args, extra...)
}

// runAs runs the updater with args, as uid (setpriv) unless uid is 0.
func runAs(t *testing.T, uid int, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := updater(t)
	cmd := exec.Command(bin, args...)
	if uid != 0 {
		id := strconv.Itoa(uid)
		cmd = exec.Command("setpriv", append([]string{"--reuid=" + id, "--regid=" + id, "--clear-groups", bin}, args...)...)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("addond-updater %v did not finish", args)
	}
	return o.String(), e.String(), err
}

// snapshot lists every file below root: kind, mode, owner, content hash.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			caps := make([]byte, 64)
			n, _ := unix.Lgetxattr(path, capabilities.XattrName, caps)
			desc += fmt.Sprintf(" %x %x", sha256.Sum256(data), caps[:max(n, 0)])
		}
		snap[path] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, b := range before {
		if a := after[p]; a != b {
			t.Errorf("%s changed: %q → %q", p, b, a)
		}
	}
	for p, a := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created: %s", p, a)
		}
	}
}

// Neither apply nor serve runs unless root, and neither leaves anything.
func TestRefusesUnlessRoot(t *testing.T) {
	f := newFixture(t)
	sock := filepath.Join(f.base, "run", "updater.sock")
	before := snapshot(t, f.base)
	for _, args := range [][]string{
		f.applyArgs(),
		append([]string{"serve", "--listen", sock}, f.configFlags()...),
	} {
		for _, uid := range []int{65534, f.uid} {
			_, stderr, err := runAs(t, uid, args...)
			var ee *exec.ExitError
			if err == nil || !strings.Contains(stderr, "must run as root") {
				t.Fatalf("%s as uid %d: %v\n%s", args[0], uid, err, stderr)
			}
			if errors.As(err, &ee) && ee.ExitCode() != 1 {
				t.Errorf("%s as uid %d: exit %d, want 1", args[0], uid, ee.ExitCode())
			}
		}
	}
	sameSnapshot(t, before, snapshot(t, f.base))
	// And root may, afterwards.
	if _, stderr, err := runAs(t, 0, f.applyArgs()...); err != nil {
		t.Fatalf("apply as root after the refusals: %v\n%s", err, stderr)
	}
}

func TestApplyByHand(t *testing.T) {
	f := newFixture(t)
	copyPath := filepath.Join(f.priv, "pingsweep", "1.0.0", "pingsweep")
	check := func(want capabilities.Set) {
		t.Helper()
		c, err := os.Open(copyPath)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fi, _ := c.Stat()
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != 0o750 || st.Uid != 0 || int(st.Gid) != f.gid {
			t.Errorf("copy: %v %d:%d, want -rwxr-x--- 0:%d", fi.Mode(), st.Uid, st.Gid, f.gid)
		}
		got, _ := os.ReadFile(copyPath)
		if !bytes.Equal(got, f.data) {
			t.Error("copy: not the staged bytes")
		}
		fc, err := capabilities.GetFile(c)
		if err != nil || fc.Permitted != want || !fc.Effective {
			t.Errorf("copy caps: %+v %v, want %s+ep", fc, err, want)
		}
		entries, _ := os.ReadDir(filepath.Dir(copyPath))
		if len(entries) != 3 { // the signed package and its signature
			t.Errorf("%d entries beside the copy, want its signed package and signature", len(entries)-1)
		}
	}
	netRaw, _ := capabilities.ParseSet([]string{"cap_net_raw"})
	both, _ := capabilities.ParseSet([]string{"cap_net_raw", "cap_net_admin"})

	// Everything the package grants, by default; twice.
	for range 2 {
		stdout, stderr, err := runAs(t, 0, f.applyArgs()...)
		if err != nil {
			t.Fatalf("apply: %v\n%s", err, stderr)
		}
		if want := copyPath + " cap_net_admin,cap_net_raw\n"; stdout != want {
			t.Fatalf("apply printed %q, want %q", stdout, want)
		}
		check(both)
	}
	// --caps narrows it.
	stdout, stderr, err := runAs(t, 0, f.applyArgs("--caps", "net_raw", "--platform", runtime.GOOS+"/"+runtime.GOARCH)...)
	if err != nil || stdout != copyPath+" cap_net_raw\n" {
		t.Fatalf("apply --caps net_raw: %q %v\n%s", stdout, err, stderr)
	}
	check(netRaw)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"not granted", f.applyArgs("--caps", "cap_net_raw,cap_bpf"), "cap_bpf not granted by the signed package"},
		{"unknown cap", f.applyArgs("--caps", "cap_flying"), `unknown capability "cap_flying"`},
		{"other platform", f.applyArgs("--platform", "plan9/386"), "no artifact for plan9/386"},
		{"traversal", append([]string{"apply", "--addon", "pingsweep", "--version", "../1.0.0", "--file", "pingsweep", "--package", f.pkg}, f.configFlags()...), "starts with ."},
		{"missing flag", []string{"apply", "--addon", "pingsweep", "--version", "1.0.0", "--package", f.pkg}, `"file" not set`},
		{"no trust", append(f.applyArgs(), "--trust", filepath.Join(f.base, "nope")), "trust:"},
	} {
		before := snapshot(t, f.base)
		_, stderr, err := runAs(t, 0, tc.args...)
		if err == nil || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: %v, stderr %q, want it to name %q", tc.name, err, stderr, tc.want)
		}
		sameSnapshot(t, before, snapshot(t, f.base)) // the copy made before is untouched
	}

	// The signature must sit beside the package.
	if err := os.Rename(f.pkg+".sig", f.pkg+".sig.away"); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runAs(t, 0, f.applyArgs()...); err == nil || !strings.Contains(stderr, "must sit beside it") {
		t.Fatalf("apply without .sig: %v %q", err, stderr)
	}
}

// serve --listen makes its socket root:<agent group> 0660 and answers on
// it until told to stop; with --idle-exit it stops by itself.
func TestServeListen(t *testing.T) {
	f := newFixture(t)
	sock := filepath.Join(f.base, "run", "updater.sock")
	bin := updater(t)
	cmd := exec.Command(bin, append([]string{"serve", "--listen", sock, "--idle-exit", "0"}, f.configFlags()...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
	})
	c := &capabilities.Client{Socket: sock, Timeout: 10 * time.Second}
	var version string
	var proto int
	var err error
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(50 * time.Millisecond) {
		if version, proto, err = c.Ping(context.Background()); err == nil {
			break
		}
	}
	if err != nil || proto != 1 || version != capabilities.Version {
		t.Fatalf("ping: %q %d %v\n%s", version, proto, err, stderr.String())
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || st.Uid != 0 || int(st.Gid) != f.gid {
		t.Errorf("socket: %v %d:%d, want srw-rw---- 0:%d", fi.Mode(), st.Uid, st.Gid, f.gid)
	}
	raw, _ := os.ReadFile(f.pkg)
	sig, _ := os.ReadFile(f.pkg + ".sig")
	a, err := c.Apply(context.Background(), capabilities.ApplyRequest{AddonID: "pingsweep", Version: "1.0.0", File: "pingsweep", Package: raw, Signature: string(sig)})
	if err != nil {
		t.Fatalf("apply over the socket: %v", err)
	}
	if a.Path != filepath.Join(f.priv, "pingsweep", "1.0.0", "pingsweep") {
		t.Errorf("applied %s", a.Path)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve ended with %v after SIGTERM\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}

	// Idle exit, and a stale socket file from the last run is replaced.
	start := time.Now()
	_, errOut, err := runAs(t, 0, append([]string{"serve", "--listen", sock, "--idle-exit", "300ms"}, f.configFlags()...)...)
	if err != nil {
		t.Fatalf("serve --idle-exit: %v\n%s", err, errOut)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("idle exit after %v", d)
	}
	if !strings.Contains(errOut, "idle: exiting") {
		t.Errorf("serve --idle-exit logged %q", errOut)
	}
}

// Without --listen, serve needs exactly one socket from systemd.
func TestServeWithoutActivation(t *testing.T) {
	f := newFixture(t)
	_, stderr, err := runAs(t, 0, append([]string{"serve"}, f.configFlags()...)...)
	if err == nil || !strings.Contains(stderr, "socket activation passed 0 sockets") {
		t.Fatalf("serve without a socket: %v %q", err, stderr)
	}
}

func TestVersion(t *testing.T) {
	stdout, _, err := runAs(t, 0, "version")
	if err != nil || !strings.HasPrefix(stdout, "addond-updater ") {
		t.Fatalf("version: %q %v", stdout, err)
	}
}
