package capabilities

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/semver"
	"golang.org/x/sys/unix"
)

// A grant — a capped copy — lasts only as long as trust and policy allow
// it. Beside each copy the helper keeps the signed package that
// authorized it (<id>/<version>/.package.json and .sig), and per add-on
// the highest version it ever capped (<id>/.floor). Revalidate re-checks
// every copy against the keys, scopes and policy of now, and removes the
// ones they no longer allow; apply refuses a version below the floor
// unless the signed package allows the downgrade.

const (
	recordName = ".package.json"
	floorName  = ".floor"
	// revokedPrefix: <id>/.revoked-<version> says why that version's copy
	// was revoked, for the start that asks for it next (a new copy of the
	// version removes it).
	revokedPrefix = ".revoked-"
)

// Revoked is a capped copy Revalidate removed, and why.
type Revoked struct {
	AddonID, Version, Reason string
}

// Revalidate removes the capped copies the current keys, their scopes and
// the policy no longer allow — or that have no signed package recorded
// beside them. The helper runs it when it starts and before every apply.
// Trust or policy that cannot be read at all revoke nothing (an apply
// fails on them anyway): a grant ends when a key or a capability is taken
// away, not when a file is unreadable for a moment.
func Revalidate(cfg Config) ([]Revoked, error) {
	unlock, err := lockPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return revalidate(cfg)
}

