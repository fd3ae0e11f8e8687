package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Dir is a store in a local directory laid out exactly like a bucket. Every
// access goes through an os.Root, so neither keys nor symlinks planted in the
// tree reach outside it. The root is opened per operation: a directory that
// is missing (an unmounted medium) is an unreachable store, like a server
// that is down, and one that comes back is used again.
type Dir struct {
	dir string
}

var _ Store = (*Dir)(nil)

// NewDir returns the directory store rooted at dir.
func NewDir(dir string) (*Dir, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file store: %q is not an absolute directory", dir)
	}
	return &Dir{dir: filepath.Clean(dir)}, nil
}

func (d *Dir) open() (*os.Root, error) {
	root, err := os.OpenRoot(d.dir)
	if err != nil {
		return nil, fmt.Errorf("%s: store unreachable: %w", d, err)
	}
	return root, nil
}

func (d *Dir) String() string { return "file://" + d.dir }

// etag identifies one version of a file: a rewrite (always a rename of a new
// file, see Put) changes the inode, an in-place edit the size or mtime.
func etag(fi os.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("%x-%x-%x", ino, fi.Size(), fi.ModTime().UnixNano())
}

func (d *Dir) info(key string, fi os.FileInfo) Info {
	return Info{Key: key, Size: fi.Size(), ETag: etag(fi), ModTime: fi.ModTime()}
}

func (d *Dir) mapErr(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %s: %w", d, key, ErrNotFound)
	}
	return fmt.Errorf("%s: %s: %w", d, key, err)
}

// List walks prefix inside the tree (os.Root: nothing outside it is
// reached); symbolic links are neither followed nor listed, and neither are
// the temporary files of a Put in progress.
func (d *Dir) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := validPrefix(prefix); err != nil {
		return err
	}
	root, err := d.open()
	if err != nil {
		return err
	}
	defer root.Close()
	top := strings.TrimSuffix(prefix, "/")
	if fi, err := root.Lstat(top); errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
		return nil // nothing under prefix
	}
	var fnErr error
	err = fs.WalkDir(root.FS(), top, func(key string, e fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case !e.Type().IsRegular() || strings.HasPrefix(path.Base(key), putTemp) || ValidKey(key) != nil:
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		} else if err != nil {
			return err
		}
		fnErr = fn(d.info(key, fi))
		return fnErr
	})
	if err != nil && err != fnErr && !errors.Is(err, ctx.Err()) {
		return d.mapErr(prefix, err)
	}
	return err
}

func (d *Dir) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	root, err := d.open()
	if err != nil {
		return Info{}, err
	}
	defer root.Close()
	fi, err := root.Stat(key)
	if err != nil {
		return Info{}, d.mapErr(key, err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("%s: %s: not a regular file: %w", d, key, ErrNotFound)
	}
	return d.info(key, fi), nil
}

