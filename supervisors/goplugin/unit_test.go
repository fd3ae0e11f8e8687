package goplugin

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/vmtest/nspawn"
)

// Sidecars as transient units, against a real systemd: the tests below run
// inside a booted Debian as the lingering addond user, whose user manager
// runs the units.
func TestUnits(t *testing.T) {
	if !nspawn.InMachine() {
		bins := conformance.BuildExamples(t, "../..", "hello")
		nspawn.RunTest(t, nspawn.RunOptions{Files: []string{bins["hello"]}, Run: "^TestUnits$", Timeout: 5 * time.Minute})
		return
	}
	hello := filepath.Join(nspawn.BinDir, "hello")
	m := systemd.NewManager(systemd.UserTarget(), nil)
	defer m.Close()
	ctx := context.Background()

	// newRoot is a runtime root for one test: under /var/lib/addond, not
	// /tmp (units have a private /tmp). Every addond-* unit is stopped when
	// the test ends.
	newRoot := func(t *testing.T) string {
		root, err := os.MkdirTemp("/var/lib/addond", "root-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := systemd.StopOrphans(ctx, m, func(string) bool { return false }, nil); err != nil {
				t.Errorf("stop leftover units: %v", err)
			}
			os.RemoveAll(root)
		})
		return root
	}
	newBackend := func(t *testing.T, mgr *systemd.Manager, root string, notify supervisors.Notify, log *slog.Logger) *Backend {
		if log == nil {
			// Not t.Log: go-plugin's goroutines may log after the test.
			log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		log = log.With("test", t.Name())
		return New(Options{
			Log: log, Notify: notify,
			Units:          &UnitOptions{Manager: mgr, Paths: systemd.Paths{RuntimeRoot: root}, JobTimeout: 10 * time.Second},
			HealthInterval: 100 * time.Millisecond, HealthTimeout: 200 * time.Millisecond,
			StartTimeout: 2 * time.Second, ConfigureTimeout: 2 * time.Second,
			BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
			BreakerRestarts: 3, BreakerWindow: 10 * time.Second, BreakerCooldown: 500 * time.Millisecond,
			ExitPoll: 20 * time.Millisecond,
		})
	}
	readUnit := func(t *testing.T, unit string) systemd.UnitState {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		u, err := systemd.ReadUnit(ctx, conn, unit)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	spec := func(version, config string) supervisors.Spec {
		return supervisors.Spec{AddonID: "hello", Version: version, Binary: hello, ConfigJSON: []byte(config)}
	}
	// startHello starts hello 1.0.0 in root and waits for it healthy; it
	// is stopped and its backend closed when the test ends.
	startHello := func(t *testing.T, root string, rec *conformance.Recorder) (*Backend, supervisors.Event) {
		t.Helper()
		b := newBackend(t, m, root, rec.Notify, nil)
		t.Cleanup(func() { b.Close(ctx) })
		if err := b.Start(ctx, spec("1.0.0", `{}`)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Stop(ctx, "hello") })
		return b, rec.WaitFor(t, "hello", 20*time.Second, "healthy", healthyEvent)
	}

	t.Run("conformance", func(t *testing.T) {
		roots := map[string]string{} // one runtime root per test: a second backend finds the first one's reattach data
		conformance.Run(t, conformance.Harness{
			Hello: hello, AsksAddon: true, OutlivesAgent: true, Units: true,
			New: func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor {
				root, ok := roots[t.Name()]
				if !ok {
					root = newRoot(t)
					roots[t.Name()] = root
				}
				return newBackend(t, m, root, notify, nil)
			},
		})
	})

	// startAndClose starts hello as a unit with one backend and closes the
	// backend, as an exiting addond would; it returns the sidecar's pid.
	startAndClose := func(t *testing.T, root string, s supervisors.Spec) int {
		t.Helper()
		rec := conformance.NewRecorder()
		b := newBackend(t, m, root, rec.Notify, nil)
		if err := b.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFor(t, "hello", 20*time.Second, "healthy", healthyEvent)
		if u := readUnit(t, systemd.ServiceName(s.AddonID)); u.MainPID != e.PID || u.ActiveState != "active" {
			t.Fatalf("unit %+v, want active with main pid %d", u, e.PID)
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := b.Close(cctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if !alive(e.PID) {
			t.Fatalf("Close stopped the sidecar %d", e.PID)
		}
		if _, ok := b.Status(s.AddonID); ok {
			t.Fatal("a closed backend still supervises the add-on")
		}
		return e.PID
	}

	t.Run("reattach", func(t *testing.T) {
		root := newRoot(t)
		u := &UnitOptions{Paths: systemd.Paths{RuntimeRoot: root}}
		pid := startAndClose(t, root, spec("1.0.0", `{}`))
		unit := readUnit(t, "addond-hello.service")

		// The reattach data: 0600, ours, naming this run of the unit.
		fi, err := os.Lstat(u.ReattachFile("hello"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Getuid()) {
			t.Fatalf("reattach file mode %v uid %d, want -rw------- and uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, os.Getuid())
		}
		st, err := loadReattach(u.ReattachFile("hello"))
		if err != nil {
			t.Fatal(err)
		}
		if st.InvocationID != unit.InvocationID || st.PID != pid || st.Unit != "addond-hello.service" || st.ProtocolVersion != 1 ||
			!strings.HasPrefix(st.Addr, u.Dir()+"/plugin-dir") {
			t.Fatalf("reattach data %+v, unit %+v", st, unit)
		}

		// A socket directory an earlier addond made and never recorded.
		stray := filepath.Join(u.Dir(), "plugin-dir4242")
		os.Mkdir(stray, 0o700)

		// A restarted addond: a new manager connection, a new backend.
		m2 := systemd.NewManager(systemd.UserTarget(), nil)
		defer m2.Close()
		logs := &syncBuffer{}
		rec := conformance.NewRecorder()
		b := newBackend(t, m2, root, rec.Notify, slog.New(slog.NewTextHandler(teeWriter{logs, os.Stderr}, nil)))
		defer b.Close(ctx)
		if _, err := os.Stat(stray); err == nil {
			t.Fatal("a stray socket directory survived a new backend")
		}
		if _, err := os.Stat(filepath.Dir(st.Addr)); err != nil {
			t.Fatalf("the running sidecar's socket directory was removed: %v", err)
		}
		if err := b.Start(ctx, spec("1.0.0", `{}`)); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFor(t, "hello", 20*time.Second, "healthy", healthyEvent)
		if e.PID != pid || e.Restarts != 0 {
			t.Fatalf("after the restart: pid %d restarts %d, want the reattached pid %d", e.PID, e.Restarts, pid)
		}
		if !strings.Contains(logs.String(), "reattached") {
			t.Fatalf("no reattachment logged:\n%s", logs)
		}
		// Before the daemon's loop has published anything (as right after a
		// restart), the state lines name the unit themselves: the journal's
		// UNIT field comes from them.
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `msg="add-on state"`) && !strings.Contains(line, "unit=addond-hello.service") {
				t.Fatalf("a state line without its unit: %s", line)
			}
		}
		if u2 := readUnit(t, "addond-hello.service"); u2.InvocationID != unit.InvocationID {
			t.Fatal("the unit was restarted")
		}
		// Health checks go on being answered.
		time.Sleep(500 * time.Millisecond)
		if s, _ := b.Status("hello"); !healthyEvent(s) || s.PID != pid {
			t.Fatalf("status %+v after some health checks", s)
		}

		// A new configuration is applied in place.
		mark := rec.Mark()
		if err := b.Update(ctx, spec("1.0.0", `{"health":"degraded"}`)); err != nil {
			t.Fatal(err)
		}
		e = rec.WaitFrom(t, mark, "hello", 20*time.Second, "degraded", func(e supervisors.Event) bool { return e.State == supervisors.StateDegraded })
		if e.PID != pid || e.Restarts != 0 {
			t.Fatalf("configuration change restarted the sidecar: pid %d → %d, restarts %d", pid, e.PID, e.Restarts)
		}
		if cfg, err := os.ReadFile(systemd.Paths{RuntimeRoot: root}.ConfigFile("hello")); err != nil || !strings.Contains(string(cfg), "degraded") {
			t.Fatalf("$ADDOND_CONFIG not refreshed: %q, %v", cfg, err)
		}

		// Stop: the unit is gone, and so is the reattach data.
		if err := b.Stop(ctx, "hello"); err != nil {
			t.Fatal(err)
		}
		if u := readUnit(t, "addond-hello.service"); u.Up() {
			t.Fatalf("unit still %s after Stop", u.ActiveState)
		}
		if alive(pid) {
			t.Fatalf("sidecar %d alive after Stop", pid)
		}
		if _, err := os.Stat(u.ReattachFile("hello")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("reattach file after Stop: %v", err)
		}
		if _, err := os.Stat(filepath.Dir(st.Addr)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("socket directory after Stop: %v", err)
		}
	})

	// Stale reattach data is not used: the unit is replaced by a fresh one.
	stale := []struct {
		name   string
		spoil  func(t *testing.T, u *UnitOptions) (extraPID int)
		spec   supervisors.Spec
		reason string
	}{
		{"unit restarted", func(t *testing.T, u *UnitOptions) int {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			conn, err := m.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ch := make(chan string, 1)
			if _, err := conn.RestartUnitContext(ctx, "addond-hello.service", "replace", ch); err != nil {
				t.Fatal(err)
			}
			if err := systemd.WaitJob(ctx, "addond-hello.service", ch); err != nil {
				t.Fatal(err)
			}
			return readUnit(t, "addond-hello.service").MainPID
		}, spec("1.0.0", `{}`), "was restarted since"},
		{"other invocation", func(t *testing.T, u *UnitOptions) int {
			rewrite(t, u.ReattachFile("hello"), func(st *reattachState) { st.InvocationID = strings.Repeat("0", 32) })
			return 0
		}, spec("1.0.0", `{}`), "was restarted since"},
		{"new version", func(*testing.T, *UnitOptions) int { return 0 }, spec("1.0.1", `{}`), "the add-on changed"},
		{"other server certificate", func(t *testing.T, u *UnitOptions) int {
			// Both records name another certificate (with the same
			// subject): the sidecar's real one is refused by the pin.
			now := time.Now()
			other := base64.RawStdEncoding.EncodeToString(pluginCert(t, nil, now.Add(-30*time.Second), now.Add(time.Hour)).Certificate[0])
			rewrite(t, u.ReattachFile("hello"), func(st *reattachState) { st.ServerCert = other })
			hs, err := os.ReadFile(u.HandshakeFile("hello"))
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(strings.TrimSpace(string(hs)), "|")
			parts[5] = other
			if err := os.WriteFile(u.HandshakeFile("hello"), []byte(strings.Join(parts, "|")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return 0
		}, spec("1.0.0", `{}`), "not the one its handshake announced"},
		{"file not 0600", func(t *testing.T, u *UnitOptions) int {
			if err := os.Chmod(u.ReattachFile("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			return 0
		}, spec("1.0.0", `{}`), "not 0600"},
	}
	for _, c := range stale {
		t.Run("stale: "+c.name, func(t *testing.T) {
			root := newRoot(t)
			u := &UnitOptions{Paths: systemd.Paths{RuntimeRoot: root}}
			pid := startAndClose(t, root, spec("1.0.0", `{}`))
			other := c.spoil(t, u)
			logs := &syncBuffer{}
			rec := conformance.NewRecorder()
			b := newBackend(t, m, root, rec.Notify, slog.New(slog.NewTextHandler(teeWriter{logs, os.Stderr}, nil)))
			defer b.Close(ctx)
			if err := b.Start(ctx, c.spec); err != nil {
				t.Fatal(err)
			}
			e := rec.WaitFor(t, "hello", 20*time.Second, "healthy", healthyEvent)
			if e.PID == pid || e.PID == other {
				t.Fatalf("reattached to pid %d despite stale data", e.PID)
			}
			if !strings.Contains(logs.String(), c.reason) {
				t.Fatalf("no %q in the log:\n%s", c.reason, logs)
			}
			for _, old := range []int{pid, other} {
				if old != 0 && alive(old) {
					t.Fatalf("old sidecar %d still runs", old)
				}
			}
			st, err := loadReattach(u.ReattachFile("hello"))
			if err != nil || st.PID != e.PID {
				t.Fatalf("fresh reattach data %+v, %v: want pid %d", st, err, e.PID)
			}
			if err := b.Stop(ctx, "hello"); err != nil {
				t.Fatal(err)
			}
		})
	}

	// The sidecar crashes, its health checks fail at once (the
	// connection is gone) and its unit's end is seen only a second later
	// (D-Bus on a loaded machine): the cause is still its exit, not an
	// unhealthy add-on. (make test found it once, under load: three
	// failed checks 100 ms apart came before the exit.)
	t.Run("late exit", func(t *testing.T) {
		late := func(string) { time.Sleep(time.Second) }
		exitSeen.Store(&late)
		defer exitSeen.Store(nil)
		rec := conformance.NewRecorder()
		b, _ := startHello(t, newRoot(t), rec)
		m := rec.Mark()
		if err := b.Update(ctx, spec("1.0.0", `{"crash_after":"20ms","exit_code":4}`)); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFrom(t, m, "hello", 20*time.Second, "restarting after the crash", func(e supervisors.Event) bool { return e.State == supervisors.StateRestarting })
		if e.Cause != supervisors.CauseExited || !strings.Contains(e.Reason, "status 4") {
			t.Fatalf("restarting: cause %q (%s), want %q with the exit status", e.Cause, e.Reason, supervisors.CauseExited)
		}
		t.Logf("restarting: %s", e.Reason)
	})

	t.Run("unit environment and properties", func(t *testing.T) {
		// addond runs Type=notify with a watchdog: none of that may reach
		// a sidecar.
		t.Setenv("NOTIFY_SOCKET", "/run/addond-test/notify")
		t.Setenv("WATCHDOG_USEC", "30000000")
		t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
		root := newRoot(t)
		u := &UnitOptions{Paths: systemd.Paths{RuntimeRoot: root}}
		_, e := startHello(t, root, conformance.NewRecorder())

		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", e.PID))
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, kv := range strings.Split(string(raw), "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
			if v, ok := env[k]; ok {
				t.Errorf("%s=%s reached the sidecar", k, v)
			}
		}
		if !strings.HasPrefix(env["PLUGIN_UNIX_SOCKET_DIR"], u.Dir()+"/plugin-dir") || env["ADDOND_PLUGIN"] == "" ||
			!strings.Contains(env["PLUGIN_CLIENT_CERT"], "BEGIN CERTIFICATE") || env["ADDOND_ADDON_ID"] != "hello" {
			t.Errorf("sidecar environment lacks go-plugin's or addond's variables: %q", raw)
		}

		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := m.Conn(cctx)
		if err != nil {
			t.Fatal(err)
		}
		props, err := conn.GetUnitTypePropertiesContext(cctx, "addond-hello.service", "Service")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]any{"Type": "exec", "Restart": "no", "StandardError": "journal", "PrivateTmp": true, "PrivateUsers": true} {
			if props[k] != v {
				t.Errorf("%s = %v, want %v", k, props[k], v)
			}
		}
		if unitEnv, _ := props["Environment"].([]string); strings.Contains(strings.Join(unitEnv, "\n"), "NOTIFY_SOCKET") {
			t.Errorf("unit Environment has NOTIFY_SOCKET: %q", unitEnv)
		}
		parts, err := readHandshake(u.HandshakeFile("hello"))
		if err != nil {
			t.Fatal(err)
		}
		if parts[4] != "grpc" || !strings.HasPrefix(parts[3], u.Dir()+"/plugin-dir") {
			t.Errorf("handshake %q", parts)
		}
	})
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func healthyEvent(e supervisors.Event) bool {
	return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy && e.PID > 0
}

// rewrite changes a reattach file in place, keeping it valid (0600).
func rewrite(t *testing.T, path string, change func(*reattachState)) {
	t.Helper()
	st, err := loadReattach(path)
	if err != nil {
		t.Fatal(err)
	}
	change(st)
	if err := saveReattach(path, st); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); !json.Valid(data) {
		t.Fatalf("rewritten %s is not JSON", path)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type teeWriter struct{ a, b io.Writer }

func (w teeWriter) Write(p []byte) (int, error) {
	w.a.Write(p)
	return w.b.Write(p)
}
