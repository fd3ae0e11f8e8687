package capabilities

// The fixture the root tests share: a root-owned base directory under
// /var/lib (not /tmp, which anyone may write), holding
//
//	runtime/   the agent's runtime root (owned by a throwaway agent user)
//	trust/     a root-owned trust directory with one ed25519 PEM key
//	capabilities.allow   the policy (root, 0644)
//	priv/      the privileged tree (root, 0755)
//	outside/   things an attacker points symbolic links at
//	run/       the updater socket
//
// and a Server answering on run/updater.sock. snapshot() records every
// file below the base (kind, mode, owner, links, size, content hash,
// security.capability) so that a refusal can be shown to have changed
// nothing.

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
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/vmtest"
)

// testAgentUser is the throwaway agent user this package's tests create
// (cmd/addond-updater's tests use another name, so that both packages
// can run at once).
const testAgentUser = "addond-capt"

// platform is this host's artifact key.
var platform = runtime.GOOS + "/" + runtime.GOARCH

// run runs a command and fails t with its output when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rootDir is a new root-owned 0755 directory under /var/lib, removed at
// the end of the test.
func rootDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/var/lib", "capt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// createAgentUser makes a throwaway system user (and its group) and
// deletes it when the test ends.
func createAgentUser(t testing.TB, name string) (uid, gid int) {
	t.Helper()
	if _, err := exec.LookPath("useradd"); err != nil {
		vmtest.Unavailable(t, "useradd is not installed")
	}
	del := func() {
		exec.Command("userdel", name).Run()
		exec.Command("groupdel", name).Run()
	}
	if _, err := user.Lookup(name); err == nil {
		del() // left over by an interrupted run
	}
	var out []byte
	var err error
	for range 20 { // another package's test may hold the passwd lock
		out, err = exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(del)
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if uid == 0 || gid == 0 {
		t.Fatalf("agent user %s is uid %d gid %d", name, uid, gid)
	}
	return uid, gid
}

type fixture struct {
	base, runtime, priv, trust, keyFile, policy, outside string
	user                                                 string
	uid, gid                                             int
	pub                                                  ed25519.PublicKey
	key                                                  ed25519.PrivateKey
	cfg                                                  Config
	good, evil                                           []byte // the staged binary (cat), other bytes (true)
	sock                                                 string
	server                                               *Server
}

// newFixture builds the fixture and starts its server (as root).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	vmtest.RequireRoot(t, "the updater writes a root-owned tree and sets file capabilities")
	uid, gid := createAgentUser(t, testAgentUser)
	base := rootDir(t)
	f := &fixture{
		base: base, user: testAgentUser, uid: uid, gid: gid,
		runtime: filepath.Join(base, "runtime"),
		priv:    filepath.Join(base, "priv"),
		trust:   filepath.Join(base, "trust"),
		policy:  filepath.Join(base, "capabilities.allow"),
		outside: filepath.Join(base, "outside"),
	}
	f.keyFile = filepath.Join(f.trust, "publisher.pem")
	var err error
	if f.good, err = os.ReadFile("/bin/cat"); err != nil {
		t.Fatal(err)
	}
	if f.evil, err = os.ReadFile("/bin/true"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{f.priv, f.trust, f.outside, filepath.Join(base, "run")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.agentDir(t, f.runtime)
	f.pub, f.key = newKey(t)
	f.writeKey(t, f.keyFile, f.pub)
	if err := os.WriteFile(f.policy, []byte(DefaultPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	f.cfg = Config{RuntimeRoot: f.runtime, PrivilegedRoot: f.priv, Trust: []string{f.trust}, Policy: f.policy, AgentUser: f.user}
	f.stage(t, "control", "1.0.0", "ctl", f.good)
	f.server = &Server{Config: f.cfg, Version: "test-1"}
	f.sock = filepath.Join(base, "run", "updater.sock")
	serve(t, f.server, f.sock)
	return f
}

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, key
}

func pemKey(t testing.TB, pub ed25519.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// writeKey writes pub as a root-owned 0644 PEM file.
func (f *fixture) writeKey(t testing.TB, path string, pub ed25519.PublicKey) {
	t.Helper()
	if err := os.WriteFile(path, pemKey(t, pub), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
}

// serve runs s on a unix socket at path (0666, for the tests' other
// users) until the test ends.
func serve(t testing.TB, s *Server, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	})
}

func (f *fixture) client() *Client { return &Client{Socket: f.sock, Timeout: 30 * time.Second} }

// agentDir makes dir (and no parent) owned by the agent, 0755.
func (f *fixture) agentDir(t testing.TB, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		t.Fatal(err)
	}
	if err := os.Chown(dir, f.uid, f.gid); err != nil {
		t.Fatal(err)
	}
}

// versionDir is where the agent stages id's version.
func (f *fixture) versionDir(id, version string) string {
	return filepath.Join(f.runtime, "addons", id, "versions", version)
}

// stage writes data as the agent's staged binary (0755, the agent's) and
// returns its path; version may hold "/" to build unusual trees.
func (f *fixture) stage(t testing.TB, id, version, file string, data []byte) string {
	t.Helper()
	dir := f.runtime
	for _, p := range slices.Concat([]string{"addons", id, "versions"}, strings.Split(version, "/")) {
		dir = filepath.Join(dir, p)
		f.agentDir(t, dir)
	}
	return f.agentFile(t, filepath.Join(dir, file), data)
}

// agentFile writes data at path, owned by the agent, 0755.
func (f *fixture) agentFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, f.uid, f.gid); err != nil {
		t.Fatal(err)
	}
	return path
}

