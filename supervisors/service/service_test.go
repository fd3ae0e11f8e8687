package service

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

// The systemd_service backend against a real systemd: the tests below run
// inside a booted Debian as the lingering addond user.
func TestMain(m *testing.M) { os.Exit(m.Run()) }

func TestInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		bins := conformance.BuildExamples(t, "../..", "hello")
		nspawn.RunTest(t, nspawn.RunOptions{Files: []string{bins["hello"]}, Run: "^TestInMachine$"})
		return
	}
	hello := filepath.Join(nspawn.BinDir, "hello")
	m := systemd.NewManager(systemd.UserTarget(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer m.Close()
	newBackend := func(t *testing.T, notify supervisors.Notify) *systemd.Backend {
		root, err := os.MkdirTemp("/var/lib/addond", "root-")
		if err != nil {
			t.Fatal(err)
		}
		return New(systemd.Options{
			Manager: m, Paths: systemd.Paths{RuntimeRoot: root}, Notify: notify,
			Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
			RestartDelay: 50 * time.Millisecond, StartLimitBurst: 3, StartLimitInterval: 10 * time.Second,
			BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second,
		})
	}
	t.Run("conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Hello: hello, OutlivesAgent: true, Units: true,
			New: func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor { return newBackend(t, notify) },
		})
	})

	t.Run("resources and sandbox appear on the unit", func(t *testing.T) {
		events := make(chan supervisors.Event, 64)
		b := newBackend(t, func(e supervisors.Event) { events <- e })
		ctx := context.Background()
		spec := supervisors.Spec{AddonID: "limited", Version: "1.0.0", Binary: hello, ConfigJSON: []byte(`{}`),
			Resources: &supervisors.Resources{CPUMaxPercent: 50, MemoryMaxBytes: 64 << 20, MemoryHighBytes: 48 << 20, TasksMax: 32}}
		if err := b.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "limited")
		waitHealthy(t, events, "limited")
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		props, err := conn.GetUnitTypePropertiesContext(ctx, "addond-limited.service", "Service")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"CPUQuotaPerSecUSec": uint64(500000), "MemoryMax": uint64(64 << 20), "MemoryHigh": uint64(48 << 20),
			"TasksMax": uint64(32), "PrivateUsers": true, "PrivateTmp": true, "NoNewPrivileges": true, "ProtectSystem": "strict",
		}
		for k, v := range want {
			if props[k] != v {
				t.Errorf("%s = %v (%T), want %v", k, props[k], props[k], v)
			}
		}
	})
}

func waitHealthy(t *testing.T, events chan supervisors.Event, id string) supervisors.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-events:
			if e.AddonID == id && e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy {
				return e
			}
			if e.AddonID == id && strings.Contains(string(e.State), "fail") {
				t.Fatalf("%s: %s: %s", id, e.State, e.Reason)
			}
		case <-deadline:
			t.Fatalf("%s never became healthy", id)
		}
	}
}
