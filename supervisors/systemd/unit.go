package systemd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/addond/addond/internal/atomicfile"
	"github.com/addond/addond/supervisors"
)

// UnitPrefix starts the name of every unit addond owns.
const UnitPrefix = "addond-"

var addonID = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ServiceName is the unit of a service or sidecar add-on.
func ServiceName(id string) string { return UnitPrefix + id + ".service" }

// TimerName is the timer of a systemd_timer add-on (its service is
// ServiceName).
func TimerName(id string) string { return UnitPrefix + id + ".timer" }

// RunName is the unit of one ephemeral helper run.
func RunName(id, unique string) string { return UnitPrefix + id + ".run-" + unique + ".service" }

// ParseName returns the add-on id a unit name belongs to, and whether the
// unit is a helper run. Add-on ids hold no ".", so the names cannot
// collide.
func ParseName(unit string) (id string, run bool, ok bool) {
	rest, found := strings.CutPrefix(unit, UnitPrefix)
	if !found {
		return "", false, false
	}
	id, suffix, found := strings.Cut(rest, ".")
	if !found || !addonID.MatchString(id) {
		return "", false, false
	}
	switch {
	case suffix == "service", suffix == "timer":
		return id, false, true
	case strings.HasPrefix(suffix, "run-") && strings.HasSuffix(suffix, ".service"):
		return id, true, true
	}
	return "", false, false
}

// ValidID checks an add-on id before it becomes part of a unit name.
func ValidID(id string) error {
	if !addonID.MatchString(id) {
		return fmt.Errorf("addon id %q: not a valid add-on id", id)
	}
	return nil
}

// Paths are where an add-on's unit finds its files.
type Paths struct {
	RuntimeRoot  string // the agent's tree (hidden from sandboxed add-ons)
	StatusSocket string // for the SDK's helper runs ("" if none)
	// Owner is the user add-ons run as when it is not addond's own uid
	// (systemd.manager "system"): their state directory and configuration
	// file are handed to it. nil: addond's uid.
	Owner *Owner
}

// Owner is a uid and gid.
type Owner struct{ UID, GID int }

// own hands path to the user add-ons run as, when that is not addond's
// own (the system manager, with addond as root).
func (p Paths) own(path string) error {
	if p.Owner == nil {
		return nil
	}
	return os.Lchown(path, p.Owner.UID, p.Owner.GID)
}

// StateDir is the add-on's own writable directory.
func (p Paths) StateDir(id string) string { return filepath.Join(p.RuntimeRoot, "addons", id, "data") }

// ConfigFile is the add-on's config_json, named by ADDOND_CONFIG.
func (p Paths) ConfigFile(id string) string {
	return filepath.Join(p.RuntimeRoot, "addons", id, "config.json")
}

// Prepare creates the state directory and writes the configuration file
// (atomically: a running add-on never reads half of it).
func (p Paths) Prepare(spec supervisors.Spec) error {
	dir := p.StateDir(spec.AddonID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("addon %q: state directory: %w", spec.AddonID, err)
	}
	if err := p.own(dir); err != nil {
		return fmt.Errorf("addon %q: state directory: %w", spec.AddonID, err)
	}
	cfg := spec.ConfigJSON
	if len(cfg) == 0 {
		cfg = []byte("{}")
	}
	var opts []atomicfile.Option
	if p.Owner != nil {
		opts = append(opts, atomicfile.Owner(p.Owner.UID, p.Owner.GID))
	}
	if err := atomicfile.Write(p.ConfigFile(spec.AddonID), cfg, 0o600, opts...); err != nil {
		return fmt.Errorf("addon %q: config file: %w", spec.AddonID, err)
	}
	return nil
}

