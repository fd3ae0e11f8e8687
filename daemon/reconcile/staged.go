package reconcile

import (
	"errors"
	"log/slog"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
)

// staged takes a staging's result: a freshly staged version is activated
// on probation, unless the assignment moved on meanwhile.
func (c *Core) staged(m Staged) {
	c.inflight--
	if c.inflight == 0 {
		// A burst of downloads is over: the pipeline's buffers go back to
		// the system now, so that resident memory returns to its idle
		// size.
		c.emit(FreeMemory{})
	}
	if m.Downloaded {
		c.emit(Count{Metric: MetricDeliveryBytes, N: float64(m.Bytes)})
	}
	c.stagedResult(m)
	c.applyConfig()
}

// drained takes the result of a staging whose add-on was removed while it
// ran.
func (c *Core) drained(m Staged) {
	id := m.Spec.AddonID
	delete(c.draining, id)
	if ar, ok := c.addons[id]; ok {
		// Assigned again meanwhile: the directory is the new assignment's,
		// which waited for this staging to end.
		if ar.desired != nil {
			c.converge(ar)
		}
		return
	}
	// What the late staging wrote (the version, a partial download, a
	// capped copy) goes as well.
	c.emit(Remove{ID: id})
	if m.Capped != "" {
		c.emit(DropCapped{ID: id})
	}
	c.log(slog.LevelInfo, "discarded a version staged for an add-on no longer assigned", "addon_id", id, "version", m.Spec.Version, "staging_error", m.Err)
}

func (c *Core) stagedResult(m Staged) {
	id := m.Spec.AddonID
	if seq, drained := c.draining[id]; drained && seq == m.Seq {
		c.drained(m)
		return
	}
	ar, ok := c.addons[id]
	if !ok || ar.staging == nil || ar.staging.seq != m.Seq {
		c.log(slog.LevelError, "a staging result nobody waits for (a bug)", "addon_id", id, "version", m.Spec.Version)
		return
	}
	ar.staging = nil
	if ar.desired == nil || ar.desired.Digest() != m.Spec.Digest() {
		if d := ar.desired; m.Err != nil && (d == nil || !d.Enabled || d.Version != m.Spec.Version) {
			// Cut short for a version no longer wanted: its partial
			// download would stay for a resume that never comes.
			c.emit(DiscardPartial{ID: id, Version: m.Spec.Version})
		}
		if ar.desired != nil {
			c.converge(ar) // the assignment moved on meanwhile
		}
		return
	}
	if m.Err != nil {
		c.emit(Count{Metric: MetricDeliveryFailures, Label: failureReason(m.Err)})
		if c.policy.ActivateAtOnce {
			c.failOnce(ar, m.Err)
			return
		}
		c.keepRunning(ar, m.Err)
		c.log(slog.LevelWarn, "delivery failed", "addon_id", ar.id, "version", m.Spec.Version, "error", m.Err)
		return
	}
	ar.downloaded = m.Downloaded
	if m.CapErr != nil {
		// Not the version's fault (the updater is away, or its policy
		// refuses): the running version stays, and the next reconcile asks
		// again.
		if ar.running != nil {
			ar.fromLKG = true
			ar.lastErr = m.CapErr.Error()
		} else {
			c.set(ar, StateStaged, m.CapErr.Error())
		}
		c.log(slog.LevelWarn, "no capped copy", "addon_id", ar.id, "version", m.Spec.Version, "error", m.CapErr)
		return
	}
	if m.Capped != "" {
		ar.capped[m.Spec.Version] = m.Capped
	}
	if c.policy.ActivateAtOnce {
		c.activate(ar.id, m.Spec.Version, activation{purpose: activateNow, spec: m.Spec})
		return
	}
	// Checked again: another version may have become current since the
	// refresh that let this one be staged.
	if err := c.downgrade(m.Spec, ar.pinned); err != nil {
		ar.desired = nil
		if errors.Is(err, assignment.ErrDowngrade) {
			c.refuseDowngrade(ar, m.Spec.Version, err)
		}
		c.keepRunning(ar, err)
		return
	}
	act := activation{purpose: activateNew, spec: m.Spec}
	if ar.running != nil {
		act.previous = ar.running.Version
	}
	c.activate(ar.id, m.Spec.Version, act)
}

// activatedNew starts a freshly activated version on probation — unless it
// is the last-known-good (e.g. re-enabled), which proved itself already.
func (c *Core) activatedNew(in Activated, act activation) {
	ar, ok := c.addons[in.ID]
	if !ok {
		return
	}
	if in.Err != nil {
		ar.lastErr = in.Err.Error()
		c.log(slog.LevelWarn, "activating", "addon_id", ar.id, "version", in.Version, "error", in.Err)
		return
	}
	d := c.diskOf(ar.id)
	d.current = in.Version
	if in.Previous != "" {
		ar.previous, d.previous = in.Previous, in.Previous
	}
	d.noteActivated(in.Version)
	ar.probation = nil
	if lkg := d.lkg; lkg != nil && lkg.Version == in.Version && lkg.Artifact != nil && lkg.Artifact.SHA256 == act.spec.Artifact.SHA256 {
		d.probation = nil
	} else {
		ar.probation = &state.Probation{Version: in.Version, Previous: act.previous, Deadline: c.now.Add(c.policy.probation())}
		d.probation = ar.probation
	}
	c.persist(ar.id)
	// Confirmed only by a fresh document; a version activated from the
	// cached one while the store is away is not.
	ar.fromLKG = !c.docFresh
	c.set(ar, StateStarting, "")
	ar.restarts = 0
	c.start(ar, act.spec, false)
}

// downgrade refuses to activate an enabled pushed artifact whose version is
// lower than the highest version ever activated for the add-on (both
// semantic versions), unless the assignment allows a downgrade, the
// operator pinned the version locally, or it is the version current points
// to already (nothing changes). Health rollbacks never come here.
func (c *Core) downgrade(spec assignment.Spec, pinned bool) error {
	if pinned || spec.AllowDowngrade || !spec.Enabled || spec.Delivery != assignment.DeliveryPushedArtifact {
		return nil
	}
	return CheckFloor(spec, c.floor(spec.AddonID))
}

func (c *Core) floor(id string) Floor {
	d, ok := c.disk[id]
	if !ok {
		return Floor{}
	}
	return Floor{Current: d.current, Highest: d.highestWith(d.current)}
}

// CheckFloor refuses spec when its version is below f (the version current
// points to is never refused).
func CheckFloor(spec assignment.Spec, f Floor) error {
	if f.Current == spec.Version {
		return nil
	}
	return assignment.CheckDowngrade(spec.AddonID, spec.Version, f.Highest, false)
}

// failureReason is a delivery failure's metric label: the step that
// failed, environment failures apart.
func failureReason(err error) string {
	var de *delivery.Error
	if !errors.As(err, &de) {
		return "other"
	}
	if de.Environment {
		return de.Op + "_environment"
	}
	return de.Op
}
