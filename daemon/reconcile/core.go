package reconcile

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
)

// ErrUnknownAddon answers a request about an add-on the Core does not
// know.
var ErrUnknownAddon = errors.New("unknown add-on")

// Core is the policy's state. It is not safe for concurrent use: one
// goroutine (the driver's loop) steps it.
type Core struct {
	policy Policy
	now    time.Time
	out    []Action

	addons map[string]*addon
	// disk mirrors the policy's half of every add-on's persisted state,
	// and where its current points.
	disk map[string]*disk
	// draining: stagings still in flight for add-ons that were removed
	// (id → the staging's number). Until their result is in, the add-on's
	// directory is not theirs to recreate, nor a re-added add-on's to
	// stage into (both would write one partial file).
	draining map[string]uint64

	// activating: the Activate asked for, by add-on; its Activated comes
	// back before any other input.
	activating map[string]activation

	seq             uint64 // the last staging's or start's number
	inflight        int    // stagings in flight
	fetching, again bool
	sweeping        bool
	pendingConfig   bool
	doc             *DocInfo  // the last refresh's; nil before the first
	invalid         []Outcome // addond stage: entries with an invalid id
	docFresh        bool
}

// addon is the run view of one add-on.
type addon struct {
	id      string
	desired *assignment.Spec // nil: not (validly) assigned
	pinned  bool             // the local overrides set the desired version
	refused string           // the desired version refused as a downgrade
	running *assignment.Spec // what its backend runs (or is starting)
	model   string           // the model it runs under
	state   State
	health  Health
	lastErr string
	// failure is the last reason a version was not running and healthy
	// for (an exit, a refused Configure …): a rollback names it even when
	// the last event was a restart's "starting" with no reason.
	failure   string
	err       error // addond stage: the error behind a failure
	since     time.Time
	fromLKG   bool
	previous  string // the version before the current one
	probation *state.Probation
	restarts  int
	pid       int
	waiting   bool // its backend waits for the systemd manager
	// installed is an os_package binary as last verified; checked and
	// checkErr what the last refresh found.
	installed, checked *delivery.Installed
	checkErr           error
	capped             map[string]string // version → its capped copy
	staging            *staging
	// starting is the Start in flight, with what ran before it (a Start
	// that finds no capped copy changes nothing).
	starting *start
	// addond stage
	assigned   string // the version as assigned
	outcome    Result
	downloaded bool
	before     string // current before this run
}

type staging struct {
	seq     uint64
	version string
}

type start struct {
	seq   uint64
	boot  bool // the last-known-good, from local state alone
	prev  *assignment.Spec
	model string
}

// disk is the policy's half of an add-on's persisted state, and current.
type disk struct {
	current   string
	previous  string
	lkg       *assignment.Spec
	probation *state.Probation
	failed    map[string]state.Failure
	highest   string
}

// highest is the highest version ever activated, given where current
// points (state.Addon.Highest).
func (d *disk) highestWith(current string) string {
	var lkg string
	if d.lkg != nil {
		lkg = d.lkg.Version
	}
	return assignment.HighestVersion(d.highest, current, lkg)
}

// noteActivated records version as activated by staging or promotion
// (state.Addon.NoteActivated).
func (d *disk) noteActivated(version string) {
	d.highest = assignment.HigherVersion(d.highestWith(""), version)
}

// New returns a Core deciding by p.
func New(p Policy) *Core {
	return &Core{policy: p, addons: map[string]*addon{}, disk: map[string]*disk{}, draining: map[string]uint64{}}
}

// Step folds in into the Core's state at now and returns what to do, in
// order.
func (c *Core) Step(in Input, now time.Time) []Action {
	c.now, c.out = now, nil
	switch in := in.(type) {
	case Boot:
		c.boot(in)
	case Poll:
		c.poll()
	case Reload:
		c.pendingConfig = c.pendingConfig || in.Config
		c.applyConfig()
		c.poll()
	case Configured:
		c.policy.Probation = in.Probation
	case Desired:
		c.fetching = false
		c.applyConfig()
		c.apply(in)
		if c.again {
			c.again = false
			c.poll()
		}
	case Staged:
		c.staged(in)
	case Activated:
		c.activated(in)
	case PersistFailed:
		c.persistFailed(in)
	case StartDone:
		c.startDone(in)
	case GCed:
		c.gced(in)
	case Event:
		c.event(in.Event)
	case Tick:
		c.checkProbation()
	case Swept:
		c.sweeping = false
	case Reconcile:
		c.poll()
		c.emit(Reply{Token: in.Token})
	case Retry:
		c.retry(in)
	default:
		panic(fmt.Sprintf("reconcile: unknown input %T", in))
	}
	out := c.out
	c.out = nil
	return out
}

func (c *Core) emit(a ...Action) { c.out = append(c.out, a...) }

func (c *Core) log(level slog.Level, msg string, args ...any) {
	c.emit(Log{Level: level, Msg: msg, Args: args})
}

func (c *Core) get(id string) *addon {
	ar, ok := c.addons[id]
	if !ok {
		ar = &addon{id: id, state: StatePending, health: supervisors.HealthUnknown, since: c.now.UTC(), capped: map[string]string{}}
		c.addons[id] = ar
	}
	return ar
}

func (c *Core) diskOf(id string) *disk {
	d, ok := c.disk[id]
	if !ok {
		d = &disk{failed: map[string]state.Failure{}}
		c.disk[id] = d
	}
	return d
}

// set moves ar to st with reason; since changes with the state.
func (c *Core) set(ar *addon, st State, reason string) {
	if ar.state != st {
		ar.since = c.now.UTC()
	}
	ar.state, ar.lastErr = st, reason
}

// unsupported reports a model (delivery or supervision) this host lacks.
func (c *Core) unsupported(ar *addon, kind, model string) {
	c.set(ar, StateUnsupported, fmt.Sprintf("%s %q is not available on this host", kind, model))
}

// backendFor is the backend spec runs on here; when there is none, ar is
// reported unsupported, naming why.
func (c *Core) backendFor(ar *addon, spec assignment.Spec) (string, bool) {
	backend, err := c.policy.backend(spec)
	if err != nil {
		c.set(ar, StateUnsupported, err.Error())
		return "", false
	}
	return backend, true
}

// hasBackend is backendFor's verdict alone.
func (c *Core) hasBackend(ar *addon, spec assignment.Spec) bool {
	_, ok := c.backendFor(ar, spec)
	return ok
}

// persist asks for the policy's half of id's state to be written.
func (c *Core) persist(id string) {
	d := c.diskOf(id)
	p := Persisted{LKG: d.lkg, Failed: maps.Clone(d.failed), HighestVersion: d.highest}
	if d.probation != nil {
		pr := *d.probation
		p.Probation = &pr
	}
	c.emit(Persist{ID: id, Policy: p})
}

func (c *Core) persistFailed(in PersistFailed) {
	c.log(slog.LevelWarn, "saving state", "addon_id", in.ID, "error", in.Err)
	if ar, ok := c.addons[in.ID]; ok {
		ar.lastErr = in.Err.Error()
		if c.policy.ActivateAtOnce && ar.outcome == ResultStaged {
			c.failOnce(ar, in.Err)
		}
	}
}

// needsCaps is whether spec runs from a capped copy.
func needsCaps(spec assignment.Spec) bool {
	return spec.Delivery == assignment.DeliveryPushedArtifact && len(spec.OSCapabilities) > 0
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
