package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/daemon/store"
)

func TestStageHappyPath(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		v1 := randomBytes(300 << 10)
		f.publish("hello", "1.0.0", v1)
		f.assign("hello@1.0.0")
		rep := f.stage()
		if !rep.Converged() {
			t.Fatalf("not converged: %v", rep.Errors())
		}
		r := reportFor(t, rep, "hello")
		if r.State != "staged" || !r.Downloaded || f.current("hello") != "1.0.0" || !bytes.Equal(f.binary("hello"), v1) {
			t.Fatalf("report %+v, current %q", r, f.current("hello"))
		}
		fi, _ := os.Stat(filepath.Join(f.root, "addons/hello/versions/1.0.0/hello"))
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("staged binary mode %v, want 0755", fi.Mode().Perm())
		}
		if target, _ := os.Readlink(filepath.Join(f.root, "addons/hello/current")); target != "versions/1.0.0" {
			t.Errorf("current -> %q, want the relative versions/1.0.0", target)
		}

		// Unchanged: nothing is downloaded again.
		rep = f.stage()
		if r := reportFor(t, rep, "hello"); r.Downloaded || !rep.Converged() {
			t.Fatalf("second stage: %+v, %v", r, rep.Errors())
		}

		// A new version swaps current; the old one is kept as previous.
		v2 := randomBytes(200 << 10)
		f.publish("hello", "2.0.0", v2)
		f.assign("hello@2.0.0")
		if rep := f.stage(); !rep.Converged() {
			t.Fatal(rep.Errors())
		}
		st, _ := state.LoadAddon(f.root, "hello")
		if f.current("hello") != "2.0.0" || st.Previous != "1.0.0" || st.LKG.Version != "2.0.0" {
			t.Fatalf("current %q previous %q lkg %+v", f.current("hello"), st.Previous, st.LKG)
		}

		// GC keeps current, previous and last-known-good only.
		f.publish("hello", "3.0.0", randomBytes(1000))
		f.assign("hello@3.0.0")
		f.stage()
		entries, _ := os.ReadDir(filepath.Join(f.root, "addons/hello/versions"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "2.0.0,3.0.0" {
			t.Fatalf("versions after GC = %v, want [2.0.0 3.0.0]", names)
		}
		if tmp, _ := os.ReadDir(filepath.Join(f.root, "tmp")); len(tmp) != 0 {
			t.Fatalf("tmp/ holds %d leftovers", len(tmp))
		}
	})
}

