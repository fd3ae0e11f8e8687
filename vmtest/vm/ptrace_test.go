package vm

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ptraceAttack is the attack of an add-on on addond (the test binary, run
// inside the machine as the addond user with ADDOND_PTRACE_ROUNDS set):
// round after round it kills addond — an add-on of addond's uid may — and
// races systemd's restart, scanning /proc for the new addond process and
// trying PTRACE_SEIZE on it the moment it appears. It prints one line per
// round: "refused <pid> <errno>" or "none", then the round's timing. An
// attach ends the attack ("attached <pid>" is the last line): the tracee
// is released by the attacker's exit. (A PTRACE_DETACH of a seized tracee
// that is not stopped fails, and a tracee killed in the next round would
// stay a zombie until its tracer reaps it or exits — systemd would wait
// for it, each later round timing out.)
func ptraceAttack(rounds int) int {
	me := os.Getuid()
	for r := 0; r < rounds; r++ {
		old := addondPID()
		for deadline := time.Now().Add(time.Minute); old == 0 && time.Now().Before(deadline); old = addondPID() {
			time.Sleep(200 * time.Millisecond) // a slow restart of the round before
		}
		if old == 0 {
			fmt.Println("no addond")
			return 1
		}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			fmt.Println("kill:", err)
			return 1
		}
		killed := time.Now()
		seen := map[int]bool{old: true}
		result := ""
		for deadline := time.Now().Add(30 * time.Second); result == "" && time.Now().Before(deadline); {
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil || seen[pid] {
					continue
				}
				comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
				if strings.TrimSpace(string(comm)) != "addond" {
					continue
				}
				seen[pid] = true
				var st syscall.Stat_t
				if syscall.Stat("/proc/"+e.Name(), &st) == nil && int(st.Uid) != me && st.Uid != 0 {
					continue
				}
				// Seize it: pre-exec (still root) is refused too; keep
				// trying this pid until it is addond's or it is refused
				// as addond's.
				for try := 0; try < 200; try++ {
					err := unix.PtraceSeize(pid)
					if err == nil {
						fmt.Printf("attached %d (%v after the kill)\n", pid, time.Since(killed).Round(time.Millisecond))
						return 0
					}
					if status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t", me)) {
						result = fmt.Sprintf("refused %d %v", pid, err)
						break
					}
				}
			}
		}
		if result == "" {
			result = "none"
		}
		decided := time.Since(killed)
		// The restarted addond is up before the next round.
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if p := addondPID(); p != 0 && p != old {
				break
			}
		}
		fmt.Printf("%s (decided %v, new MainPID %v after the kill)\n", result, decided.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	}
	return 0
}

func addondPID() int {
	out, _ := exec.Command("systemctl", "show", "-p", "MainPID", "--value", "addond").Output()
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}

// ptraceRace runs the attack as the addond user and returns each round's
// line: rounds lines, or fewer when the last one is an attach.
func ptraceRace(t *testing.T, rounds int) []string {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid=addond", "--regid=addond", "--clear-groups", os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("ADDOND_PTRACE_ROUNDS=%d", rounds))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the attack: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > rounds || len(lines) < rounds && !strings.HasPrefix(lines[len(lines)-1], "attached") {
		t.Fatalf("the attack printed %q, want %d rounds or an attach", out, rounds)
	}
	for i, l := range lines {
		t.Logf("round %d: %s", i+1, l)
	}
	return lines
}

// ptraceRaceStep: addond is not traceable by its own uid from its first
// instruction. The packaged binary is execute-only (0711), so the kernel
// makes every addond process non-dumpable at exec; an add-on that kills
// addond and races PTRACE_SEIZE on every new process never attaches.
// As a control, with the binary made readable again (0755) the same
// attack is run until it attaches once, and what it got is logged: the
// window between exec and addond's own prctl.
func ptraceRaceStep(t *testing.T, _ *lifecycle) {
	if got := sh(t, "stat -c %a /usr/bin/addond"); got != "711" {
		t.Fatalf("/usr/bin/addond is mode %s, want 711", got)
	}
	const rounds = 8
	refused := 0
	for _, l := range ptraceRace(t, rounds) {
		switch {
		case strings.HasPrefix(l, "attached"):
			t.Errorf("an add-on of addond's uid attached to a new addond: %s", l)
		case strings.HasPrefix(l, "refused"):
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("the attack never reached a new addond process: it proved nothing")
	}
	t.Logf("execute-only addond: %d of %d restarts seized in time, every one refused", refused, rounds)
	sh(t, "chmod 0755 /usr/bin/addond")
	defer sh(t, "chmod 0711 /usr/bin/addond")
	control := ptraceRace(t, rounds)
	if last := control[len(control)-1]; strings.HasPrefix(last, "attached") {
		t.Logf("control, addond readable (0755): attached in round %d of %d, before addond's own prctl", len(control), rounds)
	} else {
		t.Logf("control, addond readable (0755): not attached in %d rounds (the window before addond's prctl is narrow)", rounds)
	}
	eventually(t, time.Minute, "addond active again", func() error {
		if out, _ := try("systemctl is-active addond"); out != "active" {
			return fmt.Errorf("is-active: %s", out)
		}
		return nil
	})
}
