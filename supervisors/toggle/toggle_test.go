package toggle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/vmtest"
)

// fake is a Feature that, while on, runs a goroutine (as a real feature
// would) and records every call.
type fake struct {
	mu       sync.Mutex
	enables  []string // configs Enable was called with
	disables int
	failN    int   // fail this many Enable calls ...
	failErr  error // ... with this error
	health   supervisors.Health
	reason   string
	stop     chan struct{}
	done     chan struct{}
}

func (f *fake) Enable(ctx context.Context, config []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enables = append(f.enables, string(config))
	if f.failN > 0 {
		f.failN--
		return f.failErr
	}
	if f.stop == nil {
		f.stop, f.done = make(chan struct{}), make(chan struct{})
		go func(stop, done chan struct{}) {
			defer close(done)
			<-stop
		}(f.stop, f.done)
	}
	return nil
}

func (f *fake) Disable(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disables++
	if f.stop != nil {
		close(f.stop)
		<-f.done
		f.stop = nil
	}
	return nil
}

func (f *fake) calls() ([]string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.enables...), f.disables
}

func (f *fake) on() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stop != nil
}

// healthyFake also reports its health.
type healthyFake struct{ fake }

func (f *healthyFake) Health() (supervisors.Health, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.health, f.reason
}

// wait bounds every wait for an event.
const wait = 5 * time.Second

