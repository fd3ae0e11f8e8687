// Package helper supervises ephemeral_helper add-ons: staged, but not kept
// running. Each Run is a transient one-shot unit
// addond-<id>.run-<unique>.service whose stdout and stderr are pipes passed
// to the manager over D-Bus; the unit is started with AddRef (as
// `systemd-run --wait` does) so its exit status can still be read when it
// has ended, then released, and CollectMode=inactive-or-failed leaves no
// failed run behind.
package helper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/service"
	"github.com/addond/addond/supervisors/systemd"
)

// Model is the supervision model this backend runs.
const Model = supervisors.ModelHelper

// DefaultTimeout bounds a run whose assignment names no timeout.
const DefaultTimeout = 30 * time.Second

// OutputLimit bounds what is kept of a run's stdout and of its stderr;
// the rest is read and dropped, and the result says so.
const OutputLimit = 1 << 20

// Result is one run's outcome.
type Result struct {
	AddonID         string        `json:"addon_id"`
	Version         string        `json:"version"`
	Unit            string        `json:"unit"`
	ExitCode        int           `json:"exit_code"`        // 128+signal when killed
	Signal          int           `json:"signal,omitempty"` // the signal that killed it
	TimedOut        bool          `json:"timed_out,omitempty"`
	Stdout          []byte        `json:"stdout"`
	Stderr          []byte        `json:"stderr"`
	StdoutTruncated bool          `json:"stdout_truncated,omitempty"`
	StderrTruncated bool          `json:"stderr_truncated,omitempty"`
	Duration        time.Duration `json:"duration_ns"`
}

// Backend is the ephemeral_helper Supervisor; Run runs a helper.
type Backend struct {
	opts systemd.Options

	mu     sync.Mutex
	addons map[string]supervisors.Spec
	last   map[string]supervisors.Event
}

var _ supervisors.Supervisor = (*Backend)(nil)

// New returns the ephemeral_helper backend.
func New(o systemd.Options) *Backend {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(supervisors.Event) {}
	}
	return &Backend{opts: o, addons: map[string]supervisors.Spec{}, last: map[string]supervisors.Event{}}
}

func (b *Backend) check(spec supervisors.Spec) error {
	if err := systemd.ValidID(spec.AddonID); err != nil {
		return err
	}
	if err := systemd.CheckResources(spec.AddonID, spec.Resources); err != nil {
		return err
	}
	if err := service.CheckBinary(spec); err != nil {
		return err
	}
	return b.opts.Paths.Prepare(spec)
}

func (b *Backend) emit(e supervisors.Event) {
	e.Time = time.Now()
	b.mu.Lock()
	b.last[e.AddonID] = e
	b.mu.Unlock()
	b.opts.Notify(e)
}

// Start makes the helper available for runs: nothing keeps running.
func (b *Backend) Start(_ context.Context, spec supervisors.Spec) error {
	if err := b.check(spec); err != nil {
		return err
	}
	b.mu.Lock()
	if _, ok := b.addons[spec.AddonID]; ok {
		b.mu.Unlock()
		return fmt.Errorf("addon %q is already supervised", spec.AddonID)
	}
	b.addons[spec.AddonID] = spec
	b.mu.Unlock()
	b.emit(supervisors.Event{AddonID: spec.AddonID, Version: spec.Version, State: supervisors.StateRunning, Health: supervisors.HealthHealthy})
	return nil
}

func (b *Backend) Update(_ context.Context, spec supervisors.Spec) error {
	b.mu.Lock()
	_, ok := b.addons[spec.AddonID]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("addon %q: %w", spec.AddonID, supervisors.ErrUnknownAddon)
	}
	if err := b.check(spec); err != nil {
		return err
	}
	b.mu.Lock()
	b.addons[spec.AddonID] = spec
	b.mu.Unlock()
	b.emit(supervisors.Event{AddonID: spec.AddonID, Version: spec.Version, State: supervisors.StateRunning, Health: supervisors.HealthHealthy})
	return nil
}

// Stop makes the helper unavailable; runs in progress finish (bounded by
// their timeout).
func (b *Backend) Stop(_ context.Context, id string) error {
	b.mu.Lock()
	spec, ok := b.addons[id]
	delete(b.addons, id)
	delete(b.last, id)
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("addon %q: %w", id, supervisors.ErrUnknownAddon)
	}
	b.opts.Notify(supervisors.Event{AddonID: id, Version: spec.Version, State: supervisors.StateStopped, Health: supervisors.HealthUnknown, Time: time.Now()})
	return nil
}

func (b *Backend) Status(id string) (supervisors.Event, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.last[id]
	return e, ok
}

func (b *Backend) Close(context.Context) error { return nil }

// ErrNotHelper is returned by Run for an add-on that is not an available
// ephemeral helper.
var ErrNotHelper = errors.New("not an ephemeral helper here")