// TestBadInputLosesNothing is DESIGN.md's list: every bad input leaves the
// staged version and current untouched, writes nothing outside the runtime
// root, and names the add-on and the reason.
func TestBadInputLosesNothing(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		good := randomBytes(64 << 10)
		pkg := f.publish("hello", "1.0.0", good)
		f.assign("hello@1.0.0")
		if rep := f.stage(); !rep.Converged() {
			t.Fatal(rep.Errors())
		}
		bad := f.publish("hello", "2.0.0", randomBytes(64<<10))
		base := f.addonFor(bad)

		// 2.0.0's package as the publisher signed it (the artifact is
		// pinned by it), or none at all (origin mode: the document's
		// signature over the bytes decides).
		ctx := context.Background()
		pkgKey := assignment.PackageKey("hello", "2.0.0")
		pkgRaw, _, err := store.ReadSmall(ctx, f.st, pkgKey, 1<<20, store.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pkgSig, _, _ := store.ReadSmall(ctx, f.st, pkgKey+".sig", 1024, store.OpenOptions{})
		putPkg := func(raw, sig []byte) {
			f.st.Put(ctx, pkgKey, bytes.NewReader(raw), int64(len(raw)))
			f.st.Put(ctx, pkgKey+".sig", bytes.NewReader(sig), int64(len(sig)))
		}
		published := func() { putPkg(pkgRaw, pkgSig) }
		origin := func() {
			f.st.Delete(ctx, pkgKey)
			f.st.Delete(ctx, pkgKey+".sig")
		}
		signPkg := func(p *assignment.Package, priv ed25519.PrivateKey) {
			raw, _ := json.Marshal(p)
			putPkg(raw, []byte(hex.EncodeToString(ed25519.Sign(priv, raw))+"\n"))
		}

		cases := []struct {
			name   string
			mutate func() // prepares the store / config
			want   string // in the error
			id     string // the add-on the error names ("" = the document)
		}{}
		add := func(name, want, id string, mutate func()) {
			cases = append(cases, struct {
				name   string
				mutate func()
				want   string
				id     string
			}{name, mutate, want, id})
		}
		for _, seg := range []string{"..", "../../etc", "a/b", `a\b`, ".", ""} {
			add("addon_id "+seg, "not a safe id", seg, func() {
				a := base
				a.AddonID = seg
				f.putAddons(a, f.addonFor(pkg))
			})
			if seg != "" {
				add("version "+seg, "version", "hello", func() {
					a := base
					a.Version = seg
					f.putAddons(a)
				})
			}
			add("binary name "+seg, "binary name", "hello", func() {
				a := base
				a.ArtifactObjectKey, a.ArtifactSHA256 = "", ""
				art := bad.Artifacts[f.platform.String()]
				art.BinaryName = seg
				if seg == "" {
					a.BinaryPath = "dir/"
				}
				a.Artifacts = map[string]assignment.Artifact{f.platform.String(): art}
				f.putAddons(a)
			})
		}
		// Pinned by the publisher's package: the document must name what
		// the package names, or it is refused before a byte is fetched.
		add("sha256 not the package's", "it pins sha256 "+strings.Repeat("0", 64), "hello", func() {
			published()
			a := base
			a.ArtifactSHA256 = strings.Repeat("0", 64)
			f.putAddons(a)
		})
		add("size not the package's", "it says 65537 bytes, the package 65536", "hello", func() {
			published()
			a := base
			a.ArtifactSize = int64(64<<10) + 1
			f.putAddons(a)
		})
		add("object not the package's", "it names object artifacts/hello/9.9.9/linux-amd64/hello", "hello", func() {
			published()
			a := base
			a.ArtifactObjectKey = "artifacts/hello/9.9.9/linux-amd64/hello"
			f.putAddons(a)
		})
		add("package for another platform", "package hello@2.0.0 has no artifact for "+f.platform.String(), "hello", func() {
			p := *bad
			p.Artifacts = map[string]assignment.Artifact{"linux/riscv64": bad.Artifacts[f.platform.String()]}
			signPkg(&p, f.priv)
			f.putAddons(base)
		})
		add("package of another version", "describes hello@1.0.0", "hello", func() {
			signPkg(pkg, f.priv)
			f.putAddons(base)
		})
		add("altered package", pkgKey, "hello", func() {
			putPkg(bytes.Replace(pkgRaw, []byte(base.ArtifactSHA256), []byte(strings.Repeat("1", 64)), 1), pkgSig)
			f.putAddons(base)
		})
		add("package signed by an untrusted key", pkgKey, "hello", func() {
			_, other, _ := ed25519.GenerateKey(nil)
			signPkg(bad, other)
			f.putAddons(base)
		})
		// A package embedded in the document (as assign and rollout write
		// it) is verified like a fetched one, and never taken for "no
		// package".
		add("embedded package altered", "the document's embedded package", "hello", func() {
			published()
			a := base
			a.PackageJSON = bytes.Replace(pkgRaw, []byte(base.ArtifactSHA256), []byte(strings.Repeat("1", 64)), 1)
			a.PackageSig = string(pkgSig)
			f.putAddons(a)
		})
		add("embedded package of another version", "describes hello@1.0.0", "hello", func() {
			published()
			raw, _, _ := store.ReadSmall(ctx, f.st, assignment.PackageKey("hello", "1.0.0"), 1<<20, store.OpenOptions{})
			sig, _, _ := store.ReadSmall(ctx, f.st, assignment.PackageKey("hello", "1.0.0")+".sig", 1024, store.OpenOptions{})
			a := base
			a.PackageJSON, a.PackageSig = raw, string(sig)
			f.putAddons(a)
		})
		// Origin mode: no package; the bytes' own signature decides.
		add("sha256 mismatch", "sha256 mismatch", "hello", func() {
			origin()
			a := base
			a.ArtifactSHA256 = strings.Repeat("0", 64)
			f.putAddons(a)
		})
		add("truncated body", "bytes, the assignment says", "hello", func() {
			origin()
			a := base
			a.ArtifactSize = int64(64<<10) + 1
			f.putAddons(a)
		})
		add("bad signature", "signature does not verify", "hello", func() {
			origin()
			a := base
			a.ArtifactSignature = pkg.Artifacts[f.platform.String()].Signature // another artifact's
			f.putAddons(a)
		})
		add("malformed signature", "signature", "hello", func() {
			origin()
			a := base
			a.ArtifactSignature = "zz"
			f.putAddons(a)
		})
		add("missing signature", "unsigned and trust.require_signatures is on", "hello", func() {
			origin()
			a := base
			a.ArtifactSignature = ""
			f.putAddons(a)
		})
		add("signature with unknown key id", "not among the trusted keys", "hello", func() {
			origin()
			a := base
			a.ArtifactKeyID = "00000000000000ff"
			f.putAddons(a)
		})
		add("unknown platform", "artifact is for linux/riscv64, this host is linux/amd64", "hello", func() {
			a := base
			a.TargetArch = "riscv64"
			f.putAddons(a)
		})
		add("object missing", "object not found", "hello", func() {
			origin()
			a := base
			a.ArtifactObjectKey = "artifacts/hello/9.9.9/linux-amd64/hello"
			f.putAddons(a)
		})
		add("object key traversal", "invalid object key", "hello", func() {
			a := base
			a.ArtifactObjectKey = "../../../etc/passwd"
			f.putAddons(a)
		})
		// Late, as it replaces the object: a store that serves more than
		// the signed size is refused before a byte is read, even by a
		// document that names no size.
		add("bytes past the signed size", "is 65537 bytes, the assignment says 65536", "hello", func() {
			published()
			art := bad.Artifacts[f.platform.String()]
			longer := append(randomBytes(64<<10), 0)
			f.st.Put(ctx, art.ObjectKey, bytes.NewReader(longer), int64(len(longer)))
			a := base
			a.ArtifactSize = 0
			f.putAddons(a)
		})
		// Last, as its document does not parse: the next reset could not
		// assign over it.
		add("malformed assignments.json", "assignments document", "", func() {
			f.putDoc([]byte(`{"agent_id":"edge-01","serial":99,"addons":[{`), true)
		})

		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				os.RemoveAll(f.root) // a fresh agent on the good document
				f.assign("hello@1.0.0")
				if rep := f.stage(); !rep.Converged() {
					t.Fatalf("reset: %v", rep.Errors())
				}
				before := f.tree()
				tc.mutate()
				rep := f.stage()
				if rep.Converged() {
					t.Fatal("Stage converged on bad input")
				}
				var msgs []string
				for _, e := range rep.Errors() {
					msgs = append(msgs, e.Error())
				}
				all := strings.Join(msgs, "\n")
				if !strings.Contains(all, tc.want) {
					t.Errorf("errors %q do not contain %q", all, tc.want)
				}
				if tc.id != "" && !strings.Contains(all, fmt.Sprintf("addon %q", tc.id)) {
					t.Errorf("errors %q do not name addon %q", all, tc.id)
				}
				if d := diffTrees(before, f.tree()); len(d) > 0 {
					t.Errorf("bad input changed the tree:\n%s", strings.Join(d, "\n"))
				}
				if f.current("hello") != "1.0.0" || !bytes.Equal(f.binary("hello"), good) {
					t.Errorf("current = %q, want the untouched 1.0.0", f.current("hello"))
				}
			})
		}
	})
}

