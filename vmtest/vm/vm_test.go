package vm

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tmpDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// TestBootAndReboot proves the harness: the guest boots its own kernel
// with systemd as PID 1 on cgroup v2, with no network, and a test
// continues after a reboot on the same disk.
func TestBootAndReboot(t *testing.T) {
	if !InVM() {
		RunTest(t, RunOptions{Boots: 2})
		return
	}
	comm, _ := os.ReadFile("/proc/1/comm")
	if strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q", comm)
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		t.Fatalf("no cgroup v2: %v", err)
	}
	switch Phase() {
	case 1:
		if err := os.WriteFile("/var/lib/addond-vmtest/marker", []byte("phase 1"), 0o644); err != nil {
			t.Fatal(err)
		}
		RequestReboot(t)
	case 2:
		data, err := os.ReadFile("/var/lib/addond-vmtest/marker")
		if err != nil || string(data) != "phase 1" {
			t.Fatalf("phase 1's file after the reboot: %q, %v", data, err)
		}
	default:
		t.Fatalf("phase %d", Phase())
	}
}
