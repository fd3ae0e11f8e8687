package reconcile

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/supervisors"
)

// start runs spec under its model, or moves it there in place when it
// runs there already. boot: the last-known-good at start, whose capped
// copy may be asked of addond-updater.
func (c *Core) start(ar *addon, spec assignment.Spec, boot bool) {
	backend, ok := c.backendFor(ar, spec)
	if !ok {
		return
	}
	c.seq++
	st := Start{ID: ar.id, Seq: c.seq, Spec: spec, Backend: backend, AskUpdater: boot && needsCaps(spec)}
	if needsCaps(spec) {
		st.Copy = ar.capped[spec.Version]
	}
	if ar.running != nil && ar.model == backend {
		st.Update = true
	} else if ar.running != nil {
		st.StopFirst = ar.model
		ar.pid = 0
	}
	ar.starting = &start{seq: c.seq, boot: boot, prev: ar.running, model: ar.model}
	if ar.running == nil || ar.running.Version != spec.Version {
		ar.failure = "" // a new version's failures are its own
	}
	ar.running, ar.model = &spec, backend
	if ar.state == StatePending || ar.state == StateStaged || ar.state == StateDownloading {
		c.set(ar, StateStarting, "")
	}
	c.emit(st)
}

// startDone takes a Start's result.
func (c *Core) startDone(in StartDone) {
	ar, ok := c.addons[in.ID]
	if !ok || ar.starting == nil || ar.starting.seq != in.Seq {
		// A start since superseded: its own events tell the rest.
		if err := cmp.Or(in.Err, in.CapErr); err != nil {
			c.log(slog.LevelInfo, "a superseded start failed", "addon_id", in.ID, "error", err)
		}
		return
	}
	st := ar.starting
	ar.starting = nil
	if in.Copy != "" {
		ar.capped[ar.running.Version] = in.Copy
	}
	switch {
	case in.CapErr != nil && st.boot:
		ar.running, ar.model = nil, ""
		c.set(ar, StateStaged, in.CapErr.Error())
		c.log(slog.LevelWarn, "last-known-good not started: no capped copy", "addon_id", ar.id, "error", in.CapErr)
	case in.CapErr != nil:
		// Nothing was started or stopped: what ran before still runs.
		version := ar.running.Version
		ar.running, ar.model = st.prev, st.model
		ar.lastErr = in.CapErr.Error()
		c.log(slog.LevelWarn, "not started: no capped copy", "addon_id", ar.id, "version", version, "error", in.CapErr)
	case in.Err != nil:
		ar.lastErr = in.Err.Error()
		if !errors.Is(in.Err, supervisors.ErrUnsupported) {
			c.log(slog.LevelWarn, "starting add-on", "addon_id", ar.id, "version", ar.running.Version, "error", in.Err)
		}
	}
}

// stop stops whatever ar runs.
func (c *Core) stop(ar *addon) {
	if ar.running == nil {
		return
	}
	c.emit(Stop{ID: ar.id, Model: ar.model})
	ar.running, ar.pid, ar.probation, ar.starting = nil, 0, nil, nil
}

// activation is why an Activate was asked for: its result continues it.
type activation struct {
	purpose  int
	spec     assignment.Spec // the version activated (activateNew, rollbackTo, once)
	previous string          // activateNew: the version that ran before
	why      string          // recoverLKG: what was interrupted
	from     string          // recoverLKG: where current pointed
	reason   string          // rollbackTo: why
}

const (
	recoverLKG  = iota // boot: back to the last-known-good
	activateNew        // a freshly staged version, on probation
	rollbackTo         // a rollback, to the last-known-good
	activateNow        // addond stage: at once
)

// activate asks for id's current to point at version; the Activated
// that comes back at once continues act.
func (c *Core) activate(id, version string, act activation) {
	if c.activating == nil {
		c.activating = map[string]activation{}
	}
	c.activating[id] = act
	c.emit(Activate{ID: id, Version: version})
}

func (c *Core) activated(in Activated) {
	act, ok := c.activating[in.ID]
	if !ok {
		panic(fmt.Sprintf("reconcile: Activated for %s, which was not activating", in.ID))
	}
	delete(c.activating, in.ID)
	switch act.purpose {
	case recoverLKG:
		c.recovered(in, act)
	case activateNew:
		c.activatedNew(in, act)
	case rollbackTo:
		c.rolledBack(in, act)
	case activateNow:
		c.activatedNow(in, act)
	}
}

// gced forgets the capped copies of versions a GC removed, and has them
// removed.
func (c *Core) gced(in GCed) {
	if in.Err != nil {
		c.log(slog.LevelWarn, "garbage collection failed", "addon_id", in.ID, "error", in.Err)
		return
	}
	if len(in.Removed) == 0 {
		return
	}
	if ar, ok := c.addons[in.ID]; ok {
		for _, v := range in.Removed {
			delete(ar.capped, v)
		}
	}
	if !c.policy.ActivateAtOnce {
		c.emit(DropCapped{ID: in.ID, Versions: in.Removed})
	}
}