func TestSignatureWithoutKeyFailsClosed(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	f.assign("hello@1.0.0")
	f.cfg.Trust = config.Trust{RequireSignatures: new(bool)} // not required, but no key either
	f.cfg.Assignments = config.Assignments{}                 // document unsigned-able: use overrides path below
	ov := filepath.Join(t.TempDir(), "addons.local.json")
	a := f.addonFor(f.publish("hello", "1.0.1", randomBytes(1000)))
	raw, _ := json.Marshal(map[string]any{"addons": []assignment.Addon{a}})
	os.WriteFile(ov, raw, 0o644)
	f.cfg.LocalOverrides = ov
	rep := f.stage()
	r := reportFor(t, rep, "hello")
	if r.Err == nil || !strings.Contains(r.Err.Error(), "no trust keys are configured") {
		t.Fatalf("signature with no key configured: %v, want a fail-closed refusal", r.Err)
	}
	if _, err := os.Stat(filepath.Join(f.root, "addons/hello/versions")); err == nil {
		t.Fatal("something was staged")
	}
}

// In origin mode (no package in the store) the document's signature over
// the bytes is what vouches for them.
func TestUnsignedArtifactAllowedOnlyWhenNotRequired(t *testing.T) {
	f := newFixture(t, "file")
	a := f.addonFor(f.publish("hello", "1.0.0", randomBytes(1000)))
	a.ArtifactSignature, a.ArtifactKeyID = "", ""
	f.st.Delete(context.Background(), assignment.PackageKey("hello", "1.0.0"))
	f.putAddons(a)
	if rep := f.stage(); rep.Converged() {
		t.Fatal("unsigned artifact staged with require_signatures on")
	}
	f.cfg.Trust.RequireSignatures = new(bool)
	if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.0.0" {
		t.Fatalf("unsigned artifact with require_signatures off: %v", rep.Errors())
	}
}

