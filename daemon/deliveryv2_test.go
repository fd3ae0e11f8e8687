package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

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
		counting := &countingStore{Store: f.st}
		rep2, err := f.stageWith(delivery.Options{Store: counting})
		if err != nil || !rep2.Converged() {
			t.Fatalf("restage: %v %v", err, rep2.Errors())
		}
		if n := counting.opens(assignment.PackageKey("hello", "1.0.0")); n != 0 {
			t.Fatalf("the package was read from the store %d times, want 0 (kept)", n)
		}
	})
}

// assign embeds the signed package in the document: the agent verifies
// it and reads no package from the store.
func TestEmbeddedPackageNeedsNoRequest(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		content := randomBytes(100 << 10)
		f.publish("hello", "1.0.0", content)
		doc := f.assign("hello@1.0.0")
		if len(doc.Addons) != 1 || len(doc.Addons[0].PackageJSON) == 0 || doc.Addons[0].PackageSig == "" {
			t.Fatalf("assign embedded no package: %+v", doc.Addons)
		}
		counting := &countingStore{Store: f.st}
		rep, err := f.stageWith(delivery.Options{Store: counting})
		if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
			t.Fatalf("stage: %v %v", err, rep.Errors())
		}
		key := assignment.PackageKey("hello", "1.0.0")
		if n := counting.opens(key) + counting.opens(key+".sig"); n != 0 {
			t.Fatalf("the package was read from the store %d times, want 0 (embedded)", n)
		}
		if kept, _ := os.ReadFile(filepath.Join(f.root, "addons/hello/package-1.0.0.json")); !bytes.Equal(kept, doc.Addons[0].PackageJSON) {
			t.Fatal("the embedded package is not kept beside the state (the capped copy needs it)")
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

	// A key in both roles is refused when the config is taken: the roles
	// would not be separate.
	f.cfg.Trust.AssignmentKeys = []string{cpDir, f.keyDir}
	if _, err := Open(f.cfg, Options{}); err == nil || !strings.Contains(err.Error(), "in both trust.public_keys and trust.assignment_keys") {
		t.Fatalf("a key in both roles: %v", err)
	}
	f.cfg.Trust.AssignmentKeys = []string{cpDir}

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

// compressible is content zstd shrinks, like a binary does: runs of
// text with random bytes between them.
func compressible(n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "symbol_%d runtime.gopanic main.(*agent).reconcile ", b.Len()%977)
		b.Write(randomBytes(16))
	}
	return b.Bytes()[:n]
}

// publishZstd publishes content compressed, as addonctl publish
// --compress zstd does.
func (f *fixture) publishZstd(id, version string, content []byte) *assignment.Package {
	f.t.Helper()
	path := filepath.Join(f.t.TempDir(), id)
	os.WriteFile(path, content, 0o755)
	pkg, err := publish.Publish(context.Background(), publish.PublishOptions{
		Store: f.st, Key: f.priv, AddonID: id, Version: version, Compress: "zstd",
		Files: []publish.File{{Platform: f.platform, Path: path}},
	})
	if err != nil {
		f.t.Fatalf("publish --compress zstd %s@%s: %v", id, version, err)
	}
	return pkg
}

// putPackage writes pkg as id@version's package.json, signed with priv.
func (f *fixture) putPackage(pkg *assignment.Package, priv ed25519.PrivateKey) {
	f.t.Helper()
	raw, _ := json.Marshal(pkg)
	key := assignment.PackageKey(pkg.AddonID, pkg.Version)
	sig := []byte(hex.EncodeToString(ed25519.Sign(priv, raw)) + "\n")
	ctx := context.Background()
	if _, err := f.st.Put(ctx, key, bytes.NewReader(raw), int64(len(raw))); err != nil {
		f.t.Fatal(err)
	}
	f.st.Put(ctx, key+".sig", bytes.NewReader(sig), int64(len(sig)))
}

