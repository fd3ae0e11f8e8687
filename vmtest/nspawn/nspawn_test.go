package nspawn

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"
)

// inMachine is set when the test binary runs inside a booted machine.
var inMachine = os.Getenv("ADDOND_IN_MACHINE") == "1"

// TestUserManagerTransientUnit proves the harness: in a booted Debian,
// the lingering addond user's manager starts a transient unit created over
// D-Bus (no systemctl, no systemd-run), as addond will.
func TestUserManagerTransientUnit(t *testing.T) {
	if !inMachine {
		m := New(t)
		m.CopyFile(t, os.Args[0], "/test/nspawn.test", 0o755)
		res := m.Boot(t, fmt.Sprintf(`
for i in $(seq 1 100); do [ -S /run/user/%d/bus ] && break; sleep 0.1; done
exec runuser -u addond -- env ADDOND_IN_MACHINE=1 XDG_RUNTIME_DIR=/run/user/%d \
	DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus \
	/test/nspawn.test -test.run '^TestUserManagerTransientUnit$' -test.v`, AddonUID, AddonUID, AddonUID), 2*time.Minute)
		if res.ExitCode != 0 || !strings.Contains(res.Output, "--- PASS") {
			t.Fatalf("inside the machine: exit %d\n%s\n--- console:\n%s", res.ExitCode, res.Output, res.Console)
		}
		t.Logf("inside the machine:\n%s", res.Output)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dbus.NewUserConnectionContext(ctx)
	if err != nil {
		t.Fatalf("user manager bus: %v", err)
	}
	defer conn.Close()
	done := make(chan string, 1)
	marker := "/var/lib/addond/transient-ran"
	_, err = conn.StartTransientUnitContext(ctx, "addond-smoke.service", "replace", []dbus.Property{
		dbus.PropExecStart([]string{"/bin/sh", "-c", "id -u > " + marker}, true),
		dbus.PropType("oneshot"),
	}, done)
	if err != nil {
		t.Fatalf("StartTransientUnit: %v", err)
	}
	if r := <-done; r != "done" {
		t.Fatalf("transient unit: %s", r)
	}
	data, err := os.ReadFile(marker)
	if err != nil || strings.TrimSpace(string(data)) != fmt.Sprint(AddonUID) {
		t.Fatalf("the unit did not run as addond: %q, %v", data, err)
	}
}
