package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/supervisors/conformance"
)

// TestExpiredDocument: a document past its expires is applied no more.
// addond stage stages nothing of it and says why; a running agent keeps
// what runs (from_lkg), reports document_expired and document_fresh false,
// and counts it — also while the source answers "unchanged" (a 304 does
// not renew an expired document); a new document ends it.
func TestExpiredDocument(t *testing.T) {
	ctx := context.Background()
	t.Run("stage", func(t *testing.T) {
		f := newFixture(t, "file")
		f.publish("hello", "1.0.0", randomBytes(1000))
		if _, err := publish.Assign(ctx, publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv, Addons: []string{"hello@1.0.0"}, Expires: time.Nanosecond}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // past it
		rep := f.stage()
		if !rep.Expired || rep.Fresh || !errors.Is(rep.DocumentErr, ErrExpired) || rep.Converged() || len(rep.Addons) != 0 {
			t.Fatalf("an expired document: %+v", rep)
		}
		if f.current("hello") != "" {
			t.Fatal("an expired document's add-on was staged")
		}
	})
	t.Run("run", func(t *testing.T) {
		hello, err := os.ReadFile(conformance.BuildExamples(t, "..", "hello")["hello"])
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, "file")
		f.publish("hello", "1.0.0", hello)
		f.publish("next", "1.0.0", hello)
		r := f.run(t)
		assign := func(expires time.Duration, refs ...string) {
			t.Helper()
			if _, err := publish.Assign(ctx, publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv, Addons: refs, Expires: expires}); err != nil {
				t.Fatal(err)
			}
			r.client.Reconcile(ctx)
		}
		assign(3*time.Second, "hello@1.0.0")
		r.wait(t, "hello", "running", runningHealthy)
		st, _ := r.client.Status(ctx)
		if st.DocumentExpired || !st.DocumentFresh {
			t.Fatalf("a document within its expiry: %+v", st)
		}
		var last *Status
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			r.client.Reconcile(ctx) // "unchanged", after the first
			if last, _ = r.client.Status(ctx); last.DocumentExpired {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not expired 20s after: %+v", last)
			}
		}
		if last.DocumentFresh || !strings.Contains(last.DocumentError, "expired at") {
			t.Fatalf("expired: %+v", last)
		}
		if a := last.Addons[0]; a.ActiveVersion != "1.0.0" || a.State != "running" || !a.FromLKG {
			t.Fatalf("what ran before the expiry: %+v", a)
		}
		if b, _ := json.Marshal(last); !strings.Contains(string(b), `"document_expired":true`) {
			t.Fatalf("status JSON %s", b)
		}
		// A new document, without an expiry, is applied.
		assign(0, "hello@1.0.0", "next@1.0.0")
		r.wait(t, "next", "assigned by the new document", func(a AddonStatus) bool { return a.Version == "1.0.0" })
		if st, _ := r.client.Status(ctx); st.DocumentExpired || !st.DocumentFresh {
			t.Fatalf("after a new document: %+v", st)
		}
	})
}

// TestSerialBound: a serial above 2^53 is refused, and addonctl assign
// does not wrap past the bound.
func TestSerialBound(t *testing.T) {
	if _, err := assignment.Parse([]byte(`{"agent_id":"a","serial":9007199254740993,"addons":[]}`)); err == nil || !strings.Contains(err.Error(), "above 2^53") {
		t.Fatalf("serial 2^53+1: %v", err)
	}
	f := newFixture(t, "file")
	f.putDoc([]byte(`{"agent_id":"edge-01","serial":9007199254740992,"addons":[]}`), true)
	_, err := publish.Assign(context.Background(), publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv})
	if err == nil || !strings.Contains(err.Error(), "refusing to wrap") {
		t.Fatalf("assign after serial 2^53: %v", err)
	}
}