func zstdBytes(t *testing.T, content []byte, opts ...zstd.EOption) []byte {
	var b bytes.Buffer
	enc, err := zstd.NewWriter(&b, opts...)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(content)
	enc.Close()
	return b.Bytes()
}

func TestZstdArtifact(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		content := compressible(3 << 20)
		pkg := f.publishZstd("hello", "1.0.0", content)
		art := pkg.Artifacts[f.platform.String()]
		if art.Compression != "zstd" || !strings.HasSuffix(art.ObjectKey, ".zst") || art.Size != int64(len(content)) ||
			art.StoredSize <= 0 || art.StoredSize > art.Size/2 {
			t.Fatalf("published entry: %+v", art)
		}
		f.assign("hello@1.0.0")
		counting := &countingStore{Store: f.st}
		rep, err := f.stageWith(delivery.Options{Store: counting})
		if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
			t.Fatalf("compressed artifact: %v %v", err, rep.Errors())
		}
		if _, err := os.Stat(filepath.Join(f.root, "addons/hello/versions/1.0.0/hello")); err != nil {
			t.Fatalf("staged under the binary's name, not the object's: %v", err)
		}
		if tmp, _ := os.ReadDir(filepath.Join(f.root, "tmp")); len(tmp) != 0 {
			t.Fatalf("tmp/ holds %d leftovers", len(tmp))
		}
		if !slices.Equal(counting.offsets, []int64{0}) {
			t.Fatalf("reads at %v, want one", counting.offsets)
		}
	})
}

// A compressed download cut off keeps the object's bytes; the next run
// asks only for the rest and decodes the whole stream again.
func TestZstdResume(t *testing.T) {
	f := newFixture(t, "s3")
	content := compressible(4 << 20)
	pkg := f.publishZstd("hello", "1.0.0", content)
	art := pkg.Artifacts[f.platform.String()]
	f.assign("hello@1.0.0")
	cut := art.StoredSize / 2
	s := &breakingStore{Store: f.st, breakAfter: cut}
	rep, _ := f.stageWith(delivery.Options{Store: s, Retries: 0})
	if r := reportFor(t, rep, "hello"); r.Err == nil || !strings.Contains(r.Err.Error(), "kept to resume") {
		t.Fatalf("interrupted: %v", r.Err)
	}
	part := filepath.Join(f.root, "tmp/hello@1.0.0.part")
	if fi, err := os.Stat(part); err != nil || fi.Size() != cut {
		t.Fatalf("partial: %v, want the %d compressed bytes read", err, cut)
	}
	if _, err := os.Stat(part + ".out"); err == nil {
		t.Fatal("the decoded output of an interrupted run was kept")
	}
	counting := &countingStore{Store: f.st}
	rep, _ = f.stageWith(delivery.Options{Store: counting})
	if !rep.Converged() || !slices.Equal(counting.offsets, []int64{cut}) || !bytes.Equal(f.binary("hello"), content) {
		t.Fatalf("resume: reads at %v, errors %v; want one read from %d", counting.offsets, rep.Errors(), cut)
	}
}

