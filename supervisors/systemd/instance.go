package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/addond/addond/supervisors"
)

// Driver is what one unit-based model adds to the machinery every unit
// backend shares (Backend, below): how its units are created and how
// their state reads as an Event.
type Driver interface {
	// Model is the supervision model, part of every unit's fingerprint.
	Model() supervisors.Model
	// Check refuses a spec before anything is created.
	Check(spec supervisors.Spec) error
	// Create starts the add-on's units for spec (they do not exist).
	Create(ctx context.Context, b *Backend, spec supervisors.Spec, description string) error
	// Units are the add-on's units, the one watched first.
	Units(id string) []string
	// Observe turns the watched unit's state into an event; it may keep
	// per-add-on memory in mem.
	Observe(ctx context.Context, b *Backend, spec supervisors.Spec, u UnitState, mem *Memory) supervisors.Event
}

// Memory is what Observe may remember between calls for one add-on.
type Memory struct {
	// Recheck asks for another look after this long even if nothing
	// changes (a service proving it stays up).
	Recheck      time.Duration
	Restarts     int    // restarts before the current unit
	LastRun      string // a timer's last seen invocation
	Failures     int    // a timer's failed runs in a row
	LastRunError string
	// Recreate asks for the units to be made anew (the reason), the
	// add-on's memory kept: a timer whose schedule a clock step broke.
	Recreate string
}

// Options configure a unit Backend.
type Options struct {
	Manager *Manager
	Paths   Paths
	Log     *slog.Logger
	Notify  supervisors.Notify
	// Privileged makes and stops the units (capped add-ons'); Manager is
	// then only watched.
	Privileged Privileged

	RestartDelay       time.Duration // between automatic restarts [1s]
	StartLimitBurst    int           // restarts within StartLimitInterval that open the circuit [5]
	StartLimitInterval time.Duration // [1m]
	BreakerCooldown    time.Duration // how long an open circuit stays open [1m]
	// StableAfter is how long a service must stay up before it counts
	// as healthy: a process that starts and crashes is not [3s].
	StableAfter time.Duration
	JobTimeout  time.Duration // starting or stopping a unit [30s]
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RestartDelay, time.Second)
	def(&o.StartLimitInterval, time.Minute)
	def(&o.BreakerCooldown, time.Minute)
	def(&o.JobTimeout, 30*time.Second)
	def(&o.StableAfter, 3*time.Second)
	if o.StartLimitBurst <= 0 {
		o.StartLimitBurst = 5
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(supervisors.Event) {}
	}
}

// Backend supervises add-ons of one unit-based model: each add-on is a
// goroutine that owns its units — adopting a unit that already runs the
// same spec (addond restarted), creating it otherwise, re-reading its state
// on every property change the manager signals, and re-creating it after
// a cool-down when it failed for good or vanished.
type Backend struct {
	Opts   Options
	driver Driver

	addons supervisors.Registry[*instance]
}

// NewBackend returns a Backend for d.
func NewBackend(d Driver, o Options) *Backend {
	o.defaults()
	return &Backend{Opts: o, driver: d}
}

var _ supervisors.Supervisor = (*Backend)(nil)

// instance is one supervised add-on: a goroutine that owns its units. It
// is stopped by a Request without a spec (the stop's outcome is the
// answer) and detached by Close.
type instance struct {
	*supervisors.Handle
	b   *Backend
	id  string
	log *slog.Logger
}

func (b *Backend) Start(ctx context.Context, spec supervisors.Spec) error {
	if err := ValidID(spec.AddonID); err != nil {
		return err
	}
	if err := CheckResources(spec.AddonID, spec.Resources); err != nil {
		return err
	}
	if err := b.driver.Check(spec); err != nil {
		return err
	}
	// The unit is named on every line, so that the journal's UNIT field is
	// there before the loop has published what it knows (after a restart).
	log := b.Opts.Log.With("addon_id", spec.AddonID, "model", b.driver.Model(), "unit", ServiceName(spec.AddonID))
	inst := &instance{Handle: supervisors.NewHandle(spec.AddonID, supervisors.LogState(log), b.Opts.Notify), b: b, id: spec.AddonID, log: log}
	return b.addons.Start(ctx, inst, func(first chan<- error) { inst.run(spec, first) })
}

