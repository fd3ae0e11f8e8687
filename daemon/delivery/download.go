package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// partMeta sits beside a partial download and binds it to one version of
// one object: a resume is only attempted for the same key, digest and ETag.
type partMeta struct {
	ObjectKey string `json:"object_key"`
	SHA256    string `json:"sha256"`
	ETag      string `json:"etag"`
	Size      int64  `json:"size"`
}

// errRestart asks download to begin again from byte zero.
var errRestart = errors.New("restart from zero")

// download runs the streaming pass into tmp/<id>@<version>.part and
// returns the path of the verified binary and its size: the partial file
// itself, or, for a compressed artifact, what it decompressed to
// (tmp/<id>@<version>.part.out; the partial keeps the object's bytes, so
// that a resume can feed them to the decoder again). At most one restart from zero
// happens (the object changed, or a resumed partial did not verify).
func (d *Deliverer) download(ctx context.Context, spec assignment.Spec, newHashes func() (hash.Hash, []*signing.Verifier)) (string, int64, error) {
	if err := os.MkdirAll(d.tmpDir(), 0o700); err != nil {
		return "", 0, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "fetch", Err: err, Environment: true}
	}
	part := filepath.Join(d.tmpDir(), partName(spec.AddonID, spec.Version))
	for restarts := 0; ; restarts++ {
		bin, size, err := d.downloadOnce(ctx, spec, part, newHashes, restarts > 0)
		if errors.Is(err, errRestart) && restarts < 2 {
			d.opts.Log.Info("download starts again from zero", "addon_id", spec.AddonID, "version", spec.Version, "reason", err)
			continue
		}
		if err != nil {
			var de *Error
			if !errors.As(err, &de) {
				err = &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "fetch", Err: err, Environment: true}
			}
			return "", 0, err
		}
		return bin, size, nil
	}
}

