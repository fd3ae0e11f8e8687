package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/store"
)

// The reporter's schedule on a fake clock.
func TestReportSchedule(t *testing.T) {
	cfg := config.Report{Interval: config.Duration(10 * time.Minute), MinInterval: config.Duration(5 * time.Second)}
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	fail := errors.New("store down")
	var s reportSchedule
	if due := s.due("a", cfg); !due.IsZero() {
		t.Fatalf("the first report is due at %v, want at once", due)
	}
	s = s.wrote("a", t0, nil, cfg, 0.5)
	if due := s.due("a", cfg); !due.Equal(t0.Add(10*time.Minute + 30*time.Second)) {
		t.Fatalf("unchanged: due %v, want the interval plus the jitter (+30s)", due.Sub(t0))
	}
	if due := s.due("b", cfg); !due.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("changed: due %v, want min_interval after the last write", due.Sub(t0))
	}
	// A change is held min_interval from when it was first seen, with every
	// change that follows it: an update's staging, activation and quick
	// promotion are one write.
	if due := s.saw("b", t0.Add(time.Minute)).due("b", cfg); !due.Equal(t0.Add(time.Minute + 5*time.Second)) {
		t.Fatalf("a change a minute after the last write: due %v, want min_interval after it was seen", due.Sub(t0))
	}
	held := s.saw("b", t0.Add(time.Minute)).saw("c", t0.Add(time.Minute+3*time.Second)).saw("d", t0.Add(time.Minute+4*time.Second))
	if due := held.due("d", cfg); !due.Equal(t0.Add(time.Minute + 5*time.Second)) {
		t.Fatalf("changes following the first: due %v, want the first's hold, not a later one", due.Sub(t0))
	}
	if due := s.saw("b", t0.Add(2*time.Second)).due("b", cfg); !due.Equal(t0.Add(7 * time.Second)) {
		t.Fatalf("a change 2s after the last write: due %v, want 7s (held from when it was seen)", due.Sub(t0))
	}
	back := s.saw("b", t0.Add(time.Minute)).saw("a", t0.Add(time.Minute+time.Second))
	if due := back.due("a", cfg); !due.Equal(t0.Add(10*time.Minute + 30*time.Second)) {
		t.Fatalf("changed back before the write: due %v, want the periodic report", due.Sub(t0))
	}
	if due := back.saw("b", t0.Add(2*time.Minute)).due("b", cfg); !due.Equal(t0.Add(2*time.Minute + 5*time.Second)) {
		t.Fatalf("a new change after changing back: due %v, want held from the new change", due.Sub(t0))
	}
	for _, j := range []float64{-1, -0.3, 0, 0.99} {
		d := reportSchedule{}.wrote("a", t0, nil, cfg, j).due("a", cfg).Sub(t0)
		if d < 9*time.Minute || d > 11*time.Minute {
			t.Errorf("jitter %v: the next periodic report after %v, want within 10%% of 10m", j, d)
		}
	}

	// Failures back off from min_interval, doubling, up to the interval;
	// a change meanwhile does not cut the backoff short.
	now := t0.Add(time.Minute)
	var waits []time.Duration
	for i := 0; i < 10; i++ {
		s = s.wrote("b", now, fail, cfg, 0)
		due := s.due("c", cfg)
		waits = append(waits, due.Sub(now))
		now = due
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 320 * time.Second, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("backoff after failure %d: %v, want %v (all: %v)", i+1, waits[i], want[i], waits)
		}
	}
	// A write that succeeds again resets it; what it wrote is the baseline.
	s = s.wrote("c", now, nil, cfg, 0)
	if s.failures != 0 || !s.due("c", cfg).Equal(now.Add(10*time.Minute)) || !s.due("d", cfg).Equal(now.Add(5*time.Second)) {
		t.Fatalf("after a success: %+v", s)
	}

	// An unset config (a Config built in code) has the defaults, never 0.
	var zero config.Report
	s = reportSchedule{}.wrote("a", t0, nil, zero, 0)
	if d := s.due("b", zero).Sub(t0); d != config.DefaultReportMinInterval {
		t.Fatalf("unset min_interval: %v", d)
	}
	if d := s.due("a", zero).Sub(t0); d != config.DefaultReportInterval {
		t.Fatalf("unset interval: %v", d)
	}
}

