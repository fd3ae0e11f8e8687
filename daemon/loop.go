package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/logging"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/systemd"
)

// The loop drives a reconcile.Core: it moves inputs in and executes the
// actions that come out (docs/ARCHITECTURE.md). It never waits for a
// backend, the store or addond-updater: their calls run off the loop and
// come back as inputs.
//
// Who owns what:
//   - the loop goroutine owns the Core, the workers map, the stagings map
//     and the pending config;
//   - each add-on's worker runs that add-on's backend calls (Start, Stop,
//     DropCapped) one at a time, in the order the Core asked for them;
//   - Fetch, Stage and Sweep run on goroutines of their own;
//   - every goroutine the loop starts is counted in work, and gets the env
//     (config snapshot) of the moment it was started: a reload never
//     changes what work in flight uses;
//   - mu guards status and owned, which the status API and the orphan
//     sweep read from other goroutines.
type loop struct {
	a    *Agent
	opts RunOptions
	log  *slog.Logger
	core *reconcile.Core
	once bool // addond stage
	ctx  context.Context

	inputs   chan reconcile.Input
	quit     chan struct{} // closed at shutdown: results are not waited for any more
	events   chan supervisors.Event
	reqs     chan request
	work     sync.WaitGroup
	workers  map[string]*worker
	stagings map[uint64]context.CancelFunc
	pending  *config.Config // reloaded, waiting for ApplyConfig
	fetched  time.Time      // when the refresh in flight began

	// addond stage
	report   *Report
	fatal    error // the refresh could not even start
	stageErr error // a removal failed

	metrics     *metrics
	reporter    *reporter // nil: addond stage
	ready       bool
	lastSummary string

	mu      sync.Mutex
	status  Status
	owned   map[string]bool
	helpers map[string]reconcile.HelperPolicy
}

func (a *Agent) newLoop(ctx context.Context, o RunOptions, once bool) *loop {
	if o.Notify == nil {
		o.Notify = func(string) {}
	}
	models := map[string]bool{}
	for m := range o.Supervisors {
		models[m] = true
	}
	return &loop{
		a: a, opts: o, log: a.log, once: once, ctx: ctx,
		core:     reconcile.New(reconcile.Policy{Probation: a.cfg().Probation.D(), Models: models, ActivateAtOnce: once}),
		inputs:   make(chan reconcile.Input, 64),
		quit:     make(chan struct{}),
		events:   make(chan supervisors.Event, 256),
		reqs:     make(chan request),
		workers:  map[string]*worker{},
		stagings: map[uint64]context.CancelFunc{},
		metrics:  newMetrics(),
	}
}

// step steps the Core with in and executes what it asks for. Actions
// whose result comes back at once are stepped right away, before the rest.
func (l *loop) step(in reconcile.Input) {
	for _, act := range l.core.Step(in, time.Now()) {
		if res := l.exec(act); res != nil {
			l.step(res)
		}
	}
}

// received notes the end of background work before its result is
// stepped.
func (l *loop) received(in reconcile.Input) {
	switch in := in.(type) {
	case reconcile.Staged:
		delete(l.stagings, in.Seq)
	case reconcile.Desired:
		if !l.fetched.IsZero() {
			l.metrics.reconcile.Observe(time.Since(l.fetched).Seconds())
		}
	}
}