// Hostile compressed objects: each is refused, and nothing is staged.
func TestZstdRefusals(t *testing.T) {
	f := newFixture(t, "file")
	ctx := context.Background()
	good := compressible(1 << 20)
	pkg := f.publishZstd("hello", "1.0.0", good)
	entry := pkg.Artifacts[f.platform.String()]
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

	cases := []struct {
		name   string
		stored []byte // the object's bytes
		size   int64  // the binary's size the package signs
		want   string
	}{
		// A bomb: the object decompresses to more than the signed size.
		{"decompresses past the size", zstdBytes(t, compressible(4<<20)), 1 << 20, "decompresses past the signed size"},
		// A window larger than the decoder allows (memory).
		{"window too large", zstdBytes(t, randomBytes(12<<20), zstd.WithWindowSize(32<<20), zstd.WithEncoderLevel(zstd.SpeedFastest)), 12 << 20, "window"},
		{"not zstd", randomBytes(4096), 4096, "zstd"},
		{"decompresses short", zstdBytes(t, good[:1000]), int64(len(good)), "size mismatch"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(f.root)
			version := fmt.Sprintf("2.0.%d", i)
			key := "artifacts/hello/" + version + "/" + f.platform.OS + "-" + f.platform.Arch + "/hello.zst"
			f.st.Put(ctx, key, bytes.NewReader(tc.stored), int64(len(tc.stored)))
			e := entry
			e.ObjectKey, e.Size, e.SHA256 = key, tc.size, sum(good)
			e.StoredSize, e.StoredSHA256 = int64(len(tc.stored)), sum(tc.stored)
			f.putPackage(&assignment.Package{AddonID: "hello", Version: version, Artifacts: map[string]assignment.Artifact{f.platform.String(): e}}, f.priv)
			f.assign("hello@" + version)
			rep := f.stage()
			r := reportFor(t, rep, "hello")
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.want) {
				t.Fatalf("%s: %v, want %q", tc.name, r.Err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(f.root, "addons/hello/versions", version)); err == nil {
				t.Fatal("staged")
			}
			if tmp, _ := os.ReadDir(filepath.Join(f.root, "tmp")); len(tmp) != 0 {
				t.Fatalf("tmp/ holds %d leftovers", len(tmp))
			}
		})
	}
	// Stored bytes that are not what the package signs (same size).
	t.Run("stored sha256 not the package's", func(t *testing.T) {
		os.RemoveAll(f.root)
		other := zstdBytes(t, good, zstd.WithEncoderLevel(zstd.SpeedFastest))
		version := "3.0.0"
		key := "artifacts/hello/" + version + "/" + f.platform.OS + "-" + f.platform.Arch + "/hello.zst"
		f.st.Put(ctx, key, bytes.NewReader(other), int64(len(other)))
		e := entry
		e.ObjectKey, e.Size, e.SHA256 = key, int64(len(good)), sum(good)
		e.StoredSize, e.StoredSHA256 = int64(len(other)), strings.Repeat("ab", 32)
		f.putPackage(&assignment.Package{AddonID: "hello", Version: version, Artifacts: map[string]assignment.Artifact{f.platform.String(): e}}, f.priv)
		f.assign("hello@" + version)
		r := reportFor(t, f.stage(), "hello")
		if r.Err == nil || !strings.Contains(r.Err.Error(), "stored sha256 mismatch") {
			t.Fatalf("%v, want a stored sha256 mismatch", r.Err)
		}
	})
}

// download_rate_limit holds for all downloads together: two add-ons
// downloading at once from the real MinIO share one limit.
func TestDownloadRateLimit(t *testing.T) {
	f := newFixture(t, "s3")
	const limit = 2 << 20 // bytes per second
	a1 := randomBytes(3 << 20)
	a2 := randomBytes(3 << 20)
	f.publish("hello", "1.0.0", a1)
	f.publish("ticker", "1.0.0", a2)
	f.assign("hello@1.0.0", "ticker@1.0.0")
	f.cfg.DownloadRateLimit = limit
	start := time.Now()
	rep := f.stage()
	elapsed := time.Since(start)
	if !rep.Converged() || !bytes.Equal(f.binary("hello"), a1) || !bytes.Equal(f.binary("ticker"), a2) {
		t.Fatalf("rate-limited staging: %v", rep.Errors())
	}
	got := float64(len(a1)+len(a2)) / elapsed.Seconds()
	t.Logf("6 MiB in two downloads at once under download_rate_limit %d: %.2fs, %.0f bytes/s (%.3f × the limit)", limit, elapsed.Seconds(), got, got/limit)
	// The cap holds within 10 %; the floor only says the limit is not
	// grossly undershot (staging has work besides the download).
	if got > 1.10*limit || got < 0.75*limit {
		t.Fatalf("%.0f bytes/s under a limit of %d: want within [0.75, 1.10] × the limit", got, limit)
	}
}

