package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The fault suite's "clock jump" case (issue 7): the guest's wall clock
// is set forward and then backward under a running addond. Nothing addond
// measures may depend on the wall clock: probation deadlines, the poll
// interval, restart backoff and the systemd watchdog run on the monotonic
// clock, and systemd's calendar timers follow the new wall time.
//
// Probation (DESIGN.md, docs/operator-guide.md) is a deadline: a new
// version is promoted as soon as it reports Healthy, and rolled back if it
// has not by the end of the probation. So the clock is jumped while a new
// version of hello is on probation and Degraded (neither promoted nor
// rolled back): a forward jump past the deadline must neither promote nor
// roll it back early; a backward jump must not postpone its rollback.

// clockProbation is the probation of the backward jump's version, which
// the test waits out: long enough that the jump lands well inside it on a
// loaded machine (the forward jump once landed 51 s into a 60 s one).
const clockProbation = 90 * time.Second

// forwardProbation is the probation of the forward jump's version, which
// is promoted by a healthy configuration, not waited out: long enough that
// the jump lands inside it however slowly a loaded guest lets the test see
// the activation (51 s after it once, on a CI machine whose TCG boot took
// 8m49s, when the probation was 60 s; 16-21 s on ours).
const forwardProbation = 5 * time.Minute

func TestClockJump(t *testing.T) {
	if !InVM() {
		boot(t, scenario{timeout: 25 * time.Minute})
		return
	}
	testStart := monoNow(t)
	install(t, debPath)
	p := newPublisher(t, fileStore)
	// The probation first, before anything is assigned: configure's 10 s
	// is too short for a first start of a sidecar under TCG.
	configure(t, fileStore)
	setConfig(t, map[string]any{"probation": forwardProbation.String()})
	publishExamples(t, p)
	// svc: hello again, as a systemd_service (its health is its unit's
	// state, up for a while).
	p.publish(t, "svc", "1.0.0", "systemd_service", BinDir+"/hello")
	for _, v := range []string{"1.1.0", "1.2.0", "1.3.0"} {
		p.publish(t, "hello", v, "agent_sidecar", BinDir+"/hello") // the same binary
	}
	for name, health := range map[string]string{"degraded": "degraded", "healthy": "healthy"} {
		if err := os.WriteFile("/root/"+name+".json", []byte(`{"health": "`+health+`"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	assignExamples(t, p, "1.0.0", "/root/healthy.json")
	waitExamples(t, 3*time.Minute)
	waitAddon(t, "svc", time.Minute, "running", runningHealthy("1.0.0"))
	ticks := waitTicks(t, 0, 30*time.Second, "ticker ticked before the jumps")

	agentPID := mainPID(t, "addond")
	agentRestarts := unitProp(t, "addond", "NRestarts")
	pingPID := addonUnitProp(t, "addond-pingsweep.service", "MainPID")
	svcPID := addonUnitProp(t, "addond-svc.service", "MainPID")
	timerActive := addonUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic")
	pingStatusPID := statusPID(t, "pingsweep")
	t.Logf("before the jumps: addond MainPID %s NRestarts %s; svc MainPID %s; pingsweep MainPID %s (status pid %d); hello MainPID %s (status pid %d); ticker timer active since monotonic %s µs; %d ticks",
		agentPID, agentRestarts, svcPID, pingPID, pingStatusPID, addonUnitProp(t, "addond-hello.service", "MainPID"), statusPID(t, "hello"), timerActive, ticks)
	if agentRestarts != "0" {
		// addond restarted on its own before anything was jumped: seen
		// once, in a make test run on a host loaded well past its two
		// cores (the TCG guest ran at a third of its speed); logged with
		// its cause for the next one to see. What the jumps must not do
		// is checked below (kept: same PID, same NRestarts).
		out, _ := try("journalctl --no-pager -o short-monotonic -u addond | grep -B 30 -A 3 -m 1 -E 'Main process exited|[Ww]atchdog|panic|fatal error'")
		t.Logf("NOTE: addond restarted %s time(s) before the jumps:\n%s", agentRestarts, out)
	}
	if fmt.Sprint(pingStatusPID) != pingPID {
		t.Errorf("pingsweep: status pid %d, unit MainPID %s", pingStatusPID, pingPID)
	}
	// kept checks what must survive every jump untouched: addond's
	// process (no watchdog kill, no restart), and the add-ons not being
	// updated.
	kept := func(when string) {
		t.Helper()
		if got := unitProp(t, "addond", "MainPID"); got != agentPID {
			t.Errorf("%s: addond's MainPID went from %s to %s (killed by the watchdog?)", when, agentPID, got)
		}
		if got := unitProp(t, "addond", "NRestarts"); got != agentRestarts {
			t.Errorf("%s: addond NRestarts went from %s to %s", when, agentRestarts, got)
		}
		if got := unitProp(t, "addond", "ActiveState"); got != "active" {
			t.Errorf("%s: addond is %s", when, got)
		}
		if got := addonUnitProp(t, "addond-pingsweep.service", "MainPID"); got != pingPID {
			t.Errorf("%s: pingsweep (not updated) changed process: MainPID %s -> %s", when, pingPID, got)
		}
		if got := addonUnitProp(t, "addond-svc.service", "MainPID"); got != svcPID {
			t.Errorf("%s: svc (not updated) changed process: MainPID %s -> %s", when, svcPID, got)
		}
		if got := statusPID(t, "pingsweep"); fmt.Sprint(got) != pingPID {
			t.Errorf("%s: pingsweep's status pid is %d, want %s", when, got, pingPID)
		}
		if got := addonUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic"); got != timerActive {
			t.Errorf("%s: the ticker timer (not updated) was re-created: active since %s -> %s", when, timerActive, got)
		}
		for _, id := range []string{"pingsweep", "ticker", "svc"} {
			waitAddon(t, id, 30*time.Second, when+": still running 1.0.0", func(a addonStatus) string {
				if a.State != "running" || a.ActiveVersion != "1.0.0" || a.Health != "healthy" {
					return "want running, healthy, 1.0.0"
				}
				return ""
			})
		}
	}

	// 1. Forward, while hello 1.1.0 is on probation.
	t.Run("forward", func(t *testing.T) {
		assignMono := monoNow(t)
		serial := assignExamples(t, p, "1.1.0", "/root/degraded.json")
		a := waitAddon(t, "hello", 2*time.Minute, "1.1.0 on probation, degraded", onProbation("1.1.0", "degraded"))
		// The jump first, the facts after it: nothing between the two
		// spends the probation (the activation is on the monotonic clock).
		before, jumpMono := wallClock(), monoNow(t)
		sh(t, "date -s '+3 hours'")
		activated := unitMono(t, "addond-hello.service", "ActiveEnterTimestampMonotonic")
		helloPID := addonUnitProp(t, "addond-hello.service", "MainPID")
		ticks := countTicks(t)
		t.Logf("hello 1.1.0 on probation (%s); activated %.1fs after the assignment; wall clock jumped forward at %.1fs of the probation: %s -> %s",
			a, (activated - assignMono).Seconds(), (jumpMono - activated).Seconds(), before, wallNow(t))
		if late := jumpMono - activated; late > forwardProbation/2 {
			t.Fatalf("the guest let this test see 1.1.0's activation only %.1fs after it: the jump must land well inside the %v probation", late.Seconds(), forwardProbation)
		}
		checkSerial(t, serial)
		if got := probationOf(t, "hello"); got == nil || got.Version != "1.1.0" {
			t.Errorf("state.json holds no probation of 1.1.0 before the jump: %+v", got)
		} else {
			t.Logf("state.json: probation of %s, deadline (wall clock, informational) %s", got.Version, got.Deadline.Format(time.RFC3339))
		}

		// The ticker's timer fires on the new (later) wall time.
		waitTicks(t, ticks, 30*time.Second, "ticker fires after the forward jump")
		logTimer(t, "after the forward jump")

		// The jump put the wall clock 3 h past the probation's deadline:
		// measured on the monotonic clock, the probation is far from over.
		// Held until 25 s into the probation, and at least 5 s after the
		// jump (a deadline on the wall clock ends the probation at the next
		// tick, 1 s): the rest of the probation is the configuration
		// change's, however late a loaded machine let this test see the
		// activation. (A fixed 20 s after the jump left the change 1.4 s
		// once, on a machine running other tests beside make test.)
		holdUntil := max(jumpMono+5*time.Second, activated+25*time.Second)
		hold := holdUntil - jumpMono
		for monoNow(t) < holdUntil {
			st, err := status()
			if err != nil {
				t.Fatal(err)
			}
			h, err := st.addon("hello")
			if err != nil {
				t.Fatal(err)
			}
			if h.ActiveVersion != "1.1.0" || h.State == "rolled_back" {
				t.Errorf("ROLLED BACK EARLY by the forward jump, %.1fs after 1.1.0 was activated (the probation is %v): %s — the probation deadline is measured on the wall clock",
					(monoNow(t) - activated).Seconds(), forwardProbation, h)
				break
			}
			if p := probationOf(t, "hello"); p == nil {
				t.Errorf("PROMOTED EARLY by the forward jump, %.1fs after 1.1.0 was activated while degraded: %s", (monoNow(t) - activated).Seconds(), h)
				break
			}
			time.Sleep(time.Second)
		}
		if out, _ := try("journalctl --no-pager -u addond -o cat --grep 'rolling back|promoted' | grep 1.1.0"); out != "" {
			t.Errorf("addond promoted or rolled back 1.1.0 within %v of the forward jump:\n%s", hold, out)
		}
		t.Logf("%.1fs after the forward jump (%.1fs into the probation): hello 1.1.0 still on probation", hold.Seconds(), (monoNow(t) - activated).Seconds())

		// Polling goes on after the jump: a configuration-only change
		// (healthy) reaches the running 1.1.0, which is then promoted.
		healthyMono := monoNow(t)
		serial = assignExamples(t, p, "1.1.0", "/root/healthy.json")
		a = waitAddon(t, "hello", time.Minute, "1.1.0 promoted", func(a addonStatus) string {
			if why := runningHealthy("1.1.0")(a); why != "" {
				return why
			}
			if p := probationOf(t, "hello"); p != nil {
				return "still on probation in state.json"
			}
			return ""
		})
		promoted := monoNow(t)
		t.Logf("healthy configuration assigned %.1fs after the jump, picked up and 1.1.0 promoted %.1fs later (%.1fs after activation, probation %v): %s",
			(healthyMono - jumpMono).Seconds(), (promoted - healthyMono).Seconds(), (promoted - activated).Seconds(), forwardProbation, a)
		checkSerial(t, serial)
		if lkg := lkgVersion(t, "hello"); lkg != "1.1.0" {
			t.Errorf("last-known-good of hello is %q after the promotion, want 1.1.0", lkg)
		}
		if got := addonUnitProp(t, "addond-hello.service", "MainPID"); got != helloPID {
			t.Logf("note: hello was restarted by its configuration-only change (MainPID %s -> %s)", helloPID, got)
		}
		kept("after the forward jump")
		logSince(t, "after the forward jump")
	})

	// 2. Backward, while hello 1.2.0 is on probation and degraded: its
	// rollback comes at the end of its probation, not 5 h later.
	t.Run("backward", func(t *testing.T) {
		// The jump lands while a ticker run is in flight, every time: a
		// FIFO in place of its ticks file holds the run in its open(2)
		// until the jump is done. (systemd 252 ignores a clock change
		// for a timer whose run is in flight, and schedules the next run
		// from the last one, 5 h ahead: addond re-arms the timer. A jump
		// between runs, which systemd rebases by itself, came 1 time in
		// 4 by chance before.)
		setConfig(t, map[string]any{"probation": clockProbation.String()})
		release := holdTickerRun(t)
		assignMono := monoNow(t)
		serial := assignExamples(t, p, "1.2.0", "/root/degraded.json")
		waitAddon(t, "hello", 2*time.Minute, "1.2.0 on probation, degraded", onProbation("1.2.0", "degraded"))
		before, jumpMono := wallClock(), monoNow(t)
		sh(t, "date -s '-5 hours'")
		activated := unitMono(t, "addond-hello.service", "ActiveEnterTimestampMonotonic")
		t.Logf("hello 1.2.0 on probation, activated %.1fs after the assignment; wall clock jumped backward at %.1fs of the probation, a ticker run in flight: %s -> %s",
			(activated - assignMono).Seconds(), (jumpMono - activated).Seconds(), before, wallNow(t))
		ticks := release()
		logTimer(t, "the held run ended")
		checkSerial(t, serial)

		// The ticker's timer fires on the new (earlier) wall time: addond
		// re-arms it (the same unit, started again).
		waitTicks(t, ticks, 30*time.Second, "ticker fires after the backward jump")
		logTimer(t, "after the backward jump")
		if out, _ := try("journalctl --no-pager -u addond -o cat --grep 're-armed timer' | grep addond-ticker.timer"); out == "" {
			t.Errorf("addond did not log re-arming addond-ticker.timer after the backward jump")
		} else {
			t.Logf("addond: %s", out)
		}
		timerActive = addonUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic")

		// The deadline is at least a probation after the assignment was
		// written, and at most a probation (plus the loop's 1 s check and
		// a slow guest) after the unit became active.
		earliest, latest := assignMono+clockProbation, activated+clockProbation+90*time.Second
		var rolled addonStatus
		err := waitFor(latest-monoNow(t), func() error {
			st, err := status()
			if err != nil {
				return err
			}
			a, err := st.addon("hello")
			if err != nil {
				return err
			}
			if a.State != "rolled_back" {
				return fmt.Errorf("not rolled back: %s", a)
			}
			rolled = a
			return nil
		})
		at := monoNow(t)
		switch {
		case err != nil:
			t.Errorf("NOT ROLLED BACK within %v of activation after the backward jump (probation %v; the deadline was postponed by the jump?): %v",
				latest-activated, clockProbation, err)
			diagnose(t)
		case at < earliest:
			t.Errorf("rolled back %.1fs after the assignment, before the %v probation could end: %s", (at - assignMono).Seconds(), clockProbation, rolled)
		default:
			t.Logf("rolled back %.1fs after activation (probation %v; %.1fs after the jump): %s",
				(at - activated).Seconds(), clockProbation, (at - jumpMono).Seconds(), rolled)
		}
		if err == nil {
			if rolled.ActiveVersion != "1.1.0" || !strings.Contains(rolled.LastError, "probation") {
				t.Errorf("rollback: want 1.1.0 active again and the probation as the reason: %s", rolled)
			}
			waitAddon(t, "hello", time.Minute, "1.1.0 running again", func(a addonStatus) string {
				if a.State != "rolled_back" || a.ActiveVersion != "1.1.0" || a.Health != "healthy" {
					return "want rolled_back to a healthy 1.1.0"
				}
				return ""
			})
		}

		// Polling goes on: a new version is assigned, picked up, promoted.
		newMono := monoNow(t)
		serial = assignExamples(t, p, "1.3.0", "/root/healthy.json")
		a := waitAddon(t, "hello", 2*time.Minute, "1.3.0 promoted after the backward jump", func(a addonStatus) string {
			if why := runningHealthy("1.3.0")(a); why != "" {
				return why
			}
			if p := probationOf(t, "hello"); p != nil {
				return "still on probation in state.json"
			}
			return ""
		})
		t.Logf("hello 1.3.0 assigned %.1fs after the backward jump, running and promoted %.1fs later: %s",
			(newMono - jumpMono).Seconds(), (monoNow(t) - newMono).Seconds(), a)
		checkSerial(t, serial)
		kept("after the backward jump")
		logSince(t, "after the backward jump")
	})

	// 3. The fault suite's invariants.
	t.Run("invariants", func(t *testing.T) {
		want := map[string]string{"hello": "1.3.0", "pingsweep": "1.0.0", "ticker": "1.0.0", "svc": "1.0.0"}
		for id, v := range want {
			checkCurrent(t, id, v)
		}
		if out := sh(t, "find /var/lib/addond/tmp -mindepth 1 2>/dev/null; true"); out != "" {
			t.Errorf("partial files left in /var/lib/addond/tmp:\n%s", out)
		}
		st, err := status()
		if err != nil {
			t.Fatal(err)
		}
		if !st.Ready || st.DocumentError != "" {
			t.Errorf("agent: ready %v, document_error %q", st.Ready, st.DocumentError)
		}
		for id, v := range want {
			a, err := st.addon(id)
			if err != nil {
				t.Error(err)
				continue
			}
			if a.State != "running" || a.Health != "healthy" || a.ActiveVersion != v || a.Version != v {
				t.Errorf("%s: want running, healthy, %s: %s", id, v, a)
			}
		}
		kept("at the end")
		t.Logf("addond MainPID %s, NRestarts %s; pingsweep MainPID %s; svc MainPID %s; %.0fs so far",
			agentPID, agentRestarts, pingPID, svcPID, (monoNow(t) - testStart).Seconds())
	})

	// 4. addond restarted now, with the wall clock 2 h behind the time
	// its add-ons' units became active: it adopts and reattaches to them
	// all (same processes), and reports them healthy.
	t.Run("restart", func(t *testing.T) {
		units := []string{"addond-hello.service", "addond-pingsweep.service", "addond-svc.service"}
		before := addonUnitPIDs(t, units...)
		for _, u := range units {
			t.Logf("%s: MainPID %s, active since %s (wall clock now %s)", u, before[u], addonUnitProp(t, u, "ActiveEnterTimestamp"), wallNow(t))
		}
		restartMono := monoNow(t)
		sh(t, "systemctl restart addond")
		newPID := mainPID(t, "addond")
		eventually(t, time.Minute, "addond ready after the restart", func() error {
			if st, err := status(); err != nil || !st.Ready {
				return fmt.Errorf("not ready: %v", err)
			}
			return nil
		})
		want := map[string]string{"hello": "1.3.0", "pingsweep": "1.0.0", "ticker": "1.0.0", "svc": "1.0.0"}
		for _, id := range []string{"hello", "pingsweep", "ticker", "svc"} {
			var last addonStatus
			err := waitFor(time.Minute, func() error {
				st, err := status()
				if err != nil {
					return err
				}
				if last, err = st.addon(id); err != nil {
					return err
				}
				if why := runningHealthy(want[id])(last); why != "" {
					return fmt.Errorf("%s (%s)", why, last)
				}
				return nil
			})
			switch {
			case err != nil && id == "svc":
				// Its up time must come from the monotonic clock: on the
				// wall clock it is negative here, and StableAfter would
				// wait as long as the clock went back.
				t.Errorf("SERVICE NOT HEALTHY within a minute after addond adopted it with the wall clock behind the unit's start: %v", err)
				diagnose(t)
			case err != nil:
				t.Errorf("%s not running and healthy within a minute of the restart: %v", id, err)
			default:
				t.Logf("%s healthy %.1fs after the restart: %s", id, (monoNow(t) - restartMono).Seconds(), last)
			}
		}
		after := addonUnitPIDs(t, units...)
		reattach, _ := try("journalctl --no-pager -o cat _PID=" + newPID + " | grep -i reattach")
		for _, u := range units {
			switch {
			case after[u] == before[u]:
				t.Logf("%s kept its process %s across the restart of addond", u, before[u])
			case u == "addond-svc.service":
				t.Errorf("%s was restarted by the restart of addond (MainPID %s -> %s)", u, before[u], after[u])
			default:
				t.Errorf("SIDECAR RESTARTED INSTEAD OF REATTACHED: %s, started before the clock went back, got a new process when addond restarted (MainPID %s -> %s); "+
					"go-plugin's AutoMTLS certificates are valid from their creation time - 30 s (wall clock), so the recorded ones are 'not yet valid' now; addond's reattach log:\n%s",
					u, before[u], after[u], reattach)
			}
		}
		t.Logf("addond's reattach log after the restart:\n%s", reattach)
		if got := addonUnitProp(t, "addond-ticker.timer", "ActiveEnterTimestampMonotonic"); got != timerActive {
			t.Errorf("the ticker timer was re-created by the restart: active since %s -> %s", timerActive, got)
		}
		t.Logf("the whole test took %.0fs", (monoNow(t) - testStart).Seconds())
	})
}

// assignExamples assigns the three examples and svc with hello at helloVersion
// and its configuration from cfg, and returns the document's serial.
func assignExamples(t *testing.T, p *publisher, helloVersion, cfg string) uint64 {
	t.Helper()
	p.assign(t, "--addon", "hello@"+helloVersion, "--addon", "pingsweep@1.0.0", "--addon", "ticker@1.0.0", "--addon", "svc@1.0.0",
		"--schedule", "ticker=*:*:0/5", "--arg", "ticker=ticks", "--config", "hello="+cfg)
	data, err := os.ReadFile(strings.TrimPrefix(fileStore, "file://") + "/agents/" + agentID + "/assignments.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Serial uint64 `json:"serial"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Serial
}

// checkSerial checks that addond applied the document with serial.
func checkSerial(t *testing.T, serial uint64) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("serial %d applied", serial), func() error {
		st, err := status()
		if err != nil {
			return err
		}
		if st.Serial != serial {
			return fmt.Errorf("serial %d", st.Serial)
		}
		return nil
	})
}

// onProbation is the condition of hello at version, activated and
// reporting health, but neither promoted nor rolled back.
func onProbation(version, health string) func(a addonStatus) string {
	return func(a addonStatus) string {
		if a.ActiveVersion != version || a.Health != health || a.State == "rolled_back" {
			return "want " + version + " active and " + health
		}
		return ""
	}
}

// wallClock is the guest's wall clock, read in this process (no command
// in between).
func wallClock() string { return time.Now().UTC().Format("2006-01-02 15:04:05") }

// monoNow is the guest's CLOCK_MONOTONIC, the clock of systemd's
// *Monotonic timestamps (and of /proc/uptime, bar suspend).
func monoNow(t testing.TB) time.Duration {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// unitMono is a *Monotonic timestamp property of a unit of addond's
// manager.
func unitMono(t testing.TB, unit, prop string) time.Duration {
	t.Helper()
	v := addonUnitProp(t, unit, prop)
	us, err := strconv.ParseInt(v, 10, 64)
	if err != nil || us == 0 {
		t.Fatalf("%s %s=%q", unit, prop, v)
	}
	return time.Duration(us) * time.Microsecond
}

func wallNow(t testing.TB) string {
	t.Helper()
	return sh(t, "date -u '+%F %T'") + " (uptime " + sh(t, "cut -d' ' -f1 /proc/uptime") + "s)"
}

// waitFor polls f until it returns nil, or returns its last error after
// timeout; unlike eventually it does not fail the test.
func waitFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// statusPID is the status' pid of an add-on.
func statusPID(t testing.TB, id string) int {
	t.Helper()
	st, err := status()
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.addon(id)
	if err != nil {
		t.Fatal(err)
	}
	return a.PID
}

const ticksFile = "/var/lib/addond/addons/ticker/data/ticks"

// holdTickerRun puts a FIFO in place of the ticker's ticks file and waits
// until a ticker run blocks opening it (its unit activating). release
// reads the run's line, puts the ticks file back with the line appended,
// waits for the run to end and returns the count of ticks.
func holdTickerRun(t testing.TB) (release func() int) {
	t.Helper()
	held := ticksFile + ".held"
	var st unix.Stat_t
	if err := unix.Stat(ticksFile, &st); err != nil {
		t.Fatal(err)
	}
	// The ticks file keeps a second name, and a FIFO made aside takes
	// its place in one rename: a run that fires in between appends to
	// the same inode (moving the file away first let such a run create
	// a fresh one, and mkfifo failed with EEXIST: fresh-clone CI run).
	if err := os.Link(ticksFile, held); err != nil {
		t.Fatal(err)
	}
	fifo := ticksFile + ".fifo"
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(fifo, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(fifo, ticksFile); err != nil {
		t.Fatal(err)
	}
	start := monoNow(t)
	eventually(t, time.Minute, "a ticker run held opening its FIFO", func() error {
		if s := addonUnitProp(t, "addond-ticker.service", "ActiveState"); s != "activating" {
			return fmt.Errorf("addond-ticker.service is %s", s)
		}
		return nil
	})
	t.Logf("a ticker run is held (pid %s) %.1fs after the FIFO was made", addonUnitProp(t, "addond-ticker.service", "MainPID"), (monoNow(t) - start).Seconds())
	return func() int {
		t.Helper()
		fifo, err := os.Open(ticksFile) // the held run's open(2) returns too
		if err != nil {
			t.Fatal(err)
		}
		defer fifo.Close()
		if err := os.Rename(held, ticksFile); err != nil {
			t.Fatal(err)
		}
		line, err := io.ReadAll(fifo)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(ticksFile, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the held ticker run ends", func() error {
			if s := addonUnitProp(t, "addond-ticker.service", "ActiveState"); s == "activating" {
				return fmt.Errorf("addond-ticker.service is still %s", s)
			}
			return nil
		})
		n := countTicks(t)
		t.Logf("the held ticker run wrote %q; %d ticks", strings.TrimSpace(string(line)), n)
		return n
	}
}

func countTicks(t testing.TB) int {
	t.Helper()
	data, err := os.ReadFile(ticksFile)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(data), " tick\n")
}

// waitTicks waits until the ticker has run at least twice more than
// after, and returns the count.
func waitTicks(t testing.TB, after int, timeout time.Duration, what string) int {
	t.Helper()
	var n int
	start := time.Now()
	eventually(t, timeout, what, func() error {
		if n = countTicks(t); n < after+2 {
			return fmt.Errorf("%d ticks, want at least %d", n, after+2)
		}
		return nil
	})
	last, _ := try("tail -n1 " + ticksFile)
	t.Logf("%s: %d -> %d ticks within %v; last: %s", what, after, n, time.Since(start).Round(100*time.Millisecond), last)
	return n
}

func logTimer(t testing.TB, when string) {
	t.Helper()
	out, _ := try("systemctl --user -M addond@ show -p LastTriggerUSec -p LastTriggerUSecMonotonic -p NextElapseUSecRealtime addond-ticker.timer | tr '\\n' ' '")
	t.Logf("%s: ticker timer %s", when, out)
}

// logSince logs the status' since of every add-on: wall-clock times, odd
// after a jump, and not held against addond.
func logSince(t testing.TB, when string) {
	t.Helper()
	out, err := try("addonctl status --json 2>/dev/null || [ $? -eq 1 ]")
	if err != nil {
		t.Logf("%s: addonctl status: %v", when, err)
		return
	}
	var st struct {
		Addons []struct {
			AddonID string `json:"addon_id"`
			Since   string `json:"since"`
		} `json:"addons"`
	}
	json.Unmarshal([]byte(out), &st)
	var s []string
	for _, a := range st.Addons {
		s = append(s, a.AddonID+" since "+a.Since)
	}
	t.Logf("%s (wall clock now %s): %s", when, wallNow(t), strings.Join(s, ", "))
}

// addonState is the part of addons/<id>/state.json this test reads.
type addonState struct {
	LKG *struct {
		Version string `json:"version"`
	} `json:"last_known_good"`
	Probation *probationState `json:"probation"`
}

type probationState struct {
	Version  string    `json:"version"`
	Deadline time.Time `json:"deadline"` // wall clock: informational
}

func readAddonState(t testing.TB, id string) addonState {
	t.Helper()
	var st addonState
	data, err := os.ReadFile("/var/lib/addond/addons/" + id + "/state.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("%s state.json: %v", id, err)
	}
	return st
}

func probationOf(t testing.TB, id string) *probationState {
	t.Helper()
	return readAddonState(t, id).Probation
}

func lkgVersion(t testing.TB, id string) string {
	t.Helper()
	if lkg := readAddonState(t, id).LKG; lkg != nil {
		return lkg.Version
	}
	return ""
}

// checkCurrent checks that addons/<id>/current points at version, staged
// complete: the binary's size and sha256 are the published package's.
func checkCurrent(t testing.TB, id, version string) {
	t.Helper()
	root := "/var/lib/addond/addons/" + id
	cur, err := os.Readlink(root + "/current")
	if err != nil {
		t.Errorf("%s: current: %v", id, err)
		return
	}
	if cur != "versions/"+version {
		t.Errorf("%s: current -> %s, want versions/%s", id, cur, version)
		return
	}
	data, err := os.ReadFile(strings.TrimPrefix(fileStore, "file://") + "/packages/" + id + "/" + version + "/package.json")
	if err != nil {
		t.Fatal(err)
	}
	var pkg struct {
		Artifacts map[string]struct {
			SHA256     string `json:"sha256"`
			Size       int64  `json:"size"`
			BinaryName string `json:"binary_name"`
		} `json:"artifacts"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil {
		t.Fatal(err)
	}
	art, ok := pkg.Artifacts["linux/amd64"]
	if !ok {
		t.Fatalf("%s %s: no linux/amd64 artifact in package.json", id, version)
	}
	bin := root + "/current/" + art.BinaryName
	f, err := os.Open(bin)
	if err != nil {
		t.Errorf("%s: %v", id, err)
		return
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != art.SHA256 || n != art.Size {
		t.Errorf("%s: %s is %d bytes, sha256 %s; published: %d bytes, sha256 %s", id, bin, n, sum, art.Size, art.SHA256)
		return
	}
	t.Logf("%s: current -> %s, %s complete (%d bytes, sha256 %s…)", id, cur, art.BinaryName, n, art.SHA256[:16])
}
