// Package conformance is the one test suite every supervisors backend
// passes: run it from the backend's tests with a Harness that builds the
// backend with fast timings. The suite is a table of named checks (Checks),
// one function per behaviour, in the manner of containerd's snapshotter
// test suite; each check says which models promise its behaviour (When),
// and Run runs those that apply as subtests by name.
package conformance

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/vmtest"
)

// Harness builds the backend under test and says what its model promises.
type Harness struct {
	// New returns a backend reporting to notify, with timings fast enough
	// for tests: health every ~100ms, backoff from ~50ms, a circuit
	// breaker that opens after 3 restarts within 10s, a cool-down of
	// ~500ms.
	New func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor
	// Hello is the path of the built hello example add-on.
	Hello string
	// AsksAddon: health comes from the add-on's own Health answers and
	// configuration is applied in place through Configure (go-plugin
	// sidecars); otherwise health is the process's state and a new
	// configuration restarts it.
	AsksAddon bool
	// OutlivesAgent: add-ons are units that keep running when the
	// backend is closed, and a new backend adopts them without a restart.
	OutlivesAgent bool
	// Units: the backend makes systemd units and checks their resources.
	Units bool
	// Job: the model runs its binary now and then (timers, helpers), not
	// as a long-running process: no PIDs, no crash loops. Binary and
	// Spec then say what to run.
	Job    bool
	Binary string
	Spec   func(*supervisors.Spec)
}

// BuildExamples builds the example add-ons into a temporary directory and
// returns their paths by name. root is the module root relative to the
// test's package directory.
func BuildExamples(t testing.TB, root string, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	out := map[string]string{}
	for _, n := range names {
		bin := filepath.Join(dir, n)
		cmd := exec.Command("go", "build", "-o", bin, "github.com/addond/addond/sdk/examples/"+n)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", n, err, b)
		}
		out[n] = bin
	}
	return out
}

// tracked remembers what was started, so that a test can clean up units
// that outlive the backend.
type tracked struct {
	supervisors.Supervisor
	mu  sync.Mutex
	ids map[string]bool
}

func (s *tracked) Start(ctx context.Context, spec supervisors.Spec) error {
	s.mu.Lock()
	s.ids[spec.AddonID] = true
	s.mu.Unlock()
	return s.Supervisor.Start(ctx, spec)
}

func (s *tracked) started() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.ids)
}

// Recorder collects a backend's events for tests to wait on.
type Recorder struct {
	mu     sync.Mutex
	events []supervisors.Event
	signal chan struct{}
}

// NewRecorder returns an empty Recorder; pass its Notify to the backend.
func NewRecorder() *Recorder { return &Recorder{signal: make(chan struct{}, 1)} }

