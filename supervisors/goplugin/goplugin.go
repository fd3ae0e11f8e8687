// Package goplugin supervises agent_sidecar add-ons: go-plugin processes
// speaking addond's gRPC contract (sdk.Handshake, mutual TLS over a unix
// socket: go-plugin's AutoMTLS as far as the add-on can tell, made
// independent of the wall clock on addond's side, mtls.go). It starts the staged binary, configures it, checks its health
// every HealthInterval, restarts it with exponential backoff when it dies
// or stops answering, and opens a circuit breaker when it crash-loops.
//
// How the process is started is go-plugin's runner.Runner seam: by
// default a child process of addond (systemd manager "none"); with
// Options.Units, the transient unit addond-<id>.service in addond's systemd
// manager, which outlives addond and is reattached to by the next one
// (unit.go, reattach.go).
package goplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/addond/addond/sdk"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/systemd"
)

// Options tune a Backend. Zero values take the defaults of the origin
// design (in brackets).
type Options struct {
	Log    *slog.Logger
	Notify supervisors.Notify
	// RunnerFunc starts the sidecar process (nil: a child of addond).
	// cmd carries the binary, its arguments and go-plugin's environment.
	// Ignored when Units is set.
	RunnerFunc func(l hclog.Logger, cmd *exec.Cmd, tmpDir string) (runner.Runner, error)
	// Units, when set, runs every sidecar as a transient unit in a systemd
	// manager: sidecars then outlive the backend (Close leaves them
	// running) and a new backend reattaches to them.
	Units *UnitOptions

	HealthInterval   time.Duration // [5s]
	HealthTimeout    time.Duration // [5s]
	HealthFailures   int           // failed checks in a row that count as hung [3]
	ConfigureTimeout time.Duration // [10s]
	StartTimeout     time.Duration // handshake [10s]
	BackoffMin       time.Duration // [1s]
	BackoffMax       time.Duration // [1m]
	BreakerRestarts  int           // more restarts than this in BreakerWindow open the circuit [5]
	BreakerWindow    time.Duration // [1m]
	BreakerCooldown  time.Duration // [1m]
	ExitPoll         time.Duration // how often process exit is checked [1s]
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.HealthInterval, 5*time.Second)
	def(&o.HealthTimeout, 5*time.Second)
	def(&o.ConfigureTimeout, 10*time.Second)
	def(&o.StartTimeout, 10*time.Second)
	def(&o.BackoffMin, time.Second)
	def(&o.BackoffMax, time.Minute)
	def(&o.BreakerWindow, time.Minute)
	def(&o.BreakerCooldown, time.Minute)
	def(&o.ExitPoll, time.Second)
	if o.HealthFailures <= 0 {
		o.HealthFailures = 3
	}
	if o.BreakerRestarts <= 0 {
		o.BreakerRestarts = 5
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(supervisors.Event) {}
	}
	if o.Units != nil {
		u := *o.Units
		def(&u.JobTimeout, 30*time.Second)
		o.Units = &u
	}
}

// Backend is the go-plugin Supervisor.
type Backend struct {
	opts   Options
	addons supervisors.Registry[*instance]
}

var _ supervisors.Supervisor = (*Backend)(nil)

// New returns a Backend.
func New(o Options) *Backend {
	o.defaults()
	if o.Units != nil {
		o.Units.sweepSocketDirs(o.Log)
	}
	return &Backend{opts: o}
}

// instance is one supervised add-on: a goroutine that owns its process.
// It is detached by Close of a backend whose sidecars outlive it.
type instance struct {
	*supervisors.Handle
	b   *Backend
	id  string
	log *slog.Logger
}

func (b *Backend) Start(ctx context.Context, spec supervisors.Spec) error {
	if err := b.checkUnit(spec, true); err != nil {
		return err
	}
	log := b.opts.Log.With("addon_id", spec.AddonID)
	if b.opts.Units != nil {
		log = log.With("unit", systemd.ServiceName(spec.AddonID))
	}
	inst := &instance{Handle: supervisors.NewHandle(spec.AddonID, supervisors.LogState(log), b.opts.Notify), b: b, id: spec.AddonID, log: log}
	return b.addons.Start(ctx, inst, func(first chan<- error) { inst.run(spec, first) })
}

func (b *Backend) Update(ctx context.Context, spec supervisors.Spec) error {
	if err := b.checkUnit(spec, false); err != nil {
		return err
	}
	return b.addons.Update(ctx, spec)
}