// waitReport reads agents/edge-01/status.json until ok accepts it.
func waitReport(t *testing.T, f *fixture, what string, ok func(fleet.Report) bool) (fleet.Report, store.Info) {
	return waitReportFor(t, f, 20*time.Second, what, ok)
}

func waitReportFor(t *testing.T, f *fixture, timeout time.Duration, what string, ok func(fleet.Report) bool) (fleet.Report, store.Info) {
	t.Helper()
	var last fleet.Report
	var lastErr error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, info, err := store.ReadSmall(context.Background(), f.st, fleet.ReportKey("edge-01"), fleet.MaxReportSize, store.OpenOptions{})
		if err != nil {
			lastErr = err
			continue
		}
		rep, err := fleet.ParseReport(data, "edge-01")
		if err != nil {
			t.Fatalf("the agent wrote a report its readers refuse: %v\n%s", err, data)
		}
		if last = rep; ok(rep) {
			return rep, info
		}
	}
	t.Fatalf("no report %s within %v: last %+v, %v", what, timeout, last, lastErr)
	return last, store.Info{}
}

func reportedAddon(rep fleet.Report, id string) AddonStatus {
	for _, a := range rep.Addons {
		if a.AddonID == id {
			return a
		}
	}
	return AddonStatus{}
}

func reportWrites(r *running, result string) float64 {
	return testutil.ToFloat64(r.a.loop.Load().metrics.reports.WithLabelValues(result))
}

// TestReportToStore: addond writes agents/<agent>/status.json, what
// /v1/status says, to both kinds of store: at once, again within
// min_interval of a change an operator cares about, and not again while
// nothing changes.
func TestReportToStore(t *testing.T) {
	storeKinds(t, func(t *testing.T, f *fixture) {
		f.cfg.Report = config.Report{Interval: config.Duration(time.Hour), MinInterval: config.Duration(time.Second)}
		beat := assignment.Addon{AddonID: "heartbeat", Version: "1", Delivery: assignment.DeliveryCompiledIn, Supervision: assignment.SupervisionConfigToggle}
		f.putAddons(beat)
		r := f.run(t)
		r.wait(t, "heartbeat", "running and healthy", runningHealthy)
		rep, _ := waitReport(t, f, "with heartbeat running", func(rep fleet.Report) bool { return runningHealthy(reportedAddon(rep, "heartbeat")) })
		st, err := r.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rep.AgentID != "edge-01" || rep.Platform != "linux/amd64" || rep.AddondVersion != Version || !rep.Ready || !rep.DocumentFresh ||
			rep.Serial != st.Serial || time.Since(rep.ReportedAt) > time.Minute || len(rep.Addons) != len(st.Addons) {
			t.Fatalf("report %+v\nstatus %+v", rep, st)
		}

		// A change: the new version is reported within min_interval (1s)
		// of /v1/status showing it, not at the next interval (1h). The
		// bound is 10s: what is tested is which of the two wrote it, not
		// how fast a loaded machine schedules the write.
		beat.Version = "2"
		f.putAddons(beat)
		if err := r.client.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.wait(t, "heartbeat", "at version 2, promoted", func(a AddonStatus) bool { return runningHealthy(a) && a.ActiveVersion == "2" && !a.Probation })
		seen := time.Now()
		// Promoted too: its promotion is a change of its own (probation
		// true -> false), written within min_interval of the first; on a
		// loaded machine the two came as two writes, the second inside
		// the quiet window below (make test, issue 17's run O).
		before, info := waitReport(t, f, "of version 2, promoted", func(rep fleet.Report) bool {
			a := reportedAddon(rep, "heartbeat")
			return runningHealthy(a) && a.ActiveVersion == "2" && !a.Probation
		})
		if d := time.Since(seen); d > 10*time.Second {
			t.Errorf("the change reached the store %v after /v1/status showed it, want within min_interval", d)
		}

		// Nothing an operator acts on changes (the heartbeat beats, its
		// since and restarts stay): no write for 3 min_intervals.
		ok := reportWrites(r, "ok")
		time.Sleep(3 * time.Second)
		now, err := f.st.Stat(context.Background(), fleet.ReportKey("edge-01"))
		if err != nil || now.ETag != info.ETag || reportWrites(r, "ok") != ok {
			after := "?"
			if data, _, rerr := store.ReadSmall(context.Background(), f.st, fleet.ReportKey("edge-01"), fleet.MaxReportSize, store.OpenOptions{}); rerr == nil {
				if rep, perr := fleet.ParseReport(data, "edge-01"); perr == nil {
					after = rep.Material()
				}
			}
			t.Fatalf("the report was rewritten while nothing changed: %v, %v; writes %v -> %v\nbefore: %s\nafter:  %s", now, err, ok, reportWrites(r, "ok"), before.Material(), after)
		}
		if reportWrites(r, "error") != 0 {
			t.Fatalf("%v failed writes", reportWrites(r, "error"))
		}
	})
}

