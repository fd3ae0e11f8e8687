package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/helper"
)

// RunOptions carry what `addond run` needs besides the config.
type RunOptions struct {
	// Supervisors by supervision model; a model without one is reported
	// unsupported.
	Supervisors map[string]supervisors.Supervisor
	// Notify sends an sd_notify state ("READY=1", "STATUS=…"); nil: none.
	Notify func(state string)
	// Watchdog is the sd_notify watchdog interval (0: none); WATCHDOG=1 is
	// sent at half of it from the loop, so a stuck loop is noticed.
	Watchdog time.Duration
	// Reload (SIGHUP) yields a freshly loaded config, or nil to keep the
	// current one; either way overrides and the document are re-read at
	// once. A new config takes effect as soon as no download is in flight;
	// keys that name the runtime root, sockets, the systemd manager or the
	// metrics address need a restart and are reported as such.
	Reload <-chan *config.Config
	// Ready is closed once READY=1 was sent (tests).
	Ready chan<- struct{}
	// Helpers runs ephemeral helpers for POST /v1/run/<id> (nil: none).
	Helpers HelperRunner
	// Orphans stops add-on units that nothing claims, once, after the
	// last-known-good add-ons were started (nil: add-ons are children).
	Orphans func(ctx context.Context, keep func(id string) bool) ([]string, error)

	// beforeStaged, in tests, runs in a staging's goroutine after it ended
	// and before its result reaches the loop: a fault point that orders
	// the result after other inputs.
	beforeStaged func(assignment.Spec)
}

// HelperRunner runs an ephemeral helper once.
type HelperRunner interface {
	Run(ctx context.Context, id string, args []string, caller string) (*helper.Result, error)
}

// addonRun is the loop's view of one add-on. Only the loop goroutine
// touches it.
type addonRun struct {
	id      string
	desired *assignment.Spec // nil: not (validly) assigned
	running *assignment.Spec // what the supervisor runs
	model   string
	state   string
	health  string
	lastErr string
	since   time.Time
	fromLKG bool
	// staging is the version being staged, by the staging numbered
	// stageSeq (0: none); cancelStage cancels it. One staging per add-on
	// at a time: two would write the same partial file.
	staging     string
	stageSeq    uint64
	cancelStage context.CancelFunc
	previous    string // the version before the current one
	probation   *state.Probation
	restarts    int
	pid         int
	installed   *delivery.Installed // os_package: the binary as last verified
	waiting     bool                // the backend waits for the systemd manager
	capped      map[string]string   // version → its capped copy (os_capabilities)
	pinned      bool                // the local overrides set the desired version
	refused     string              // the desired version refused as a downgrade
}

// unsupported reports a model (delivery or supervision) this host lacks.
func (r *addonRun) unsupported(kind, model string) {
	r.set("unsupported", fmt.Sprintf("%s %q is not available on this host", kind, model))
}

func (r *addonRun) set(st, reason string) {
	if r.state != st {
		r.since = time.Now().UTC()
	}
	r.state, r.lastErr = st, reason
}

// loop messages
type (
	desiredMsg struct {
		entries       []desiredEntry
		authoritative bool
		report        *Report
	}
	desiredEntry struct {
		id      string
		version string // as assigned (for a refused entry)
		pinned  bool   // the local overrides set the version
		spec    assignment.Spec
		err     error
	}
	sweptMsg  struct{}
	stagedMsg struct {
		seq    uint64 // the staging's number (addonRun.stageSeq)
		spec   assignment.Spec
		err    error
		capped string // the capped copy, for a spec with os_capabilities
		capErr error  // why there is none
	}
	request struct {
		kind  string // "reconcile", "retry"
		id    string
		reply chan error
	}
)

// runner is the state of one `addond run`.
type runner struct {
	a      *Agent
	opts   RunOptions
	log    *slog.Logger
	addons map[string]*addonRun
	events chan supervisors.Event
	msgs   chan any
	reqs   chan request

	fetching, again bool
	sweeping        bool // an orphan sweep is running
	lastReport      *Report
	docFresh        bool // the last document was fresh (Report.Fresh)
	ready           bool

	mu     sync.Mutex
	status Status          // snapshot for the status API
	owned  map[string]bool // add-ons running or meant to run: the orphan sweep keeps their units

	metrics        *metrics
	reconcileStart time.Time
	lastSummary    string
	staging        int    // downloads in flight
	stageSeq       uint64 // the last staging's number
	// draining: stagings still in flight for add-ons that were removed
	// (id → the staging's number). Until their result is in, the add-on's
	// directory is not theirs to recreate, nor a re-added add-on's to
	// stage into.
	draining      map[string]uint64
	pendingConfig *config.Config // a reloaded config waiting for them
}

