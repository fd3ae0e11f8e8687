package goplugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"

	"github.com/addond/addond/sdk"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/systemd"
)

// Model is the supervision model of this backend: part of every sidecar
// unit's fingerprint.
const Model = supervisors.ModelAgentSidecar

// UnitOptions run sidecars as transient units (Options.Units).
type UnitOptions struct {
	// Manager is the systemd manager the units run in.
	Manager *systemd.Manager
	// Paths are the agent's runtime tree: the sidecars' handshake files,
	// sockets and reattach data live in <RuntimeRoot>/plugins/.
	Paths systemd.Paths
	// JobTimeout bounds stopping a unit [30s].
	JobTimeout time.Duration
	// Privileged makes and stops the units (capped sidecars, in the
	// system manager; Manager is then the system manager's, watched
	// only). Their handshake files and socket directories are where it
	// says; SocketGroup is the group a sidecar gives its socket (addond's,
	// which the sidecar's uid is not).
	Privileged  systemd.Privileged
	SocketGroup string
}

// Dir is where sidecar units' handshake files, socket directories and
// reattach data live: under the runtime root, so that they survive an
// addond restart (never a private /tmp, never a RuntimeDirectory).
func (u *UnitOptions) Dir() string { return filepath.Join(u.Paths.RuntimeRoot, "plugins") }

// HandshakeFile is where a sidecar unit's stdout — go-plugin's handshake
// line — goes.
func (u *UnitOptions) HandshakeFile(id string) string {
	if u.Privileged != nil {
		return u.Privileged.HandshakeFile(id)
	}
	return filepath.Join(u.Dir(), id+".handshake")
}

// socketParent is where a sidecar's socket directory is made.
func (u *UnitOptions) socketParent(id string) string {
	if u.Privileged != nil {
		return u.Privileged.SocketDir(id)
	}
	return u.Dir()
}

// stopUnit stops add-on id's sidecar unit and waits for it.
func (u *UnitOptions) stopUnit(ctx context.Context, id string) error {
	if u.Privileged != nil {
		return u.Privileged.Stop(ctx, id)
	}
	conn, err := u.Manager.Conn(ctx)
	if err != nil {
		return err
	}
	return systemd.StopUnit(ctx, conn, systemd.ServiceName(id))
}

// ReattachFile holds what a new addond needs to reattach to the sidecar.
func (u *UnitOptions) ReattachFile(id string) string {
	return filepath.Join(u.Dir(), id+".reattach.json")
}

func (u *UnitOptions) jobCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), u.JobTimeout)
}

// Fingerprint identifies what a sidecar unit runs. The configuration is no
// part of it: a sidecar takes a new configuration in place, through
// Configure, so a changed configuration never stands in the way of a
// reattachment.
func Fingerprint(spec supervisors.Spec) string {
	spec.ConfigJSON = nil
	return systemd.Fingerprint(Model, spec)
}

// stopTimeout is how long a sidecar unit gets between SIGTERM and SIGKILL.
const stopTimeout = 5 * time.Second

// checkUnit refuses, before anything is created, a spec that cannot
// become a unit.
func (b *Backend) checkUnit(spec supervisors.Spec, start bool) error {
	if b.opts.Units == nil {
		return nil
	}
	if start {
		if err := systemd.ValidID(spec.AddonID); err != nil {
			return err
		}
	}
	return systemd.CheckResources(spec.AddonID, spec.Resources)
}

// stopped makes sure that a stopped add-on's unit is gone and forgets how
// to reattach to it.
func (i *instance) stopped() {
	u := i.b.opts.Units
	if u == nil {
		return
	}
	os.Remove(u.ReattachFile(i.id))
	ctx, cancel := u.jobCtx()
	defer cancel()
	if err := u.stopUnit(ctx, i.id); err != nil {
		i.log.Warn("could not stop the sidecar unit", "error", err)
	}
}

