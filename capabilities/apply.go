package capabilities

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultPrivilegedRoot is the root-owned tree of capped copies.
const DefaultPrivilegedRoot = "/var/lib/addond-privileged"

// Config is what the helper itself decides — never the requester.
type Config struct {
	RuntimeRoot    string   // the agent's tree the staged binaries are in
	PrivilegedRoot string   // the root-owned tree of capped copies
	Trust          []string // key files or directories
	Policy         string   // the allow-list file
	AgentUser      string   // owns the staged binaries; its group may run the copies
	// RunRoot holds the capped add-ons' runtime directories
	// [DefaultRunRoot].
	RunRoot string
}

// ApplyRequest asks for a capped copy of a staged binary.
type ApplyRequest struct {
	AddonID  string   `json:"addon_id"`
	Version  string   `json:"version"`
	File     string   `json:"file"`
	Platform string   `json:"platform,omitempty"` // os/arch; default the helper's own
	Caps     []string `json:"caps,omitempty"`     // default: all the package grants (and policy allows)
	// Package is the exact bytes of the signed package.json, Signature
	// its .sig line.
	Package   []byte `json:"package"`
	Signature string `json:"signature"`
}

// Applied is a capped copy.
type Applied struct {
	Path string   `json:"path"`
	Caps []string `json:"caps"`
}

var addonIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// segment checks a path segment as the agent's own rules do.
func segment(what, s string, max int) error {
	bad := func(why string) error { return fmt.Errorf("%s %q: %s", what, s, why) }
	switch {
	case s == "":
		return bad("empty")
	case s == "." || s == "..":
		return bad("is a relative directory name")
	case len(s) > max:
		return bad(fmt.Sprintf("longer than %d characters", max))
	case s[0] == '.' || s[0] == '-':
		return bad("starts with " + string(s[0]))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == '+', c == '~':
		default:
			return bad(fmt.Sprintf("contains %q", c))
		}
	}
	return nil
}

// checkCopyName checks what names a capped copy: the add-on's id, and
// its version and file name as path segments.
func checkCopyName(id, version, file string) error {
	if !addonIDRe.MatchString(id) {
		return fmt.Errorf("addon id %q: not a valid add-on id", id)
	}
	if err := segment("version", version, 64); err != nil {
		return err
	}
	return segment("file", file, 255)
}

func (r *ApplyRequest) check() error {
	if err := checkCopyName(r.AddonID, r.Version, r.File); err != nil {
		return err
	}
	if r.Platform == "" {
		r.Platform = runtime.GOOS + "/" + runtime.GOARCH
	}
	return nil
}

