//go:build faultinject

package delivery

import (
	"os"
	"syscall"
)

// Test builds (-tags faultinject) kill the process with SIGKILL at the
// fault point named by $ADDOND_FAULT, to prove crash consistency.
const faultsEnabled = true

// FaultPoint kills addond with SIGKILL when $ADDOND_FAULT names it. The
// points: download-partial, after-rename, before-swap, after-swap (staging
// and activation), rollback-marked and rollback-activated (a rollback,
// after the failed version is recorded and after current is swapped back).
func FaultPoint(name string) {
	if os.Getenv("ADDOND_FAULT") == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