// launchUnit reattaches to the add-on's running unit when the reattach
// data left by a previous addond still describes it, and starts the unit
// afresh otherwise.
func (i *instance) launchUnit(spec supervisors.Spec) (*proc, error) {
	o := &i.b.opts
	u := o.Units
	fp := Fingerprint(spec)
	st, err := loadReattach(u.ReattachFile(spec.AddonID))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		i.log.Warn("ignoring the sidecar's reattach data", "error", err)
		os.Remove(u.ReattachFile(spec.AddonID))
	default:
		p, err := i.reattach(spec, fp, st)
		if err == nil {
			i.log.Info("reattached to the running sidecar unit", "pid", st.PID)
			return p, nil
		}
		if errors.Is(err, systemd.ErrNoManager) {
			return nil, err // keep the data: try again once the manager is back
		}
		i.log.Warn("cannot reattach to the sidecar unit; starting it afresh", "reason", err)
		os.Remove(u.ReattachFile(spec.AddonID))
		u.removeSocketDir(spec.AddonID, filepath.Dir(st.Addr))
		// Starting afresh stops the old unit first.
	}

	if err := os.MkdirAll(u.Dir(), 0o700); err != nil {
		return nil, fmt.Errorf("plugin directory: %w", err)
	}
	if err := u.prepareCapped(spec.AddonID); err != nil {
		return nil, err
	}
	cert, certPEM, err := newClientCert()
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pin := &serverPin{}
	var r *unitRunner
	config := &plugin.ClientConfig{
		HandshakeConfig: sdk.Handshake,
		Plugins:         plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		RunnerFunc: func(_ hclog.Logger, cmd *exec.Cmd, tmpDir string) (runner.Runner, error) {
			r = newUnitRunner(u, spec, fp, append(cmd.Env, clientCertEnv+"="+string(certPEM)), tmpDir)
			return &pinRunner{Runner: r, pin: pin}, nil
		},
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: u.socketParent(spec.AddonID), Group: u.SocketGroup},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		TLSConfig:        clientTLS(cert, pin), // mtls.go: not AutoMTLS
		StartTimeout:     o.StartTimeout,
		SkipHostEnv:      true,
		Logger:           newHCLogger(i.log),
	}
	client := plugin.NewClient(config)
	p, err := connect(client, spec, pin)
	if err != nil {
		stopClient(client, nil, 0)
		if r != nil {
			r.finish()
		}
		return nil, err
	}
	p.unit = r
	st, err = newReattachState(client, cert, pin, r)
	if err == nil {
		err = saveReattach(u.ReattachFile(spec.AddonID), st)
	}
	if err != nil {
		// It runs; only a restarted addond will have to restart it.
		i.log.Warn("cannot save the sidecar's reattach data", "error", err)
	}
	return p, nil
}

// prepareCapped has a capped sidecar's old unit stopped and its runtime
// directory made, and removes the socket directories earlier runs left
// there: the new one goes there next.
func (u *UnitOptions) prepareCapped(id string) error {
	if u.Privileged == nil {
		return nil
	}
	ctx, cancel := u.jobCtx()
	defer cancel()
	if err := u.Privileged.Prepare(ctx, id); err != nil {
		return err
	}
	entries, _ := os.ReadDir(u.Privileged.SocketDir(id))
	for _, e := range entries {
		u.removeSocketDir(id, filepath.Join(u.Privileged.SocketDir(id), e.Name()))
	}
	return nil
}

// unitRunner is go-plugin's runner.Runner for a sidecar that is the
// transient unit addond-<id>.service: its stdout goes to a file (a pipe
// would kill it with SIGPIPE once addond restarts), its stderr to the
// journal, its socket into a directory under the runtime root.
type unitRunner struct {
	opts        *UnitOptions
	spec        supervisors.Spec
	unit        string
	fingerprint string
	description string
	env         []string // go-plugin's: cookie, protocol versions, client certificate, socket directory
	socketDir   string

	detached   chan struct{} // the backend let go of it
	detachOnce sync.Once
	gone       chan struct{} // the unit is no longer active (closed by monitor)

	mu         sync.Mutex
	pid        int
	invocation string
	final      systemd.UnitState // the state that ended it
	finished   bool
}

var _ runner.Runner = (*unitRunner)(nil)

func newUnitRunner(u *UnitOptions, spec supervisors.Spec, fp string, env []string, socketDir string) *unitRunner {
	return &unitRunner{
		opts: u, spec: spec, unit: systemd.ServiceName(spec.AddonID),
		fingerprint: fp,
		description: systemd.Description(spec, fp),
		env:         withoutHostEnv(env),
		socketDir:   socketDir,
		detached:    make(chan struct{}),
		gone:        make(chan struct{}),
	}
}

// attachedUnitRunner is the runner of a unit started by an earlier addond.
func attachedUnitRunner(u *UnitOptions, spec supervisors.Spec, st *reattachState) *unitRunner {
	r := newUnitRunner(u, spec, st.Fingerprint, nil, filepath.Dir(st.Addr))
	r.pid, r.invocation = st.PID, st.InvocationID
	go r.monitor()
	return r
}