// testPackage is package.json as publishers write it.
type testPackage struct {
	AddonID        string                  `json:"addon_id"`
	Version        string                  `json:"version"`
	Supervision    string                  `json:"supervision,omitempty"`
	OSCapabilities []string                `json:"os_capabilities"`
	Artifacts      map[string]testArtifact `json:"artifacts"`
	AllowDowngrade bool                    `json:"allow_downgrade,omitempty"`
}

type testArtifact struct {
	ObjectKey  string `json:"object_key"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
	Signature  string `json:"signature"`
	KeyID      string `json:"key_id"`
	BinaryName string `json:"binary_name"`
}

// pkg is the package for data as id's version, granting caps.
func (f *fixture) pkg(id, version, file string, data []byte, caps ...string) testPackage {
	sum := sha256.Sum256(data)
	kid := sha256.Sum256(f.pub)
	return testPackage{
		AddonID: id, Version: version, Supervision: "agent_sidecar", OSCapabilities: caps,
		Artifacts: map[string]testArtifact{platform: {
			ObjectKey:  fmt.Sprintf("artifacts/%s/%s/%s/%s", id, version, strings.ReplaceAll(platform, "/", "-"), file),
			SHA256:     hex.EncodeToString(sum[:]),
			Size:       int64(len(data)),
			Signature:  hex.EncodeToString(ed25519.Sign(f.key, data)),
			KeyID:      hex.EncodeToString(kid[:8]),
			BinaryName: file,
		}},
	}
}

// signed is p's bytes and their .sig line under key.
func signed(t testing.TB, p testPackage, key ed25519.PrivateKey) ([]byte, string) {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw, hex.EncodeToString(ed25519.Sign(key, raw)) + "\n"
}

// request is the agent's request for p, signed by the fixture's key.
func (f *fixture) request(t testing.TB, p testPackage, file string, caps ...string) ApplyRequest {
	t.Helper()
	raw, sig := signed(t, p, f.key)
	return ApplyRequest{AddonID: p.AddonID, Version: p.Version, File: file, Caps: caps, Package: raw, Signature: sig}
}

// staged stages f.good as id's version and returns the request for it
// (the package grants cap_net_raw).
func (f *fixture) staged(t testing.TB, id, version string) ApplyRequest {
	t.Helper()
	f.stage(t, id, version, "pingsweep", f.good)
	return f.request(t, f.pkg(id, version, "pingsweep", f.good, "cap_net_raw"), "pingsweep")
}

// checkCopy checks the capped copy at path: root:<agent group> 0750, one
// link, the signed bytes, exactly want's capabilities (+ep).
func (f *fixture) checkCopy(t testing.TB, path string, data []byte, want Set) {
	t.Helper()
	c, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatalf("capped copy: %v", err)
	}
	defer c.Close()
	fi, err := c.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || fi.Mode() != 0o750 || st.Uid != 0 || int(st.Gid) != f.gid || st.Nlink != 1 {
		t.Errorf("capped copy %s: mode %v uid %d gid %d nlink %d, want -rwxr-x--- 0:%d, one link", path, fi.Mode(), st.Uid, st.Gid, st.Nlink, f.gid)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("capped copy %s: %d bytes, not the signed %d bytes", path, len(got), len(data))
	}
	fc, err := GetFile(c)
	if err != nil {
		t.Fatal(err)
	}
	if fc.Permitted != want || fc.Inheritable != 0 || !fc.Effective {
		t.Errorf("capped copy %s: caps %+v, want %s+ep", path, fc, want)
	}
}

// snapshot records every file below root.
func snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			caps := make([]byte, 64)
			n, err := unix.Lgetxattr(path, XattrName, caps)
			if err != nil {
				n = 0
			}
			desc += fmt.Sprintf(" links=%d size=%d sha256=%x mtime=%d caps=%x", st.Nlink, fi.Size(), sha256.Sum256(data), fi.ModTime().UnixNano(), caps[:n])
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.IsDir():
		default:
			desc += fmt.Sprintf(" rdev=%d links=%d", st.Rdev, st.Nlink)
		}
		rel, _ := filepath.Rel(root, path)
		snap[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return snap
}

// sameSnapshot fails t where after differs from before, except for the
// directories in newDirs, which may have appeared (empty, root's, 0755).
func sameSnapshot(t testing.TB, before, after map[string]string, newDirs ...string) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("%s was removed (was %s)", p, b)
		} else if a != b {
			t.Errorf("%s changed:\n  before %s\n  after  %s", p, b, a)
		}
	}
	for p, a := range after {
		if _, ok := before[p]; ok {
			continue
		}
		if slices.Contains(newDirs, p) && a == "drwxr-xr-x 0:0" {
			continue
		}
		t.Errorf("%s was created: %s", p, a)
	}
}

// control applies the control add-on: the helper still serves a good
// request. Its copy is removed again.
func (f *fixture) control(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	req := f.request(t, f.pkg("control", "1.0.0", "ctl", f.good, "cap_net_raw"), "ctl")
	a, err := f.client().Apply(ctx, req)
	if err != nil {
		t.Fatalf("after the refusal, a good request failed: %v", err)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
	if err := f.client().Remove(ctx, "control", ""); err != nil {
		t.Fatalf("removing the control copy: %v", err)
	}
}

// refused sends req to the helper and checks that it is refused with a
// reason containing want, that nothing below the base changed (but the
// directories in newDirs, relative to the base, which may appear empty),
// and that the helper still serves a good request.
func (f *fixture) refused(t testing.TB, req ApplyRequest, want string, newDirs ...string) {
	t.Helper()
	before := snapshot(t, f.base)
	a, err := f.client().Apply(context.Background(), req)
	if err == nil {
		t.Fatalf("apply %s/%s/%s succeeded (%s), want a refusal naming %q", req.AddonID, req.Version, req.File, a.Path, want)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Fatalf("the helper did not answer: %v", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("refusal %q does not name %q", err, want)
	}
	t.Logf("refused: %v", err)
	sameSnapshot(t, before, snapshot(t, f.base), newDirs...)
	f.control(t)
}

const (
	capNetRaw   Cap = 13
	capNetAdmin Cap = 12
)

// sign is raw's .sig line under key.
func sign(key ed25519.PrivateKey, raw []byte) string {
	return hex.EncodeToString(ed25519.Sign(key, raw)) + "\n"
}