// exec executes one action; a result that comes back at once is returned.
func (l *loop) exec(act reconcile.Action) reconcile.Input {
	e := l.a.env.Load()
	switch a := act.(type) {
	case reconcile.Persist:
		err := e.del.UpdateState(a.ID, func(st *state.Addon) error {
			st.LKG, st.Probation, st.Failed, st.HighestVersion = a.Policy.LKG, a.Policy.Probation, a.Policy.Failed, a.Policy.HighestVersion
			return nil
		})
		if err != nil {
			return reconcile.PersistFailed{ID: a.ID, Err: err}
		}
	case reconcile.Activate:
		prev, err := e.del.Activate(a.ID, a.Version)
		return reconcile.Activated{ID: a.ID, Version: a.Version, Previous: prev, Err: err}
	case reconcile.GC:
		removed, err := e.del.GC(a.ID, a.Keep...)
		return reconcile.GCed{ID: a.ID, Removed: removed, Err: err}
	case reconcile.Remove:
		if err := e.del.RemoveAddon(a.ID); err != nil {
			l.log.Warn("removing add-on", "addon_id", a.ID, "error", err)
			l.stageErr = errors.Join(l.stageErr, err)
		}
	case reconcile.DiscardPartial:
		e.del.DiscardPartials(a.ID, a.Version)
	case reconcile.FaultPoint:
		delivery.FaultPoint(a.Name)
	case reconcile.CancelStage:
		if cancel := l.stagings[a.Seq]; cancel != nil {
			cancel()
		}
	case reconcile.ApplyConfig:
		return l.applyConfig()
	case reconcile.FreeMemory:
		debug.FreeOSMemory()
	case reconcile.Log:
		l.log.Log(l.ctx, a.Level, a.Msg, a.Args...)
	case reconcile.Count:
		l.metrics.count(a)
	case reconcile.Reply:
		a.Token.(chan error) <- a.Err
	case reconcile.Start:
		l.submit(a.ID, l.startOp(e, a))
	case reconcile.Stop:
		l.submit(a.ID, func() reconcile.Input {
			l.stopOn(a.Model, a.ID)
			return nil
		})
	case reconcile.DropCapped:
		l.submit(a.ID, func() reconcile.Input {
			l.a.dropCapped(e, a.ID, a.Versions...)
			return nil
		})
	case reconcile.Fetch:
		l.fetched = time.Now()
		if l.once {
			// addond stage waits for its one refresh anyway, and a
			// refresh that cannot start is its error.
			return l.fetch(e, a)
		}
		l.background(func() reconcile.Input { return l.fetch(e, a) })
	case reconcile.Stage:
		ctx, cancel := context.WithCancel(l.ctx)
		l.stagings[a.Seq] = cancel
		l.background(func() reconcile.Input {
			defer cancel()
			return l.stage(ctx, e, a)
		})
	case reconcile.Sweep:
		if l.opts.Orphans == nil {
			return reconcile.Swept{}
		}
		// What the sweep keeps is asked of the published view: publish
		// what this step decided first.
		l.setOwned(l.core.Owned())
		l.background(l.sweep)
	default:
		panic(fmt.Sprintf("daemon: unknown action %T", act))
	}
	return nil
}

// background runs fn on a goroutine of its own and hands its result to
// the loop.
func (l *loop) background(fn func() reconcile.Input) {
	l.work.Add(1)
	go func() {
		defer l.work.Done()
		if in := fn(); in != nil {
			l.send(in)
		}
	}()
}

// send hands a result to the loop, unless the loop has ended.
func (l *loop) send(in reconcile.Input) {
	select {
	case l.inputs <- in:
	case <-l.quit:
	}
}

// worker runs one add-on's backend calls, one at a time, in order.
type worker struct {
	mu      sync.Mutex
	queue   []func() reconcile.Input
	running bool
}

