package capabilities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// A capped add-on — one granted os_capabilities — runs under a uid that is
// neither addond's nor any other add-on's: as addond-<id>.service in the
// system manager with a dynamic user of its own, started and stopped by
// the helper from a fixed template (cappedProperties). addond asks for it
// and watches the unit on the system bus, read-only; it chooses nothing of
// what makes the unit privileged. The template: the capped copy as
// ExecStart, CapabilityBoundingSet and AmbientCapabilities exactly the
// grant the copy carries, no new privileges, and every sandboxing option
// that does not cancel the grant; addond's tree, its runtime directory,
// every service's credentials and the other capped add-ons' directories
// are out of its sight.
//
// Each one's runtime directory, <RunRoot>/<id>, is root:<agent group>
// 0750 and holds what the helper writes for it — config.json and the
// handshake file a sidecar's stdout goes to, both root:<agent group> 0640
// — and sock/, root:<agent group> 0770, the one place addond and the
// add-on both write: go-plugin's socket directory. Nothing the helper or
// the manager opens as root is in a directory addond can write.

const (
	// DefaultRunRoot holds the capped add-ons' runtime directories
	// (packaging's tmpfiles makes it root:addond 0750).
	DefaultRunRoot = "/run/addond-cap"
	// cappedStateRoot: each one's state directory is
	// /var/lib/addond-cap/<id> (StateDirectory=, the dynamic user's).
	cappedStateRoot = "addond-cap"
	// maxConfig bounds a capped add-on's configuration.
	maxConfig = 256 << 10
)

// StartRequest asks for a capped add-on's unit.
type StartRequest struct {
	AddonID string          `json:"addon_id"`
	Version string          `json:"version"`
	File    string          `json:"file"`
	Args    []string        `json:"args,omitempty"`
	Config  json.RawMessage `json:"config,omitempty"`
	// Sidecar: a go-plugin sidecar, whose stdout is the handshake file in
	// its runtime directory and whose socket is made in sock/; Env is
	// go-plugin's environment (PLUGIN_* and the SDK's cookie only).
	Sidecar bool     `json:"sidecar,omitempty"`
	Env     []string `json:"env,omitempty"`
	// Description is the unit's: addond finds what it runs in it (its
	// fingerprint); it must name the add-on and its version.
	Description string `json:"description"`
	// Restart: the manager restarts it (a service), with the start limit
	// as the circuit; else addond does (a sidecar).
	Restart *Restart `json:"restart,omitempty"`
	// Resources are its limits.
	Resources *Resources `json:"resources,omitempty"`
	// StatusSocket is addond's status socket, where the add-on may ask
	// for helper runs (ADDOND_STATUS_SOCKET; the unit joins StatusGroup
	// to reach it).
	StatusSocket string `json:"status_socket,omitempty"`
}

// StatusGroup is the group that may connect to addond's status socket.
const StatusGroup = "addond-status"

// Restart is a service's restart policy, within bounds.
type Restart struct {
	Delay    time.Duration `json:"delay"`
	Interval time.Duration `json:"interval"`
	Burst    int           `json:"burst"`
}

// Resources are a capped add-on's limits.
type Resources struct {
	CPUMaxPercent   int   `json:"cpu_max_percent,omitempty"`
	MemoryMaxBytes  int64 `json:"memory_max_bytes,omitempty"`
	MemoryHighBytes int64 `json:"memory_high_bytes,omitempty"`
	TasksMax        int64 `json:"tasks_max,omitempty"`
}

// Started is the unit a StartRequest made.
type Started struct {
	Unit string   `json:"unit"`
	Caps []string `json:"caps"`
}

// CappedUnit is a capped add-on's unit name in the system manager.
func CappedUnit(id string) string { return "addond-" + id + ".service" }

// RunDir is a capped add-on's runtime directory.
func (c *Config) RunDir(id string) string { return filepath.Join(c.runRoot(), id) }

// SocketDir is where addond makes a capped sidecar's socket directory.
func (c *Config) SocketDir(id string) string { return filepath.Join(c.RunDir(id), "sock") }