func revalidate(cfg Config) ([]Revoked, error) {
	keys, err := LoadTrust(cfg.Trust...)
	if err != nil {
		return nil, err
	}
	allowed, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	priv, err := openPrivileged(cfg.PrivilegedRoot)
	if err != nil {
		return nil, err
	}
	defer priv.Close()
	var out []Revoked
	ids, err := fs.ReadDir(priv.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	for _, idEnt := range ids {
		id := idEnt.Name()
		if !idEnt.IsDir() || !addonIDRe.MatchString(id) {
			continue
		}
		versions, err := fs.ReadDir(priv.FS(), id)
		if err != nil {
			return out, fmt.Errorf("privileged tree: %w", err)
		}
		for _, vEnt := range versions {
			version := vEnt.Name()
			if !vEnt.IsDir() || strings.HasPrefix(version, ".") {
				continue
			}
			reason := stillGranted(priv, keys, allowed, id, version)
			if reason == nil {
				continue
			}
			if err := priv.RemoveAll(filepath.Join(id, version)); err != nil {
				return out, fmt.Errorf("addon %q version %q: removing a revoked copy: %w", id, version, err)
			}
			rootWrite(priv, filepath.Join(id, revokedPrefix+version), []byte(reason.Error()+"\n"))
			out = append(out, Revoked{AddonID: id, Version: version, Reason: reason.Error()})
		}
	}
	return out, nil
}

// revokedReason is why id@version's copy was revoked, or "".
func revokedReason(priv *os.Root, id, version string) string {
	b, err := priv.ReadFile(filepath.Join(id, revokedPrefix+version))
	if err != nil || len(b) > 4096 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// stillGranted says why the copies of id@version are no longer allowed,
// or nil.
func stillGranted(priv *os.Root, keys []TrustedKey, allowed Set, id, version string) error {
	dir := filepath.Join(id, version)
	raw, err := priv.ReadFile(filepath.Join(dir, recordName))
	if err != nil {
		return fmt.Errorf("no signed package recorded for it: %w", err)
	}
	sig, err := priv.ReadFile(filepath.Join(dir, recordName+".sig"))
	if err != nil {
		return fmt.Errorf("no signature recorded for its package: %w", err)
	}
	pkg, signer, err := VerifyPackage(raw, string(sig), keys)
	if err != nil {
		return err
	}
	if pkg.AddonID != id || pkg.Version != version {
		return fmt.Errorf("its recorded package is %q version %q", pkg.AddonID, pkg.Version)
	}
	granted, err := ParseSet(pkg.OSCapabilities)
	if err != nil {
		return err
	}
	files, err := fs.ReadDir(priv.FS(), dir)
	if err != nil {
		return err
	}
	for _, f := range files {
		if strings.HasPrefix(f.Name(), ".") {
			continue
		}
		caps, err := copyCaps(priv, filepath.Join(dir, f.Name()))
		if err != nil {
			return err
		}
		switch {
		case caps&^granted != 0:
			return fmt.Errorf("%s carries %s, which its signed package does not grant", f.Name(), caps&^granted)
		case caps&^allowed != 0:
			return fmt.Errorf("%s carries %s, which the policy no longer allows", f.Name(), caps&^allowed)
		}
		if err := signer.Allows(id, caps); err != nil {
			return err
		}
	}
	return nil
}

// copyCaps reads the file capabilities of a copy.
func copyCaps(priv *os.Root, name string) (Set, error) {
	f, err := priv.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64)
	n, err := unix.Fgetxattr(int(f.Fd()), XattrName, buf)
	if errors.Is(err, unix.ENODATA) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	caps, err := DecodeFileCaps(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return caps.Permitted, nil
}

// heldCopy is whether a copy of req's version is held, recorded with
// req's signed package.
func heldCopy(priv *os.Root, req ApplyRequest) bool {
	recorded, err := priv.ReadFile(filepath.Join(req.AddonID, req.Version, recordName))
	return err == nil && bytes.Equal(recorded, req.Package)
}

// checkFloor refuses a version of id below the highest one capped before,
// unless its signed package allows the downgrade. Versions that are not
// both semantic versions have no order, and pass.
func checkFloor(priv *os.Root, id, version string, allowDowngrade bool) error {
	data, err := priv.ReadFile(filepath.Join(id, floorName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("version floor: %w", err)
	}
	floor := strings.TrimSpace(string(data))
	if allowDowngrade || compareVersions(version, floor) >= 0 {
		return nil
	}
	return fmt.Errorf("version %s is lower than %s, the highest capped before, and the signed package does not allow a downgrade", version, floor)
}

// raiseFloor records version as id's floor when it is higher.
func raiseFloor(priv *os.Root, id, version string) error {
	if data, err := priv.ReadFile(filepath.Join(id, floorName)); err == nil && compareVersions(version, strings.TrimSpace(string(data))) <= 0 {
		return nil
	}
	return rootWrite(priv, filepath.Join(id, floorName), []byte(version+"\n"))
}

// compareVersions orders semantic versions (2.0 precedence); 0 when
// either is not one.
func compareVersions(a, b string) int {
	va, vb := "v"+a, "v"+b
	if !strictSemver(va) || !strictSemver(vb) {
		return 0
	}
	return semver.Compare(va, vb)
}

// strictSemver: MAJOR.MINOR.PATCH with optional pre-release and build,
// not the v1 and v1.2 shorthands semver.IsValid also takes.
func strictSemver(v string) bool {
	core, _, _ := strings.Cut(strings.SplitN(v, "+", 2)[0], "-")
	return semver.IsValid(v) && strings.Count(core, ".") == 2
}

// lockPrivileged takes the privileged tree's lock (flock of its
// directory): applies, removals and revalidations — of the server's
// connections, or a by-hand apply — change it one at a time, so that none
// sees another's copy half made.
func lockPrivileged(path string) (func(), error) {
	if _, err := openPrivileged(path); err != nil { // made, and checked, first
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("privileged tree: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("privileged tree: lock: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}

// rootWrite replaces name beneath priv atomically: a temporary file,
// fsynced, renamed over it, the directory fsynced.
func rootWrite(priv *os.Root, name string, data []byte) error {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(name), ".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := priv.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = priv.Rename(tmp, name)
	}
	if err != nil {
		priv.Remove(tmp)
		return err
	}
	if d, err := priv.Open(filepath.Dir(name)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
