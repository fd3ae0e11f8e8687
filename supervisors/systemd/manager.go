// Package systemd is what the unit-based backends share: a connection to
// the systemd manager add-ons run in (addond's own user manager, or the
// system manager), dialled explicitly and re-dialled with backoff when the
// bus goes away; a subscription that turns the manager's PropertiesChanged
// signals into per-unit wake-ups; and the unit properties every add-on
// unit gets (identity, configuration file, resources, sandbox).
//
// Everything goes over D-Bus with github.com/coreos/go-systemd/v22/dbus;
// nothing runs systemctl or systemd-run.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Target says which manager add-on units run in.
type Target struct {
	// System selects the system manager (addond runs as root); units
	// then run as User. Otherwise the user manager of UID.
	System bool
	UID    int
	User   string
	// Bus overrides the address to dial (tests); empty: derived from
	// UID (/run/user/<uid>/bus, then systemd's private socket) or the
	// system bus.
	Bus string
}

// UserTarget is the user manager of the calling process's uid.
func UserTarget() Target { return Target{UID: os.Getuid()} }

func (t Target) String() string {
	if t.System {
		return "system manager"
	}
	return fmt.Sprintf("user manager of uid %d", t.UID)
}

// addresses are the buses to try, in order, each with whether it is a
// real bus (needs Hello) or systemd's private socket (must not).
func (t Target) addresses() []struct {
	addr  string
	hello bool
} {
	type a = struct {
		addr  string
		hello bool
	}
	if t.Bus != "" {
		return []a{{t.Bus, !strings.Contains(t.Bus, "/systemd/private")}}
	}
	if t.System {
		return []a{{"unix:path=/run/dbus/system_bus_socket", true}, {"unix:path=/run/systemd/private", false}}
	}
	run := filepath.Join("/run/user", strconv.Itoa(t.UID))
	return []a{
		{"unix:path=" + filepath.Join(run, "bus"), true},
		{"unix:path=" + filepath.Join(run, "systemd/private"), false},
	}
}

// DialTimeout bounds one attempt to reach the manager.
const DialTimeout = 5 * time.Second

// Dial connects to t's manager: never through an auto-launched bus, never
// through $DBUS_SESSION_BUS_ADDRESS (a system service has none). It returns
// the go-systemd connection and the raw connection its method calls go
// over (the one that owns references taken with AddRef).
func Dial(ctx context.Context, t Target) (*sd.Conn, *godbus.Conn, error) {
	var errs []error
	for _, a := range t.addresses() {
		// godbus closes a connection when its context ends: the context
		// lives as long as the connection, and only a dial that takes too
		// long (or ctx) cancels it.
		life, cancel := context.WithCancel(context.Background())
		stop := context.AfterFunc(ctx, cancel)
		timer := time.AfterFunc(DialTimeout, cancel)
		var first *godbus.Conn
		conn, err := sd.NewConnection(func() (*godbus.Conn, error) {
			c, err := dialOne(life, a.addr, a.hello)
			if err == nil && first == nil {
				first = c // go-systemd dials its method connection first
			}
			return c, err
		})
		timer.Stop()
		stop()
		if err == nil {
			return conn, first, nil
		}
		cancel()
		errs = append(errs, fmt.Errorf("%s: %w", a.addr, err))
	}
	return nil, nil, fmt.Errorf("%s unreachable: %w", t, errors.Join(errs...))
}

func dialOne(ctx context.Context, addr string, hello bool) (*godbus.Conn, error) {
	c, err := godbus.Dial(addr, godbus.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		c.Close()
		return nil, err
	}
	if hello {
		if err := c.Hello(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// ErrNoManager is returned while the manager cannot be reached; callers
// report it and retry, and never count it against an add-on's version.
var ErrNoManager = errors.New("systemd manager not reachable")

// Manager is a long-lived connection to the manager: it dials in the
// background, re-dials with backoff when the bus goes away (a
// `systemctl daemon-reexec`, a restarted user manager), and tells
// watchers about every property change of their units and about every
// reconnect (after which they must re-read their units' state).
type Manager struct {
	target Target
	log    *slog.Logger

	mu       sync.Mutex
	conn     *sd.Conn
	raw      *godbus.Conn
	lastErr  error
	watchers map[string]map[*Watch]struct{} // by unit name
	ready    chan struct{}                  // closed while connected; replaced on loss

	stop chan struct{}
	done chan struct{}
}

// Watch receives wake-ups for a set of units: a value on C means "their
// properties changed, or the connection was re-established: read them".
type Watch struct {
	m     *Manager
	units []string
	C     chan struct{}
}

// Close stops the watch.
func (w *Watch) Close() {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	for _, unit := range w.units {
		if set := w.m.watchers[unit]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(w.m.watchers, unit)
			}
		}
	}
}

func (w *Watch) poke() {
	select {
	case w.C <- struct{}{}:
	default:
	}
}

// NewManager starts connecting to t in the background; it never blocks
// (addond reaches READY before the user manager is up at boot).
func NewManager(t Target, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		target: t, log: log.With("manager", t.String()),
		watchers: map[string]map[*Watch]struct{}{},
		ready:    make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		lastErr:  ErrNoManager,
	}
	go m.loop()
	return m
}

