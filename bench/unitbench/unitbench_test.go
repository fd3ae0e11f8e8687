package unitbench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"

	"github.com/addond/addond/vmtest/nspawn"
)

var (
	units  = flag.Int("units", 50, "services started and stopped per round")
	rounds = flag.Int("rounds", 5, "measured rounds per method")
	warmup = flag.Int("warmup", 1, "unmeasured rounds per method before the measured ones")
)

const (
	// resultsFile is where the run inside the machine leaves its Results
	// (relative to its working directory, the addond user's home).
	resultsFile = "unitbench.json"
	home        = "/var/lib/addond"
	// unitType is both methods' Type=: the start job is done once
	// /bin/sleep has been executed.
	unitType = "exec"
	// opTimeout bounds one start or one stop.
	opTimeout = 30 * time.Second
)

// envNames carry the flags into the machine.
var envNames = [...]string{"ADDOND_UNITBENCH_UNITS", "ADDOND_UNITBENCH_ROUNDS", "ADDOND_UNITBENCH_WARMUP"}

// TestUnitStartStop measures, in one booted machine, starting and stopping
// transient services over D-Bus and with systemd-run/systemctl, and prints
// the comparison. It fails when either cannot be measured, not when the
// goal is missed.
func TestUnitStartStop(t *testing.T) {
	if nspawn.InMachine() {
		measure(t)
		return
	}
	if *units < 1 || *rounds < 1 || *warmup < 0 {
		t.Fatalf("-units and -rounds must be ≥ 1, -warmup ≥ 0")
	}
	// A benchmark that cannot boot systemd must fail, not skip.
	t.Setenv("ADDOND_TEST_STRICT", "1")
	m := nspawn.RunTest(t, nspawn.RunOptions{
		Env: []string{
			fmt.Sprintf("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus", nspawn.AddonUID),
			envNames[0] + "=" + strconv.Itoa(*units),
			envNames[1] + "=" + strconv.Itoa(*rounds),
			envNames[2] + "=" + strconv.Itoa(*warmup),
		},
		Timeout: 10 * time.Minute,
	})
	data, err := os.ReadFile(filepath.Join(m.Root, home, resultsFile))
	if err != nil {
		t.Fatalf("the run inside the machine left no results: %v", err)
	}
	var res Results
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("results: %v", err)
	}
	rep, err := NewReport(res, hostDescription(), time.Now())
	if err != nil {
		t.Fatalf("cannot compare: %v", err)
	}
	var out bytes.Buffer
	rep.Write(&out)
	fmt.Printf("\n%s\n", out.String())
}

// hostDescription is the machine line: CPUs, kernel, Go.
func hostDescription() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d × %s, kernel %s, %s %s/%s", runtime.NumCPU(), model,
		strings.TrimSpace(string(kernel)), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// measure runs inside the machine, as the addond user.
