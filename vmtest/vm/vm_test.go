package vm

import (
	"os"
	"strconv"
	"testing"
)

func TestMain(m *testing.M) {
	if n, err := strconv.Atoi(os.Getenv("ADDOND_PTRACE_ROUNDS")); err == nil {
		os.Exit(ptraceAttack(n)) // run by ptraceRaceStep as the addond user
	}
	code := m.Run()
	for _, d := range tmpDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}
