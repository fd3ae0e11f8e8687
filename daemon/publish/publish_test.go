package publish

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

func setup(t *testing.T) (store.Store, string, ed25519.PrivateKey, string) {
	dir := t.TempDir()
	st, err := store.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	bin := filepath.Join(t.TempDir(), "pingsweep")
	os.WriteFile(bin, []byte("#!/bin/true\nbinary bytes"), 0o755)
	return st, dir, priv, bin
}

func TestPublishAndAssign(t *testing.T) {
	st, dir, priv, bin := setup(t)
	ctx := context.Background()
	pkg, err := Publish(ctx, PublishOptions{
		Store: st, Key: priv, AddonID: "pingsweep", Version: "1.0.0", Supervision: "agent_sidecar",
		OSCapabilities: []string{"NET_RAW"},
		Files:          []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}, {assignment.Platform{OS: "linux", Arch: "arm64"}, bin}},
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(bin)
	sum := sha256.Sum256(data)
	art := pkg.Artifacts["linux/amd64"]
	pub := priv.Public().(ed25519.PublicKey)
	sig, _ := hex.DecodeString(art.Signature)
	if art.SHA256 != hex.EncodeToString(sum[:]) || !ed25519.Verify(pub, data, sig) || art.KeyID != signing.KeyID(pub) ||
		art.ObjectKey != "artifacts/pingsweep/1.0.0/linux-amd64/pingsweep" || pkg.OSCapabilities[0] != "cap_net_raw" {
		t.Fatalf("package = %+v", pkg)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "packages/pingsweep/1.0.0/package.json"))
	sigFile, _ := os.ReadFile(filepath.Join(dir, "packages/pingsweep/1.0.0/package.json.sig"))
	psig, err := signing.ParseSigFile(sigFile)
	if err != nil || !ed25519.Verify(pub, raw, psig) {
		t.Fatalf("package.json.sig does not verify: %v", err)
	}

	cfg := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(cfg, []byte(`{ "targets": ["127.0.0.1"] }`), 0o644)
	amd64 := assignment.Platform{OS: "linux", Arch: "amd64"}
	doc, err := Assign(ctx, AssignOptions{
		Store: st, AgentID: "edge-01", Key: priv, Platform: &amd64, Addons: []string{"pingsweep@1.0.0"},
		Args: map[string][]string{"pingsweep": {"-b", "-a"}}, ConfigFiles: map[string]string{"pingsweep": cfg},
		Timeout: map[string]string{"pingsweep": "30s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	a := doc.Addons[0]
	if doc.Serial != 1 || a.ArtifactSHA256 != art.SHA256 || a.TargetArch != "amd64" || len(a.Artifacts) != 2 ||
		strings.Join(a.Args, " ") != "-b -a" || string(a.ConfigJSON) != `{"targets":["127.0.0.1"]}` || !a.IsEnabled() {
		t.Fatalf("document = %+v", doc)
	}
	if cv, _ := assignment.ComputeConfigVersion(*doc.Document); cv != doc.ConfigVersion {
		t.Fatalf("config_version %s, recomputed %s", doc.ConfigVersion, cv)
	}
	// Serial increments; an unsigned document removes the stale .sig.
	doc, err = Assign(ctx, AssignOptions{Store: st, AgentID: "edge-01", Trust: signing.NewKeyring(pub), Addons: []string{"pingsweep@1.0.0"}, Disable: map[string]bool{"pingsweep": true}})
	if err != nil || doc.Serial != 2 || doc.Addons[0].IsEnabled() {
		t.Fatalf("second assign = %+v, %v", doc, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "agents/edge-01/assignments.json.sig")); !os.IsNotExist(err) {
		t.Fatal("stale assignments.json.sig left beside an unsigned document")
	}
}

func TestAssignRefuses(t *testing.T) {
	st, _, priv, bin := setup(t)
	ctx := context.Background()
	Publish(ctx, PublishOptions{Store: st, Key: priv, AddonID: "hello", Version: "1.0.0", Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}})
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	riscv := assignment.Platform{OS: "linux", Arch: "riscv64"}
	for name, o := range map[string]AssignOptions{
		"package signed by another key": {Key: other, Addons: []string{"hello@1.0.0"}},
		"missing package":               {Key: priv, Addons: []string{"hello@2.0.0"}},
		"platform without artifact":     {Key: priv, Addons: []string{"hello@1.0.0"}, Platform: &riscv},
		"flag for unknown add-on":       {Key: priv, Addons: []string{"hello@1.0.0"}, Disable: map[string]bool{"nope": true}},
		"bad ref":                       {Key: priv, Addons: []string{"hello"}},
		"traversal":                     {Key: priv, Addons: []string{"../x@1"}},
	} {
		o.Store, o.AgentID = st, "edge-01"
		if _, err := Assign(ctx, o); err == nil {
			t.Errorf("%s: Assign succeeded", name)
		}
	}
	if _, err := st.Stat(ctx, "agents/edge-01/assignments.json"); err == nil {
		t.Error("a refused assign wrote a document")
	}
}

func TestPublishRefusesBeforeWriting(t *testing.T) {
	st, dir, priv, bin := setup(t)
	for name, o := range map[string]PublishOptions{
		"bad id":          {AddonID: "../x", Version: "1"},
		"bad version":     {AddonID: "x", Version: ".."},
		"bad binary name": {AddonID: "x", Version: "1", BinaryName: "a/b"},
		"bad capability":  {AddonID: "x", Version: "1", OSCapabilities: []string{"cap_net raw"}},
		"bad supervision": {AddonID: "x", Version: "1", Supervision: "cron"},
	} {
		o.Store, o.Key = st, priv
		o.Files = []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}
		if _, err := Publish(context.Background(), o); err == nil {
			t.Errorf("%s: Publish succeeded", name)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("refused publishes wrote %d entries", len(entries))
	}
}

// TestConcurrentAssignsNeverShareASerial: assigns racing from one document
// write conditionally: every one that succeeds has a serial of its own,
// the others fail writing nothing. Then one more assign, alone, leaves a
// document and a signature that match.
func TestConcurrentAssignsNeverShareASerial(t *testing.T) {
	st, dir, priv, bin := setup(t)
	ctx := context.Background()
	if _, err := Publish(ctx, PublishOptions{Store: st, Key: priv, AddonID: "pingsweep", Version: "1.0.0",
		Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Assign(ctx, AssignOptions{Store: st, AgentID: "a", Key: priv, Addons: []string{"pingsweep@1.0.0"}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	serials := map[uint64]int{}
	failed := 0
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			doc, err := Assign(ctx, AssignOptions{Store: st, AgentID: "a", Key: priv, Addons: []string{"pingsweep@1.0.0"},
				Args: map[string][]string{"pingsweep": {fmt.Sprint(i)}}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				serials[doc.Serial]++
			case errors.Is(err, store.ErrChanged):
				failed++
			default:
				t.Errorf("assign %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	for serial, n := range serials {
		if n > 1 {
			t.Fatalf("%d assigns wrote serial %d", n, serial)
		}
	}
	if len(serials)+failed != 8 || len(serials) == 0 {
		t.Fatalf("%d written, %d refused", len(serials), failed)
	}
	if _, err := Assign(ctx, AssignOptions{Store: st, AgentID: "a", Key: priv, Addons: []string{"pingsweep@1.0.0"}}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "agents/a/assignments.json"))
	sigFile, _ := os.ReadFile(filepath.Join(dir, "agents/a/assignments.json.sig"))
	sig, err := signing.ParseSigFile(sigFile)
	if err != nil || !ed25519.Verify(priv.Public().(ed25519.PublicKey), raw, sig) {
		t.Fatalf("the document left in the store does not match its signature: %v", err)
	}
}
