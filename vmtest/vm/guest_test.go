package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/miniotest"
)

// The host side: what every scenario's machine gets.

// Paths inside the machine.
const (
	debPath    = "/test/pkg/addond.deb"         // the package `make packages` built
	debUpgrade = "/test/pkg/addond-upgrade.deb" // the same, at a higher version
	agentID    = "vm-01"
	keyDir     = "/root/publisher"
	fileStore  = "file:///srv/addons"
)

// examples are the add-ons the scenarios publish.
var examples = []string{"hello", "pingsweep", "ticker"}

type scenario struct {
	boots   int           // [1]
	upgrade bool          // also a higher version of the deb, at debUpgrade
	minio   bool          // the MinIO server, at BinDir/minio
	timeout time.Duration // each boot [5m]
}

// boot runs the calling test inside a fresh machine that has the addond
// deb (not installed), the example add-ons in BinDir and what s asks
// for.
func boot(t *testing.T, s scenario) {
	t.Helper()
	Require(t)
	deb := findDeb(t)
	o := RunOptions{Boots: s.boots, Timeout: s.timeout, Copy: map[string]string{deb: debPath}}
	o.Files = buildExamples(t)
	if s.upgrade {
		o.Copy[repackDeb(t, deb)] = debUpgrade
	}
	if s.minio {
		bin := miniotest.Binary()
		if _, err := os.Stat(bin); err != nil {
			vmtest.Unavailable(t, fmt.Sprintf("needs the MinIO server (make minio): %v", err))
		}
		o.Files = append(o.Files, bin)
		o.Env = append(o.Env, "ADDOND_MINIO_BIN="+BinDir+"/minio")
	}
	RunTest(t, o)
}

// findDeb is $ADDOND_VM_DEB (`make vmtest` sets it to the deb `make
// packages` put in dist/), else the amd64 deb built once per test binary
// with packaging/build.sh from this tree.
func findDeb(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("ADDOND_VM_DEB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			vmtest.Unavailable(t, fmt.Sprintf("ADDOND_VM_DEB: %v (run `make packages`)", err))
		}
		return p
	}
	debOnce.Do(func() {
		var dir string
		if dir, debErr = os.MkdirTemp("", "addond-vm-deb"); debErr != nil {
			return
		}
		tmpDirs = append(tmpDirs, dir)
		cmd := exec.Command("bash", "packaging/build.sh")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "VERSION=0.1.0-dev+vmtest", "OUT="+dir, "ARCHES=amd64", "FORMATS=deb")
		if out, err := cmd.CombinedOutput(); err != nil {
			debErr = fmt.Errorf("packaging/build.sh: %v\n%s", err, out)
			return
		}
		deb = filepath.Join(dir, "addond_0.1.0~dev+vmtest_amd64.deb")
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return deb
}

var (
	debOnce sync.Once
	deb     string
	debErr  error
	// tmpDirs are removed when the tests end (TestMain).
	tmpDirs []string
)

var (
	examplesOnce sync.Once
	examplesDir  string
	examplesErr  error
)

// buildExamples builds the example add-ons once per test binary (static,
// like the packaged binaries).
func buildExamples(t *testing.T) []string {
	t.Helper()
	examplesOnce.Do(func() {
		examplesDir, examplesErr = os.MkdirTemp("", "addond-vm-examples")
		if examplesErr != nil {
			return
		}
		tmpDirs = append(tmpDirs, examplesDir)
		args := []string{"build", "-trimpath", "-o", examplesDir + "/"}
		for _, e := range examples {
			args = append(args, "github.com/addond/addond/sdk/examples/"+e)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			examplesErr = fmt.Errorf("build the example add-ons: %v\n%s", err, out)
		}
	})
	if examplesErr != nil {
		t.Fatal(examplesErr)
	}
	var files []string
	for _, e := range examples {
		files = append(files, filepath.Join(examplesDir, e))
	}
	return files
}

// repackDeb is deb with its version raised: a second build of the same
// package, for the upgrade path.
func repackDeb(t *testing.T, deb string) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if out, err := exec.Command("dpkg-deb", "-R", deb, tree).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -R: %v\n%s", err, out)
	}
	control := filepath.Join(tree, "DEBIAN", "control")
	data, err := os.ReadFile(control)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			l = "Version: " + v + "+vmupgrade1"
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(control, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "addond-upgrade.deb")
	if o, err := exec.Command("dpkg-deb", "-Zxz", "--build", tree, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, o)
	}
	return out
}

// The guest side: helpers for tests running inside the machine, as root.

