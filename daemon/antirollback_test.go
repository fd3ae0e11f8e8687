package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/daemon/store"
)

// stageCounting runs one delivery reconcile whose package and artifact
// reads are counted.
func (f *fixture) stageCounting() (*Report, *countingStore) {
	f.t.Helper()
	a := f.open()
	defer a.Close()
	counting := &countingStore{Store: f.st}
	a.useStore(counting)
	rep, err := a.Stage(context.Background())
	if err != nil {
		f.t.Fatalf("Stage: %v", err)
	}
	return rep, counting
}

func (f *fixture) highest(id string) string {
	f.t.Helper()
	st, err := state.LoadAddon(f.root, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return st.HighestVersion
}

// snapshot is everything a refused downgrade must leave alone: the tree
// (versions, current), the add-on's state file and the tmp directory.
func (f *fixture) snapshot(id string) string {
	f.t.Helper()
	b, _ := json.Marshal(f.tree())
	st, _ := os.ReadFile(state.AddonPath(f.root, id))
	tmp, _ := os.ReadDir(filepath.Join(f.root, "tmp"))
	var names []string
	for _, e := range tmp {
		names = append(names, e.Name())
	}
	return string(b) + "\n" + string(st) + "\ntmp: " + strings.Join(names, ",")
}

func TestDowngradeRefusedBeforeAnythingIsFetched(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		pkgs := map[string]*assignment.Package{}
		for _, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
			pkgs[v] = f.publish("hello", v, randomBytes(4<<10))
		}
		f.assign("hello@1.1.0")
		if rep := f.stage(); !rep.Converged() {
			t.Fatal(rep.Errors())
		}
		f.assign("hello@1.2.0")
		if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.2.0" {
			t.Fatal(rep.Errors())
		}
		if h := f.highest("hello"); h != "1.2.0" {
			t.Fatalf("HighestVersion = %q after activating 1.2.0", h)
		}

		// 1.0.0 was never staged here: a refusal must neither read its
		// package or artifact nor write anything. Once with the artifact
		// in the assignment, once with only the version (the agent would
		// read the signed package.json).
		withRef := f.addonFor(pkgs["1.0.0"])
		versionOnly := assignment.Addon{AddonID: "hello", Version: "1.0.0"}
		for _, entry := range []assignment.Addon{withRef, versionOnly} {
			f.putAddons(entry)
			before := f.snapshot("hello")
			rep, counting := f.stageCounting()
			r := reportFor(t, rep, "hello")
			var de *assignment.DowngradeError
			if !errors.As(r.Err, &de) || de.Version != "1.0.0" || de.Highest != "1.2.0" {
				t.Fatalf("report %+v, want a downgrade refusal", r)
			}
			want := `addon "hello": version 1.0.0 is lower than 1.2.0, the highest ever activated; refused as a downgrade (the assignment may set allow_downgrade)`
			if r.Err.Error() != want {
				t.Fatalf("error %q, want %q", r.Err, want)
			}
			if r.ActiveVersion != "1.2.0" || !r.FromLKG || rep.Converged() {
				t.Fatalf("report %+v: the running version must stay, from_lkg", r)
			}
			if len(counting.offsets) != 0 {
				t.Fatalf("a refused downgrade read %d objects from the store", len(counting.offsets))
			}
			if after := f.snapshot("hello"); after != before {
				t.Fatalf("a refused downgrade wrote something:\nbefore %s\nafter  %s", before, after)
			}
			if _, err := os.Stat(filepath.Join(f.root, "addons/hello/versions/1.0.0")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("versions/1.0.0 exists after a refusal: %v", err)
			}
		}

		// 1.1.0 is still lower than 1.2.0, although it ran before.
		f.putAddons(f.addonFor(pkgs["1.1.0"]))
		if r := reportFor(t, f.stage(), "hello"); !errors.Is(r.Err, assignment.ErrDowngrade) {
			t.Fatalf("1.1.0 after 1.2.0: %+v, want refused", r)
		}

		// The signed assignment allows it.
		allowed := f.addonFor(pkgs["1.0.0"])
		allowed.AllowDowngrade = true
		f.putAddons(allowed)
		if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.0.0" {
			t.Fatalf("allow_downgrade: %v, current %s", rep.Errors(), f.current("hello"))
		}
		if h := f.highest("hello"); h != "1.2.0" {
			t.Fatalf("HighestVersion = %q after an allowed downgrade, want 1.2.0 kept", h)
		}

		// What current already points to is not a downgrade (nothing
		// changes), even without allow_downgrade.
		f.putAddons(f.addonFor(pkgs["1.0.0"]))
		if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.0.0" {
			t.Fatalf("assigning the current version: %v", rep.Errors())
		}
		// But 1.1.0, never current since 1.2.0, is.
		f.putAddons(f.addonFor(pkgs["1.1.0"]))
		if r := reportFor(t, f.stage(), "hello"); !errors.Is(r.Err, assignment.ErrDowngrade) || f.current("hello") != "1.0.0" {
			t.Fatalf("1.1.0 with 1.2.0 the highest: %+v", r)
		}
	})
}

