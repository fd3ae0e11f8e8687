package reconcile

import (
	"errors"
	"log/slog"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/supervisors"
)

// poll starts a refresh of the desired set, or asks for one more when one
// is under way.
func (c *Core) poll() {
	if c.fetching {
		c.again = true
		return
	}
	c.fetching = true
	f := Fetch{Floors: map[string]Floor{}, Installed: map[string]delivery.Installed{}}
	for id, d := range c.disk {
		f.Floors[id] = Floor{Current: d.current, Highest: d.highestWith(d.current)}
	}
	for id, ar := range c.addons {
		if ar.installed != nil {
			f.Installed[id] = *ar.installed
		}
	}
	c.emit(f)
}

// applyConfig puts a reloaded config in effect once nothing in flight uses
// the old store or keys.
func (c *Core) applyConfig() {
	if !c.pendingConfig || c.fetching || c.inflight > 0 {
		return
	}
	c.pendingConfig = false
	c.emit(ApplyConfig{})
}

// apply moves every add-on toward the desired set. Add-ons whose desired
// spec did not change are not touched.
func (c *Core) apply(m Desired) {
	doc := m.Doc
	c.doc, c.docFresh = &doc, doc.Fresh
	if doc.NewReplay {
		c.emit(Count{Metric: MetricReplays})
	}
	assigned := map[string]bool{}
	for _, e := range m.Entries {
		if assignment.ValidAddonID(e.ID) != nil {
			if c.policy.ActivateAtOnce {
				c.invalid = append(c.invalid, Outcome{AddonID: e.ID, Version: e.Version, State: ResultFailed, Err: e.Err})
				c.log(slog.LevelInfo, "delivery failed", "addon_id", e.ID, "version", e.Version, "error", e.Err)
				continue
			}
			c.log(slog.LevelError, "refusing add-on", "addon_id", e.ID, "error", e.Err)
			continue
		}
		assigned[e.ID] = true
		ar := c.get(e.ID)
		ar.pinned, ar.assigned = e.Pinned, e.Version
		ar.checked, ar.checkErr = e.Installed, e.InstalledErr
		if e.Err != nil {
			ar.desired = nil
			if errors.Is(e.Err, assignment.ErrDowngrade) {
				c.refuseDowngrade(ar, e.Version, e.Err)
			} else {
				ar.refused = ""
			}
			c.keepRunning(ar, e.Err)
			continue
		}
		ar.refused = ""
		spec := e.Spec
		ar.desired = &spec
		c.converge(ar)
	}
	if !doc.Fresh {
		// Nothing that runs is confirmed by a fresh document: the store
		// is unreachable, or its document was refused, and the cached one
		// (or none) is in use.
		for _, ar := range c.addons {
			if ar.running != nil {
				ar.fromLKG = true
			}
		}
	}
	if !m.Authoritative {
		return
	}
	gone := map[string]bool{}
	for id := range c.addons {
		gone[id] = !assigned[id]
	}
	if c.policy.ActivateAtOnce {
		for id := range c.disk {
			gone[id] = gone[id] || !assigned[id]
		}
	}
	for _, id := range sortedKeys(gone) {
		if gone[id] {
			c.remove(id)
		}
	}
	c.sweep()
}

// keepRunning reports err about ar's desired version: what runs keeps
// running (not confirmed by the assignment any more), else the add-on has
// failed.
func (c *Core) keepRunning(ar *addon, err error) {
	if c.policy.ActivateAtOnce {
		c.failOnce(ar, err)
		return
	}
	if ar.running != nil {
		ar.fromLKG = true
		ar.lastErr = err.Error()
	} else {
		c.set(ar, StateFailed, err.Error())
	}
}

// refuseDowngrade reports a desired version refused as a downgrade: a
// warning and the counter once per refused version; the running version
// keeps running.
func (c *Core) refuseDowngrade(ar *addon, version string, err error) {
	if ar.refused != version {
		c.emit(Count{Metric: MetricDowngradesRefused, Label: ar.id})
		active := ""
		if ar.running != nil {
			active = ar.running.Version
		}
		c.log(slog.LevelWarn, "downgrade refused", "addon_id", ar.id, "version", version, "active_version", active, "error", err)
	}
	ar.refused = version
}

// remove forgets an add-on no longer assigned: it stops, its staging is
// cancelled, and everything kept for it goes.
func (c *Core) remove(id string) {
	if c.policy.ActivateAtOnce {
		c.log(slog.LevelInfo, "removing add-on no longer assigned", "addon_id", id)
	} else {
		c.log(slog.LevelInfo, "add-on no longer assigned", "addon_id", id)
	}
	if ar, ok := c.addons[id]; ok {
		if ar.staging != nil {
			// Its staging ends on its own, and removes what it wrote.
			c.emit(CancelStage{Seq: ar.staging.seq})
			c.draining[id] = ar.staging.seq
		}
		c.stop(ar)
		c.emit(Remove{ID: id})
		if len(ar.capped) > 0 {
			c.emit(DropCapped{ID: id})
		}
		delete(c.addons, id)
	} else {
		c.emit(Remove{ID: id})
	}
	delete(c.disk, id)
}

