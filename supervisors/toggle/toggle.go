// Package toggle supervises config_toggle add-ons (delivery compiled_in).
// There is no process: the add-on switches on a feature compiled into
// addond, configured by the add-on's config_json, and off again when it is
// stopped. Features are registered by name when the backend is built; the
// daemon resolves which one an add-on toggles into Spec.Feature (the
// assignment's binary_path, or its addon_id when binary_path is empty).
//
// An add-on naming a feature this addond does not have is reported
// unsupported, with the feature's name — never as applied. A feature whose
// Enable fails is reported failed with the reason and retried with backoff,
// unless the error says the configuration itself is wrong
// (ErrInvalidConfig): that is retried when the configuration changes. A
// configuration change of an enabled feature is applied in place.
//
// A compiled-in feature is one switch: two add-ons cannot toggle the same
// feature at once; the second one is reported failed and retried.
package toggle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/addond/addond/supervisors"
)

// Feature is a compiled-in feature of addond.
type Feature interface {
	// Enable switches the feature on with config (the add-on's
	// config_json; "{}" when it has none). On a feature that is already
	// on it applies config in place; when that fails the feature must
	// keep running as it was. ctx bounds the call only: work the feature
	// keeps doing afterwards must not depend on it.
	Enable(ctx context.Context, config []byte) error
	// Disable switches the feature off and returns once nothing of it
	// runs any more (no goroutine left behind). Disabling a feature that
	// is off is not an error.
	Disable(ctx context.Context) error
}

// HealthReporter is implemented by a Feature that can tell how it is
// doing. It is asked every HealthInterval while the feature is on; a
// Feature without it is healthy while it is on.
type HealthReporter interface {
	Health() (supervisors.Health, string)
}

// ErrInvalidConfig is wrapped by Enable errors that no retry can fix: the
// configuration is wrong. The add-on is retried when its configuration
// changes, not before.
var ErrInvalidConfig = errors.New("invalid configuration")

// Options configure a Backend. Zero durations take the defaults in
// brackets.
type Options struct {
	Log    *slog.Logger
	Notify supervisors.Notify
	// Features by name: what add-ons can toggle.
	Features map[string]Feature

	HealthInterval time.Duration // [5s]
	CallTimeout    time.Duration // one Enable or Disable call [10s]
	BackoffMin     time.Duration // [1s]
	BackoffMax     time.Duration // [1m]
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.HealthInterval, 5*time.Second)
	def(&o.CallTimeout, 10*time.Second)
	def(&o.BackoffMin, time.Second)
	def(&o.BackoffMax, time.Minute)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(supervisors.Event) {}
	}
}

// Backend is the config_toggle Supervisor.
type Backend struct {
	opts     Options
	features map[string]Feature

	addons supervisors.Registry[*instance]

	mu     sync.Mutex
	owners map[string]string // feature → the add-on that has it on
}

var _ supervisors.Supervisor = (*Backend)(nil)

// New returns a Backend offering o.Features.
func New(o Options) *Backend {
	o.defaults()
	return &Backend{
		opts:     o,
		features: maps.Clone(o.Features),
		owners:   map[string]string{},
	}
}

// Features lists the names of the features add-ons can toggle.
func (b *Backend) Features() []string {
	return slices.Sorted(maps.Keys(b.features))
}

// instance is one supervised add-on: a goroutine that owns its feature's
// switch, as long as the add-on is supervised.
type instance struct {
	*supervisors.Handle
	b   *Backend
	id  string
	log *slog.Logger
}

// Start switches spec's feature on. It returns the first attempt's error
// (wrapping supervisors.ErrUnsupported for an unknown feature); the add-on
// stays supervised either way, so Update can still fix it.
func (b *Backend) Start(ctx context.Context, spec supervisors.Spec) error {
	log := b.opts.Log.With("addon_id", spec.AddonID)
	inst := &instance{Handle: supervisors.NewHandle(spec.AddonID, logState(log), b.opts.Notify), b: b, id: spec.AddonID, log: log}
	return b.addons.Start(ctx, inst, func(first chan<- error) { inst.run(spec, first) })
}

// logState logs an add-on's event: its state is the feature's.
func logState(l *slog.Logger) func(supervisors.Event) {
	return func(e supervisors.Event) {
		l.Info("add-on state", "version", e.Version, "feature_state", e.State, "health", e.Health, "reason", e.Reason)
	}
}

