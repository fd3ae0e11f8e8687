// Package publish is the publisher's side of addond (addonctl publish and
// assign): it signs and uploads artifacts, writes signed package metadata,
// and builds signed assignment documents from verified packages.
package publish

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
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// File is one platform's build to publish.
type File struct {
	Platform assignment.Platform
	Path     string
}

// ParseFileArg parses "OS/ARCH=PATH".
func ParseFileArg(s string) (File, error) {
	plat, path, ok := strings.Cut(s, "=")
	if !ok || path == "" {
		return File{}, fmt.Errorf("artifact %q: want OS/ARCH=PATH", s)
	}
	p, err := assignment.ParsePlatform(plat)
	if err != nil {
		return File{}, err
	}
	return File{Platform: p, Path: path}, nil
}

// PublishOptions describe one version of an add-on.
type PublishOptions struct {
	Store          store.Store
	Key            ed25519.PrivateKey
	AddonID        string
	Version        string
	Supervision    string
	OSCapabilities []string
	// AllowDowngrade lets addond-updater cap this version after a higher
	// one (an intended downgrade, e.g. a bad release).
	AllowDowngrade bool
	BinaryName     string // default: each file's base name
	Files          []File
	// Compress "zstd" stores each artifact compressed, as <key>.zst; the
	// package names both the binary's and the object's digest and size.
	Compress string
	// Progress, when set, wraps each upload's byte stream (a progress bar).
	Progress func(name string, size int64) io.Writer
	// Warn, when set, is told of uploads that failed and are retried.
	Warn func(string)
	// Note, when set, is told of uploads resumed from an earlier run.
	Note func(string)
}

var capRe = regexp.MustCompile(`^cap_[a-z_]{2,32}$`)

// NormalizeCapability lowercases a capability name and adds the cap_
// prefix ("NET_RAW" → "cap_net_raw").
func NormalizeCapability(c string) (string, error) {
	c = strings.ToLower(strings.TrimSpace(c))
	if !strings.HasPrefix(c, "cap_") {
		c = "cap_" + c
	}
	if !capRe.MatchString(c) {
		return "", fmt.Errorf("capability %q is not a capability name", c)
	}
	return c, nil
}

// Publish signs and uploads every file and writes
// packages/<id>/<version>/package.json and its .sig.
func Publish(ctx context.Context, o PublishOptions) (*assignment.Package, error) {
	if err := store.Writable(o.Store); err != nil {
		return nil, err
	}
	if err := assignment.ValidAddonID(o.AddonID); err != nil {
		return nil, err
	}
	if err := assignment.ValidVersion(o.Version); err != nil {
		return nil, err
	}
	if len(o.Files) == 0 {
		return nil, errors.New("no artifacts given (OS/ARCH=PATH)")
	}
	if o.Compress != "" && o.Compress != assignment.CompressionZstd {
		return nil, fmt.Errorf("--compress %q: want zstd", o.Compress)
	}
	pkg := &assignment.Package{AddonID: o.AddonID, Version: o.Version, Supervision: o.Supervision, AllowDowngrade: o.AllowDowngrade, Artifacts: map[string]assignment.Artifact{}}
	if pkg.Supervision != "" {
		if err := assignment.ValidSupervision(o.Supervision); err != nil {
			return nil, err
		}
	}
	for _, c := range o.OSCapabilities {
		n, err := NormalizeCapability(c)
		if err != nil {
			return nil, err
		}
		pkg.OSCapabilities = append(pkg.OSCapabilities, n)
	}
	keyID := signing.KeyID(o.Key.Public().(ed25519.PublicKey))
	for _, f := range o.Files {
		name := o.BinaryName
		if name == "" {
			name = filepath.Base(f.Path)
		}
		if err := assignment.ValidBinaryName(name); err != nil {
			return nil, err
		}
		if _, dup := pkg.Artifacts[f.Platform.String()]; dup {
			return nil, fmt.Errorf("platform %s given twice", f.Platform)
		}
		key := assignment.ArtifactKey(o.AddonID, o.Version, f.Platform, name)
		if o.Compress == assignment.CompressionZstd {
			key += ".zst"
		}
		art, err := uploadSigned(ctx, o, f.Path, key)
		if err != nil {
			return nil, fmt.Errorf("publish %s %s: %w", f.Platform, f.Path, err)
		}
		art.KeyID, art.BinaryName = keyID, name
		pkg.Artifacts[f.Platform.String()] = art
	}
	body, err := json.MarshalIndent(pkg, "", "  ")
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	if err := putSigned(ctx, o.Store, assignment.PackageKey(o.AddonID, o.Version), body, o.Key); err != nil {
		return nil, err
	}
	return pkg, nil
}

