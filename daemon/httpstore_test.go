package daemon

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/nginxtest"
)

// syncBuffer is a log sink tests read while the agent writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestHTTPStoreEndToEnd: an agent reads a tree that addonctl's publish and
// assign wrote to a directory, served by a real nginx at an http:// store
// URL. It stages an add-on through a connection cut mid-body, resuming
// with a ranged read bound to the ETag; run as the daemon, it applies the
// documents it reads there and, the store being read-only, writes no
// report and says once why.
func TestHTTPStoreEndToEnd(t *testing.T) {
	f := newFixture(t, "file") // the publisher's side
	tree := strings.TrimPrefix(f.storeURL, "file://")
	srv := nginxtest.Start(t, nginxtest.Options{Root: tree})

	content := randomBytes(6 << 20)
	f.publish("hello", "1.0.0", content)
	f.assign("hello@1.0.0")
	proxy := startCuttingProxy(t, srv.Addr, 2<<20, 1)
	f.cfg.Store = "http://" + proxy.ln.Addr().String()
	rep := f.stage()
	if !rep.Converged() {
		t.Fatalf("not converged from the http store after a connection reset: %v", rep.Errors())
	}
	if !bytes.Equal(f.binary("hello"), content) {
		t.Fatal("staged bytes differ from the published artifact")
	}
	proxy.mu.Lock()
	reqs := proxy.requests.String()
	proxy.mu.Unlock()
	if !strings.Contains(reqs, "Range: bytes=") || !strings.Contains(reqs, "If-Match: ") || !strings.Contains(reqs, "If-Range: ") {
		t.Fatalf("no ranged request bound to the ETag after the reset; requests:\n%s", reqs)
	}
	resumed := false
	for _, l := range srv.Requests() {
		resumed = resumed || strings.Contains(l, "/artifacts/hello/1.0.0/") && strings.Contains(l, " 206 ")
	}
	if !resumed {
		t.Fatalf("nginx answered no ranged read of the artifact:\n%s", strings.Join(srv.Requests(), "\n"))
	}

	// The daemon on the same store: documents apply, reports are off.
	f.cfg.Store = srv.URL
	f.cfg.Report = config.Report{Interval: config.Duration(time.Hour), MinInterval: config.Duration(time.Second)}
	beat := assignment.Addon{AddonID: "heartbeat", Version: "1", Delivery: assignment.DeliveryCompiledIn, Supervision: assignment.SupervisionConfigToggle}
	f.putAddons(beat)
	var logs syncBuffer
	r := f.run(t, func(a *Agent, _ *RunOptions) {
		a.log = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	r.wait(t, "heartbeat", "running and healthy", runningHealthy)
	const note = "reports are off: the store is read-only"
	vmtest.Eventually(t, 10*time.Second, "the note that reports are off", func() bool { return strings.Contains(logs.String(), note) })
	// A second document (a change an operator acts on) is read too; the
	// report it would have caused is not written.
	beat.Version = "2"
	f.putAddons(beat)
	if err := r.client.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "heartbeat", "at version 2", func(a AddonStatus) bool { return runningHealthy(a) && a.ActiveVersion == "2" })
	m := r.a.loop.Load().metrics
	if on := testutil.ToFloat64(m.reportsOn); on != 0 {
		t.Errorf("addond_report_enabled = %v, want 0", on)
	}
	if w := reportWrites(r, "ok") + reportWrites(r, "error"); w != 0 {
		t.Errorf("%v report writes to a read-only store", w)
	}
	if _, err := os.Stat(filepath.Join(tree, fleet.ReportKey("edge-01"))); err == nil {
		t.Error("a report appeared in the tree")
	}
	if n := strings.Count(logs.String(), note); n != 1 {
		t.Errorf("the note was logged %d times, want once", n)
	}
	for _, l := range srv.Requests() {
		if !strings.HasPrefix(l, "GET ") && !strings.HasPrefix(l, "HEAD ") {
			t.Errorf("nginx saw %q: an agent on a read-only store only reads", l)
		}
	}
}
