package helper

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/conformance"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/vmtest/nspawn"
)

// The ephemeral_helper backend against a real systemd, inside a booted
// Debian as the lingering addond user.
func TestInMachine(t *testing.T) {
	if !nspawn.InMachine() {
		bins := conformance.BuildExamples(t, "../..", "probe")
		nspawn.RunTest(t, nspawn.RunOptions{Files: []string{bins["probe"]}})
		return
	}
	probe := filepath.Join(nspawn.BinDir, "probe")
	m := systemd.NewManager(systemd.UserTarget(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer m.Close()
	newBackend := func(t *testing.T, notify supervisors.Notify) *Backend {
		root, err := os.MkdirTemp("/var/lib/addond", "root-")
		if err != nil {
			t.Fatal(err)
		}
		return New(systemd.Options{Manager: m, Paths: systemd.Paths{RuntimeRoot: root}, Notify: notify,
			Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	}
	ctx := context.Background()

	t.Run("conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Job: true, Units: true, Binary: probe,
			New: func(t *testing.T, notify supervisors.Notify) supervisors.Supervisor { return newBackend(t, notify) },
		})
	})

	b := newBackend(t, nil)
	conn, err := m.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	noRunUnits := func(t *testing.T) {
		t.Helper()
		units, err := systemd.ListAddonUnits(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range units {
			if strings.Contains(u.Name, ".run-") {
				t.Errorf("helper run unit left behind: %s (%s/%s)", u.Name, u.ActiveState, u.SubState)
			}
		}
	}
	start := func(t *testing.T, spec supervisors.Spec) {
		t.Helper()
		if err := b.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Stop(ctx, spec.AddonID) })
	}

	t.Run("exit code and output, no unit left", func(t *testing.T) {
		start(t, supervisors.Spec{AddonID: "probe", Version: "1.0.0", Binary: probe, Args: []string{"--exit", "7"}})
		res, err := b.Run(ctx, "probe", []string{"hello", "world"}, "test")
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 7 || string(res.Stdout) != "probe: hello world\n" || res.TimedOut || res.StdoutTruncated {
			t.Fatalf("result %+v (stdout %q, stderr %q)", res, res.Stdout, res.Stderr)
		}
		noRunUnits(t)
	})

	t.Run("a helper that hangs is killed at its timeout", func(t *testing.T) {
		start(t, supervisors.Spec{AddonID: "hangs", Version: "1.0.0", Binary: "/bin/sleep", Args: []string{"60"}, Timeout: time.Second})
		t0 := time.Now()
		res, err := b.Run(ctx, "hangs", nil, "test")
		if err != nil {
			t.Fatal(err)
		}
		if !res.TimedOut || res.ExitCode == 0 || time.Since(t0) > 10*time.Second {
			t.Fatalf("result %+v after %v, want timed out and killed", res, time.Since(t0))
		}
		noRunUnits(t)
	})

	t.Run("output larger than the bound is truncated, and says so", func(t *testing.T) {
		start(t, supervisors.Spec{AddonID: "floods", Version: "1.0.0", Binary: "/bin/sh",
			Args: []string{"-c", "head -c 3000000 /dev/zero; echo err >&2; exit 3"}})
		res, err := b.Run(ctx, "floods", nil, "test")
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Stdout) != OutputLimit || !res.StdoutTruncated || res.ExitCode != 3 || !bytes.Equal(res.Stderr, []byte("err\n")) || res.StderrTruncated {
			t.Fatalf("stdout %d bytes truncated=%v, stderr %q, exit %d", len(res.Stdout), res.StdoutTruncated, res.Stderr, res.ExitCode)
		}
		noRunUnits(t)
	})

	t.Run("runs of one helper run concurrently in their own units", func(t *testing.T) {
		start(t, supervisors.Spec{AddonID: "para", Version: "1.0.0", Binary: "/bin/sh", Args: []string{"-c", "sleep 1; echo $INVOCATION_ID"}})
		type out struct {
			res *Result
			err error
		}
		ch := make(chan out, 4)
		t0 := time.Now()
		for range 4 {
			go func() { r, err := b.Run(ctx, "para", nil, "test"); ch <- out{r, err} }()
		}
		seen := map[string]bool{}
		for range 4 {
			o := <-ch
			if o.err != nil || o.res.ExitCode != 0 {
				t.Fatalf("run: %+v %v", o.res, o.err)
			}
			seen[o.res.Unit] = true
		}
		if len(seen) != 4 || time.Since(t0) > 4*time.Second {
			t.Fatalf("%d distinct units in %v", len(seen), time.Since(t0))
		}
		noRunUnits(t)
	})

	t.Run("a run that cannot exec is an error, not an exit status", func(t *testing.T) {
		dir, err := os.MkdirTemp("/var/lib/addond", "noexec-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		script := filepath.Join(dir, "broken")
		if err := os.WriteFile(script, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		start(t, supervisors.Spec{AddonID: "broken", Version: "1.0.0", Binary: script})
		res, err := b.Run(ctx, "broken", nil, "test")
		if err == nil || !strings.Contains(err.Error(), `addon "broken"`) {
			t.Fatalf("Run(broken) = %+v, %v; want an error naming the add-on", res, err)
		}
		t.Logf("refused: %v", err)
		noRunUnits(t)
	})

	t.Run("unknown add-on", func(t *testing.T) {
		if _, err := b.Run(ctx, "nope", nil, "test"); !errors.Is(err, ErrNotHelper) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("Run(nope) = %v", err)
		}
	})
}

// A run's start job can fail although the run ran (a quick non-zero exit
// under load); only the manager's own setup failures are not runs.
func TestRanAndExited(t *testing.T) {
	for _, tc := range []struct {
		st   systemd.UnitState
		want bool
	}{
		{systemd.UnitState{InvocationID: "ab", ExecCode: 1, ExecStatus: 7}, true},
		{systemd.UnitState{InvocationID: "ab", ExecCode: 2, ExecStatus: 9}, true},
		{systemd.UnitState{InvocationID: "ab", ExecCode: 1, ExecStatus: 203}, false}, // EXEC
		{systemd.UnitState{InvocationID: "ab", ExecCode: 1, ExecStatus: 217}, false}, // USER
		{systemd.UnitState{InvocationID: "ab"}, false},
		{systemd.UnitState{ExecCode: 1, ExecStatus: 7}, false},
	} {
		if got := ranAndExited(tc.st); got != tc.want {
			t.Errorf("ranAndExited(%+v) = %v, want %v", tc.st, got, tc.want)
		}
	}
}