// applyConfig switches to a reloaded config once nothing in flight uses
// the old store or keys.
func (r *runner) applyConfig() {
	cfg := r.pendingConfig
	if cfg == nil || r.fetching || r.staging > 0 {
		return
	}
	r.pendingConfig = nil
	old := r.a.cfg
	for key, changed := range map[string]bool{
		"runtime_root":    cfg.RuntimeRoot != old.RuntimeRoot,
		"status_socket":   cfg.StatusSocket != old.StatusSocket,
		"systemd":         cfg.Systemd != old.Systemd,
		"metrics_address": cfg.MetricsAddress != old.MetricsAddress,
	} {
		if changed {
			r.log.Warn("config reload: this key takes effect at the next restart", "key", key)
		}
	}
	cfg.RuntimeRoot, cfg.StatusSocket, cfg.Systemd, cfg.MetricsAddress = old.RuntimeRoot, old.StatusSocket, old.Systemd, old.MetricsAddress
	if err := r.a.configure(cfg); err != nil {
		r.log.Error("config reload failed; keeping the current config", "error", err)
		return
	}
	r.log.Info("config reloaded", "path", cfg.Path)
}

// Run is the daemon: it starts the last-known-good add-ons, sends READY,
// and then reconciles on every poll (with jitter), SIGHUP and request,
// supervising add-ons, promoting a new version once it proves healthy and
// rolling it back otherwise. It returns when ctx is done, after stopping
// the add-ons that are its children.
func (a *Agent) Run(ctx context.Context, o RunOptions) error {
	if o.Notify == nil {
		o.Notify = func(string) {}
	}
	r := &runner{
		a: a, opts: o, log: a.log,
		addons:   map[string]*addonRun{},
		draining: map[string]uint64{},
		events:   make(chan supervisors.Event, 256),
		msgs:     make(chan any, 64),
		reqs:     make(chan request),
		metrics:  newMetrics(),
	}
	a.runner.Store(r)
	defer a.runner.Store(nil)

	r.startLastKnownGood(ctx)
	// No orphan sweep yet: add-ons that need no delivery (os_package,
	// compiled_in) have no last-known-good and start only with the first
	// document; the sweep waits for that document, or it would stop their
	// units. It runs after every authoritative one.
	srv, err := r.serveStatus()
	if err != nil {
		return err
	}
	defer srv.Close()
	if addr := a.cfg.MetricsAddress; addr != "" {
		ms, err := r.metrics.serve(addr)
		if err != nil {
			return fmt.Errorf("metrics_address %s: %w", addr, err)
		}
		defer ms.Close()
	}
	r.ready = true
	r.publish()
	o.Notify("READY=1\nSTATUS=" + r.summary())
	if o.Ready != nil {
		close(o.Ready)
	}

	poll := time.NewTimer(0) // the first reconcile at once
	defer poll.Stop()
	// Probation deadlines are checked every second, but only while a
	// version is on probation: an idle addond does not wake up for them.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tick.Stop()
	ticking := false
	var watchdog <-chan time.Time
	if o.Watchdog > 0 {
		t := time.NewTicker(o.Watchdog / 2)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case <-ctx.Done():
			o.Notify("STOPPING=1")
			return r.shutdown()
		case <-poll.C:
			r.reconcile(ctx)
			poll.Reset(source.Jitter(a.cfg.PollInterval.D()))
		case cfg := <-o.Reload:
			o.Notify("RELOADING=1\n" + sddaemon.SdNotifyMonotonicUsec())
			if cfg != nil {
				r.pendingConfig = cfg
				r.applyConfig()
			}
			r.reconcile(ctx)
			o.Notify("READY=1\nSTATUS=" + r.summary())
		case req := <-r.reqs:
			req.reply <- r.handle(ctx, req)
		case e := <-r.events:
			r.event(ctx, e)
		case m := <-r.msgs:
			switch m := m.(type) {
			case desiredMsg:
				r.fetching = false
				r.applyConfig()
				r.apply(ctx, m)
				r.metrics.reconcile.Observe(time.Since(r.reconcileStart).Seconds())
				if r.again {
					r.again = false
					r.reconcile(ctx)
				}
			case stagedMsg:
				r.staged(ctx, m)
			case sweptMsg:
				r.sweeping = false
			}
		case <-tick.C:
			// Events already queued come first: a version that said it is
			// healthy before its deadline must not be rolled back because
			// the tick won the select (or the loop was busy starting
			// other add-ons when the event came).
			for pending := true; pending; {
				select {
				case e := <-r.events:
					r.event(ctx, e)
				default:
					pending = false
				}
			}
			r.checkProbation(ctx)
			if !r.onProbation() {
				tick.Stop()
				ticking = false
			}
		case <-watchdog:
			o.Notify("WATCHDOG=1")
		}
		if !ticking && r.onProbation() {
			tick.Reset(time.Second)
			ticking = true
		}
		r.publish()
	}
}

func (r *runner) onProbation() bool {
	for _, ar := range r.addons {
		if ar.probation != nil {
			return true
		}
	}
	return false
}