// Fingerprint identifies everything a unit was started with: a unit whose
// description carries the fingerprint of the desired spec can be adopted
// as it is.
func Fingerprint(model supervisors.Model, spec supervisors.Spec, extra ...string) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	enc.Encode([]any{model, spec.AddonID, spec.Version, spec.Binary, spec.Args, string(spec.ConfigJSON),
		spec.Schedule, spec.Timeout.String(), spec.Resources, spec.Capabilities, extra})
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// descriptionPrefix begins every add-on unit's description.
const descriptionPrefix = "addond add-on "

// Description is the unit description: human-readable, and carrying the
// version and fingerprint adoption compares.
func Description(spec supervisors.Spec, fingerprint string) string {
	return fmt.Sprintf("%s%s %s [%s]", descriptionPrefix, spec.AddonID, spec.Version, fingerprint)
}

// DescriptionFingerprint extracts the fingerprint from a description.
func DescriptionFingerprint(desc string) string {
	i, j := strings.LastIndexByte(desc, '['), strings.LastIndexByte(desc, ']')
	if i < 0 || j < i {
		return ""
	}
	return desc[i+1 : j]
}

// CheckResources refuses limits systemd would reject or that cannot be
// meant (a memory limit below 1 MiB is a unit mistake, not a limit).
func CheckResources(id string, r *supervisors.Resources) error {
	if r == nil {
		return nil
	}
	bad := func(field string, v int64, why string) error {
		return fmt.Errorf("addon %q: resources.%s %d %s", id, field, v, why)
	}
	switch {
	case r.CPUMaxPercent < 0 || r.CPUMaxPercent > 100*1024:
		return bad("cpu_max_percent", int64(r.CPUMaxPercent), "is out of range (1..102400, 100 per CPU)")
	case r.MemoryMaxBytes < 0 || (r.MemoryMaxBytes > 0 && r.MemoryMaxBytes < 1<<20):
		return bad("memory_max_bytes", r.MemoryMaxBytes, "is out of range (at least 1 MiB)")
	case r.MemoryHighBytes < 0 || (r.MemoryHighBytes > 0 && r.MemoryHighBytes < 1<<20):
		return bad("memory_high_bytes", r.MemoryHighBytes, "is out of range (at least 1 MiB)")
	case r.MemoryMaxBytes > 0 && r.MemoryHighBytes > r.MemoryMaxBytes:
		return bad("memory_high_bytes", r.MemoryHighBytes, "is above memory_max_bytes")
	case r.TasksMax < 0 || r.TasksMax > 1<<22:
		return bad("tasks_max", r.TasksMax, "is out of range (1..4194304)")
	}
	return nil
}

// ResourceProperties maps resources to unit properties.
func ResourceProperties(r *supervisors.Resources) []sd.Property {
	if r == nil {
		return nil
	}
	var props []sd.Property
	if r.CPUMaxPercent > 0 {
		props = append(props, prop("CPUQuotaPerSecUSec", uint64(r.CPUMaxPercent)*10000))
	}
	if r.MemoryMaxBytes > 0 {
		props = append(props, prop("MemoryMax", uint64(r.MemoryMaxBytes)))
	}
	if r.MemoryHighBytes > 0 {
		props = append(props, prop("MemoryHigh", uint64(r.MemoryHighBytes)))
	}
	if r.TasksMax > 0 {
		props = append(props, prop("TasksMax", uint64(r.TasksMax)))
	}
	return props
}

func prop(name string, v any) sd.Property {
	return sd.Property{Name: name, Value: godbus.MakeVariant(v)}
}

// Prop is a unit property by its D-Bus name.
func Prop(name string, v any) sd.Property { return prop(name, v) }

// ExecStart is the ExecStart property with a failing exit counted as a
// failure. (go-systemd's PropExecStart names its flag "uncleanIsFailure",
// but systemd reads that field of (sasb) as "ignore failure": passing true
// there makes every exit status a success.)
func ExecStart(argv []string) sd.Property {
	type execCommand struct {
		Path          string
		Argv          []string
		IgnoreFailure bool
	}
	return prop("ExecStart", []execCommand{{Path: argv[0], Argv: argv}})
}

