package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/supervisors/goplugin"
	"github.com/addond/addond/supervisors/toggle"
	"github.com/addond/addond/vmtest"
)

// recordingSupervisor records which add-ons a backend was asked to start.
type recordingSupervisor struct {
	supervisors.Supervisor
	mu      sync.Mutex
	started []string
}

func (s *recordingSupervisor) Start(ctx context.Context, spec supervisors.Spec) error {
	s.mu.Lock()
	s.started = append(s.started, spec.AddonID)
	s.mu.Unlock()
	return s.Supervisor.Start(ctx, spec)
}

func (s *recordingSupervisor) Update(ctx context.Context, spec supervisors.Spec) error {
	s.mu.Lock()
	s.started = append(s.started, spec.AddonID)
	s.mu.Unlock()
	return s.Supervisor.Update(ctx, spec)
}

func (s *recordingSupervisor) starts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.started)
}

// safeDir is a directory whose whole chain up to / is root-owned and
// writable by no one else, as an os_package binary's must be (t.TempDir()
// is under the world-writable /tmp).
func safeDir(t *testing.T) string {
	t.Helper()
	for _, parent := range []string{"/run", "/var/lib", "/var/cache", "/opt"} {
		if fi, err := os.Stat(parent); err != nil || fi.Mode().Perm()&0o022 != 0 {
			continue
		}
		dir, err := os.MkdirTemp(parent, "addond-ospkg-test-")
		if err != nil {
			continue
		}
		os.Chmod(dir, 0o755)
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	t.Fatal("no root-owned directory (/run, /var/lib, /var/cache, /opt) to create test files in")
	return ""
}

func copyExecutable(t *testing.T, from, to string, mode os.FileMode) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, mode); err != nil {
		t.Fatal(err)
	}
	return to
}

func fileSHA256(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// running is an `addond run` in this process, with the go-plugin backend
// (sidecars as children) and the config_toggle backend with the heartbeat.
type running struct {
	a       *Agent
	client  *Client
	sidecar *recordingSupervisor
	toggles *recordingSupervisor
	stop    func()
}

// run starts it; each opt may change the agent (its store, say) and the
// run's options before Run.
func (f *fixture) run(t *testing.T, opts ...func(*Agent, *RunOptions)) *running {
	t.Helper()
	f.cfg.StatusSocket = filepath.Join(f.base, "s.sock")
	f.cfg.PollInterval = config.Duration(time.Hour) // reconciles on request only
	f.cfg.Probation = config.Duration(time.Minute)
	a := f.open()
	sidecar := &recordingSupervisor{Supervisor: goplugin.New(goplugin.Options{
		Notify: a.Notify, HealthInterval: 200 * time.Millisecond, StartTimeout: 5 * time.Second,
		BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second, ExitPoll: 50 * time.Millisecond,
	})}
	toggles := &recordingSupervisor{Supervisor: toggle.New(toggle.Options{
		Notify: a.Notify, Features: map[string]toggle.Feature{HeartbeatFeature: a.Heartbeat()},
		HealthInterval: 200 * time.Millisecond,
	})}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	o := RunOptions{
		Supervisors: map[string]supervisors.Supervisor{
			assignment.SupervisionAgentSidecar: sidecar,
			assignment.SupervisionConfigToggle: toggles,
		},
		Ready: ready,
	}
	for _, fn := range opts {
		fn(a, &o)
	}
	go func() { done <- a.Run(ctx, o) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run not ready within 10s")
	}
	r := &running{a: a, client: NewClient(f.cfg.StatusSocket), sidecar: sidecar, toggles: toggles}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			a.Close()
		})
	}
	t.Cleanup(r.stop)
	return r
}

