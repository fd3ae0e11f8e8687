package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/store"
)

// countingStore counts the Opens of every key of a real store, and records
// the offset of every Open of an artifact and whether it was refused as
// changed.
type countingStore struct {
	store.Store
	mu      sync.Mutex
	byKey   map[string]int
	offsets []int64 // every artifact Open's offset
	changed []bool  // every artifact Open's answer was ErrChanged
	stats   int     // artifact Stat calls (a HEAD on S3)
}

func (c *countingStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	rc, info, err := c.Store.Open(ctx, key, o)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[string]int{}
	}
	c.byKey[key]++
	if strings.HasPrefix(key, "artifacts/") {
		c.offsets = append(c.offsets, o.Offset)
		c.changed = append(c.changed, errors.Is(err, store.ErrChanged))
	}
	return rc, info, err
}

// opens is how often key was opened.
func (c *countingStore) opens(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byKey[key]
}

func (c *countingStore) Stat(ctx context.Context, key string) (store.Info, error) {
	if strings.HasPrefix(key, "artifacts/") {
		c.mu.Lock()
		c.stats++
		c.mu.Unlock()
	}
	return c.Store.Stat(ctx, key)
}

// breakingStore cuts the first artifact body after breakAfter bytes with a
// connection reset, then calls onBreak.
type breakingStore struct {
	store.Store
	breakAfter int64
	onBreak    func()
	broke      bool
	sawChanged bool
}

func (b *breakingStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	rc, info, err := b.Store.Open(ctx, key, o)
	if errors.Is(err, store.ErrChanged) {
		b.sawChanged = true
	}
	if err != nil || b.broke || !strings.HasPrefix(key, "artifacts/") {
		return rc, info, err
	}
	b.broke = true
	return &cutReader{ReadCloser: rc, left: b.breakAfter, onBreak: b.onBreak}, info, nil
}

type cutReader struct {
	io.ReadCloser
	left    int64
	onBreak func()
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		if c.onBreak != nil {
			c.onBreak()
			c.onBreak = nil
		}
		return 0, fmt.Errorf("read tcp: %w", syscall.ECONNRESET)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

// publishAssignDisabled assigns refs with every add-on disabled.
func publishAssignDisabled(f *fixture, refs ...string) (*assignment.Document, error) {
	disable := map[string]bool{}
	for _, r := range refs {
		id, _, _ := cutAt(r)
		disable[id] = true
	}
	res, err := publish.Assign(context.Background(), publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv, Addons: refs, Disable: disable})
	if err != nil {
		return nil, err
	}
	return res.Document, nil
}

func cutAt(ref string) (string, string, bool) {
	for i := range ref {
		if ref[i] == '@' {
			return ref[:i], ref[i+1:], true
		}
	}
	return ref, "", false
}

// rangeIgnoringStore is a store behind a server that ignores Range: a
// ranged read fails with ErrRangeIgnored, as the S3 and HTTP stores report
// it.
type rangeIgnoringStore struct{ store.Store }

func (r rangeIgnoringStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	if o.Offset > 0 {
		return nil, store.Info{}, fmt.Errorf("%s: ranged read: %w", key, store.ErrRangeIgnored)
	}
	return r.Store.Open(ctx, key, o)
}