func TestDocumentChecks(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		f.publish("hello", "1.0.0", randomBytes(1000))
		doc := f.assign("hello@1.0.0")
		if rep := f.stage(); !rep.Converged() {
			t.Fatal(rep.Errors())
		}
		raw, _ := json.Marshal(doc)
		cases := []struct {
			name string
			doc  assignment.Document
			sign bool
			want error
		}{
			{"unsigned", assignment.Document{AgentID: "edge-01", Serial: doc.Serial + 1}, false, source.ErrUnsigned},
			{"other agent", assignment.Document{AgentID: "edge-02", Serial: doc.Serial + 1}, true, source.ErrOtherAgent},
			{"replayed serial", assignment.Document{AgentID: "edge-01", Serial: doc.Serial - 1}, true, source.ErrSerialReplay},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				b, _ := json.Marshal(tc.doc)
				f.putDoc(b, tc.sign)
				rep := f.stage()
				if !errors.Is(rep.DocumentErr, tc.want) {
					t.Fatalf("DocumentErr = %v, want %v", rep.DocumentErr, tc.want)
				}
				// The refused document did not empty the agent: the cached
				// one still assigns hello.
				if !rep.FromCache || reportFor(t, rep, "hello").State != "staged" || f.current("hello") != "1.0.0" {
					t.Fatalf("refused document changed what runs: %+v", rep)
				}
			})
		}
		t.Run("tampered signature", func(t *testing.T) {
			f.putDoc(raw, true)
			f.st.Put(context.Background(), "agents/edge-01/assignments.json", bytes.NewReader(append(raw, ' ')), int64(len(raw)+1))
			if rep := f.stage(); rep.DocumentErr == nil || !strings.Contains(rep.DocumentErr.Error(), "does not verify") {
				t.Fatalf("DocumentErr = %v, want signature failure", rep.DocumentErr)
			}
		})
	})
}

func TestConditionalFetch(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		f.publish("hello", "1.0.0", randomBytes(1000))
		f.assign("hello@1.0.0")
		src := &source.Store{Store: f.st, Key: "agents/edge-01/assignments.json"}
		got, err := src.Fetch(context.Background(), "")
		if err != nil || got.Token == "" || got.Sig == nil {
			t.Fatalf("Fetch = %+v, %v", got, err)
		}
		if _, err := src.Fetch(context.Background(), got.Token); !errors.Is(err, source.ErrUnchanged) {
			t.Fatalf("conditional Fetch of an unchanged document = %v, want ErrUnchanged", err)
		}
		f.assign("hello@1.0.0")
		if again, err := src.Fetch(context.Background(), got.Token); err != nil || again.Token == got.Token {
			t.Fatalf("Fetch after a change = %v, %v; want the new document", again, err)
		}
	})
}

