package reconcile

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
)

const (
	healthy   = supervisors.HealthHealthy
	unknown   = supervisors.HealthUnknown
	unhealthy = supervisors.HealthUnhealthy
)

// The policy, case by case: each a sequence of inputs on a fake clock
// (t0 + the durations named) and what must follow. Cases marked with a
// bug number are the bugs docs/RELIABILITY.md lists as found by the
// suite, each reproduced here without a process or a timer.
var cases = []struct {
	name string
	run  func(h *harness)
}{
	// ---- first install, promotion
	{"a new add-on is staged", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		if st := one[Stage](h); st.Spec.Version != "1.0.0" || st.Caps {
			h.t.Fatalf("Stage %+v", st)
		}
		h.want("a", StateDownloading, "", unknown)
		if h.c.InFlight() != 1 {
			h.t.Fatalf("%d stagings in flight", h.c.InFlight())
		}
	}},
	{"a staged version is activated on probation and started", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		h.at(time.Second).stageDone("a@1.0.0")
		one[Activate](h)
		p := h.lastPersist("a")
		if p.Probation == nil || p.Probation.Version != "1.0.0" || !p.Probation.Deadline.Equal(t0.Add(time.Second+time.Minute)) {
			h.t.Fatalf("probation %+v, want 1.0.0 until t0+61s", p.Probation)
		}
		if p.HighestVersion != "1.0.0" {
			h.t.Fatalf("highest %q", p.HighestVersion)
		}
		if st := one[Start](h); st.Update || st.StopFirst != "" || st.Spec.Version != "1.0.0" {
			h.t.Fatalf("Start %+v", st)
		}
		h.want("a", StateStarting, "1.0.0", unknown)
		if !h.c.OnProbation() || h.c.InFlight() != 0 {
			h.t.Fatalf("on probation %v, in flight %d", h.c.OnProbation(), h.c.InFlight())
		}
	}},
	{"healthy on probation: promoted, old versions collected", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		if a := h.status("a"); !a.Probation || a.ActiveVersion != "1.1.0" {
			h.t.Fatalf("a started version is on probation: %+v", a)
		}
		h.gcRemoved = []string{"0.9.0"}
		h.event("a@1.1.0", supervisors.StateRunning, healthy)
		if a := h.status("a"); a.Probation {
			h.t.Fatalf("a promoted version is off probation: %+v", a)
		}
		if p := h.lastPersist("a"); p.LKG == nil || p.LKG.Version != "1.1.0" || p.Probation != nil {
			h.t.Fatalf("persisted %+v", p)
		}
		one[GC](h)
		if d := one[DropCapped](h); d.Versions[0] != "0.9.0" {
			h.t.Fatalf("DropCapped %+v", d)
		}
		if h.c.OnProbation() {
			h.t.Fatal("still on probation")
		}
		if a := h.want("a", StateRunning, "1.1.0", healthy); a.PreviousVersion != "1.0.0" {
			h.t.Fatalf("previous %q", a.PreviousVersion)
		}
	}},
	{"a healthy version off probation becomes last-known-good once", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.event("a@1.0.0", supervisors.StateDegraded, supervisors.HealthDegraded)
		h.event("a@1.0.0", supervisors.StateRunning, healthy)
		none[Persist](h) // the last-known-good already
	}},
	{"a crash during probation, then healthy: promoted", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		h.started("a", nil)
		h.at(10*time.Second).event("a@1.0.0", supervisors.StateRestarting, unhealthy, restarts(1))
		none[Activate](h)
		h.at(20*time.Second).event("a@1.0.0", supervisors.StateRunning, healthy)
		if p := h.lastPersist("a"); p.LKG == nil || p.LKG.Version != "1.0.0" {
			h.t.Fatalf("persisted %+v", p)
		}
	}},
	// ---- rollback
	{"rollback by probation deadline", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(50*time.Second).event("a@1.1.0", supervisors.StateUnhealthy, unhealthy, cause(supervisors.CauseUnhealthy, "disk on fire"))
		h.step(Tick{})
		none[Activate](h)
		h.at(61 * time.Second).step(Tick{})
		p := h.lastPersist("a")
		if f, ok := p.Failed["1.1.0"]; !ok || f.SHA256 != sha("a@1.1.0") || !strings.Contains(f.Reason, "not healthy within the 1m0s probation: disk on fire") {
			h.t.Fatalf("failed %+v", p.Failed)
		}
		acts := h.take()
		if k := kinds(acts); !strings.Contains(k, "Persist(a) Count FaultPoint Activate(a@1.0.0) FaultPoint Update(a@1.0.0)") {
			h.t.Fatalf("rollback's actions in order: %s", k)
		}
		a := h.want("a", StateRolledBack, "1.0.0", unhealthy)
		if !a.FromLKG || a.Version != "1.1.0" || a.Probation {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"a rollback by deadline names the last failure, even right after a restart began", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0", asService)))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.event("a@1.1.0", supervisors.StateRestarting, unhealthy, restarts(2), cause(supervisors.CauseExited, "exited with status 3; systemd restarts it (2 restarts)"))
		h.event("a@1.1.0", supervisors.StateStarting, unknown, func(e *supervisors.Event) { e.Restarts = RestartThreshold })
		h.at(2 * time.Minute).step(Tick{})
		if a := h.status("a"); a.LastError != "not healthy within the 1m0s probation: exited with status 3; systemd restarts it (2 restarts)" {
			h.t.Fatalf("reason %q", a.LastError)
		}
	}},
	{"rollback by crash loop: the RestartThreshold-th restart", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.event("a@1.1.0", supervisors.StateRestarting, unhealthy, restarts(RestartThreshold-1))
		none[Activate](h)
		h.event("a@1.1.0", supervisors.StateRestarting, unhealthy, restarts(RestartThreshold))
		one[Activate](h)
		if a := h.status("a"); !strings.HasPrefix(a.LastError, "crash-looped on probation: exit status 3") {
			h.t.Fatalf("reason %q", a.LastError)
		}
	}},
	{"rollback by an open circuit", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.event("a@1.1.0", supervisors.StateCircuitOpen, unhealthy, cause(supervisors.CauseStartLimit, "too many restarts"))
		one[Activate](h)
		h.want("a", StateRolledBack, "1.0.0", unhealthy)
	}},
	{"rollback by a refused Configure, at once", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0", withConfig(`{"x":1}`))))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.event("a@1.1.0", supervisors.StateUnhealthy, unhealthy, cause(supervisors.CauseConfigure, "configure: no such target"))
		one[Activate](h)
		if a := h.status("a"); a.LastError != "failed Configure on probation: no such target" {
			h.t.Fatalf("reason %q", a.LastError)
		}
	}},
	{"unhealthy for another cause waits for the deadline", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.event("a@1.1.0", supervisors.StateUnhealthy, unhealthy, cause(supervisors.CauseUnhealthy, "configure: looks like a prefix"))
		none[Activate](h)
	}},
	{"a first install that fails probation has nothing to go back to", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		one[Stop](h)
		none[Activate](h)
		h.want("a", StateFailed, "", unknown)
	}},
	{"the rollback's activation fails: stopped and failed, saying both", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.activateErr["a@1.0.0"] = errDisk
		h.at(2 * time.Minute).step(Tick{})
		one[Stop](h)
		none[Start](h)
		if a := h.want("a", StateFailed, "", anyHealth); !strings.Contains(a.LastError, "rollback to 1.0.0 failed: input/output error") {
			h.t.Fatalf("%q", a.LastError)
		}
	}},
	{"a failed version is not staged again", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		h.take()
		h.refresh(desired(spec("a@1.1.0")))
		none[Stage](h)
		h.want("a", StateRolledBack, "1.0.0", anyHealth)
	}},
	{"a failed version published again with other bytes is tried again", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		h.take()
		h.refresh(desired(spec("a@1.1.0", republished)))
		one[Stage](h)
	}},
	// ---- rolled_back lasts until ...
	{"rolled_back ends when the assignment changes", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		h.take()
		h.refresh(desired(spec("a@1.2.0")))
		h.stageDone("a@1.2.0")
		h.want("a", StateStarting, "1.2.0", anyHealth)
	}},
	{"rolled_back ends with retry", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		h.take()
		h.step(Retry{ID: "a", Token: 7})
		if p := h.lastPersist("a"); len(p.Failed) != 0 {
			h.t.Fatalf("failed %+v after retry", p.Failed)
		}
		if r := one[Reply](h); r.Token != 7 || r.Err != nil {
			h.t.Fatalf("%+v", r)
		}
		one[Fetch](h)
		h.take()
		h.step(desired(spec("a@1.1.0")))
		one[Stage](h)
	}},
	{"rolled_back ends when the document asks for the version that runs (bug 12)", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		h.started("a", nil)
		h.event("a@1.0.0", supervisors.StateRunning, healthy)
		h.take()
		h.refresh(desired(spec("a@1.0.0")))
		none[Stage](h)
		if a := h.want("a", StateRunning, "1.0.0", healthy); a.FromLKG || a.LastError != "" {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"a rolled-back add-on stays rolled_back while its old version runs", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(2 * time.Minute).step(Tick{})
		// As a unit backend tells it: the old version starting, then up.
		h.event("a@1.0.0", supervisors.StateStarting, unknown)
		h.want("a", StateRolledBack, "1.0.0", unknown)
		h.event("a@1.0.0", supervisors.StateRunning, healthy)
		if a := h.want("a", StateRolledBack, "1.0.0", healthy); !strings.Contains(a.LastError, "not healthy within the 1m0s probation") {
			h.t.Fatalf("the rollback's reason is gone: %+v", a)
		}
		if s := h.c.Summary(); !strings.HasPrefix(s, "1/1 add-ons running") {
			h.t.Fatalf("summary %q", s)
		}
	}},
	// ---- probation and time
	{"probation paused while the manager is away", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		h.started("a", nil)
		h.event("a@1.0.0", supervisors.StateStarting, unknown, waiting, cause(supervisors.CauseManagerGone, "waiting for the systemd manager"))
		h.at(10 * time.Minute).step(Tick{})
		none[Stop](h)
		h.at(10*time.Minute+time.Second).event("a@1.0.0", supervisors.StateStarting, unknown)
		h.at(11 * time.Minute).step(Tick{})
		none[Stop](h) // a fresh probation, from 10m
		h.at(11*time.Minute + 2*time.Second).step(Tick{})
		one[Stop](h)
	}},
	{"probation does not run while the start is in flight", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		h.at(5 * time.Minute).step(Tick{}) // the backend's Start still has not returned
		none[Stop](h)
		h.started("a", nil)
		h.at(5*time.Minute + 30*time.Second).step(Tick{})
		none[Stop](h)
		h.at(6*time.Minute + time.Second).step(Tick{})
		one[Stop](h)
	}},
	{"a healthy event that came before the tick wins (bug 5)", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		// The loop steps queued events before a tick: the event is late,
		// the tick later still.
		h.at(61*time.Second).event("a@1.1.0", supervisors.StateRunning, healthy)
		h.step(Tick{})
		none[Activate](h)
		h.want("a", StateRunning, "1.1.0", healthy)
	}},
	{"the clock stepping back holds the deadline, stepping forward past it rolls back", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.at(time.Hour).refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		h.started("a", nil)
		h.at(-2 * time.Hour).step(Tick{}) // back
		none[Activate](h)
		h.at(time.Hour + 59*time.Second).step(Tick{})
		none[Activate](h)
		h.at(4 * time.Hour).step(Tick{}) // forward
		one[Activate](h)
	}},
	{"no ticks are wanted without a version on probation", func(h *harness) {
		h.running(spec("a@1.0.0"))
		if h.c.OnProbation() {
			h.t.Fatal("on probation after promotion")
		}
	}},
	// ---- boot
	{"boot starts the last-known-good from local state", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"))}})
		st := one[Start](h)
		if st.Spec.Version != "1.0.0" || st.AskUpdater {
			h.t.Fatalf("%+v", st)
		}
		if a := h.want("a", StateStarting, "1.0.0", unknown); !a.FromLKG {
			h.t.Fatal("not from_lkg before any document")
		}
		none[Fetch](h)
		none[Sweep](h)
	}},
	{"boot asks addond-updater for a capped last-known-good; without one it waits staged", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0", withCaps))}})
		st := one[Start](h)
		if !st.AskUpdater || st.Copy != "" {
			h.t.Fatalf("%+v", st)
		}
		h.take()
		h.step(StartDone{ID: "a", Seq: st.Seq, CapErr: errors.New("capped copy unavailable")})
		h.want("a", StateStaged, "", unknown)
	}},
	{"boot goes back to the last-known-good when a probation was interrupted", func(h *harness) {
		h.current["a"] = "1.1.0"
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"), func(r *Recovered) {
			r.Current = "1.1.0"
			r.State.Probation = &state.Probation{Version: "1.1.0", Previous: "1.0.0"}
		})}})
		if !strings.Contains(strings.Join(h.logs(), "|"), "probation was interrupted by a restart") {
			h.t.Fatalf("logs %v", h.logs())
		}
		if p := h.lastPersist("a"); p.Probation != nil {
			h.t.Fatalf("probation %+v kept", p.Probation)
		}
		if k := kinds(h.take()); !strings.Contains(k, "Activate(a@1.0.0) Persist(a) Start(a@1.0.0)") {
			h.t.Fatalf("%s", k)
		}
	}},
	{"boot: killed after the swap, before the probation was recorded (bug 2)", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"), func(r *Recovered) { r.Current = "1.1.0" })}})
		one[Activate](h)
		if !strings.Contains(strings.Join(h.logs(), "|"), "an activation was interrupted") {
			h.t.Fatalf("logs %v", h.logs())
		}
	}},
	{"boot: killed between recording a rollback and swapping back (bug 1)", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"), func(r *Recovered) {
			r.Current = "1.1.0"
			r.State.Failed["1.1.0"] = state.Failure{SHA256: sha("a@1.1.0"), Reason: "crash-looped"}
			r.State.Staged["1.1.0"] = state.StagedVersion{SHA256: sha("a@1.1.0")}
		})}})
		one[Activate](h)
		one[Start](h)
		if !strings.Contains(strings.Join(h.logs(), "|"), "a rollback was interrupted") {
			h.t.Fatalf("logs %v", h.logs())
		}
	}},
	{"boot: the return to the last-known-good fails, nothing starts", func(h *harness) {
		h.activateErr["a@1.0.0"] = errDisk
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"), func(r *Recovered) { r.Current = "1.1.0" })}})
		none[Start](h)
		if len(h.c.Addons()) != 0 {
			h.t.Fatalf("%+v", h.c.Addons())
		}
	}},
	{"boot: state from before anti-rollback gets its floor", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"), func(r *Recovered) { r.State.HighestVersion = "" })}})
		if p := h.lastPersist("a"); p.HighestVersion != "1.0.0" {
			h.t.Fatalf("highest %q", p.HighestVersion)
		}
	}},
	{"boot starts nothing without a last-known-good, or a disabled one", func(h *harness) {
		h.step(Boot{Addons: []Recovered{
			{ID: "none", State: &state.Addon{}},
			recovered(spec("off@1.0.0", disabled)),
			recovered(spec("bad@1.0.0"), func(r *Recovered) { r.CurrentErr = errDisk }),
		}})
		none[Start](h)
	}},
	// ---- anti-downgrade
	{"a downgrade is refused at activation, once, and what runs stays", func(h *harness) {
		h.running(spec("a@2.0.0"))
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		none[Activate](h)
		if c := h.counts(MetricDowngradesRefused); len(c) != 1 || c[0].Label != "a" {
			h.t.Fatalf("counts %+v", c)
		}
		if a := h.want("a", StateRunning, "2.0.0", healthy); !a.FromLKG || !strings.Contains(a.LastError, "downgrade") || a.Version != "1.0.0" {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"a downgrade refused at refresh is counted once however often it comes", func(h *harness) {
		h.running(spec("a@2.0.0"))
		refused := Entry{ID: "a", Version: "1.0.0", Err: fmt.Errorf("addon %q: %w", "a", assignment.ErrDowngrade)}
		n := 0
		for range 3 {
			h.refresh(Desired{Authoritative: true, Doc: DocInfo{Fresh: true}, Entries: []Entry{refused}})
			n += len(h.counts(MetricDowngradesRefused))
		}
		if n != 1 {
			h.t.Fatalf("counted %d times", n)
		}
		if a := h.status("a"); a.Version != "1.0.0" || a.ActiveVersion != "2.0.0" {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"a downgrade the assignment allows is activated", func(h *harness) {
		h.running(spec("a@2.0.0"))
		h.refresh(desired(spec("a@1.0.0", allowDown)))
		h.stageDone("a@1.0.0")
		one[Activate](h)
	}},
	{"a downgrade pinned by the operator is activated", func(h *harness) {
		h.running(spec("a@2.0.0"))
		d := desired(spec("a@1.0.0"))
		d.Entries[0].Pinned = true
		h.refresh(d)
		h.stageDone("a@1.0.0")
		one[Activate](h)
	}},
	{"floors go out with every fetch", func(h *harness) {
		h.running(spec("a@2.0.0"))
		h.step(Poll{})
		if f := one[Fetch](h); f.Floors["a"] != (Floor{Current: "2.0.0", Highest: "2.0.0"}) {
			h.t.Fatalf("%+v", f.Floors)
		}
	}},
	// ---- removal and staging
	{"an add-on removed while staging: cancelled, and its late result cleans up", func(h *harness) {
		h.refresh(desired(spec("late@1.0.0")))
		st := one[Stage](h)
		h.take()
		h.refresh(desired())
		if c := one[CancelStage](h); c.Seq != st.Seq {
			h.t.Fatalf("%+v", c)
		}
		one[Remove](h)
		h.gone("late")
		h.take()
		h.step(Staged{Seq: st.Seq, Spec: st.Spec}) // ended after all: wrote its version
		one[Remove](h)
		if !strings.Contains(strings.Join(h.logs(), "|"), "discarded a version staged") {
			h.t.Fatalf("logs %v", h.logs())
		}
		if h.c.InFlight() != 0 {
			h.t.Fatalf("%d in flight (bug 6: a staging that ended after removal kept the count up)", h.c.InFlight())
		}
	}},
	{"removed and assigned again while staging: one staging at a time", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		st := one[Stage](h)
		h.take()
		h.refresh(desired())
		h.refresh(desired(spec("a@1.0.0")))
		none[Stage](h)
		h.want("a", StateDownloading, "", unknown)
		h.take()
		h.step(Staged{Seq: st.Seq, Spec: st.Spec, Err: errors.New("context canceled")})
		none[Remove](h) // the directory is the new assignment's
		one[Stage](h)
	}},
	{"the assignment moves to another version while staging", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		st := one[Stage](h)
		h.take()
		h.refresh(desired(spec("a@1.1.0")))
		one[CancelStage](h)
		none[Stage](h)
		h.take()
		h.step(Staged{Seq: st.Seq, Spec: st.Spec, Err: errors.New("context canceled")})
		if s := one[Stage](h); s.Spec.Version != "1.1.0" {
			h.t.Fatalf("%+v", s)
		}
		if d := one[DiscardPartial](h); d.Version != "1.0.0" {
			h.t.Fatalf("%+v", d)
		}
		none[Activate](h)
	}},
	{"a staging cut short for an add-on disabled meanwhile leaves no partial download (the soak found it)", func(h *harness) {
		h.refresh(desired(spec("a@1.1.0")))
		st := one[Stage](h)
		h.take()
		h.refresh(desired(spec("a@1.1.0", disabled)))
		one[CancelStage](h)
		h.take()
		h.step(Staged{Seq: st.Seq, Spec: st.Spec, Err: errors.New("context canceled")})
		if d := one[DiscardPartial](h); d.ID != "a" || d.Version != "1.1.0" {
			h.t.Fatalf("%+v", d)
		}
	}},
	{"a running add-on removed: stopped, its tree and capped copies go", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0", withCaps)))
		h.stageDone("a@1.0.0", func(m *Staged) { m.Capped = "/priv/a/1.0.0/a" })
		if st := one[Start](h); st.Copy != "/priv/a/1.0.0/a" {
			h.t.Fatalf("%+v", st)
		}
		h.take()
		h.refresh(desired())
		if k := kinds(h.take()); !strings.Contains(k, "Stop(a) Remove DropCapped") {
			h.t.Fatalf("%s", k)
		}
	}},
	{"a refresh that is not authoritative removes nothing", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(Desired{Doc: DocInfo{Err: errors.New("store down")}})
		none[Remove](h)
		none[Sweep](h)
		if a := h.status("a"); !a.FromLKG {
			h.t.Fatal("not from_lkg without a fresh document")
		}
		if s := h.c.Summary(); !strings.Contains(s, "store unreachable") {
			h.t.Fatalf("summary %q", s)
		}
	}},
	{"a delivery failure keeps what runs", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0", func(m *Staged) {
			m.Err = &delivery.Error{AddonID: "a", Version: "1.1.0", Op: "verify", Err: errors.New("sha256 mismatch")}
		})
		none[Activate](h)
		if c := h.counts(MetricDeliveryFailures); len(c) != 1 || c[0].Label != "verify" {
			h.t.Fatalf("%+v", c)
		}
		if a := h.want("a", StateRunning, "1.0.0", healthy); !a.FromLKG || !strings.Contains(a.LastError, "sha256 mismatch") {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"no capped copy yet: the running version stays, nothing fails", func(h *harness) {
		h.running(spec("a@1.0.0", withCaps))
		h.refresh(desired(spec("a@1.1.0", withCaps)))
		h.stageDone("a@1.1.0", func(m *Staged) { m.CapErr = errors.New("updater away") })
		none[Activate](h)
		h.want("a", StateRunning, "1.0.0", healthy)
	}},
	{"a Start with no capped copy changes nothing", func(h *harness) {
		h.running(spec("a@1.0.0", withCaps))
		h.refresh(desired(spec("a@1.0.0", withCaps, withConfig(`{"a":1}`))))
		st := one[Start](h)
		h.take()
		h.step(StartDone{ID: "a", Seq: st.Seq, CapErr: errors.New("no capped copy")})
		if a := h.want("a", StateRunning, "1.0.0", healthy); a.LastError != "no capped copy" {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"an activation that fails starts nothing", func(h *harness) {
		h.activateErr["a@1.0.0"] = errDisk
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		none[Start](h)
		none[Persist](h)
	}},
	// ---- models, delivery kinds, config
	{"disabled: stopped; enabled again on the last-known-good, without probation", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.0.0", disabled)))
		one[Stop](h)
		h.want("a", StateDisabled, "", unknown)
		h.take()
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		if p := h.lastPersist("a"); p.Probation != nil {
			h.t.Fatalf("probation %+v", p.Probation)
		}
		if h.c.OnProbation() {
			h.t.Fatal("on probation")
		}
	}},
	{"a model or delivery this host lacks is unsupported", func(h *harness) {
		h.refresh(desired(spec("t@1.0.0", func(s *assignment.Spec) { s.Supervision = assignment.SupervisionSystemdTimer }),
			spec("x@1.0.0", func(s *assignment.Spec) { s.Delivery = "carrier_pigeon" })))
		none[Stage](h)
		if a := h.status("t"); a.State != StateUnsupported || !strings.Contains(a.LastError, `supervision "systemd_timer"`) {
			h.t.Fatalf("%+v", a)
		}
		if a := h.status("x"); a.State != StateUnsupported || !strings.Contains(a.LastError, `delivery "carrier_pigeon"`) {
			h.t.Fatalf("%+v", a)
		}
	}},
	{"a configuration change alone is applied in place", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.0.0", withConfig(`{"b":2}`))))
		none[Stage](h)
		if st := one[Start](h); !st.Update {
			h.t.Fatalf("%+v", st)
		}
	}},
	{"a new version under another model is on probation too", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(desired(spec("a@1.1.0", asService)))
		h.stageDone("a@1.1.0")
		if st := one[Start](h); st.StopFirst != assignment.SupervisionAgentSidecar || st.Update {
			h.t.Fatalf("%+v", st)
		}
		if !h.c.OnProbation() {
			h.t.Fatal("a model change skipped probation")
		}
	}},
	{"os_package: checked, started, stopped when it no longer passes, restarted when replaced", func(h *harness) {
		pkg := spec("p@1.0.0", func(s *assignment.Spec) {
			s.Delivery, s.Artifact, s.BinaryPath = assignment.DeliveryOSPackage, nil, "/usr/bin/p"
		})
		d := desired(pkg)
		d.Entries[0].Installed = &delivery.Installed{Path: "/usr/bin/p"}
		h.refresh(d)
		none[Stage](h)
		one[Start](h)
		h.take()
		d.Entries[0].Installed, d.Entries[0].InstalledErr = nil, errors.New(`addon "p": /usr/bin/p is writable by others`)
		h.refresh(d)
		one[Stop](h)
		h.want("p", StateFailed, "", unknown)
		h.take()
		d.Entries[0].Installed, d.Entries[0].InstalledErr = &delivery.Installed{Path: "/usr/bin/p", SHA256: "new"}, nil
		h.refresh(d)
		one[Start](h)
		h.take()
		d.Entries[0].Installed = &delivery.Installed{Path: "/usr/bin/p", SHA256: "newer"}
		h.refresh(d)
		if k := kinds(h.take()); !strings.Contains(k, "Stop(p) Start(p@1.0.0)") {
			h.t.Fatalf("replaced binary: %s", k)
		}
	}},
	{"compiled_in: started, never on probation, never last-known-good", func(h *harness) {
		f := spec("hb@1", func(s *assignment.Spec) {
			s.Delivery, s.Artifact, s.Supervision, s.Feature = assignment.DeliveryCompiledIn, nil, assignment.SupervisionConfigToggle, "heartbeat"
		})
		h.refresh(desired(f))
		one[Start](h)
		h.started("hb", nil)
		h.event("hb@1", supervisors.StateRunning, healthy)
		none[Persist](h)
		if h.c.OnProbation() {
			h.t.Fatal("on probation")
		}
	}},
	{"a stale event of another version is ignored", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.event("a@0.9.0", supervisors.StateFailed, unhealthy)
		h.want("a", StateRunning, "1.0.0", healthy)
	}},
	// ---- requests, refresh, reload
	{"one refresh at a time; one more when asked meanwhile", func(h *harness) {
		h.step(Poll{})
		h.step(Reconcile{Token: 1})
		if f := find[Fetch](h); len(f) != 1 {
			h.t.Fatalf("%d fetches", len(f))
		}
		one[Reply](h)
		h.take()
		h.step(desired())
		one[Fetch](h)
	}},
	{"retry of an unknown add-on", func(h *harness) {
		h.step(Retry{ID: "nope", Token: 1})
		if r := one[Reply](h); !errors.Is(r.Err, ErrUnknownAddon) {
			h.t.Fatalf("%+v", r)
		}
		none[Fetch](h)
	}},
	{"a reloaded config waits for stagings in flight", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0")))
		st := one[Stage](h)
		h.take()
		h.step(Reload{Config: true})
		none[ApplyConfig](h)
		one[Fetch](h)
		h.take()
		h.step(desired(spec("a@1.0.0")))
		none[ApplyConfig](h) // the staging still
		h.step(Staged{Seq: st.Seq, Spec: st.Spec})
		one[ApplyConfig](h)
		h.step(Configured{Probation: 5 * time.Second})
		h.take()
		h.refresh(desired(spec("a@1.1.0")))
		h.at(time.Hour).stageDone("a@1.1.0")
		if p := h.lastPersist("a"); !p.Probation.Deadline.Equal(t0.Add(time.Hour + 5*time.Second)) {
			h.t.Fatalf("deadline %v, want the reloaded 5s", p.Probation.Deadline.Sub(t0))
		}
	}},
	{"an expired document changes nothing, and says so", func(h *harness) {
		h.running(spec("a@1.0.0"))
		h.refresh(Desired{Doc: DocInfo{Serial: 2, Expired: true, Err: errors.New("assignment document expired")}})
		none[Stop](h)
		none[Remove](h)
		if a := h.want("a", StateRunning, "1.0.0", healthy); !a.FromLKG {
			h.t.Fatal("not from_lkg under an expired document")
		}
		if s := h.c.Summary(); !strings.Contains(s, "assignments expired") {
			h.t.Fatalf("summary %q", s)
		}
	}},
	{"a replayed document is counted once per new replay", func(h *harness) {
		h.refresh(Desired{Doc: DocInfo{Refused: true, Replay: true, NewReplay: true, Err: errors.New("replay")}})
		n := len(h.counts(MetricReplays))
		h.refresh(Desired{Doc: DocInfo{Refused: true, Replay: true, Err: errors.New("replay")}})
		if n += len(h.counts(MetricReplays)); n != 1 {
			h.t.Fatalf("counted %d replays", n)
		}
		if s := h.c.Summary(); s != "no add-ons assigned" {
			h.t.Fatalf("summary %q", s)
		}
	}},
	{"the orphan sweep runs once at a time, only with a document", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"))}})
		none[Sweep](h)
		h.refresh(desired(spec("a@1.0.0")))
		one[Sweep](h)
		h.take()
		h.refresh(desired(spec("a@1.0.0")))
		none[Sweep](h)
		h.step(Swept{})
		h.refresh(desired(spec("a@1.0.0")))
		one[Sweep](h)
		if !h.c.Owned()["a"] {
			h.t.Fatal("a running add-on not owned")
		}
	}},
	{"a Persist that fails is reported on the add-on", func(h *harness) {
		h.persistErr = errDisk
		h.refresh(desired(spec("a@1.0.0")))
		h.stageDone("a@1.0.0")
		if a := h.status("a"); a.LastError != errDisk.Error() {
			h.t.Fatalf("%+v", a)
		}
	}},
}