// bindMount is systemd's (source, destination, ignore-missing, flags).
type bindMount struct {
	Source, Destination string
	IgnoreMissing       bool
	Flags               uint64
}

// ExecProperties are what every add-on process gets: its command,
// identity, environment, working directory, limits and — unless it needs
// file capabilities — its sandbox. binds are further paths the process
// must be able to write (a sidecar's socket directory).
func ExecProperties(t Target, p Paths, spec supervisors.Spec, binds ...string) []sd.Property {
	env := []string{
		"ADDOND_ADDON_ID=" + spec.AddonID,
		"ADDOND_ADDON_VERSION=" + spec.Version,
		"ADDOND_CONFIG=" + p.ConfigFile(spec.AddonID),
		"ADDOND_STATE_DIRECTORY=" + p.StateDir(spec.AddonID),
	}
	if p.StatusSocket != "" {
		env = append(env, "ADDOND_STATUS_SOCKET="+p.StatusSocket)
	}
	props := []sd.Property{
		ExecStart(append([]string{spec.Binary}, spec.Args...)),
		prop("Environment", env),
		prop("WorkingDirectory", p.StateDir(spec.AddonID)),
		prop("SyslogIdentifier", UnitPrefix+spec.AddonID),
		prop("KillMode", "control-group"),
	}
	if t.System {
		props = append(props, prop("User", t.User))
	}
	props = append(props, ResourceProperties(spec.Resources)...)
	if len(spec.Capabilities) == 0 {
		props = append(props, Sandbox(p, spec, binds...)...)
		if !t.System {
			// The manager's bus and private socket: an add-on that
			// reached them could start an unsandboxed unit as addond.
			// And the systemd credentials of addond's own service (its
			// S3 credentials), which its uid could read.
			props = append(props, prop("InaccessiblePaths", []string{fmt.Sprintf("/run/user/%d", t.UID), "-/run/credentials"}))
		}
	}
	return props
}

// Sandbox is DESIGN.md's isolation for add-ons without capabilities: a
// user namespace, the file system read-only, a private /tmp, no new
// privileges, and the agent's runtime tree replaced by an empty one with
// only the add-on's own version (read-only), configuration (read-only)
// and state directory (writable) bound back in. Then everything `systemd-
// analyze security --user` counts that costs a reasonable add-on nothing
// (docs/SECURITY.md has the score): the cgroup tree read-only (an add-on
// cannot leave its unit's cgroup, nor pass for another add-on by moving
// into its cgroup), no namespaces, no kernel tunables, modules, clock or
// hostname, no devices, no realtime,
// set-uid files or personality changes, the system-service system calls of
// the native architecture only, local, internet and netlink sockets only.
// Not set: ProtectKernelLogs (refused by the user manager), ProtectProc
// (accepted, but without effect in a user manager: /proc is not remounted),
// MemoryDenyWriteExecute (it breaks JITs), ProcSubset (inventory add-ons
// read /proc/cpuinfo and the like), PrivateNetwork (add-ons talk to the
// network).
func Sandbox(p Paths, spec supervisors.Spec, binds ...string) []sd.Property {
	ro := []bindMount{
		{Source: filepath.Dir(spec.Binary), Destination: filepath.Dir(spec.Binary)},
		{Source: p.ConfigFile(spec.AddonID), Destination: p.ConfigFile(spec.AddonID)},
	}
	rw := []bindMount{{Source: p.StateDir(spec.AddonID), Destination: p.StateDir(spec.AddonID)}}
	for _, b := range binds {
		rw = append(rw, bindMount{Source: b, Destination: b})
	}
	return []sd.Property{
		prop("PrivateUsers", true),
		prop("ProtectSystem", "strict"),
		prop("ProtectHome", "read-only"),
		prop("PrivateTmp", true),
		prop("NoNewPrivileges", true),
		prop("TemporaryFileSystem", []struct{ Path, Options string }{{p.RuntimeRoot, "ro,mode=0755"}}),
		prop("BindReadOnlyPaths", ro),
		prop("BindPaths", rw),
		prop("ProtectControlGroups", true),
		prop("RestrictNamespaces", uint64(0)), // none may be created
		prop("ProtectKernelTunables", true),
		prop("ProtectKernelModules", true),
		prop("ProtectClock", true),
		prop("ProtectHostname", true),
		prop("PrivateDevices", true),
		prop("PrivateIPC", true),
		prop("KeyringMode", "private"),
		prop("LockPersonality", true),
		prop("RestrictRealtime", true),
		prop("RestrictSUIDSGID", true),
		prop("CapabilityBoundingSet", uint64(0)),
		prop("UMask", uint32(0o077)),
		prop("SystemCallArchitectures", []string{"native"}),
		prop("SystemCallFilter", allowList{Allow: true, List: []string{"@system-service"}}),
		prop("SystemCallErrorNumber", int32(unix.EPERM)),
		prop("RestrictAddressFamilies", allowList{Allow: true, List: []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}}),
	}
}

