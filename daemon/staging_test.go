package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/supervisors/conformance"
)

// stallingStore serves the first 256 KiB of the artifacts whose key
// contains match, then holds the body until the download's context ends.
type stallingStore struct {
	store.Store
	match  string
	opened chan struct{} // closed when a matching body was opened
	once   sync.Once
}

func (s *stallingStore) Open(ctx context.Context, key string, o store.OpenOptions) (io.ReadCloser, store.Info, error) {
	rc, info, err := s.Store.Open(ctx, key, o)
	if err != nil || !strings.Contains(key, s.match) {
		return rc, info, err
	}
	s.once.Do(func() { close(s.opened) })
	return &stallingBody{r: io.LimitReader(rc, 256<<10), c: rc, ctx: ctx}, info, nil
}

type stallingBody struct {
	r   io.Reader
	c   io.Closer
	ctx context.Context
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if n, err := b.r.Read(p); n > 0 || err != io.EOF {
		return n, err
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func (b *stallingBody) Close() error { return b.c.Close() }

// inFlight is the addond_downloads_in_flight gauge of a running agent.
func (r *running) inFlight() float64 {
	return testutil.ToFloat64(r.a.loop.Load().metrics.downloads)
}

// waitSettled waits until no staging is in flight.
func (r *running) waitSettled(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); r.inFlight() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v stagings still in flight after 20s", r.inFlight())
		}
	}
}

func (r *running) waitGone(t *testing.T, id string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := r.client.Status(context.Background())
		if err == nil && !hasAddon(st, id) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still in status after 20s: %+v, %v", id, st, err)
		}
	}
}

func hasAddon(st *Status, id string) bool {
	for _, a := range st.Addons {
		if a.AddonID == id {
			return true
		}
	}
	return false
}

// leftOf lists what the runtime root still holds of add-on id: its
// directory and partial downloads.
func (f *fixture) leftOf(id string) []string {
	var left []string
	if _, err := os.Lstat(filepath.Join(f.root, "addons", id)); err == nil {
		left = append(left, "addons/"+id)
	}
	parts, _ := filepath.Glob(filepath.Join(f.root, "tmp", id+"@*"))
	return append(left, parts...)
}

// TestRemovedWhileStaging: an add-on removed from the assignment while its
// version is being staged leaves nothing behind — whether its download is
// cut short by the removal, or had already ended and its result reaches
// the loop only after the removal (ordered so by a fault point) — and an
// add-on removed and assigned again while its old staging is in flight
// runs the new assignment once that staging ended (they never stage at
// once: both would write the same partial file).
func TestRemovedWhileStaging(t *testing.T) {
	ctx := context.Background()
	t.Run("download cut short", func(t *testing.T) {
		f := newFixture(t, "file")
		f.publish("late", "1.0.0", randomBytes(4<<20))
		f.assign("late@1.0.0")
		stall := &stallingStore{Store: f.st, match: "artifacts/late/", opened: make(chan struct{})}
		r := f.run(t, func(a *Agent, _ *RunOptions) {
			a.useStore(stall)
		})
		r.client.Reconcile(ctx)
		select {
		case <-stall.opened:
		case <-time.After(20 * time.Second):
			t.Fatal("late's download never started")
		}
		// The gauge is published when the loop ends the step that started
		// the staging, which under load can come after the store was
		// opened.
		for deadline := time.Now().Add(20 * time.Second); r.inFlight() != 1; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%v stagings in flight, want 1", r.inFlight())
			}
		}
		f.assign()
		r.client.Reconcile(ctx)
		r.waitGone(t, "late")
		r.waitSettled(t)
		if left := f.leftOf("late"); len(left) > 0 {
			t.Fatalf("a removed add-on's cut staging left %v", left)
		}
	})
	t.Run("result after the removal", func(t *testing.T) {
		f := newFixture(t, "file")
		f.publish("late", "1.0.0", randomBytes(1<<20))
		f.assign("late@1.0.0")
		hold, release := make(chan struct{}), make(chan struct{})
		r := f.run(t, func(_ *Agent, o *RunOptions) {
			o.beforeStaged = func(spec assignment.Spec) {
				close(hold)
				<-release
			}
		})
		r.client.Reconcile(ctx)
		select {
		case <-hold:
		case <-time.After(20 * time.Second):
			t.Fatal("late was never staged")
		}
		if _, err := os.Stat(filepath.Join(f.root, "addons/late/versions/1.0.0")); err != nil {
			t.Fatalf("the staging ended, but: %v", err)
		}
		f.assign()
		r.client.Reconcile(ctx)
		r.waitGone(t, "late")
		close(release) // the staging's result now reaches the loop
		r.waitSettled(t)
		if left := f.leftOf("late"); len(left) > 0 {
			t.Fatalf("a staging that ended before its add-on's removal left %v", left)
		}
	})
	t.Run("assigned again meanwhile", func(t *testing.T) {
		hello := conformance.BuildExamples(t, "..", "hello")["hello"]
		f := newFixture(t, "file")
		data, err := os.ReadFile(hello)
		if err != nil {
			t.Fatal(err)
		}
		f.publish("hello", "1.0.0", data)
		f.assign("hello@1.0.0")
		var mu sync.Mutex
		holds := 0
		hold, release := make(chan struct{}), make(chan struct{})
		r := f.run(t, func(_ *Agent, o *RunOptions) {
			o.beforeStaged = func(spec assignment.Spec) {
				mu.Lock()
				holds++
				first := holds == 1
				mu.Unlock()
				if first {
					close(hold)
					<-release
				}
			}
		})
		r.client.Reconcile(ctx)
		<-hold
		f.assign()
		r.client.Reconcile(ctx)
		r.waitGone(t, "hello")
		f.assign("hello@1.0.0")
		r.client.Reconcile(ctx)
		r.wait(t, "hello", "waiting for the earlier staging", func(a AddonStatus) bool { return a.State == "downloading" })
		if n := r.inFlight(); n != 1 {
			t.Fatalf("%v stagings in flight, want only the earlier one", n)
		}
		close(release)
		a := r.wait(t, "hello", "running", runningHealthy)
		if a.ActiveVersion != "1.0.0" {
			t.Fatalf("hello: %+v", a)
		}
		r.waitSettled(t)
		mu.Lock()
		defer mu.Unlock()
		if holds != 2 {
			t.Fatalf("%d stagings ended, want the earlier one and the new assignment's", holds)
		}
	})
}
