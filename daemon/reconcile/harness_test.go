package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
)

// harness drives a Core on a fake clock the way daemon's loop does: the
// actions whose result comes back at once (Activate, GC) are answered at
// once — successfully unless told otherwise — and everything else is
// recorded for the test to answer (or not).
type harness struct {
	t    *testing.T
	c    *Core
	now  time.Time
	acts []Action // every action since the last take

	activateErr map[string]error // "id@version" → the error Activate gives
	persistErr  error            // every Persist fails with it
	gcRemoved   []string         // what the next GC removes
	current     map[string]string
}

// t0 is the fake clock's start: a real time.Now, so that it carries a
// monotonic reading, as the loop's does.
var t0 = time.Now()

func newHarness(t *testing.T, p Policy) *harness {
	t.Helper()
	if p.Models == nil && !p.ActivateAtOnce {
		p.Models = map[string]bool{assignment.SupervisionAgentSidecar: true, assignment.SupervisionSystemdService: true, assignment.SupervisionConfigToggle: true}
	}
	if p.Probation == 0 {
		p.Probation = time.Minute
	}
	return &harness{t: t, c: New(p), now: t0, activateErr: map[string]error{}, current: map[string]string{}}
}

// at moves the clock to t0+d.
func (h *harness) at(d time.Duration) *harness {
	h.now = t0.Add(d)
	return h
}

// step steps in at the harness's clock and answers what the loop answers
// at once.
func (h *harness) step(in Input) {
	h.t.Helper()
	for _, a := range h.c.Step(in, h.now) {
		h.acts = append(h.acts, a)
		switch a := a.(type) {
		case Activate:
			err := h.activateErr[a.ID+"@"+a.Version]
			prev := h.current[a.ID]
			if err == nil {
				h.current[a.ID] = a.Version
			}
			h.step(Activated{ID: a.ID, Version: a.Version, Previous: prev, Err: err})
		case GC:
			h.step(GCed{ID: a.ID, Removed: h.gcRemoved})
			h.gcRemoved = nil
		case Persist:
			if h.persistErr != nil {
				h.step(PersistFailed{ID: a.ID, Err: h.persistErr})
			}
		}
	}
}

// take returns the actions since the last take (Log lines left out).
func (h *harness) take() []Action {
	var out []Action
	for _, a := range h.acts {
		if _, ok := a.(Log); !ok {
			out = append(out, a)
		}
	}
	h.acts = nil
	return out
}

// logs returns the log lines since the last take, without taking.
func (h *harness) logs() []string {
	var out []string
	for _, a := range h.acts {
		if l, ok := a.(Log); ok {
			out = append(out, l.Msg)
		}
	}
	return out
}

// kinds names the actions, for messages: "Stage(a@1.0.0) Start(a@1.0.0)".
func kinds(acts []Action) string {
	var b []string
	for _, a := range acts {
		switch a := a.(type) {
		case Stage:
			b = append(b, "Stage("+a.Spec.AddonID+"@"+a.Spec.Version+")")
		case Start:
			s := "Start"
			if a.Update {
				s = "Update"
			}
			b = append(b, s+"("+a.ID+"@"+a.Spec.Version+")")
		case Stop:
			b = append(b, "Stop("+a.ID+")")
		case Activate:
			b = append(b, "Activate("+a.ID+"@"+a.Version+")")
		case Persist:
			b = append(b, "Persist("+a.ID+")")
		default:
			b = append(b, strings.TrimPrefix(fmt.Sprintf("%T", a), "reconcile."))
		}
	}
	return strings.Join(b, " ")
}

