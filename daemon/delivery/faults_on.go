//go:build faultinject

package delivery

import (
	"os"
	"syscall"
)

// Test builds (-tags faultinject) kill the process with SIGKILL at the
// fault point named by $ADDOND_FAULT, to prove crash consistency.
const faultsEnabled = true

func faultPoint(name string) {
	if os.Getenv("ADDOND_FAULT") == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