// Update applies spec: a new configuration in place, another feature by
// switching the old one off and the new one on.
func (b *Backend) Update(ctx context.Context, spec supervisors.Spec) error {
	return b.addons.Update(ctx, spec)
}

// Stop switches the add-on's feature off and forgets the add-on.
func (b *Backend) Stop(ctx context.Context, id string) error {
	inst, err := b.addons.Take(id)
	if err != nil {
		return err
	}
	if err := inst.Stop(ctx); err != nil {
		return err
	}
	if last := inst.Last(); last.State != supervisors.StateStopped {
		return fmt.Errorf("addon %q: %s", id, last.Reason)
	}
	return nil
}

func (b *Backend) Status(id string) (supervisors.Event, bool) { return b.addons.Status(id) }

// Close switches every feature off: they run inside addond and stop with
// it.
func (b *Backend) Close(ctx context.Context) error {
	return b.addons.StopAll(ctx, b.Stop)
}

// claim makes id the owner of feature name.
func (b *Backend) claim(name, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if owner, ok := b.owners[name]; ok && owner != id {
		return fmt.Errorf("feature %q is already switched on by add-on %q", name, owner)
	}
	b.owners[name] = id
	return nil
}

func (b *Backend) release(name, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.owners[name] == id {
		delete(b.owners, name)
	}
}

// run owns the add-on's feature switch for its whole supervised life.
func (i *instance) run(spec supervisors.Spec, first chan<- error) {
	o := &i.b.opts
	t := &toggler{i: i}
	first <- t.apply(spec)

	var health *time.Ticker
	healthC := func() <-chan time.Time {
		if t.on == nil {
			if health != nil {
				health.Stop()
				health = nil
			}
			return nil
		}
		if _, ok := t.on.(HealthReporter); !ok {
			return nil
		}
		if health == nil {
			health = time.NewTicker(o.HealthInterval)
		}
		return health.C
	}
	defer func() {
		if health != nil {
			health.Stop()
		}
	}()
	for {
		var retry *time.Timer
		var retryC <-chan time.Time
		if t.retryIn > 0 {
			retry = time.NewTimer(t.retryIn)
			retryC = retry.C
		}
		select {
		case <-i.Stopping():
			if retry != nil {
				retry.Stop()
			}
			t.off()
			return
		case r := <-i.Requests():
			if retry != nil {
				retry.Stop()
			}
			r.Reply(t.apply(*r.Spec))
		case <-retryC:
			t.apply(t.spec)
		case <-healthC():
			t.check()
		}
	}
}

// toggler is the state of one add-on's switch; only its instance's
// goroutine touches it.
type toggler struct {
	i         *instance
	spec      supervisors.Spec // the spec applied last
	on        Feature          // the feature that is on; nil when off
	onName    string
	configErr string        // a configuration change the feature refused
	failures  int           // failed attempts in a row, for the backoff
	retryIn   time.Duration // > 0: try again after this long
}

func (t *toggler) call(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.i.b.opts.CallTimeout)
	defer cancel()
	return fn(ctx)
}

func config(spec supervisors.Spec) []byte {
	if len(spec.ConfigJSON) == 0 {
		return []byte("{}")
	}
	return spec.ConfigJSON
}