// startLastKnownGood starts every add-on whose last-known-good version is
// current, from local state alone: no store, no document. The starts run
// concurrently, so READY does not wait for them one by one.
func (r *runner) startLastKnownGood(ctx context.Context) {
	ids, err := r.a.del.AddonIDs()
	if err != nil {
		r.log.Error("listing add-ons", "error", err)
		return
	}
	type start struct {
		ar     *addonRun
		sup    supervisors.Supervisor
		spec   assignment.Spec
		err    error
		capped string
		capErr error
	}
	var starts []*start
	for _, id := range ids {
		st, err := r.a.del.State(id)
		if err != nil || st.LKG == nil || !st.LKG.Enabled || st.LKG.Delivery != assignment.DeliveryPushedArtifact {
			continue // add-ons delivered otherwise start once checked, on the first reconcile
		}
		cur, err := r.a.del.Current(id)
		if err != nil {
			continue
		}
		if cur != st.LKG.Version {
			// current is not the last-known-good: addond stopped between
			// activating a version and proving it — on probation, right
			// after the swap before the probation was recorded, or in the
			// middle of a rollback (after the version was recorded failed,
			// before current was swapped back). Nothing unproven starts:
			// back to the last-known-good now — the store may be down —
			// and the next reconcile tries the new version again on
			// probation, unless it is recorded failed.
			why := "an activation"
			if p := st.Probation; p != nil && p.Version == cur {
				why = "probation"
			}
			if f, failed := st.Failed[cur]; failed && f.SHA256 == st.Staged[cur].SHA256 {
				why = "a rollback"
			}
			if _, err := r.a.del.Activate(id, st.LKG.Version); err != nil {
				r.log.Error("returning to last-known-good after an interrupted "+why, "addon_id", id, "version", cur, "last_known_good", st.LKG.Version, "error", err)
				continue
			}
			r.a.del.UpdateState(id, func(s *state.Addon) error {
				s.Probation = nil
				return nil
			})
			r.log.Warn(why+" was interrupted by a restart; back on last-known-good", "addon_id", id, "version", cur, "last_known_good", st.LKG.Version)
		}
		if st.HighestVersion == "" {
			// State from before anti-rollback: what ran is the floor.
			if err := r.a.del.UpdateState(id, func(s *state.Addon) error {
				s.HighestVersion = s.Highest(cur)
				return nil
			}); err != nil {
				r.log.Warn("recording the highest version activated", "addon_id", id, "error", err)
			}
		}
		ar := r.get(id)
		ar.fromLKG, ar.previous = true, st.Previous
		spec := *st.LKG
		sup, ok := r.opts.Supervisors[spec.Supervision]
		if !ok {
			ar.unsupported("supervision", spec.Supervision)
			continue
		}
		ar.running, ar.model = &spec, spec.Supervision
		ar.set("starting", "")
		starts = append(starts, &start{ar: ar, sup: sup, spec: spec})
	}
	var wg sync.WaitGroup
	for _, s := range starts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp := r.supSpec(s.ar, s.spec)
			if needsCaps(s.spec) {
				// The capped copy, from the cached signed package: no
				// store needed; a bounded wait for the updater.
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				s.capped, s.capErr = r.a.cappedCopy(cctx, s.spec)
				cancel()
				if s.capErr != nil {
					return
				}
				sp.Binary = s.capped
			}
			s.err = s.sup.Start(ctx, sp)
		}()
	}
	wg.Wait()
	for _, s := range starts {
		switch {
		case s.capErr != nil:
			s.ar.running, s.ar.model = nil, ""
			s.ar.set("staged", s.capErr.Error())
			r.log.Warn("last-known-good not started: no capped copy", "addon_id", s.ar.id, "error", s.capErr)
		case s.err != nil:
			s.ar.lastErr = s.err.Error()
		}
		if s.capped != "" {
			s.ar.capped[s.spec.Version] = s.capped
		}
	}
}

// sweepOrphans stops, in the background, add-on units of add-ons that are
// neither running nor meant to run here (removed or disabled while addond
// was down, or while the manager was away when addond stopped them). A
// manager that is away is not waited for: the next document sweeps again.
func (r *runner) sweepOrphans(ctx context.Context) {
	if r.opts.Orphans == nil || r.sweeping {
		return
	}
	r.updateOwned()
	keep := func(id string) bool {
		// Asked just before each unit is stopped, of what the loop last
		// published: a unit the loop starts meanwhile belongs to an
		// add-on that was already desired.
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.owned[id]
	}
	r.sweeping = true
	go func() {
		defer func() {
			select {
			case r.msgs <- sweptMsg{}:
			case <-ctx.Done():
			}
		}()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		stopped, err := r.opts.Orphans(sctx, keep)
		if len(stopped) > 0 {
			r.log.Info("stopped orphaned add-on units", "units", stopped)
		}
		if err != nil {
			r.log.Debug("orphaned add-on units not checked", "error", err)
		}
	}()
}

func (r *runner) get(id string) *addonRun {
	ar, ok := r.addons[id]
	if !ok {
		ar = &addonRun{id: id, state: "pending", health: "unknown", since: time.Now().UTC(), capped: map[string]string{}}
		r.addons[id] = ar
	}
	return ar
}

// supSpec is what a backend runs for spec.
func (r *runner) supSpec(ar *addonRun, spec assignment.Spec) supervisors.Spec {
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
		s.Binary = r.a.del.BinaryPath(spec.AddonID, spec.Version, spec.BinaryName)
		if len(spec.OSCapabilities) > 0 {
			// Only ever the capped copy (start makes sure there is one).
			s.Binary, s.Capabilities = ar.capped[spec.Version], spec.OSCapabilities
		}
	}
	if spec.Timeout != "" {
		s.Timeout, _ = time.ParseDuration(spec.Timeout)
	}
	if res := spec.Resources; res != nil {
		s.Resources = &supervisors.Resources{CPUMaxPercent: res.CPUMaxPercent, MemoryMaxBytes: res.MemoryMaxBytes, MemoryHighBytes: res.MemoryHighBytes, TasksMax: res.TasksMax}
	}
	return s
}

