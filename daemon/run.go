package daemon

import (
	"context"
	"fmt"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/daemon/source"
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
	beforeStaged func(spec assignment.Spec)
}

// HelperRunner runs an ephemeral helper once.
type HelperRunner interface {
	Run(ctx context.Context, id string, args []string, caller string) (*helper.Result, error)
}

// request is a change asked for on the status API.
type request struct {
	kind  string // "reconcile", "retry", "status", "run"
	id    string
	reply chan error
}

var errUnknownAddon = reconcile.ErrUnknownAddon

// Run is the daemon: it starts the last-known-good add-ons, sends READY,
// and then reconciles on every poll (with jitter), SIGHUP and request,
// supervising add-ons, promoting a new version once it proves healthy and
// rolling it back otherwise. It returns when ctx is done, after stopping
// the add-ons that are its children.
func (a *Agent) Run(ctx context.Context, o RunOptions) error {
	l := a.newLoop(ctx, o, false)
	a.loop.Store(l)
	defer a.loop.Store(nil)

	// The last-known-good add-ons start from local state alone (no store,
	// no document), off the loop: READY does not wait for them. No orphan
	// sweep before the first document: add-ons that need no delivery
	// (os_package, compiled_in) have no last-known-good and start only
	// with it; it runs after every authoritative one.
	l.step(l.recover())
	l.publish() // not ready yet; the log handler learns the add-ons' versions and units
	srv, err := l.serveStatus()
	if err != nil {
		return err
	}
	defer srv.Close()
	if addr := a.cfg().MetricsAddress; addr != "" {
		ms, err := l.metrics.serve(addr)
		if err != nil {
			return fmt.Errorf("metrics_address %s: %w", addr, err)
		}
		defer ms.Close()
	}
	l.reporter = newReporter(a, l.metrics)
	l.work.Add(1)
	go func() {
		defer l.work.Done()
		l.reporter.run(l.ctx)
	}()
	l.ready = true
	l.publish()
	l.opts.Notify("READY=1\nSTATUS=" + l.core.Summary())
	if o.Ready != nil {
		close(o.Ready)
	}
	return l.run()
}

// run is the loop proper: it selects, steps and publishes, and waits for
// nothing else.
func (l *loop) run() error {
	o := l.opts
	poll := time.NewTimer(0) // the first refresh at once
	defer poll.Stop()
	// Probation deadlines are checked every ProbationTick, but only while
	// a version is on probation: an idle addond does not wake up for them.
	tick := time.NewTicker(reconcile.ProbationTick)
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
		case <-l.ctx.Done():
			o.Notify("STOPPING=1")
			return l.shutdown()
		case <-poll.C:
			l.step(reconcile.Poll{})
			poll.Reset(source.Jitter(l.a.cfg().PollInterval.D()))
		case cfg := <-o.Reload:
			o.Notify("RELOADING=1\n" + sddaemon.SdNotifyMonotonicUsec())
			if cfg != nil {
				l.pending = cfg
			}
			l.step(reconcile.Reload{Config: cfg != nil})
			o.Notify("READY=1\nSTATUS=" + l.core.Summary())
		case req := <-l.reqs:
			switch req.kind {
			case "retry":
				l.step(reconcile.Retry{ID: req.id, Token: req.reply})
			default:
				l.step(reconcile.Reconcile{Token: req.reply})
			}
		case e := <-l.events:
			l.step(reconcile.Event{Event: e})
		case in := <-l.inputs:
			l.received(in)
			l.step(in)
		case <-tick.C:
			// Events already queued come first: a version that said it is
			// healthy before its deadline must not be rolled back because
			// the tick won the select.
			for pending := true; pending; {
				select {
				case e := <-l.events:
					l.step(reconcile.Event{Event: e})
				default:
					pending = false
				}
			}
			l.step(reconcile.Tick{})
			if !l.core.OnProbation() {
				tick.Stop()
				ticking = false
			}
		case <-watchdog:
			o.Notify("WATCHDOG=1")
		}
		if !ticking && l.core.OnProbation() {
			tick.Reset(reconcile.ProbationTick)
			ticking = true
		}
		l.publish()
	}
}

// Stage runs one delivery reconcile — `addond stage`: refresh the
// document, apply overrides, and fetch, verify, stage and activate every
// enabled pushed artifact; add-ons no longer assigned are removed. It is
// the same Core as Run's, with Policy.ActivateAtOnce.
func (a *Agent) Stage(ctx context.Context) (*Report, error) {
	l := a.newLoop(ctx, RunOptions{}, true)
	l.step(l.recover())
	l.step(reconcile.Poll{})
	if l.fatal != nil {
		return nil, l.fatal
	}
	for !l.core.Idle() {
		in := <-l.inputs // stagings end, cancelled or not
		l.received(in)
		l.step(in)
	}
	l.work.Wait()
	rep := l.report
	rep.Addons = l.core.Outcomes()
	keep := map[string]bool{}
	for _, r := range rep.Addons {
		if r.Err != nil && r.State == reconcile.ResultFailed {
			keep[r.AddonID+"@"+r.Version] = true
		}
	}
	if l.stageErr != nil {
		return rep, l.stageErr
	}
	return rep, a.env.Load().del.CleanTmp(keep)
}

// Notify is the supervisors.Notify that feeds a running Agent's loop;
// events before Run starts or after it ends are dropped.
func (a *Agent) Notify(e supervisors.Event) {
	if l := a.loop.Load(); l != nil {
		l.notify(e)
	}
}