// onceCases are `addond stage`'s: the same core, activating at once.
var onceCases = []struct {
	name string
	run  func(h *harness)
}{
	{"staged, activated, last-known-good at once; nothing started", func(h *harness) {
		h.step(Boot{Addons: []Recovered{recovered(spec("old@1.0.0"))}})
		none[Start](h)
		h.refresh(desired(spec("a@1.0.0", withCaps), spec("off@1.0.0", disabled),
			spec("pkg@1", func(s *assignment.Spec) { s.Delivery, s.Artifact = assignment.DeliveryOSPackage, nil })))
		if st := one[Stage](h); st.Caps {
			h.t.Fatal("addond stage asked for a capped copy")
		}
		if r := one[Remove](h); r.ID != "old" {
			h.t.Fatalf("%+v", r)
		}
		h.stageDone("a@1.0.0")
		if p := h.lastPersist("a"); p.LKG == nil || p.LKG.Version != "1.0.0" || p.Probation != nil || p.HighestVersion != "1.0.0" {
			h.t.Fatalf("%+v", p)
		}
		one[GC](h)
		none[Start](h)
		none[DropCapped](h)
		if !h.c.Idle() {
			h.t.Fatal("not idle after its one refresh and staging")
		}
		got := map[string]Result{}
		for _, o := range h.c.Outcomes() {
			got[o.AddonID] = o.State
		}
		want := map[string]Result{"a": ResultStaged, "off": ResultDisabled, "pkg": ResultSkipped}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			h.t.Fatalf("outcomes %v, want %v", got, want)
		}
	}},
	{"a failed delivery keeps the last-known-good current", func(h *harness) {
		h.current["a"] = "1.0.0"
		h.step(Boot{Addons: []Recovered{recovered(spec("a@1.0.0"))}})
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0", func(m *Staged) { m.Err = errors.New("sha256 mismatch") })
		none[Activate](h)
		o := h.c.Outcomes()[0]
		if o.State != ResultFailed || !o.FromLKG || o.ActiveVersion != "1.0.0" || o.Version != "1.1.0" || o.Err == nil {
			h.t.Fatalf("%+v", o)
		}
	}},
	{"refused entries are outcomes too, invalid ids included", func(h *harness) {
		h.refresh(Desired{Authoritative: true, Doc: DocInfo{Fresh: true}, Entries: []Entry{
			{ID: "../x", Version: "1", Err: errors.New("invalid addon_id")},
			{ID: "a", Version: "0.9.0", Err: fmt.Errorf("addon %q: %w", "a", assignment.ErrDowngrade)},
		}})
		out := h.c.Outcomes()
		if len(out) != 2 || out[0].AddonID != "../x" || out[1].Version != "0.9.0" || out[1].State != ResultFailed {
			h.t.Fatalf("%+v", out)
		}
	}},
}

