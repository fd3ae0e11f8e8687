package service

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"

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
		bins := conformance.BuildExamples(t, "../..", "hello", "pingsweep")
		nspawn.RunTest(t, nspawn.RunOptions{
			Files: []string{bins["hello"], bins["pingsweep"]},
			Run:   "^TestInMachine$",
			// An uncapped copy first, then the file capability on the
			// original (as addond-updater would on its capped copy).
			Setup: "cp /test/bin/pingsweep /test/bin/pingsweep-nocap && setcap cap_net_raw+ep /test/bin/pingsweep || echo 'setup: setcap failed'",
		})
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
			Log:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
			RestartDelay: 50 * time.Millisecond, StartLimitBurst: 3, StartLimitInterval: 10 * time.Second, StableAfter: 200 * time.Millisecond,
			BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second,
		})
	}
	t.Run("conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Hello: hello, OutlivesAgent: true, Units: true,
			New: func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor { return newBackend(t, notify) },
		})
	})

	t.Run("a restart between ReadUnit's two reads does not mix invocations", func(t *testing.T) {
		b := newBackend(t, nil)
		ctx := context.Background()
		if err := b.Start(ctx, supervisors.Spec{AddonID: "mixed", Version: "1.0.0", Binary: hello}); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "mixed")
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		unit := "addond-mixed.service"
		before, err := systemd.ReadUnit(ctx, conn, unit)
		if err != nil || before.MainPID == 0 {
			t.Fatalf("before: %+v, %v", before, err)
		}
		// Only this test's read (the backend reads the unit too, from
		// its own goroutine): its context carries a mark.
		type mark struct{}
		restarted := ""
		systemd.BetweenReads = func(ctx context.Context, _ string) {
			if ctx.Value(mark{}) == nil || restarted != "" {
				return
			}
			// The unit's process ends and systemd starts it again
			// (Restart=always), as a crash would.
			syscall.Kill(before.MainPID, syscall.SIGKILL)
			deadline := time.Now().Add(10 * time.Second)
			for restarted == "" && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				p, err := conn.GetServicePropertyContext(ctx, unit, "MainPID")
				if n, _ := p.Value.Value().(uint32); err == nil && n != 0 && int(n) != before.MainPID {
					restarted = fmt.Sprint(n)
				}
			}
		}
		u, err := systemd.ReadUnit(context.WithValue(ctx, mark{}, true), conn, unit)
		systemd.BetweenReads = nil
		if err != nil {
			t.Fatal(err)
		}
		now, err := systemd.ReadUnit(ctx, conn, unit)
		if err != nil {
			t.Fatal(err)
		}
		// Without the check, the first read's invocation came with the
		// restarted process's PID.
		if restarted == "" || u.InvocationID != now.InvocationID || u.MainPID != now.MainPID || u.InvocationID == before.InvocationID {
			t.Fatalf("read across a restart (to pid %q): invocation %s pid %d; the unit now: invocation %s pid %d; before: invocation %s pid %d",
				restarted, u.InvocationID, u.MainPID, now.InvocationID, now.MainPID, before.InvocationID, before.MainPID)
		}
	})

	t.Run("healthy only once up for StableAfter, on the monotonic clock", func(t *testing.T) {
		root, err := os.MkdirTemp("/var/lib/addond", "root-")
		if err != nil {
			t.Fatal(err)
		}
		events := make(chan supervisors.Event, 64)
		b := New(systemd.Options{
			Manager: m, Paths: systemd.Paths{RuntimeRoot: root}, Notify: func(e supervisors.Event) { events <- e },
			RestartDelay: 50 * time.Millisecond, StartLimitBurst: 3, StartLimitInterval: 10 * time.Second, StableAfter: 2 * time.Second,
			BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second,
		})
		ctx := context.Background()
		start := time.Now()
		if err := b.Start(ctx, supervisors.Spec{AddonID: "stable", Version: "1.0.0", Binary: hello}); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "stable")
		settling := false
		for healthy := false; !healthy; {
			select {
			case e := <-events:
				if e.AddonID != "stable" {
					continue
				}
				if e.State == supervisors.StateRunning && e.Health == supervisors.HealthUnknown && strings.Contains(e.Reason, "healthy once up for 2s") {
					settling = true
				}
				healthy = e.Health == supervisors.HealthHealthy
			case <-time.After(15 * time.Second):
				t.Fatal("not healthy within 15s")
			}
		}
		took := time.Since(start)
		if !settling || took < 2*time.Second {
			t.Fatalf("healthy after %v (settling reported: %v), want only once up for 2s", took, settling)
		}
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		u, err := systemd.ReadUnit(ctx, conn, "addond-stable.service")
		if err != nil {
			t.Fatal(err)
		}
		if up := u.ActiveFor(); up < 2*time.Second || up > time.Since(start) {
			t.Fatalf("ActiveFor %v, %v after the start", up, time.Since(start))
		}
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

	// Isolation (DESIGN.md): a sandboxed add-on writes its state directory
	// and a private /tmp, and nothing else of the runtime root; the
	// agent's state is not there for it to read. The same probes run
	// unsandboxed (an add-on with capabilities) all succeed, so every
	// "denied" below is the sandbox's doing, not the probe's.
	t.Run("a unit already holding the name is replaced, others undisturbed", func(t *testing.T) {
		ctx := context.Background()
		conn, err := m.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Something (an older addond, an operator) left addond-coll.service
		// running something else; addond-*.service names are addond's.
		ch := make(chan string, 1)
		if _, err := conn.StartTransientUnitContext(ctx, "addond-coll.service", "fail", []sd.Property{
			systemd.ExecStart([]string{"/bin/sleep", "300"}), systemd.Prop("Description", "not addond's"),
		}, ch); err != nil {
			t.Fatal(err)
		}
		<-ch
		foreign, _ := systemd.ReadUnit(ctx, conn, "addond-coll.service")
		events := make(chan supervisors.Event, 64)
		b := newBackend(t, func(e supervisors.Event) { events <- e })
		if err := b.Start(ctx, supervisors.Spec{AddonID: "bystander", Version: "1.0.0", Binary: hello}); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "bystander")
		by := waitHealthy(t, events, "bystander")
		if err := b.Start(ctx, supervisors.Spec{AddonID: "coll", Version: "1.0.0", Binary: hello}); err != nil {
			t.Fatal(err)
		}
		defer b.Stop(ctx, "coll")
		e := waitHealthy(t, events, "coll")
		if e.PID == foreign.MainPID || syscall.Kill(foreign.MainPID, 0) == nil {
			t.Fatalf("the foreign unit's process %d still runs (add-on pid %d)", foreign.MainPID, e.PID)
		}
		if u, _ := systemd.ReadUnit(ctx, conn, "addond-coll.service"); !strings.HasPrefix(u.Description, "addond add-on coll 1.0.0 [") {
			t.Fatalf("unit description %q", u.Description)
		}
		if st, _ := b.Status("bystander"); st.PID != by.PID {
			t.Fatalf("the bystander was disturbed: %+v", st)
		}
	})

	t.Run("sandbox confines an add-on to its state directory", func(t *testing.T) {
		sandboxed, sbRoot := runProbes(t, newBackend, "sb", nil)
		open, openRoot := runProbes(t, newBackend, "sbopen", []string{"cap_net_raw"})
		want := map[string]string{
			"state_dir_write":    "ok",
			"private_tmp_write":  "ok",
			"config_read":        "ok",
			"root_write":         "denied",
			"other_addon_write":  "denied",
			"other_addon_read":   "denied",
			"agent_state_read":   "denied",
			"version_dir_write":  "denied",
			"config_write":       "denied",
			"user_manager":       "denied",
			"cgroup_mkdir":       "denied",
			"cgroup_procs_write": "denied",
			"user_namespace":     "denied",
		}
		for probe, w := range want {
			if sandboxed[probe] != w {
				t.Errorf("sandboxed %s: %q, want %q", probe, sandboxed[probe], w)
			}
			if open[probe] != "ok" {
				t.Errorf("unsandboxed %s: %q, want ok (the probe itself is broken)", probe, open[probe])
			}
		}
		if len(sandboxed) != len(want) || len(open) != len(want) {
			t.Errorf("results: sandboxed %v, unsandboxed %v; want the probes %v", sandboxed, open, want)
		}
		if evil := findNamed(t, sbRoot, "evil"); len(evil) > 0 {
			t.Errorf("the sandboxed add-on wrote %v", evil)
		}
		if _, err := os.Stat(filepath.Join(sbRoot, "addons/sb/data/ok")); err != nil {
			t.Errorf("the sandboxed add-on's write to its state directory is not there: %v", err)
		}
		// Its /tmp was its own: nothing landed in the machine's /tmp.
		if _, err := os.Stat("/tmp/addond-sb-tmp"); err == nil {
			t.Error("the sandboxed add-on's /tmp is the machine's /tmp")
		}
		if evil := findNamed(t, openRoot, "evil"); len(evil) != 3 {
			t.Errorf("unsandboxed, evil files %v, want 3 (root, other add-on, version dir)", evil)
		}
		if _, err := os.Stat("/tmp/addond-sbopen-tmp"); err != nil {
			t.Errorf("unsandboxed, the machine's /tmp: %v", err)
		}
		os.Remove("/tmp/addond-sbopen-tmp")
	})

	// A file capability on the binary reaches the unit's process (the user
	// manager starts it without NoNewPrivileges when the add-on has
	// capabilities): CapEff has CAP_NET_RAW, and the raw socket opens. The
	// same bytes without the file capability get none.
	t.Run("file capabilities reach the unit", func(t *testing.T) {
		capped := filepath.Join(nspawn.BinDir, "pingsweep")
		uncapped := filepath.Join(nspawn.BinDir, "pingsweep-nocap")
		buf := make([]byte, 64)
		if _, err := syscall.Getxattr(capped, "security.capability", buf); err != nil {
			t.Fatalf("%s carries no file capability (did RunOptions.Setup's setcap run?): %v", capped, err)
		}
		if _, err := syscall.Getxattr(uncapped, "security.capability", buf); err == nil {
			t.Fatalf("%s carries a file capability", uncapped)
		}
		const capNetRaw = 13
		for _, c := range []struct {
			id, binary string
			raw        bool
		}{{"capped", capped, true}, {"uncapped", uncapped, false}} {
			t.Run(c.id, func(t *testing.T) {
				rec := conformance.NewRecorder()
				b := newBackend(t, rec.Notify)
				ctx := context.Background()
				spec := supervisors.Spec{AddonID: c.id, Version: "1.0.0", Binary: c.binary,
					ConfigJSON:   []byte(`{"targets":["127.0.0.1"],"interval":"500ms"}`),
					Capabilities: []string{"cap_net_raw"}}
				if err := b.Start(ctx, spec); err != nil {
					t.Fatal(err)
				}
				defer b.Stop(ctx, c.id)
				e := rec.WaitFrom(t, 0, c.id, 20*time.Second, "healthy", isHealthy)
				status := procStatus(t, e.PID)
				capEff, err := strconv.ParseUint(status["CapEff"], 16, 64)
				if err != nil {
					t.Fatalf("CapEff %q: %v", status["CapEff"], err)
				}
				t.Logf("pid %d (%s): CapEff %s", e.PID, status["Name"], status["CapEff"])
				if status["Name"] == "" || !strings.HasPrefix(filepath.Base(c.binary), status["Name"]) {
					t.Fatalf("pid %d is %q, not %s", e.PID, status["Name"], c.binary)
				}
				if got := capEff&(1<<capNetRaw) != 0; got != c.raw {
					t.Fatalf("pid %d: CAP_NET_RAW in CapEff %#x = %v, want %v", e.PID, capEff, got, c.raw)
				}
				if c.raw {
					// The socket itself: a raw ICMP socket of our uid.
					deadline := time.Now().Add(5 * time.Second)
					for !rawICMPSocketOf(t, os.Getuid()) {
						if time.Now().After(deadline) {
							t.Fatal("no raw ICMP socket of the add-on's uid in /proc/net/raw")
						}
						time.Sleep(50 * time.Millisecond)
					}
					return
				}
				// Standalone, pingsweep does not exit when the socket does
				// not open (Configure succeeds, its Health says
				// unhealthy, which no one asks a service unit): the unit
				// stays up. That it holds no socket is the proof.
				time.Sleep(time.Second)
				if syscall.Kill(e.PID, 0) != nil {
					t.Fatalf("pid %d exited", e.PID)
				}
				if st, _ := b.Status(c.id); st.PID != e.PID || st.State != supervisors.StateRunning {
					t.Fatalf("status %+v, want running as pid %d", st, e.PID)
				}
				raw := rawSockets(t)
				fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", e.PID))
				if err != nil {
					t.Fatal(err)
				}
				for _, fd := range fds {
					link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", e.PID, fd.Name()))
					inode, ok := strings.CutPrefix(link, "socket:[")
					if _, isRaw := raw[strings.TrimSuffix(inode, "]")]; ok && isRaw {
						t.Fatalf("pid %d without the file capability holds a raw socket (fd %s, %s)", e.PID, fd.Name(), link)
					}
				}
			})
		}
	})

	// The manager re-executes (an upgrade of systemd, `daemon-reexec`):
	// add-on units keep running untouched, the backend's connection comes
	// back, and the backend still sees what happens to its units — both
	// when it talks through the user bus (dbus-daemon stays, systemd
	// leaves and rejoins it) and through systemd's private socket (the
	// connection itself dies).
	t.Run("a manager reached late adopts the running unit and reports it", func(t *testing.T) {
		// addond restarted while the manager is not reachable yet (its
		// socket appears later: here a symlink made after the start): the
		// unit that kept running is adopted, not restarted, and reported
		// running and healthy though nothing about it changes again.
		root, err := os.MkdirTemp("/var/lib/addond", "root-")
		if err != nil {
			t.Fatal(err)
		}
		opts := func(m *systemd.Manager, notify supervisors.Notify) systemd.Options {
			return systemd.Options{Manager: m, Paths: systemd.Paths{RuntimeRoot: root}, Notify: notify,
				Log:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
				RestartDelay: 50 * time.Millisecond, StartLimitBurst: 3, StartLimitInterval: 10 * time.Second, StableAfter: 200 * time.Millisecond,
				BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second}
		}
		ctx := context.Background()
		spec := supervisors.Spec{AddonID: "late", Version: "1.0.0", Binary: hello}
		rec := conformance.NewRecorder()
		b1 := New(opts(m, rec.Notify))
		if err := b1.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		first := rec.WaitFor(t, "late", 20*time.Second, "running and healthy", func(e supervisors.Event) bool {
			return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy
		})
		b1.Close(ctx) // the unit keeps running, as when addond stops

		bus := fmt.Sprintf("/run/user/%d/bus", os.Getuid())
		link := filepath.Join(t.TempDir(), "bus")
		if _, err := os.Stat(bus); err != nil {
			bus = fmt.Sprintf("/run/user/%d/systemd/private", os.Getuid())
			link = filepath.Join(t.TempDir(), "systemd", "private")
			os.MkdirAll(filepath.Dir(link), 0o755)
		}
		late := systemd.NewManager(systemd.Target{UID: os.Getuid(), Bus: "unix:path=" + link}, nil)
		defer late.Close()
		rec2 := conformance.NewRecorder()
		b2 := New(opts(late, rec2.Notify))
		defer b2.Stop(ctx, "late")
		if err := b2.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		rec2.WaitFor(t, "late", 10*time.Second, "waiting for the manager", func(e supervisors.Event) bool {
			return e.State == supervisors.StateStarting && strings.Contains(e.Reason, "waiting for the systemd manager")
		})
		if err := os.Symlink(bus, link); err != nil {
			t.Fatal(err)
		}
		e := rec2.WaitFor(t, "late", 30*time.Second, "running and healthy once the manager is reached", func(e supervisors.Event) bool {
			return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy
		})
		if e.PID != first.PID {
			t.Fatalf("the unit was restarted: pid %d, was %d", e.PID, first.PID)
		}
	})

	t.Run("manager reexec is survived", func(t *testing.T) {
		private := fmt.Sprintf("unix:path=/run/user/%d/systemd/private", os.Getuid())
		for _, c := range []struct {
			name, id string
			target   systemd.Target
			drops    bool // the backend's connection must go down
		}{
			{"user bus", "rx-bus", systemd.UserTarget(), false},
			{"private socket", "rx-private", systemd.Target{UID: os.Getuid(), Bus: private}, true},
		} {
			t.Run(c.name, func(t *testing.T) {
				log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
				mgr := systemd.NewManager(c.target, log)
				defer mgr.Close()
				root, err := os.MkdirTemp("/var/lib/addond", "root-")
				if err != nil {
					t.Fatal(err)
				}
				rec := conformance.NewRecorder()
				// A restart delay long enough that the auto-restart state
				// is seen, not raced past.
				b := New(systemd.Options{
					Manager: mgr, Paths: systemd.Paths{RuntimeRoot: root}, Notify: rec.Notify, Log: log,
					RestartDelay: time.Second, StartLimitBurst: 3, StartLimitInterval: 10 * time.Second, StableAfter: 200 * time.Millisecond,
					BreakerCooldown: 500 * time.Millisecond, JobTimeout: 10 * time.Second,
				})
				ctx := context.Background()
				if err := b.Start(ctx, supervisors.Spec{AddonID: c.id, Version: "1.0.0", Binary: hello, ConfigJSON: []byte(`{}`)}); err != nil {
					t.Fatal(err)
				}
				defer b.Stop(ctx, c.id)
				first := rec.WaitFrom(t, 0, c.id, 20*time.Second, "healthy", isHealthy)
				if !mgr.Connected() {
					t.Fatal("not connected before the reexec")
				}

				// Watch Connected() closely through the reexec.
				type sample struct {
					at time.Duration
					up bool
				}
				var (
					smu     sync.Mutex
					samples []sample
					stopped = make(chan struct{})
					done    = make(chan struct{})
				)
				t0 := time.Now()
				go func() {
					defer close(done)
					last := true
					for {
						select {
						case <-stopped:
							return
						case <-time.After(2 * time.Millisecond):
						}
						if up := mgr.Connected(); up != last {
							smu.Lock()
							samples = append(samples, sample{time.Since(t0), up})
							smu.Unlock()
							last = up
						}
					}
				}()
				mark := rec.Mark()
				back := reexecute(t)
				t.Logf("manager re-executed and answering again after %v", back)
				deadline := time.Now().Add(10 * time.Second)
				for !mgr.Connected() {
					if time.Now().After(deadline) {
						t.Fatal("the backend's manager did not reconnect within 10s of the reexec")
					}
					time.Sleep(5 * time.Millisecond)
				}
				// Let the backend re-read its unit after the reconnect.
				time.Sleep(time.Second)
				close(stopped)
				<-done
				smu.Lock()
				went := false
				for _, s := range samples {
					t.Logf("Connected() = %v at %v", s.up, s.at)
					went = went || !s.up
				}
				smu.Unlock()
				if c.drops && !went {
					t.Error("Connected() never went false: the reexec did not exercise the reconnect")
				}

				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				conn, err := mgr.Conn(cctx)
				if err != nil {
					t.Fatal(err)
				}
				u, err := systemd.ReadUnit(cctx, conn, systemd.ServiceName(c.id))
				if err != nil {
					t.Fatal(err)
				}
				if u.ActiveState != "active" || u.MainPID != first.PID || syscall.Kill(first.PID, 0) != nil {
					t.Fatalf("after the reexec the unit is %s with MainPID %d, want active with %d", u.ActiveState, u.MainPID, first.PID)
				}
				for _, e := range rec.Since(mark, c.id) {
					if e.State != supervisors.StateRunning || e.PID != first.PID {
						t.Errorf("the reexec alone produced the event %s pid=%d %q", e.State, e.PID, e.Reason)
					}
				}
				if st, _ := b.Status(c.id); st.State != supervisors.StateRunning || st.PID != first.PID {
					t.Errorf("status after the reexec %+v, want running as pid %d", st, first.PID)
				}

				// The subscription survived: a kill is noticed.
				mark = rec.Mark()
				if err := syscall.Kill(first.PID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				r := rec.WaitFrom(t, mark, c.id, 10*time.Second, "restarting after SIGKILL", func(e supervisors.Event) bool {
					return e.State == supervisors.StateRestarting
				})
				t.Logf("after SIGKILL: %s: %s", r.State, r.Reason)
				again := rec.WaitFrom(t, mark, c.id, 10*time.Second, "healthy with a new pid", func(e supervisors.Event) bool {
					return isHealthy(e) && e.PID != first.PID
				})
				t.Logf("pid %d → %d, restarts %d", first.PID, again.PID, again.Restarts)
				for _, e := range rec.Since(0, c.id) {
					if e.State == supervisors.StateFailed || e.State == supervisors.StateCircuitOpen {
						t.Errorf("event %s: %s", e.State, e.Reason)
					}
				}
			})
		}
	})
}