func (r *runner) notify(e supervisors.Event) {
	select {
	case r.events <- e:
	default:
		// The loop is behind by hundreds of events: drop this one; the
		// backend's Status keeps the latest, and the next event carries
		// the current state anyway.
		r.log.Warn("dropping a supervisor event: loop busy", "addon_id", e.AddonID)
	}
}

// needsCaps is whether spec runs from a capped copy.
func needsCaps(spec assignment.Spec) bool {
	return spec.Delivery == assignment.DeliveryPushedArtifact && len(spec.OSCapabilities) > 0
}

// start runs spec under its supervision model, or updates it in place
// when it already runs there.
func (r *runner) start(ctx context.Context, ar *addonRun, spec assignment.Spec) error {
	sup, ok := r.opts.Supervisors[spec.Supervision]
	if !ok {
		ar.unsupported("supervision", spec.Supervision)
		return supervisors.ErrUnsupported
	}
	if needsCaps(spec) && ar.capped[spec.Version] == "" {
		// A version that ran before (a rollback target) has its copy; if
		// this process never had it, only one made earlier will do here:
		// the loop does not wait for the updater.
		path, ok := r.a.existingCopy(spec)
		if !ok {
			err := fmt.Errorf("addon %q: %w: no capped copy of version %s yet", ar.id, ErrCapsUnavailable, spec.Version)
			ar.lastErr = err.Error()
			return err
		}
		ar.capped[spec.Version] = path
	}
	var err error
	if ar.running != nil && ar.model == spec.Supervision {
		err = sup.Update(ctx, r.supSpec(ar, spec))
	} else {
		if ar.running != nil {
			r.stop(ctx, ar)
		}
		err = sup.Start(ctx, r.supSpec(ar, spec))
	}
	ar.running, ar.model = &spec, spec.Supervision
	if ar.state == "pending" || ar.state == "staged" || ar.state == "downloading" {
		ar.set("starting", "")
	}
	if err != nil {
		ar.lastErr = err.Error()
	}
	return err
}

func (r *runner) stop(ctx context.Context, ar *addonRun) {
	if ar.running == nil {
		return
	}
	if sup, ok := r.opts.Supervisors[ar.model]; ok {
		if err := sup.Stop(ctx, ar.id); err != nil && !errors.Is(err, supervisors.ErrUnknownAddon) {
			r.log.Warn("stopping add-on", "addon_id", ar.id, "error", err)
		}
	}
	ar.running, ar.pid, ar.probation = nil, 0, nil
}

// reconcile starts a refresh of the desired set in the background; the
// loop stays free for events and requests while the store answers.
func (r *runner) reconcile(ctx context.Context) {
	if r.fetching {
		r.again = true
		return
	}
	r.fetching = true
	r.reconcileStart = time.Now()
	go func() {
		rep := &Report{}
		addons, authoritative, err := r.a.desired(ctx, rep)
		if err != nil {
			rep.DocumentErr = err
		}
		m := desiredMsg{authoritative: authoritative && err == nil, report: rep}
		for _, ad := range addons {
			pinned := rep.Pinned[ad.AddonID]
			spec, err := r.a.resolve(ctx, ad, pinned)
			m.entries = append(m.entries, desiredEntry{id: ad.AddonID, version: ad.Version, pinned: pinned, spec: spec, err: err})
		}
		r.msgs <- m
	}()
}

// apply moves every add-on toward the desired set. Add-ons whose desired
// spec did not change are not touched.
func (r *runner) apply(ctx context.Context, m desiredMsg) {
	r.lastReport = m.report
	r.docFresh = m.report.Fresh
	if m.report.NewReplay {
		r.metrics.replays.Inc()
	}
	assigned := map[string]bool{}
	for _, e := range m.entries {
		if assignment.ValidAddonID(e.id) != nil {
			r.log.Error("refusing add-on", "addon_id", e.id, "error", e.err)
			continue
		}
		assigned[e.id] = true
		ar := r.get(e.id)
		ar.pinned = e.pinned
		if e.err != nil {
			ar.desired = nil
			if errors.Is(e.err, assignment.ErrDowngrade) {
				r.refuseDowngrade(ar, e.version, e.err)
			} else {
				ar.refused = ""
			}
			if ar.running != nil {
				ar.fromLKG = true
				ar.lastErr = e.err.Error()
			} else {
				ar.set("failed", e.err.Error())
			}
			continue
		}
		ar.refused = ""
		spec := e.spec
		ar.desired = &spec
		r.converge(ctx, ar)
	}
	if !m.report.Fresh {
		// Nothing that runs is confirmed by a fresh document: the store
		// is unreachable, or its document was refused, and the cached
		// one (or none) is in use.
		for _, ar := range r.addons {
			if ar.running != nil {
				ar.fromLKG = true
			}
		}
	}
	if !m.authoritative {
		return
	}
	for id, ar := range r.addons {
		if !assigned[id] {
			r.log.Info("add-on no longer assigned", "addon_id", id)
			if ar.stageSeq != 0 {
				// Its staging ends on its own, and removes what it wrote.
				ar.cancelStage()
				r.draining[id] = ar.stageSeq
			}
			r.stop(ctx, ar)
			if err := r.a.del.RemoveAddon(id); err != nil {
				r.log.Warn("removing add-on", "addon_id", id, "error", err)
			}
			if len(ar.capped) > 0 {
				r.a.dropCapped(id)
			}
			delete(r.addons, id)
		}
	}
	r.sweepOrphans(ctx)
}