// submit queues op on add-on id's worker, starting it when it is idle.
func (l *loop) submit(id string, op func() reconcile.Input) {
	w := l.workers[id]
	if w == nil {
		w = &worker{}
		l.workers[id] = w
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queue = append(w.queue, op)
	if w.running {
		return
	}
	w.running = true
	l.work.Add(1)
	go func() {
		defer l.work.Done()
		for {
			w.mu.Lock()
			if len(w.queue) == 0 {
				w.running = false
				w.mu.Unlock()
				return
			}
			op := w.queue[0]
			w.queue = w.queue[1:]
			w.mu.Unlock()
			if in := op(); in != nil {
				l.send(in)
			}
		}
	}()
}

// startOp runs a Start: the capped copy first, where one is needed (before
// anything is stopped: without one nothing changes), then the backend.
func (l *loop) startOp(e *env, a reconcile.Start) func() reconcile.Input {
	return func() reconcile.Input {
		done := reconcile.StartDone{ID: a.ID, Seq: a.Seq}
		sp := e.supSpec(a.Spec)
		if needsCaps(a.Spec) {
			path := a.Copy
			if path == "" {
				var err error
				if path, err = l.findCopy(e, a); err != nil {
					done.CapErr = err
					return done
				}
				done.Copy = path
			}
			sp.Binary, sp.Capabilities = path, a.Spec.OSCapabilities
		}
		if a.StopFirst != "" {
			l.stopOn(a.StopFirst, a.ID)
		}
		sup := l.opts.Supervisors[a.Backend]
		if a.Update {
			done.Err = sup.Update(l.ctx, sp)
		}
		if !a.Update || errors.Is(done.Err, supervisors.ErrUnknownAddon) {
			// (An update of an add-on the backend does not run — the start
			// it follows failed — starts it.)
			done.Err = sup.Start(l.ctx, sp)
		}
		return done
	}
}

// findCopy is a Start's capped copy when the Core knows none: at boot one
// from addond-updater (a bounded wait; it falls back to one made earlier),
// otherwise only one made earlier will do.
func (l *loop) findCopy(e *env, a reconcile.Start) (string, error) {
	if a.AskUpdater {
		ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
		defer cancel()
		return l.a.cappedCopy(ctx, e, a.Spec)
	}
	if path, ok := l.a.existingCopy(a.Spec); ok {
		return path, nil
	}
	return "", fmt.Errorf("addon %q: %w: no capped copy of version %s yet", a.ID, ErrCapsUnavailable, a.Spec.Version)
}

// stopOn stops add-on id under model.
func (l *loop) stopOn(model, id string) {
	sup, ok := l.opts.Supervisors[model]
	if !ok {
		return
	}
	if err := sup.Stop(l.ctx, id); err != nil && !errors.Is(err, supervisors.ErrUnknownAddon) {
		l.log.Warn("stopping add-on", "addon_id", id, "error", err)
	}
}

// fetch refreshes the desired set: the document, the overrides, every
// entry resolved for this host (downgrades refused before anything is
// fetched) and every enabled os_package binary checked.
func (l *loop) fetch(e *env, f reconcile.Fetch) reconcile.Input {
	rep := &Report{}
	addons, authoritative, err := l.a.desired(l.ctx, e, rep)
	if err != nil && l.once {
		l.fatal = err
		return nil
	}
	if err != nil {
		rep.DocumentErr = err
	}
	l.report = rep
	m := reconcile.Desired{Authoritative: authoritative && err == nil, Doc: rep.doc()}
	for _, ad := range addons {
		pinned := rep.Pinned[ad.AddonID]
		spec, err := l.a.resolve(l.ctx, e, ad, pinned, f.Floors[ad.AddonID])
		entry := reconcile.Entry{ID: ad.AddonID, Version: ad.Version, Pinned: pinned, Spec: spec, Err: err}
		if err == nil && spec.Enabled && spec.Delivery == assignment.DeliveryOSPackage {
			var prev *delivery.Installed
			if p, ok := f.Installed[ad.AddonID]; ok {
				prev = &p
			}
			in, err := delivery.CheckInstalled(spec.BinaryPath, spec.BinarySHA256, prev)
			if err != nil {
				entry.InstalledErr = assignment.Refuse(ad.AddonID, err)
			} else {
				entry.Installed = &in
			}
		}
		m.Entries = append(m.Entries, entry)
	}
	return m
}

// stage fetches, verifies and stages a version, and asks for its capped
// copy where it needs one.
func (l *loop) stage(ctx context.Context, e *env, a reconcile.Stage) reconcile.Input {
	staged, err := e.del.Stage(ctx, a.Spec)
	m := reconcile.Staged{Seq: a.Seq, Spec: a.Spec, Err: err, Downloaded: staged.Downloaded, Bytes: staged.Bytes}
	if err == nil && a.Caps {
		m.Capped, m.CapErr = l.a.cappedCopy(ctx, e, a.Spec)
	}
	if l.opts.beforeStaged != nil {
		l.opts.beforeStaged(a.Spec)
	}
	return m
}

// sweep stops add-on units nothing owns. A manager that is away is not
// waited for: the next document sweeps again.
func (l *loop) sweep() reconcile.Input {
	keep := func(id string) bool {
		// Asked just before each unit is stopped, of what the loop last
		// published: a unit the loop starts meanwhile belongs to an
		// add-on that was already desired.
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.owned[id]
	}
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	stopped, err := l.opts.Orphans(ctx, keep)
	if len(stopped) > 0 {
		l.log.Info("stopped orphaned add-on units", "units", stopped)
	}
	if err != nil {
		l.log.Debug("orphaned add-on units not checked", "error", err)
	}
	return reconcile.Swept{}
}

// applyConfig switches to the reloaded config (the Core asks once nothing
// in flight uses the old store or keys). Keys that name the runtime root,
// sockets, the systemd manager or the metrics address need a restart.
func (l *loop) applyConfig() reconcile.Input {
	cfg := l.pending
	if cfg == nil {
		return nil
	}
	l.pending = nil
	old := l.a.cfg()
	for _, k := range []struct {
		key     string
		changed bool
	}{
		{"runtime_root", cfg.RuntimeRoot != old.RuntimeRoot},
		{"status_socket", cfg.StatusSocket != old.StatusSocket},
		{"systemd", cfg.Systemd != old.Systemd},
		{"metrics_address", cfg.MetricsAddress != old.MetricsAddress},
	} {
		if k.changed {
			l.log.Warn("config reload: this key takes effect at the next restart", "key", k.key)
		}
	}
	cfg.RuntimeRoot, cfg.StatusSocket, cfg.Systemd, cfg.MetricsAddress = old.RuntimeRoot, old.StatusSocket, old.Systemd, old.MetricsAddress
	if err := l.a.configure(cfg); err != nil {
		l.log.Error("config reload failed; keeping the current config", "error", err)
		return nil
	}
	l.log.Info("config reloaded", "path", cfg.Path)
	return reconcile.Configured{Probation: cfg.Probation.D()}
}

// recover reads every add-on's persisted state for the Core's Boot.
func (l *loop) recover() reconcile.Boot {
	del := l.a.env.Load().del
	ids, err := del.AddonIDs()
	if err != nil {
		l.log.Error("listing add-ons", "error", err)
	}
	var b reconcile.Boot
	for _, id := range ids {
		st, err := del.State(id)
		if err != nil {
			l.log.Error("reading add-on state; not started from it", "addon_id", id, "error", err)
			continue
		}
		r := reconcile.Recovered{ID: id, State: st}
		r.Current, r.CurrentErr = del.Current(id)
		b.Addons = append(b.Addons, r)
	}
	return b
}

// publish refreshes what the status API and the orphan sweep read, the
// metrics and sd_notify's STATUS=.
func (l *loop) publish() {
	st := Status{AgentID: l.a.cfg().AgentID, Version: Version, Ready: l.ready, Addons: l.core.Addons()}
	if d := l.core.Doc(); d != nil {
		st.Serial, st.DocumentFresh, st.DocumentExpired = d.Serial, d.Fresh, d.Expired
		if d.Err != nil {
			st.DocumentError = d.Err.Error()
		}
		st.DocumentCheckedAt, st.DocumentAppliedAt = timePtr(d.CheckedAt), timePtr(d.AppliedAt)
	}
	owned, helpers := l.core.Owned(), l.core.HelperPolicies()
	l.mu.Lock()
	l.status, l.owned, l.helpers = st, owned, helpers
	l.mu.Unlock()
	l.metrics.observe(st)
	if l.a.opts.Addons != nil {
		l.a.opts.Addons.Set(logAddons(st.Addons, l.a.cfg().Systemd.Manager))
	}
	if l.reporter != nil {
		l.reporter.offer(st)
	}
	l.metrics.downloads.Set(float64(l.core.InFlight()))
	l.metrics.expired.Set(boolGauge(st.DocumentExpired))
	if sum := l.core.Summary(); l.ready && sum != l.lastSummary {
		l.lastSummary = sum
		l.opts.Notify("STATUS=" + sum)
	}
}

func (l *loop) setOwned(owned map[string]bool) {
	l.mu.Lock()
	l.owned = owned
	l.mu.Unlock()
}

// notify feeds a supervisor event to the loop.
func (l *loop) notify(e supervisors.Event) {
	select {
	case l.events <- e:
	default:
		// The loop is behind by hundreds of events: drop this one; the
		// backend's Status keeps the latest, and the next event carries
		// the current state anyway.
		l.log.Warn("dropping a supervisor event: loop busy", "addon_id", e.AddonID)
	}
}

// shutdown cancels what is in flight, waits (bounded) for the work the
// loop started, and stops the add-ons that are addond's children (units
// outlive it).
func (l *loop) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	close(l.quit)
	for _, c := range l.stagings {
		c()
	}
	done := make(chan struct{})
	go func() {
		l.work.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		l.log.Warn("work still in flight at shutdown")
	}
	var errs []error
	for _, sup := range l.opts.Supervisors {
		errs = append(errs, sup.Close(ctx))
	}
	return errors.Join(errs...)
}