// On S3 the document carries its signature in its own metadata: the agent
// reads no .sig, and a metadata signature that does not verify refuses the
// document even beside a valid .sig.
func TestDocumentSignatureInMetadata(t *testing.T) {
	f := newFixture(t, "s3")
	content := randomBytes(1000)
	f.publish("hello", "1.0.0", content)
	f.assign("hello@1.0.0")
	key := "agents/edge-01/assignments.json"
	counting := &countingStore{Store: f.st}
	a := f.open()
	a.setSource(counting)
	rep, err := a.Stage(context.Background())
	a.Close()
	if err != nil || !rep.Converged() || f.current("hello") != "1.0.0" {
		t.Fatalf("stage: %v %v %v", err, rep.DocumentErr, rep.Errors())
	}
	if n := counting.opens(key + ".sig"); n != 0 || counting.opens(key) != 1 {
		t.Fatalf("read the document %d times and its .sig %d times, want 1 and 0", counting.opens(key), n)
	}

	// A document whose metadata signature is not its own: refused,
	// although the .sig beside it verifies.
	f.publish("hello", "2.0.0", randomBytes(1000))
	f.assign("hello@2.0.0")
	ctx := context.Background()
	raw, info, err := store.ReadSmall(ctx, f.st, key, 1<<20, store.OpenOptions{})
	if err != nil || info.Signature == "" {
		t.Fatalf("assign wrote no metadata signature: %v", err)
	}
	other := hex.EncodeToString(ed25519.Sign(f.priv, []byte("another document")))
	if _, err := f.st.(store.SignedPutter).PutIfMatchSigned(ctx, key, bytes.NewReader(raw), int64(len(raw)), info.ETag, other); err != nil {
		t.Fatal(err)
	}
	rep = f.stage()
	if rep.DocumentErr == nil || !strings.Contains(rep.DocumentErr.Error(), "signature") || f.current("hello") != "1.0.0" {
		t.Fatalf("a metadata signature of another document: %v, current %q", rep.DocumentErr, f.current("hello"))
	}
}

// mutingStore serves the first artifact body's first bytes, then
// nothing until it is closed (a server that stops mid-body).
type mutingStore struct {
	store.Store
	stalled atomic.Bool
}

func (s *mutingStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	rc, info, err := s.Store.Open(ctx, key, o)
	if err != nil || !strings.HasPrefix(key, "artifacts/") || !s.stalled.CompareAndSwap(false, true) {
		return rc, info, err
	}
	return &mutingReader{rc: rc, left: 64 << 10, closed: make(chan struct{})}, info, nil
}

type mutingReader struct {
	rc     io.ReadCloser
	left   int
	closed chan struct{}
	once   sync.Once
}

func (r *mutingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		<-r.closed
		return 0, errors.New("read on closed body")
	}
	p = p[:min(len(p), r.left)]
	n, err := r.rc.Read(p)
	r.left -= n
	return n, err
}

func (r *mutingReader) Close() error {
	r.once.Do(func() { close(r.closed) })
	return r.rc.Close()
}

// A body that stops mid-way is given up after the stall timeout and the
// download resumes where it stopped; it never holds the staging for good.
func TestStalledBodyIsGivenUp(t *testing.T) {
	f := newFixture(t, "s3")
	content := randomBytes(1 << 20)
	f.publish("hello", "1.0.0", content)
	f.assign("hello@1.0.0")
	start := time.Now()
	counting := &countingStore{Store: &mutingStore{Store: f.st}}
	rep, err := f.stageWith(delivery.Options{Store: counting, Retries: 2, StallTimeout: 300 * time.Millisecond,
		Sleep: func(context.Context, time.Duration) error { return nil }})
	if err != nil || !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
		t.Fatalf("stalled body: %v %v", err, rep.Errors())
	}
	if !slices.Equal(counting.offsets, []int64{0, 64 << 10}) || time.Since(start) > 20*time.Second {
		t.Fatalf("reads at %v after %v, want a stalled read then a resume from 64 KiB", counting.offsets, time.Since(start))
	}
}