func (b *Backend) Update(ctx context.Context, spec supervisors.Spec) error {
	if err := CheckResources(spec.AddonID, spec.Resources); err != nil {
		return err
	}
	if err := b.driver.Check(spec); err != nil {
		return err
	}
	return b.addons.Update(ctx, spec)
}

// Stop asks the add-on's goroutine to stop its units (a Request without a
// spec: the outcome is its answer), and forgets the add-on.
func (b *Backend) Stop(ctx context.Context, id string) error {
	inst, err := b.addons.Get(id)
	if err == nil {
		err = inst.Send(ctx, nil)
	}
	b.addons.Remove(id)
	return err
}

func (b *Backend) Status(id string) (supervisors.Event, bool) { return b.addons.Status(id) }

// Close stops supervising and leaves every unit running: they outlive
// addond, and the next addond adopts them.
func (b *Backend) Close(ctx context.Context) error {
	return b.addons.DetachAll(ctx)
}

func (i *instance) jobCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), i.b.Opts.JobTimeout)
}

// ensure makes the add-on's units run spec: adopts them when they already
// do (and replace is false), re-creates them otherwise.
func (i *instance) ensure(spec supervisors.Spec, replace bool, mem *Memory) error {
	b, d := i.b, i.b.driver
	// Never wait long for the manager (addond's READY must not): the
	// reconnect pokes the watch, and that retries.
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	conn, err := b.Opts.Manager.Conn(wctx)
	wcancel()
	if err != nil {
		return err
	}
	ctx, cancel := i.jobCtx()
	defer cancel()
	fp := Fingerprint(d.Model(), spec)
	units := d.Units(spec.AddonID)
	u, err := ReadUnit(ctx, conn, units[0])
	if err != nil {
		return fmt.Errorf("addon %q: %w", spec.AddonID, err)
	}
	if !replace && u.Up() && DescriptionFingerprint(u.Description) == fp {
		i.log.Info("adopted the running unit", "systemd_unit", u.Name, "pid", u.MainPID)
		return nil
	}
	for _, unit := range units {
		if err := stopAddonUnit(ctx, conn, b.Opts.Privileged, spec.AddonID, unit); err != nil {
			return fmt.Errorf("addon %q: %w", spec.AddonID, err)
		}
	}
	if err := b.Opts.Paths.Prepare(spec); err != nil {
		return err
	}
	mem.Restarts += u.NRestarts
	if err := d.Create(ctx, b, spec, Description(spec, fp)); err != nil {
		return fmt.Errorf("addon %q: %w", spec.AddonID, err)
	}
	return nil
}

