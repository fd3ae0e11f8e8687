package daemon

import (
	"context"
	"sync"
	"testing"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors"
)

// callRecorder records the calls the executor makes; it runs
// nothing. Update answers ErrUnknownAddon for what it never started.
type callRecorder struct {
	mu    sync.Mutex
	calls []string
	known map[string]bool
}

func (r *callRecorder) record(call string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
}

func (r *callRecorder) Start(_ context.Context, spec supervisors.Spec) error {
	r.record("start " + spec.AddonID + "@" + spec.Version)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.known[spec.AddonID] = true
	return nil
}

func (r *callRecorder) Update(_ context.Context, spec supervisors.Spec) error {
	r.record("update " + spec.AddonID + "@" + spec.Version)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.known[spec.AddonID] {
		return supervisors.ErrUnknownAddon
	}
	return nil
}

func (r *callRecorder) Stop(_ context.Context, id string) error {
	r.record("stop " + id)
	return nil
}
func (r *callRecorder) Status(string) (supervisors.Event, bool) { return supervisors.Event{}, false }
func (r *callRecorder) Close(context.Context) error             { return nil }

// An Update of an add-on its backend does not run — the Start it follows
// failed, and that result was superseded before the Core saw it — starts
// it: the Core's view that it runs there must not leave it stopped (the
// machine test found it: a boot's capped last-known-good refused, the new
// version's update then answered "not supervised here" until rollback).
func TestUpdateOfAnAddonNotRunningStartsIt(t *testing.T) {
	f := newFixture(t, "file")
	a, err := Open(f.cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec := &callRecorder{known: map[string]bool{"kept": true}}
	l := a.newLoop(context.Background(), RunOptions{Supervisors: map[string]supervisors.Supervisor{"m": rec}}, false)
	spec := func(id string) assignment.Spec {
		return assignment.Spec{AddonID: id, Version: "1.1.0", Supervision: "m", Delivery: assignment.DeliveryPushedArtifact, BinaryName: id}
	}
	for _, id := range []string{"lost", "kept"} {
		done := l.startOp(a.env.Load(), reconcile.Start{ID: id, Seq: 1, Spec: spec(id), Backend: "m", Update: true})()
		if err := done.(reconcile.StartDone).Err; err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	want := []string{"update lost@1.1.0", "start lost@1.1.0", "update kept@1.1.0"}
	if len(rec.calls) != len(want) {
		t.Fatalf("calls %q, want %q", rec.calls, want)
	}
	for i := range want {
		if rec.calls[i] != want[i] {
			t.Fatalf("calls %q, want %q", rec.calls, want)
		}
	}
}