// Run runs the helper once with args appended to its assigned arguments,
// and returns its exit status and output. caller names who asked (for
// the log and the unit's description). A run that outlives its timeout is
// killed and reported; an error means the run could not be made or
// observed, not that the helper failed.
func (b *Backend) Run(ctx context.Context, id string, args []string, caller string) (*Result, error) {
	b.mu.Lock()
	spec, ok := b.addons[id]
	b.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("addon %q: %w", id, ErrNotHelper)
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var u [6]byte
	rand.Read(u[:])
	unit := systemd.RunName(id, hex.EncodeToString(u[:]))
	log := b.opts.Log.With("addon_id", id, "unit", unit, "caller", caller)

	conn, raw, err := b.opts.Manager.Raw(ctx)
	if err != nil {
		return nil, fmt.Errorf("addon %q: %w", id, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return nil, err
	}
	defer errR.Close()

	run := spec
	run.Args = append(append([]string(nil), spec.Args...), args...)
	props := append(systemd.ExecProperties(b.opts.Manager.Target(), b.opts.Paths, run),
		systemd.Prop("Description", fmt.Sprintf("addond helper run %s %s for %s", id, spec.Version, caller)),
		systemd.Prop("Type", "exec"),
		systemd.Prop("CollectMode", "inactive-or-failed"),
		systemd.Prop("AddRef", true),
		systemd.Prop("RuntimeMaxUSec", uint64(timeout/time.Microsecond)),
		systemd.Prop("StandardInput", "null"),
		systemd.Prop("StandardOutputFileDescriptor", godbus.UnixFD(outW.Fd())),
		systemd.Prop("StandardErrorFileDescriptor", godbus.UnixFD(errW.Fd())),
	)
	watch := b.opts.Manager.Watch(unit)
	defer watch.Close()
	start := time.Now()
	ch := make(chan string, 1)
	_, err = conn.StartTransientUnitContext(ctx, unit, "fail", props, ch)
	outW.Close() // the manager holds its own copies now
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("addon %q: run %s: %w", id, unit, err)
	}
	log.Info("helper run started", "args", args)
	res := &Result{AddonID: id, Version: spec.Version, Unit: unit}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); res.Stdout, res.StdoutTruncated = readBounded(outR) }()
	go func() { defer wg.Done(); res.Stderr, res.StderrTruncated = readBounded(errR) }()

	// From here on the unit holds a reference for this connection:
	// release it whatever happens.
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.ResetFailedUnitContext(uctx, unit)
		if err := b.opts.Manager.Unref(uctx, raw, unit); err != nil {
			log.Debug("releasing the run's unit", "error", err)
		}
	}()
	var st systemd.UnitState
	if err := systemd.WaitJob(ctx, unit, ch); err != nil {
		// A run that exits non-zero before the manager saw its exec
		// succeed fails the start job of a Type=exec unit (under load,
		// "exit 7" did): that is the run's result, not a failure to run.
		var rerr error
		if st, rerr = systemd.ReadUnit(ctx, conn, unit); ctx.Err() != nil || rerr != nil || !ranAndExited(st) {
			return nil, fmt.Errorf("addon %q: %w", id, err)
		}
	}
	for !ended(st) {
		select {
		case <-watch.C:
		case <-time.After(time.Second): // a lost signal costs at most a second
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			systemd.StopUnit(sctx, conn, unit)
			cancel()
			return nil, fmt.Errorf("addon %q: run %s: %w", id, unit, ctx.Err())
		}
		st, err = systemd.ReadUnit(ctx, conn, unit)
		if err != nil {
			return nil, fmt.Errorf("addon %q: run %s: %w", id, unit, err)
		}
	}
	res.Duration = time.Since(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		// Something still holds the pipes open (the unit's processes are
		// gone): take what was read.
		outR.Close()
		errR.Close()
		<-done
	}
	switch st.ExecCode {
	case 1:
		res.ExitCode = st.ExecStatus
	case 2, 3:
		res.Signal, res.ExitCode = st.ExecStatus, 128+st.ExecStatus
	}
	if st.Result == "timeout" {
		res.TimedOut = true
		if res.ExitCode == 0 {
			res.ExitCode = 128 + 15
		}
	}
	log.Info("helper run ended", "exit_code", res.ExitCode, "timed_out", res.TimedOut, "duration", res.Duration)
	return res, nil
}

// ended: the run's unit was started and is down (no longer stopping).
func ended(st systemd.UnitState) bool {
	return st.InvocationID != "" && !st.Up() && st.ActiveState != "deactivating"
}

// ranAndExited reports a unit whose main process ran and ended: not one
// the manager could not set up (its own exit statuses 200-243, such as
// 203 for a failed exec).
func ranAndExited(st systemd.UnitState) bool {
	switch {
	case st.InvocationID == "" || st.ExecCode == 0:
		return false
	case st.ExecCode == 1 && st.ExecStatus >= 200 && st.ExecStatus <= 243:
		return false
	}
	return true
}

// readBounded reads r to the end, keeping the first OutputLimit bytes.
func readBounded(r io.Reader) ([]byte, bool) {
	var buf bytes.Buffer
	n, _ := io.Copy(&buf, io.LimitReader(r, OutputLimit))
	if n < OutputLimit {
		return buf.Bytes(), false
	}
	dropped, _ := io.Copy(io.Discard, r)
	return buf.Bytes(), dropped > 0
}