func TestDowngradeOperatorPinAndNoOrder(t *testing.T) {
	f := newFixture(t, "file")
	ov := filepath.Join(t.TempDir(), "addons.local.json")
	f.cfg.LocalOverrides = ov
	for _, v := range []string{"1.0.0", "1.2.0", "nightly"} {
		f.publish("hello", v, randomBytes(1000))
	}
	f.assign("hello@1.2.0")
	if rep := f.stage(); !rep.Converged() {
		t.Fatal(rep.Errors())
	}

	// An override that touches the add-on but not its version pins
	// nothing: the pushed downgrade is still refused.
	f.assign("hello@1.0.0")
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","args":["-x"]}]}`), 0o644)
	if r := reportFor(t, f.stage(), "hello"); !errors.Is(r.Err, assignment.ErrDowngrade) {
		t.Fatalf("override without a version: %+v, want refused", r)
	}
	// The operator's version pin is not a downgrade in this sense.
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","version":"1.0.0"}]}`), 0o644)
	if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.0.0" {
		t.Fatalf("operator pin: %v, current %s", rep.Errors(), f.current("hello"))
	}
	if h := f.highest("hello"); h != "1.2.0" {
		t.Fatalf("HighestVersion = %q after a pin, want 1.2.0", h)
	}
	os.Remove(ov)

	// A version that is not semver has no order: not refused, and it
	// does not lower the bar either.
	f.assign("hello@nightly")
	if rep := f.stage(); !rep.Converged() || f.current("hello") != "nightly" {
		t.Fatalf("non-semver version: %v", rep.Errors())
	}
	if h := f.highest("hello"); h != "1.2.0" {
		t.Fatalf("HighestVersion = %q after nightly, want 1.2.0", h)
	}
	f.assign("hello@1.0.0")
	if r := reportFor(t, f.stage(), "hello"); !errors.Is(r.Err, assignment.ErrDowngrade) {
		t.Fatalf("1.0.0 after nightly (highest 1.2.0): %+v, want refused", r)
	}
}

// TestDowngradeStateBeforeHighestVersion: an install whose state predates
// HighestVersion takes current and the last-known-good as the floor.
func TestDowngradeStateBeforeHighestVersion(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	f.publish("hello", "1.2.0", randomBytes(1000))
	f.assign("hello@1.2.0")
	if rep := f.stage(); !rep.Converged() {
		t.Fatal(rep.Errors())
	}
	st, _ := state.LoadAddon(f.root, "hello")
	st.HighestVersion = ""
	state.SaveAddon(f.root, "hello", st)
	f.assign("hello@1.0.0")
	if r := reportFor(t, f.stage(), "hello"); !errors.Is(r.Err, assignment.ErrDowngrade) {
		t.Fatalf("legacy state: %+v, want refused", r)
	}
}