// find returns the actions of type T since the last take, without taking.
func find[T Action](h *harness) []T {
	var out []T
	for _, a := range h.acts {
		if x, ok := a.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

// one is the single action of type T since the last take.
func one[T Action](h *harness) T {
	h.t.Helper()
	got := find[T](h)
	if len(got) != 1 {
		var zero T
		h.t.Fatalf("want one %T, got %d: %s", zero, len(got), kinds(h.acts))
	}
	return got[0]
}

// none fails unless no action of type T came since the last take.
func none[T Action](h *harness) {
	h.t.Helper()
	if got := find[T](h); len(got) != 0 {
		var zero T
		h.t.Fatalf("want no %T, got %s", zero, kinds(h.acts))
	}
}

// status is add-on id's status.
func (h *harness) status(id string) AddonStatus {
	h.t.Helper()
	for _, a := range h.c.Addons() {
		if a.AddonID == id {
			return a
		}
	}
	h.t.Fatalf("no add-on %s in %+v", id, h.c.Addons())
	return AddonStatus{}
}

func (h *harness) gone(id string) {
	h.t.Helper()
	for _, a := range h.c.Addons() {
		if a.AddonID == id {
			h.t.Fatalf("%s is still in the status: %+v", id, a)
		}
	}
}

// counts are the Counts of metric since the last take.
func (h *harness) counts(m Metric) []Count {
	var out []Count
	for _, c := range find[Count](h) {
		if c.Metric == m {
			out = append(out, c)
		}
	}
	return out
}

// anyHealth is a health want does not check.
const anyHealth Health = ""

// want checks add-on id's state, active version and health (unless anyHealth).
func (h *harness) want(id string, st State, active string, health Health) AddonStatus {
	h.t.Helper()
	a := h.status(id)
	if a.State != st || a.ActiveVersion != active || (health != anyHealth && a.Health != health) {
		h.t.Fatalf("%s: state %s active %q health %s (last_error %q), want %s %q %s", id, a.State, a.ActiveVersion, a.Health, a.LastError, st, active, health)
	}
	return a
}

// sha is the fake artifact digest of id@version (with an optional tag, to
// make a republished one).
func sha(idv string) string {
	s := sha256.Sum256([]byte(idv))
	return hex.EncodeToString(s[:])
}

// spec is id@version as a pushed sidecar; opts change it.
func spec(idv string, opts ...func(*assignment.Spec)) assignment.Spec {
	id, v, _ := strings.Cut(idv, "@")
	s := assignment.Spec{
		AddonID: id, Version: v, Enabled: true,
		Delivery: assignment.DeliveryPushedArtifact, Supervision: assignment.SupervisionAgentSidecar,
		BinaryName: id, Artifact: &assignment.Artifact{SHA256: sha(idv)},
	}
	for _, o := range opts {
		o(&s)
	}
	return s
}

func disabled(s *assignment.Spec)  { s.Enabled = false }
func withCaps(s *assignment.Spec)  { s.OSCapabilities = []string{"cap_net_raw"} }
func allowDown(s *assignment.Spec) { s.AllowDowngrade = true }
func asService(s *assignment.Spec) { s.Supervision = assignment.SupervisionSystemdService }
func withConfig(c string) func(*assignment.Spec) {
	return func(s *assignment.Spec) { s.ConfigJSON = []byte(c) }
}
func republished(s *assignment.Spec) {
	s.Artifact = &assignment.Artifact{SHA256: sha(s.AddonID + "@" + s.Version + "+2")}
}

// desired is a fresh, authoritative refresh of specs.
func desired(specs ...assignment.Spec) Desired {
	d := Desired{Authoritative: true, Doc: DocInfo{Serial: 1, Fresh: true}}
	for _, s := range specs {
		d.Entries = append(d.Entries, Entry{ID: s.AddonID, Version: s.Version, Spec: s})
	}
	return d
}

// refresh polls and answers the Fetch with d.
func (h *harness) refresh(d Desired) {
	h.t.Helper()
	h.step(Poll{})
	if f := find[Fetch](h); len(f) != 1 {
		h.t.Fatalf("a poll did not fetch: %s", kinds(h.acts))
	}
	h.take()
	h.step(d)
}

// stageDone answers the Stage of id@version successfully.
func (h *harness) stageDone(idv string, opts ...func(*Staged)) {
	h.t.Helper()
	var st *Stage
	for _, a := range h.acts {
		if s, ok := a.(Stage); ok && s.Spec.AddonID+"@"+s.Spec.Version == idv {
			st = &s
		}
	}
	if st == nil {
		h.t.Fatalf("no Stage of %s in %s", idv, kinds(h.acts))
	}
	h.take()
	m := Staged{Seq: st.Seq, Spec: st.Spec, Downloaded: true, Bytes: 100}
	for _, o := range opts {
		o(&m)
	}
	h.step(m)
}

// started answers the last Start of id.
func (h *harness) started(id string, err error) {
	h.t.Helper()
	var st *Start
	for _, a := range h.acts {
		if s, ok := a.(Start); ok && s.ID == id {
			st = &s
		}
	}
	if st == nil {
		h.t.Fatalf("no Start of %s in %s", id, kinds(h.acts))
	}
	h.take()
	h.step(StartDone{ID: id, Seq: st.Seq, Err: err})
}

// event steps a supervisor event of id@version.
func (h *harness) event(idv string, st supervisors.State, health Health, opts ...func(*supervisors.Event)) {
	h.t.Helper()
	id, v, _ := strings.Cut(idv, "@")
	e := supervisors.Event{AddonID: id, Version: v, State: st, Health: health, PID: 100}
	for _, o := range opts {
		o(&e)
	}
	h.step(Event{Event: e})
}

func restarts(n int) func(*supervisors.Event) {
	return func(e *supervisors.Event) { e.Restarts = n; e.Reason = "exit status 3" }
}
func cause(c supervisors.Cause, reason string) func(*supervisors.Event) {
	return func(e *supervisors.Event) { e.Cause, e.Reason = c, reason }
}
func waiting(e *supervisors.Event) { e.Waiting = true }

// running brings idv to running and healthy as a promoted first install:
// staged, activated, started, healthy.
func (h *harness) running(s assignment.Spec) {
	h.t.Helper()
	h.refresh(desired(s))
	h.stageDone(s.AddonID + "@" + s.Version)
	h.started(s.AddonID, nil)
	h.event(s.AddonID+"@"+s.Version, supervisors.StateRunning, supervisors.HealthHealthy)
	h.take()
	h.want(s.AddonID, StateRunning, s.Version, supervisors.HealthHealthy)
}

// lastPersist is the policy state last persisted for id.
func (h *harness) lastPersist(id string) Persisted {
	h.t.Helper()
	var p *Persisted
	for _, a := range h.acts {
		if x, ok := a.(Persist); ok && x.ID == id {
			p = &x.Policy
		}
	}
	if p == nil {
		h.t.Fatalf("nothing persisted for %s: %s", id, kinds(h.acts))
	}
	return *p
}

// recovered is a Recovered add-on with lkg current.
func recovered(lkg assignment.Spec, mod ...func(*Recovered)) Recovered {
	r := Recovered{ID: lkg.AddonID, Current: lkg.Version, State: &state.Addon{
		LKG: &lkg, HighestVersion: lkg.Version, Failed: map[string]state.Failure{},
		Staged: map[string]state.StagedVersion{lkg.Version: {SHA256: lkg.Artifact.SHA256}},
	}}
	for _, m := range mod {
		m(&r)
	}
	return r
}

var (
	errDisk = errors.New("input/output error")
	_       = reflect.DeepEqual
	_       = delivery.Installed{}
)