// tmp/ is hostile (an add-on of the agent's uid may write it): links put
// where the pass will write are never written through, a partial that is
// another file's name is not resumed, and a forged "whole" partial only
// makes the download start again.
func TestHostileTmp(t *testing.T) {
	f := newFixture(t, "file")
	content := compressible(2 << 20)
	f.publishZstd("hello", "1.0.0", content)
	f.assign("hello@1.0.0")
	tmp := filepath.Join(f.root, "tmp")
	part := filepath.Join(tmp, "hello@1.0.0.part")
	reset := func() {
		os.RemoveAll(f.root)
		os.MkdirAll(tmp, 0o700)
	}
	staged := func(t *testing.T) os.FileInfo {
		t.Helper()
		rep := f.stage()
		if !rep.Converged() || !bytes.Equal(f.binary("hello"), content) {
			t.Fatalf("stage: %v", rep.Errors())
		}
		fi, err := os.Lstat(filepath.Join(f.root, "addons/hello/versions/1.0.0/hello"))
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("staged binary: %v %v, want a regular file", fi.Mode(), err)
		}
		return fi
	}
	victim := filepath.Join(t.TempDir(), "victim")
	for _, name := range []string{".part.out", ".part.json", ".part"} {
		t.Run("symlink at "+name, func(t *testing.T) {
			reset()
			os.WriteFile(victim, []byte("victim"), 0o600)
			os.Symlink(victim, part+strings.TrimPrefix(name, ".part"))
			staged(t)
			if got, _ := os.ReadFile(victim); string(got) != "victim" {
				t.Fatalf("written through the link: %q", got)
			}
			if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o600 {
				t.Fatalf("the link's target was made %v", fi.Mode().Perm())
			}
		})
	}
	t.Run("partial that is another file's name", func(t *testing.T) {
		reset()
		art := f.pkgArtifact("hello", "1.0.0")
		data, _, _ := store.ReadSmall(context.Background(), f.st, art.ObjectKey, 1<<30, store.OpenOptions{})
		info, _ := f.st.Stat(context.Background(), art.ObjectKey)
		os.WriteFile(victim, data[:1000], 0o600)
		os.Link(victim, part)
		meta, _ := json.Marshal(map[string]any{"object_key": art.ObjectKey, "sha256": art.SHA256, "etag": info.ETag, "size": info.Size})
		os.WriteFile(part+".json", meta, 0o600)
		fi := staged(t)
		vi, _ := os.Stat(victim)
		if os.SameFile(fi, vi) {
			t.Fatal("the staged binary is the hard-linked file")
		}
		if got, _ := os.ReadFile(victim); !bytes.Equal(got, data[:1000]) {
			t.Fatal("the other name's bytes were written")
		}
	})
	t.Run("forged whole partial", func(t *testing.T) {
		reset()
		art := f.pkgArtifact("hello", "1.0.0")
		os.WriteFile(part, []byte("0123456789"), 0o600)
		meta, _ := json.Marshal(map[string]any{"object_key": art.ObjectKey, "sha256": art.SHA256, "etag": "x", "size": 10})
		os.WriteFile(part+".json", meta, 0o600)
		staged(t)
	})
}

// pkgArtifact is this platform's artifact entry of id@version's package.
func (f *fixture) pkgArtifact(id, version string) assignment.Artifact {
	f.t.Helper()
	pkg, _, _, err := assignment.FetchPackage(context.Background(), f.st, nil, id, version)
	if err != nil {
		f.t.Fatal(err)
	}
	return pkg.Artifacts[f.platform.String()]
}