// sweep stops, in the background, add-on units nothing owns (removed or
// disabled while addond was down, or while the manager was away when
// addond stopped them). Not before the first authoritative document: the
// add-ons that need no delivery (os_package, compiled_in) start only with
// it.
func (c *Core) sweep() {
	if c.sweeping || c.policy.ActivateAtOnce {
		return
	}
	c.sweeping = true
	c.emit(Sweep{})
}

// converge takes one add-on one step toward its desired spec.
func (c *Core) converge(ar *addon) {
	d := ar.desired
	if ar.staging != nil && (!d.Enabled || d.Delivery != assignment.DeliveryPushedArtifact || ar.staging.version != d.Version) {
		// The assignment moved on from the version being staged: its
		// staging is cancelled (a partial download stays for a resume),
		// and its result converges again.
		c.emit(CancelStage{Seq: ar.staging.seq})
	}
	if c.policy.ActivateAtOnce {
		c.convergeOnce(ar)
		return
	}
	switch {
	case !d.Enabled:
		c.stop(ar)
		c.set(ar, StateDisabled, "")
		ar.health = supervisors.HealthUnknown
		return
	case d.Delivery != assignment.DeliveryPushedArtifact && d.Delivery != assignment.DeliveryCompiledIn && d.Delivery != assignment.DeliveryOSPackage:
		c.unsupported(ar, "delivery", d.Delivery)
		return
	case !c.hasBackend(ar, *d):
		c.stop(ar)
		return
	case d.Delivery != assignment.DeliveryPushedArtifact:
		c.convergeLocal(ar)
		return
	}
	ar.installed = nil
	if f, failed := c.diskOf(ar.id).failed[d.Version]; failed && f.SHA256 == d.Artifact.SHA256 {
		// Not retried until the assignment changes or `addonctl retry`.
		if ar.running != nil && ar.running.Version != d.Version {
			c.set(ar, StateRolledBack, f.Reason)
			ar.fromLKG = true // the desired version is not what runs
		} else if ar.running == nil {
			c.set(ar, StateFailed, f.Reason)
		}
		return
	}
	if r := ar.running; r != nil && r.Version == d.Version && r.Artifact != nil && r.Artifact.SHA256 == d.Artifact.SHA256 {
		ar.fromLKG = false
		if ar.state == StateRolledBack {
			// The assignment asks for the version that runs again: the
			// rollback is over (it lasts only until the assignment
			// changes).
			c.set(ar, StateRunning, "")
		}
		if r.Digest() != d.Digest() {
			c.start(ar, *d, false)
		}
		return
	}
	c.stage(ar, *d)
}

// stage stages spec, unless a staging of the add-on is in flight: one at
// a time, and its result converges again.
func (c *Core) stage(ar *addon, spec assignment.Spec) {
	if _, busy := c.draining[ar.id]; busy {
		// The staging of the add-on as it was before its removal.
		if ar.running == nil {
			c.set(ar, StateDownloading, "")
		}
		return
	}
	if ar.staging != nil {
		return
	}
	c.seq++
	ar.staging = &staging{seq: c.seq, version: spec.Version}
	c.inflight++
	if ar.running == nil {
		c.set(ar, StateDownloading, "")
	}
	// addond stage stages; a capped copy is addond-updater's to make for
	// addond run.
	c.emit(Stage{Seq: c.seq, Spec: spec, Caps: needsCaps(spec) && !c.policy.ActivateAtOnce})
}

// convergeLocal runs an add-on that needs no delivery: a compiled-in
// feature, or a binary an OS package installed. There is nothing to stage
// and no earlier version to go back to, so there is no probation either.
// An os_package binary is checked on every refresh (Entry.Installed), and
// the add-on is stopped and failed when it no longer passes, or restarted
// from it when it was replaced by a file that passes.
func (c *Core) convergeLocal(ar *addon) {
	d := ar.desired
	if d.Delivery == assignment.DeliveryOSPackage {
		if err := ar.checkErr; err != nil || ar.checked == nil {
			if err == nil {
				err = errors.New("the installed binary was not checked")
			}
			if ar.running != nil || ar.state != StateFailed || ar.lastErr != err.Error() {
				c.log(slog.LevelWarn, "not running os_package add-on", "addon_id", ar.id, "error", err)
			}
			c.stop(ar)
			ar.installed, ar.fromLKG, ar.health = nil, false, supervisors.HealthUnknown
			c.set(ar, StateFailed, err.Error())
			return
		}
		replaced := ar.installed != nil && *ar.installed != *ar.checked
		ar.installed = ar.checked
		if replaced && ar.running != nil {
			c.log(slog.LevelInfo, "os_package binary changed; restarting the add-on from it", "addon_id", ar.id, "path", d.BinaryPath)
			c.stop(ar)
		}
	} else {
		ar.installed = nil
	}
	ar.fromLKG = false
	if ar.probation != nil {
		// It was a pushed artifact on probation: that is over.
		ar.probation = nil
		c.diskOf(ar.id).probation = nil
		c.persist(ar.id)
	}
	if ar.running != nil && ar.running.Digest() == d.Digest() {
		return
	}
	if ar.running == nil {
		c.set(ar, StateStarting, "")
		ar.health, ar.restarts = supervisors.HealthUnknown, 0
	}
	c.start(ar, *d, false)
}
