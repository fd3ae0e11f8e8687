// Package timer supervises systemd_timer add-ons: a transient
// addond-<id>.timer firing on the add-on's schedule (OnCalendar) and its
// one-shot service addond-<id>.service, created together as one transient
// unit with an auxiliary unit. Health comes from the last runs' results:
// a failed run makes the add-on degraded, three in a row unhealthy.
package timer

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/service"
	"github.com/addond/addond/supervisors/systemd"

	sd "github.com/coreos/go-systemd/v22/dbus"
)

// Model is the supervision model this backend runs.
const Model = supervisors.ModelTimer

// Accuracy is the timer's AccuracySec: systemd's default of one minute
// would blur a schedule in seconds.
const Accuracy = time.Second

// FailuresUnhealthy is how many failed runs in a row make the add-on
// unhealthy (fewer: degraded).
const FailuresUnhealthy = 3

// New returns the systemd_timer backend.
func New(o systemd.Options) *systemd.Backend { return systemd.NewBackend(driver{}, o) }

type driver struct{}

func (driver) Model() supervisors.Model { return Model }
func (driver) Units(id string) []string {
	return []string{systemd.TimerName(id), systemd.ServiceName(id)}
}

func (driver) Check(spec supervisors.Spec) error {
	if spec.Schedule == "" {
		return fmt.Errorf("addon %q: systemd_timer needs a schedule", spec.AddonID)
	}
	return service.CheckBinary(spec)
}

// stuck tells whether a waiting timer's next run is computed from a time
// in the future, which only a wall clock stepped back leaves: its last
// trigger, or (never triggered) when it was started. systemd rebases a
// waiting timer's last trigger on a clock change, but not one whose run
// is in flight at the step, nor a start time (systemd#6036, fixed
// upstream by systemd#43116, after Debian 12's systemd 252): the next run
// then comes as late as the clock went back, a day for an NTP step of a
// day. Restarting the unit does not help (its start time stays); a new
// unit starts from now.
func stuck(ctx context.Context, conn *sd.Conn, unit string) (string, error) {
	p, err := conn.GetUnitTypePropertyContext(ctx, unit, "Timer", "LastTriggerUSec")
	if err != nil {
		return "", err
	}
	base, _ := p.Value.Value().(uint64)
	what := "last run"
	if base == 0 {
		if p, err = conn.GetUnitPropertyContext(ctx, unit, "InactiveExitTimestamp"); err != nil {
			return "", err
		}
		base, _ = p.Value.Value().(uint64)
		what = "start"
	}
	now := time.Now()
	if base == 0 || base <= uint64(now.Add(Accuracy).UnixMicro()) {
		return "", nil
	}
	return fmt.Sprintf("its %s (%s) is %v in the future: the wall clock went back", what,
		time.UnixMicro(int64(base)).UTC().Format(time.RFC3339), time.UnixMicro(int64(base)).Sub(now).Round(time.Second)), nil
}

func usec(d time.Duration) uint64 { return uint64(d / time.Microsecond) }

func (driver) Create(ctx context.Context, b *systemd.Backend, spec supervisors.Spec, description string) error {
	conn, err := b.Opts.Manager.Conn(ctx)
	if err != nil {
		return err
	}
	o := &b.Opts
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = time.Hour
	}
	svc := append(systemd.ExecProperties(o.Manager.Target(), o.Paths, spec),
		systemd.Prop("Description", description),
		systemd.Prop("Type", "oneshot"),
		systemd.Prop("TimeoutStartUSec", usec(timeout)),
	)
	unit := systemd.TimerName(spec.AddonID)
	timer := []sd.Property{
		systemd.Prop("Description", description),
		systemd.Prop("OnCalendar", spec.Schedule),
		systemd.Prop("AccuracyUSec", usec(Accuracy)),
		systemd.Prop("RemainAfterElapse", true),
	}
	ch := make(chan string, 1)
	aux := []sd.PropertyCollection{{Name: systemd.ServiceName(spec.AddonID), Properties: svc}}
	if _, err := conn.StartTransientUnitAux(ctx, unit, "fail", timer, aux, ch); err != nil {
		return fmt.Errorf("create %s (schedule %q): %w", unit, spec.Schedule, err)
	}
	return systemd.WaitJob(ctx, unit, ch)
}

func (driver) Observe(ctx context.Context, b *systemd.Backend, spec supervisors.Spec, timer systemd.UnitState, mem *systemd.Memory) supervisors.Event {
	e := supervisors.Event{State: supervisors.StateRunning, Health: supervisors.HealthHealthy}
	ctx, cancel := context.WithTimeout(ctx, b.Opts.JobTimeout)
	defer cancel()
	conn, err := b.Opts.Manager.Conn(ctx)
	if err != nil {
		e.Health, e.Reason = supervisors.HealthUnknown, err.Error()
		return e
	}
	if timer.SubState == "waiting" {
		// An error: the next look tries again.
		if why, err := stuck(ctx, conn, timer.Name); err == nil && why != "" {
			mem.Recreate = why
		}
	}
	svc, err := systemd.ReadUnit(ctx, conn, systemd.ServiceName(spec.AddonID))
	if err != nil {
		e.Health, e.Reason = supervisors.HealthUnknown, err.Error()
		return e
	}
	if svc.Up() {
		e.PID = svc.MainPID
	} else if run := strconv.FormatUint(svc.ExitTime, 10); svc.ExitTime != 0 && run != mem.LastRun {
		// A run finished since the last look (runs are told apart by
		// when their main process exited).
		mem.LastRun = run
		if svc.Result == "success" {
			mem.Failures, mem.LastRunError = 0, ""
		} else {
			mem.Failures++
			mem.LastRunError = svc.Exit()
			conn.ResetFailedUnitContext(ctx, svc.Name)
		}
	}
	switch {
	case mem.Failures >= FailuresUnhealthy:
		e.State, e.Health, e.Cause = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, supervisors.CauseRunFailed
	case mem.Failures > 0:
		e.State, e.Health, e.Cause = supervisors.StateDegraded, supervisors.HealthDegraded, supervisors.CauseRunFailed
	}
	if mem.Failures > 0 {
		e.Reason = fmt.Sprintf("last run %s (%d failed in a row)", mem.LastRunError, mem.Failures)
	}
	e.Restarts = mem.Failures
	return e
}
