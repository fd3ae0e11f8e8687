// Package atomicfile replaces small files atomically and durably: the one
// way addond persists anything that is not an artifact (state, the cached
// document, reattach data, add-on config files, the heartbeat, cached
// packages). The new content goes to a temporary file beside the target
// (created exclusively, never following a link), which is fsynced, given
// its mode and owner, renamed over the target, and then the directory is
// fsynced: a crash at any point leaves the old file or the new one, never
// a torn one. It imports only the standard library, so that every layer
// may use it.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// Option changes how Write writes.
type Option func(*options)

type options struct {
	chown    bool
	uid, gid int
}

// Owner gives the file to uid:gid before it replaces the target (a system
// manager's add-on reads files addond, as root, writes for it).
func Owner(uid, gid int) Option {
	return func(o *options) { o.chown, o.uid, o.gid = true, uid, gid }
}

// Write atomically replaces path with data, mode perm.
func Write(path string, data []byte, perm os.FileMode, opts ...Option) error {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	dir := filepath.Dir(path)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		// The mode asked for, whatever the umask made of it.
		err = f.Chmod(perm)
	}
	if err == nil && o.chown {
		err = f.Chown(o.uid, o.gid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, so that renames and creations in it are
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