// apply brings the switch to spec and reports the outcome.
func (t *toggler) apply(spec supervisors.Spec) error {
	i, b := t.i, t.i.b
	old := t.spec
	t.spec, t.retryIn = spec, 0
	if t.on != nil && spec.Feature != t.onName {
		if err := t.disable(); err != nil {
			i.log.Warn("switching to another feature: the old one did not switch off", "error", err)
		}
	}
	f, known := b.features[spec.Feature]
	if !known {
		t.failures = 0
		reason := fmt.Sprintf("compiled-in feature %q is not built into this addond (it has: %s)", spec.Feature, strings.Join(b.Features(), ", "))
		if spec.Feature == "" {
			reason = "no compiled-in feature named"
		}
		i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateUnsupported, Health: supervisors.HealthUnknown, Cause: supervisors.CauseUnsupported, Reason: reason})
		return fmt.Errorf("addon %q: %s: %w", i.id, reason, supervisors.ErrUnsupported)
	}

	if t.on != nil {
		// Already on: a new configuration is applied in place.
		if spec.ConfigChanged(old) || t.configErr != "" {
			if err := t.call(func(ctx context.Context) error { return f.Enable(ctx, config(spec)) }); err != nil {
				t.configErr = fmt.Sprintf("configure: feature %q: %v", spec.Feature, err)
				t.check()
				return fmt.Errorf("addon %q: %s", i.id, t.configErr)
			}
			t.configErr = ""
		}
		t.check()
		return nil
	}

	if err := b.claim(spec.Feature, i.id); err != nil {
		return t.failed(err)
	}
	if err := t.call(func(ctx context.Context) error { return f.Enable(ctx, config(spec)) }); err != nil {
		b.release(spec.Feature, i.id)
		return t.failed(fmt.Errorf("enable feature %q: %w", spec.Feature, err))
	}
	t.on, t.onName, t.failures, t.configErr = f, spec.Feature, 0, ""
	i.log.Info("feature on", "feature", spec.Feature, "version", spec.Version)
	t.check()
	return nil
}

// failed reports a failed attempt to switch the feature on and schedules
// the next one, unless only a new configuration can help.
func (t *toggler) failed(err error) error {
	o := &t.i.b.opts
	reason := err.Error()
	if errors.Is(err, ErrInvalidConfig) {
		t.failures = 0
		reason += " (not retried until the configuration changes)"
	} else {
		t.failures++
		d := min(o.BackoffMin<<min(t.failures-1, 20), o.BackoffMax)
		jitter := d / 4
		t.retryIn = d - jitter + rand.N(2*jitter+1)
		reason += fmt.Sprintf(" (retrying in %s)", t.retryIn.Round(time.Millisecond))
	}
	cause := supervisors.CauseStartFailed
	if errors.Is(err, ErrInvalidConfig) {
		cause = supervisors.CauseConfigure
	}
	t.i.Emit(supervisors.Event{Version: t.spec.Version, State: supervisors.StateFailed, Health: supervisors.HealthUnhealthy, Cause: cause, Reason: reason, Restarts: t.failures})
	t.i.log.Warn("feature not switched on", "feature", t.spec.Feature, "reason", reason)
	return fmt.Errorf("addon %q: %w", t.i.id, err)
}

// check reports the health of the feature that is on.
func (t *toggler) check() {
	ev := supervisors.Event{Version: t.spec.Version, State: supervisors.StateRunning, Health: supervisors.HealthHealthy}
	if hr, ok := t.on.(HealthReporter); ok {
		h, reason := hr.Health()
		ev.Reason = reason
		switch h {
		case supervisors.HealthHealthy:
		case supervisors.HealthDegraded:
			ev.State, ev.Health = supervisors.StateDegraded, supervisors.HealthDegraded
		case supervisors.HealthUnhealthy:
			ev.State, ev.Health, ev.Cause = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, supervisors.CauseUnhealthy
		default:
			ev.Health = supervisors.HealthUnknown
		}
	}
	if t.configErr != "" {
		ev.State, ev.Health, ev.Reason, ev.Cause = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, t.configErr, supervisors.CauseConfigure
	}
	t.i.Emit(ev)
}

// disable switches the feature that is on off and gives it up.
func (t *toggler) disable() error {
	if t.on == nil {
		return nil
	}
	f, name := t.on, t.onName
	err := t.call(func(ctx context.Context) error { return f.Disable(ctx) })
	t.i.b.release(name, t.i.id)
	t.on, t.onName, t.configErr = nil, "", ""
	if err != nil {
		return fmt.Errorf("disable feature %q: %w", name, err)
	}
	t.i.log.Info("feature off", "feature", name)
	return nil
}

// off switches the feature off for good and reports the add-on stopped,
// or failed when the feature did not switch off.
func (t *toggler) off() {
	ev := supervisors.Event{Version: t.spec.Version, State: supervisors.StateStopped, Health: supervisors.HealthUnknown}
	if err := t.disable(); err != nil {
		ev.State, ev.Reason, ev.Cause = supervisors.StateFailed, err.Error(), supervisors.CauseStartFailed
		t.i.log.Warn("feature not switched off", "error", err)
	}
	t.i.Emit(ev)
}