// HandshakeFile is where a capped sidecar's stdout goes.
func (c *Config) HandshakeFile(id string) string { return filepath.Join(c.RunDir(id), "handshake") }

func (c *Config) runRoot() string {
	if c.RunRoot != "" {
		return c.RunRoot
	}
	return DefaultRunRoot
}

// envNameRe: the environment addond may give a sidecar: go-plugin's.
var envNameRe = regexp.MustCompile(`^(PLUGIN_[A-Z0-9_]{1,64}|ADDOND_PLUGIN)$`)

// descriptionPrefix begins every add-on unit's description
// (systemd.Description): "addond add-on <id> <version> [<fingerprint>]".
const descriptionPrefix = "addond add-on "

// unitDescription is the description of id@version's unit up to its
// fingerprint.
func unitDescription(id, version string) string { return descriptionPrefix + id + " " + version + " " }

// fingerprintRe is the end of addond's unit description: the unit's
// fingerprint in brackets (systemd.Description).
var fingerprintRe = regexp.MustCompile(`^\[[0-9a-f]{1,64}\]$`)

// hasControl reports a control character or invalid UTF-8: nothing of
// that kind goes into a unit, escaped by systemd or not.
func hasControl(s string) bool {
	return !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }) >= 0
}

// check refuses a request the template cannot take as it is.
func (r StartRequest) check(c *Config) error {
	if err := checkCopyName(r.AddonID, r.Version, r.File); err != nil {
		return err
	}
	if len(r.Args) > 256 {
		return fmt.Errorf("%d arguments, at most 256", len(r.Args))
	}
	for _, a := range r.Args {
		if hasControl(a) || len(a) > 4096 {
			return errors.New("an argument holds a control character or is longer than 4096 bytes")
		}
	}
	if len(r.Config) > maxConfig {
		return fmt.Errorf("configuration larger than %d bytes", maxConfig)
	}
	if len(r.Config) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(r.Config, &obj); err != nil {
			return fmt.Errorf("configuration: not a JSON object: %v", err)
		}
	}
	if !r.Sidecar && len(r.Env) > 0 {
		return errors.New("go-plugin's environment is for sidecars")
	}
	if len(r.Env) > 16 {
		return fmt.Errorf("%d environment entries, at most 16", len(r.Env))
	}
	for _, kv := range r.Env {
		k, v, ok := strings.Cut(kv, "=")
		// (A value may be PEM, lines and all: systemd escapes it.)
		if !ok || !envNameRe.MatchString(k) || hasControl(strings.ReplaceAll(v, "\n", "")) || len(v) > 8192 {
			return fmt.Errorf("environment entry %.40q: only go-plugin's (PLUGIN_*, ADDOND_PLUGIN)", kv)
		}
		if k == "PLUGIN_UNIX_SOCKET_DIR" && filepath.Dir(filepath.Clean(v)) != c.SocketDir(r.AddonID) {
			return fmt.Errorf("PLUGIN_UNIX_SOCKET_DIR %q: not in %s", v, c.SocketDir(r.AddonID))
		}
	}
	// Exactly addond's form: systemd writes a description into the
	// transient unit file unescaped, and a daemon-reload would read a
	// carriage return in it as the start of a new directive.
	if fp, ok := strings.CutPrefix(r.Description, unitDescription(r.AddonID, r.Version)); !ok || !fingerprintRe.MatchString(fp) {
		return fmt.Errorf("description %q: not one of addond's for %s %s", r.Description, r.AddonID, r.Version)
	}
	if rs := r.Restart; rs != nil {
		if r.Sidecar {
			return errors.New("a sidecar is restarted by addond, not the manager")
		}
		if rs.Delay < 100*time.Millisecond || rs.Delay > time.Hour || rs.Interval < time.Second || rs.Interval > 24*time.Hour || rs.Burst < 1 || rs.Burst > 1000 {
			return fmt.Errorf("restart policy %+v: out of bounds", *rs)
		}
	} else if !r.Sidecar {
		return errors.New("a service needs a restart policy")
	}
	if s := r.StatusSocket; s != "" && (!filepath.IsAbs(s) || filepath.Clean(s) != s || len(s) > 107 || hasControl(s)) {
		return fmt.Errorf("status socket %q: not a clean absolute path", s)
	}
	if res := r.Resources; res != nil && (res.CPUMaxPercent < 0 || res.CPUMaxPercent > 100*1024 || res.MemoryMaxBytes < 0 ||
		res.MemoryHighBytes < 0 || res.TasksMax < 0 || res.TasksMax > 1<<22) {
		return errors.New("resources out of range")
	}
	return nil
}

