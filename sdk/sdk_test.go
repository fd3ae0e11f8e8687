package sdk_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func buildHello(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hello")
	if out, err := exec.Command("go", "build", "-o", bin, "./examples/hello").CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	return bin
}

// Started outside go-plugin (by hand, or as a systemd unit), an add-on
// runs standalone with its config from $ADDOND_CONFIG until SIGTERM.
func TestServeStandalone(t *testing.T) {
	bin := buildHello(t)
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{"health":"degraded"}`), 0o644)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ADDOND_CONFIG="+cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("standalone hello exited early: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("standalone hello after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("standalone hello ignored SIGTERM")
	}
}

func TestServeStandaloneRefusesBadConfig(t *testing.T) {
	bin := buildHello(t)
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{"configure_error":"bad target"}`), 0o644)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ADDOND_CONFIG="+cfg)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad target") {
		t.Fatalf("hello with a refused config: %v, %q; want exit 1 naming the reason", err, out)
	}
}