func measure(t *testing.T) {
	var cfg [3]int
	for i, name := range envNames {
		n, err := strconv.Atoi(os.Getenv(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cfg[i] = n
	}
	res := Results{Units: cfg[0], Rounds: cfg[1], Warmup: cfg[2], UnitType: unitType}
	res.Systemd, res.OS = systemdVersion(t), osVersion()

	ctx := context.Background()
	start := time.Now()
	// The context must outlive the connection: godbus closes it when the
	// context is done.
	conn, err := dbus.NewUserConnectionContext(ctx)
	if err != nil {
		t.Fatalf("user manager bus: %v", err)
	}
	res.Connect = time.Since(start)
	defer conn.Close()

	b := &bench{t: t, conn: conn, running: map[string]bool{}}
	defer b.cleanup(ctx)

	methods := []struct {
		name string
		one  func(context.Context, string) (time.Duration, time.Duration, error)
		out  *[]Round
	}{
		{"D-Bus", b.viaDBus, &res.DBus},
		{"systemd-run", b.viaSystemdRun, &res.SystemdRun},
	}
	for r := -res.Warmup; r < res.Rounds; r++ {
		order := []int{0, 1}
		if r%2 != 0 {
			order = []int{1, 0}
		}
		for pos, i := range order {
			m := methods[i]
			round, err := b.round(ctx, res.Units, m.one)
			if err != nil {
				t.Fatalf("round %d, %s: %v", r, m.name, err)
			}
			if r < 0 {
				continue
			}
			round.Index, round.First = r, pos == 0
			*m.out = append(*m.out, round)
			t.Logf("round %d, %s: %v for %d services", r, m.name, round.Total, res.Units)
		}
	}
	b.cleanup(ctx)
	b.checkClean(ctx)

	rep, err := NewReport(res, "", time.Now())
	if err != nil {
		t.Fatalf("cannot compare: %v", err)
	}
	t.Logf("systemd-run / D-Bus: %.2f× (median totals %v and %v)", rep.Ratio, rep.RunSum.Total, rep.DBusSum.Total)
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(resultsFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

type bench struct {
	t    *testing.T
	conn *dbus.Conn
	next int
	// running are the units started and not yet stopped.
	running map[string]bool
}

// round starts and stops n services with one, one after another.
func (b *bench) round(ctx context.Context, n int, one func(context.Context, string) (time.Duration, time.Duration, error)) (Round, error) {
	var r Round
	begin := time.Now()
	for range n {
		b.next++
		name := fmt.Sprintf("addond-bench-%d.service", b.next)
		start, stop, err := one(ctx, name)
		if err != nil {
			return Round{}, fmt.Errorf("%s: %w", name, err)
		}
		r.Start = append(r.Start, start)
		r.Stop = append(r.Stop, stop)
	}
	r.Total = time.Since(begin)
	return r, nil
}

// viaDBus starts name with StartTransientUnit and stops it with StopUnit
// on the one connection, each time waiting for the job to be done.
func (b *bench) viaDBus(ctx context.Context, name string) (time.Duration, time.Duration, error) {
	t0 := time.Now()
	b.running[name] = true
	err := b.job(ctx, func(ctx context.Context, ch chan<- string) (int, error) {
		// The properties systemd-run sends for the same command line.
		return b.conn.StartTransientUnitContext(ctx, name, "fail", []dbus.Property{
			dbus.PropDescription("/bin/sleep 300"),
			dbus.PropType(unitType),
			dbus.PropExecStart([]string{"/bin/sleep", "300"}, true),
		}, ch)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("start: %w", err)
	}
	t1 := time.Now()
	if err := b.job(ctx, func(ctx context.Context, ch chan<- string) (int, error) {
		return b.conn.StopUnitContext(ctx, name, "replace", ch)
	}); err != nil {
		return 0, 0, fmt.Errorf("stop: %w", err)
	}
	t2 := time.Now()
	delete(b.running, name)
	return t1.Sub(t0), t2.Sub(t1), nil
}

// job queues a job and waits until it is "done".
func (b *bench) job(ctx context.Context, queue func(context.Context, chan<- string) (int, error)) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	ch := make(chan string, 1)
	if _, err := queue(ctx, ch); err != nil {
		return err
	}
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("job %s", r)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// viaSystemdRun does what a shell script would: one systemd-run process
// (which waits for the start job), then one systemctl stop (which waits for
// the stop job).
func (b *bench) viaSystemdRun(ctx context.Context, name string) (time.Duration, time.Duration, error) {
	t0 := time.Now()
	b.running[name] = true
	if err := run(ctx, "systemd-run", "--user", "--quiet", "--unit="+name, "--property=Type="+unitType, "/bin/sleep", "300"); err != nil {
		return 0, 0, err
	}
	t1 := time.Now()
	if err := run(ctx, "systemctl", "--user", "stop", name); err != nil {
		return 0, 0, err
	}
	t2 := time.Now()
	delete(b.running, name)
	return t1.Sub(t0), t2.Sub(t1), nil
}

func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// cleanup stops every unit a failed start or stop may have left behind,
// and clears failed ones.
func (b *bench) cleanup(ctx context.Context) {
	for name := range b.running {
		err := b.job(ctx, func(ctx context.Context, ch chan<- string) (int, error) {
			return b.conn.StopUnitContext(ctx, name, "replace", ch)
		})
		if err != nil && !strings.Contains(err.Error(), "not loaded") {
			b.t.Errorf("cleanup: stop %s: %v", name, err)
		}
		b.conn.ResetFailedUnitContext(ctx, name) // not failed: nothing to reset
		delete(b.running, name)
	}
}

// checkClean fails the test if any addond-bench unit is still around.
func (b *bench) checkClean(ctx context.Context) {
	left, err := b.conn.ListUnitsByPatternsContext(ctx, nil, []string{"addond-bench-*"})
	if err != nil {
		b.t.Errorf("list units: %v", err)
		return
	}
	for _, u := range left {
		if u.ActiveState != "inactive" {
			b.t.Errorf("left behind: %s (%s/%s)", u.Name, u.ActiveState, u.SubState)
		}
	}
}

func systemdVersion(t *testing.T) string {
	out, err := exec.Command("systemctl", "--version").Output()
	if err != nil {
		t.Fatalf("systemctl --version: %v", err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func osVersion() string {
	name := "unknown OS"
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
				name = strings.Trim(v, `"`)
			}
		}
	}
	if v, err := os.ReadFile("/etc/debian_version"); err == nil {
		name += " (" + strings.TrimSpace(string(v)) + ")"
	}
	return name
}