func TestCoreOnce(t *testing.T) {
	for _, tc := range onceCases {
		t.Run(tc.name, func(t *testing.T) { tc.run(newHarness(t, Policy{ActivateAtOnce: true})) })
	}
}

func TestCore(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			tc.run(newHarness(t, Policy{}))
			if d := time.Since(start); d > 50*time.Millisecond {
				t.Errorf("took %v: the core does no I/O and waits for nothing", d)
			}
		})
	}
	if len(cases) < 40 {
		t.Errorf("%d cases", len(cases))
	}
}

// cappedPolicy is an unprivileged addond's: capped add-ons run on the
// sidecar and service models' capped backends (their units are
// addond-updater's to make), and on no other.
func cappedPolicy() Policy {
	return Policy{Models: map[string]bool{
		assignment.SupervisionAgentSidecar: true, assignment.SupervisionSystemdService: true, assignment.SupervisionSystemdTimer: true,
		assignment.SupervisionAgentSidecar + CappedSuffix: true, assignment.SupervisionSystemdService + CappedSuffix: true,
	}}
}

var cappedCases = []struct {
	name string
	run  func(h *harness)
}{
	{"a capped add-on starts on its model's capped backend", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0", withCaps)))
		h.stageDone("a@1.0.0", func(m *Staged) { m.Capped = "/priv/a/1.0.0/a" })
		if st := one[Start](h); st.Backend != "agent_sidecar+capped" {
			h.t.Fatalf("%+v", st)
		}
		h.take()
		h.refresh(desired(spec("a@1.0.0", withCaps), spec("b@1.0.0")))
		h.stageDone("b@1.0.0")
		if st := one[Start](h); st.ID != "b" || st.Backend != "agent_sidecar" {
			h.t.Fatalf("%+v", st)
		}
	}},
	{"a capped timer is unsupported, naming where capped add-ons run", func(h *harness) {
		h.refresh(desired(spec("t@1.0.0", withCaps, func(s *assignment.Spec) { s.Supervision = assignment.SupervisionSystemdTimer })))
		none[Stage](h)
		a := h.want("t", StateUnsupported, "", unknown)
		if !strings.Contains(a.LastError, `supervision "systemd_timer" with os_capabilities is not available on this host (capped add-ons run as agent_sidecar or systemd_service)`) {
			h.t.Fatalf("%q", a.LastError)
		}
	}},
	{"a version that drops its capabilities moves off the capped backend", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0", withCaps)))
		h.stageDone("a@1.0.0", func(m *Staged) { m.Capped = "/priv/a/1.0.0/a" })
		h.started("a", nil)
		h.event("a@1.0.0", supervisors.StateRunning, healthy)
		h.take()
		h.refresh(desired(spec("a@1.1.0")))
		h.stageDone("a@1.1.0")
		st := one[Start](h)
		if st.Update || st.StopFirst != "agent_sidecar+capped" || st.Backend != "agent_sidecar" {
			h.t.Fatalf("%+v", st)
		}
		h.take()
		h.refresh(desired())
		if s := one[Stop](h); s.Model != "agent_sidecar" {
			h.t.Fatalf("%+v", s)
		}
	}},
	{"a capped add-on's configuration change updates it in place, on the capped backend", func(h *harness) {
		h.refresh(desired(spec("a@1.0.0", withCaps)))
		h.stageDone("a@1.0.0", func(m *Staged) { m.Capped = "/priv/a/1.0.0/a" })
		h.started("a", nil)
		h.event("a@1.0.0", supervisors.StateRunning, healthy)
		h.take()
		h.refresh(desired(spec("a@1.0.0", withCaps, withConfig(`{"a":1}`))))
		if st := one[Start](h); !st.Update || st.Backend != "agent_sidecar+capped" || st.Copy != "/priv/a/1.0.0/a" {
			h.t.Fatalf("%+v", st)
		}
	}},
}

func TestCoreCappedBackends(t *testing.T) {
	for _, tc := range cappedCases {
		t.Run(tc.name, func(t *testing.T) { tc.run(newHarness(t, cappedPolicy())) })
	}
}