func TestLastKnownGoodWhileStoreDown(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		v1 := randomBytes(10 << 10)
		f.publish("hello", "1.0.0", v1)
		f.assign("hello@1.0.0")
		if rep := f.stage(); !rep.Converged() {
			t.Fatal(rep.Errors())
		}
		f.publish("hello", "2.0.0", randomBytes(10<<10))
		f.assign("hello@2.0.0")

		// The store goes away (a closed port; a missing directory).
		if f.kind == "s3" {
			f.cfg.Store = "s3://gone?endpoint=127.0.0.1:1&insecure=true"
		} else {
			f.cfg.Store = "file://" + t.TempDir() + "/gone"
			os.MkdirAll(strings.TrimPrefix(f.cfg.Store, "file://"), 0o755)
		}
		for i := 0; i < 2; i++ { // and again, as after a reboot
			rep := f.stage()
			if rep.Converged() || rep.DocumentErr == nil || !rep.FromCache {
				t.Fatalf("store down: converged=%v documentErr=%v fromCache=%v", rep.Converged(), rep.DocumentErr, rep.FromCache)
			}
			if r := reportFor(t, rep, "hello"); r.State != "staged" || r.ActiveVersion != "1.0.0" {
				t.Fatalf("store down: %+v", r)
			}
			if f.current("hello") != "1.0.0" || !bytes.Equal(f.binary("hello"), v1) {
				t.Fatal("store down: last-known-good lost")
			}
		}
	})
}

func TestLastKnownGoodOnDeliveryFailure(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	f.assign("hello@1.0.0")
	f.stage()
	st, _ := state.LoadAddon(f.root, "hello")
	lkg := *st.LKG

	pkg := f.publish("hello", "2.0.0", randomBytes(1000))
	a := f.addonFor(pkg)
	a.ArtifactSHA256 = strings.Repeat("1", 64)
	a.Args = []string{"--new-flag"}
	a.ConfigJSON = json.RawMessage(`{"new":true}`)
	f.putAddons(a)
	rep := f.stage()
	r := reportFor(t, rep, "hello")
	if !r.FromLKG || r.ActiveVersion != "1.0.0" {
		t.Fatalf("report %+v, want from_lkg with 1.0.0 active", r)
	}
	st, _ = state.LoadAddon(f.root, "hello")
	if st.LKG.Digest() != lkg.Digest() {
		t.Fatalf("last-known-good spec changed (new args or config leaked): %+v", st.LKG)
	}
}

func TestPruneUnassigned(t *testing.T) {
	f := newFixture(t, "file")
	f.publish("hello", "1.0.0", randomBytes(1000))
	f.publish("other", "1.0.0", randomBytes(1000))
	f.assign("hello@1.0.0", "other@1.0.0")
	f.stage()
	f.assign("hello@1.0.0")
	f.stage()
	if _, err := os.Stat(filepath.Join(f.root, "addons/other")); !os.IsNotExist(err) {
		t.Fatalf("unassigned add-on left behind: %v", err)
	}
	if st, _ := state.LoadAddon(f.root, "other"); st.LKG != nil {
		t.Fatal("unassigned add-on kept its last-known-good spec")
	}
	// A disabled add-on keeps everything.
	doc, _ := publishAssignDisabled(f, "hello@1.0.0")
	_ = doc
	rep := f.stage()
	if r := reportFor(t, rep, "hello"); r.State != "disabled" || f.current("hello") != "1.0.0" {
		t.Fatalf("disabled: %+v, current %q", r, f.current("hello"))
	}
}

