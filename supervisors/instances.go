package supervisors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// This file is the bookkeeping shared by every backend that runs each
// add-on as a goroutine of its own, whatever that goroutine does: the
// add-ons it supervises (Registry), how it drives one add-on's goroutine
// (Handle) and the add-on's latest event (Reporter). The goroutine's loop
// is the backend's own.

// Instance is a backend's own type for one supervised add-on: any type that
// embeds a *Handle.
type Instance interface {
	handle() *Handle
}

// Registry is the add-ons a backend supervises, by add-on ID. Its zero
// value is empty and ready to use; it is safe for concurrent use.
type Registry[T Instance] struct {
	mu sync.Mutex
	m  map[string]T
}

// Start registers inst, unless its add-on is already supervised, then runs
// run as its goroutine and waits, within ctx, for the first result run
// sends on first (the first start's outcome). The goroutine ends when run
// returns; the add-on stays registered until Stop, Take or Remove.
func (r *Registry[T]) Start(ctx context.Context, inst T, run func(first chan<- error)) error {
	h := inst.handle()
	if err := r.add(h.id, inst); err != nil {
		return err
	}
	first := make(chan error, 1)
	go func() {
		defer close(h.done)
		run(first)
	}()
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Registry[T]) add(id string, inst T) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[id]; ok {
		return fmt.Errorf("addon %q is already supervised", id)
	}
	if r.m == nil {
		r.m = map[string]T{}
	}
	r.m[id] = inst
	return nil
}

// Get returns add-on id, or an error wrapping ErrUnknownAddon.
func (r *Registry[T]) Get(id string) (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.get(id)
}

// Take is Get, and forgets the add-on.
func (r *Registry[T]) Take(id string) (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst, err := r.get(id)
	if err == nil {
		delete(r.m, id)
	}
	return inst, err
}

func (r *Registry[T]) get(id string) (T, error) {
	inst, ok := r.m[id]
	if !ok {
		return inst, fmt.Errorf("addon %q: %w", id, ErrUnknownAddon)
	}
	return inst, nil
}

// Remove forgets add-on id, if it is there.
func (r *Registry[T]) Remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, id)
}

// Update sends spec to its add-on's goroutine (Handle.Send).
func (r *Registry[T]) Update(ctx context.Context, spec Spec) error {
	inst, err := r.Get(spec.AddonID)
	if err != nil {
		return err
	}
	return inst.handle().Send(ctx, &spec)
}

// Stop forgets add-on id and stops its goroutine (Handle.Stop).
func (r *Registry[T]) Stop(ctx context.Context, id string) error {
	inst, err := r.Take(id)
	if err != nil {
		return err
	}
	return inst.handle().Stop(ctx)
}

// Status is add-on id's latest event.
func (r *Registry[T]) Status(id string) (Event, bool) {
	inst, err := r.Get(id)
	if err != nil {
		return Event{}, false
	}
	return inst.handle().Last(), true
}

// StopAll calls stop for every add-on registered now, all at once, and
// waits for every call; it returns their errors joined.
func (r *Registry[T]) StopAll(ctx context.Context, stop func(ctx context.Context, id string) error) error {
	r.mu.Lock()
	ids := slices.Collect(maps.Keys(r.m))
	r.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Go(func() { errs[i] = stop(ctx, id) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DetachAll forgets every add-on and detaches them all at once (they
// outlive the backend), then waits, within ctx, for each one's goroutine
// to end.
func (r *Registry[T]) DetachAll(ctx context.Context) error {
	r.mu.Lock()
	all := r.m
	r.m = nil
	r.mu.Unlock()
	for _, inst := range all {
		close(inst.handle().detach)
	}
	for _, inst := range all {
		if err := inst.handle().wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Handle is how a backend drives one add-on's goroutine (the one
// Registry.Start runs), and what that goroutine listens to: requests
// (Send), a stop (Stop) and a detach (Registry.DetachAll) — each backend
// uses the ones its model has. Its Reporter keeps the add-on's latest
// event.
type Handle struct {
	*Reporter
	id       string
	requests chan Request
	stop     chan struct{}
	detach   chan struct{}
	done     chan struct{}
}

func (h *Handle) handle() *Handle { return h }

// NewHandle returns the Handle of add-on id; its events are reported as
// NewReporter says.
func NewHandle(id string, log func(Event), notify Notify) *Handle {
	return &Handle{
		Reporter: NewReporter(id, log, notify),
		id:       id,
		requests: make(chan Request),
		stop:     make(chan struct{}),
		detach:   make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// Request asks an add-on's goroutine to move to Spec or, with Spec nil,
// to stop (for a backend whose stop has an outcome to answer with). The
// goroutine answers it with Reply, once.
type Request struct {
	Spec  *Spec
	reply chan error
}

// Reply answers the request; it never blocks.
func (r Request) Reply(err error) { r.reply <- err }

// Send hands the goroutine a Request for spec and waits for its answer.
// A goroutine that ended before taking it no longer supervises the add-on
// (ErrUnknownAddon). ctx bounds both waits.
func (h *Handle) Send(ctx context.Context, spec *Spec) error {
	r := Request{Spec: spec, reply: make(chan error, 1)}
	select {
	case h.requests <- r:
	case <-h.done:
		return fmt.Errorf("addon %q: %w", h.id, ErrUnknownAddon)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop tells the goroutine to stop (Stopping) and waits, within ctx, for it
// to end. It is called at most once: by whoever took the add-on out of its
// Registry.
func (h *Handle) Stop(ctx context.Context) error {
	close(h.stop)
	return h.wait(ctx)
}

func (h *Handle) wait(ctx context.Context) error {
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Requests delivers what Send sends, to the goroutine.
func (h *Handle) Requests() <-chan Request { return h.requests }

// Stopping is closed by Stop.
func (h *Handle) Stopping() <-chan struct{} { return h.stop }

// Detaching is closed by Registry.DetachAll: the add-on outlives its
// backend, and the goroutine lets go of it and returns.
func (h *Handle) Detaching() <-chan struct{} { return h.detach }

// Reporter keeps an add-on's latest Event and reports every change of it,
// once: an event equal to the latest (but for its Time) is dropped. It is
// safe for concurrent use; events are reported in the order Emit is
// called, which should be from one goroutine.
type Reporter struct {
	id     string
	log    func(Event)
	notify Notify

	mu   sync.Mutex
	last Event
}

// NewReporter returns the Reporter of add-on id: every change is logged
// with log (LogState, or the backend's own line) and passed to notify.
func NewReporter(id string, log func(Event), notify Notify) *Reporter {
	return &Reporter{id: id, log: log, notify: notify}
}

// LogState logs an event as the line "add-on state" with its version,
// state, health, reason, pid and restarts.
func LogState(l *slog.Logger) func(Event) {
	return func(e Event) {
		l.Info("add-on state", "version", e.Version, "state", e.State, "health", e.Health, "reason", e.Reason, "pid", e.PID, "restarts", e.Restarts)
	}
}

// Emit records e, for the add-on and stamped with the time, and reports it
// when anything in it changed.
func (r *Reporter) Emit(e Event) {
	e.AddonID = r.id
	r.mu.Lock()
	prev := r.last
	e.Time = prev.Time
	changed := e != prev
	if changed {
		e.Time = time.Now()
		r.last = e
	}
	r.mu.Unlock()
	if changed {
		r.log(e)
		r.notify(e)
	}
}

// Last is the latest event; the zero Event before the first.
func (r *Reporter) Last() Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}
