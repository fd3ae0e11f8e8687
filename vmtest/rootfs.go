package vmtest

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// CacheDir is where test dependencies (MinIO, Debian roots) are kept
// between runs: $XDG_CACHE_HOME/addond-test, else ~/.cache/addond-test.
func CacheDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "addond-test")
}

// Rootfs is a Debian 12 root built once with mmdebstrap and cached in
// CacheDir as a tarball named by Name and a hash of Recipe: a change of
// the recipe builds a new one.
type Rootfs struct {
	Name   string   // e.g. "rootfs-bookworm"
	Recipe string   // what the root is made of: its hash keys the cache
	Args   []string // mmdebstrap's options (the suite and target are added)

	once sync.Once
	err  error
}

// Path is the cached tarball.
func (r *Rootfs) Path() string {
	sum := sha256.Sum256([]byte(r.Recipe))
	return filepath.Join(CacheDir(), fmt.Sprintf("%s-%x.tar", r.Name, sum[:6]))
}

// Build makes the tarball unless it is cached (once per process).
func (r *Rootfs) Build() error {
	r.once.Do(func() {
		path := r.Path()
		if _, err := os.Stat(path); err == nil {
			return
		}
		os.MkdirAll(filepath.Dir(path), 0o755)
		tmp := path + ".tmp.tar"
		args := append(append([]string(nil), r.Args...), "bookworm", tmp)
		if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
			r.err = fmt.Errorf("mmdebstrap: %v\n%s", err, out)
			os.Remove(tmp)
			return
		}
		r.err = os.Rename(tmp, path)
	})
	return r.err
}
