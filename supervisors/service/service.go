// Package service supervises systemd_service add-ons: each one is the
// transient unit addond-<id>.service in addond's manager, running the
// staged binary with its arguments, restarted by systemd itself
// (Restart=always) and given up on — the circuit opens — when it
// crash-loops past the start limit. Health is the unit's state, read over
// D-Bus whenever the manager signals a change.
package service

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/systemd"
)

// Model is the supervision model this backend runs.
const Model = supervisors.ModelService

// New returns the systemd_service backend.
func New(o systemd.Options) *systemd.Backend { return systemd.NewBackend(driver{}, o) }

type driver struct{}

func (driver) Model() supervisors.Model { return Model }
func (driver) Units(id string) []string { return []string{systemd.ServiceName(id)} }

func (driver) Check(spec supervisors.Spec) error { return CheckBinary(spec) }

// CheckBinary refuses a binary that cannot be executed before a unit is
// made for it.
func CheckBinary(spec supervisors.Spec) error {
	fi, err := os.Stat(spec.Binary)
	switch {
	case err != nil:
		return fmt.Errorf("addon %q: binary: %w", spec.AddonID, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("addon %q: binary %s is not a regular file", spec.AddonID, spec.Binary)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("addon %q: binary %s is not executable", spec.AddonID, spec.Binary)
	}
	return nil
}

func usec(d time.Duration) uint64 { return uint64(d / time.Microsecond) }

func (driver) Create(ctx context.Context, b *systemd.Backend, spec supervisors.Spec, description string) error {
	o := &b.Opts
	if o.Privileged != nil {
		return o.Privileged.Start(ctx, systemd.CappedStart{Spec: spec, Description: description,
			Restart: &systemd.RestartPolicy{Delay: o.RestartDelay, Interval: o.StartLimitInterval, Burst: o.StartLimitBurst}})
	}
	conn, err := b.Opts.Manager.Conn(ctx)
	if err != nil {
		return err
	}
	props := append(systemd.ExecProperties(o.Manager.Target(), o.Paths, spec),
		systemd.Prop("Description", description),
		systemd.Prop("Type", "exec"),
		systemd.Prop("Restart", "always"),
		systemd.Prop("RestartUSec", usec(o.RestartDelay)),
		systemd.Prop("StartLimitIntervalUSec", usec(o.StartLimitInterval)),
		systemd.Prop("StartLimitBurst", uint32(o.StartLimitBurst)),
		systemd.Prop("TimeoutStopUSec", usec(10*time.Second)),
	)
	unit := systemd.ServiceName(spec.AddonID)
	ch := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, ch); err != nil {
		return fmt.Errorf("create %s: %w", unit, err)
	}
	if err := systemd.WaitJob(ctx, unit, ch); err != nil {
		if u, rerr := systemd.ReadUnit(ctx, conn, unit); rerr == nil && u.Exists() {
			err = fmt.Errorf("%w: %s", err, u.Exit())
		}
		return err
	}
	return nil
}

func (driver) Observe(_ context.Context, b *systemd.Backend, spec supervisors.Spec, u systemd.UnitState, mem *systemd.Memory) supervisors.Event {
	e := supervisors.Event{Restarts: mem.Restarts + u.NRestarts}
	switch {
	case u.ActiveState == "active" || u.ActiveState == "reloading":
		e.State, e.Health, e.PID = supervisors.StateRunning, supervisors.HealthHealthy, u.MainPID
		// Up is not yet healthy: a binary that starts and crashes is
		// active for an instant. It proves itself by staying up.
		// Measured on the monotonic clock: a step of the wall clock
		// neither hastens nor delays it.
		if up := u.ActiveFor(); u.ActiveSince != 0 && up < b.Opts.StableAfter {
			e.Health = supervisors.HealthUnknown
			e.Reason = fmt.Sprintf("up for %s; healthy once up for %s", up.Round(time.Millisecond), b.Opts.StableAfter)
			mem.Recheck = b.Opts.StableAfter - up
		}
	case u.ActiveState == "activating" && u.SubState == "auto-restart",
		u.ActiveState == "deactivating":
		e.State, e.Health, e.Cause = supervisors.StateRestarting, supervisors.HealthUnhealthy, u.ExitCause()
		e.Reason = fmt.Sprintf("%s; systemd restarts it (%d restarts)", u.Exit(), u.NRestarts)
	case u.ActiveState == "activating":
		e.State, e.Health, e.PID = supervisors.StateStarting, supervisors.HealthUnknown, u.MainPID
	case u.ActiveState == "failed":
		// With Restart=always, systemd gives up only at the start limit
		// (systemd 252 leaves the last exit's result, not
		// start-limit-hit, when the limit stops an automatic restart).
		e.State, e.Health, e.Cause = supervisors.StateCircuitOpen, supervisors.HealthUnhealthy, supervisors.CauseStartLimit
		e.Reason = fmt.Sprintf("%s (more than %d restarts within %s; retrying in %s)", u.Exit(),
			b.Opts.StartLimitBurst, b.Opts.StartLimitInterval, b.Opts.BreakerCooldown)
	default: // inactive: stopped with a clean exit, not by addond
		e.State, e.Health, e.Cause = supervisors.StateRestarting, supervisors.HealthUnhealthy, u.ExitCause()
		e.Reason = fmt.Sprintf("unit %s: %s", u.ActiveState, u.Exit())
	}
	return e
}