// allowList is the D-Bus (bas) of SystemCallFilter and
// RestrictAddressFamilies: an allow list (true) or a deny list.
type allowList struct {
	Allow bool
	List  []string
}

// UnitState is what the backends read of a service unit.
type UnitState struct {
	Name         string
	LoadState    string // loaded, not-found, …
	ActiveState  string // active, activating, deactivating, inactive, failed, reloading
	SubState     string // running, auto-restart, exited, dead, failed, …
	Description  string
	InvocationID string // hex; changes with every start
	MainPID      int
	NRestarts    int
	Result       string // success, exit-code, signal, timeout, start-limit-hit, …
	ExecCode     int    // CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3
	ExecStatus   int    // exit status, or the signal
	ExitTime     uint64 // ExecMainExitTimestamp (µs)
	// ActiveSince is when the unit last became active, on the monotonic
	// clock (CLOCK_MONOTONIC, which the manager shares with addond): unlike
	// the wall clock it never steps. Zero: never active.
	ActiveSince time.Duration
}

// ActiveFor is how long the unit has been active (zero if it never was).
func (u UnitState) ActiveFor() time.Duration {
	if u.ActiveSince == 0 {
		return 0
	}
	return monotonicNow() - u.ActiveSince
}

// monotonicNow reads CLOCK_MONOTONIC, the clock of systemd's *Monotonic
// timestamps.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// Exists is whether the manager knows the unit.
func (u UnitState) Exists() bool { return u.LoadState == "loaded" }

// Up is whether the unit runs or is being started.
func (u UnitState) Up() bool {
	return u.ActiveState == "active" || u.ActiveState == "activating" || u.ActiveState == "reloading"
}

// Exit describes how the main process ended.
func (u UnitState) Exit() string {
	if u.Result == "oom-kill" {
		return "killed by the OOM killer (over its memory limit)"
	}
	switch u.ExecCode {
	case 1:
		return fmt.Sprintf("exited with status %d", u.ExecStatus)
	case 2, 3:
		return fmt.Sprintf("killed by signal %d", u.ExecStatus)
	}
	if u.Result != "" && u.Result != "success" {
		return "result " + u.Result
	}
	return "ended"
}

// ExitCause is why the unit's main process ended, for the reconciler.
func (u UnitState) ExitCause() supervisors.Cause {
	if u.Result == "oom-kill" {
		return supervisors.CauseOOM
	}
	return supervisors.CauseExited
}

