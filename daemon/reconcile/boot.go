package reconcile

import (
	"log/slog"
	"slices"
	"strings"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/state"
)

// boot learns every add-on's persisted state and starts the last-known-good
// ones whose version is current, from local state alone: no store, no
// document.
func (c *Core) boot(b Boot) {
	recs := slices.Clone(b.Addons)
	slices.SortFunc(recs, func(x, y Recovered) int { return strings.Compare(x.ID, y.ID) })
	for _, r := range recs {
		st := r.State
		if st == nil {
			st = &state.Addon{}
		}
		d := c.diskOf(r.ID)
		d.current, d.previous, d.lkg, d.probation, d.highest = r.Current, st.Previous, st.LKG, st.Probation, st.HighestVersion
		if st.Failed != nil {
			d.failed = st.Failed
		}
		if c.policy.ActivateAtOnce {
			continue // addond stage starts nothing
		}
		if lkg := st.LKG; lkg == nil || !lkg.Enabled || lkg.Delivery != assignment.DeliveryPushedArtifact || r.CurrentErr != nil {
			continue // add-ons delivered otherwise start once checked, on the first document
		}
		if r.Current == st.LKG.Version {
			c.startLKG(r.ID)
			continue
		}
		// current is not the last-known-good: addond stopped between
		// activating a version and proving it — on probation, right after
		// the swap before the probation was recorded, or in the middle of a
		// rollback (after the version was recorded failed, before current
		// was swapped back). Nothing unproven starts: back to the
		// last-known-good now — the store may be down — and the next
		// reconcile tries the new version again on probation, unless it is
		// recorded failed.
		why := "an activation"
		if p := st.Probation; p != nil && p.Version == r.Current {
			why = "probation"
		}
		if f, failed := st.Failed[r.Current]; failed && f.SHA256 == st.Staged[r.Current].SHA256 {
			why = "a rollback"
		}
		c.activate(r.ID, st.LKG.Version, activation{purpose: recoverLKG, why: why, from: r.Current})
	}
}

// recovered is the end of a boot's return to the last-known-good.
func (c *Core) recovered(in Activated, act activation) {
	d := c.diskOf(in.ID)
	if in.Err != nil {
		c.log(slog.LevelError, "returning to last-known-good after an interrupted "+act.why,
			"addon_id", in.ID, "version", act.from, "last_known_good", in.Version, "error", in.Err)
		return
	}
	d.current, d.probation = in.Version, nil
	c.persist(in.ID)
	c.log(slog.LevelWarn, act.why+" was interrupted by a restart; back on last-known-good",
		"addon_id", in.ID, "version", act.from, "last_known_good", in.Version)
	c.startLKG(in.ID)
}

// startLKG starts add-on id's last-known-good spec, current now.
func (c *Core) startLKG(id string) {
	d := c.diskOf(id)
	if d.highest == "" {
		// State from before anti-rollback: what ran is the floor.
		d.highest = d.highestWith(d.current)
		c.persist(id)
	}
	ar := c.get(id)
	ar.fromLKG, ar.previous = true, d.previous
	spec := *d.lkg
	if !c.hasBackend(ar, spec) {
		return
	}
	c.set(ar, StateStarting, "")
	c.start(ar, spec, true)
}
