package delivery

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/internal/atomicfile"
)

// Current returns the version addons/<id>/current points to ("" when there
// is none).
func (d *Deliverer) Current(id string) (string, error) {
	if err := assignment.ValidAddonID(id); err != nil {
		return "", err
	}
	target, err := os.Readlink(filepath.Join(d.addonDir(id), "current"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	v, ok := strings.CutPrefix(target, "versions/")
	if !ok || assignment.ValidVersion(v) != nil {
		return "", fmt.Errorf("addon %q: current points to %q, not versions/<version>", id, target)
	}
	return v, nil
}

// Activate points current at version, which must be staged: a new
// relative symlink current.new, renamed over current, and the directory
// fsynced. The version current pointed to before becomes previous (saved
// first, so a crash never loses it). It returns that previous version.
func (d *Deliverer) Activate(id, version string) (string, error) {
	if err := assignment.ValidAddonID(id); err != nil {
		return "", err
	}
	if err := assignment.ValidVersion(version); err != nil {
		return "", err
	}
	defer d.lock(id)()
	st, err := state.LoadAddon(d.opts.Root, id)
	if err != nil {
		return "", err
	}
	rec, ok := st.Staged[version]
	if !ok {
		return "", fmt.Errorf("addon %q: version %q is not staged", id, version)
	}
	if fi, err := os.Lstat(d.BinaryPath(id, version, rec.Binary)); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("addon %q: staged binary of version %q is missing", id, version)
	}
	cur, err := d.Current(id)
	if err != nil {
		return "", err
	}
	if cur == version {
		return st.Previous, nil
	}
	if cur != "" {
		st.Previous = cur
		if err := state.SaveAddon(d.opts.Root, id, st); err != nil {
			return "", err
		}
	}
	FaultPoint("before-swap")
	dir := d.addonDir(id)
	tmp := filepath.Join(dir, "current.new")
	os.Remove(tmp)
	if err := os.Symlink("versions/"+version, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "current")); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return "", err
	}
	FaultPoint("after-swap")
	return cur, nil
}

// GC removes staged versions of id other than current, previous, the
// last-known-good and keep.
func (d *Deliverer) GC(id string, keep ...string) ([]string, error) {
	if err := assignment.ValidAddonID(id); err != nil {
		return nil, err
	}
	defer d.lock(id)()
	st, err := state.LoadAddon(d.opts.Root, id)
	if err != nil {
		return nil, err
	}
	cur, err := d.Current(id)
	if err != nil {
		return nil, err
	}
	keepSet := map[string]bool{cur: true, st.Previous: true}
	if st.LKG != nil {
		keepSet[st.LKG.Version] = true
	}
	for _, k := range keep {
		keepSet[k] = true
	}
	entries, err := os.ReadDir(d.versionsDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if keepSet[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(d.versionsDir(id), e.Name())); err != nil {
			return removed, err
		}
		os.Remove(d.packagePath(id, e.Name()))
		os.Remove(d.packagePath(id, e.Name()) + ".sig")
		delete(st.Staged, e.Name())
		removed = append(removed, e.Name())
	}
	for v := range st.Staged {
		if !keepSet[v] {
			delete(st.Staged, v)
		}
	}
	if len(removed) > 0 {
		atomicfile.SyncDir(d.versionsDir(id))
	}
	return removed, state.SaveAddon(d.opts.Root, id, st)
}

// RemoveAddon deletes everything addond keeps for id: an add-on that is no
// longer assigned leaves no state, so a re-added one cannot reuse a stale
// last-known-good spec, and no partial download.
func (d *Deliverer) RemoveAddon(id string) error {
	if err := assignment.ValidAddonID(id); err != nil {
		return err
	}
	defer d.lock(id)()
	d.discardPartials(id, func(string) bool { return true })
	return os.RemoveAll(d.addonDir(id))
}

// DiscardPartials removes the partial download of id's version, if any.
func (d *Deliverer) DiscardPartials(id, version string) {
	if assignment.ValidAddonID(id) != nil {
		return
	}
	d.discardPartials(id, func(v string) bool { return v == version })
}

// discardPartials removes id's partial downloads of the versions drop
// says. Partial downloads are "<id>@<version>.part" (and ".part.json");
// ids hold no "@".
func (d *Deliverer) discardPartials(id string, drop func(version string) bool) {
	parts, _ := filepath.Glob(filepath.Join(d.tmpDir(), id+"@*"))
	for _, p := range parts {
		v := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), id+"@"), ".out"), ".json"), ".part")
		if drop(v) {
			os.Remove(p)
		}
	}
}

// AddonIDs lists the add-ons with a directory under addons/ (names that
// are not valid ids are left alone).
func (d *Deliverer) AddonIDs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(d.opts.Root, "addons"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && assignment.ValidAddonID(e.Name()) == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}