// withoutHostEnv drops what must never reach a unit from addond's own
// environment (go-plugin is told to skip the host's environment; this
// holds even if something put it there).
func withoutHostEnv(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "WATCHDOG_") || strings.HasPrefix(k, "LISTEN_")
	})
}

// properties are the unit's: the add-on's command, identity, resources and
// sandbox (with the socket directory writable), go-plugin's environment,
// and stdout into the handshake file.
func (r *unitRunner) properties() []sd.Property {
	o := r.opts
	props := systemd.ExecProperties(o.Manager.Target(), o.Paths, r.spec, r.socketDir)
	for i, p := range props {
		if p.Name == "Environment" {
			env, _ := p.Value.Value().([]string)
			props[i] = systemd.Prop("Environment", append(slices.Clone(env), r.env...))
		}
	}
	return append(props,
		systemd.Prop("Description", r.description),
		systemd.Prop("Type", "exec"),
		systemd.Prop("Restart", "no"), // addond restarts it, with backoff
		systemd.Prop("StandardOutputFileToTruncate", o.HandshakeFile(r.spec.AddonID)),
		systemd.Prop("StandardError", "journal"),
		systemd.Prop("TimeoutStopUSec", uint64(stopTimeout/time.Microsecond)),
	)
}

// prepare writes the add-on's state directory and configuration file.
func (r *unitRunner) prepare(spec supervisors.Spec) error { return r.opts.Paths.Prepare(spec) }

// Start creates the unit (replacing whatever of that name is left) and
// returns once its process runs.
func (r *unitRunner) Start(ctx context.Context) error {
	o := r.opts
	if o.Privileged != nil {
		return r.startCapped(ctx)
	}
	conn, err := o.Manager.Conn(ctx)
	if err != nil {
		return err
	}
	if err := systemd.StopUnit(ctx, conn, r.unit); err != nil {
		return err
	}
	if err := r.prepare(r.spec); err != nil {
		return err
	}
	// A fresh, private handshake file: never an earlier run's line.
	hs := o.HandshakeFile(r.spec.AddonID)
	os.Remove(hs)
	f, err := os.OpenFile(hs, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("handshake file: %w", err)
	}
	f.Close()

	ch, err := r.create(ctx, conn)
	if err != nil {
		return err
	}
	if err := systemd.WaitJob(ctx, r.unit, ch); err != nil {
		jctx, cancel := o.jobCtx()
		defer cancel()
		if u, rerr := systemd.ReadUnit(jctx, conn, r.unit); rerr == nil && u.Exists() {
			err = fmt.Errorf("%w: %s", err, r.describeExit(u))
		}
		systemd.StopUnit(jctx, conn, r.unit) // and clear its failed state
		return err
	}
	return r.watch(ctx, conn)
}

// startCapped has addond-updater start the capped sidecar's unit (it
// writes the configuration and the empty handshake file itself), and
// reads what it runs.
func (r *unitRunner) startCapped(ctx context.Context) error {
	o := r.opts
	if err := o.Privileged.Start(ctx, systemd.CappedStart{Spec: r.spec, Description: r.description, Sidecar: true, Env: r.env}); err != nil {
		return err
	}
	conn, err := o.Manager.Conn(ctx)
	if err != nil {
		return err
	}
	return r.watch(ctx, conn)
}

// watch reads the started unit's main process and invocation, and
// monitors it from there.
func (r *unitRunner) watch(ctx context.Context, conn *sd.Conn) error {
	u, err := systemd.ReadUnit(ctx, conn, r.unit)
	if err != nil {
		return fmt.Errorf("%s: %w", r.unit, err)
	}
	r.mu.Lock()
	r.pid, r.invocation = u.MainPID, u.InvocationID
	r.mu.Unlock()
	go r.monitor()
	return nil
}

// create starts the transient unit. A unit of that name that is stopped
// but not yet unloaded by the manager (its control group still draining)
// makes the name unusable for a moment: that is waited out, within ctx.
func (r *unitRunner) create(ctx context.Context, conn *sd.Conn) (<-chan string, error) {
	props := r.properties()
	for {
		ch := make(chan string, 1)
		_, err := conn.StartTransientUnitContext(ctx, r.unit, "fail", props, ch)
		if err == nil {
			return ch, nil
		}
		var de godbus.Error
		if !errors.As(err, &de) || de.Name != "org.freedesktop.systemd1.UnitExists" {
			return nil, fmt.Errorf("create %s: %w", r.unit, err)
		}
		u, rerr := systemd.ReadUnit(ctx, conn, r.unit)
		if rerr == nil && u.Up() {
			return nil, fmt.Errorf("create %s: %w", r.unit, err) // someone else started it
		}
		select {
		case <-ctx.Done():
			state := ""
			if rerr == nil {
				state = fmt.Sprintf(" (still loaded, %s/%s)", u.ActiveState, u.SubState)
			}
			return nil, fmt.Errorf("create %s: %w%s", r.unit, err, state)
		case <-time.After(50 * time.Millisecond):
		}
		systemd.StopUnit(ctx, conn, r.unit) // a finished job puts it up for collection
	}
}