func TestOverrides(t *testing.T) {
	f := newFixture(t, "file")
	v1 := randomBytes(1000)
	f.publish("hello", "1.0.0", v1)
	f.publish("hello", "2.0.0", randomBytes(1000))
	f.assign("hello@2.0.0")
	ov := filepath.Join(t.TempDir(), "addons.local.json")
	f.cfg.LocalOverrides = ov

	// A version pin resolves through the pinned version's signed package.
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","version":"1.0.0"}]}`), 0o644)
	if rep := f.stage(); !rep.Converged() || f.current("hello") != "1.0.0" || !bytes.Equal(f.binary("hello"), v1) {
		t.Fatalf("pin: %v, current %q", rep.Errors(), f.current("hello"))
	}
	// Re-read on every reconcile; enabled=false keeps the rest.
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","enabled":false}]}`), 0o644)
	if r := reportFor(t, f.stage(), "hello"); r.State != "disabled" || r.Version != "2.0.0" {
		t.Fatalf("disable: %+v", r)
	}
	// Malformed: ignored, the pushed set is used, and the problem is named.
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","enabled":`), 0o644)
	rep := f.stage()
	if rep.OverridesErr == nil || !strings.Contains(rep.OverridesErr.Error(), ov) {
		t.Fatalf("OverridesErr = %v, want it to name %s", rep.OverridesErr, ov)
	}
	if !rep.Converged() || f.current("hello") != "2.0.0" {
		t.Fatalf("malformed overrides broke pushed delivery: %v", rep.Errors())
	}
}