// refuseDowngrade reports a desired version refused as a downgrade: a
// warning and the counter once per refused version; the running version
// keeps running.
func (r *runner) refuseDowngrade(ar *addonRun, version string, err error) {
	if ar.refused != version {
		r.metrics.downgradesRefused.WithLabelValues(ar.id).Inc()
		active := ""
		if ar.running != nil {
			active = ar.running.Version
		}
		r.log.Warn("downgrade refused", "addon_id", ar.id, "version", version, "active_version", active, "error", err)
	}
	ar.refused = version
}

// converge takes one add-on one step toward its desired spec.
func (r *runner) converge(ctx context.Context, ar *addonRun) {
	d := ar.desired
	if ar.stageSeq != 0 && (!d.Enabled || d.Delivery != assignment.DeliveryPushedArtifact || ar.staging != d.Version) {
		// The assignment moved on from the version being staged: its
		// staging is cancelled (a partial download stays for a resume),
		// and its result converges again.
		ar.cancelStage()
	}
	switch {
	case !d.Enabled:
		r.stop(ctx, ar)
		ar.set("disabled", "")
		ar.health = "unknown"
		return
	case d.Delivery != assignment.DeliveryPushedArtifact && d.Delivery != assignment.DeliveryCompiledIn && d.Delivery != assignment.DeliveryOSPackage:
		ar.unsupported("delivery", d.Delivery)
		return
	}
	if _, ok := r.opts.Supervisors[d.Supervision]; !ok {
		r.stop(ctx, ar)
		ar.unsupported("supervision", d.Supervision)
		return
	}
	if d.Delivery != assignment.DeliveryPushedArtifact {
		r.convergeLocal(ctx, ar)
		return
	}
	ar.installed = nil
	st, err := r.a.del.State(ar.id)
	if err != nil {
		ar.lastErr = err.Error()
		return
	}
	if f, failed := st.Failed[d.Version]; failed && f.SHA256 == d.Artifact.SHA256 {
		// Not retried until the assignment changes or `addonctl retry`.
		if ar.running != nil && ar.running.Version != d.Version {
			ar.set("rolled_back", f.Reason)
			ar.fromLKG = true // the desired version is not what runs
		} else if ar.running == nil {
			ar.set("failed", f.Reason)
		}
		return
	}
	if ar.running != nil && ar.running.Version == d.Version && ar.running.Artifact != nil && ar.running.Artifact.SHA256 == d.Artifact.SHA256 {
		ar.fromLKG = false
		if ar.state == "rolled_back" {
			// The assignment now asks for the version that runs: the
			// rollback is over (it lasts only until the assignment
			// changes).
			ar.set("running", "")
		}
		if ar.running.Digest() != d.Digest() {
			if err := r.start(ctx, ar, *d); err != nil {
				ar.lastErr = err.Error()
			}
		}
		return
	}
	if _, busy := r.draining[ar.id]; busy {
		// A staging of the add-on as it was before its removal is still
		// in flight: its result converges this one again.
		if ar.running == nil {
			ar.set("downloading", "")
		}
		return
	}
	if ar.stageSeq != 0 {
		return // its result converges again
	}
	r.stageSeq++
	sctx, cancel := context.WithCancel(ctx)
	ar.staging, ar.stageSeq, ar.cancelStage = d.Version, r.stageSeq, cancel
	r.staging++
	r.metrics.downloads.Set(float64(r.staging))
	if ar.running == nil {
		ar.set("downloading", "")
	}
	spec, seq := *d, ar.stageSeq
	go func() {
		defer cancel()
		staged, err := r.a.del.Stage(sctx, spec)
		if staged.Downloaded {
			r.metrics.deliveryBytes.Add(float64(staged.Bytes))
		}
		m := stagedMsg{seq: seq, spec: spec, err: err}
		if err == nil && needsCaps(spec) {
			m.capped, m.capErr = r.a.cappedCopy(sctx, spec)
		}
		if r.opts.beforeStaged != nil {
			r.opts.beforeStaged(spec)
		}
		select {
		case r.msgs <- m:
		case <-ctx.Done():
		}
	}()
}

