package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Run(m)) }

// fixture is a publisher, a store and an agent's runtime root.
type fixture struct {
	t        *testing.T
	kind     string
	storeURL string
	st       store.Store
	priv     ed25519.PrivateKey
	keyDir   string
	base     string // parent of the runtime root: nothing else may appear here
	root     string
	cfg      *config.Config
	platform assignment.Platform
}

func storeKinds(t *testing.T, fn func(t *testing.T, f *fixture)) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) { fn(t, newFixture(t, kind)) })
	}
}

func newFixture(t *testing.T, kind string) *fixture {
	t.Helper()
	f := &fixture{t: t, kind: kind, platform: assignment.Platform{OS: "linux", Arch: "amd64"}}
	switch kind {
	case "file":
		dir := t.TempDir()
		f.storeURL = "file://" + dir
	case "s3":
		srv := miniotest.Require(t)
		f.storeURL = srv.NewBucket(t)
	}
	var err error
	if f.st, err = store.Open(f.storeURL); err != nil {
		t.Fatal(err)
	}
	f.keyDir = t.TempDir()
	privPEM, pubPEM, _ := signing.GenerateKey()
	os.WriteFile(filepath.Join(f.keyDir, "signing.pub"), pubPEM, 0o644)
	f.priv, _ = signing.ParsePrivateKeyPEM(privPEM)
	f.base = t.TempDir()
	f.root = filepath.Join(f.base, "root")
	f.cfg = &config.Config{
		AgentID: "edge-01", RuntimeRoot: f.root, Store: f.storeURL,
		Assignments:            config.Assignments{StoreKey: "agents/edge-01/assignments.json"},
		Trust:                  config.Trust{PublicKeys: []string{f.keyDir}},
		MaxConcurrentDownloads: 2, DownloadRetries: 2, MinFreeBytes: 1 << 20,
	}
	return f
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// publish uploads content as id@version for the fixture's platform.
func (f *fixture) publish(id, version string, content []byte) *assignment.Package {
	f.t.Helper()
	path := filepath.Join(f.t.TempDir(), id)
	os.WriteFile(path, content, 0o755)
	pkg, err := publish.Publish(context.Background(), publish.PublishOptions{
		Store: f.st, Key: f.priv, AddonID: id, Version: version,
		Files: []publish.File{{Platform: f.platform, Path: path}},
	})
	if err != nil {
		f.t.Fatalf("publish %s@%s: %v", id, version, err)
	}
	return pkg
}

// assign writes a signed document for refs (ID@VERSION).
func (f *fixture) assign(refs ...string) *assignment.Document {
	f.t.Helper()
	doc, err := publish.Assign(context.Background(), publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv, Addons: refs})
	if err != nil {
		f.t.Fatalf("assign %v: %v", refs, err)
	}
	return doc.Document
}

// putDoc writes an arbitrary document, signed with the fixture's key when
// sign is true.
func (f *fixture) putDoc(raw []byte, sign bool) {
	f.t.Helper()
	key := "agents/edge-01/assignments.json"
	ctx := context.Background()
	if _, err := f.st.Put(ctx, key, bytes.NewReader(raw), int64(len(raw))); err != nil {
		f.t.Fatal(err)
	}
	f.st.Delete(ctx, key+".sig")
	if sign {
		sig := []byte(hex.EncodeToString(ed25519.Sign(f.priv, raw)) + "\n")
		f.st.Put(ctx, key+".sig", bytes.NewReader(sig), int64(len(sig)))
	}
}

// putAddons writes a signed document with the given entries and a serial
// above the current one.
func (f *fixture) putAddons(addons ...assignment.Addon) {
	f.t.Helper()
	serial := uint64(1)
	if raw, _, err := store.ReadSmall(context.Background(), f.st, "agents/edge-01/assignments.json", 1<<22, store.OpenOptions{}); err == nil {
		if d, err := assignment.Parse(raw); err == nil {
			serial = d.Serial + 1
		}
	}
	raw, _ := json.Marshal(assignment.Document{AgentID: "edge-01", Serial: serial, Addons: addons})
	f.putDoc(raw, true)
}