// wait polls /v1/status until id satisfies ok.
func (r *running) wait(t *testing.T, id, what string, ok func(AddonStatus) bool) AddonStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last AddonStatus
	for time.Now().Before(deadline) {
		if st, err := r.client.Status(context.Background()); err == nil {
			for _, a := range st.Addons {
				if a.AddonID == id {
					last = a
					if ok(a) {
						return a
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not %s within 20s; last status %+v", id, what, last)
	return last
}

func runningHealthy(a AddonStatus) bool { return a.State == "running" && a.Health == "healthy" }

func processAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// TestRunCompiledInAndOSPackage: a config_toggle heartbeat and an
// os_package sidecar (a root-owned copy of the hello example) reach
// running and healthy in /v1/status; unsafe os_package binaries are
// refused, naming the add-on and the reason, and never started; a binary
// made unsafe later is noticed by the next reconcile.
func TestRunCompiledInAndOSPackage(t *testing.T) {
	vmtest.RequireRoot(t, "root-owned copies of an example add-on")
	hello := conformance.BuildExamples(t, "..", "hello")["hello"]
	f := newFixture(t, "file")
	dir := safeDir(t)
	good := copyExecutable(t, hello, filepath.Join(dir, "hello"), 0o755)
	goodSHA := fileSHA256(t, good)
	hbPath := filepath.Join(t.TempDir(), "heartbeat.json")

	unsafe := map[string]struct {
		addon assignment.Addon
		want  string
	}{}
	bad := func(id, path, sha, want string) {
		unsafe[id] = struct {
			addon assignment.Addon
			want  string
		}{assignment.Addon{AddonID: id, Version: "1.0.0", Delivery: assignment.DeliveryOSPackage, BinaryPath: path, ArtifactSHA256: sha}, want}
	}
	bad("pkg-group", copyExecutable(t, hello, filepath.Join(dir, "group-writable"), 0o775), "", "is writable by its group")
	bad("pkg-world", copyExecutable(t, hello, filepath.Join(dir, "world-writable"), 0o757), "", "is writable by others")
	other := copyExecutable(t, hello, filepath.Join(dir, "other-uid"), 0o755)
	os.Chown(other, 65534, 65534)
	bad("pkg-uid", other, "", "owned by uid 65534")
	os.Symlink(good, filepath.Join(dir, "link"))
	bad("pkg-link", filepath.Join(dir, "link"), "", "symbolic link")
	os.Mkdir(filepath.Join(dir, "adir"), 0o755)
	bad("pkg-dir", filepath.Join(dir, "adir"), "", "is a directory")
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o755)
	bad("pkg-fifo", filepath.Join(dir, "fifo"), "", "named pipe")
	bad("pkg-sha", good, strings.Repeat("0", 64), "sha256 is "+goodSHA)
	bad("pkg-rel", "hello", "", "is not absolute")

	addons := []assignment.Addon{
		{AddonID: "heartbeat", Version: "1", Delivery: assignment.DeliveryCompiledIn, Supervision: assignment.SupervisionConfigToggle,
			ConfigJSON: json.RawMessage(`{"interval":"1s","path":"` + hbPath + `"}`)},
		{AddonID: "beat-other", Supervision: assignment.SupervisionConfigToggle, BinaryPath: "no-such-feature"},
		{AddonID: "pkg-hello", Version: "1.0.0", Delivery: assignment.DeliveryOSPackage, BinaryPath: good, ArtifactSHA256: goodSHA},
	}
	for _, u := range unsafe {
		addons = append(addons, u.addon)
	}
	f.putAddons(addons...)
	r := f.run(t)

	hb := r.wait(t, "heartbeat", "running and healthy", runningHealthy)
	if hb.Supervision != assignment.SupervisionConfigToggle || hb.ActiveVersion != "1" || hb.PID != 0 {
		t.Fatalf("heartbeat status %+v", hb)
	}
	pkg := r.wait(t, "pkg-hello", "running and healthy", runningHealthy)
	if pkg.Supervision != assignment.SupervisionAgentSidecar || !processAlive(pkg.PID) || pkg.ActiveVersion != "1.0.0" {
		t.Fatalf("pkg-hello status %+v: want a live sidecar", pkg)
	}
	if exe, _ := os.Readlink("/proc/" + strconv.Itoa(pkg.PID) + "/exe"); exe != good {
		t.Fatalf("pkg-hello runs %s, want %s", exe, good)
	}
	other2 := r.wait(t, "beat-other", "unsupported", func(a AddonStatus) bool { return a.State == "unsupported" })
	if !strings.Contains(other2.LastError, `"no-such-feature"`) || other2.Health == "healthy" {
		t.Fatalf("unknown feature: %+v; want unsupported naming the feature", other2)
	}
	for id, u := range unsafe {
		st := r.wait(t, id, "failed", func(a AddonStatus) bool { return a.State == "failed" })
		if !strings.Contains(st.LastError, `addon "`+id+`"`) || !strings.Contains(st.LastError, u.want) || st.PID != 0 || st.ActiveVersion != "" {
			t.Errorf("%s: %+v; want failed naming the add-on and %q, nothing running", id, st, u.want)
		}
	}
	// Nothing unsafe was ever handed to a backend.
	for _, id := range r.sidecar.starts() {
		if _, ok := unsafe[id]; ok {
			t.Errorf("the sidecar backend was asked to start %s", id)
		}
	}
	if got := r.toggles.starts(); !slices.Contains(got, "heartbeat") {
		t.Errorf("toggle backend starts %v", got)
	}
	// No staging for either: nothing under addons/.
	for _, id := range []string{"heartbeat", "pkg-hello"} {
		if _, err := os.Lstat(filepath.Join(f.root, "addons", id)); err == nil {
			t.Errorf("addons/%s exists: os_package and compiled_in add-ons have nothing staged", id)
		}
	}

	// The heartbeat file carries the agent's status.
	var file struct {
		Time    time.Time     `json:"time"`
		AgentID string        `json:"agent_id"`
		Addons  []AddonStatus `json:"addons"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(hbPath)
		json.Unmarshal(b, &file)
		i := slices.IndexFunc(file.Addons, func(a AddonStatus) bool { return a.AddonID == "pkg-hello" })
		if file.AgentID == "edge-01" && i >= 0 && file.Addons[i].State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat file never showed pkg-hello running:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Made group-writable: the next reconcile stops it and says why.
	os.Chmod(good, 0o775)
	r.client.Reconcile(context.Background())
	st := r.wait(t, "pkg-hello", "failed once unsafe", func(a AddonStatus) bool { return a.State == "failed" })
	if !strings.Contains(st.LastError, "writable by its group") {
		t.Fatalf("reason %q", st.LastError)
	}
	deadline = time.Now().Add(10 * time.Second)
	for processAlive(pkg.PID) {
		if time.Now().After(deadline) {
			t.Fatalf("pkg-hello (pid %d) still runs from a group-writable binary", pkg.PID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Fixed: running again.
	os.Chmod(good, 0o755)
	r.client.Reconcile(context.Background())
	again := r.wait(t, "pkg-hello", "running again", runningHealthy)
	if again.PID == pkg.PID {
		t.Fatal("same pid after a restart")
	}

	// Disabled: the heartbeat stops.
	addons[0].Enabled = new(bool)
	f.putAddons(addons...)
	r.client.Reconcile(context.Background())
	r.wait(t, "heartbeat", "disabled", func(a AddonStatus) bool { return a.State == "disabled" })
	b1, _ := os.ReadFile(hbPath)
	time.Sleep(1500 * time.Millisecond)
	if b2, _ := os.ReadFile(hbPath); string(b1) != string(b2) {
		t.Fatal("heartbeat file still written after the add-on was disabled")
	}

	// Sidecars are children: they stop with Run.
	r.stop()
	if processAlive(again.PID) {
		t.Fatalf("pkg-hello (pid %d) outlived Run", again.PID)
	}
}