// TestReplayRefusedAndCacheKept: an older signed document put back into
// the store is refused as a replay (also without required signatures),
// never cached, and the last applied one stays in use; the same serial
// with other content is refused when signatures are required; the same
// document fetched again is fine.
func TestReplayRefusedAndCacheKept(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		f.publish("hello", "1.0.0", randomBytes(1000))
		f.publish("hello", "1.1.0", randomBytes(1000))
		ctx := context.Background()
		key := "agents/edge-01/assignments.json"
		f.assign("hello@1.0.0")
		oldRaw, _, _ := store.ReadSmall(ctx, f.st, key, 1<<20, store.OpenOptions{})
		oldSig, _, _ := store.ReadSmall(ctx, f.st, key+".sig", 1<<10, store.OpenOptions{})
		f.stage()
		doc := f.assign("hello@1.1.0")
		if rep := f.stage(); !rep.Converged() || !rep.Fresh || f.current("hello") != "1.1.0" {
			t.Fatal(rep.Errors())
		}
		cached, _ := os.ReadFile(filepath.Join(f.root, "state/assignments.json"))
		appliedRaw, _, _ := store.ReadSmall(ctx, f.st, key, 1<<20, store.OpenOptions{})
		appliedSig, _, _ := store.ReadSmall(ctx, f.st, key+".sig", 1<<10, store.OpenOptions{})
		agentBefore, _ := os.ReadFile(filepath.Join(f.root, "state/agent.json"))

		replay := func() {
			f.st.Put(ctx, key, bytes.NewReader(oldRaw), int64(len(oldRaw)))
			f.st.Put(ctx, key+".sig", bytes.NewReader(oldSig), int64(len(oldSig)))
		}
		replay()
		for _, required := range []bool{true, false} {
			f.cfg.Trust.RequireSignatures = &required
			a := f.open()
			rep, err := a.Stage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var re *source.ReplayError
			if !errors.As(rep.DocumentErr, &re) || rep.Replay == nil || !rep.NewReplay || rep.Fresh || !rep.FromCache || !rep.DocumentRefused {
				t.Fatalf("require_signatures %v: report %+v, want a replay", required, rep)
			}
			if !strings.Contains(rep.DocumentErr.Error(), "serial 1 is lower than 2, the last applied: refused as a replay") {
				t.Fatalf("DocumentErr = %v", rep.DocumentErr)
			}
			if rep.Serial != doc.Serial || f.current("hello") != "1.1.0" || reportFor(t, rep, "hello").Version != "1.1.0" {
				t.Fatalf("the replay was applied: serial %d, current %s", rep.Serial, f.current("hello"))
			}
			// The same replay again: refused, but not new (one warning,
			// one count per replayed document).
			if rep, _ := a.Stage(ctx); rep.Replay == nil || rep.NewReplay {
				t.Fatalf("second look at the same replay: %+v", rep)
			}
			a.Close()
			if now, _ := os.ReadFile(filepath.Join(f.root, "state/assignments.json")); !bytes.Equal(now, cached) {
				t.Fatal("the replayed document was cached")
			}
			if now, _ := os.ReadFile(filepath.Join(f.root, "state/agent.json")); !bytes.Equal(now, agentBefore) {
				t.Fatalf("the replay changed the agent state:\n%s\n%s", agentBefore, now)
			}
		}
		f.cfg.Trust.RequireSignatures = nil

		// The same serial, other content (signed): refused.
		same := *doc
		same.Addons = nil
		raw, _ := json.Marshal(same)
		f.putDoc(raw, true)
		rep := f.stage()
		var re *source.ReplayError
		if !errors.As(rep.DocumentErr, &re) || !re.SameSerial || !strings.Contains(rep.DocumentErr.Error(), "serial 2 was already applied with different content") {
			t.Fatalf("same serial, other content: %v", rep.DocumentErr)
		}
		if f.current("hello") != "1.1.0" {
			t.Fatal("the same-serial document removed hello")
		}
		// The same content in other bytes is not the applied document.
		raw, _ = json.MarshalIndent(doc, "", "\t")
		f.putDoc(raw, true)
		if rep := f.stage(); !errors.As(rep.DocumentErr, &re) || !re.SameSerial {
			t.Fatalf("same serial, reformatted: %v", rep.DocumentErr)
		}
		// The applied document written again (a new ETag or mtime, the
		// same bytes): accepted, fresh.
		f.st.Put(ctx, key, bytes.NewReader(appliedRaw), int64(len(appliedRaw)))
		f.st.Put(ctx, key+".sig", bytes.NewReader(appliedSig), int64(len(appliedSig)))
		if rep := f.stage(); !rep.Converged() || !rep.Fresh || rep.DocumentErr != nil {
			t.Fatalf("the same document again: %v", rep.Errors())
		}
		// The next serial: accepted.
		f.assign("hello@1.1.0")
		if rep := f.stage(); !rep.Converged() || rep.Serial != doc.Serial+1 {
			t.Fatalf("next serial: %v", rep.Errors())
		}
	})
}