// Notify records e.
func (r *Recorder) Notify(e supervisors.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// WaitFor returns the first event of id satisfying ok, failing the test
// after timeout.
func (r *Recorder) WaitFor(t *testing.T, id string, timeout time.Duration, what string, ok func(supervisors.Event) bool) supervisors.Event {
	t.Helper()
	return r.WaitFrom(t, 0, id, timeout, what, ok)
}

// WaitFrom is WaitFor over the events from index mark on.
func (r *Recorder) WaitFrom(t *testing.T, mark int, id string, timeout time.Duration, what string, ok func(supervisors.Event) bool) supervisors.Event {
	t.Helper()
	deadline := time.After(timeout)
	seen := mark
	for {
		r.mu.Lock()
		for ; seen < len(r.events); seen++ {
			if e := r.events[seen]; e.AddonID == id && ok(e) {
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		select {
		case <-r.signal:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			var b strings.Builder
			for _, e := range r.events {
				if e.AddonID == id {
					fmt.Fprintf(&b, "  %s %s health=%s pid=%d restarts=%d reason=%q\n", e.Version, e.State, e.Health, e.PID, e.Restarts, e.Reason)
				}
			}
			t.Fatalf("%s: no event %s within %v; events:\n%s", id, what, timeout, b.String())
			return supervisors.Event{}
		}
	}
}

// Events are the events of id so far.
func (r *Recorder) Events(id string) []supervisors.Event { return r.Since(0, id) }

// Since are the events of id from index mark on.
func (r *Recorder) Since(mark int, id string) []supervisors.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []supervisors.Event
	for _, e := range r.events[mark:] {
		if e.AddonID == id {
			out = append(out, e)
		}
	}
	return out
}

// Mark is the index of the next event.
func (r *Recorder) Mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

const wait = 15 * time.Second

// Check is one behaviour a backend promises.
type Check struct {
	Name string
	// When says whether the model promises it (nil: every model does).
	When func(Harness) bool
	Run  func(t *testing.T, s *Suite)
}

// Model properties, for Check.When.
func asksAddon(h Harness) bool     { return h.AsksAddon }
func runsProcesses(h Harness) bool { return !h.Job }
func makesUnits(h Harness) bool    { return h.Units }
func diesWithAgent(h Harness) bool { return !h.Job && !h.OutlivesAgent }
func outlivesAgent(h Harness) bool { return !h.Job && h.OutlivesAgent }

// Checks is the suite, in the order it runs.
var Checks = []Check{
	{"StartHealthyStop", nil, checkStartHealthyStop},
	{"ConfigReachesAddon", runsProcesses, checkConfigReachesAddon},
	{"ConfigAppliesInPlace", asksAddon, checkConfigAppliesInPlace},
	{"VersionChangeRestarts", nil, checkVersionChangeRestarts},
	{"UnhealthyReport", asksAddon, checkUnhealthyReport},
	{"ConfigureRejected", asksAddon, checkConfigureRejected},
	{"CrashBackoffCircuit", runsProcesses, checkCrashBackoffCircuit},
	{"HungHealthChecksRestart", asksAddon, checkHungHealthChecksRestart},
	{"BadBinariesReported", nil, checkBadBinariesReported},
	{"ResourcesOutOfRangeRefused", makesUnits, checkResourcesOutOfRange},
	{"CloseStopsEverything", diesWithAgent, checkCloseStopsEverything},
	{"CloseLeavesAddonsRunning", outlivesAgent, checkCloseLeavesAddonsRunning},
}

// Run runs every check the harness's model promises.
func Run(t *testing.T, h Harness) {
	for _, c := range Checks {
		if c.When != nil && !c.When(h) {
			continue
		}
		t.Run(c.Name, func(t *testing.T) { c.Run(t, &Suite{h: h}) })
	}
}

// Suite is what a check works with: the harness and helpers over it.
type Suite struct {
	h Harness
}

var ctx = context.Background()

// spec is the add-on id@version with config, of the harness's kind.
func (s *Suite) spec(id, version, config string) supervisors.Spec {
	sp := supervisors.Spec{AddonID: id, Version: version, Binary: s.h.Hello, ConfigJSON: []byte(config)}
	if s.h.Job {
		sp.Binary = s.h.Binary
	}
	if s.h.Spec != nil {
		s.h.Spec(&sp)
	}
	return sp
}

// healthy: running and healthy (with a process, for models that keep one).
func (s *Suite) healthy(e supervisors.Event) bool {
	return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy && (s.h.Job || e.PID > 0)
}

func (s *Suite) alive(pid int) bool { return s.h.Job || alive(pid) }
func (s *Suite) dead(pid int) bool  { return s.h.Job || !alive(pid) }

// backend builds a backend reporting to a new Recorder; what it started is
// stopped and the backend closed when the test ends.
func (s *Suite) backend(t *testing.T) (supervisors.Supervisor, *Recorder) {
	rec := NewRecorder()
	b := &tracked{Supervisor: s.h.New(t, rec.Notify), ids: map[string]bool{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s.h.OutlivesAgent {
			for id := range b.started() {
				b.Stop(ctx, id)
			}
		}
		b.Close(ctx)
	})
	return b, rec
}

// started starts id@1.0.0 with config and waits until it is healthy.
func (s *Suite) started(t *testing.T, b supervisors.Supervisor, rec *Recorder, id, config string) supervisors.Event {
	t.Helper()
	if err := b.Start(ctx, s.spec(id, "1.0.0", config)); err != nil {
		t.Fatal(err)
	}
	return rec.WaitFor(t, id, wait, "running and healthy", s.healthy)
}

// checkStartHealthyStop: a started add-on becomes healthy, Status says
// so, and Stop ends it and forgets it.
func checkStartHealthyStop(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	e := s.started(t, b, rec, "hello", `{}`)
	if e.Version != "1.0.0" || !s.alive(e.PID) {
		t.Fatalf("event %+v: want version 1.0.0 and a live process", e)
	}
	if st, ok := b.Status("hello"); !ok || st.PID != e.PID {
		t.Fatalf("Status = %+v, %v", st, ok)
	}
	if err := b.Stop(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "hello", wait, "stopped", func(e supervisors.Event) bool { return e.State == supervisors.StateStopped })
	if !s.dead(e.PID) {
		t.Fatalf("process %d still alive after Stop", e.PID)
	}
	if _, ok := b.Status("hello"); ok {
		t.Fatal("Status still knows a stopped add-on")
	}
}

// checkConfigReachesAddon: a new configuration reaches the running
// add-on (here: one that makes it crash).
func checkConfigReachesAddon(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	first := s.started(t, b, rec, "hello", `{}`)
	m := rec.Mark()
	if err := b.Update(ctx, s.spec("hello", "1.0.0", `{"crash_after":"20ms","exit_code":4}`)); err != nil {
		t.Fatal(err)
	}
	e := rec.WaitFrom(t, m, "hello", wait, "restarting after the configured crash", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
	if e.Cause != supervisors.CauseExited {
		t.Fatalf("cause %q, want %q", e.Cause, supervisors.CauseExited)
	}
	t.Logf("pid %d → restarting: %s", first.PID, e.Reason)
}

// checkConfigAppliesInPlace: a configuration change alone reaches an
// add-on that is asked (Configure) without a restart.
func checkConfigAppliesInPlace(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	first := s.started(t, b, rec, "hello", `{}`)
	m := rec.Mark()
	if err := b.Update(ctx, s.spec("hello", "1.0.0", `{"health":"degraded"}`)); err != nil {
		t.Fatal(err)
	}
	e := rec.WaitFrom(t, m, "hello", wait, "degraded", func(e supervisors.Event) bool { return e.State == supervisors.StateDegraded })
	if e.PID != first.PID || e.Restarts != 0 {
		t.Fatalf("configuration change restarted the add-on: pid %d → %d, restarts %d", first.PID, e.PID, e.Restarts)
	}
}

// checkVersionChangeRestarts: a new version replaces the old process.
func checkVersionChangeRestarts(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	first := s.started(t, b, rec, "hello", `{}`)
	m := rec.Mark()
	if err := b.Update(ctx, s.spec("hello", "1.1.0", `{}`)); err != nil {
		t.Fatal(err)
	}
	e := rec.WaitFrom(t, m, "hello", wait, "healthy 1.1.0", func(e supervisors.Event) bool { return s.healthy(e) && e.Version == "1.1.0" })
	if e.PID == first.PID && !s.h.Job {
		t.Fatal("version change kept the old process")
	}
	vmtest.Eventually(t, wait, fmt.Sprintf("old process %d gone", first.PID), func() bool { return s.dead(first.PID) })
}

// checkUnhealthyReport: an add-on's own unhealthy report, with its reason.
func checkUnhealthyReport(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	b.Start(ctx, s.spec("hello", "1.0.0", `{"health":"unhealthy"}`))
	e := rec.WaitFor(t, "hello", wait, "unhealthy", func(e supervisors.Event) bool {
		return e.State == supervisors.StateUnhealthy && e.Health == supervisors.HealthUnhealthy
	})
	if !strings.Contains(e.Reason, "configured to be unhealthy") || e.Cause != supervisors.CauseUnhealthy {
		t.Fatalf("reason %q, cause %q: want the add-on's own, %q", e.Reason, e.Cause, supervisors.CauseUnhealthy)
	}
}

// checkConfigureRejected: a configuration the add-on refuses makes it
// unhealthy, with its refusal and the cause the reconciler rolls back on.
func checkConfigureRejected(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	b.Start(ctx, s.spec("hello", "1.0.0", `{"configure_error":"no such target"}`))
	e := rec.WaitFor(t, "hello", wait, "unhealthy", func(e supervisors.Event) bool { return e.State == supervisors.StateUnhealthy })
	if !strings.Contains(e.Reason, "no such target") || e.Cause != supervisors.CauseConfigure {
		t.Fatalf("reason %q, cause %q: want the add-on's refusal, %q", e.Reason, e.Cause, supervisors.CauseConfigure)
	}
}

// checkCrashBackoffCircuit: a crashing add-on is restarted with backoff,
// its circuit opens, and an update (a fix) closes it at once.
func checkCrashBackoffCircuit(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	b.Start(ctx, s.spec("hello", "1.0.0", `{"crash_after":"50ms","exit_code":3}`))
	e := rec.WaitFor(t, "hello", wait, "restarting", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
	if e.Reason == "" || e.Cause != supervisors.CauseExited {
		t.Fatalf("restarting with reason %q, cause %q", e.Reason, e.Cause)
	}
	rec.WaitFor(t, "hello", wait, "circuit_open", func(e supervisors.Event) bool {
		return e.State == supervisors.StateCircuitOpen && strings.Contains(e.Reason, "restarts within") && e.Cause == supervisors.CauseStartLimit
	})
	m := rec.Mark()
	b.Update(ctx, s.spec("hello", "1.0.1", `{}`))
	rec.WaitFrom(t, m, "hello", wait, "healthy after the fix", func(e supervisors.Event) bool { return s.healthy(e) && e.Version == "1.0.1" })
}

// checkHungHealthChecksRestart: an add-on that stops answering its health
// checks is restarted.
func checkHungHealthChecksRestart(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	b.Start(ctx, s.spec("hello", "1.0.0", `{"hang_health":true}`))
	e := rec.WaitFor(t, "hello", wait, "restarting", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
	if !strings.Contains(e.Reason, "health") || e.Cause != supervisors.CauseUnhealthy {
		t.Fatalf("reason %q, cause %q: want the failed health checks", e.Reason, e.Cause)
	}
}

// checkBadBinariesReported: binaries that cannot run are refused or
// reported, each with a reason, and leave a good add-on alone.
func checkBadBinariesReported(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	dir := t.TempDir()
	script := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), mode)
		return p
	}
	refused := map[string]string{ // Start itself fails
		"missing": filepath.Join(dir, "missing"),
		"noexec":  script("noexec", "#!/bin/sh\nexit 0\n", 0o644),
	}
	failing := map[string]string{} // reported as it fails
	if !s.h.Job {
		failing["exits"] = script("exits", "#!/bin/sh\nexit 3\n", 0o755)
	}
	if s.h.AsksAddon {
		// No handshake: for a sidecar these fail to start.
		refused["exits"] = failing["exits"]
		refused["garbage"] = script("garbage", "#!/bin/sh\necho 'this is not a handshake'\nsleep 30\n", 0o755)
		refused["hangs"] = script("hangs", "#!/bin/sh\nsleep 30\n", 0o755)
	}
	b.Start(ctx, s.spec("good", "1.0.0", `{}`))
	for id, bin := range refused {
		sp := s.spec(id, "1.0.0", `{}`)
		sp.Binary = bin
		if err := b.Start(ctx, sp); err == nil || !strings.Contains(err.Error(), id) {
			t.Errorf("Start(%s) = %v, want an error naming the add-on", id, err)
		}
	}
	for id, bin := range failing {
		if _, ok := refused[id]; !ok {
			sp := s.spec(id, "1.0.0", `{}`)
			sp.Binary = bin
			b.Start(ctx, sp)
		}
	}
	if s.h.AsksAddon {
		for id, bin := range refused {
			failing[id] = bin // reported as events as well
		}
	}
	for id := range failing {
		e := rec.WaitFor(t, id, wait, "a failure with a reason", func(e supervisors.Event) bool {
			return (e.State == supervisors.StateRestarting || e.State == supervisors.StateCircuitOpen || e.State == supervisors.StateFailed) && e.Reason != ""
		})
		if e.Cause == supervisors.CauseNone {
			t.Errorf("%s: %s without a cause: %s", id, e.State, e.Reason)
		}
		t.Logf("%s: %s (%s): %s", id, e.State, e.Cause, e.Reason)
	}
	// A program that starts and exits at once is never healthy, not even
	// for an instant (it would be promoted on probation).
	if _, ok := failing["exits"]; ok {
		rec.WaitFor(t, "exits", wait, "a restart", func(e supervisors.Event) bool { return e.Restarts >= 2 })
		for _, e := range rec.Events("exits") {
			if e.Health == supervisors.HealthHealthy {
				t.Errorf("a program that exits at once was reported healthy: %+v", e)
			}
		}
	}
	e := rec.WaitFor(t, "good", wait, "healthy", s.healthy)
	if st, _ := b.Status("good"); st.PID != e.PID || !s.alive(e.PID) {
		t.Fatalf("the good add-on was disturbed: %+v", st)
	}
}

// checkResourcesOutOfRange: limits out of range are refused, naming the
// add-on and the field, and nothing is supervised.
func checkResourcesOutOfRange(t *testing.T, s *Suite) {
	b, _ := s.backend(t)
	for field, r := range map[string]supervisors.Resources{
		"cpu_max_percent":   {CPUMaxPercent: -5},
		"memory_max_bytes":  {MemoryMaxBytes: 100},
		"memory_high_bytes": {MemoryMaxBytes: 64 << 20, MemoryHighBytes: 128 << 20},
		"tasks_max":         {TasksMax: -1},
	} {
		sp := s.spec("limits", "1.0.0", `{}`)
		sp.Resources = &r
		err := b.Start(ctx, sp)
		if err == nil || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), "limits") {
			t.Errorf("Start with bad %s = %v, want an error naming the add-on and the field", field, err)
		}
		if _, ok := b.Status("limits"); ok {
			t.Errorf("a refused add-on is supervised")
		}
	}
}