// convergeLocal runs an add-on that needs no delivery: a compiled-in
// feature, or a binary an OS package installed. There is nothing to stage
// and no earlier version to go back to, so there is no probation either.
// An os_package binary is checked on every reconcile — a few stat calls;
// its sha256 only when the file changed — and the add-on is stopped and
// failed when it no longer passes, or restarted from it when it was
// replaced by a file that passes.
func (r *runner) convergeLocal(ctx context.Context, ar *addonRun) {
	d := ar.desired
	if d.Delivery == assignment.DeliveryOSPackage {
		in, err := delivery.CheckInstalled(d.BinaryPath, d.BinarySHA256, ar.installed)
		if err != nil {
			err = assignment.Refuse(ar.id, err)
			if ar.running != nil || ar.state != "failed" || ar.lastErr != err.Error() {
				r.log.Warn("not running os_package add-on", "addon_id", ar.id, "error", err)
			}
			r.stop(ctx, ar)
			ar.installed, ar.fromLKG, ar.health = nil, false, "unknown"
			ar.set("failed", err.Error())
			return
		}
		replaced := ar.installed != nil && *ar.installed != in
		ar.installed = &in
		if replaced && ar.running != nil {
			r.log.Info("os_package binary changed; restarting the add-on from it", "addon_id", ar.id, "path", d.BinaryPath)
			r.stop(ctx, ar)
		}
	} else {
		ar.installed = nil
	}
	ar.fromLKG = false
	if ar.probation != nil {
		// It was a pushed artifact on probation: that is over.
		ar.probation = nil
		if err := r.a.del.UpdateState(ar.id, func(st *state.Addon) error {
			st.Probation = nil
			return nil
		}); err != nil {
			r.log.Warn("clearing probation", "addon_id", ar.id, "error", err)
		}
	}
	if ar.running != nil && ar.running.Digest() == d.Digest() {
		return
	}
	if ar.running == nil {
		ar.set("starting", "")
		ar.health, ar.restarts = "unknown", 0
	}
	if err := r.start(ctx, ar, *d); err != nil && !errors.Is(err, supervisors.ErrUnsupported) {
		r.log.Warn("starting add-on", "addon_id", ar.id, "version", d.Version, "error", err)
	}
}

// staged activates a freshly staged version on probation.
func (r *runner) staged(ctx context.Context, m stagedMsg) {
	r.staging--
	r.metrics.downloads.Set(float64(r.staging))
	defer r.applyConfig()
	if r.staging == 0 {
		// A burst of downloads is over: hand the pipeline's buffers back
		// to the system now rather than when the scavenger gets to them,
		// so that addond's resident memory returns to its idle size.
		defer debug.FreeOSMemory()
	}
	id := m.spec.AddonID
	ar, ok := r.addons[id]
	if seq, drained := r.draining[id]; drained && seq == m.seq {
		// Removed from the assignment while this version was being
		// staged.
		delete(r.draining, id)
		if ok {
			// Assigned again meanwhile: the directory is the new
			// assignment's, which waited for this staging to end.
			if ar.desired != nil {
				r.converge(ctx, ar)
			}
			return
		}
		// What the late staging wrote (the version, a partial download,
		// a capped copy) goes as well.
		if err := r.a.del.RemoveAddon(id); err != nil {
			r.log.Warn("removing add-on", "addon_id", id, "error", err)
		}
		if m.capped != "" {
			r.a.dropCapped(id)
		}
		r.log.Info("discarded a version staged for an add-on no longer assigned", "addon_id", id, "version", m.spec.Version, "staging_error", m.err)
		return
	}
	if !ok || ar.stageSeq != m.seq {
		r.log.Error("a staging result nobody waits for (a bug)", "addon_id", id, "version", m.spec.Version)
		return
	}
	ar.staging, ar.stageSeq, ar.cancelStage = "", 0, nil
	if ar.desired == nil || ar.desired.Digest() != m.spec.Digest() {
		if ar.desired != nil {
			r.converge(ctx, ar) // the assignment moved on meanwhile
		}
		return
	}
	if m.err != nil {
		r.metrics.failure(m.err)
		if ar.running != nil {
			ar.fromLKG = true
			ar.lastErr = m.err.Error()
		} else {
			ar.set("failed", m.err.Error())
		}
		r.log.Warn("delivery failed", "addon_id", ar.id, "version", m.spec.Version, "error", m.err)
		return
	}
	if m.capErr != nil {
		// Not the version's fault (the updater is away, or its policy
		// refuses): the running version stays, and the next reconcile
		// asks again.
		if ar.running != nil {
			ar.fromLKG = true
			ar.lastErr = m.capErr.Error()
		} else {
			ar.set("staged", m.capErr.Error())
		}
		r.log.Warn("no capped copy", "addon_id", ar.id, "version", m.spec.Version, "error", m.capErr)
		return
	}
	if m.capped != "" {
		ar.capped[m.spec.Version] = m.capped
	}
	previous := ""
	if ar.running != nil {
		previous = ar.running.Version
	}
	// Checked again: another version may have become current since the
	// reconcile that let this one be staged.
	if err := r.a.downgrade(m.spec, ar.pinned); err != nil {
		ar.desired = nil
		if errors.Is(err, assignment.ErrDowngrade) {
			r.refuseDowngrade(ar, m.spec.Version, err)
		}
		if ar.running != nil {
			ar.fromLKG = true
			ar.lastErr = err.Error()
		} else {
			ar.set("failed", err.Error())
		}
		return
	}
	if prev, err := r.a.del.Activate(ar.id, m.spec.Version); err != nil {
		ar.lastErr = err.Error()
		return
	} else if prev != "" {
		ar.previous = prev
	}
	// A version that already proved itself (the last-known-good, e.g.
	// re-enabled) needs no probation; anything else does.
	ar.probation = nil
	if err := r.a.del.UpdateState(ar.id, func(st *state.Addon) error {
		st.NoteActivated(m.spec.Version)
		if lkg := st.LKG; lkg != nil && lkg.Version == m.spec.Version && lkg.Artifact != nil && lkg.Artifact.SHA256 == m.spec.Artifact.SHA256 {
			st.Probation = nil
			return nil
		}
		ar.probation = &state.Probation{Version: m.spec.Version, Previous: previous, Deadline: time.Now().Add(r.a.cfg.Probation.D())}
		st.Probation = ar.probation
		return nil
	}); err != nil {
		ar.lastErr = err.Error()
	}
	// Confirmed only by a fresh document; a version activated from the
	// cached one while the store is away is not.
	ar.fromLKG = !r.docFresh
	ar.set("starting", "")
	ar.restarts = 0
	if err := r.start(ctx, ar, m.spec); err != nil && !errors.Is(err, supervisors.ErrUnsupported) {
		r.log.Warn("starting new version", "addon_id", ar.id, "version", m.spec.Version, "error", err)
	}
}

