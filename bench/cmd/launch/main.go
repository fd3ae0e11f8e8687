// Command launch runs one program and records its wall time and rusage
// (peak RSS, user and system CPU) in a file, for stagebench.
//
// It exists because of how Linux accounts peak RSS: a child that the Go
// runtime starts shares its parent's address space until it execs (vfork),
// and exec folds that address space's high-water RSS into the child's
// ru_maxrss. Started straight from stagebench, every program would read at
// least stagebench's own peak. launch is small and does nothing else, so
// the floor it leaves is a Go runtime's idle footprint; stagebench measures
// that floor (launch running /bin/true) and prints it.
//
// Usage: launch -out FILE PROGRAM [ARG...]
//
// FILE gets one line, "wall_ns maxrss_kib user_ns sys_ns exit_code".
// launch exits with the program's exit code (1 if it died of a signal).
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 4 || os.Args[1] != "-out" {
		fmt.Fprintln(os.Stderr, "usage: launch -out FILE PROGRAM [ARG...]")
		os.Exit(2)
	}
	out, args := os.Args[2], os.Args[3:]
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(1)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	code := cmd.ProcessState.ExitCode()
	if code < 0 {
		code = 1
	}
	line := fmt.Sprintf("%d %d %d %d %d\n", wall.Nanoseconds(), ru.Maxrss,
		syscall.TimevalToNsec(ru.Utime), syscall.TimevalToNsec(ru.Stime), code)
	if err := os.WriteFile(out, []byte(line), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(1)
	}
	os.Exit(code)
}
