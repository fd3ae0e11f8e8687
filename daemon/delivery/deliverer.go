package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/internal/atomicfile"
)

// Options configure a Deliverer.
type Options struct {
	Root              string           // the runtime root
	Store             store.Store      // nil: no store configured
	Keys              *signing.Keyring // trusted publisher keys
	Platform          assignment.Platform
	RequireSignatures bool
	MaxConcurrent     int   // parallel downloads (default 2)
	Retries           int   // retries of one download after a transient failure
	MinFree           int64 // bytes to leave free beyond the artifact
	RateLimit         int64 // bytes per second for all downloads together; 0: unlimited
	// StallTimeout gives up a body that sends nothing for this long (the
	// download is retried); 0: DefaultStallTimeout.
	StallTimeout time.Duration
	Log          *slog.Logger
	// Sleep waits between retries; tests replace it. Default: a timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Deliverer fetches, verifies and stages artifacts.
type Deliverer struct {
	opts  Options
	rate  *rate.Limiter // nil: unlimited
	sem   chan struct{}
	locks sync.Map // add-on id → *sync.Mutex guarding its state.json
}

func (d *Deliverer) lock(id string) func() {
	m, _ := d.locks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// State reads add-on id's persisted state.
func (d *Deliverer) State(id string) (*state.Addon, error) {
	if err := assignment.ValidAddonID(id); err != nil {
		return nil, err
	}
	defer d.lock(id)()
	return state.LoadAddon(d.opts.Root, id)
}

// UpdateState applies fn to add-on id's persisted state and saves it.
// Every read-modify-write of addons/<id>/state.json goes through here (or
// holds the same lock), so staging in the background and supervision in
// the loop never lose each other's updates. fn returning an error saves
// nothing.
func (d *Deliverer) UpdateState(id string, fn func(*state.Addon) error) error {
	if err := assignment.ValidAddonID(id); err != nil {
		return err
	}
	defer d.lock(id)()
	st, err := state.LoadAddon(d.opts.Root, id)
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	return state.SaveAddon(d.opts.Root, id, st)
}

// New returns a Deliverer. It creates nothing on disk until used.
func New(o Options) *Deliverer {
	if o.MaxConcurrent < 1 {
		o.MaxConcurrent = 2
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Platform == (assignment.Platform{}) {
		o.Platform = assignment.Host()
	}
	if o.Sleep == nil {
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	d := &Deliverer{opts: o, sem: make(chan struct{}, o.MaxConcurrent)}
	if o.RateLimit > 0 {
		d.rate = rate.NewLimiter(rate.Limit(o.RateLimit), rateBurst(o.RateLimit))
	}
	return d
}

// Error is a delivery failure of one add-on version.
type Error struct {
	AddonID string
	Version string
	Op      string // resolve, fetch, verify, stage, activate
	Err     error
	// Environment marks failures that are not the artifact's fault — the
	// store unreachable, the disk full, I/O errors. They never mark a
	// version failed.
	Environment bool
}

func (e *Error) Error() string {
	if e.Version == "" {
		return fmt.Sprintf("addon %q: %s: %v", e.AddonID, e.Op, e.Err)
	}
	return fmt.Sprintf("addon %q version %q: %s: %v", e.AddonID, e.Version, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Paths of the runtime tree.
func (d *Deliverer) addonDir(id string) string { return filepath.Join(d.opts.Root, "addons", id) }
func (d *Deliverer) versionsDir(id string) string {
	return filepath.Join(d.addonDir(id), "versions")
}
func (d *Deliverer) tmpDir() string { return filepath.Join(d.opts.Root, "tmp") }

// BinaryPath is where version's binary is staged.
func (d *Deliverer) BinaryPath(id, version, binary string) string {
	return filepath.Join(d.versionsDir(id), version, binary)
}

// Staged describes a version on disk.
type Staged struct {
	Version    string
	Path       string // absolute path of the staged binary
	Downloaded bool   // false: it was already staged
	Bytes      int64
}

// checkSegments re-validates every path segment right before it is used,
// whoever built the spec.
func checkSegments(s assignment.Spec) error {
	if err := assignment.ValidAddonID(s.AddonID); err != nil {
		return err
	}
	if err := assignment.ValidVersion(s.Version); err != nil {
		return err
	}
	return assignment.ValidBinaryName(s.BinaryName)
}

// Stage makes spec's version present and verified under versions/. It does
// not touch current. A version already staged with the same digest is not
// downloaded again.
func (d *Deliverer) Stage(ctx context.Context, spec assignment.Spec) (_ Staged, err error) {
	fail := func(op string, env bool, err error) (Staged, error) {
		return Staged{}, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: op, Err: err, Environment: env}
	}
	if err := checkSegments(spec); err != nil {
		return fail("resolve", false, err)
	}
	art := spec.Artifact
	if art == nil {
		return fail("resolve", false, errors.New("no artifact reference for this platform"))
	}
	st, err := d.State(spec.AddonID)
	if err != nil {
		return fail("stage", true, err)
	}
	bin := d.BinaryPath(spec.AddonID, spec.Version, spec.BinaryName)
	if rec, ok := st.Staged[spec.Version]; ok {
		if rec.SHA256 != art.SHA256 {
			return fail("stage", false, fmt.Errorf("version is already staged with sha256 %s, the assignment says %s: versions are immutable, publish a new version", rec.SHA256, art.SHA256))
		}
		if rec.Binary != spec.BinaryName {
			return fail("stage", false, fmt.Errorf("version is already staged as %q, the assignment names %q", rec.Binary, spec.BinaryName))
		}
		if fi, err := os.Lstat(bin); err == nil && fi.Mode().IsRegular() && fi.Size() == rec.Size {
			return Staged{Version: spec.Version, Path: bin, Bytes: rec.Size}, nil
		}
		d.opts.Log.Warn("staged version vanished, staging again", "addon_id", spec.AddonID, "version", spec.Version)
	}

	// From here on the bytes are checked: against the publisher's package
	// when it names them, else against their own signature. The policy is
	// decided before an artifact byte is read.
	art, pinned, keep, err := d.pin(ctx, spec)
	if err != nil {
		return Staged{}, err
	}
	defer func() {
		if err == nil {
			keep()
		}
	}()
	spec.Artifact = art
	newHashes, err := d.hashes(art, pinned)
	if err != nil {
		return fail("verify", false, err)
	}
	// One partial download per add-on: another version's is of a version
	// no longer wanted (this one is accepted now).
	d.discardPartials(spec.AddonID, func(v string) bool { return v != spec.Version })

	// A file at the final path without a record: a crash between the
	// rename and the record. Check it locally rather than download again.
	if fi, err := os.Lstat(bin); err == nil {
		if fi.Mode().IsRegular() {
			if size, ok := d.verifyLocal(bin, fi.Size(), art, newHashes); ok {
				return d.record(spec, bin, size, false)
			}
		}
		os.RemoveAll(bin)
	}

	if d.opts.Store == nil {
		return fail("fetch", true, errors.New("no store configured"))
	}
	select {
	case d.sem <- struct{}{}:
		defer func() { <-d.sem }()
	case <-ctx.Done():
		return fail("fetch", true, ctx.Err())
	}
	file, size, err := d.download(ctx, spec, newHashes)
	if err != nil {
		return Staged{}, err
	}
	if err := d.install(spec, file, bin); err != nil {
		os.Remove(file)
		return fail("stage", true, err)
	}
	FaultPoint("after-rename")
	return d.record(spec, bin, size, true)
}

func (d *Deliverer) record(spec assignment.Spec, bin string, size int64, downloaded bool) (Staged, error) {
	rec := state.StagedVersion{SHA256: spec.Artifact.SHA256, Binary: spec.BinaryName, Size: size, StagedAt: time.Now().UTC()}
	if err := d.UpdateState(spec.AddonID, func(st *state.Addon) error {
		st.Staged[spec.Version] = rec
		return nil
	}); err != nil {
		return Staged{}, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "stage", Err: err, Environment: true}
	}
	return Staged{Version: spec.Version, Path: bin, Downloaded: downloaded, Bytes: size}, nil
}

// install makes the verified file the version's binary: mode 0755,
// renamed into versions/<version>/, both directories fsynced. What is
// left of the partial download goes.
func (d *Deliverer) install(spec assignment.Spec, file, bin string) error {
	part := filepath.Join(d.tmpDir(), partName(spec.AddonID, spec.Version))
	vdir := filepath.Dir(bin)
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return err
	}
	// Made executable through the very file the pass wrote: never through
	// a link put in its place.
	f, err := openOwn(file, os.O_RDONLY)
	if err != nil {
		return err
	}
	err = f.Chmod(0o755)
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(file, bin); err != nil {
		return err
	}
	os.Remove(part) // the compressed object's bytes, when file is what they decompressed to
	os.Remove(part + ".json")
	if err := atomicfile.SyncDir(vdir); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(vdir))
}

// hashes returns a constructor for the pass's hashes: SHA-256 first, then,
// unless a verified package pins the artifact, one Ed25519 verifier per
// candidate key (exactly one when the signature names its key_id).
// Signature policy is decided here, before any artifact I/O: an unsigned,
// unpinned artifact is refused when signatures are required, and a
// signature with no trusted key fails closed.
func (d *Deliverer) hashes(art *assignment.Artifact, pinned bool) (func() (hash.Hash, []*signing.Verifier), error) {
	if pinned {
		return func() (hash.Hash, []*signing.Verifier) { return sha256.New(), nil }, nil
	}
	if art.Compression != "" {
		return nil, errors.New("a compressed artifact is only accepted as its signed package names it")
	}
	if art.Signature == "" {
		if d.opts.RequireSignatures {
			return nil, errors.New("artifact is unsigned and trust.require_signatures is on")
		}
		return func() (hash.Hash, []*signing.Verifier) { return sha256.New(), nil }, nil
	}
	keys, err := d.opts.Keys.Candidates(art.KeyID)
	if err != nil {
		return nil, err
	}
	sig, err := hex.DecodeString(art.Signature)
	if err != nil {
		return nil, err
	}
	return func() (hash.Hash, []*signing.Verifier) {
		vs := make([]*signing.Verifier, 0, len(keys))
		for _, k := range keys {
			v, _ := signing.NewVerifier(k, sig) // keys from a Keyring have the right length
			vs = append(vs, v)
		}
		return sha256.New(), vs
	}, nil
}

// check compares the pass's results — n bytes with SHA-256 sum, the
// verifiers — with the artifact reference.
func check(art *assignment.Artifact, n int64, sum []byte, vs []*signing.Verifier) error {
	if art.Size > 0 && n != art.Size {
		return fmt.Errorf("size mismatch: got %d bytes, want %d", n, art.Size)
	}
	if got := hex.EncodeToString(sum); got != art.SHA256 {
		return fmt.Errorf("sha256 mismatch: got %s, want %s", got, art.SHA256)
	}
	if art.Signature == "" {
		return nil
	}
	for _, v := range vs {
		if v.Verify() {
			return nil
		}
	}
	if art.KeyID != "" {
		return fmt.Errorf("%w under key %s", signing.ErrBadSignature, art.KeyID)
	}
	return fmt.Errorf("%w under any trusted key", signing.ErrBadSignature)
}

func (d *Deliverer) verifyLocal(path string, size int64, art *assignment.Artifact, newHashes func() (hash.Hash, []*signing.Verifier)) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	h, vs := newHashes()
	p := newPipeline(nil, size, withVerifiers(h, vs)...)
	n, err := p.feed(f, 0, true)
	p.close()
	return n, err == nil && check(art, n, h.Sum(nil), vs) == nil
}

func withVerifiers(h hash.Hash, vs []*signing.Verifier) []hash.Hash {
	hs := []hash.Hash{h}
	for _, v := range vs {
		hs = append(hs, verifierHash{v})
	}
	return hs
}

// verifierHash lets a Verifier ride the pipeline as a hash.Hash; only
// Write is used.
type verifierHash struct{ *signing.Verifier }

func (verifierHash) Sum(b []byte) []byte { return b }
func (verifierHash) Reset()              {}
func (verifierHash) Size() int           { return 0 }
func (verifierHash) BlockSize() int      { return 128 }

// backoff is exponential with full jitter: 0.5 s, 1 s, 2 s … capped at 30 s.
func backoff(attempt int) time.Duration {
	d := 500 * time.Millisecond << min(attempt, 6)
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d/2+1)
}

func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// partName is the partial download's file name in tmp/.
func partName(id, version string) string { return id + "@" + version + ".part" }

// CleanTmp removes partial downloads other than those of keep
// ("<id>@<version>").
func (d *Deliverer) CleanTmp(keep map[string]bool) error {
	entries, err := os.ReadDir(d.tmpDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".out"), ".json"), ".part")
		if !keep[name] {
			os.RemoveAll(filepath.Join(d.tmpDir(), e.Name()))
		}
	}
	return nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