// try runs a shell command and returns its combined output.
func try(script string) (string, error) {
	cmd := exec.Command("/bin/sh", "-c", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// sh runs a shell command and fails t if it fails.
func sh(t testing.TB, script string) string {
	t.Helper()
	out, err := try(script)
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return out
}

// diagnose logs what helps when a scenario fails.
func diagnose(t testing.TB) {
	t.Helper()
	for _, c := range []string{
		"addonctl status || true",
		"systemctl status --no-pager addond addond-updater.socket",
		"systemctl --user -M addond@ list-units --all --no-pager 'addond-*'",
		"journalctl --no-pager -n 120 -u addond -u addond-updater",
		"journalctl --no-pager -n 60 _UID=$(id -u addond)",
	} {
		out, _ := try(c + " 2>&1")
		t.Logf("$ %s\n%s", c, out)
	}
}

// eventually polls f until it returns nil, failing t (with diagnostics)
// after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			diagnose(t)
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentStatus is addonctl status --json (DESIGN.md, Contract: status).
type agentStatus struct {
	AgentID       string        `json:"agent_id"`
	Version       string        `json:"version"`
	Ready         bool          `json:"ready"`
	Serial        uint64        `json:"serial"`
	DocumentError string        `json:"document_error"`
	Addons        []addonStatus `json:"addons"`
}

type addonStatus struct {
	AddonID         string `json:"addon_id"`
	Version         string `json:"version"`
	ActiveVersion   string `json:"active_version"`
	PreviousVersion string `json:"previous_version"`
	Supervision     string `json:"supervision"`
	State           string `json:"state"`
	Health          string `json:"health"`
	FromLKG         bool   `json:"from_lkg"`
	LastError       string `json:"last_error"`
	Restarts        int    `json:"restarts"`
	PID             int    `json:"pid"`
}

func (a addonStatus) String() string {
	return fmt.Sprintf("%s state=%s health=%s version=%s active=%s previous=%s from_lkg=%v pid=%d last_error=%q",
		a.AddonID, a.State, a.Health, a.Version, a.ActiveVersion, a.PreviousVersion, a.FromLKG, a.PID, a.LastError)
}

// status is what `addonctl status --json` prints, asked of addond's status
// socket (the one the installed config names) from this process: the
// tests poll it every 500 ms, and starting addonctl for each poll is
// costly in an emulated guest (docs/RELIABILITY.md has the figures).
func status() (agentStatus, error) {
	var st agentStatus
	cfg, err := config.Load(config.DefaultPath)
	if err != nil {
		return st, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := daemon.NewClient(cfg.StatusSocket).Status(ctx)
	if err != nil {
		return st, fmt.Errorf("status from %s: %w", cfg.StatusSocket, err)
	}
	out, err := json.Marshal(s)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

func (st agentStatus) addon(id string) (addonStatus, error) {
	for _, a := range st.Addons {
		if a.AddonID == id {
			return a, nil
		}
	}
	return addonStatus{}, fmt.Errorf("no add-on %s in the status (%d add-ons)", id, len(st.Addons))
}

// waitAddon waits until the add-on's status satisfies ok (which says what
// is wrong, or "") and returns that status.
func waitAddon(t testing.TB, id string, timeout time.Duration, what string, ok func(a addonStatus) string) addonStatus {
	t.Helper()
	var got addonStatus
	eventually(t, timeout, id+": "+what, func() error {
		st, err := status()
		if err != nil {
			return err
		}
		a, err := st.addon(id)
		if err != nil {
			return err
		}
		if why := ok(a); why != "" {
			return fmt.Errorf("%s (%s)", why, a)
		}
		got = a
		return nil
	})
	return got
}

// runningHealthy is the condition of an add-on at version that runs and
// is healthy.
func runningHealthy(version string) func(a addonStatus) string {
	return func(a addonStatus) string {
		if a.State != "running" || a.Health != "healthy" || a.ActiveVersion != version {
			return "want running, healthy, " + version
		}
		return ""
	}
}

// unitProp is a property of a system unit.
func unitProp(t testing.TB, unit, prop string) string {
	t.Helper()
	return sh(t, fmt.Sprintf("systemctl show -p %s --value %s", prop, unit))
}

// addonUnitProp is a property of an add-on's unit: in the addond user's
// manager, or — a capped add-on's — in the system manager.
func addonUnitProp(t testing.TB, unit, prop string) string {
	t.Helper()
	if userUnitProp(t, unit, "LoadState") == "loaded" {
		return userUnitProp(t, unit, prop)
	}
	return unitProp(t, unit, prop)
}

// userUnitProp is a property of a unit of the addond user's manager.
func userUnitProp(t testing.TB, unit, prop string) string {
	t.Helper()
	return sh(t, fmt.Sprintf("systemctl --user -M addond@ show -p %s --value %s", prop, unit))
}

// install installs the package as an administrator would and waits for
// addond to be active.
func install(t testing.TB, deb string) {
	t.Helper()
	sh(t, "DEBIAN_FRONTEND=noninteractive dpkg -i "+deb)
	eventually(t, 3*time.Minute, "addond active after install", func() error {
		if out, err := try("systemctl is-active addond"); out != "active" {
			return fmt.Errorf("is-active: %s %v", out, err)
		}
		return nil
	})
}

// publisher publishes and assigns with the packaged addonctl, its key
// trusted by addond (a root-owned key in /etc/addond/trust.d).
type publisher struct {
	store string
	env   []string // the store's credentials
}

func newPublisher(t testing.TB, store string, env ...string) *publisher {
	t.Helper()
	if strings.HasPrefix(store, "file://") {
		os.MkdirAll(strings.TrimPrefix(store, "file://"), 0o755)
	}
	sh(t, "addonctl keygen --out "+keyDir)
	sh(t, "install -o root -g root -m 0644 "+keyDir+"/signing.pub /etc/addond/trust.d/publisher.pub")
	return &publisher{store: store, env: env}
}

func (p *publisher) addonctl(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("addonctl", args...)
	cmd.Env = append(os.Environ(), p.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("addonctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// publish signs and uploads bin as id@version.
func (p *publisher) publish(t testing.TB, id, version, supervision, bin string, flags ...string) {
	t.Helper()
	args := append([]string{"publish", "--store", p.store, "--key", keyDir + "/signing.key",
		"--id", id, "--version", version, "--supervision", supervision, "--binary-name", id}, flags...)
	p.addonctl(t, append(args, "linux/amd64="+bin)...)
}

// assign writes the agent's signed assignment document.
func (p *publisher) assign(t testing.TB, args ...string) {
	t.Helper()
	p.addonctl(t, append([]string{"assign", "--store", p.store, "--agent", agentID, "--key", keyDir + "/signing.key"}, args...)...)
}

// withResources rewrites the assignment document (file store only) with
// resource limits for some add-ons, as the next serial (the agent may have
// applied the one it builds on already: the same serial with other content
// is refused as a replay), and signs it again.
func (p *publisher) withResources(t testing.TB, res map[string]assignment.Resources) {
	t.Helper()
	path := strings.TrimPrefix(p.store, "file://") + "/agents/" + agentID + "/assignments.json"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc assignment.Document
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for i, a := range doc.Addons {
		if r, ok := res[a.AddonID]; ok {
			doc.Addons[i].Resources = &r
		}
	}
	doc.Serial++
	if doc.ConfigVersion, err = assignment.ComputeConfigVersion(doc); err != nil {
		t.Fatal(err)
	}
	if data, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sig := strings.TrimSpace(p.addonctl(t, "sign", "--key", keyDir+"/signing.key", path))
	if err := os.WriteFile(path+".sig", []byte(sig+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// configure points the shipped /etc/addond/addond.json at store and this
// agent's document, with a short poll and a probation that a first start
// under TCG on a loaded machine still meets (a healthy version is
// promoted as soon as it reports healthy; only an unhealthy one waits the
// probation out), and reloads addond.
func configure(t testing.TB, store string) {
	t.Helper()
	setConfig(t, map[string]any{
		"agent_id": agentID, "store": store,
		"assignments":   map[string]string{"store_key": "agents/" + agentID + "/assignments.json"},
		"poll_interval": "2s", "probation": "30s",
	})
}

// setConfig sets keys of /etc/addond/addond.json and reloads addond.
func setConfig(t testing.TB, keys map[string]any) {
	t.Helper()
	const path = "/etc/addond/addond.json"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range keys {
		cfg[k] = v
	}
	if data, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "systemctl reload addond")
}

// mainPID is a system unit's main process.
func mainPID(t testing.TB, unit string) string {
	t.Helper()
	pid := unitProp(t, unit, "MainPID")
	if pid == "" || pid == "0" {
		t.Fatalf("%s has no main process", unit)
	}
	return pid
}

// addonUnitPIDs are the main PIDs of the add-on units named.
func addonUnitPIDs(t testing.TB, units ...string) map[string]string {
	t.Helper()
	pids := map[string]string{}
	for _, u := range units {
		pids[u] = addonUnitProp(t, u, "MainPID")
		if pids[u] == "0" || pids[u] == "" {
			t.Fatalf("%s has no main process", u)
		}
	}
	return pids
}

// capEff is a process's effective capability set.
func capEff(t testing.TB, pid string) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			var c uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &c)
			return c
		}
	}
	t.Fatalf("no CapEff for %s", pid)
	return 0
}