// event folds a supervisor event into the add-on's state and decides
// promotion or rollback of a version on probation.
func (r *runner) event(ctx context.Context, e supervisors.Event) {
	ar, ok := r.addons[e.AddonID]
	if !ok || ar.running == nil || e.Version != ar.running.Version {
		return // stale: from a version no longer running
	}
	ar.health, ar.restarts, ar.pid = string(e.Health), e.Restarts, e.PID
	// A rolled-back add-on running its previous version stays
	// rolled_back (with the reason) while it runs.
	if ar.state != "rolled_back" || e.State != supervisors.StateRunning {
		ar.set(string(e.State), e.Reason)
	}
	healthy := e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy
	p := ar.probation
	ar.waiting = e.Waiting
	if p == nil || p.Version != e.Version {
		if healthy {
			r.promote(ar, false)
		}
		return
	}
	switch {
	case healthy:
		r.promote(ar, true)
	case e.State == supervisors.StateCircuitOpen,
		e.State == supervisors.StateRestarting && e.Restarts >= 3:
		r.rollback(ctx, ar, fmt.Sprintf("crash-looped on probation: %s", e.Reason))
	case e.State == supervisors.StateUnhealthy && strings.HasPrefix(e.Reason, "configure:"):
		r.rollback(ctx, ar, fmt.Sprintf("failed Configure on probation: %s", strings.TrimPrefix(e.Reason, "configure: ")))
	}
}

// promote makes the running spec the last-known-good. Only pushed
// artifacts have one: the others have no staged versions to go back to
// and are started only once checked.
func (r *runner) promote(ar *addonRun, probation bool) {
	spec := *ar.running
	if spec.Delivery != assignment.DeliveryPushedArtifact {
		return
	}
	errSame := errors.New("unchanged")
	err := r.a.del.UpdateState(ar.id, func(st *state.Addon) error {
		if !probation && st.LKG != nil && st.LKG.Digest() == spec.Digest() {
			return errSame
		}
		st.NoteActivated(spec.Version)
		st.LKG, st.Probation = &spec, nil
		return nil
	})
	if errors.Is(err, errSame) {
		return
	}
	if err != nil {
		r.log.Warn("saving last-known-good", "addon_id", ar.id, "error", err)
		return
	}
	if probation {
		r.log.Info("promoted", "addon_id", ar.id, "version", spec.Version)
		ar.probation = nil
		if removed, err := r.a.del.GC(ar.id); err == nil && len(removed) > 0 {
			for _, v := range removed {
				delete(ar.capped, v)
			}
			r.a.dropCapped(ar.id, removed...)
		}
	}
}

// checkProbation rolls back versions that did not become healthy in time.
func (r *runner) checkProbation(ctx context.Context) {
	now := time.Now()
	for _, ar := range r.addons {
		if p := ar.probation; p != nil && ar.waiting {
			// The manager is away: not the version's fault. Its probation
			// starts afresh once it can run at all.
			p.Deadline = now.Add(r.a.cfg.Probation.D())
			continue
		}
		if p := ar.probation; p != nil && now.After(p.Deadline) {
			reason := fmt.Sprintf("not healthy within the %s probation", r.a.cfg.Probation.D())
			if ar.lastErr != "" {
				reason += ": " + ar.lastErr
			}
			r.rollback(ctx, ar, reason)
		}
	}
}

// rollback marks the version on probation failed and returns to the
// previous version, verbatim from its last-known-good spec.
func (r *runner) rollback(ctx context.Context, ar *addonRun, reason string) {
	p := ar.probation
	if p == nil {
		return
	}
	ar.probation = nil
	failed := state.Failure{Reason: reason, At: time.Now().UTC()}
	if ar.running != nil && ar.running.Artifact != nil {
		failed.SHA256 = ar.running.Artifact.SHA256
	}
	var lkg *assignment.Spec
	if err := r.a.del.UpdateState(ar.id, func(st *state.Addon) error {
		st.Failed[p.Version] = failed
		st.Probation = nil
		lkg = st.LKG
		return nil
	}); err != nil {
		r.log.Error("saving failed version", "addon_id", ar.id, "error", err)
	}
	r.metrics.rollbacks.WithLabelValues(ar.id).Inc()
	r.log.Warn("rolling back", "addon_id", ar.id, "version", p.Version, "to", p.Previous, "reason", reason)
	if p.Previous == "" || lkg == nil || lkg.Version != p.Previous {
		r.stop(ctx, ar)
		ar.set("failed", reason)
		return
	}
	delivery.FaultPoint("rollback-marked")
	if _, err := r.a.del.Activate(ar.id, p.Previous); err != nil {
		r.stop(ctx, ar)
		ar.set("failed", fmt.Sprintf("%s; rollback to %s failed: %v", reason, p.Previous, err))
		return
	}
	delivery.FaultPoint("rollback-activated")
	r.start(ctx, ar, *lkg)
	ar.set("rolled_back", reason)
	ar.fromLKG = true
}

