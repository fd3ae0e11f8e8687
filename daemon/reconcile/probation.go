package reconcile

import (
	"cmp"
	"fmt"
	"log/slog"
	"strings"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
)

// event folds a supervisor event into the add-on's state, and decides
// promotion or rollback of a version on probation.
func (c *Core) event(e supervisors.Event) {
	ar, ok := c.addons[e.AddonID]
	if !ok || ar.running == nil || e.Version != ar.running.Version {
		return // stale: from a version no longer running
	}
	ar.health, ar.restarts, ar.pid = e.Health, e.Restarts, e.PID
	if e.Cause != supervisors.CauseNone && e.Reason != "" {
		ar.failure = e.Reason
	}
	// A rolled-back add-on running its previous version stays rolled_back
	// (with the reason) while it starts and runs: a unit backend tells of
	// the start too, and that must not wipe the rollback and its reason.
	if ar.state != StateRolledBack || e.State != supervisors.StateRunning && e.State != supervisors.StateStarting {
		c.set(ar, fromBackend(e.State), e.Reason)
	}
	healthy := e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy
	ar.waiting = e.Waiting
	p := ar.probation
	if p == nil || p.Version != e.Version {
		if healthy {
			c.promote(ar, false)
		}
		return
	}
	switch {
	case healthy:
		c.promote(ar, true)
	case e.State == supervisors.StateCircuitOpen,
		e.State == supervisors.StateRestarting && e.Restarts >= RestartThreshold:
		c.rollback(ar, "crash-looped on probation: "+e.Reason)
	case e.Cause == supervisors.CauseConfigure:
		c.rollback(ar, "failed Configure on probation: "+trimConfigure(e.Reason))
	}
}

// promote makes the running spec the last-known-good. Only pushed
// artifacts have one: the others have no staged versions to go back to and
// are started only once checked.
func (c *Core) promote(ar *addon, probation bool) {
	spec := *ar.running
	if spec.Delivery != assignment.DeliveryPushedArtifact {
		return
	}
	d := c.diskOf(ar.id)
	if !probation && d.lkg != nil && d.lkg.Digest() == spec.Digest() {
		return
	}
	d.noteActivated(spec.Version)
	d.lkg, d.probation = &spec, nil
	c.persist(ar.id)
	if probation {
		c.log(slog.LevelInfo, "promoted", "addon_id", ar.id, "version", spec.Version)
		ar.probation = nil
		gc := GC{ID: ar.id}
		if ar.staging != nil {
			gc.Keep = []string{ar.staging.version}
		}
		c.emit(gc)
	}
}

// checkProbation rolls back versions that did not become healthy in time.
func (c *Core) checkProbation() {
	for _, id := range sortedKeys(c.addons) {
		ar := c.addons[id]
		p := ar.probation
		if p == nil {
			continue
		}
		if ar.waiting || ar.starting != nil {
			// The manager is away, or the backend has not even tried the
			// start yet: not the version's fault. Its probation starts
			// afresh once it can run at all.
			p.Deadline = c.now.Add(c.policy.probation())
			continue
		}
		if c.now.After(p.Deadline) {
			reason := fmt.Sprintf("not healthy within the %s probation", c.policy.probation())
			if why := cmp.Or(ar.lastErr, ar.failure); why != "" {
				reason += ": " + why
			}
			c.rollback(ar, reason)
		}
	}
}

// rollback marks the version on probation failed and returns to the
// previous version, verbatim from its last-known-good spec.
func (c *Core) rollback(ar *addon, reason string) {
	p := ar.probation
	if p == nil {
		return
	}
	ar.probation = nil
	failed := state.Failure{Reason: reason, At: c.now.UTC()}
	if ar.running != nil && ar.running.Artifact != nil {
		failed.SHA256 = ar.running.Artifact.SHA256
	}
	d := c.diskOf(ar.id)
	d.failed[p.Version] = failed
	d.probation = nil
	c.persist(ar.id)
	c.emit(Count{Metric: MetricRollbacks, Label: ar.id})
	c.log(slog.LevelError, "rolling back", "addon_id", ar.id, "version", p.Version, "to", p.Previous, "reason", reason)
	if lkg := d.lkg; p.Previous == "" || lkg == nil || lkg.Version != p.Previous {
		c.stop(ar)
		c.set(ar, StateFailed, reason)
		return
	}
	c.emit(FaultPoint{Name: "rollback-marked"})
	c.activate(ar.id, p.Previous, activation{purpose: rollbackTo, spec: *d.lkg, reason: reason})
}

// rolledBack starts the last-known-good again once current points to it.
func (c *Core) rolledBack(in Activated, act activation) {
	ar, ok := c.addons[in.ID]
	if !ok {
		return
	}
	if in.Err != nil {
		c.stop(ar)
		c.set(ar, StateFailed, fmt.Sprintf("%s; rollback to %s failed: %v", act.reason, in.Version, in.Err))
		return
	}
	c.diskOf(ar.id).current = in.Version
	c.emit(FaultPoint{Name: "rollback-activated"})
	c.start(ar, act.spec, false)
	c.set(ar, StateRolledBack, act.reason)
	ar.fromLKG = true
}

// retry forgets an add-on's failed versions and reconciles: they are tried
// again.
func (c *Core) retry(in Retry) {
	if assignment.ValidAddonID(in.ID) != nil || c.addons[in.ID] == nil {
		c.emit(Reply{Token: in.Token, Err: fmt.Errorf("%w: %q", ErrUnknownAddon, in.ID)})
		return
	}
	d := c.diskOf(in.ID)
	clear(d.failed)
	c.persist(in.ID)
	c.poll()
	c.emit(Reply{Token: in.Token})
}

// trimConfigure is a reason without the "configure: " a backend may put in
// front of it.
func trimConfigure(reason string) string { return strings.TrimPrefix(reason, "configure: ") }
