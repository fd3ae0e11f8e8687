package goplugin

import (
	"log/slog"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
)

func TestConformance(t *testing.T) {
	bins := conformance.BuildExamples(t, "../..", "hello")
	conformance.Run(t, conformance.Harness{
		Hello: bins["hello"],
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