// TestReportWriteFailureHoldsNothingUp: a store that refuses the report
// (its key is a directory) costs counted, backed-off retries and nothing
// else; once the store takes it, the report is there.
func TestReportWriteFailureHoldsNothingUp(t *testing.T) {
	f := newFixture(t, "file")
	f.cfg.Report = config.Report{Interval: config.Duration(time.Hour), MinInterval: config.Duration(time.Second)}
	beat := assignment.Addon{AddonID: "heartbeat", Version: "1", Delivery: assignment.DeliveryCompiledIn, Supervision: assignment.SupervisionConfigToggle}
	f.putAddons(beat)
	blocker := filepath.Join(strings.TrimPrefix(f.storeURL, "file://"), fleet.ReportKey("edge-01"))
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := f.run(t)
	r.wait(t, "heartbeat", "running and healthy", runningHealthy)
	start := time.Now()
	for reportWrites(r, "error") < 1 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("no failed report write counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Backoff: 1s, 2s, 4s ... so within 5s at most 3 more attempts.
	time.Sleep(5 * time.Second)
	if n := reportWrites(r, "error"); n > 4 {
		t.Fatalf("%v failed writes in 5s: not backed off", n)
	}
	// The loop answers and reconciles meanwhile.
	beat.Version = "2"
	f.putAddons(beat)
	if err := r.client.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "heartbeat", "at version 2", func(a AddonStatus) bool { return runningHealthy(a) && a.ActiveVersion == "2" })
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	// The next retry is up to 16s away (1s doubling; the loaded machine
	// may have got to the 16s wait before the blocker went away).
	waitReportFor(t, f, 40*time.Second, "after the store takes it again", func(rep fleet.Report) bool { return reportedAddon(rep, "heartbeat").ActiveVersion == "2" })
	if reportWrites(r, "ok") < 1 {
		t.Fatal("the write that succeeded was not counted")
	}
}

// TestReportOff: report.enabled false writes nothing.
func TestReportOff(t *testing.T) {
	f := newFixture(t, "file")
	off := false
	f.cfg.Report = config.Report{Enabled: &off, MinInterval: config.Duration(time.Second)}
	f.putAddons(assignment.Addon{AddonID: "heartbeat", Version: "1", Delivery: assignment.DeliveryCompiledIn, Supervision: assignment.SupervisionConfigToggle})
	r := f.run(t)
	r.wait(t, "heartbeat", "running and healthy", runningHealthy)
	time.Sleep(2 * time.Second)
	if _, err := f.st.Stat(context.Background(), fleet.ReportKey("edge-01")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("report written while off: %v", err)
	}
	if n := reportWrites(r, "ok") + reportWrites(r, "error"); n != 0 {
		t.Fatalf("%v writes while off", n)
	}
}