// Target is the manager this connects to.
func (m *Manager) Target() Target { return m.target }

// Watch returns a watch on units; it is poked once at once.
func (m *Manager) Watch(units ...string) *Watch {
	w := &Watch{m: m, units: units, C: make(chan struct{}, 1)}
	m.mu.Lock()
	for _, unit := range units {
		if m.watchers[unit] == nil {
			m.watchers[unit] = map[*Watch]struct{}{}
		}
		m.watchers[unit][w] = struct{}{}
	}
	m.mu.Unlock()
	w.poke()
	return w
}

// Conn returns the current connection, waiting up to ctx for one.
func (m *Manager) Conn(ctx context.Context) (*sd.Conn, error) {
	c, _, err := m.conns(ctx)
	return c, err
}

// Raw returns the raw method connection (for calls go-systemd lacks, on
// the same connection as the go-systemd calls).
func (m *Manager) Raw(ctx context.Context) (*sd.Conn, *godbus.Conn, error) {
	return m.conns(ctx)
}

func (m *Manager) conns(ctx context.Context) (*sd.Conn, *godbus.Conn, error) {
	m.mu.Lock()
	ready := m.ready
	m.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		m.mu.Lock()
		err := m.lastErr
		m.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: %v", ErrNoManager, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNoManager, m.lastErr)
	}
	return m.conn, m.raw, nil
}

// Connected reports whether the manager is reachable now.
func (m *Manager) Connected() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn != nil && m.conn.Connected()
}

// Close drops the connection. Units keep running.
func (m *Manager) Close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

// loop keeps one live, subscribed connection.
func (m *Manager) loop() {
	defer close(m.done)
	backoff := 100 * time.Millisecond
	for {
		conn, raw, updates, err := m.connect()
		if err != nil {
			m.mu.Lock()
			m.lastErr = err
			m.mu.Unlock()
			m.log.Debug("manager not reachable", "error", err, "retry_in", backoff)
			select {
			case <-m.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		m.mu.Lock()
		m.conn, m.raw, m.lastErr = conn, raw, nil
		close(m.ready)
		all := m.allWatches()
		m.mu.Unlock()
		m.log.Info("connected to the systemd manager")
		for _, w := range all {
			w.poke() // re-read: anything may have happened while away
		}

		lost := m.serve(conn, updates)
		m.mu.Lock()
		m.conn, m.raw = nil, nil
		m.ready = make(chan struct{})
		m.lastErr = errors.New("connection lost")
		m.mu.Unlock()
		conn.Close()
		if !lost {
			return
		}
		m.log.Warn("lost the systemd manager's bus; reconnecting")
	}
}

func (m *Manager) connect() (*sd.Conn, *godbus.Conn, chan *sd.PropertiesUpdate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
	defer cancel()
	conn, raw, err := Dial(ctx, m.target)
	if err != nil {
		return nil, nil, nil, err
	}
	updates := make(chan *sd.PropertiesUpdate, 256)
	conn.SetPropertiesSubscriber(updates, make(chan error, 1))
	if err := conn.Subscribe(); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("subscribe: %w", err)
	}
	return conn, raw, updates, nil
}

// serve dispatches updates until the connection dies (true) or Close.
func (m *Manager) serve(conn *sd.Conn, updates chan *sd.PropertiesUpdate) bool {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	overflow := time.NewTicker(2 * time.Second)
	defer overflow.Stop()
	for {
		select {
		case <-m.stop:
			return false
		case u := <-updates:
			if !strings.HasPrefix(u.UnitName, UnitPrefix) {
				continue
			}
			m.mu.Lock()
			for w := range m.watchers[u.UnitName] {
				w.poke()
			}
			m.mu.Unlock()
		case <-overflow.C:
			// go-systemd drops updates when the channel is full; a
			// periodic re-read bounds how long a dropped one can hide.
			if len(updates) > cap(updates)/2 {
				for _, w := range m.allWatchesLocked() {
					w.poke()
				}
			}
		case <-tick.C:
			if !conn.Connected() {
				return true
			}
		}
	}
}

func (m *Manager) allWatchesLocked() []*Watch {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.allWatches()
}

func (m *Manager) allWatches() []*Watch {
	var all []*Watch
	for _, set := range m.watchers {
		for w := range set {
			all = append(all, w)
		}
	}
	return all
}

// Unref drops the reference a unit started with AddRef holds, on the
// connection that took it.
func (m *Manager) Unref(ctx context.Context, raw *godbus.Conn, unit string) error {
	obj := raw.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
	return obj.CallWithContext(ctx, "org.freedesktop.systemd1.Manager.UnrefUnit", 0, unit).Store()
}
