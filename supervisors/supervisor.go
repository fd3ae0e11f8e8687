// Package supervisors defines how addond runs add-ons: one Supervisor
// interface, one backend package per supervision model, and one
// conformance suite (supervisors/conformance) that every backend passes.
//
// A backend is given a Spec — an add-on that delivery has already fetched,
// verified and staged — and keeps it running (or scheduled) according to
// its model, reporting every change of state and health as an Event. It
// knows nothing of assignments, rollbacks or the store: the reconciler in
// daemon/ decides what should run and reacts to the events; backends never
// import it.
package supervisors

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"time"
)

// State is an add-on's lifecycle state as a backend sees it. The names are
// the ones DESIGN.md's status contract uses.
type State string

const (
	StateStarting    State = "starting"
	StateRunning     State = "running"
	StateDegraded    State = "degraded"
	StateUnhealthy   State = "unhealthy"
	StateRestarting  State = "restarting"
	StateCircuitOpen State = "circuit_open"
	StateStopped     State = "stopped"
	StateFailed      State = "failed"
	StateUnsupported State = "unsupported"
)

// Health is an add-on's health as it reports it.
type Health string

const (
	HealthUnknown   Health = "unknown"
	HealthHealthy   Health = "healthy"
	HealthDegraded  Health = "degraded"
	HealthUnhealthy Health = "unhealthy"
)

// Model is a supervision model: how an add-on runs. The names are the
// assignment's "supervision" values (DESIGN.md).
type Model string

const (
	ModelConfigToggle Model = "config_toggle"    // a compiled-in feature of addond (supervisors/toggle)
	ModelAgentSidecar Model = "agent_sidecar"    // a go-plugin sidecar (supervisors/goplugin)
	ModelService      Model = "systemd_service"  // a long-running unit (supervisors/service)
	ModelTimer        Model = "systemd_timer"    // a job a timer runs (supervisors/timer)
	ModelHelper       Model = "ephemeral_helper" // a job run on request (supervisors/helper)
)

// Resources are limits for unit-based add-ons.
type Resources struct {
	CPUMaxPercent   int
	MemoryMaxBytes  int64
	MemoryHighBytes int64
	TasksMax        int64
}

// Spec is one add-on to run: verified and staged by delivery.
type Spec struct {
	AddonID string
	Version string
	// Binary is the absolute path of the executable: the staged version's
	// binary (or its capped, root-owned copy), or the binary an OS package
	// installed (os_package delivery). Empty for config_toggle.
	Binary string
	// Feature is the compiled-in feature a config_toggle add-on switches
	// on (see supervisors/toggle); empty for every other model.
	Feature    string
	Args       []string
	ConfigJSON []byte
	Schedule   string        // systemd_timer: OnCalendar
	Timeout    time.Duration // ephemeral_helper: per run
	Resources  *Resources
	// Capabilities are the file capabilities Binary carries (its capped
	// copy). An add-on with none runs sandboxed; one with capabilities
	// cannot be namespaced and runs unsandboxed.
	Capabilities []string
}

// NeedsRestart reports whether moving from old to s needs the add-on
// restarted: a new version, binary or arguments. A change of ConfigJSON
// alone is applied in place.
func (s Spec) NeedsRestart(old Spec) bool {
	return s.Version != old.Version || s.Binary != old.Binary || s.Feature != old.Feature || !slices.Equal(s.Args, old.Args) ||
		s.Schedule != old.Schedule || s.Timeout != old.Timeout || !sameResources(s.Resources, old.Resources) ||
		!slices.Equal(s.Capabilities, old.Capabilities)
}

// ConfigChanged reports whether s carries a different configuration.
func (s Spec) ConfigChanged(old Spec) bool {
	return !bytes.Equal(s.ConfigJSON, old.ConfigJSON)
}

func sameResources(a, b *Resources) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Cause is why an add-on is not running and healthy, as its backend knows
// it: what the reconciler decides by, where Reason is for people.
type Cause string

const (
	CauseNone        Cause = ""
	CauseExited      Cause = "exited"       // the process ended: an exit code, or a signal
	CauseOOM         Cause = "oom"          // the kernel's OOM killer ended it
	CauseStartFailed Cause = "start_failed" // it could not be started (exec, unit creation)
	CauseHandshake   Cause = "handshake"    // a sidecar never completed go-plugin's handshake
	CauseUnhealthy   Cause = "unhealthy"    // it reports itself unhealthy, or fails its health checks
	CauseConfigure   Cause = "configure"    // it refused its configuration
	CauseStartLimit  Cause = "start_limit"  // restarted too often: its circuit is open
	CauseRunFailed   Cause = "run_failed"   // a timer job's last runs failed
	CauseManagerGone Cause = "manager_gone" // the systemd manager is away (Waiting)
	CauseUnsupported Cause = "unsupported"  // the model or feature is missing here
)

// Event is a change of an add-on's state or health.
type Event struct {
	AddonID  string
	Version  string
	State    State
	Health   Health
	Cause    Cause  // why, when not running and healthy
	Reason   string // why, in words
	Restarts int    // restarts since Start
	PID      int    // 0 when not running
	// Waiting: the backend cannot act because its environment is away
	// (the systemd manager is unreachable) — not the add-on's fault, so
	// it must not count against a version on probation.
	Waiting bool
	Time    time.Time
}

// Notify receives events. Backends call it from their own goroutines, in
// order per add-on, and must not be blocked for long by it.
type Notify func(Event)

// ErrUnknownAddon is returned for an add-on the backend does not run.
var ErrUnknownAddon = errors.New("add-on is not supervised here")

// ErrUnsupported is returned by backends that cannot run on this host
// (e.g. systemd backends with systemd.manager "none").
var ErrUnsupported = errors.New("supervision model not supported here")

// Supervisor runs add-ons of one supervision model.
type Supervisor interface {
	// Start begins supervising spec. It returns once the first start has
	// been attempted; a start that fails is reported (as an error and as
	// an Event) and retried with backoff unless it can never succeed.
	Start(ctx context.Context, spec Spec) error
	// Update moves a supervised add-on to spec: a configuration change
	// alone is applied in place (no restart); anything else restarts it.
	Update(ctx context.Context, spec Spec) error
	// Stop stops the add-on and forgets it.
	Stop(ctx context.Context, addonID string) error
	// Status is the add-on's latest event.
	Status(addonID string) (Event, bool)
	// Close stops every add-on this backend runs as its children. Backends
	// whose add-ons outlive addond (systemd units) leave them running.
	Close(ctx context.Context) error
}
