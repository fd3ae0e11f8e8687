package reconcile

import (
	"log/slog"
	"slices"
	"strings"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
)

// `addond stage` (Policy.ActivateAtOnce): one refresh; every enabled
// pushed artifact is staged, made current and last-known-good at once;
// add-ons no longer assigned are removed. Nothing is supervised.

// Result is an add-on's outcome of `addond stage`.
type Result string

const (
	ResultStaged   Result = "staged"   // staged, current and last-known-good
	ResultDisabled Result = "disabled" // not enabled: nothing to do
	ResultSkipped  Result = "skipped"  // not a pushed artifact: nothing to stage
	ResultFailed   Result = "failed"   // refused, or its delivery failed
)

// convergeOnce is converge for `addond stage`.
func (c *Core) convergeOnce(ar *addon) {
	d := ar.desired
	ar.before = c.diskOf(ar.id).current
	switch {
	case !d.Enabled:
		ar.outcome = ResultDisabled
	case d.Delivery != assignment.DeliveryPushedArtifact:
		ar.outcome = ResultSkipped
	default:
		c.stage(ar, *d)
	}
}

// failOnce records ar's failure in `addond stage`.
func (c *Core) failOnce(ar *addon, err error) {
	ar.outcome, ar.err = ResultFailed, err
	ar.before = c.diskOf(ar.id).current
	c.set(ar, StateFailed, err.Error())
	version := ""
	if ar.desired != nil {
		version = ar.desired.Version
	}
	c.log(slog.LevelInfo, "delivery failed", "addon_id", ar.id, "version", version, "active_version", ar.before, "from_lkg", c.fromLKGOnce(ar), "error", err)
}

// fromLKGOnce: the add-on failed, and its last-known-good stays current.
func (c *Core) fromLKGOnce(ar *addon) bool {
	d, ok := c.disk[ar.id]
	return ok && d.lkg != nil && ar.before != ""
}

// activatedNow makes a version activated by `addond stage` the
// last-known-good.
func (c *Core) activatedNow(in Activated, act activation) {
	ar, ok := c.addons[in.ID]
	if !ok {
		return
	}
	if in.Err != nil {
		c.failOnce(ar, &delivery.Error{AddonID: in.ID, Version: in.Version, Op: "activate", Err: in.Err, Environment: true})
		return
	}
	d := c.diskOf(ar.id)
	d.current = in.Version
	d.noteActivated(in.Version)
	spec := act.spec
	d.lkg = &spec
	ar.outcome = ResultStaged
	c.persist(ar.id)
	c.emit(GC{ID: ar.id})
	c.log(slog.LevelInfo, "staged", "addon_id", ar.id, "version", in.Version, "downloaded", ar.downloaded)
}

// Outcome is one add-on's result of `addond stage`.
type Outcome struct {
	AddonID       string
	Version       string // desired
	ActiveVersion string // what current points to now
	State         Result
	FromLKG       bool // delivery failed; the last-known-good version stays
	Downloaded    bool
	Err           error
}

// Outcomes are `addond stage`'s results, by add-on id.
func (c *Core) Outcomes() []Outcome {
	var out []Outcome
	for _, id := range sortedKeys(c.addons) {
		ar := c.addons[id]
		o := Outcome{AddonID: id, State: ar.outcome, Err: ar.err, Downloaded: ar.downloaded, ActiveVersion: c.diskOf(id).current}
		if o.Version = ar.assigned; ar.desired != nil {
			o.Version = ar.desired.Version
		}
		if ar.outcome == ResultFailed {
			o.ActiveVersion, o.FromLKG = ar.before, c.fromLKGOnce(ar)
		}
		out = append(out, o)
	}
	out = append(out, c.invalid...)
	slices.SortStableFunc(out, func(a, b Outcome) int { return strings.Compare(a.AddonID, b.AddonID) })
	return out
}