func (b *Backend) Stop(ctx context.Context, id string) error { return b.addons.Stop(ctx, id) }

func (b *Backend) Status(id string) (supervisors.Event, bool) { return b.addons.Status(id) }

// Close stops every sidecar (they are addond's children) and waits, within
// ctx, for all of them. Sidecars that run as units are left running — not
// even told to shut down — for the next backend to reattach to: Close only
// stops supervising them.
func (b *Backend) Close(ctx context.Context) error {
	if b.opts.Units != nil {
		return b.addons.DetachAll(ctx)
	}
	return b.addons.StopAll(ctx, b.Stop)
}

// outcome is why a running sidecar's supervision ended.
type outcome int

const (
	outStopped  outcome = iota // Stop was called
	outRestart                 // a new spec needs a restart
	outFailed                  // exited, or stopped answering health checks
	outDetached                // Close of a backend whose sidecars outlive it
)

// run owns the add-on's process for its whole supervised life.
func (i *instance) run(spec supervisors.Spec, first chan<- error) {
	o := &i.b.opts
	var (
		restarts  int
		failures  int         // consecutive failed runs, for the backoff
		recent    []time.Time // restarts inside the breaker window
		firstSent bool
	)
	reportFirst := func(err error) {
		if !firstSent {
			first <- err
			firstSent = true
		}
	}
	defer reportFirst(nil)

	for {
		i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStarting, Health: supervisors.HealthUnknown, Restarts: restarts})
		startedAt := time.Now()
		p, err := i.launch(spec)
		var out outcome
		var reason string
		var cause supervisors.Cause
		if err != nil {
			reason, cause = err.Error(), launchCause(err)
			out = outFailed
			reportFirst(fmt.Errorf("addon %q: %w", i.id, err))
		} else {
			reportFirst(nil)
			out, reason, cause = i.supervise(p, &spec, restarts)
			if out == outDetached {
				p.detach()
				return
			}
			p.kill()
		}
		switch out {
		case outStopped:
			i.stopped()
			i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStopped, Health: supervisors.HealthUnknown, Restarts: restarts})
			return
		case outRestart:
			restarts++
			failures = 0
			continue
		}

		// A failure: back off, or open the circuit when it crash-loops.
		restarts++
		if time.Since(startedAt) >= o.BackoffMax {
			failures = 0 // it ran well for a while: start the backoff afresh
		}
		failures++
		now := time.Now()
		recent = append(recent, now)
		for len(recent) > 0 && now.Sub(recent[0]) > o.BreakerWindow {
			recent = recent[1:]
		}
		state, wait := supervisors.StateRestarting, i.backoff(failures)
		if len(recent) > o.BreakerRestarts {
			state, wait, cause = supervisors.StateCircuitOpen, o.BreakerCooldown, supervisors.CauseStartLimit
			reason = fmt.Sprintf("%s (%d restarts within %s; retrying in %s)", reason, len(recent), o.BreakerWindow, o.BreakerCooldown)
			recent = nil
		}
		i.Emit(supervisors.Event{Version: spec.Version, State: state, Health: supervisors.HealthUnhealthy, Cause: cause, Reason: reason, Restarts: restarts})
		i.log.Warn("add-on failed", "version", spec.Version, "reason", reason, "retry_in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-i.Detaching():
			t.Stop()
			return
		case <-i.Stopping():
			t.Stop()
			i.stopped()
			i.Emit(supervisors.Event{Version: spec.Version, State: supervisors.StateStopped, Health: supervisors.HealthUnknown, Reason: reason, Restarts: restarts})
			return
		case r := <-i.Requests():
			t.Stop()
			spec = *r.Spec
			r.Reply(nil)
			failures, recent = 0, nil
		case <-t.C:
		}
	}
}

// backoff is exponential from BackoffMin to BackoffMax with ±25 % jitter.
func (i *instance) backoff(failures int) time.Duration {
	o := &i.b.opts
	d := o.BackoffMin << min(failures-1, 20)
	d = min(d, o.BackoffMax)
	jitter := d / 4
	return d - jitter + rand.N(2*jitter+1)
}

// proc is one running sidecar.
type proc struct {
	client *plugin.Client
	rpc    plugin.ClientProtocol
	addon  *sdk.Client
	pid    int
	cmd    *exec.Cmd   // a child process (nil for a unit)
	unit   *unitRunner // a unit (nil for a child process)
}

// killGrace is how long a sidecar gets to shut down gracefully.
const killGrace = 3 * time.Second