func (d *Deliverer) downloadOnce(ctx context.Context, spec assignment.Spec, part string, newHashes func() (hash.Hash, []*signing.Verifier), fresh bool) (string, int64, error) {
	art := spec.Artifact
	fail := func(op string, env bool, err error) (string, int64, error) {
		return "", 0, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: op, Err: err, Environment: env}
	}
	// The body's first GET is also what tells the object's size and ETag:
	// no HEAD before it (one request less per update, fleet-wide). A
	// resume asks the server for the rest on If-Match of the ETag the
	// partial was written from; a partial that is already whole is
	// verified without a request.
	prev, off := resumable(part, art, fresh)
	var (
		rc   io.ReadCloser
		info store.Info
		err  error
	)
	switch {
	case off > 0 && off == prev.Size:
		info = store.Info{Key: art.ObjectKey, Size: prev.Size, ETag: prev.ETag}
	case off > 0:
		rc, info, err = d.open(ctx, art.ObjectKey, store.OpenOptions{Offset: off, IfMatch: prev.ETag})
		if errors.Is(err, store.ErrChanged) || errors.Is(err, store.ErrRangeIgnored) {
			return "", 0, fmt.Errorf("%w: %v", errRestart, err)
		}
	default:
		rc, info, err = d.open(ctx, art.ObjectKey, store.OpenOptions{})
	}
	if err != nil {
		return fail("fetch", !errors.Is(err, store.ErrNotFound), err)
	}
	defer func() {
		if rc != nil {
			rc.Close()
		}
	}()
	stored, compressed := art.Stored()
	if stored > 0 && info.Size != stored {
		err := fmt.Errorf("object %s is %d bytes, the assignment says %d", art.ObjectKey, info.Size, stored)
		if off > 0 {
			// The size came from what was kept beside the partial (or
			// the object changed since): start again, from the store.
			return "", 0, fmt.Errorf("%w: %v", errRestart, err)
		}
		return fail("verify", false, err)
	}
	f, err := openPart(part, partMeta{ObjectKey: art.ObjectKey, SHA256: art.SHA256, ETag: info.ETag, Size: info.Size}, off)
	if err != nil && off > 0 {
		return "", 0, fmt.Errorf("%w: %v", errRestart, err) // not a partial of ours: start afresh
	}
	if err != nil {
		return fail("fetch", true, err)
	}
	keep := false
	defer func() {
		f.Close()
		if !keep {
			os.Remove(part)
			os.Remove(part + ".json")
		}
	}()
	resumed := off > 0
	need := info.Size - off
	if compressed {
		need += art.Size
	}
	if err := d.checkSpace(need); err != nil {
		return fail("fetch", true, err)
	}

	// The consumers of the one pass: the binary's SHA-256 (and, in origin
	// mode, the signature verifiers) over the object's bytes; or, for a
	// compressed object, the SHA-256 of the object's bytes and the
	// decoder, which writes the binary to out and feeds it to the
	// binary's SHA-256 — the whole stream again on a resume, the decoder
	// starting from the object's first byte.
	h, vs := newHashes()
	consumers := withVerifiers(h, vs)
	bin := part
	var (
		storedSum hash.Hash
		unz       *unzstd
		out       *os.File // what a compressed object decompresses to
	)
	if compressed {
		bin = part + ".out"
		os.Remove(bin)
		out, err = createNew(bin)
		if err != nil {
			return fail("fetch", true, err)
		}
		defer func() {
			out.Close()
			if !keep || bin != part+".out" {
				os.Remove(part + ".out")
			}
		}()
		storedSum = sha256.New()
		unz = newUnzstd(out, h, art.Size)
		consumers = []hash.Hash{storedSum, unz}
		defer func() {
			if unz != nil {
				unz.abort()
			}
		}()
	}
	p := newPipeline(f, info.Size-off, consumers...)
	if faultsEnabled {
		p.written = func(end int64) {
			if end >= info.Size/2 {
				FaultPoint("download-partial")
			}
		}
	}
	closed := false
	defer func() {
		if !closed {
			p.close()
		}
	}()
	if off > 0 {
		// Hash what is already on disk; the final digest covers it all.
		if n, err := p.feed(io.NewSectionReader(f, 0, off), 0, true); err != nil || n != off {
			return fail("fetch", true, fmt.Errorf("reading the partial download: %v", err))
		}
		d.opts.Log.Info("resuming download", "addon_id", spec.AddonID, "version", spec.Version, "offset", off, "size", info.Size)
	}
	first := rc
	rc = nil // fetchBody closes it
	if err := d.fetchBody(ctx, spec, part, p, info, off, first); err != nil {
		var kept *keptError
		if keep = errors.As(err, &kept); keep {
			err = kept.error
			bin = "" // the decoded output is not kept; the partial is
		}
		return "", 0, err
	}
	closed = true
	if err := p.close(); err != nil {
		if isDiskFull(err) {
			return fail("fetch", true, fmt.Errorf("disk full writing %s: %w", part, err))
		}
		return fail("fetch", true, err)
	}
	n := info.Size
	var verr error
	if compressed {
		var err error
		n, err = unz.finish()
		unz = nil
		switch {
		case isDiskFull(err):
			return fail("fetch", true, fmt.Errorf("disk full writing %s: %w", bin, err))
		case err != nil:
			verr = err
		case hex.EncodeToString(storedSum.Sum(nil)) != art.StoredSHA256:
			verr = fmt.Errorf("stored sha256 mismatch: got %s, want %s", hex.EncodeToString(storedSum.Sum(nil)), art.StoredSHA256)
		}
	}
	if verr == nil {
		verr = check(art, n, h.Sum(nil), vs)
	}
	if verr != nil {
		if resumed {
			// The bytes kept from an earlier run may be what is wrong.
			return "", 0, fmt.Errorf("%w: resumed download did not verify: %v", errRestart, verr)
		}
		return fail("verify", false, fmt.Errorf("object %s: %w", art.ObjectKey, verr))
	}
	// What is installed must be on disk: the partial itself, or what it
	// decompressed to (the compressed bytes are removed at install).
	if compressed {
		if err := out.Sync(); err != nil {
			return fail("fetch", true, err)
		}
	} else if err := f.Sync(); err != nil {
		return fail("fetch", true, err)
	}
	keep = true
	return bin, n, nil
}

// resumable is the partial download of art kept in part, and where to
// resume it: only what provably belongs to this very object (same key and
// digest; the server checks the ETag) is kept, and nothing when fresh.
func resumable(part string, art *assignment.Artifact, fresh bool) (partMeta, int64) {
	if fresh {
		return partMeta{}, 0
	}
	m, ok := readMeta(part)
	if !ok || m.ObjectKey != art.ObjectKey || m.SHA256 != art.SHA256 || m.ETag == "" || m.Size <= 0 {
		return partMeta{}, 0
	}
	fi, err := os.Lstat(part)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > m.Size {
		return partMeta{}, 0
	}
	return m, fi.Size()
}