// monitor closes gone once the unit is no longer active (or is another
// run of it), woken by the manager's signals; a slow poll covers a missed
// one.
func (r *unitRunner) monitor() {
	w := r.opts.Manager.Watch(r.unit)
	defer w.Close()
	poll := time.NewTicker(5 * time.Second)
	defer poll.Stop()
	for {
		select {
		case <-r.detached:
			return
		case <-w.C:
		case <-poll.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), systemd.DialTimeout)
		conn, err := r.opts.Manager.Conn(ctx)
		if err != nil {
			cancel()
			continue // the reconnect pokes the watch
		}
		u, err := systemd.ReadUnit(ctx, conn, r.unit)
		cancel()
		if err != nil {
			continue
		}
		r.mu.Lock()
		invocation := r.invocation
		r.mu.Unlock()
		alive := u.Up() || u.ActiveState == "deactivating"
		if alive && (invocation == "" || u.InvocationID == invocation) {
			continue
		}
		if f := exitSeen.Load(); f != nil {
			(*f)(r.unit)
		}
		r.mu.Lock()
		r.final = u
		r.mu.Unlock()
		close(r.gone)
		return
	}
}

// exitSeen, when set (tests only), runs when a unit's end has been read
// and before the sidecar is told: a test delays it there to order a late
// exit after the sidecar's failed health checks.
var exitSeen atomic.Pointer[func(unit string)]

// describeExit says how a run of the unit ended.
func (r *unitRunner) describeExit(u systemd.UnitState) string {
	s := u.Exit()
	if u.ExecCode == 1 && u.ExecStatus == 203 { // EXIT_EXEC
		s += fmt.Sprintf(" (could not execute %s)", r.spec.Binary)
	}
	return s
}

// exitReason says why the unit is no longer running.
func (r *unitRunner) exitReason() string {
	r.mu.Lock()
	u := r.final
	r.mu.Unlock()
	switch {
	case !u.Exists():
		return fmt.Sprintf("unit %s is gone", r.unit)
	case u.Up() || u.ActiveState == "deactivating":
		return fmt.Sprintf("unit %s was restarted behind addond's back", r.unit)
	}
	return fmt.Sprintf("unit %s %s: %s", r.unit, u.ActiveState, r.describeExit(u))
}

// Diagnose describes the unit when the handshake failed.
func (r *unitRunner) Diagnose(ctx context.Context) string {
	conn, err := r.opts.Manager.Conn(ctx)
	if err != nil {
		return ""
	}
	u, err := systemd.ReadUnit(ctx, conn, r.unit)
	if err != nil {
		return ""
	}
	state := "gone"
	if u.Exists() {
		state = u.ActiveState + "/" + u.SubState
		if !u.Up() {
			state += ", " + r.describeExit(u)
		}
	}
	journal := "journalctl --user -u"
	if r.opts.Privileged != nil {
		journal = "journalctl -u" // the system manager's
	}
	return fmt.Sprintf("unit %s is %s; its stderr is in the journal (%s %s)", r.unit, state, journal, r.unit)
}

// Stdout is the handshake file, up to the handshake line (or as much as
// there is when the unit dies before writing one).
func (r *unitRunner) Stdout() io.ReadCloser {
	return &handshakeReader{r: r, path: r.opts.HandshakeFile(r.spec.AddonID), closed: make(chan struct{})}
}

// Stderr is empty: the unit's stderr is in the journal.
func (r *unitRunner) Stderr() io.ReadCloser { return io.NopCloser(strings.NewReader("")) }

// Name is the unit.
func (r *unitRunner) Name() string { return r.unit }