// checkCloseStopsEverything: a backend whose add-ons are addond's children
// stops them all on Close.
func checkCloseStopsEverything(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	var pids []int
	for _, id := range []string{"a", "b", "c"} {
		pids = append(pids, s.started(t, b, rec, id, `{}`).PID)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.Close(cctx); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		vmtest.Eventually(t, wait, fmt.Sprintf("process %d gone after Close", pid), func() bool { return !alive(pid) })
	}
}

// checkCloseLeavesAddonsRunning: units outlive a closed backend, and a new
// backend adopts them without a restart; a changed spec replaces them.
func checkCloseLeavesAddonsRunning(t *testing.T, s *Suite) {
	b, rec := s.backend(t)
	pids := map[string]int{}
	for _, id := range []string{"a", "b", "c"} {
		pids[id] = s.started(t, b, rec, id, `{}`).PID
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.Close(cctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // a Close that stops them would show by now
	for id, pid := range pids {
		if !alive(pid) {
			t.Fatalf("%s: process %d stopped by Close", id, pid)
		}
	}
	b2, rec2 := s.backend(t)
	for id, pid := range pids {
		e := s.started(t, b2, rec2, id, `{}`)
		if e.PID != pid {
			t.Fatalf("%s: adopted as pid %d, was %d: restarted instead of adopted", id, e.PID, pid)
		}
	}
	b2.Update(ctx, s.spec("a", "1.0.1", `{}`))
	e := rec2.WaitFor(t, "a", wait, "healthy 1.0.1", func(e supervisors.Event) bool { return s.healthy(e) && e.Version == "1.0.1" })
	if e.PID == pids["a"] {
		t.Fatal("a new version kept the old process")
	}
	for id := range pids {
		if err := b2.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for id, pid := range pids {
		vmtest.Eventually(t, wait, fmt.Sprintf("%s: process %d gone after Stop", id, pid), func() bool { return !alive(pid) })
	}
}