// openPart opens the partial download part for the object meta
// describes. From off 0 it starts afresh: whatever was at the path goes,
// and a new file is created (never through a link), with meta written
// beside it. A resume opens the file only if it is still a regular file of
// ours with one link (never through a link either).
func openPart(part string, meta partMeta, off int64) (*os.File, error) {
	if off > 0 {
		f, err := openOwn(part, os.O_RDWR)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	os.Remove(part)
	f, err := createNew(part)
	if err == nil {
		if err = writeMeta(part, meta); err != nil {
			f.Close()
			os.Remove(part)
			os.Remove(part + ".json")
			return nil, err
		}
	}
	return f, err
}

// createNew creates path as a new file of 0600: never an existing one,
// never through a symlink (tmp/ is hostile).
func createNew(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
}

// openOwn opens path, not through a link, and only if it is a regular
// file with a single link: not a name for another file's bytes.
func openOwn(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Nlink != 1 {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file with one link", path)
	}
	return f, nil
}

// keptError is a download that failed with its partial file kept for a
// resume.
type keptError struct{ error }

func (e *keptError) Unwrap() error { return e.error }

// fetchBody feeds the object's bytes from off on into p — from first,
// when the body is already open — resuming with a Range read (If-Match
// its ETag) after a transient failure, up to Retries times. Everything fed before a failure is on disk: an
// interrupted download keeps its partial file (a *keptError), and the next
// attempt — in this run or after a restart — resumes from there.
func (d *Deliverer) fetchBody(ctx context.Context, spec assignment.Spec, part string, p *pipeline, info store.Info, off int64, first io.ReadCloser) error {
	art := spec.Artifact
	fail := func(env bool, err error) error {
		return &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "fetch", Err: err, Environment: env}
	}
	if first != nil && off >= info.Size {
		first.Close()
	}
	for attempt := 0; off < info.Size; attempt++ {
		rc, err := first, error(nil)
		if first != nil {
			first = nil
		} else {
			rc, _, err = d.opts.Store.Open(ctx, art.ObjectKey, store.OpenOptions{Offset: off, IfMatch: info.ETag})
		}
		if errors.Is(err, store.ErrChanged) || errors.Is(err, store.ErrRangeIgnored) {
			return fmt.Errorf("%w: %v", errRestart, err)
		}
		if err == nil {
			rc = guard(rc, d.opts.StallTimeout)
			off, err = p.feed(d.limited(ctx, store.ContextReader(ctx, rc)), off, false)
			rc.Close()
			if err == nil && off < info.Size {
				err = fmt.Errorf("body ended at byte %d of %d", off, info.Size)
			}
		}
		if err == nil {
			return nil
		}
		if werr := p.wait(); werr != nil {
			if isDiskFull(werr) {
				return fail(true, fmt.Errorf("disk full writing %s: %w", part, werr))
			}
			return fail(true, werr)
		}
		switch {
		case ctx.Err() != nil:
			return &keptError{fail(true, ctx.Err())}
		case errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalidKey):
			return fail(!errors.Is(err, store.ErrNotFound), err)
		case attempt >= d.opts.Retries:
			return &keptError{fail(true, fmt.Errorf("%w (after %d attempts; %d of %d bytes kept to resume)", err, attempt+1, off, info.Size))}
		}
		wait := backoff(attempt)
		d.opts.Log.Warn("download interrupted, retrying", "addon_id", spec.AddonID, "version", spec.Version,
			"offset", off, "size", info.Size, "attempt", attempt+1, "retry_in", wait.String(), "error", err)
		if err := d.opts.Sleep(ctx, wait); err != nil {
			return &keptError{fail(true, err)}
		}
	}
	return nil
}

// open opens the body for its first read, retrying transient failures
// like the body reads do.
func (d *Deliverer) open(ctx context.Context, key string, opts store.OpenOptions) (io.ReadCloser, store.Info, error) {
	for attempt := 0; ; attempt++ {
		rc, info, err := d.opts.Store.Open(ctx, key, opts)
		if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalidKey) || errors.Is(err, store.ErrChanged) || errors.Is(err, store.ErrRangeIgnored) ||
			attempt >= d.opts.Retries || ctx.Err() != nil {
			return rc, info, err
		}
		if err := d.opts.Sleep(ctx, backoff(attempt)); err != nil {
			return nil, info, err
		}
	}
}

// checkSpace refuses a download the file system cannot hold with the
// configured reserve left over, before a byte is written.
func (d *Deliverer) checkSpace(need int64) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(d.tmpDir(), &fs); err != nil {
		return err
	}
	avail := int64(fs.Bavail) * fs.Bsize
	if avail < need+d.opts.MinFree {
		return fmt.Errorf("not enough free space in %s: need %d bytes (%d for the artifact + %d reserve), %d available",
			d.tmpDir(), need+d.opts.MinFree, need, d.opts.MinFree, avail)
	}
	return nil
}

func readMeta(part string) (partMeta, bool) {
	var m partMeta
	data, err := os.ReadFile(part + ".json")
	if err != nil || json.Unmarshal(data, &m) != nil {
		return partMeta{}, false
	}
	return m, true
}

func writeMeta(part string, m partMeta) error {
	data, _ := json.Marshal(m)
	os.Remove(part + ".json")
	f, err := createNew(part + ".json")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}
