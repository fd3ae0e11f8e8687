package delivery

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Installed is an os_package binary as last verified by CheckInstalled.
type Installed struct {
	Path   string // as the assignment names it
	SHA256 string // the digest it was verified against ("" when none was given)
	id     fileID
}

// fileID is what changes when a file is replaced, rewritten, re-owned or
// re-moded: a cheap stat tells whether the hash must be computed again.
type fileID struct {
	dev, ino, size, mode, uid, gid uint64
	mtime, ctime                   syscall.Timespec
}

func fileIDOf(st *syscall.Stat_t) fileID {
	return fileID{
		dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mode: uint64(st.Mode),
		uid: uint64(st.Uid), gid: uint64(st.Gid), mtime: st.Mtim, ctime: st.Ctim,
	}
}

// ErrUnsafeInstall is wrapped by every refusal of an installed binary.
var ErrUnsafeInstall = errors.New("refusing to run it")

// CheckInstalled decides whether the binary an OS package installed at
// path (absolute and clean) may be run: it must be a regular, executable
// file owned by root and writable by no one else (neither group nor
// others), reached through directories that are all owned by root and
// writable by no one else (symbolic links among them are resolved and the
// directories they lead to checked), and, when wantSHA256 is given, have
// that sha256. A symbolic link as the file itself is refused: the file is
// opened with O_NOFOLLOW, and O_NONBLOCK so that a FIFO cannot block; the
// checks are made on the open descriptor.
//
// prev is the result of the last check (or nil): when the file is the same
// one, unchanged (device, inode, size, mode, owner, mtime and ctime), the
// hash is not computed again, so that calling this on every reconcile
// costs a few stat calls.
func CheckInstalled(path, wantSHA256 string, prev *Installed) (Installed, error) {
	refuse := func(format string, args ...any) (Installed, error) {
		return Installed{}, fmt.Errorf("os_package binary %s: %s: %w", path, fmt.Sprintf(format, args...), ErrUnsafeInstall)
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return refuse("not an absolute, clean path")
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return refuse("its directory: %v", err)
	}
	real := filepath.Join(dir, filepath.Base(path))

	// The file first (its type, then who may change it), then the
	// directories that lead to it.
	var lst syscall.Stat_t
	if err := syscall.Lstat(real, &lst); err != nil {
		return refuse("%v", err)
	}
	if msg := fileProblem(&lst); msg != "" {
		return refuse("%s", msg)
	}
	fd, err := syscall.Open(real, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return refuse("is a symbolic link")
		}
		return refuse("open: %v", err)
	}
	f := os.NewFile(uintptr(fd), real)
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return refuse("fstat: %v", err)
	}
	if msg := fileProblem(&st); msg != "" {
		return refuse("%s", msg)
	}
	if st.Dev != lst.Dev || st.Ino != lst.Ino {
		return refuse("was replaced while being checked")
	}
	if msg := ownerProblem(&st); msg != "" {
		return refuse("%s", msg)
	}
	if msg := dirsProblem(dir); msg != "" {
		return refuse("%s", msg)
	}

	in := Installed{Path: path, SHA256: wantSHA256, id: fileIDOf(&st)}
	if wantSHA256 == "" {
		return in, nil
	}
	if prev != nil && prev.Path == path && prev.SHA256 == wantSHA256 && prev.id == in.id {
		return in, nil // the very file that was hashed last time
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return refuse("reading it: %v", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSHA256 {
		return refuse("sha256 is %s, the assignment's artifact_sha256 is %s", got, wantSHA256)
	}
	// Written while it was being read: the hash proves nothing.
	var after syscall.Stat_t
	if err := syscall.Fstat(fd, &after); err != nil || fileIDOf(&after) != in.id {
		return refuse("changed while its sha256 was being computed")
	}
	return in, nil
}

// dirsProblem says what is wrong with dir or a directory above it: each
// must be a directory (not replaced by a link since EvalSymlinks) that only
// root may change.
func dirsProblem(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		var ds syscall.Stat_t
		if err := syscall.Lstat(d, &ds); err != nil {
			return fmt.Sprintf("directory %s: %v", d, err)
		}
		if ds.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return fmt.Sprintf("%s is not a directory", d)
		}
		if msg := ownerProblem(&ds); msg != "" {
			return fmt.Sprintf("directory %s %s", d, msg)
		}
		if d == "/" {
			return ""
		}
	}
}

// fileProblem says what is wrong with the file's type, or "".
func fileProblem(st *syscall.Stat_t) string {
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
	case syscall.S_IFLNK:
		return "is a symbolic link"
	case syscall.S_IFDIR:
		return "is a directory"
	case syscall.S_IFIFO:
		return "is a named pipe, not a regular file"
	case syscall.S_IFSOCK:
		return "is a socket, not a regular file"
	case syscall.S_IFCHR, syscall.S_IFBLK:
		return "is a device, not a regular file"
	default:
		return "is not a regular file"
	}
	if st.Mode&0o111 == 0 {
		return fmt.Sprintf("is not executable (mode %04o)", st.Mode&0o7777)
	}
	return ""
}

// ownerProblem says why someone other than root could change a file or
// directory, or "".
func ownerProblem(st *syscall.Stat_t) string {
	switch {
	case st.Mode&0o002 != 0:
		return fmt.Sprintf("is writable by others (mode %04o)", st.Mode&0o7777)
	case st.Mode&0o020 != 0:
		return fmt.Sprintf("is writable by its group %d (mode %04o)", st.Gid, st.Mode&0o7777)
	case st.Uid != 0:
		return fmt.Sprintf("is owned by uid %d, not root", st.Uid)
	}
	return ""
}
