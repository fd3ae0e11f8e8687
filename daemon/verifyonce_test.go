package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// keyCountingStore counts the Opens of each key.
type keyCountingStore struct {
	store.Store
	mu sync.Mutex
	n  map[string]int
}

func (c *keyCountingStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[key]++
	c.mu.Unlock()
	return c.Store.Open(ctx, key, o)
}

func (c *keyCountingStore) opens(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// Verify once (DESIGN.md, "Delivery v2"): an artifact the publisher's
// package names needs no signature of its own in the document; the
// package is fetched once per version and kept beside the add-on's state.
func TestPackagePinsTheArtifact(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		content := randomBytes(200 << 10)
		a := f.addonFor(f.publish("hello", "1.0.0", content))
		a.ArtifactSignature, a.ArtifactKeyID = "", "" // the control plane copies no signature
		f.putAddons(a)
		rep := f.stage()
		if !rep.Converged() || f.current("hello") != "1.0.0" || !bytes.Equal(f.binary("hello"), content) {
			t.Fatalf("a pinned artifact without a byte signature: %v", rep.Errors())
		}
		kept := filepath.Join(f.root, "addons/hello/package-1.0.0.json")
		raw, err := os.ReadFile(kept)
		if err != nil {
			t.Fatalf("the package is not kept beside the state: %v", err)
		}
		if _, err := os.Stat(kept + ".sig"); err != nil {
			t.Fatal(err)
		}
		if inStore, _, _ := store.ReadSmall(context.Background(), f.st, assignment.PackageKey("hello", "1.0.0"), 1<<20, store.OpenOptions{}); !bytes.Equal(raw, inStore) {
			t.Fatalf("kept package:\n%s\nthe store's:\n%s", raw, inStore)
		}

		// The same version again with its staged copy gone: the kept
		// package serves, the store's is not read again.
		os.RemoveAll(filepath.Join(f.root, "addons/hello/versions"))
		counting := &keyCountingStore{Store: f.st}
		ag := f.open()
		ag.setDeliverer(func(o delivery.Options) delivery.Options {
			return delivery.Options{Root: f.root, Store: counting, Keys: o.Keys, RequireSignatures: true, MinFree: 1}
		})
		rep2, err := ag.Stage(context.Background())
		ag.Close()
		if err != nil || !rep2.Converged() {
			t.Fatalf("restage: %v %v", err, rep2.Errors())
		}
		if n := counting.opens(assignment.PackageKey("hello", "1.0.0")); n != 0 {
			t.Fatalf("the package was read from the store %d times, want 0 (kept)", n)
		}
	})
}

// With trust.assignment_keys the roles are separate: the control plane's
// key signs documents, the publisher's packages, and neither stands in
// for the other.
func TestAssignmentKeysSeparateTheRoles(t *testing.T) {
	f := newFixture(t, "file")
	content := randomBytes(1000)
	a := f.addonFor(f.publish("hello", "1.0.0", content))

	cpDir := t.TempDir()
	privPEM, pubPEM, _ := signing.GenerateKey()
	os.WriteFile(filepath.Join(cpDir, "control-plane.pub"), pubPEM, 0o644)
	cpPriv, _ := signing.ParsePrivateKeyPEM(privPEM)
	f.cfg.Trust.AssignmentKeys = []string{cpDir}

	// Signed by the publisher's key: refused now.
	f.putAddons(a)
	rep := f.stage()
	if rep.DocumentErr == nil || !strings.Contains(rep.DocumentErr.Error(), "signature") || f.current("hello") != "" {
		t.Fatalf("a document signed by a package key with assignment_keys set: err %v, current %q", rep.DocumentErr, f.current("hello"))
	}
	// Signed by the control plane's key: accepted, the artifact pinned by
	// the publisher's package.
	f.putAddons(a)
	key := "agents/edge-01/assignments.json"
	raw, _ := os.ReadFile(strings.TrimPrefix(f.storeURL, "file://") + "/" + key)
	sig := []byte(hex.EncodeToString(ed25519.Sign(cpPriv, raw)) + "\n")
	f.st.Put(context.Background(), key+".sig", bytes.NewReader(sig), int64(len(sig)))
	rep = f.stage()
	if !rep.Converged() || f.current("hello") != "1.0.0" {
		t.Fatalf("a document signed by the assignment key: %v %v", rep.DocumentErr, rep.Errors())
	}

	// A package signed by the control plane's key is not the publisher's.
	pkg2 := f.publish("hello", "2.0.0", randomBytes(1000))
	pkgKey := assignment.PackageKey("hello", "2.0.0")
	praw, _, _ := store.ReadSmall(context.Background(), f.st, pkgKey, 1<<20, store.OpenOptions{})
	psig := []byte(hex.EncodeToString(ed25519.Sign(cpPriv, praw)) + "\n")
	f.st.Put(context.Background(), pkgKey+".sig", bytes.NewReader(psig), int64(len(psig)))
	a2 := f.addonFor(pkg2)
	f.putAddons(a2)
	raw, _ = os.ReadFile(strings.TrimPrefix(f.storeURL, "file://") + "/" + key)
	sig = []byte(hex.EncodeToString(ed25519.Sign(cpPriv, raw)) + "\n")
	f.st.Put(context.Background(), key+".sig", bytes.NewReader(sig), int64(len(sig)))
	rep = f.stage()
	r := reportFor(t, rep, "hello")
	if r.Err == nil || !strings.Contains(r.Err.Error(), pkgKey) || f.current("hello") != "1.0.0" {
		t.Fatalf("a package signed by the assignment key: %v, current %q", r.Err, f.current("hello"))
	}
	if _, err := os.Stat(filepath.Join(f.root, "addons/hello/versions/2.0.0")); err == nil {
		t.Fatal("2.0.0 was staged under a package the publisher did not sign")
	}
}