// Wait returns once the unit is no longer active, or the backend let go.
func (r *unitRunner) Wait(ctx context.Context) error {
	select {
	case <-r.gone:
		r.mu.Lock()
		u := r.final
		r.mu.Unlock()
		if u.Exists() && u.ActiveState == "failed" {
			return errors.New(r.exitReason())
		}
		return nil
	case <-r.detached:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill stops the unit. Whether or not that worked, the runner is done
// with: Wait returns (go-plugin's Kill waits for it).
func (r *unitRunner) Kill(context.Context) error {
	defer r.detach()
	ctx, cancel := r.opts.jobCtx()
	defer cancel()
	return r.opts.stopUnit(ctx, r.spec.AddonID)
}

// ID is the unit's main PID.
func (r *unitRunner) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pid > 0 {
		return strconv.Itoa(r.pid)
	}
	return r.unit // never empty: go-plugin kills nothing without an ID
}

// PluginToHost: the socket is bound into the unit at the same path.
func (r *unitRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

// HostToPlugin: the same paths on both sides.
func (r *unitRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// detach stops watching the unit and ends Wait, leaving the unit running.
func (r *unitRunner) detach() { r.detachOnce.Do(func() { close(r.detached) }) }

// finish is the end of a sidecar addond stopped: the unit stopped for
// certain, and nothing left to reattach to.
func (r *unitRunner) finish() {
	r.mu.Lock()
	done := r.finished
	r.finished = true
	r.mu.Unlock()
	if done {
		return
	}
	os.Remove(r.opts.ReattachFile(r.spec.AddonID))
	r.Kill(context.Background())
	r.opts.removeSocketDir(r.spec.AddonID, r.socketDir)
}

// sweepSocketDirs removes the socket directories go-plugin made for
// sidecars that no reattach file names any more (addond died between
// making one and writing the reattach file, or the file was refused). Run
// once, before any sidecar starts.
func (u *UnitOptions) sweepSocketDirs(log *slog.Logger) {
	entries, err := os.ReadDir(u.Dir())
	if err != nil {
		return
	}
	inUse := map[string]bool{}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".reattach.json") {
			if st, err := loadReattach(filepath.Join(u.Dir(), e.Name())); err == nil {
				inUse[filepath.Dir(st.Addr)] = true
			}
		}
	}
	for _, e := range entries {
		dir := filepath.Join(u.Dir(), e.Name())
		if e.IsDir() && strings.HasPrefix(e.Name(), "plugin-dir") && !inUse[dir] {
			log.Info("removing a sidecar socket directory nothing uses", "dir", dir)
			os.RemoveAll(dir)
		}
	}
}

// removeSocketDir removes a socket directory go-plugin made for add-on
// id's sidecar (and nothing else).
func (u *UnitOptions) removeSocketDir(id, dir string) {
	if filepath.Dir(dir) == u.socketParent(id) && strings.HasPrefix(filepath.Base(dir), "plugin-dir") {
		os.RemoveAll(dir)
	}
}

// handshakeReader tails the handshake file until the handshake line is
// there, then ends; it also ends when the unit dies or the runner is let
// go of.
type handshakeReader struct {
	r         *unitRunner
	path      string
	f         *os.File
	pending   []byte
	done      bool
	lastRead  bool
	total     int
	closed    chan struct{}
	closeOnce sync.Once
}

// handshakePoll is how often the file is looked at while waiting.
const handshakePoll = 10 * time.Millisecond

// maxHandshake bounds what is read without a newline.
const maxHandshake = 64 << 10

func (h *handshakeReader) Read(p []byte) (int, error) {
	var buf [4096]byte
	for {
		if len(h.pending) > 0 {
			n := copy(p, h.pending)
			h.pending = h.pending[n:]
			return n, nil
		}
		if h.done {
			if h.f != nil {
				h.f.Close()
				h.f = nil
			}
			return 0, io.EOF
		}
		if h.f == nil {
			f, err := os.Open(h.path)
			if err == nil {
				h.f = f
			}
		}
		if h.f != nil {
			n, _ := h.f.Read(buf[:])
			if n > 0 {
				chunk := buf[:n]
				if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
					chunk, h.done = chunk[:i+1], true
				}
				h.total += len(chunk)
				if h.total >= maxHandshake {
					h.done = true
				}
				h.pending = slices.Clone(chunk)
				continue
			}
		}
		select {
		case <-h.r.gone:
			// One more read for what it wrote just before it ended.
			h.done = h.lastRead
			h.lastRead = true
		case <-h.r.detached:
			h.done = true
		case <-h.closed:
			h.done = true
		case <-time.After(handshakePoll):
		}
	}
}

func (h *handshakeReader) Close() error {
	h.closeOnce.Do(func() { close(h.closed) })
	return nil
}