// addonFor is the document entry that assign would emit for pkg.
func (f *fixture) addonFor(pkg *assignment.Package) assignment.Addon {
	art := pkg.Artifacts[f.platform.String()]
	return assignment.Addon{
		AddonID: pkg.AddonID, Version: pkg.Version,
		ArtifactObjectKey: art.ObjectKey, ArtifactSHA256: art.SHA256, ArtifactSignature: art.Signature,
		ArtifactKeyID: art.KeyID, TargetOS: f.platform.OS, TargetArch: f.platform.Arch, BinaryPath: art.BinaryName,
	}
}

func (f *fixture) open(opts ...func(*Options)) *Agent {
	f.t.Helper()
	o := Options{
		Log:      slog.New(slog.NewTextHandler(testWriter{f.t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Platform: f.platform,
		Sleep:    func(context.Context, time.Duration) error { return nil },
	}
	for _, fn := range opts {
		fn(&o)
	}
	a, err := Open(f.cfg, o)
	if err != nil {
		f.t.Fatalf("Open: %v", err)
	}
	return a
}

// stage runs one delivery reconcile with a fresh agent, as `addond stage`.
func (f *fixture) stage() *Report {
	f.t.Helper()
	a := f.open()
	defer a.Close()
	rep, err := a.Stage(context.Background())
	if err != nil {
		f.t.Fatalf("Stage: %v", err)
	}
	return rep
}

func (f *fixture) current(id string) string {
	target, err := os.Readlink(filepath.Join(f.root, "addons", id, "current"))
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(target, "versions/")
}

func (f *fixture) binary(id string) []byte {
	dir := filepath.Join(f.root, "addons", id, "current")
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		f.t.Fatalf("%s holds %d entries, want 1", dir, len(entries))
	}
	b, _ := os.ReadFile(filepath.Join(dir, entries[0].Name()))
	return b
}

// tree lists every path under the base directory with a digest of regular
// files and the target of links: what "nothing changed" compares. State
// files, the lock and temporary files are left out.
func (f *fixture) tree() map[string]string {
	f.t.Helper()
	out := map[string]string{}
	filepath.WalkDir(f.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(f.base, p)
		switch {
		case strings.HasSuffix(rel, "state.json"), strings.HasPrefix(rel, "root/state"), strings.HasPrefix(rel, "root/tmp"), rel == "root/.lock":
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, _ := os.Readlink(p)
			out[rel] = "-> " + t
		case d.Type().IsRegular():
			b, _ := os.ReadFile(p)
			sum := sha256.Sum256(b)
			out[rel] = hex.EncodeToString(sum[:8])
		default:
			out[rel] = "dir"
		}
		return nil
	})
	return out
}

func diffTrees(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k+": "+v+" => "+b[k])
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+": (new) "+v)
		}
	}
	sort.Strings(d)
	return d
}

// reportFor returns id's outcome.
func reportFor(t *testing.T, rep *Report, id string) AddonReport {
	t.Helper()
	for _, a := range rep.Addons {
		if a.AddonID == id {
			return a
		}
	}
	t.Fatalf("no report for %q in %+v", id, rep.Addons)
	return AddonReport{}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// stageWith stages once, as a fresh agent whose delivery runs with o
// (o.Store usually wraps f.st) and the fixture's root, keys and
// signature policy.
func (f *fixture) stageWith(o delivery.Options) (*Report, error) {
	f.t.Helper()
	a := f.open()
	defer a.Close()
	a.setDeliverer(func(base delivery.Options) delivery.Options {
		o.Root, o.Keys, o.RequireSignatures = f.root, base.Keys, true
		if o.MinFree == 0 {
			o.MinFree = 1
		}
		return o
	})
	return a.Stage(context.Background())
}
