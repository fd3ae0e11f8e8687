package supervisors

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// inst is a backend's instance type in miniature: it embeds a Handle.
type inst struct{ *Handle }

func newInst(id string) *inst { return &inst{NewHandle(id, func(Event) {}, func(Event) {})} }

// echo is a run loop: it reports its first result, answers requests with
// the spec's version as an error ("" for none), and ends when stopped or
// detached, or when asked to stop (a nil spec).
func echo(i *inst, firstErr error) func(first chan<- error) {
	return func(first chan<- error) {
		first <- firstErr
		for {
			select {
			case <-i.Stopping():
				i.Emit(Event{State: StateStopped})
				return
			case <-i.Detaching():
				return
			case r := <-i.Requests():
				if r.Spec == nil {
					r.Reply(errors.New("stopped by request"))
					return
				}
				var err error
				if r.Spec.Version != "" {
					err = errors.New(r.Spec.Version)
				}
				r.Reply(err)
			}
		}
	}
}

func TestRegistryStartGetTake(t *testing.T) {
	ctx := context.Background()
	var r Registry[*inst]
	if _, err := r.Get("a"); !errors.Is(err, ErrUnknownAddon) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Get of nothing = %v", err)
	}
	a := newInst("a")
	if err := r.Start(ctx, a, echo(a, nil)); err != nil {
		t.Fatal(err)
	}
	b := newInst("a")
	if err := r.Start(ctx, b, func(chan<- error) { t.Error("ran a second instance of a") }); err == nil || !strings.Contains(err.Error(), `addon "a" is already supervised`) {
		t.Fatalf("second Start = %v", err)
	}
	if got, err := r.Get("a"); err != nil || got != a {
		t.Fatalf("Get = %v, %v", got, err)
	}
	if got, err := r.Take("a"); err != nil || got != a {
		t.Fatalf("Take = %v, %v", got, err)
	}
	if _, err := r.Take("a"); !errors.Is(err, ErrUnknownAddon) {
		t.Fatalf("Take after Take = %v", err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	c := newInst("c")
	r.Start(ctx, c, echo(c, nil))
	r.Remove("c")
	r.Remove("c")
	if _, err := r.Get("c"); !errors.Is(err, ErrUnknownAddon) {
		t.Fatalf("Get after Remove = %v", err)
	}
	c.Stop(ctx)
}

func TestRegistryStartFirstResult(t *testing.T) {
	var r Registry[*inst]
	a := newInst("a")
	if err := r.Start(context.Background(), a, echo(a, errors.New("first failed"))); err == nil || err.Error() != "first failed" {
		t.Fatalf("Start = %v", err)
	}
	if _, err := r.Get("a"); err != nil {
		t.Fatalf("a failed first start leaves the add-on supervised: %v", err)
	}

	// A first result that takes longer than ctx: Start returns, the
	// add-on stays supervised and its goroutine runs on.
	b := newInst("b")
	release := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := r.Start(ctx, b, func(first chan<- error) {
		<-release
		echo(b, nil)(first)
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Start = %v", err)
	}
	close(release)
	if err := r.Update(context.Background(), Spec{AddonID: "b"}); err != nil {
		t.Fatalf("Update after a slow start = %v", err)
	}
	r.Stop(context.Background(), "a")
	r.Stop(context.Background(), "b")
}

func TestRegistryUpdate(t *testing.T) {
	ctx := context.Background()
	var r Registry[*inst]
	if err := r.Update(ctx, Spec{AddonID: "a"}); !errors.Is(err, ErrUnknownAddon) {
		t.Fatalf("Update of nothing = %v", err)
	}
	a := newInst("a")
	r.Start(ctx, a, echo(a, nil))
	if err := r.Update(ctx, Spec{AddonID: "a"}); err != nil {
		t.Fatalf("Update = %v", err)
	}
	if err := r.Update(ctx, Spec{AddonID: "a", Version: "refused"}); err == nil || err.Error() != "refused" {
		t.Fatalf("Update = %v, want the goroutine's answer", err)
	}

	// The goroutine ended (here: stopped by a request) but the add-on is
	// still registered: it is not supervised any more.
	if err := a.Send(ctx, nil); err == nil || err.Error() != "stopped by request" {
		t.Fatalf("Send(nil) = %v", err)
	}
	if err := r.Update(ctx, Spec{AddonID: "a"}); !errors.Is(err, ErrUnknownAddon) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Update of an ended goroutine = %v", err)
	}
}

func TestHandleSendContext(t *testing.T) {
	var r Registry[*inst]
	taken := make(chan Request)
	a := newInst("a")
	r.Start(context.Background(), a, func(first chan<- error) {
		first <- nil
		<-a.Stopping()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := a.Send(ctx, &Spec{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send nobody takes = %v", err)
	}
	r.Stop(context.Background(), "a")

	// Taken, never answered.
	b := newInst("b")
	r.Start(context.Background(), b, func(first chan<- error) {
		first <- nil
		taken <- <-b.Requests()
		<-b.Stopping()
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	go func() { <-taken }()
	if err := b.Send(ctx2, &Spec{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send nobody answers = %v", err)
	}
	r.Stop(context.Background(), "b")
}

func TestRegistryStopAndStatus(t *testing.T) {
	ctx := context.Background()
	var r Registry[*inst]
	if _, ok := r.Status("a"); ok {
		t.Fatal("Status of nothing")
	}
	if err := r.Stop(ctx, "a"); !errors.Is(err, ErrUnknownAddon) {
		t.Fatalf("Stop of nothing = %v", err)
	}
	a := newInst("a")
	r.Start(ctx, a, func(first chan<- error) {
		a.Emit(Event{State: StateRunning})
		echo(a, nil)(first)
	})
	if e, ok := r.Status("a"); !ok || e.State != StateRunning || e.AddonID != "a" {
		t.Fatalf("Status = %+v, %v", e, ok)
	}
	if err := r.Stop(ctx, "a"); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if a.Last().State != StateStopped {
		t.Fatalf("Stop returned before the goroutine ended: %+v", a.Last())
	}
	if _, ok := r.Status("a"); ok {
		t.Fatal("Status after Stop")
	}

	// A goroutine that takes longer to stop than ctx.
	b := newInst("b")
	release := make(chan struct{})
	r.Start(ctx, b, func(first chan<- error) {
		first <- nil
		<-b.Stopping()
		<-release
	})
	sctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := r.Stop(sctx, "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Stop = %v", err)
	}
	close(release)
}

func TestRegistryStopAll(t *testing.T) {
	ctx := context.Background()
	var r Registry[*inst]
	for _, id := range []string{"a", "b", "c"} {
		i := newInst(id)
		r.Start(ctx, i, echo(i, nil))
	}
	var (
		mu      sync.Mutex
		stopped []string
		running atomic.Int32
		all     = make(chan struct{})
	)
	err := r.StopAll(ctx, func(ctx context.Context, id string) error {
		// Every call runs at once: each waits for the others.
		if running.Add(1) == 3 {
			close(all)
		}
		<-all
		mu.Lock()
		stopped = append(stopped, id)
		mu.Unlock()
		if err := r.Stop(ctx, id); err != nil {
			return err
		}
		if id == "b" {
			return fmt.Errorf("%s would not stop", id)
		}
		return nil
	})
	if err == nil || err.Error() != "b would not stop" {
		t.Fatalf("StopAll = %v", err)
	}
	if len(stopped) != 3 {
		t.Fatalf("stopped %v", stopped)
	}
	if err := r.StopAll(ctx, func(context.Context, string) error { return errors.New("called") }); err != nil {
		t.Fatalf("StopAll of nothing = %v", err)
	}
}

func TestRegistryDetachAll(t *testing.T) {
	ctx := context.Background()
	var r Registry[*inst]
	a, b := newInst("a"), newInst("b")
	r.Start(ctx, a, echo(a, nil))
	r.Start(ctx, b, echo(b, nil))
	if err := r.DetachAll(ctx); err != nil {
		t.Fatalf("DetachAll = %v", err)
	}
	for _, i := range []*inst{a, b} {
		select {
		case <-i.done:
		default:
			t.Fatalf("%s: DetachAll returned before the goroutine ended", i.id)
		}
		if i.Last().State == StateStopped {
			t.Fatalf("%s was stopped, not detached", i.id)
		}
	}
	if _, err := r.Get("a"); !errors.Is(err, ErrUnknownAddon) {
		t.Fatalf("Get after DetachAll = %v", err)
	}

	// The registry is usable again.
	c := newInst("a")
	if err := r.Start(ctx, c, echo(c, nil)); err != nil {
		t.Fatalf("Start after DetachAll = %v", err)
	}
	release := make(chan struct{})
	d := newInst("d")
	r.Start(ctx, d, func(first chan<- error) {
		first <- nil
		<-d.Detaching()
		<-release
	})
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := r.DetachAll(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow DetachAll = %v", err)
	}
	close(release)
	select {
	case <-c.Detaching():
	default:
		t.Fatal("DetachAll gave up before detaching every add-on")
	}
}

func TestReporter(t *testing.T) {
	var logged, notified []Event
	r := NewReporter("a", func(e Event) { logged = append(logged, e) }, func(e Event) { notified = append(notified, e) })
	if (r.Last() != Event{}) {
		t.Fatalf("Last before any = %+v", r.Last())
	}
	before := time.Now()
	r.Emit(Event{AddonID: "other", Version: "1", State: StateStarting, Health: HealthUnknown})
	first := r.Last()
	if first.AddonID != "a" || first.State != StateStarting || first.Time.Before(before) {
		t.Fatalf("Last = %+v", first)
	}
	// The same again, whatever Time it carries: dropped.
	r.Emit(Event{Version: "1", State: StateStarting, Health: HealthUnknown})
	r.Emit(Event{Version: "1", State: StateStarting, Health: HealthUnknown, Time: time.Now().Add(time.Hour)})
	if got := r.Last(); got != first {
		t.Fatalf("an unchanged event replaced the last: %+v", got)
	}
	r.Emit(Event{Version: "1", State: StateRunning, Health: HealthHealthy, PID: 7})
	r.Emit(Event{Version: "1", State: StateRunning, Health: HealthHealthy, PID: 7})
	r.Emit(Event{Version: "1", State: StateRunning, Health: HealthHealthy, PID: 8})
	if len(notified) != 3 || len(logged) != 3 {
		t.Fatalf("notified %d, logged %d, want 3 each", len(notified), len(logged))
	}
	for k, e := range notified {
		if e != logged[k] || e.AddonID != "a" || e.Time.IsZero() {
			t.Fatalf("event %d: notified %+v, logged %+v", k, e, logged[k])
		}
	}
	if notified[0] != first || notified[2] != r.Last() || r.Last().PID != 8 {
		t.Fatalf("notified %+v, last %+v", notified, r.Last())
	}
}

func TestLogState(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	r := NewReporter("a", LogState(l.With("addon_id", "a")), func(Event) {})
	r.Emit(Event{Version: "1.2", State: StateDegraded, Health: HealthDegraded, Reason: "slow disk", PID: 42, Restarts: 3})
	want := `level=INFO msg="add-on state" addon_id=a version=1.2 state=degraded health=degraded reason="slow disk" pid=42 restarts=3` + "\n"
	if buf.String() != want {
		t.Fatalf("logged %q\nwant   %q", buf.String(), want)
	}
}