// Prepare stops add-on id's unit (if it is addond's) and makes its
// runtime directory, so that addond can make a sidecar's socket directory
// in sock/ before asking for the unit.
func (s *Server) Prepare(ctx context.Context, id string) error {
	if !addonIDRe.MatchString(id) {
		return fmt.Errorf("addon id %q: not a valid add-on id", id)
	}
	// Only for an add-on with a capped copy: a runtime directory (and a
	// unit the manager loads to look at) for any name would let addond
	// fill /run.
	if fi, err := os.Lstat(filepath.Join(s.Config.PrivilegedRoot, id)); err != nil || !fi.IsDir() {
		return fmt.Errorf("addon %q: no capped copy held for it", id)
	}
	_, gid, err := s.Config.agent()
	if err != nil {
		return err
	}
	conn, err := s.systemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := stopOurs(ctx, conn, CappedUnit(id)); err != nil {
		return err
	}
	return makeRunDir(&s.Config, id, gid)
}

// Start starts a capped add-on: its copy must be one the current keys,
// scopes and policy still grant; the unit gets exactly the capabilities
// the copy carries.
func (s *Server) Start(ctx context.Context, req StartRequest) (*Started, error) {
	if err := req.check(&s.Config); err != nil {
		return nil, fmt.Errorf("addon %q: %w", req.AddonID, err)
	}
	unlock, err := lockPrivileged(s.Config.PrivilegedRoot)
	if err != nil {
		return nil, err
	}
	defer unlock() // a revalidation waits: a unit never starts from a copy being revoked
	grant, err := s.grant(req)
	if err != nil {
		return nil, err
	}
	_, gid, err := s.Config.agent()
	if err != nil {
		return nil, err
	}
	group, err := user.LookupGroupId(strconv.Itoa(gid))
	if err != nil {
		return nil, fmt.Errorf("agent group %d: %w", gid, err)
	}
	conn, err := s.systemd(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	unit := CappedUnit(req.AddonID)
	if err := stopOurs(ctx, conn, unit); err != nil {
		return nil, err
	}
	if err := makeRunDir(&s.Config, req.AddonID, gid); err != nil {
		return nil, err
	}
	if err := writeRunFiles(&s.Config, req, gid); err != nil {
		return nil, err
	}
	ch := make(chan string, 1)
	props := cappedProperties(&s.Config, req, group.Name, grant)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, ch); err != nil {
		return nil, fmt.Errorf("addon %q: create %s: %w", req.AddonID, unit, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return nil, fmt.Errorf("addon %q: start %s: job %s", req.AddonID, unit, res)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("addon %q: start %s: %w", req.AddonID, unit, ctx.Err())
	}
	return &Started{Unit: unit, Caps: grant.Names()}, nil
}

// Stop stops a capped add-on's unit, if it is one of addond's.
func (s *Server) Stop(ctx context.Context, id string) error {
	if !addonIDRe.MatchString(id) {
		return fmt.Errorf("addon id %q: not a valid add-on id", id)
	}
	conn, err := s.systemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := stopOurs(ctx, conn, CappedUnit(id)); err != nil {
		return err
	}
	// Its runtime directory goes with it (a start makes it anew).
	if err := os.RemoveAll(s.Config.RunDir(id)); err != nil {
		return fmt.Errorf("addon %q: %w", id, err)
	}
	return nil
}

// grant is what the copy for req carries, when it is still granted.
func (s *Server) grant(req StartRequest) (Set, error) {
	refuse := func(err error) (Set, error) {
		return 0, fmt.Errorf("addon %q version %q: no capped copy to start: %w", req.AddonID, req.Version, err)
	}
	keys, err := LoadTrust(s.Config.Trust...)
	if err != nil {
		return refuse(err)
	}
	allowed, err := s.Config.policy()
	if err != nil {
		return refuse(err)
	}
	priv, err := openPrivileged(s.Config.PrivilegedRoot)
	if err != nil {
		return refuse(err)
	}
	defer priv.Close()
	if err := stillGranted(priv, keys, allowed, req.AddonID, req.Version); err != nil {
		if why := revokedReason(priv, req.AddonID, req.Version); why != "" {
			err = fmt.Errorf("its copy was revoked: %s", why)
		}
		return refuse(err)
	}
	caps, err := copyCaps(priv, filepath.Join(req.AddonID, req.Version, req.File))
	if err != nil {
		return refuse(err)
	}
	if caps == 0 {
		return refuse(errors.New("the copy carries no capability"))
	}
	return caps, nil
}

// makeRunDir makes (or checks) the run root and add-on id's directory in
// it, with sock/ inside. What is there but not the helper's own — a link,
// a file, a directory someone else owns — is removed first.
func makeRunDir(c *Config, id string, gid int) error {
	root := c.runRoot()
	if err := ownedDir(root, gid, 0o750, false); err != nil {
		return err
	}
	dir := c.RunDir(id)
	if err := ownedDir(dir, gid, 0o750, true); err != nil {
		return err
	}
	return ownedDir(c.SocketDir(id), gid, 0o770, true)
}

// ownedDir makes path a directory root:gid with mode. One that exists
// must be a real directory of root's (replace: else it is removed and
// made anew; otherwise refused); its group and mode are set again.
func ownedDir(path string, gid int, mode os.FileMode, replace bool) error {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if err == nil && (st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != 0) {
		if !replace {
			return fmt.Errorf("%s: not a directory of root's", path)
		}
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		err = unix.ENOENT
	}
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdir(path, 0o700); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	} else if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// Through a descriptor of the directory itself: nothing is followed.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, 0, gid); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeRunFiles writes a start's configuration and an empty handshake
// file, root:<agent group> 0640, in the add-on's runtime directory (which
// only root writes).
func writeRunFiles(c *Config, req StartRequest, gid int) error {
	config := []byte(req.Config)
	if len(config) == 0 {
		config = []byte("{}")
	}
	dir := c.RunDir(req.AddonID)
	for path, data := range map[string][]byte{filepath.Join(dir, "config.json"): config, c.HandshakeFile(req.AddonID): nil} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", path, err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o640)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		_, err = f.Write(data)
		if err == nil {
			err = f.Chown(0, gid)
		}
		if err == nil {
			err = f.Chmod(0o640)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// stopOurs stops unit when it is an addond add-on's (its description says
// so) and waits for it; another unit of that name is refused.
func stopOurs(ctx context.Context, conn *sd.Conn, unit string) error {
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return fmt.Errorf("%s: %w", unit, err)
	}
	if load, _ := props["LoadState"].(string); load != "loaded" {
		return nil
	}
	if desc, _ := props["Description"].(string); !strings.HasPrefix(desc, descriptionPrefix) {
		return fmt.Errorf("%s is not an addond add-on's unit (%q)", unit, desc)
	}
	ch := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, unit, "replace", ch); err != nil {
		var de godbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil
		}
		return fmt.Errorf("stop %s: %w", unit, err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", unit, ctx.Err())
	}
	conn.ResetFailedUnitContext(ctx, unit)
	return nil
}

// stopRevoked stops the units that run a copy Revalidate removed (their
// description names the version).
func (s *Server) stopRevoked(ctx context.Context, revoked []Revoked) error {
	if len(revoked) == 0 {
		return nil
	}
	conn, err := s.systemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var errs []error
	for _, r := range revoked {
		unit := CappedUnit(r.AddonID)
		props, err := conn.GetUnitPropertiesContext(ctx, unit)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if desc, _ := props["Description"].(string); strings.HasPrefix(desc, unitDescription(r.AddonID, r.Version)) {
			if err := stopOurs(ctx, conn, unit); err != nil {
				errs = append(errs, err)
			} else {
				s.Log.Warn("stopped a capped add-on whose copy was revoked", "addon_id", r.AddonID, "version", r.Version, "unit", unit)
			}
		}
	}
	return errors.Join(errs...)
}

// systemd connects to the system manager on its private socket.
func (s *Server) systemd(ctx context.Context) (*sd.Conn, error) {
	dial := s.Systemd
	if dial == nil {
		dial = sd.NewSystemdConnectionContext
	}
	conn, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("system manager: %w", err)
	}
	return conn, nil
}

