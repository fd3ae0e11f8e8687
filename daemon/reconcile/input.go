package reconcile

import (
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/supervisors"
)

// Input is what happened: something the driver saw, or the result of an
// Action it executed.
type Input interface{ input() }

// Boot is the persisted state of every add-on under the runtime root,
// read once at start. A Core that runs add-ons starts the last-known-good
// ones from it, before any document is known.
type Boot struct {
	Addons []Recovered
}

// Recovered is one add-on's persisted state.
type Recovered struct {
	ID      string
	State   *state.Addon
	Current string // the version current points to ("" none)
	// CurrentErr: current could not be read; nothing is started from it.
	CurrentErr error
}

// Poll asks for the desired set to be refreshed: the poll timer, SIGHUP,
// or an operator's reconcile.
type Poll struct{}

// Reload is SIGHUP. With Config, a reloaded config waits to be applied
// (ApplyConfig) as soon as nothing in flight uses the old one.
type Reload struct{ Config bool }

// Configured is a reloaded config in effect.
type Configured struct{ Probation time.Duration }

// Desired is a refreshed desired set: the document (or the cached one),
// with the local overrides applied and each entry resolved for this host.
type Desired struct {
	Entries []Entry
	// Authoritative: a document is known (fresh, cached, or none
	// configured); add-ons it does not name are removed.
	Authoritative bool
	Doc           DocInfo
}

// Entry is one add-on of the desired set.
type Entry struct {
	ID      string
	Version string // as assigned, also when the entry is refused
	Pinned  bool   // the local overrides set the version
	Spec    assignment.Spec
	Err     error // refused: why
	// Installed is an enabled os_package add-on's binary as checked for
	// this refresh; InstalledErr why it does not pass.
	Installed    *delivery.Installed
	InstalledErr error
}

// DocInfo is what a refresh found of the assignment document.
type DocInfo struct {
	Serial uint64
	// Err is why the document could not be refreshed (the cached one, or
	// none, is in use); Refused: the source answered with a document that
	// was refused; Replay: refused as a replay, NewReplay the first time
	// this process saw that document.
	Err               error
	Refused           bool
	Replay, NewReplay bool
	// Fresh: the document in use is confirmed by its source. Expired: it
	// is past its expires, and nothing of it is applied.
	Fresh, Expired       bool
	CheckedAt, AppliedAt time.Time
}

// Staged is a staging's result (Stage).
type Staged struct {
	Seq        uint64
	Spec       assignment.Spec
	Err        error
	Capped     string // the capped copy, for a spec with os_capabilities
	CapErr     error  // why there is none
	Downloaded bool
	Bytes      int64
}

// Activated is the result of an Activate, given back at once (before any
// other input).
type Activated struct {
	ID, Version string
	Previous    string // what current pointed to before
	Err         error
}

// PersistFailed is a Persist that could not be written, given back at
// once.
type PersistFailed struct {
	ID  string
	Err error
}

// StartDone is the result of a Start.
type StartDone struct {
	ID  string
	Seq uint64
	// Copy is the capped copy the add-on runs from; CapErr why there is
	// none (then the backend was not called).
	Copy   string
	CapErr error
	Err    error
}

// GCed is the result of a GC, given back at once.
type GCed struct {
	ID      string
	Removed []string
	Err     error
}

// Event is a supervisor's event.
type Event struct{ supervisors.Event }

// Tick checks probation deadlines (every ProbationTick while OnProbation).
type Tick struct{}

// Swept is the end of an orphan sweep (Sweep).
type Swept struct{}

// Reconcile is an operator's reconcile; Retry forgets add-on ID's failed
// versions and reconciles. Each is answered with a Reply carrying Token.
type (
	Reconcile struct{ Token any }
	Retry     struct {
		ID    string
		Token any
	}
)

func (Boot) input()          {}
func (Poll) input()          {}
func (Reload) input()        {}
func (Configured) input()    {}
func (Desired) input()       {}
func (Staged) input()        {}
func (Activated) input()     {}
func (PersistFailed) input() {}
func (StartDone) input()     {}
func (GCed) input()          {}
func (Event) input()         {}
func (Tick) input()          {}
func (Swept) input()         {}
func (Reconcile) input()     {}
func (Retry) input()         {}