// run owns the add-on's units for its supervised life.
func (i *instance) run(spec supervisors.Spec, first chan<- error) {
	b := i.b
	watch := b.Opts.Manager.Watch(b.driver.Units(spec.AddonID)...)
	defer watch.Close()
	var (
		mem       Memory
		retry     = time.NewTimer(time.Hour)
		waiting   bool // for retry: do not re-create before it fires
		noManager bool // waiting for the manager: a reconnect retries at once
	)
	retry.Stop()
	defer retry.Stop()
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	schedule := func(d time.Duration) {
		retry.Reset(d)
		waiting = true
	}
	starting := func(reason string) {
		i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStarting, Health: supervisors.HealthUnknown, Reason: reason, Restarts: mem.Restarts})
	}
	// apply (re)creates the units; a manager that cannot be reached is
	// waited for, never held against the add-on.
	apply := func(replace bool) error {
		err := i.ensure(spec, replace, &mem)
		noManager = false
		switch {
		case err == nil:
			waiting = false
		case isNoManager(err):
			i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStarting, Health: supervisors.HealthUnknown,
				Cause: supervisors.CauseManagerGone, Reason: "waiting for the systemd manager: " + err.Error(), Restarts: mem.Restarts, Waiting: true})
			schedule(5 * time.Second)
			noManager = true
			return nil
		default:
			i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateFailed, Health: supervisors.HealthUnhealthy, Cause: supervisors.CauseStartFailed, Reason: err.Error(), Restarts: mem.Restarts})
			schedule(b.Opts.BreakerCooldown)
		}
		return err
	}

	starting("")
	first <- apply(false)
	for {
		select {
		case <-i.Detaching():
			return
		case c := <-i.Requests():
			if c.Spec == nil {
				// A manager that is away is waited for briefly: the unit
				// it still runs is stopped as an orphan when addond
				// next starts.
				wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
				conn, cerr := b.Opts.Manager.Conn(wctx)
				wcancel()
				ctx, cancel := i.jobCtx()
				var err error
				if cerr != nil {
					err = fmt.Errorf("addon %q: unit left running: %w", i.id, cerr)
				} else {
					for _, unit := range b.driver.Units(i.id) {
						if serr := stopAddonUnit(ctx, conn, b.Opts.Privileged, i.id, unit); serr != nil && err == nil {
							err = fmt.Errorf("addon %q: %w", i.id, serr)
						}
					}
				}
				cancel()
				i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStopped, Health: supervisors.HealthUnknown, Restarts: mem.Restarts})
				c.Reply(err)
				return
			}
			old := spec
			spec = *c.Spec
			if !spec.NeedsRestart(old) && !spec.ConfigChanged(old) {
				c.Reply(nil)
				continue
			}
			retry.Stop()
			mem = Memory{}
			starting("")
			c.Reply(apply(true))
		case <-recheck.C:
			watch.poke()
		case <-retry.C:
			waiting = false
			starting("")
			// After a wait for the manager the units may be running as
			// they should: adopt them rather than restart them, and look
			// at what was adopted (nothing about it may change again).
			if adopt := noManager; apply(!adopt) == nil && adopt {
				watch.poke()
			}
		case <-watch.C:
			if !b.Opts.Manager.Connected() {
				continue // the reconnect pokes the watch again
			}
			ctx, cancel := i.jobCtx()
			conn, err := b.Opts.Manager.Conn(ctx)
			if err != nil {
				cancel()
				continue
			}
			u, err := ReadUnit(ctx, conn, watch.units[0])
			cancel()
			if err != nil {
				continue
			}
			if noManager {
				retry.Stop()
				if apply(false) == nil {
					watch.poke() // observe the units adopted or made
				}
				continue
			}
			if !u.Exists() || u.ActiveState == "inactive" || DescriptionFingerprint(u.Description) != Fingerprint(b.driver.Model(), spec) {
				if waiting {
					continue
				}
				// Gone: stopped behind addond's back, collected, or never
				// created because the manager was away.
				i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateRestarting, Health: supervisors.HealthUnhealthy,
					Cause: supervisors.CauseExited, Reason: "unit " + u.Name + " is not running", Restarts: mem.Restarts})
				schedule(b.Opts.RestartDelay)
				continue
			}
			mem.Recheck = 0
			e := b.driver.Observe(context.Background(), b, spec, u, &mem)
			e.Version = spec.Version
			if mem.Recheck > 0 {
				recheck.Reset(mem.Recheck)
			}
			if e.State == supervisors.StateCircuitOpen && !waiting {
				schedule(b.Opts.BreakerCooldown)
			}
			i.Emit(e)
			if why := mem.Recreate; why != "" {
				mem.Recreate = ""
				i.log.Warn("re-creating the add-on's units: "+why, "systemd_unit", u.Name)
				if err := apply(true); err == nil {
					i.log.Info("re-armed timer", "systemd_unit", u.Name)
				}
			}
		}
	}
}

func isNoManager(err error) bool { return errors.Is(err, ErrNoManager) }

// StopOrphans stops every add-on unit whose add-on keep does not claim:
// left behind by an add-on that was removed while addond was down. With p
// (the system manager's capped add-ons) p stops them.
func StopOrphans(ctx context.Context, m *Manager, keep func(id string) bool, p Privileged) ([]string, error) {
	conn, err := m.Conn(ctx)
	if err != nil {
		return nil, err
	}
	units, err := ListAddonUnits(ctx, conn)
	if err != nil {
		return nil, err
	}
	var stopped []string
	for _, u := range units {
		id, run, ok := ParseName(u.Name)
		if !ok || run || keep(id) || !strings.HasPrefix(u.Description, descriptionPrefix) {
			continue // helper runs finish on their own; not an add-on's
		}
		if err := stopAddonUnit(ctx, conn, p, id, u.Name); err != nil {
			return stopped, err
		}
		stopped = append(stopped, u.Name)
	}
	return stopped, nil
}