// ReadUnit reads a service unit's state; a unit the manager does not know
// has LoadState "not-found" and no error.
//
// The unit's and the service's properties are two reads: a restart
// between them would pair one invocation's state with the next one's
// (reset) exit status. So the unit's are read again after the service's,
// and the service's read again (a few times at most) until the unit's
// agree on both sides.
func ReadUnit(ctx context.Context, conn *sd.Conn, unit string) (UnitState, error) {
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return UnitState{Name: unit}, err
	}
	for try := 1; ; try++ {
		u := unitState(unit, props)
		if !u.Exists() || !strings.HasSuffix(unit, ".service") {
			return u, nil
		}
		if BetweenReads != nil {
			BetweenReads(ctx, unit)
		}
		sp, err := conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
		if err != nil {
			return u, err
		}
		u.setService(sp)
		again, err := conn.GetUnitPropertiesContext(ctx, unit)
		if err != nil {
			return u, err
		}
		if try == 3 || unitState(unit, again).sameRun(u) {
			return u, nil
		}
		props = again
	}
}

// BetweenReads, when set (tests only), runs between ReadUnit's read of
// the unit's properties and of the service's, with the read's context
// (which tells a test's reads from others): a test restarts the unit
// there to order the race ReadUnit guards against.
var BetweenReads func(ctx context.Context, unit string)

// unitState is what the unit's own properties say.
func unitState(unit string, props map[string]any) UnitState {
	u := UnitState{Name: unit}
	u.LoadState, u.ActiveState, u.SubState = propString(props, "LoadState"), propString(props, "ActiveState"), propString(props, "SubState")
	u.Description = propString(props, "Description")
	if id, ok := props["InvocationID"].([]byte); ok {
		u.InvocationID = hex.EncodeToString(id)
	}
	if t, ok := props["ActiveEnterTimestampMonotonic"].(uint64); ok && t > 0 {
		u.ActiveSince = time.Duration(t) * time.Microsecond
	}
	return u
}

// sameRun: the same invocation, in the same state.
func (u UnitState) sameRun(v UnitState) bool {
	return u.InvocationID == v.InvocationID && u.ActiveState == v.ActiveState && u.SubState == v.SubState
}

// setService adds what the service's properties say.
func (u *UnitState) setService(sp map[string]any) {
	num := func(k string) int64 {
		switch v := sp[k].(type) {
		case uint32:
			return int64(v)
		case int32:
			return int64(v)
		case uint64:
			return int64(v)
		case int64:
			return v
		}
		return 0
	}
	u.MainPID, u.NRestarts = int(num("MainPID")), int(num("NRestarts"))
	u.ExecCode, u.ExecStatus = int(num("ExecMainCode")), int(num("ExecMainStatus"))
	u.ExitTime = uint64(num("ExecMainExitTimestamp"))
	u.Result = propString(sp, "Result")
}

func propString(m map[string]any, k string) string { s, _ := m[k].(string); return s }

// WaitJob waits for a job started with ch to finish; anything but "done"
// is an error naming the unit.
func WaitJob(ctx context.Context, unit string, ch <-chan string) error {
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("unit %s: job %s", unit, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("unit %s: %w", unit, ctx.Err())
	}
}

// StopUnit stops a unit and waits for it, and clears a failed state so
// the name can be reused. A unit that does not exist is already stopped.
func StopUnit(ctx context.Context, conn *sd.Conn, unit string) error {
	ch := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, unit, "replace", ch); err != nil {
		if isNoSuchUnit(err) {
			return nil
		}
		return fmt.Errorf("stop %s: %w", unit, err)
	}
	err := WaitJob(ctx, unit, ch)
	conn.ResetFailedUnitContext(ctx, unit)
	return err
}

func isNoSuchUnit(err error) bool {
	var de godbus.Error
	if errors.As(err, &de) {
		return de.Name == "org.freedesktop.systemd1.NoSuchUnit"
	}
	return strings.Contains(err.Error(), "not loaded")
}

// ListAddonUnits lists the units named addond-* the manager has loaded.
func ListAddonUnits(ctx context.Context, conn *sd.Conn) ([]sd.UnitStatus, error) {
	return conn.ListUnitsByPatternsContext(ctx, nil, []string{UnitPrefix + "*"})
}