// TestFreshness: a new document and an unchanged one are fresh; a store
// that is down, and a refused document, are not.
func TestFreshness(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	f.assign("hello@1.0.0")
	a := f.open()
	defer a.Close()
	rep, _ := a.Stage(context.Background())
	if !rep.Fresh || rep.CheckedAt.IsZero() || rep.AppliedAt.IsZero() || rep.DocumentErr != nil {
		t.Fatalf("new document: %+v", rep)
	}
	applied := rep.AppliedAt
	rep, _ = a.Stage(context.Background())
	if !rep.Fresh || !rep.AppliedAt.Equal(applied) || !rep.CheckedAt.After(applied) {
		t.Fatalf("unchanged document: fresh %v applied %v (was %v) checked %v", rep.Fresh, rep.AppliedAt, applied, rep.CheckedAt)
	}
	checked := rep.CheckedAt
	dir := strings.TrimPrefix(f.storeURL, "file://")
	os.Rename(dir, dir+".away")
	rep, _ = a.Stage(context.Background())
	if rep.Fresh || rep.DocumentErr == nil || !rep.FromCache || !rep.CheckedAt.Equal(checked) || !rep.AppliedAt.Equal(applied) {
		t.Fatalf("store down: %+v", rep)
	}
	if r := reportFor(t, rep, "hello"); r.State != "staged" || r.ActiveVersion != "1.0.0" {
		t.Fatalf("store down: %+v", r)
	}
	os.Rename(dir+".away", dir)
	if rep, _ = a.Stage(context.Background()); !rep.Fresh {
		t.Fatalf("store back: %+v", rep)
	}
}

// TestSerialsPerSource: serials belong to the source that numbered them.
// When the operator points addond at another source (here a store key of
// another agent's stream, then a local file), the first document there is
// judged afresh, not refused as a replay of the old source's serial; within
// one source a lower serial is still a replay.
func TestSerialsPerSource(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	pkg := f.publish("hello", "1.1.0", randomBytes(1000))
	for range 3 {
		f.assign("hello@1.0.0") // serial 3 in the store
	}
	if rep := f.stage(); !rep.Converged() || rep.Serial != 3 {
		t.Fatalf("first source: %v, serial %d", rep.Errors(), rep.Serial)
	}

	// Another source: a local file with serial 1.
	doc, _ := json.Marshal(assignment.Document{AgentID: "edge-01", Serial: 1, Addons: []assignment.Addon{f.addonFor(pkg)}})
	file := filepath.Join(f.base, "assignments.json")
	os.WriteFile(file, doc, 0o644)
	f.cfg.Assignments = config.Assignments{File: file}
	rep := f.stage()
	if !rep.Converged() || !rep.Fresh || rep.Serial != 1 || f.current("hello") != "1.1.0" {
		t.Fatalf("a new source's first document: %v, fresh %v, serial %d, current %s", rep.Errors(), rep.Fresh, rep.Serial, f.current("hello"))
	}
	// Within it, a lower serial is a replay again.
	doc0, _ := json.Marshal(assignment.Document{AgentID: "edge-01", Serial: 0})
	os.WriteFile(file, doc0, 0o644)
	if rep := f.stage(); rep.Replay == nil || f.current("hello") != "1.1.0" {
		t.Fatalf("serial 0 after 1 from the same file: replay %v, current %s", rep.Replay, f.current("hello"))
	}
}
