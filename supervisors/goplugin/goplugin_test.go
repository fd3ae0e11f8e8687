package goplugin

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/vmtest"
)

func TestConformance(t *testing.T) {
	bins := conformance.BuildExamples(t, "../..", "hello")
	conformance.Run(t, conformance.Harness{
		Hello:     bins["hello"],
		AsksAddon: true,
		New: func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor {
			return New(Options{
				Log:            slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
				Notify:         notify,
				HealthInterval: 100 * time.Millisecond, HealthTimeout: 200 * time.Millisecond,
				StartTimeout: 2 * time.Second, ConfigureTimeout: 2 * time.Second,
				BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
				BreakerRestarts: 3, BreakerWindow: 10 * time.Second, BreakerCooldown: 500 * time.Millisecond,
				ExitPoll: 20 * time.Millisecond,
			})
		},
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// pingsweep opens a raw ICMP socket: as root (make test) it must come up
// healthy, sweeping 127.0.0.1.
func TestPingsweepRawSocket(t *testing.T) {
	vmtest.RequireRoot(t, "a raw ICMP socket")
	bins := conformance.BuildExamples(t, "../..", "pingsweep")
	events := make(chan supervisors.Event, 64)
	b := New(Options{Notify: func(e supervisors.Event) { events <- e }, HealthInterval: 100 * time.Millisecond})
	defer b.Close(context.Background())
	err := b.Start(context.Background(), supervisors.Spec{AddonID: "pingsweep", Version: "1.0.0", Binary: bins["pingsweep"],
		ConfigJSON: []byte(`{"targets":["127.0.0.1"],"interval":"200ms"}`)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(15 * time.Second)
	for {
		select {
		case e := <-events:
			if e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy {
				return
			}
			if e.State == supervisors.StateUnhealthy {
				t.Fatalf("pingsweep unhealthy as root: %s", e.Reason)
			}
		case <-deadline:
			t.Fatal("pingsweep never became healthy")
		}
	}
}