// handle serves a request from the status API.
func (r *runner) handle(ctx context.Context, req request) error {
	switch req.kind {
	case "reconcile":
		r.reconcile(ctx)
		return nil
	case "retry":
		if assignment.ValidAddonID(req.id) != nil {
			return fmt.Errorf("%w: %q", errUnknownAddon, req.id)
		}
		if _, ok := r.addons[req.id]; !ok {
			return fmt.Errorf("%w: %q", errUnknownAddon, req.id)
		}
		if err := r.a.del.UpdateState(req.id, func(st *state.Addon) error {
			st.Failed = nil
			return nil
		}); err != nil {
			return err
		}
		r.reconcile(ctx)
		return nil
	}
	return fmt.Errorf("unknown request %q", req.kind)
}

var errUnknownAddon = errors.New("unknown add-on")

// shutdown stops the add-ons that are addond's children (units outlive
// it) within a bounded time.
func (r *runner) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var errs []error
	for _, sup := range r.opts.Supervisors {
		errs = append(errs, sup.Close(ctx))
	}
	return errors.Join(errs...)
}

// summary is the one-line STATUS=.
func (r *runner) summary() string {
	running, total := 0, 0
	for _, ar := range r.addons {
		if ar.desired != nil && !ar.desired.Enabled {
			continue
		}
		total++
		if ar.state == "running" || ar.state == "rolled_back" && ar.health == "healthy" {
			running++
		}
	}
	if total == 0 {
		return "no add-ons assigned"
	}
	store := "store reachable"
	serial := ""
	if rep := r.lastReport; rep != nil {
		switch {
		case rep.DocumentRefused && rep.Replay != nil:
			store = "assignments refused as a replay"
		case rep.DocumentRefused:
			store = "assignments refused"
		case rep.DocumentErr != nil:
			store = "store unreachable"
		}
		serial = fmt.Sprintf(", serial %d", rep.Serial)
	} else {
		store = "store not yet contacted"
	}
	return fmt.Sprintf("%d/%d add-ons running, %s%s", running, total, store, serial)
}

// publish refreshes the status snapshot the API serves.
// updateOwned publishes which add-ons own their units.
func (r *runner) updateOwned() {
	owned := map[string]bool{}
	for id, ar := range r.addons {
		if ar.running != nil || (ar.desired != nil && ar.desired.Enabled) {
			owned[id] = true
		}
	}
	r.mu.Lock()
	r.owned = owned
	r.mu.Unlock()
}

func (r *runner) publish() {
	r.updateOwned()
	st := Status{AgentID: r.a.cfg.AgentID, Version: Version, Ready: r.ready, Addons: []AddonStatus{}}
	if rep := r.lastReport; rep != nil {
		st.Serial = rep.Serial
		if rep.DocumentErr != nil {
			st.DocumentError = rep.DocumentErr.Error()
		}
		st.DocumentFresh = rep.Fresh
		st.DocumentCheckedAt, st.DocumentAppliedAt = timePtr(rep.CheckedAt), timePtr(rep.AppliedAt)
	}
	for _, ar := range r.addons {
		as := AddonStatus{
			AddonID: ar.id, State: ar.state, Health: ar.health, FromLKG: ar.fromLKG,
			LastError: ar.lastErr, Since: ar.since, Restarts: ar.restarts, PID: ar.pid,
		}
		if ar.desired != nil {
			as.Version, as.Supervision = ar.desired.Version, ar.desired.Supervision
		} else if ar.refused != "" {
			as.Version = ar.refused
		}
		if ar.running != nil {
			as.ActiveVersion = ar.running.Version
			if as.Supervision == "" {
				as.Supervision = ar.running.Supervision
			}
		}
		as.PreviousVersion = ar.previous
		st.Addons = append(st.Addons, as)
	}
	sort.Slice(st.Addons, func(i, j int) bool { return st.Addons[i].AddonID < st.Addons[j].AddonID })
	r.mu.Lock()
	r.status = st
	r.mu.Unlock()
	r.metrics.observe(st)
	if sum := r.summary(); r.ready && sum != r.lastSummary {
		r.lastSummary = sum
		r.opts.Notify("STATUS=" + sum)
	}
}

// Notify is the supervisors.Notify that feeds a running Agent's loop;
// events before Run starts or after it ends are dropped.
func (a *Agent) Notify(e supervisors.Event) {
	if r := a.runner.Load(); r != nil {
		r.notify(e)
	}
}