func waitHealthy(t *testing.T, events chan supervisors.Event, id string) supervisors.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-events:
			t.Logf("event: %s %s %s pid=%d %s", e.AddonID, e.State, e.Health, e.PID, e.Reason)
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

func isHealthy(e supervisors.Event) bool {
	return e.State == supervisors.StateRunning && e.Health == supervisors.HealthHealthy && e.PID > 0
}

// cgroupProbe runs cmd with {} the add-on's own cgroup path (the script
// may hold no "$": systemd expands it).
func cgroupProbe(cmd string) string {
	return "sed -n s/^0:://p /proc/self/cgroup | xargs -I{} sh -c '" + cmd + "'"
}

// runProbes runs /bin/sh as the add-on id (sandboxed unless caps) with a
// script that tries to write and read inside and outside what the
// sandbox allows, and returns each probe's outcome ("ok" or "denied") as
// the script recorded it in its state directory, and the runtime root.
func runProbes(t *testing.T, newBackend func(*testing.T, supervisors.Notify) *systemd.Backend, id string, caps []string) (map[string]string, string) {
	t.Helper()
	rec := conformance.NewRecorder()
	b := newBackend(t, rec.Notify)
	root := b.Opts.Paths.RuntimeRoot
	// What the agent keeps there: its own state, another add-on's files,
	// and this add-on's staged version.
	if err := os.WriteFile(filepath.Join(root, "state.json"), []byte(`{"secret":"agent"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "addons/other/data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "addons/other/data/secret"), []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	versionDir := filepath.Join(root, "addons", id, "versions/1.0.0")
	if err := os.MkdirAll(versionDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(versionDir, "sh")
	if err := os.WriteFile(binary, sh, 0o755); err != nil {
		t.Fatal(err)
	}
	paths := systemd.Paths{RuntimeRoot: root}
	data, cfg := paths.StateDir(id), paths.ConfigFile(id)
	probes := []struct{ name, cmd string }{
		{"state_dir_write", "touch " + data + "/ok"},
		{"private_tmp_write", "touch /tmp/addond-" + id + "-tmp"},
		{"config_read", "cat " + cfg},
		{"root_write", "touch " + root + "/evil"},
		{"other_addon_write", "touch " + root + "/addons/other/evil"},
		{"other_addon_read", "cat " + root + "/addons/other/data/secret"},
		{"agent_state_read", "cat " + root + "/state.json"},
		{"version_dir_write", "touch " + versionDir + "/evil"},
		{"config_write", "touch " + cfg},
		// The user manager itself: reaching it would let an add-on start
		// an unsandboxed unit as addond.
		{"user_manager", "systemctl --user show -p Version"},
		// The unit's cgroup (delegated to addond's uid, like the whole
		// user manager's tree): a sub-cgroup to escape its limits into,
		// or a move of itself (into another add-on's unit it would pass
		// for that add-on).
		{"cgroup_mkdir", cgroupProbe("mkdir /sys/fs/cgroup{}/evil-cg || mkdir /sys/fs/cgroup/unified{}/evil-cg")},
		{"cgroup_procs_write", cgroupProbe("echo 0 > /sys/fs/cgroup{}/cgroup.procs || echo 0 > /sys/fs/cgroup/unified{}/cgroup.procs")},
		{"user_namespace", "unshare -U true"},
	}
	// No "$" in the script: systemd expands ${…} and $$ in ExecStart.
	var script strings.Builder
	script.WriteString("{\n")
	for _, p := range probes {
		fmt.Fprintf(&script, "if %s >/dev/null 2>&1; then echo %s=ok; else echo %s=denied; fi\n", p.cmd, p.name, p.name)
	}
	fmt.Fprintf(&script, "} >%[1]s/results.tmp\nmv %[1]s/results.tmp %[1]s/results\nexec sleep infinity\n", data)

	ctx := context.Background()
	spec := supervisors.Spec{AddonID: id, Version: "1.0.0", Binary: binary, Args: []string{"-c", script.String()},
		ConfigJSON: []byte(`{"probe":true}`), Capabilities: caps}
	if err := b.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(ctx, id)
	rec.WaitFrom(t, 0, id, 20*time.Second, "healthy", isHealthy)
	results := filepath.Join(data, "results")
	deadline := time.Now().Add(10 * time.Second)
	var out []byte
	for {
		if out, err = os.ReadFile(results); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no results: %v", id, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := map[string]string{}
	for line := range strings.Lines(string(out)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			got[k] = v
		}
	}
	t.Logf("%s (capabilities %v): %v", id, caps, got)
	return got, root
}

// findNamed lists the files named name under dir.
func findNamed(t *testing.T, dir, name string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == name {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// procStatus reads /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// rawICMPSocketOf reports whether a raw ICMP socket owned by uid is open
// in this network namespace.
func rawICMPSocketOf(t *testing.T, uid int) bool {
	t.Helper()
	for _, owner := range rawSockets(t) {
		if owner == strconv.Itoa(uid) {
			return true
		}
	}
	return false
}

// rawSockets maps the inodes of this network namespace's raw ICMP sockets
// to their owners' uids, from /proc/net/raw.
func rawSockets(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/net/raw")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
		if len(f) > 9 && strings.HasSuffix(f[1], ":0001") {
			out[f[9]] = f[7]
		}
	}
	return out
}

// reexecute makes the addond user's manager re-execute itself — the fault
// injector: `systemctl --user daemon-reexec`, which returns once the old
// manager has gone (its private connection is closed) — and returns once
// a fresh connection gets an answer from the new manager, with how long
// that took.
func reexecute(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "systemctl", "--user", "daemon-reexec").CombinedOutput(); err != nil {
		t.Fatalf("systemctl --user daemon-reexec: %v\n%s", err, out)
	}
	t.Logf("systemctl --user daemon-reexec returned after %v", time.Since(start))
	for {
		if ctx.Err() != nil {
			t.Fatal("the manager did not answer within 20s of the reexec")
		}
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		conn, _, err := systemd.Dial(actx, systemd.UserTarget())
		if err == nil {
			_, err = conn.GetManagerProperty("Version")
			conn.Close()
		}
		acancel()
		if err == nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSystemManagerInMachine: with systemd.manager "system" (addond as
// root) the same backend runs add-ons as units of the system manager, as
// the addon user, sandboxed the same way.
func TestSystemManagerInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		bins := conformance.BuildExamples(t, "../..", "hello")
		nspawn.RunTest(t, nspawn.RunOptions{Files: []string{bins["hello"]}, AsRoot: true})
		return
	}
	m := systemd.NewManager(systemd.Target{System: true, User: "addond"}, nil)
	defer m.Close()
	root, err := os.MkdirTemp("/var/lib", "addond-root-")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan supervisors.Event, 64)
	paths := systemd.Paths{RuntimeRoot: root, Owner: &systemd.Owner{UID: nspawn.AddonUID, GID: nspawn.AddonUID}}
	b := New(systemd.Options{Manager: m, Paths: paths, Notify: func(e supervisors.Event) { events <- e },
		StableAfter: 200 * time.Millisecond})
	ctx := context.Background()
	spec := supervisors.Spec{AddonID: "sys", Version: "1.0.0", Binary: filepath.Join(nspawn.BinDir, "hello")}
	if err := b.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	e := waitHealthy(t, events, "sys")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.PID))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t%d", nspawn.AddonUID, nspawn.AddonUID)) {
		t.Fatalf("the add-on does not run as the addon user:\n%s", status)
	}
	conn, _ := m.Conn(ctx)
	if u, _ := systemd.ReadUnit(ctx, conn, "addond-sys.service"); !u.Up() || u.MainPID != e.PID {
		t.Fatalf("not a unit of the system manager: %+v", u)
	}
	for _, p := range []string{paths.StateDir("sys"), paths.ConfigFile("sys")} {
		if fi, err := os.Stat(p); err != nil || fi.Sys().(*syscall.Stat_t).Uid != nspawn.AddonUID {
			t.Errorf("%s is not the addon user's: %v", p, err)
		}
	}
	if err := b.Stop(ctx, "sys"); err != nil {
		t.Fatal(err)
	}
}
