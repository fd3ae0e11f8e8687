package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/supervisors/goplugin"
	"github.com/addond/addond/supervisors/service"
	"github.com/addond/addond/supervisors/systemd"
)

// TestReadyBeforeTheManager: at boot the user manager may come up after
// addond. READY does not wait for it; a unit add-on is reported starting,
// waiting for the manager — and however long that lasts, its probation
// does not run out: the version is never marked failed for it.
func TestReadyBeforeTheManager(t *testing.T) {
	f := newFixture(t, "file")
	hello, _ := os.ReadFile(conformance.BuildExamples(t, "..", "hello")["hello"])
	f.publish("svc", "1.0.0", hello)
	if _, err := publish.Assign(context.Background(), publish.AssignOptions{Store: f.st, AgentID: "edge-01", Key: f.priv,
		Addons: []string{"svc@1.0.0"}, Supervision: map[string]string{"svc": assignment.SupervisionSystemdService}}); err != nil {
		t.Fatal(err)
	}
	f.cfg.StatusSocket = filepath.Join(f.base, "s.sock")
	f.cfg.PollInterval = config.Duration(time.Hour)
	f.cfg.Probation = config.Duration(500 * time.Millisecond)
	a := f.open()
	defer a.Close()
	m := systemd.NewManager(systemd.Target{Bus: "unix:path=" + filepath.Join(t.TempDir(), "no-bus-yet")}, nil)
	defer m.Close()
	svc := service.New(systemd.Options{Manager: m, Notify: a.Notify, Paths: systemd.Paths{RuntimeRoot: f.root}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		done <- a.Run(ctx, RunOptions{Supervisors: map[string]supervisors.Supervisor{assignment.SupervisionSystemdService: svc}, Ready: ready})
	}()
	select {
	case <-ready:
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("READY took %v without a manager", d)
		}
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("not READY within 10s without a manager")
	}
	r := &running{a: a, client: NewClient(f.cfg.StatusSocket)}
	r.wait(t, "svc", "waiting for the manager", func(s AddonStatus) bool {
		return s.State == "starting" && strings.Contains(s.LastError, "waiting for the systemd manager")
	})
	time.Sleep(3 * time.Second) // six probations
	st, err := r.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Addons {
		if s.AddonID == "svc" && (s.State != "starting" || s.ActiveVersion != "1.0.0") {
			t.Fatalf("svc after 3s without a manager: %+v (want still starting, never rolled back or failed)", s)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sta, _ := a.env.Load().del.State("svc"); len(sta.Failed) != 0 {
		t.Fatalf("a version was marked failed for the manager's absence: %+v", sta.Failed)
	}
}

// TestOrphanSweep: the sweep keeps the units of add-ons that run or are
// meant to run, and no others; it runs at start and after every
// authoritative document.
func TestOrphanSweep(t *testing.T) {
	f := newFixture(t, "file")
	hello, _ := os.ReadFile(conformance.BuildExamples(t, "..", "hello")["hello"])
	f.publish("hello", "1.0.0", hello)
	f.assign("hello@1.0.0")
	f.cfg.StatusSocket = filepath.Join(f.base, "s.sock")
	f.cfg.PollInterval = config.Duration(time.Hour)
	a := f.open()
	defer a.Close()
	type sweep struct{ hello, ghost bool }
	sweeps := make(chan sweep, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, RunOptions{
			Supervisors: map[string]supervisors.Supervisor{assignment.SupervisionAgentSidecar: goplugin.New(goplugin.Options{Notify: a.Notify})},
			Ready:       ready,
			Orphans: func(ctx context.Context, keep func(string) bool) ([]string, error) {
				sweeps <- sweep{keep("hello"), keep("ghost")}
				return nil, nil
			},
		})
	}()
	<-ready
	r := &running{a: a, client: NewClient(f.cfg.StatusSocket)}
	r.wait(t, "hello", "running", runningHealthy)
	var last sweep
	deadline := time.After(10 * time.Second)
	for !last.hello {
		select {
		case last = <-sweeps:
			if last.ghost {
				t.Fatal("the sweep keeps a unit of an add-on that is not assigned")
			}
		case <-deadline:
			t.Fatal("no sweep after the document that keeps hello")
		}
	}
	// hello is unassigned: the next sweep no longer keeps it.
	f.putAddons()
	if err := r.client.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline = time.After(10 * time.Second)
	for last.hello {
		select {
		case last = <-sweeps:
		case <-deadline:
			t.Fatal("no sweep without hello after the document that removed it")
		}
	}
	cancel()
	<-done
}