// agent is the agent user's ids.
func (c *Config) agent() (uid, gid int, err error) {
	u, err := user.Lookup(c.AgentUser)
	if err != nil {
		return 0, 0, fmt.Errorf("agent user %q: %w", c.AgentUser, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if uid == 0 {
		return 0, 0, fmt.Errorf("agent user %q is root", c.AgentUser)
	}
	return uid, gid, nil
}

// Policy reads the allow-list: root's file alone.
func (c *Config) policy() (Set, error) {
	f, err := os.OpenFile(c.Policy, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("policy: %s is not a regular file", c.Policy)
	}
	if err := rootOwned(c.Policy, fi); err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	return ParsePolicy(data)
}

// Apply makes the capped copy req asks for, or refuses with the reason.
// Trusted are the helper's Config, its trust keys and its policy — not
// the request: the package must verify, name this add-on and version,
// and grant every capability, which the policy must allow too; the file
// must be the agent's staged binary (reached without following any
// symbolic link, a regular file with one link, owned by the agent) with
// exactly the package's bytes. Nothing is written outside
// PrivilegedRoot/<id>/<version>/, and the copy appears there whole or
// not at all.
func Apply(cfg Config, req ApplyRequest) (*Applied, error) {
	return applyRevalidated(cfg, req, nil)
}

// applyRevalidated is Apply; revoked, when set, learns what the
// revalidation before the copy removed (the server stops their units),
// under the same lock.
func applyRevalidated(cfg Config, req ApplyRequest, revoked func([]Revoked, error)) (*Applied, error) {
	unlock, err := lockPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return nil, fmt.Errorf("addon %q version %q: %w", req.AddonID, req.Version, err)
	}
	defer unlock()
	// What trust and policy no longer allow goes first; trust or policy
	// that cannot be read fail the apply below.
	r, err := revalidate(cfg)
	if revoked != nil {
		revoked(r, err)
	}
	a, err := apply(cfg, req)
	if err != nil {
		return nil, fmt.Errorf("addon %q version %q: %w", req.AddonID, req.Version, err)
	}
	return a, nil
}

func apply(cfg Config, req ApplyRequest) (*Applied, error) {
	if err := req.check(); err != nil {
		return nil, err
	}
	keys, err := LoadTrust(cfg.Trust...)
	if err != nil {
		return nil, err
	}
	pkg, signer, err := VerifyPackage(req.Package, req.Signature, keys)
	if err != nil {
		return nil, err
	}
	if pkg.AddonID != req.AddonID || pkg.Version != req.Version {
		return nil, fmt.Errorf("the signed package is %q version %q, not this add-on and version", pkg.AddonID, pkg.Version)
	}
	art, ok := pkg.Artifacts[req.Platform]
	if !ok {
		return nil, fmt.Errorf("the signed package has no artifact for %s", req.Platform)
	}
	name := art.BinaryName
	if name == "" {
		name = filepath.Base(art.ObjectKey)
	}
	if name != req.File {
		return nil, fmt.Errorf("the signed package's binary is %q, not %q", name, req.File)
	}
	want, err := hex.DecodeString(art.SHA256)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("the signed package's sha256 %q is not a SHA-256", art.SHA256)
	}
	granted, err := ParseSet(pkg.OSCapabilities)
	if err != nil {
		return nil, fmt.Errorf("the signed package's os_capabilities: %w", err)
	}
	caps := granted
	if len(req.Caps) > 0 {
		if caps, err = ParseSet(req.Caps); err != nil {
			return nil, err
		}
	}
	if extra := caps &^ granted; extra != 0 {
		return nil, fmt.Errorf("%s not granted by the signed package (it grants %q)", extra, granted.String())
	}
	allowed, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	if extra := caps &^ allowed; extra != 0 {
		return nil, fmt.Errorf("%s not allowed by the policy %s", extra, cfg.Policy)
	}
	if err := signer.Allows(req.AddonID, caps); err != nil {
		return nil, err
	}
	if caps == 0 {
		return nil, errors.New("no capabilities to grant")
	}
	uid, gid, err := cfg.agent()
	if err != nil {
		return nil, err
	}

	src, err := openStaged(cfg.RuntimeRoot, req, uid)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	priv, err := openPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return nil, err
	}
	defer priv.Close()
	// A version whose copy the helper still holds, from this very signed
	// package, is no downgrade: it was capped when it was the highest,
	// and is kept as the last-known-good (Revalidate, above, removed it
	// if trust or policy no longer allow it).
	if !heldCopy(priv, req) {
		if err := checkFloor(priv, req.AddonID, req.Version, pkg.AllowDowngrade); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(req.AddonID, req.Version)
	for _, d := range []string{req.AddonID, dir} {
		if err := priv.Mkdir(d, 0o755); err == nil {
			// Whatever the umask: the agent must be able to reach its copy.
			priv.Chmod(d, 0o755)
		} else if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("privileged tree: %w", err)
		}
		fi, err := priv.Lstat(d)
		if err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("privileged tree: %s is not a directory", d)
		}
		if err := rootOwned(d, fi); err != nil {
			return nil, fmt.Errorf("privileged tree: %w", err)
		}
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	// Not derived from req.File: a name of 255 bytes leaves no room.
	tmpName := filepath.Join(dir, ".tmp-"+hex.EncodeToString(rnd[:]))
	tmp, err := priv.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o700)
	if err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	done := false
	defer func() {
		tmp.Close()
		if !done {
			priv.Remove(tmpName)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(src, art.Size+1))
	if err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	if n != art.Size || !bytes.Equal(h.Sum(nil), want) { // art.SHA256 may be upper case
		return nil, fmt.Errorf("the staged file's sha256 %x (%d bytes) is not the signed package's %s (%d bytes)", h.Sum(nil), n, art.SHA256, art.Size)
	}
	// root:<agent group> 0750: the agent may run it, no other user may.
	if err := tmp.Chown(0, gid); err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	if err := tmp.Chmod(0o750); err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	if err := SetFile(tmp, caps); err != nil {
		return nil, fmt.Errorf("setting %s: %w", caps, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	// What authorized the copy goes beside it first: a copy never exists
	// without it (Revalidate removes one that does).
	if err := rootWrite(priv, filepath.Join(dir, recordName), req.Package); err != nil {
		return nil, fmt.Errorf("recording the signed package: %w", err)
	}
	if err := rootWrite(priv, filepath.Join(dir, recordName+".sig"), []byte(req.Signature)); err != nil {
		return nil, fmt.Errorf("recording the signed package: %w", err)
	}
	final := filepath.Join(dir, req.File)
	if err := priv.Rename(tmpName, final); err != nil {
		return nil, fmt.Errorf("privileged copy: %w", err)
	}
	done = true
	if d, err := priv.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	if err := raiseFloor(priv, req.AddonID, req.Version); err != nil {
		return nil, fmt.Errorf("version floor: %w", err)
	}
	priv.Remove(filepath.Join(req.AddonID, revokedPrefix+req.Version)) // granted again
	return &Applied{Path: filepath.Join(cfg.PrivilegedRoot, final), Caps: caps.Names()}, nil
}

// openStaged opens RuntimeRoot/addons/<id>/versions/<version>/<file> for
// reading: resolved beneath the runtime root with no symbolic link (or
// magic link) anywhere on the way, as an O_PATH descriptor first so that
// nothing blocks on a FIFO or touches a device; then it must be a regular
// file with a single link, owned by the agent, and only then is it opened
// for reading — the very inode that was checked.
func openStaged(runtimeRoot string, req ApplyRequest, agentUID int) (*os.File, error) {
	rootFd, err := unix.Open(runtimeRoot, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("runtime root: %w", err)
	}
	defer unix.Close(rootFd)
	rel := filepath.Join("addons", req.AddonID, "versions", req.Version, req.File)
	fd, err := unix.Openat2(rootFd, rel, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		// Not across a mount either: a file system mounted in the runtime
		// tree (FUSE, by the agent's uid) could stall the read.
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, fmt.Errorf("staged file %s: a symbolic link on the way (%v)", rel, err)
		}
		return nil, fmt.Errorf("staged file %s: %w", rel, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("staged file %s: %w", rel, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("staged file %s: not a regular file", rel)
	case st.Nlink != 1:
		return nil, fmt.Errorf("staged file %s: %d hard links (a staged binary has one)", rel, st.Nlink)
	case int(st.Uid) != agentUID:
		return nil, fmt.Errorf("staged file %s: owned by uid %d, not the agent", rel, st.Uid)
	}
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("staged file %s: %w", rel, err)
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		f.Close()
		return nil, fmt.Errorf("staged file %s: changed while it was opened", rel)
	}
	return f, nil
}

// openPrivileged opens the privileged tree, creating it (root, 0755) when
// missing; it must be root's alone and on a file system that honours file
// capabilities.
func openPrivileged(path string) (*os.Root, error) {
	if err := os.Mkdir(path, 0o755); err == nil {
		os.Chmod(path, 0o755) // whatever the umask
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("privileged tree %s: not a directory", path)
	}
	if err := rootOwned(path, fi); err != nil {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	if sfs.Flags&unix.ST_NOSUID != 0 {
		return nil, fmt.Errorf("privileged tree %s is on a nosuid mount: the kernel ignores file capabilities there", path)
	}
	return os.OpenRoot(path)
}

// Remove deletes capped copies no longer needed: one version of an
// add-on, or (version "") all of them; the add-on's version floor stays.
func Remove(cfg Config, addonID, version string) error {
	if !addonIDRe.MatchString(addonID) {
		return fmt.Errorf("addon id %q: not a valid add-on id", addonID)
	}
	target := addonID
	if version != "" {
		if err := segment("version", version, 64); err != nil {
			return fmt.Errorf("addon %q: %w", addonID, err)
		}
		target = filepath.Join(addonID, version)
	}
	unlock, err := lockPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return err
	}
	defer unlock()
	priv, err := openPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return err
	}
	defer priv.Close()
	if version != "" {
		if err := priv.RemoveAll(target); err != nil {
			return fmt.Errorf("addon %q: %w", addonID, err)
		}
		return nil
	}
	// Every version, but not the add-on's floor: removing an add-on's
	// copies must not open the way to capping an older version again.
	entries, err := fs.ReadDir(priv.FS(), addonID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("addon %q: %w", addonID, err)
	}
	for _, e := range entries {
		if e.Name() == floorName {
			continue
		}
		if err := priv.RemoveAll(filepath.Join(addonID, e.Name())); err != nil {
			return fmt.Errorf("addon %q: %w", addonID, err)
		}
	}
	return nil
}