// kill stops the sidecar: go-plugin's graceful shutdown first, then, for
// a child process, SIGKILL to its whole process group, so that nothing it
// forked outlives it (and a grandchild holding its stdout cannot stall the
// wait for it). A unit is then stopped for certain and its reattach data
// removed.
func (p *proc) kill() {
	stopClient(p.client, p.cmd, killGrace)
	if p.unit != nil {
		p.unit.finish()
	}
}

// detach lets go of a sidecar that outlives the backend: its connection is
// closed without go-plugin's Shutdown, and the unit keeps running.
func (p *proc) detach() {
	if gc, ok := p.rpc.(*plugin.GRPCClient); ok {
		gc.Conn.Close()
	}
	if p.unit != nil {
		p.unit.detach()
	}
}

// exitGrace is how long a sidecar whose connection broke is given for its
// process's end to be seen.
const exitGrace = 2 * time.Second

// exitedWithin reports whether the sidecar's process has ended, waiting up
// to d for its end to be seen.
func (p *proc) exitedWithin(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !p.client.Exited() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// exitReason says how the sidecar ended once its client has exited.
func (p *proc) exitReason() string {
	if p.unit != nil {
		return p.unit.exitReason()
	}
	return "process exited"
}

// exitCause is why the sidecar's process ended, for the reconciler.
func (p *proc) exitCause() supervisors.Cause {
	if p.unit != nil {
		p.unit.mu.Lock()
		defer p.unit.mu.Unlock()
		return p.unit.final.ExitCause()
	}
	return supervisors.CauseExited
}

// launchError is a launch that failed, with why.
type launchError struct {
	cause supervisors.Cause
	err   error
}

func (e *launchError) Error() string { return e.err.Error() }
func (e *launchError) Unwrap() error { return e.err }

// launchCause is why a sidecar could not be launched: its process could
// not be started, or it never completed go-plugin's handshake (in time, or
// at all: it exited first).
func launchCause(err error) supervisors.Cause {
	var le *launchError
	if errors.As(err, &le) {
		return le.cause
	}
	return supervisors.CauseStartFailed
}

// stopClient waits up to grace for go-plugin's shutdown (0 for a sidecar
// that never completed its handshake: there is nothing to talk to).
func stopClient(client *plugin.Client, cmd *exec.Cmd, grace time.Duration) {
	done := make(chan struct{})
	go func() {
		client.Kill()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
	}
	if cmd != nil && cmd.Process != nil && cmd.SysProcAttr != nil && cmd.SysProcAttr.Setpgid {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	<-done
}

// launch starts the binary, completes the handshake and dispenses the
// add-on service.
func (i *instance) launch(spec supervisors.Spec) (*proc, error) {
	o := &i.b.opts
	if o.Units != nil {
		return i.launchUnit(spec)
	}
	cert, certPEM, err := newClientCert()
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pin := &serverPin{}
	start := o.RunnerFunc
	if start == nil {
		start = newChildRunner
	}
	var cmd *exec.Cmd // the command that runs, once the runner is made
	config := &plugin.ClientConfig{
		HandshakeConfig: sdk.Handshake,
		Plugins:         plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		// go-plugin takes Cmd or RunnerFunc, not both: the runner gets
		// the command go-plugin builds (its environment), running ours.
		RunnerFunc: func(l hclog.Logger, c *exec.Cmd, tmpDir string) (runner.Runner, error) {
			want := exec.Command(spec.Binary, spec.Args...)
			c.Path, c.Args, c.Err = want.Path, want.Args, want.Err
			c.Env = append(c.Env, clientCertEnv+"="+string(certPEM))
			r, err := start(l, c, tmpDir)
			if err != nil {
				return nil, err
			}
			if _, ok := r.(*childRunner); ok {
				cmd = c
			}
			return &pinRunner{Runner: r, pin: pin}, nil
		},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		TLSConfig:        clientTLS(cert, pin), // mtls.go: not AutoMTLS
		StartTimeout:     o.StartTimeout,
		SkipHostEnv:      true,
		Logger:           newHCLogger(i.log),
	}
	client := plugin.NewClient(config)
	p, err := connect(client, spec, pin)
	if err != nil {
		stopClient(client, cmd, 0)
		return nil, err
	}
	p.cmd = cmd
	return p, nil
}

// connect completes the handshake (or the reattachment) and dispenses the
// add-on service. On an error the caller cleans up client.
func connect(client *plugin.Client, spec supervisors.Spec, pin *serverPin) (*proc, error) {
	rpc, err := client.Client()
	if err != nil {
		cause := supervisors.CauseStartFailed
		if pin.started.Load() {
			cause = supervisors.CauseHandshake
		}
		return nil, &launchError{cause: cause, err: fmt.Errorf("start %s: %w", spec.Binary, err)}
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return nil, fmt.Errorf("dispense: %w", err)
	}
	addon, ok := raw.(*sdk.Client)
	if !ok {
		return nil, fmt.Errorf("dispense: got %T", raw)
	}
	pid, _ := strconv.Atoi(client.ID())
	return &proc{client: client, rpc: rpc, addon: addon, pid: pid}, nil
}

// supervise configures a started sidecar and watches it until it must
// stop or restart. spec is updated in place by configuration-only updates.
func (i *instance) supervise(p *proc, spec *supervisors.Spec, restarts int) (outcome, string, supervisors.Cause) {
	o := &i.b.opts
	ev := supervisors.Event{Version: spec.Version, State: supervisors.StateStarting, Health: supervisors.HealthUnknown, Restarts: restarts, PID: p.pid}
	var configErr string
	configure := func(config []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), o.ConfigureTimeout)
		defer cancel()
		if len(config) == 0 {
			config = []byte("{}")
		}
		if _, err := p.addon.Configure(ctx, config); err != nil {
			configErr = "configure: " + err.Error()
		} else {
			configErr = ""
		}
	}
	failures := 0
	check := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), o.HealthTimeout)
		h, err := p.addon.Health(ctx)
		cancel()
		if err != nil {
			failures++
			ev.Reason, ev.Cause = fmt.Sprintf("health check failed (%d in a row): %v", failures, err), supervisors.CauseUnhealthy
			if failures >= o.HealthFailures {
				// A check that failed because the connection is gone
				// usually means the process ended, which a unit's
				// sidecar learns later, over D-Bus: the exit is the
				// cause, not an unhealthy add-on.
				if status.Code(err) == codes.Unavailable && p.exitedWithin(exitGrace) {
					ev.Reason, ev.Cause = p.exitReason(), p.exitCause()
				} else {
					ev.Reason = "not answering health checks: " + ev.Reason
				}
				return false
			}
			i.Emit(ev)
			return true
		}
		failures = 0
		ev.Reason, ev.Cause = h.Reason, supervisors.CauseNone
		switch h.Status {
		case sdk.Healthy:
			ev.State, ev.Health = supervisors.StateRunning, supervisors.HealthHealthy
		case sdk.Degraded:
			ev.State, ev.Health = supervisors.StateDegraded, supervisors.HealthDegraded
		case sdk.Unhealthy:
			ev.State, ev.Health, ev.Cause = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, supervisors.CauseUnhealthy
		default:
			ev.State, ev.Health = supervisors.StateRunning, supervisors.HealthUnknown
		}
		if configErr != "" {
			ev.State, ev.Health, ev.Reason, ev.Cause = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, configErr, supervisors.CauseConfigure
		}
		i.Emit(ev)
		return true
	}

	configure(spec.ConfigJSON)
	if !check() {
		return outFailed, ev.Reason, ev.Cause
	}
	health := time.NewTicker(o.HealthInterval)
	defer health.Stop()
	exit := time.NewTicker(o.ExitPoll)
	defer exit.Stop()
	for {
		select {
		case <-i.Stopping():
			return outStopped, "", supervisors.CauseNone
		case <-i.Detaching():
			return outDetached, "", supervisors.CauseNone
		case r := <-i.Requests():
			if r.Spec.NeedsRestart(*spec) {
				*spec = *r.Spec
				r.Reply(nil)
				return outRestart, "", supervisors.CauseNone
			}
			if r.Spec.ConfigChanged(*spec) {
				configure(r.Spec.ConfigJSON)
				if p.unit != nil { // keep $ADDOND_CONFIG current
					if err := p.unit.prepare(*r.Spec); err != nil {
						i.log.Warn("cannot write the add-on's configuration file", "error", err)
					}
				}
			}
			*spec = *r.Spec
			var err error
			if configErr != "" {
				err = fmt.Errorf("addon %q: %s", i.id, configErr)
			}
			r.Reply(err)
			if !check() {
				return outFailed, ev.Reason, ev.Cause
			}
		case <-exit.C:
			if p.client.Exited() {
				return outFailed, p.exitReason(), p.exitCause()
			}
		case <-health.C:
			if !check() {
				return outFailed, ev.Reason, ev.Cause
			}
		}
	}
}
