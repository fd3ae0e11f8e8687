// Package conformance is the one test suite every supervisors backend
// passes: run it from the backend's tests with a Harness that builds the
// backend with fast timings.
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
		cmd := exec.Command("go", "build", "-o", bin, "./sdk/examples/"+n)
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

// Mark is the index of the next event.
func (r *Recorder) Mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

const wait = 15 * time.Second

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	spec := func(id, version, config string) supervisors.Spec {
		s := supervisors.Spec{AddonID: id, Version: version, Binary: h.Hello, ConfigJSON: []byte(config)}
		if h.Job {
			s.Binary = h.Binary
		}
		if h.Spec != nil {
			h.Spec(&s)
		}
		return s
	}
	healthy := func(e supervisors.Event) bool {
		return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy && (h.Job || e.PID > 0)
	}
	alive := func(pid int) bool { return h.Job || alive(pid) }
	dead := func(pid int) bool { return h.Job || !alive(pid) }
	setup := func(t *testing.T) (supervisors.Supervisor, *Recorder) {
		rec := NewRecorder()
		s := &tracked{Supervisor: h.New(t, rec.Notify), ids: map[string]bool{}}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if h.OutlivesAgent {
				for id := range s.started() {
					s.Stop(ctx, id)
				}
			}
			s.Close(ctx)
		})
		return s, rec
	}
	ctx := context.Background()

	t.Run("start, healthy, stop", func(t *testing.T) {
		s, rec := setup(t)
		if err := s.Start(ctx, spec("hello", "1.0.0", `{}`)); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFor(t, "hello", wait, "running and healthy", healthy)
		if e.Version != "1.0.0" || !alive(e.PID) {
			t.Fatalf("event %+v: want version 1.0.0 and a live process", e)
		}
		if st, ok := s.Status("hello"); !ok || st.PID != e.PID {
			t.Fatalf("Status = %+v, %v", st, ok)
		}
		if err := s.Stop(ctx, "hello"); err != nil {
			t.Fatal(err)
		}
		rec.WaitFor(t, "hello", wait, "stopped", func(e supervisors.Event) bool { return e.State == supervisors.StateStopped })
		if !dead(e.PID) {
			t.Fatalf("process %d still alive after Stop", e.PID)
		}
		if _, ok := s.Status("hello"); ok {
			t.Fatal("Status still knows a stopped add-on")
		}
	})

	if !h.Job {
		t.Run("configuration change reaches the add-on", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{}`))
			first := rec.WaitFor(t, "hello", wait, "healthy", healthy)
			m := rec.Mark()
			if err := s.Update(ctx, spec("hello", "1.0.0", `{"crash_after":"20ms","exit_code":4}`)); err != nil {
				t.Fatal(err)
			}
			e := rec.WaitFrom(t, m, "hello", wait, "restarting after the configured crash", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
			t.Logf("pid %d → restarting: %s", first.PID, e.Reason)
		})
	}

	if h.AsksAddon {
		t.Run("configuration change applies in place", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{}`))
			first := rec.WaitFor(t, "hello", wait, "healthy", healthy)
			m := rec.Mark()
			if err := s.Update(ctx, spec("hello", "1.0.0", `{"health":"degraded"}`)); err != nil {
				t.Fatal(err)
			}
			e := rec.WaitFrom(t, m, "hello", wait, "degraded", func(e supervisors.Event) bool { return e.State == supervisors.StateDegraded })
			if e.PID != first.PID || e.Restarts != 0 {
				t.Fatalf("configuration change restarted the add-on: pid %d → %d, restarts %d", first.PID, e.PID, e.Restarts)
			}
		})
	}

	t.Run("version change restarts", func(t *testing.T) {
		s, rec := setup(t)
		s.Start(ctx, spec("hello", "1.0.0", `{}`))
		first := rec.WaitFor(t, "hello", wait, "healthy", healthy)
		m := rec.Mark()
		if err := s.Update(ctx, spec("hello", "1.1.0", `{}`)); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFrom(t, m, "hello", wait, "healthy 1.1.0", func(e supervisors.Event) bool { return healthy(e) && e.Version == "1.1.0" })
		if e.PID == first.PID && !h.Job {
			t.Fatal("version change kept the old process")
		}
		time.Sleep(100 * time.Millisecond)
		if !dead(first.PID) {
			t.Fatalf("old process %d still alive", first.PID)
		}
	})

	if h.AsksAddon {
		t.Run("unhealthy report", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{"health":"unhealthy"}`))
			e := rec.WaitFor(t, "hello", wait, "unhealthy", func(e supervisors.Event) bool {
				return e.State == supervisors.StateUnhealthy && e.Health == supervisors.HealthUnhealthy
			})
			if !strings.Contains(e.Reason, "configured to be unhealthy") {
				t.Fatalf("reason %q, want the add-on's own", e.Reason)
			}
		})
	}

	if h.AsksAddon {
		t.Run("configure rejected", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{"configure_error":"no such target"}`))
			e := rec.WaitFor(t, "hello", wait, "unhealthy", func(e supervisors.Event) bool { return e.State == supervisors.StateUnhealthy })
			if !strings.Contains(e.Reason, "no such target") {
				t.Fatalf("reason %q, want the add-on's refusal", e.Reason)
			}
		})
	}

	if !h.Job {
		t.Run("crash restarts with backoff, then the circuit opens", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{"crash_after":"50ms","exit_code":3}`))
			e := rec.WaitFor(t, "hello", wait, "restarting", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
			if e.Reason == "" {
				t.Fatal("restarting without a reason")
			}
			rec.WaitFor(t, "hello", wait, "circuit_open", func(e supervisors.Event) bool {
				return e.State == supervisors.StateCircuitOpen && strings.Contains(e.Reason, "restarts within")
			})
			// An update (a fix) closes the circuit at once.
			m := rec.Mark()
			s.Update(ctx, spec("hello", "1.0.1", `{}`))
			rec.WaitFrom(t, m, "hello", wait, "healthy after the fix", func(e supervisors.Event) bool { return healthy(e) && e.Version == "1.0.1" })
		})
	}

	if h.AsksAddon {
		t.Run("hung health checks restart", func(t *testing.T) {
			s, rec := setup(t)
			s.Start(ctx, spec("hello", "1.0.0", `{"hang_health":true}`))
			e := rec.WaitFor(t, "hello", wait, "restarting", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
			if !strings.Contains(e.Reason, "health") {
				t.Fatalf("reason %q, want the failed health checks", e.Reason)
			}
		})
	}

	t.Run("bad binaries are reported, others unaffected", func(t *testing.T) {
		s, rec := setup(t)
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
		if !h.Job {
			failing["exits"] = script("exits", "#!/bin/sh\nexit 3\n", 0o755)
		}
		if h.AsksAddon {
			// No handshake: for a sidecar these fail to start.
			refused["exits"] = failing["exits"]
			refused["garbage"] = script("garbage", "#!/bin/sh\necho 'this is not a handshake'\nsleep 30\n", 0o755)
			refused["hangs"] = script("hangs", "#!/bin/sh\nsleep 30\n", 0o755)
		}
		s.Start(ctx, spec("good", "1.0.0", `{}`))
		for id, bin := range refused {
			sp := spec(id, "1.0.0", `{}`)
			sp.Binary = bin
			if err := s.Start(ctx, sp); err == nil || !strings.Contains(err.Error(), id) {
				t.Errorf("Start(%s) = %v, want an error naming the add-on", id, err)
			}
		}
		for id, bin := range failing {
			if _, ok := refused[id]; !ok {
				sp := spec(id, "1.0.0", `{}`)
				sp.Binary = bin
				s.Start(ctx, sp)
			}
		}
		if h.AsksAddon {
			for id, bin := range refused {
				failing[id] = bin // reported as events as well
			}
		}
		for id := range failing {
			e := rec.WaitFor(t, id, wait, "a failure with a reason", func(e supervisors.Event) bool {
				return (e.State == supervisors.StateRestarting || e.State == supervisors.StateCircuitOpen || e.State == supervisors.StateFailed) && e.Reason != ""
			})
			t.Logf("%s: %s: %s", id, e.State, e.Reason)
		}
		// A program that starts and exits at once is never healthy, not
		// even for an instant (it would be promoted on probation).
		if _, ok := failing["exits"]; ok {
			rec.WaitFor(t, "exits", wait, "a restart", func(e supervisors.Event) bool { return e.Restarts >= 2 })
			rec.mu.Lock()
			for _, e := range rec.events {
				if e.AddonID == "exits" && e.Health == supervisors.HealthHealthy {
					t.Errorf("a program that exits at once was reported healthy: %+v", e)
				}
			}
			rec.mu.Unlock()
		}
		e := rec.WaitFor(t, "good", wait, "healthy", healthy)
		if st, _ := s.Status("good"); st.PID != e.PID || !alive(e.PID) {
			t.Fatalf("the good add-on was disturbed: %+v", st)
		}
	})

	if h.Units {
		t.Run("resources out of range are refused", func(t *testing.T) {
			s, _ := setup(t)
			for field, r := range map[string]supervisors.Resources{
				"cpu_max_percent":   {CPUMaxPercent: -5},
				"memory_max_bytes":  {MemoryMaxBytes: 100},
				"memory_high_bytes": {MemoryMaxBytes: 64 << 20, MemoryHighBytes: 128 << 20},
				"tasks_max":         {TasksMax: -1},
			} {
				sp := spec("limits", "1.0.0", `{}`)
				sp.Resources = &r
				err := s.Start(ctx, sp)
				if err == nil || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), "limits") {
					t.Errorf("Start with bad %s = %v, want an error naming the add-on and the field", field, err)
				}
				if _, ok := s.Status("limits"); ok {
					t.Errorf("a refused add-on is supervised")
				}
			}
		})
	}

	if h.Job {
		return // what outlives the backend is the model's own test
	}
	if !h.OutlivesAgent {
		t.Run("close stops everything", func(t *testing.T) {
			s, rec := setup(t)
			var pids []int
			for _, id := range []string{"a", "b", "c"} {
				s.Start(ctx, spec(id, "1.0.0", `{}`))
				pids = append(pids, rec.WaitFor(t, id, wait, "healthy", healthy).PID)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := s.Close(cctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			for _, pid := range pids {
				if alive(pid) {
					t.Fatalf("process %d left behind by Close", pid)
				}
			}
		})
		return
	}

	t.Run("close leaves add-ons running; a new backend adopts them", func(t *testing.T) {
		s, rec := setup(t)
		pids := map[string]int{}
		for _, id := range []string{"a", "b", "c"} {
			s.Start(ctx, spec(id, "1.0.0", `{}`))
			pids[id] = rec.WaitFor(t, id, wait, "healthy", healthy).PID
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := s.Close(cctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		for id, pid := range pids {
			if !alive(pid) {
				t.Fatalf("%s: process %d stopped by Close", id, pid)
			}
		}
		s2, rec2 := setup(t)
		for id, pid := range pids {
			if err := s2.Start(ctx, spec(id, "1.0.0", `{}`)); err != nil {
				t.Fatal(err)
			}
			e := rec2.WaitFor(t, id, wait, "healthy", healthy)
			if e.PID != pid {
				t.Fatalf("%s: adopted as pid %d, was %d: restarted instead of adopted", id, e.PID, pid)
			}
		}
		// A changed spec is not adopted: it replaces the unit.
		s2.Update(ctx, spec("a", "1.0.1", `{}`))
		e := rec2.WaitFor(t, "a", wait, "healthy 1.0.1", func(e supervisors.Event) bool { return healthy(e) && e.Version == "1.0.1" })
		if e.PID == pids["a"] {
			t.Fatal("a new version kept the old process")
		}
		for id := range pids {
			if err := s2.Stop(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		for id, pid := range pids {
			if alive(pid) {
				t.Fatalf("%s: process %d alive after Stop", id, pid)
			}
		}
	})
}
