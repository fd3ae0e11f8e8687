// Package vmtest is addond's test harness: miniotest runs a real MinIO,
// nspawn boots a real systemd in a container, vm boots a real Debian under
// QEMU and installs the packages, testsum prints `make test`'s summary. This
// package holds the one rule they share: `make test` provides every
// dependency (it sets ADDOND_TEST_STRICT=1), so there a missing dependency
// fails the test; elsewhere the test is skipped with the reason.
package vmtest

import (
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// Unavailable fails (under `make test`) or skips t because what it needs
// is not here.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("ADDOND_TEST_STRICT") == "1" {
		t.Fatal(reason)
	}
	t.Skip(reason)
}

// RequireRoot stops t unless it runs as root; why says what for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root ("+why+")")
	}
}

// Eventually polls cond every 20 ms until it holds, failing t after
// timeout: tests wait for the state they assert, never for a fixed time.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v", what, timeout)
		}
	}
}

// Goroutines waits until at most n goroutines run in this process,
// failing t with every goroutine's stack after 5 s.
func Goroutines(t testing.TB, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
	}
}

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago, for a
// server a test starts.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitListening waits until addr accepts connections, for a server
// process whose Wait result arrives on exited (and is put back for its
// cleanup). t fails when the process exits first or timeout passes;
// report says what to print with the failure (its configuration, its
// logs).
func WaitListening(t testing.TB, name, addr string, timeout time.Duration, exited chan error, report func() string) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited: %v\n%s", name, err, report())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after %v\n%s", name, addr, timeout, report())
		}
	}
}
