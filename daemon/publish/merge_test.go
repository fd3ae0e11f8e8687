package publish

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Run(m)) }

// publishAll publishes each id at each version.
func publishAll(t *testing.T, st store.Store, o AssignOptions, bin string, ids []string, versions ...string) {
	t.Helper()
	for _, id := range ids {
		for _, v := range versions {
			if _, err := Publish(context.Background(), PublishOptions{Store: st, Key: o.Key, AddonID: id, Version: v,
				Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func ids(doc *assignment.Document) string {
	var s []string
	for _, a := range doc.Addons {
		s = append(s, a.AddonID+"@"+a.Version)
	}
	return strings.Join(s, " ")
}

// TestAssignMergeRemoveDryRun: --merge changes one add-on and keeps the
// others, entries and order; --remove drops one; --dry-run says what
// would change and writes nothing; every assign says what it changed; a
// mistaken --remove is refused before anything is written.
func TestAssignMergeRemoveDryRun(t *testing.T) {
	st, dir, priv, bin := setup(t)
	ctx := context.Background()
	base := AssignOptions{Store: st, AgentID: "a", Key: priv}
	publishAll(t, st, base, bin, []string{"hello", "sweep", "inv"}, "1.0.0", "1.1.0")
	cfg := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(cfg, []byte(`{"targets": ["10.0.0.1"]}`), 0o644)

	o := base
	o.Addons = []string{"hello@1.0.0", "sweep@1.0.0", "inv@1.0.0"}
	o.ConfigFiles = map[string]string{"sweep": cfg}
	o.Expires = time.Hour
	res, err := Assign(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.Changes); got != "[+ hello: version 1.0.0 + sweep: version 1.0.0 + inv: version 1.0.0]" || !res.Written {
		t.Fatalf("first assign: %s", got)
	}
	first := res.Document
	doc := filepath.Join(dir, "agents/a/assignments.json")
	read := func() string { b, _ := os.ReadFile(doc); return string(b) }

	// Merge: one add-on changes, the others keep their entries (sweep's
	// config too) and places, and the expiry stays.
	o = base
	o.Merge, o.Addons = true, []string{"hello@1.1.0"}
	if res, err = Assign(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := ids(res.Document); got != "hello@1.1.0 sweep@1.0.0 inv@1.0.0" || res.Serial != 2 {
		t.Fatalf("after --merge: %s serial %d", got, res.Serial)
	}
	if fmt.Sprint(res.Changes) != "[~ hello: version 1.0.0 → 1.1.0]" {
		t.Errorf("--merge changes: %v", res.Changes)
	}
	if !jsonEqual(res.Addons[1].ConfigJSON, first.Addons[1].ConfigJSON) || res.Expires == nil || !res.Expires.Equal(*first.Expires) {
		t.Errorf("--merge lost sweep's config or the expiry: %+v", res.Document)
	}

	// Dry run: the changes, nothing written.
	o = base
	o.Remove, o.Addons, o.DryRun = []string{"inv"}, []string{"sweep@1.1.0", "extra@1.0.0"}, true
	if _, err := Assign(ctx, o); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("a dry run with an unpublished add-on: %v", err)
	}
	publishAll(t, st, base, bin, []string{"extra"}, "1.0.0")
	before := read()
	if res, err = Assign(ctx, o); err != nil {
		t.Fatal(err)
	}
	want := "[~ sweep: config_json, version 1.0.0 → 1.1.0 + extra: version 1.0.0 - inv: version 1.0.0]"
	if got := fmt.Sprint(res.Changes); got != want || res.Written || res.Serial != 3 {
		t.Errorf("dry run: %s written %v serial %d\nwant %s", got, res.Written, res.Serial, want)
	}
	if read() != before {
		t.Fatal("a dry run wrote the document")
	}

	// Remove.
	o = base
	o.Remove = []string{"inv"}
	if res, err = Assign(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := ids(res.Document); got != "hello@1.1.0 sweep@1.0.0" || fmt.Sprint(res.Changes) != "[- inv: version 1.0.0]" {
		t.Fatalf("after --remove inv: %s, %v", got, res.Changes)
	}

	// Refused, nothing written: removing what is not there, or what is
	// also assigned.
	before = read()
	for _, c := range []struct {
		o    AssignOptions
		want string
	}{
		{AssignOptions{Remove: []string{"invv"}}, `no add-on "invv"`},
		{AssignOptions{Remove: []string{"hello"}, Addons: []string{"hello@1.0.0"}}, "both in --addon and --remove"},
	} {
		c.o.Store, c.o.AgentID, c.o.Key = st, "a", priv
		if _, err := Assign(ctx, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
	if read() != before {
		t.Fatal("a refused assign wrote the document")
	}

	// A document someone with write access to the store (and no key)
	// left there: --merge and --remove do not sign its entries again.
	forged := regexp.MustCompile(`"serial": \d+`).ReplaceAllString(read(), `"serial": 1000`)
	if forged == read() {
		t.Fatal("nothing to forge")
	}
	os.WriteFile(doc, []byte(forged), 0o644)
	for _, c := range []AssignOptions{{Merge: true, Addons: []string{"inv@1.1.0"}}, {Remove: []string{"sweep"}}} {
		c.Store, c.AgentID, c.Key = st, "a", priv
		if _, err := Assign(ctx, c); err == nil || !strings.Contains(err.Error(), "does not verify") {
			t.Errorf("merging into a forged document: %v", err)
		}
		if read() != forged {
			t.Fatal("a merge into a forged document wrote")
		}
	}

	// Without --merge: exactly the named add-ons, and the removal is said.
	o = base
	o.Addons = []string{"hello@1.1.0"}
	if res, err = Assign(ctx, o); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.Changes) != "[- sweep: version 1.0.0]" || res.Expires != nil {
		t.Errorf("a whole-document assign: %v, expires %v", res.Changes, res.Expires)
	}
}

// TestConcurrentMergesLoseNothing: agents' documents are changed by many
// operators at once, each adding its add-on with --merge and running it
// again when told the document changed under it. In the end every add-on
// is there and the serials went up one by one — on the directory store
// and on a real MinIO.
func TestConcurrentMergesLoseNothing(t *testing.T) {
	for _, kind := range []string{"dir", "s3"} {
		t.Run(kind, func(t *testing.T) {
			st, _, priv, bin := setup(t)
			if kind == "s3" {
				var err error
				if st, err = store.Open(miniotest.Require(t).NewBucket(t)); err != nil {
					t.Fatal(err)
				}
			}
			ctx := context.Background()
			base := AssignOptions{Store: st, AgentID: "a", Key: priv}
			const n = 8
			var all []string
			for i := range n {
				all = append(all, fmt.Sprintf("addon%d", i))
			}
			publishAll(t, st, base, bin, all, "1.0.0")
			var wg sync.WaitGroup
			var mu sync.Mutex
			conflicts := 0
			for _, id := range all {
				wg.Go(func() {
					o := base
					o.Merge, o.Addons = true, []string{id + "@1.0.0"}
					for attempt := 0; ; attempt++ {
						_, err := Assign(ctx, o)
						if err == nil {
							return
						}
						if !errors.Is(err, store.ErrChanged) || attempt > 50 {
							t.Errorf("%s: %v", id, err)
							return
						}
						mu.Lock()
						conflicts++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			prev, _, _, err := current(ctx, st, AssignmentsKey("a"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range prev.Addons {
				got = append(got, a.AddonID)
			}
			slices.Sort(got)
			if !slices.Equal(got, all) || prev.Serial != n {
				t.Fatalf("after %d concurrent merges: %v serial %d (want all %d, serial %d)", n, got, prev.Serial, n, n)
			}
			t.Logf("%s: %d merges, %d refused as the document changed under them and run again", kind, n, conflicts)
		})
	}
}

// flakyStore fails the first fails Puts of artifacts (after reading part
// of what they were given, like a dropped connection), and runs before
// (if set) before each.
type flakyStore struct {
	store.Store
	fails  int
	puts   int
	before func()
}

func (f *flakyStore) Put(ctx context.Context, key string, r io.Reader, size int64) (store.Info, error) {
	if strings.HasPrefix(key, "artifacts/") {
		f.puts++
		if f.before != nil {
			f.before()
		}
		if f.puts <= f.fails {
			io.CopyN(io.Discard, r, size/2)
			return store.Info{}, errors.New("connection reset by peer")
		}
	}
	return f.Store.Put(ctx, key, r, size)
}

// TestPublishRetriesUploads: an upload that fails is sent again, with a
// warning, until it lands (plain and zstd); one that keeps failing fails
// publish after the last attempt, with no package written; a file that
// changes after it was signed is never published.
func TestPublishRetriesUploads(t *testing.T) {
	st, dir, priv, bin := setup(t)
	uploadBackoff = time.Millisecond
	ctx := context.Background()
	for _, compress := range []string{"", assignment.CompressionZstd} {
		fs := &flakyStore{Store: st, fails: 2}
		var warnings []string
		pkg, err := Publish(ctx, PublishOptions{Store: fs, Key: priv, AddonID: "hello", Version: "1.0.0" + map[string]string{"": "", "zstd": "-z"}[compress],
			Compress: compress, Warn: func(s string) { warnings = append(warnings, s) },
			Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}})
		if err != nil || fs.puts != 3 || len(warnings) != 2 || !strings.Contains(warnings[0], "attempt 1 of 5") {
			t.Fatalf("compress %q: %v after %d puts, warnings %q", compress, err, fs.puts, warnings)
		}
		art := pkg.Artifacts["linux/amd64"]
		stored, _ := os.ReadFile(filepath.Join(dir, art.ObjectKey))
		want := art.SHA256
		if compress != "" {
			want = art.StoredSHA256
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(stored)); got != want {
			t.Errorf("compress %q: the stored object's sha256 %s, package says %s", compress, got, want)
		}
	}

	fs := &flakyStore{Store: st, fails: 99}
	if _, err := Publish(ctx, PublishOptions{Store: fs, Key: priv, AddonID: "hello", Version: "2.0.0",
		Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}}); err == nil || !strings.Contains(err.Error(), "attempt 5 of 5") {
		t.Fatalf("an upload that always fails: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "packages/hello/2.0.0/package.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a package was written for a failed upload: %v", err)
	}

	fs = &flakyStore{Store: st, before: func() { os.WriteFile(bin, []byte("#!/bin/true\nother bytes!"), 0o755) }}
	_, err := Publish(ctx, PublishOptions{Store: fs, Key: priv, AddonID: "hello", Version: "3.0.0",
		Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}})
	if err == nil || !strings.Contains(err.Error(), "changed between signing and upload") {
		t.Fatalf("a file changed after signing: %v", err)
	}
	for _, p := range []string{"packages/hello/3.0.0/package.json", "artifacts/hello/3.0.0/linux-amd64/pingsweep"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// cutAfter cancels its context once more than n bytes went through it.
type cutAfter struct {
	n      int64
	cancel context.CancelFunc
}

func (c *cutAfter) Write(p []byte) (int, error) {
	if c.n -= int64(len(p)); c.n < 0 {
		c.cancel()
	}
	return len(p), nil
}

// TestPublishResumesAcrossRuns, on the real MinIO: a publish of a large
// file cut in its upload (the command killed, the link gone) writes no
// package; the next run of the same publish sends only the parts the
// store lacks, says so, and the object is what the package signs —
// plain, and zstd (whose stream is the same from run to run).
func TestPublishResumesAcrossRuns(t *testing.T) {
	defer func(m, p int64) { resumableMin, store.PartSize = m, p }(resumableMin, store.PartSize)
	resumableMin, store.PartSize = 10<<20, 5<<20
	uploadBackoff = time.Millisecond
	st, err := store.Open(miniotest.Require(t).NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	_, _, priv, _ := setup(t)
	big := filepath.Join(t.TempDir(), "big")
	data := make([]byte, 4*store.PartSize+4321)
	rand.Read(data)
	os.WriteFile(big, data, 0o755)
	ctx := context.Background()
	for _, compress := range []string{"", assignment.CompressionZstd} {
		opts := PublishOptions{Store: st, Key: priv, AddonID: "big", Version: "1.0.0" + map[string]string{"": "", "zstd": "-z"}[compress],
			Compress: compress, Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, big}}}

		cut, cancel := context.WithCancel(ctx)
		first := opts
		first.Progress = func(string, int64) io.Writer { return &cutAfter{n: 2 * store.PartSize, cancel: cancel} }
		if _, err := Publish(cut, first); !errors.Is(err, context.Canceled) {
			t.Fatalf("compress %q: the cut publish: %v", compress, err)
		}
		if _, err := st.Stat(ctx, assignment.PackageKey("big", opts.Version)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("compress %q: a package was written for a cut upload: %v", compress, err)
		}

		var notes []string
		opts.Note = func(s string) { notes = append(notes, s) }
		pkg, err := Publish(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(notes) != 1 || !strings.Contains(notes[0], fmt.Sprintf("resumed: %d of", 2*store.PartSize)) {
			t.Fatalf("compress %q: notes %q, want two parts kept", compress, notes)
		}
		art := pkg.Artifacts["linux/amd64"]
		want := art.SHA256
		if compress != "" {
			want = art.StoredSHA256
		}
		r, _, err := st.Open(ctx, art.ObjectKey, store.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, r)
		r.Close()
		if got := fmt.Sprintf("%x", h.Sum(nil)); got != want {
			t.Fatalf("compress %q: the stored object's sha256 %s, the package signs %s", compress, got, want)
		}
	}
}

// TestPublishWithoutPartChecksums, on the real MinIO behind a proxy that
// drops the part checksums from its answers (a store that keeps none): a
// large artifact is uploaded in one piece instead, in the same attempt —
// a note says so, nothing warns — and the stored object is the one the
// package signs.
func TestPublishWithoutPartChecksums(t *testing.T) {
	defer func(m, p int64) { resumableMin, store.PartSize = m, p }(resumableMin, store.PartSize)
	resumableMin, store.PartSize = 10<<20, 5<<20
	srv := miniotest.Require(t)
	st, err := store.Open(srv.Through(t, srv.NewBucket(t), func(r *http.Response) error {
		if r.Request.URL.Query().Has("partNumber") {
			r.Header.Del("X-Amz-Checksum-Sha256")
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, _, priv, _ := setup(t)
	big := filepath.Join(t.TempDir(), "big")
	data := make([]byte, 3*store.PartSize)
	rand.Read(data)
	os.WriteFile(big, data, 0o755)
	var notes, warnings []string
	pkg, err := Publish(context.Background(), PublishOptions{Store: st, Key: priv, AddonID: "big", Version: "1.0.0",
		Note: func(s string) { notes = append(notes, s) }, Warn: func(s string) { warnings = append(warnings, s) },
		Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, big}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "uploading it in one piece") || len(warnings) != 0 {
		t.Fatalf("notes %q, warnings %q; want one note of the upload in one piece", notes, warnings)
	}
	art := pkg.Artifacts["linux/amd64"]
	got, _, err := store.ReadSmall(context.Background(), st, art.ObjectKey, int64(len(data)), store.OpenOptions{})
	if sum := sha256.Sum256(got); err != nil || fmt.Sprintf("%x", sum) != art.SHA256 || !bytes.Equal(got, data) {
		t.Fatalf("the stored object is not the one the package signs: %v", err)
	}
}

// TestPublishStopsWhenDenied, on the real MinIO: credentials the store
// refuses fail the upload at once — ErrDenied, no retries, no warnings —
// and no package is written.
func TestPublishStopsWhenDenied(t *testing.T) {
	uploadBackoff = time.Second // a retry would show in the time taken
	url := miniotest.Require(t).NewBucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "nobody")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	st, err := store.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _, priv, bin := setup(t)
	var warnings []string
	start := time.Now()
	_, err = Publish(context.Background(), PublishOptions{Store: st, Key: priv, AddonID: "hello", Version: "1.0.0",
		Warn: func(s string) { warnings = append(warnings, s) }, Files: []File{{assignment.Platform{OS: "linux", Arch: "amd64"}, bin}}})
	if !errors.Is(err, store.ErrDenied) || !strings.Contains(err.Error(), "attempt 1 of 5") || len(warnings) != 0 || time.Since(start) > 900*time.Millisecond {
		t.Fatalf("publish with refused credentials: %v after %v, warnings %q", err, time.Since(start), warnings)
	}
	t.Log(err)
}
