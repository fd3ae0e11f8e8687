package reconcile

import "github.com/addond/addond/supervisors"

// State is an add-on's state in the status contract (DESIGN.md, "Contract:
// status").
type State string

const (
	StatePending     State = "pending"
	StateDownloading State = "downloading"
	StateStaged      State = "staged"
	StateStarting    State = "starting"
	StateRunning     State = "running"
	StateDegraded    State = "degraded"
	StateUnhealthy   State = "unhealthy"
	StateRestarting  State = "restarting"
	StateCircuitOpen State = "circuit_open"
	// StateRolledBack: the desired version failed probation and the
	// previous version runs instead, until the assignment changes or
	// `addonctl retry`.
	StateRolledBack  State = "rolled_back"
	StateStopped     State = "stopped"
	StateDisabled    State = "disabled"
	StateFailed      State = "failed"
	StateUnsupported State = "unsupported"
)

// States lists every State, in the contract's order.
var States = []State{
	StatePending, StateDownloading, StateStaged, StateStarting, StateRunning, StateDegraded, StateUnhealthy,
	StateRestarting, StateCircuitOpen, StateRolledBack, StateStopped, StateDisabled, StateFailed, StateUnsupported,
}

// Health is an add-on's health in the status contract: the backends'.
type Health = supervisors.Health

// fromBackend is the status state of a backend's state: the names are
// the same by design.
func fromBackend(s supervisors.State) State { return State(s) }