func newBackend(t *testing.T, rec *conformance.Recorder, features map[string]Feature) *Backend {
	b := New(Options{
		Log:            slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Notify:         rec.Notify,
		Features:       features,
		HealthInterval: 20 * time.Millisecond,
		BackoffMin:     20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func running(e supervisors.Event) bool {
	return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy
}

func spec(id, version, feature, config string) supervisors.Spec {
	return supervisors.Spec{AddonID: id, Version: version, Feature: feature, ConfigJSON: []byte(config)}
}

func TestEnableReconfigureDisable(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	baseline := runtime.NumGoroutine()

	if err := b.Start(ctx, spec("a", "1", "beat", `{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	rec.WaitFrom(t, 0, "a", wait, "running", running)
	if enables, _ := f.calls(); len(enables) != 1 || enables[0] != `{"x":1}` || !f.on() {
		t.Fatalf("Enable calls %q, on %v; want one with the config", enables, f.on())
	}
	if st, ok := b.Status("a"); !ok || !running(st) || st.Version != "1" {
		t.Fatalf("Status = %+v, %v", st, ok)
	}

	// A new configuration is applied in place: Enable again, no Disable.
	m := rec.Mark()
	if err := b.Update(ctx, spec("a", "1", "beat", `{"x":2}`)); err != nil {
		t.Fatal(err)
	}
	if enables, disables := f.calls(); len(enables) != 2 || enables[1] != `{"x":2}` || disables != 0 {
		t.Fatalf("after a config change: Enable %q, Disable %d; want the new config applied in place", enables, disables)
	}
	for _, e := range rec.Since(m, "a") {
		if e.State != supervisors.StateRunning {
			t.Fatalf("a config change went through %s", e.State)
		}
	}

	// A new version alone calls nothing and is reported.
	m = rec.Mark()
	if err := b.Update(ctx, spec("a", "2", "beat", `{"x":2}`)); err != nil {
		t.Fatal(err)
	}
	rec.WaitFrom(t, m, "a", wait, "running version 2", func(e supervisors.Event) bool { return running(e) && e.Version == "2" })
	if enables, _ := f.calls(); len(enables) != 2 {
		t.Fatalf("a version-only change called Enable: %q", enables)
	}

	// No config: the feature gets "{}".
	b.Update(ctx, spec("a", "2", "beat", ``))
	if enables, _ := f.calls(); enables[len(enables)-1] != `{}` {
		t.Fatalf("empty config reached the feature as %q, want {}", enables[len(enables)-1])
	}

	m = rec.Mark()
	if err := b.Stop(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	rec.WaitFrom(t, m, "a", wait, "stopped", func(e supervisors.Event) bool { return e.State == supervisors.StateStopped })
	if _, disables := f.calls(); disables != 1 || f.on() {
		t.Fatalf("Disable called %d times, on %v after Stop", disables, f.on())
	}
	if _, ok := b.Status("a"); ok {
		t.Fatal("Status still knows a stopped add-on")
	}
	if err := b.Stop(ctx, "a"); !errors.Is(err, supervisors.ErrUnknownAddon) {
		t.Fatalf("second Stop = %v, want ErrUnknownAddon", err)
	}
	// Neither the feature's goroutine nor the backend's is left.
	vmtest.Goroutines(t, baseline)
}

func TestUnknownFeatureIsUnsupported(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	for _, name := range []string{"nope", ""} {
		id := "x" + name
		err := b.Start(ctx, spec(id, "1", name, `{}`))
		if !errors.Is(err, supervisors.ErrUnsupported) || !strings.Contains(err.Error(), id) {
			t.Fatalf("Start with feature %q = %v, want ErrUnsupported naming the add-on", name, err)
		}
		e := rec.WaitFrom(t, 0, id, wait, "unsupported", func(e supervisors.Event) bool { return e.State == supervisors.StateUnsupported })
		if name != "" && !strings.Contains(e.Reason, `"nope"`) {
			t.Fatalf("reason %q does not name the feature", e.Reason)
		}
		for _, e := range rec.Events(id) {
			if e.State == supervisors.StateRunning || e.Health == supervisors.HealthHealthy {
				t.Fatalf("an unknown feature was reported applied: %+v", e)
			}
		}
	}
	if enables, _ := f.calls(); len(enables) != 0 {
		t.Fatalf("another feature was enabled: %q", enables)
	}
	// An update to a feature that exists applies it.
	if err := b.Update(ctx, spec("xnope", "1", "beat", `{}`)); err != nil {
		t.Fatal(err)
	}
	rec.WaitFrom(t, 0, "xnope", wait, "running", running)
}

func TestEnableErrorIsReportedAndRetried(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{failN: 2, failErr: errors.New("disk on fire")}
	b := newBackend(t, rec, map[string]Feature{"beat": f})

	err := b.Start(ctx, spec("a", "1", "beat", `{}`))
	if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Start = %v, want the feature's error naming the add-on", err)
	}
	e := rec.WaitFrom(t, 0, "a", wait, "failed", func(e supervisors.Event) bool { return e.State == supervisors.StateFailed })
	if e.Health != supervisors.HealthUnhealthy || !strings.Contains(e.Reason, "disk on fire") || !strings.Contains(e.Reason, `"beat"`) {
		t.Fatalf("failure event %+v: want unhealthy with the feature and the reason", e)
	}
	rec.WaitFrom(t, 0, "a", wait, "running after retries", running)
	if enables, _ := f.calls(); len(enables) != 3 {
		t.Fatalf("Enable called %d times, want 3 (two failures, then success)", len(enables))
	}
}

func TestInvalidConfigWaitsForAChange(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{failN: 1, failErr: fmt.Errorf("%w: interval: not a duration", ErrInvalidConfig)}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	if err := b.Start(ctx, spec("a", "1", "beat", `{"interval":"x"}`)); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Start = %v, want ErrInvalidConfig", err)
	}
	e := rec.WaitFrom(t, 0, "a", wait, "failed", func(e supervisors.Event) bool { return e.State == supervisors.StateFailed })
	if !strings.Contains(e.Reason, "interval") {
		t.Fatalf("reason %q", e.Reason)
	}
	time.Sleep(300 * time.Millisecond) // many backoffs
	if enables, _ := f.calls(); len(enables) != 1 {
		t.Fatalf("an invalid configuration was retried %d times", len(enables)-1)
	}
	if err := b.Update(ctx, spec("a", "1", "beat", `{"interval":"1s"}`)); err != nil {
		t.Fatal(err)
	}
	rec.WaitFrom(t, 0, "a", wait, "running after the fix", running)
}

func TestReconfigureErrorKeepsFeatureOn(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	b.Start(ctx, spec("a", "1", "beat", `{}`))
	rec.WaitFrom(t, 0, "a", wait, "running", running)

	f.mu.Lock()
	f.failN, f.failErr = 1, errors.New("bad path")
	f.mu.Unlock()
	m := rec.Mark()
	if err := b.Update(ctx, spec("a", "1", "beat", `{"path":"x"}`)); err == nil || !strings.Contains(err.Error(), "bad path") {
		t.Fatalf("Update = %v, want the refusal", err)
	}
	e := rec.WaitFrom(t, m, "a", wait, "unhealthy", func(e supervisors.Event) bool { return e.State == supervisors.StateUnhealthy })
	if !strings.HasPrefix(e.Reason, "configure:") || !strings.Contains(e.Reason, "bad path") {
		t.Fatalf("reason %q, want configure: and the refusal", e.Reason)
	}
	if _, disables := f.calls(); disables != 0 || !f.on() {
		t.Fatal("a refused configuration switched the feature off")
	}
	// The next good configuration clears it.
	m = rec.Mark()
	b.Update(ctx, spec("a", "1", "beat", `{"path":"y"}`))
	rec.WaitFrom(t, m, "a", wait, "running again", running)
}

func TestHealthReport(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &healthyFake{fake{health: supervisors.HealthHealthy}}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	b.Start(ctx, spec("a", "1", "beat", `{}`))
	rec.WaitFrom(t, 0, "a", wait, "running", running)
	f.mu.Lock()
	f.health, f.reason = supervisors.HealthDegraded, "write failed"
	f.mu.Unlock()
	e := rec.WaitFrom(t, 0, "a", wait, "degraded", func(e supervisors.Event) bool { return e.State == supervisors.StateDegraded })
	if e.Health != supervisors.HealthDegraded || e.Reason != "write failed" {
		t.Fatalf("event %+v", e)
	}
}

func TestOneOwnerPerFeature(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f := &fake{}
	b := newBackend(t, rec, map[string]Feature{"beat": f})
	if err := b.Start(ctx, spec("a", "1", "beat", `{}`)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx, spec("b", "1", "beat", `{}`)); err == nil {
		t.Fatal("two add-ons switched one feature on")
	}
	e := rec.WaitFrom(t, 0, "b", wait, "failed", func(e supervisors.Event) bool { return e.State == supervisors.StateFailed })
	if !strings.Contains(e.Reason, `add-on "a"`) {
		t.Fatalf("reason %q does not name the owner", e.Reason)
	}
	b.Stop(ctx, "a")
	rec.WaitFrom(t, 0, "b", wait, "running once a let go", running)
}

func TestSwitchToAnotherFeature(t *testing.T) {
	ctx := context.Background()
	rec := conformance.NewRecorder()
	f, g := &fake{}, &fake{}
	b := newBackend(t, rec, map[string]Feature{"f": f, "g": g})
	b.Start(ctx, spec("a", "1", "f", `{}`))
	rec.WaitFrom(t, 0, "a", wait, "running", running)
	if err := b.Update(ctx, spec("a", "1", "g", `{}`)); err != nil {
		t.Fatal(err)
	}
	if _, d := f.calls(); d != 1 || f.on() || !g.on() {
		t.Fatalf("f disabled %d times (on %v), g on %v", d, f.on(), g.on())
	}
	// Close switches everything off.
	b.Close(ctx)
	if g.on() {
		t.Fatal("Close left a feature on")
	}
}
