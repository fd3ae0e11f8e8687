package timer

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/vmtest/nspawn"
)

// The systemd_timer backend against a real systemd, inside a booted
// Debian as the lingering addond user.
func TestInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		bins := conformance.BuildExamples(t, "../..", "ticker")
		nspawn.RunTest(t, nspawn.RunOptions{Files: []string{bins["ticker"]}})
		return
	}
	ticker := filepath.Join(nspawn.BinDir, "ticker")
	m := systemd.NewManager(systemd.UserTarget(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer m.Close()
	var root string
	newBackend := func(t *testing.T, notify supervisors.Notify) *systemd.Backend {
		var err error
		if root, err = os.MkdirTemp("/var/lib/addond", "root-"); err != nil {
			t.Fatal(err)
		}
		return New(systemd.Options{
			Manager: m, Paths: systemd.Paths{RuntimeRoot: root}, Notify: notify,
			Log:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
			RestartDelay: 50 * time.Millisecond, BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second,
		})
	}
	ctx := context.Background()

	t.Run("conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Job: true, Units: true, OutlivesAgent: true, Binary: ticker,
			Spec: func(s *supervisors.Spec) { s.Schedule = "hourly"; s.Args = []string{"ticks"} },
			New:  func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor { return newBackend(t, notify) },
		})
	})

	t.Run("fires on schedule, adopted after a restart", func(t *testing.T) {
		events := make(chan supervisors.Event, 64)
		b := newBackend(t, func(e supervisors.Event) { events <- e })
		// ticker runs in its state directory (the working directory).
		spec := supervisors.Spec{AddonID: "tick", Version: "1.0.0", Binary: ticker, Args: []string{"ticks"}, Schedule: "*:*:0/2"}
		if err := b.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		ticks := filepath.Join(systemd.Paths{RuntimeRoot: root}.StateDir("tick"), "ticks")
		lines := waitLines(t, ticks, 2, 10*time.Second)
		t1, _ := time.Parse(time.RFC3339, strings.Fields(lines[0])[0])
		t2, _ := time.Parse(time.RFC3339, strings.Fields(lines[1])[0])
		if d := t2.Sub(t1); d < time.Second || d > 3*time.Second {
			t.Fatalf("runs %v apart, want ~2s (AccuracySec=1s): %q", d, lines)
		}
		conn, _ := m.Conn(ctx)
		before, _ := systemd.ReadUnit(ctx, conn, "addond-tick.timer")
		acc, _ := conn.GetUnitTypePropertyContext(ctx, "addond-tick.timer", "Timer", "AccuracyUSec")
		if acc == nil || acc.Value.Value() != uint64(1e6) {
			t.Fatalf("AccuracyUSec = %v, want 1s", acc)
		}
		// addond restarts: a new backend adopts the running timer.
		b.Close(ctx)
		b2 := New(b.Opts)
		if err := b2.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		after, _ := systemd.ReadUnit(ctx, conn, "addond-tick.timer")
		if after.InvocationID != before.InvocationID {
			t.Fatalf("the timer was re-created (invocation %s → %s) instead of adopted", before.InvocationID, after.InvocationID)
		}
		waitLines(t, ticks, len(readLines(ticks))+1, 10*time.Second)
		if err := b2.Stop(ctx, "tick"); err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{"addond-tick.timer", "addond-tick.service"} {
			if st, _ := systemd.ReadUnit(ctx, conn, u); st.Exists() {
				t.Errorf("%s still loaded after Stop: %+v", u, st)
			}
		}
	})

	t.Run("failed runs make it degraded, then unhealthy", func(t *testing.T) {
		events := make(chan supervisors.Event, 64)
		b := newBackend(t, func(e supervisors.Event) { events <- e })
		spec := supervisors.Spec{AddonID: "fails", Version: "1.0.0", Binary: "/bin/false", Schedule: "*:*:*"}
		if err := b.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "fails")
		var sawDegraded bool
		deadline := time.After(15 * time.Second)
		for {
			select {
			case e := <-events:
				sawDegraded = sawDegraded || e.State == supervisors.StateDegraded
				if e.State == supervisors.StateUnhealthy {
					if !sawDegraded || !strings.Contains(e.Reason, "exited with status 1") {
						t.Fatalf("unhealthy without degraded first or without the exit status: %q", e.Reason)
					}
					return
				}
			case <-deadline:
				t.Fatal("never unhealthy")
			}
		}
	})

	t.Run("a schedule systemd rejects is refused, nothing left", func(t *testing.T) {
		b := newBackend(t, nil)
		err := b.Start(ctx, supervisors.Spec{AddonID: "badcal", Version: "1.0.0", Binary: ticker, Schedule: "every full moon"})
		if err == nil || !strings.Contains(err.Error(), "badcal") || !strings.Contains(err.Error(), "every full moon") {
			t.Fatalf("Start = %v, want an error naming the add-on and the schedule", err)
		}
		conn, _ := m.Conn(ctx)
		for _, u := range []string{"addond-badcal.timer", "addond-badcal.service"} {
			if st, _ := systemd.ReadUnit(ctx, conn, u); st.Exists() {
				t.Errorf("%s left behind: %+v", u, st)
			}
		}
		b.Stop(ctx, "badcal")
	})
}

func readLines(path string) []string {
	data, _ := os.ReadFile(path)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func waitLines(t *testing.T, path string, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := readLines(path); len(l) >= n && l[0] != "" {
			return l
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: fewer than %d lines within %v: %q", path, n, timeout, readLines(path))
	return nil
}
