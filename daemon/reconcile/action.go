package reconcile

import (
	"log/slog"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
)

// Action is what to do. The driver executes a Step's actions in order.
//
// Three kinds, by how the driver runs them:
//   - at once, on its own goroutine, before the next input: Persist,
//     Activate, Remove, DiscardPartial, GC, FaultPoint, CancelStage, ApplyConfig,
//     FreeMemory, Log, Count, Reply — local bookkeeping, never a backend;
//     those with a result (Activate → Activated, GC → GCed, a Persist that
//     fails → PersistFailed, ApplyConfig → Configured) give it back at once;
//   - in order per add-on, off the loop: Start, Stop, DropCapped;
//   - in the background: Fetch, Stage, Sweep.
type Action interface{ action() }

// Persisted is the policy's half of an add-on's persisted state (the rest,
// staged versions and current, is delivery's).
type Persisted struct {
	LKG            *assignment.Spec
	Probation      *state.Probation
	Failed         map[string]state.Failure
	HighestVersion string
}

// Persist writes the policy's half of add-on ID's state.
type Persist struct {
	ID     string
	Policy Persisted
}

// Activate points add-on ID's current at Version (→ Activated).
type Activate struct{ ID, Version string }

// Remove deletes everything kept for add-on ID (its directory and partial
// downloads).
type Remove struct{ ID string }

// DiscardPartial removes the partial download of add-on ID's Version.
type DiscardPartial struct{ ID, Version string }

// GC removes staged versions of add-on ID other than current, previous,
// the last-known-good and Keep (→ GCed).
type GC struct {
	ID   string
	Keep []string
}

// FaultPoint is a crash-consistency test point (delivery.FaultPoint).
type FaultPoint struct{ Name string }

// Start runs Spec on Backend, or moves it there in place (Update)
// (→ StartDone).
type Start struct {
	ID   string
	Seq  uint64
	Spec assignment.Spec
	// Backend is the backend it runs on: its model's, or the model's
	// capped one (CappedSuffix).
	Backend string
	// Update: it runs on this backend already; a configuration change
	// is applied in place.
	Update bool
	// StopFirst is another backend it runs on now, to stop first.
	StopFirst string
	// Copy is the capped copy to run (a spec with os_capabilities); ""
	// when none is known: one made earlier that still has the signed
	// bytes, or with AskUpdater one from addond-updater (boot only: a
	// bounded wait).
	Copy       string
	AskUpdater bool
}

// Stop stops add-on ID on backend Model.
type Stop struct{ ID, Model string }

// DropCapped asks addond-updater to remove add-on ID's capped copies of
// Versions (every version when empty), and forgets their cached packages.
type DropCapped struct {
	ID       string
	Versions []string
}

// Fetch refreshes the desired set (→ Desired). Floors let the refresh
// refuse downgrades before anything is fetched; Installed are the
// os_package binaries as last verified, so that an unchanged one is not
// hashed again.
type Fetch struct {
	Floors    map[string]Floor
	Installed map[string]delivery.Installed
}

// Floor is what a desired version of an add-on must not be lower than.
type Floor struct{ Current, Highest string }

// Stage fetches, verifies and stages Spec, and for a spec with
// os_capabilities asks for its capped copy (→ Staged).
type Stage struct {
	Seq  uint64
	Spec assignment.Spec
	Caps bool
}

// CancelStage cancels the staging numbered Seq; its Staged still comes.
type CancelStage struct{ Seq uint64 }

// Sweep stops add-on units that nothing owns (Core.Owned) (→ Swept).
type Sweep struct{}

// ApplyConfig puts the reloaded config in effect (→ Configured).
type ApplyConfig struct{}

// FreeMemory hands memory back to the system: a burst of downloads ended.
type FreeMemory struct{}

// Log is a log line; Args are slog's key-value pairs.
type Log struct {
	Level slog.Level
	Msg   string
	Args  []any
}

// Metric names a counter the Core counts.
type Metric int

const (
	MetricRollbacks         Metric = iota // label: add-on
	MetricDowngradesRefused               // label: add-on
	MetricReplays                         // no label
	MetricDeliveryFailures                // label: the failed step (delivery.Error.Op, _environment)
	MetricDeliveryBytes                   // no label; N bytes
)

// Count adds N (1 when 0) to a counter.
type Count struct {
	Metric Metric
	Label  string
	N      float64
}

// Reply answers a request (Reconcile, Retry) by its token.
type Reply struct {
	Token any
	Err   error
}

func (Persist) action()        {}
func (Activate) action()       {}
func (Remove) action()         {}
func (DiscardPartial) action() {}
func (GC) action()             {}
func (FaultPoint) action()     {}
func (Start) action()          {}
func (Stop) action()           {}
func (DropCapped) action()     {}
func (Fetch) action()          {}
func (Stage) action()          {}
func (CancelStage) action()    {}
func (Sweep) action()          {}
func (ApplyConfig) action()    {}
func (FreeMemory) action()     {}
func (Log) action()            {}
func (Count) action()          {}
func (Reply) action()          {}