// cappedProperties is the fixed template of a capped add-on's unit.
func cappedProperties(c *Config, req StartRequest, group string, grant Set) []sd.Property {
	prop := func(name string, v any) sd.Property { return sd.Property{Name: name, Value: godbus.MakeVariant(v)} }
	type execCommand struct {
		Path          string
		Argv          []string
		IgnoreFailure bool
	}
	type bindMount struct {
		Source, Destination string
		IgnoreMissing       bool
		Flags               uint64
	}
	type allowList struct {
		Allow bool
		List  []string
	}
	usec := func(d time.Duration) uint64 { return uint64(d / time.Microsecond) }
	copyPath := filepath.Join(c.PrivilegedRoot, req.AddonID, req.Version, req.File)
	dir, sock := c.RunDir(req.AddonID), c.SocketDir(req.AddonID)
	state := filepath.Join("/var/lib", cappedStateRoot, req.AddonID)
	env := append([]string{
		"ADDOND_ADDON_ID=" + req.AddonID,
		"ADDOND_ADDON_VERSION=" + req.Version,
		"ADDOND_CONFIG=" + filepath.Join(dir, "config.json"),
		"ADDOND_STATE_DIRECTORY=" + state,
	}, req.Env...)
	if req.StatusSocket != "" {
		env = append(env, "ADDOND_STATUS_SOCKET="+req.StatusSocket)
	}
	caps := uint64(grant)
	props := []sd.Property{
		prop("Description", req.Description),
		prop("ExecStart", []execCommand{{Path: copyPath, Argv: append([]string{copyPath}, req.Args...)}}),
		prop("Type", "exec"),
		prop("Environment", env),
		// A uid of its own, allocated while it runs: not addond's, not
		// another add-on's. The agent's group, to run its copy (root:<agent
		// group> 0750) and to make its socket where addond reaches it.
		prop("DynamicUser", true),
		prop("Group", group),
		prop("StateDirectory", []string{filepath.Join(cappedStateRoot, req.AddonID)}),
		prop("WorkingDirectory", state),
		prop("SyslogIdentifier", "addond-"+req.AddonID),
		prop("KillMode", "control-group"),
		prop("TimeoutStopUSec", usec(10*time.Second)),
		// Exactly the grant.
		prop("CapabilityBoundingSet", caps),
		prop("AmbientCapabilities", caps),
		prop("NoNewPrivileges", true),
		prop("SecureBits", int32(0)),
		// Everything else that does not cancel the grant.
		prop("ProtectSystem", "strict"),
		prop("ProtectHome", "yes"),
		prop("PrivateTmp", true),
		prop("PrivateIPC", true),
		prop("RemoveIPC", true),
		prop("ProtectControlGroups", true),
		prop("ProtectProc", "invisible"),
		prop("LockPersonality", true),
		prop("RestrictRealtime", true),
		prop("RestrictSUIDSGID", true),
		prop("KeyringMode", "private"),
		prop("UMask", uint32(0o027)), // addond's group reads what it makes
		prop("SystemCallArchitectures", []string{"native"}),
		prop("SystemCallFilter", allowList{Allow: true, List: syscallsFor(grant)}),
		prop("SystemCallErrorNumber", int32(unix.EPERM)),
		prop("RestrictAddressFamilies", allowList{Allow: true, List: addressFamiliesFor(grant)}),
		// Its own runtime directory only, sock/ the one writable part.
		prop("TemporaryFileSystem", []struct{ Path, Options string }{{c.runRoot(), "ro,mode=0755"}}),
		prop("BindReadOnlyPaths", []bindMount{{Source: dir, Destination: dir}}),
		prop("BindPaths", []bindMount{{Source: sock, Destination: sock}}),
		// addond's tree, configuration and sockets, the helper's, every
		// service's credentials and user manager.
		prop("InaccessiblePaths", inaccessible(c)),
	}
	for _, o := range sandboxOptions {
		if grant&o.cancels == 0 {
			props = append(props, prop(o.name, o.value))
		}
	}
	if req.StatusSocket != "" {
		if _, err := user.LookupGroup(StatusGroup); err == nil {
			props = append(props, prop("SupplementaryGroups", []string{StatusGroup}))
		}
	}
	if req.Sidecar {
		props = append(props,
			prop("Restart", "no"), // addond restarts it, with backoff
			prop("StandardOutputFileToTruncate", c.HandshakeFile(req.AddonID)),
			prop("StandardError", "journal"))
	} else {
		rs := req.Restart
		props = append(props,
			prop("Restart", "always"),
			prop("RestartUSec", usec(rs.Delay)),
			prop("StartLimitIntervalUSec", usec(rs.Interval)),
			prop("StartLimitBurst", uint32(rs.Burst)))
	}
	if r := req.Resources; r != nil {
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
	}
	return props
}