func (d *Dir) Open(ctx context.Context, key string, opts OpenOptions) (io.ReadCloser, Info, error) {
	if err := ValidKey(key); err != nil {
		return nil, Info{}, err
	}
	// O_NONBLOCK so that a FIFO planted in the tree cannot hang the open;
	// it is refused below as not a regular file.
	root, err := d.open()
	if err != nil {
		return nil, Info{}, err
	}
	defer root.Close()
	f, err := root.OpenFile(key, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, Info{}, d.mapErr(key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, d.mapErr(key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, Info{}, fmt.Errorf("%s: %s: not a regular file: %w", d, key, ErrNotFound)
	}
	info := d.info(key, fi)
	if opts.IfNoneMatch != "" && opts.IfNoneMatch == info.ETag {
		f.Close()
		return nil, info, ErrNotModified
	}
	if opts.IfMatch != "" && opts.IfMatch != info.ETag {
		f.Close()
		return nil, info, fmt.Errorf("%s: %s: %w", d, key, ErrChanged)
	}
	if opts.Offset < 0 || opts.Offset > info.Size {
		f.Close()
		return nil, info, fmt.Errorf("%s: %s: offset %d outside object of %d bytes", d, key, opts.Offset, info.Size)
	}
	if _, err := f.Seek(opts.Offset, io.SeekStart); err != nil {
		f.Close()
		return nil, info, d.mapErr(key, err)
	}
	return &exactReader{r: f, c: f, left: info.Size - opts.Offset, key: key}, info, nil
}

// PutIfMatch holds an exclusive lock (flock on .put-lock in the key's
// directory, which every conditional writer of the tree takes) across the
// check and the rename: two addonctl processes on one host or on one NFS
// export with working locks never both succeed from one version.
func (d *Dir) PutIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	root, err := d.open()
	if err != nil {
		return Info{}, err
	}
	defer root.Close()
	if err := root.MkdirAll(path.Dir(key), 0o755); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	lock, err := root.OpenFile(path.Join(path.Dir(key), putTemp+"lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return Info{}, d.mapErr(key, err)
	}
	defer lock.Close()
	// Polled, not blocking: a lock held by someone else (a writer that
	// hangs, or a hostile one) ends with ctx instead of hanging forever.
	for {
		err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return Info{}, d.mapErr(key, err)
		}
		select {
		case <-ctx.Done():
			return Info{}, fmt.Errorf("%s: %s: waiting for the lock of a conditional write: %w", d, key, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cur, err := d.Stat(ctx, key)
	switch {
	case errors.Is(err, ErrNotFound):
		if ifMatch != "" {
			return Info{}, fmt.Errorf("%s: %s: gone (want ETag %s): %w", d, key, ifMatch, ErrChanged)
		}
	case err != nil:
		return Info{}, err
	case ifMatch == "":
		return Info{}, fmt.Errorf("%s: %s: exists (want none): %w", d, key, ErrChanged)
	case cur.ETag != ifMatch:
		return Info{}, fmt.Errorf("%s: %s: ETag %s (want %s): %w", d, key, cur.ETag, ifMatch, ErrChanged)
	}
	return d.Put(ctx, key, r, size)
}

// putTemp starts the name of a Put's file until it is renamed into place.
const putTemp = ".put-"

func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	root, err := d.open()
	if err != nil {
		return Info{}, err
	}
	defer root.Close()
	dir := path.Dir(key)
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := path.Join(dir, putTemp+hex.EncodeToString(rnd[:]))
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return Info{}, d.mapErr(key, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			root.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, ContextReader(ctx, r))
	if err != nil {
		return Info{}, d.mapErr(key, err)
	}
	if size >= 0 && n != size {
		return Info{}, fmt.Errorf("%s: %s: wrote %d bytes, want %d", d, key, n, size)
	}
	if err := f.Sync(); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	if err := f.Close(); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	if err := laterSecond(root, tmp, key); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	if err := root.Rename(tmp, key); err != nil {
		return Info{}, d.mapErr(key, err)
	}
	ok = true
	return d.Stat(ctx, key)
}

// laterSecond gives tmp, about to replace key, a modification time in a
// later whole second than key's. Web servers that serve the tree derive
// their ETag from the size and the whole-second mtime (nginx); without it a
// document rewritten within a second at the same size would keep its ETag,
// and agents reading through such a server would be told "not modified"
// until the next change.
func laterSecond(root *os.Root, tmp, key string) error {
	old, err := root.Stat(key)
	if err != nil {
		return nil // nothing to replace
	}
	fi, err := root.Stat(tmp)
	if err != nil {
		return err
	}
	prev := old.ModTime().Truncate(time.Second)
	if fi.ModTime().Truncate(time.Second).After(prev) {
		return nil
	}
	next := prev.Add(time.Second)
	return root.Chtimes(tmp, next, next)
}

func (d *Dir) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	root, err := d.open()
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.Remove(key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return d.mapErr(key, err)
	}
	return nil
}

// exactReader yields exactly left bytes: a body that ends early is
// io.ErrUnexpectedEOF, one that runs long is cut at the promised size.
type exactReader struct {
	r    io.Reader
	c    io.Closer
	left int64
	key  string
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("%s: body ended %d bytes early: %w", e.key, e.left, io.ErrUnexpectedEOF)
	}
	if e.left == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (e *exactReader) Close() error { return e.c.Close() }

// ContextReader returns a reader that fails with ctx's error once ctx is
// done, so that a long copy stops promptly on shutdown.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return &ctxReader{ctx: ctx, r: r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
