package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest"
)

// mountTmpfs mounts a tmpfs of size at dir for the test.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	vmtest.RequireRoot(t, "to mount a small tmpfs")
	os.MkdirAll(dir, 0o755)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
}

func TestDiskFull(t *testing.T) {
	f := newFixture(t, "file")
	mountTmpfs(t, f.root, "8m")
	v1 := randomBytes(1 << 20)
	f.publish("hello", "1.0.0", v1)
	f.assign("hello@1.0.0")
	if rep := f.stage(); !rep.Converged() {
		t.Fatal(rep.Errors())
	}
	f.publish("hello", "2.0.0", randomBytes(12<<20))
	f.assign("hello@2.0.0")
	before := f.tree()
	rep := f.stage()
	r := reportFor(t, rep, "hello")
	if r.Err == nil || !strings.Contains(r.Err.Error(), "not enough free space") || !strings.Contains(r.Err.Error(), `addon "hello"`) {
		t.Fatalf("disk full: %v, want a free-space refusal naming the add-on", r.Err)
	}
	if !r.FromLKG || f.current("hello") != "1.0.0" {
		t.Fatalf("disk full: %+v, current %q", r, f.current("hello"))
	}
	if d := diffTrees(before, f.tree()); len(d) > 0 {
		t.Fatalf("refused download changed the tree: %v", d)
	}
	if tmp, _ := os.ReadDir(filepath.Join(f.root, "tmp")); len(tmp) != 0 {
		t.Fatalf("refused download left %d files in tmp/", len(tmp))
	}
}

func TestDownloadConcurrencyLimit(t *testing.T) {
	f := newFixture(t, "file")
	f.cfg.MaxConcurrentDownloads = 3
	var refs []string
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"} {
		f.publish(id, "1.0.0", randomBytes(64<<10))
		refs = append(refs, id+"@1.0.0")
	}
	f.assign(refs...)
	gate := &gatedStore{Store: f.st}
	a := f.open()
	defer a.Close()
	a.useStore(gate)
	rep, err := a.Stage(context.Background())
	if err != nil || !rep.Converged() {
		t.Fatal(err, rep.Errors())
	}
	if gate.max != 3 {
		t.Fatalf("at most %d downloads ran at once, want exactly the limit 3", gate.max)
	}
}

// gatedStore holds each body open briefly and records how many are open
// at once.
type gatedStore struct {
	store.Store
	mu        sync.Mutex
	open, max int
}

func (g *gatedStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	rc, info, err := g.Store.Open(ctx, key, o)
	if err != nil || !strings.HasPrefix(key, "artifacts/") {
		return rc, info, err
	}
	g.mu.Lock()
	g.open++
	g.max = max(g.max, g.open)
	g.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	return &gatedBody{ReadCloser: rc, g: g}, info, nil
}

type gatedBody struct {
	io.ReadCloser
	g    *gatedStore
	once sync.Once
}

func (b *gatedBody) Close() error {
	b.once.Do(func() {
		b.g.mu.Lock()
		b.g.open--
		b.g.mu.Unlock()
	})
	return b.ReadCloser.Close()
}