// sandboxOptions are the settings that take a capability's power away,
// each with the capabilities it would cancel: one is set only when the
// grant holds none of them (an add-on granted cap_sys_time must be able to
// set the clock).
var sandboxOptions = []struct {
	name    string
	value   any
	cancels Set
}{
	{"ProtectClock", true, capSet("sys_time", "wake_alarm")},
	{"ProtectKernelModules", true, capSet("sys_module")},
	{"ProtectKernelLogs", true, capSet("syslog")},
	{"ProtectKernelTunables", true, capSet("sys_admin", "net_admin")},
	{"ProtectHostname", true, capSet("sys_admin")},
	{"PrivateDevices", true, capSet("mknod", "sys_rawio")},
	{"RestrictNamespaces", uint64(0), capSet("sys_admin")},
}

// syscallGroups are the system call groups beyond @system-service a
// capability is for.
var syscallGroups = map[string][]string{
	"sys_time":   {"@clock"},
	"wake_alarm": {"@clock"},
	"sys_module": {"@module"},
	"sys_rawio":  {"@raw-io"},
	"sys_boot":   {"@reboot"},
	"sys_admin":  {"@mount", "@swap"},
	"sys_ptrace": {"@debug"},
	"sys_pacct":  {"@privileged"},
}

// syscallsFor is the system call allow list for a grant.
func syscallsFor(grant Set) []string {
	list := []string{"@system-service"}
	for _, c := range grant.Caps() {
		for _, g := range syscallGroups[strings.TrimPrefix(c.String(), "cap_")] {
			if !slices.Contains(list, g) {
				list = append(list, g)
			}
		}
	}
	return list
}

// inaccessible is what a capped add-on cannot see: addond's tree (the
// packaged one and the configured one), configuration and sockets, the
// helper's socket, every service's credentials and user manager.
func inaccessible(c *Config) []string {
	paths := []string{"-/var/lib/addond", "-/etc/addond", "-/run/addond-updater.sock", "-/run/credentials", "-/run/user", "-/run/dbus", "-/run/systemd/private"}
	within := func(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }
	if r := filepath.Clean(c.RuntimeRoot); filepath.IsAbs(r) && r != "/" && !slices.Contains(paths, "-"+r) &&
		!within(filepath.Clean(c.PrivilegedRoot), r) && !within(c.runRoot(), r) {
		paths = append(paths, "-"+r)
	}
	return paths
}

// addressFamiliesFor is the socket families a grant may use: local and
// internet, netlink, and packet sockets only with cap_net_raw or
// cap_net_admin (without them the kernel refuses those anyway).
func addressFamiliesFor(grant Set) []string {
	families := []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
	if grant&capSet("net_raw", "net_admin") != 0 {
		families = append(families, "AF_PACKET")
	}
	return families
}

func capSet(names ...string) Set {
	s, err := ParseSet(names)
	if err != nil {
		panic(err)
	}
	return s
}