// uploadSigned signs a file with pure Ed25519 (two passes: the nonce,
// then the challenge hash; each pass also takes a SHA-256, and compressed,
// pass 2 writes the zstd stream to a temporary file), then uploads it —
// or its zstd stream — with retries, hashing what it sends. Should the
// file change between the passes or before the upload, the digests
// differ: the upload is deleted and no signature leaves this function
// (signing two messages with one nonce would leak the key, and agents
// would refuse the bytes).
func uploadSigned(ctx context.Context, o PublishOptions, path, key string) (assignment.Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return assignment.Artifact{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return assignment.Artifact{}, err
	}
	if !fi.Mode().IsRegular() {
		return assignment.Artifact{}, fmt.Errorf("%s is not a regular file", path)
	}
	size := fi.Size()
	sum1, sum2 := sha256.New(), sha256.New()
	var zst *os.File
	if o.Compress != "" {
		if zst, err = os.CreateTemp("", "addonctl-publish-*.zst"); err != nil {
			return assignment.Artifact{}, err
		}
		defer os.Remove(zst.Name())
		defer zst.Close()
	}
	sig, err := signing.SignStream(o.Key, func(pass int, w io.Writer) error {
		r := io.NewSectionReader(f, 0, size)
		if pass == 1 {
			_, err := io.Copy(io.MultiWriter(w, sum1), r)
			return err
		}
		sink := io.MultiWriter(w, sum2)
		if zst != nil {
			return compress(zst, io.TeeReader(r, sink))
		}
		_, err := io.Copy(sink, r)
		return err
	})
	if err != nil {
		return assignment.Artifact{}, err
	}
	digest := sum2.Sum(nil)
	if !bytes.Equal(sum1.Sum(nil), digest) {
		return assignment.Artifact{}, errors.New("file changed while it was being signed; nothing uploaded, nothing signed")
	}
	art := assignment.Artifact{ObjectKey: key, SHA256: hex.EncodeToString(digest), Size: size, Signature: hex.EncodeToString(sig)}
	src, srcSize, name := io.ReaderAt(f), size, filepath.Base(path)
	if zst != nil {
		if srcSize, err = zst.Seek(0, io.SeekEnd); err != nil {
			return assignment.Artifact{}, err
		}
		src, name = zst, name+".zst"
	}
	sent, err := putRetried(ctx, o, key, src, srcSize, name)
	if err != nil {
		return assignment.Artifact{}, err
	}
	if zst == nil && !bytes.Equal(sent, digest) {
		o.Store.Delete(ctx, key)
		return assignment.Artifact{}, errors.New("file changed between signing and upload; upload removed, nothing signed")
	}
	if zst != nil {
		art.Compression, art.StoredSHA256, art.StoredSize = assignment.CompressionZstd, hex.EncodeToString(sent), srcSize
	}
	return art, nil
}

// Upload retries: a publisher's link may drop; each attempt sends the
// whole object again after a backoff that doubles from uploadBackoff —
// except an object of resumableMin bytes or more on a store that can
// resume (S3), whose attempts, and the next run's, send only the parts
// the store does not have yet.
var (
	uploadAttempts = 5
	uploadBackoff  = time.Second
	resumableMin   = int64(64 << 20)
)

// putRetried uploads size bytes of src at key, up to uploadAttempts times
// on failures other than cancellation, and returns the SHA-256 of what the
// successful attempt sent.
func putRetried(ctx context.Context, o PublishOptions, key string, src io.ReaderAt, size int64, name string) ([]byte, error) {
	wait := uploadBackoff
	rs, resumable := o.Store.(store.Resumable)
	resumable = resumable && size >= resumableMin
	for attempt := 1; ; attempt++ {
		put := func() ([]byte, error) {
			sum := sha256.New()
			var sink io.Writer = sum
			if o.Progress != nil {
				sink = io.MultiWriter(sum, o.Progress(name, size))
			}
			if resumable {
				_, kept, err := rs.PutResumable(ctx, key, src, size, sink)
				if kept > 0 && o.Note != nil {
					o.Note(fmt.Sprintf("upload %s resumed: %d of %d bytes were already in the store", key, kept, size))
				}
				return sum.Sum(nil), err
			}
			_, err := o.Store.Put(ctx, key, io.TeeReader(io.NewSectionReader(src, 0, size), sink), size)
			return sum.Sum(nil), err
		}
		sum, err := put()
		if errors.Is(err, store.ErrNotResumable) {
			// The store keeps no part checksums: a plain upload, now and
			// in the attempts after it.
			if o.Note != nil {
				o.Note(fmt.Sprintf("upload %s: %v; uploading it in one piece", key, err))
			}
			resumable = false
			sum, err = put()
		}
		if err == nil {
			return sum, nil
		}
		if attempt == uploadAttempts || ctx.Err() != nil || permanent(err) {
			return nil, fmt.Errorf("upload %s (attempt %d of %d): %w", key, attempt, uploadAttempts, err)
		}
		if o.Warn != nil {
			o.Warn(fmt.Sprintf("upload %s failed (attempt %d of %d), retrying in %v: %v", key, attempt, uploadAttempts, wait, err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// permanent: an upload error that another attempt cannot mend — the store
// refused the credentials or the request, or cannot be written at all.
func permanent(err error) bool {
	return errors.Is(err, store.ErrDenied) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, store.ErrReadOnly) || errors.Is(err, store.ErrInvalidKey)
}

// compress writes r to w as one zstd stream, at the encoder's best
// compression (publishing is once, downloads are many) and within the
// window the agents' decoders accept.
func compress(w io.Writer, r io.Reader) error {
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithWindowSize(assignment.MaxZstdWindow))
	if err != nil {
		return err
	}
	if _, err := io.Copy(enc, r); err != nil {
		enc.Close()
		return err
	}
	return enc.Close()
}

// putSigned writes body and, with a key, body's .sig; without a key it
// removes a stale .sig that would no longer match.
func putSigned(ctx context.Context, s store.Store, key string, body []byte, priv ed25519.PrivateKey) error {
	if _, err := s.Put(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
		return err
	}
	return putSig(ctx, s, key, body, priv)
}

// putSig writes the .sig of body (written at key), or, without a key,
// removes a stale one.
func putSig(ctx context.Context, s store.Store, key string, body []byte, priv ed25519.PrivateKey) error {
	if priv == nil {
		return s.Delete(ctx, key+".sig")
	}
	sig := []byte(hex.EncodeToString(ed25519.Sign(priv, body)) + "\n")
	_, err := s.Put(ctx, key+".sig", bytes.NewReader(sig), int64(len(sig)))
	return err
}
