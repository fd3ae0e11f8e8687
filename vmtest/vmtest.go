// Package vmtest is addond's test harness: miniotest runs a real MinIO,
// nspawn boots a real systemd in a container, vm boots a real Debian under
// QEMU and installs the packages, testsum prints `make test`'s summary. This
// package holds the one rule they share: `make test` provides every
// dependency (it sets ADDOND_TEST_STRICT=1), so there a missing dependency
// fails the test; elsewhere the test is skipped with the reason.
package vmtest

import (
	"os"
	"testing"
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
