// Package vmtest is addond's test harness: miniotest runs a real MinIO,
// nspawn boots a real systemd in a container, vm boots a real Debian under
// QEMU and installs the packages, testsum prints `make test`'s summary. This
// package holds the one rule they share: `make test` provides every
// dependency (it sets ADDOND_TEST_STRICT=1), so there a missing dependency
// fails the test; elsewhere the test is skipped with the reason.
package vmtest

import (
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