// needsCaps is whether spec runs from a capped copy.
func needsCaps(spec assignment.Spec) bool {
	return spec.Delivery == assignment.DeliveryPushedArtifact && len(spec.OSCapabilities) > 0
}

// supSpec is what a backend runs for spec (a capped copy is filled in by
// whoever knows it).
func (e *env) supSpec(spec assignment.Spec) supervisors.Spec {
	s := supervisors.Spec{
		AddonID: spec.AddonID, Version: spec.Version,
		Args:       spec.Args,
		ConfigJSON: spec.ConfigJSON,
		Schedule:   spec.Schedule,
	}
	switch spec.Delivery {
	case assignment.DeliveryCompiledIn:
		s.Feature = spec.Feature
	case assignment.DeliveryOSPackage:
		s.Binary = spec.BinaryPath
	default:
		s.Binary = e.del.BinaryPath(spec.AddonID, spec.Version, spec.BinaryName)
	}
	if spec.Timeout != "" {
		s.Timeout, _ = time.ParseDuration(spec.Timeout)
	}
	if res := spec.Resources; res != nil {
		s.Resources = &supervisors.Resources{CPUMaxPercent: res.CPUMaxPercent, MemoryMaxBytes: res.MemoryMaxBytes, MemoryHighBytes: res.MemoryHighBytes, TasksMax: res.TasksMax}
	}
	return s
}

// logAddons is what the log handler adds to an entry about an add-on that
// does not say itself: its active (else wanted) version and the unit it
// runs as (none for in-agent features, or without a systemd manager).
func logAddons(addons []AddonStatus, manager string) map[string]logging.Addon {
	m := make(map[string]logging.Addon, len(addons))
	for _, a := range addons {
		la := logging.Addon{Version: a.ActiveVersion}
		if la.Version == "" {
			la.Version = a.Version
		}
		if manager != "none" && a.Supervision != assignment.SupervisionConfigToggle && a.Supervision != assignment.SupervisionEphemeralHelper {
			la.Unit = systemd.ServiceName(a.AddonID)
		}
		m[a.AddonID] = la
	}
	return m
}
