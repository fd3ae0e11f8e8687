package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/addond/addond/daemon"
)

// The invariants every case of the fault-injection suite (faults_*_test.go,
// `make faults`) asserts once the fault has been injected:
//
//   - the add-ons that were running keep running — the same PIDs where the
//     backend allows it (samePIDs);
//   - each add-on's `current` points at a complete, verified version: the
//     binary's sha256 is the one recorded when it was verified and the one
//     the publisher signed (checkCurrent);
//   - no partial file remains after the next reconcile (checkNoPartials);
//   - status names the fault (waitAddon / waitDocumentError with the
//     expected words).

// publishedSHA reads the sha256 the publisher signed for id@version on
// linux/amd64 from a file:// store laid out as DESIGN.md says; "" when the
// package is missing.
func publishedSHA(t *testing.T, storeDir, id, version string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(storeDir, "packages", id, version, "package.json"))
	if err != nil {
		return ""
	}
	var pkg struct {
		Artifacts map[string]struct {
			SHA256 string `json:"sha256"`
		} `json:"artifacts"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil {
		t.Fatalf("package.json of %s@%s: %v", id, version, err)
	}
	return pkg.Artifacts["linux/amd64"].SHA256
}

// checkCurrent asserts that root's current link for id points at a
// complete staged version whose binary hashes to what state.json recorded
// at verification and to published(id, version), and returns that
// version.
func checkCurrent(t *testing.T, root, id string, published func(id, version string) string) string {
	t.Helper()
	dir := filepath.Join(root, "addons", id)
	target, err := os.Readlink(filepath.Join(dir, "current"))
	if err != nil {
		t.Fatalf("%s: current: %v", id, err)
	}
	version, ok := strings.CutPrefix(target, "versions/")
	if !ok || strings.Contains(version, "/") {
		t.Fatalf("%s: current -> %q, not versions/<version>", id, target)
	}
	var st struct {
		Staged map[string]struct {
			SHA256 string `json:"sha256"`
			Binary string `json:"binary"`
			Size   int64  `json:"size"`
		} `json:"staged"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatalf("%s: state: %v", id, err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("%s: state.json: %v", id, err)
	}
	rec, ok := st.Staged[version]
	if !ok {
		t.Fatalf("%s: current -> %s, which state.json does not record as staged", id, version)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "versions", version, rec.Binary))
	if err != nil {
		t.Fatalf("%s: current -> %s, binary unreadable: %v", id, version, err)
	}
	sum := sha256.Sum256(bin)
	got := hex.EncodeToString(sum[:])
	if got != rec.SHA256 || int64(len(bin)) != rec.Size {
		t.Fatalf("%s: current -> %s: binary sha256 %s (%d bytes), verified as %s (%d bytes): torn or altered", id, version, got, len(bin), rec.SHA256, rec.Size)
	}
	if want := published(id, version); got != want {
		t.Fatalf("%s: current -> %s: binary sha256 %s, the publisher signed %q", id, version, got, want)
	}
	return version
}

// checkNoPartials asserts that the runtime tree holds no partial or
// temporary file: nothing in tmp/, no .tmp-* from an atomic write, no
// current.new from an interrupted swap.
func checkNoPartials(t *testing.T, root string) {
	t.Helper()
	if left := partials(root); len(left) > 0 {
		t.Fatalf("partial or temporary files left in %s: %v", root, left)
	}
}

// partials lists the partial and temporary files under root.
func partials(root string) []string {
	var left []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		name := d.Name()
		switch {
		case strings.HasPrefix(rel, "tmp"+string(filepath.Separator)):
			left = append(left, rel)
		case strings.Contains(name, ".tmp-"), name == "current.new", strings.HasSuffix(name, ".part"):
			left = append(left, rel)
		}
		return nil
	})
	return left
}

// pids returns the main PID of each running add-on in ids, from status.
func pids(t *testing.T, c *daemon.Client, ids ...string) map[string]int {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	out := map[string]int{}
	for _, a := range st.Addons {
		for _, id := range ids {
			if a.AddonID == id {
				out[id] = a.PID
			}
		}
	}
	for _, id := range ids {
		if out[id] == 0 {
			t.Fatalf("%s has no PID in status", id)
		}
	}
	return out
}

// samePIDs asserts that every add-on in before still runs as the same
// process, alive, and that status reports that PID.
func samePIDs(t *testing.T, c *daemon.Client, before map[string]int) {
	t.Helper()
	ids := make([]string, 0, len(before))
	for id := range before {
		ids = append(ids, id)
	}
	now := pids(t, c, ids...)
	for id, pid := range before {
		if now[id] != pid || !alive(pid) {
			t.Fatalf("%s: PID %d before the fault, %d after (alive %v): the add-on was restarted", id, pid, now[id], alive(pid))
		}
	}
}
