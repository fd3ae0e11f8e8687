package systemd

import (
	"context"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"

	"github.com/addond/addond/supervisors"
)

// Privileged makes and stops the units addond may not make itself: a
// capped add-on's, which runs in the system manager under a uid of its own
// with exactly its granted capabilities. addond-updater makes them from
// its own template; a backend with Options.Privileged asks it to, and
// watches the units (read-only) through its Manager — the system
// manager's.
type Privileged interface {
	// Prepare stops the add-on's unit and makes its runtime directory,
	// SocketDir(id) in it: a sidecar's socket directory goes there
	// before the unit is asked for.
	Prepare(ctx context.Context, id string) error
	// Start starts the unit (stopping one that runs) and returns once
	// its process runs.
	Start(ctx context.Context, u CappedStart) error
	// Stop stops the unit; one that does not run is stopped.
	Stop(ctx context.Context, id string) error
	// SocketDir is where a capped sidecar's socket directory is made.
	SocketDir(id string) string
	// HandshakeFile is where a capped sidecar's stdout goes.
	HandshakeFile(id string) string
}

// CappedStart is what a capped add-on's unit is to run.
type CappedStart struct {
	Spec        supervisors.Spec
	Description string
	// Sidecar: addond restarts it; Env is go-plugin's environment.
	Sidecar bool
	Env     []string
	// Restart is a service's policy (the manager restarts it).
	Restart *RestartPolicy
}

// RestartPolicy is a service's automatic restart and start limit.
type RestartPolicy struct {
	Delay, Interval time.Duration
	Burst           int
}

// stopAddonUnit stops add-on id's unit: through p when there is one (a
// capped add-on's unit is addond-updater's to stop), else over conn.
func stopAddonUnit(ctx context.Context, conn *sd.Conn, p Privileged, id, unit string) error {
	if p != nil {
		return p.Stop(ctx, id)
	}
	return StopUnit(ctx, conn, unit)
}
