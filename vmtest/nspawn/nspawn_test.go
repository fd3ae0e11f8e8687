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

// TestUserManagerTransientUnit proves the harness: in a booted Debian,
// the lingering addond user's manager starts a transient unit created over
// D-Bus (no systemctl, no systemd-run), as addond will.
func TestUserManagerTransientUnit(t *testing.T) {
	if !InMachine() {
		RunTest(t, RunOptions{})
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