func TestResumeAndETagChange(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		content := randomBytes(3 << 20)
		pkg := f.publish("hello", "1.0.0", content)
		f.assign("hello@1.0.0")
		art := pkg.Artifacts[f.platform.String()]
		info, err := f.st.Stat(context.Background(), art.ObjectKey)
		if err != nil {
			t.Fatal(err)
		}
		part := filepath.Join(f.root, "tmp", "hello@1.0.0.part")
		os.MkdirAll(filepath.Dir(part), 0o700)
		meta, _ := json.Marshal(map[string]any{"object_key": art.ObjectKey, "sha256": art.SHA256, "etag": info.ETag, "size": info.Size})

		t.Run("fresh download is one GET", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.Remove(part)
			os.Remove(part + ".json")
			counting := &countingStore{Store: f.st}
			rep, err := f.stageWith(delivery.Options{Store: counting})
			if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("fresh: %v %v", err, rep.Errors())
			}
			if !slices.Equal(counting.offsets, []int64{0}) || counting.stats != 0 {
				t.Fatalf("reads at %v and %d Stat calls, want one read from 0 and no HEAD", counting.offsets, counting.stats)
			}
		})
		t.Run("whole partial verifies without a request", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.WriteFile(part, content, 0o600)
			os.WriteFile(part+".json", meta, 0o600)
			counting := &countingStore{Store: f.st}
			rep, err := f.stageWith(delivery.Options{Store: counting})
			if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("whole partial: %v %v", err, rep.Errors())
			}
			if len(counting.offsets) != 0 || counting.stats != 0 {
				t.Fatalf("reads at %v and %d Stat calls, want none: the bytes on disk verify against the signed digest", counting.offsets, counting.stats)
			}
		})
		t.Run("resume", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.WriteFile(part, content[:1<<20], 0o600)
			os.WriteFile(part+".json", meta, 0o600)
			counting := &countingStore{Store: f.st}
			rep, err := f.stageWith(delivery.Options{Store: counting})
			if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("resume: %v %v", err, rep.Errors())
			}
			if !slices.Equal(counting.offsets, []int64{1 << 20}) || counting.stats != 0 {
				t.Fatalf("reads at %v and %d Stat calls, want one read from the partial's end %d and no HEAD", counting.offsets, counting.stats, 1<<20)
			}
		})
		t.Run("corrupt partial restarts from zero", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			junk := randomBytes(1 << 20)
			os.WriteFile(part, junk, 0o600)
			os.WriteFile(part+".json", meta, 0o600)
			counting := &countingStore{Store: f.st}
			rep, _ := f.stageWith(delivery.Options{Store: counting})
			if !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("corrupt partial: %v", rep.Errors())
			}
			if len(counting.offsets) != 2 || counting.offsets[0] != 1<<20 || counting.offsets[1] != 0 {
				t.Fatalf("reads at %v, want a resume then a restart from 0", counting.offsets)
			}
		})
		t.Run("object changed since the partial", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.WriteFile(part, content[:1<<20], 0o600)
			stale, _ := json.Marshal(map[string]any{"object_key": art.ObjectKey, "sha256": art.SHA256, "etag": "stale-etag", "size": info.Size})
			os.WriteFile(part+".json", stale, 0o600)
			counting := &countingStore{Store: f.st}
			rep, _ := f.stageWith(delivery.Options{Store: counting})
			// The resume asks for the rest on If-Match of the stale ETag; the
			// server refuses it, and not a byte of the changed object is
			// appended: the download starts again from 0.
			if !rep.Converged() || !slices.Equal(counting.offsets, []int64{1 << 20, 0}) || !slices.Equal(counting.changed, []bool{true, false}) {
				t.Fatalf("stale ETag: reads at %v (refused: %v), errors %v; want a refused resume, then one read from 0",
					counting.offsets, counting.changed, rep.Errors())
			}
			if counting.stats != 0 {
				t.Fatalf("%d Stat calls: the body's GET tells size and ETag, no HEAD is needed", counting.stats)
			}
		})
		t.Run("server ignores Range", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.WriteFile(part, content[:1<<20], 0o600)
			os.WriteFile(part+".json", meta, 0o600)
			counting := &countingStore{Store: rangeIgnoringStore{f.st}}
			rep, _ := f.stageWith(delivery.Options{Store: counting})
			if !rep.Converged() || !slices.Equal(counting.offsets, []int64{1 << 20, 0}) || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("reads at %v, errors %v; want a refused resume, then one read from 0", counting.offsets, rep.Errors())
			}
		})
		t.Run("interrupted run keeps its partial", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.Remove(part)
			os.Remove(part + ".json")
			s := &breakingStore{Store: f.st, breakAfter: 1 << 20}
			rep, _ := f.stageWith(delivery.Options{Store: s, Retries: 0})
			if r := reportFor(t, rep, "hello"); r.Err == nil || !strings.Contains(r.Err.Error(), "kept to resume") {
				t.Fatalf("interrupted download: %v", r.Err)
			}
			if fi, err := os.Stat(part); err != nil || fi.Size() != 1<<20 {
				t.Fatalf("partial after an interrupted run: %v, want 1 MiB kept", err)
			}
			counting := &countingStore{Store: f.st}
			rep, _ = f.stageWith(delivery.Options{Store: counting})
			if !rep.Converged() || counting.offsets[0] != 1<<20 || !bytes.Equal(f.binary("hello"), content) {
				t.Fatalf("next run: reads at %v, errors %v; want a resume from 1 MiB", counting.offsets, rep.Errors())
			}
		})
		t.Run("object replaced between ranges", func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.root, "addons/hello"))
			os.Remove(part)
			os.Remove(part + ".json")
			// The first body breaks off; before the ranged retry the
			// object is replaced: If-Match fails and delivery starts again
			// from zero against the new object, which fails verification
			// because it is not what the assignment signed.
			replaced := randomBytes(3 << 20)
			s := &breakingStore{Store: f.st, breakAfter: 1 << 20, onBreak: func() {
				f.st.Put(context.Background(), art.ObjectKey, bytes.NewReader(replaced), int64(len(replaced)))
			}}
			rep, _ := f.stageWith(delivery.Options{Store: s, Retries: 3, Sleep: func(context.Context, time.Duration) error { return nil }})
			r := reportFor(t, rep, "hello")
			if r.Err == nil || !strings.Contains(r.Err.Error(), "sha256 mismatch") {
				t.Fatalf("replaced object: %v, want a verification failure", r.Err)
			}
			if !s.sawChanged {
				t.Fatal("the ranged retry did not see the ETag change")
			}
			if f.current("hello") != "" {
				t.Fatal("a replaced object was staged")
			}
		})
	})
}
