package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
)

// An add-on whose package asks for os_capabilities runs from a capped,
// root-owned copy of its staged binary that addond-updater makes from the
// version's signed package.json and .sig — the copies delivery keeps
// beside the add-on's state (delivery.SignedPackage), so that the copy can
// be asked for again — after a reboot, with the store down — without the
// store.

// ErrCapsUnavailable marks a capped copy that could not be had because
// addond-updater could not be reached: the environment, never the
// version's fault.
var ErrCapsUnavailable = errors.New("capped copy unavailable")

// cappedCopy asks addond-updater for the capped copy of spec's staged
// binary and returns its path. When the updater cannot be reached, an
// existing copy that still has the signed bytes is used; otherwise the
// error wraps ErrCapsUnavailable.
func (a *Agent) cappedCopy(ctx context.Context, e *env, spec assignment.Spec) (string, error) {
	_, raw, sig, err := e.del.SignedPackage(ctx, spec.AddonID, spec.Version)
	if err != nil {
		return "", fmt.Errorf("addon %q: capped copy: %w", spec.AddonID, err)
	}
	c := &capabilities.Client{Socket: e.cfg.UpdaterSocket, Timeout: time.Minute}
	applied, err := c.Apply(ctx, capabilities.ApplyRequest{
		AddonID: spec.AddonID, Version: spec.Version, File: spec.BinaryName, Platform: a.platform.String(),
		Caps: spec.OSCapabilities, Package: raw, Signature: string(sig),
	})
	if err == nil {
		return applied.Path, nil
	}
	if !errors.Is(err, capabilities.ErrUnavailable) {
		return "", fmt.Errorf("addon %q: addond-updater refused the capped copy: %w", spec.AddonID, err)
	}
	if path, ok := a.existingCopy(spec); ok {
		a.log.Warn("addond-updater unavailable: running the capped copy made earlier", "addon_id", spec.AddonID, "version", spec.Version, "path", path)
		return path, nil
	}
	return "", fmt.Errorf("addon %q: %w: %v", spec.AddonID, ErrCapsUnavailable, err)
}

// existingCopy is the capped copy of spec made earlier, if it is still
// root's (not writable by anyone else) and has the signed bytes.
func (a *Agent) existingCopy(spec assignment.Spec) (string, bool) {
	if spec.Artifact == nil {
		return "", false
	}
	path := filepath.Join(a.privilegedRoot, spec.AddonID, spec.Version, spec.BinaryName)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o022 != 0 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		return "", false
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil || hex.EncodeToString(h.Sum(nil)) != spec.Artifact.SHA256 {
		return "", false
	}
	return path, true
}

// dropCapped asks addond-updater to remove the capped copies of versions
// of id (all of them when versions is empty).
func (a *Agent) dropCapped(e *env, id string, versions ...string) {
	if len(versions) == 0 {
		versions = []string{""}
	} else {
		// Only versions that may have a capped copy: the updater's tree
		// has their directory, or cannot be looked into.
		var had []string
		for _, v := range versions {
			if _, err := os.Lstat(filepath.Join(a.privilegedRoot, id, v)); !errors.Is(err, os.ErrNotExist) {
				had = append(had, v)
			}
		}
		if versions = had; len(versions) == 0 {
			return
		}
	}
	c := &capabilities.Client{Socket: e.cfg.UpdaterSocket, Timeout: 10 * time.Second}
	for _, v := range versions {
		if err := c.Remove(context.Background(), id, v); err != nil && !errors.Is(err, capabilities.ErrUnavailable) {
			a.log.Warn("removing capped copies", "addon_id", id, "version", v, "error", err)
		}
	}
}
