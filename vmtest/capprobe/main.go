// Command capprobe is a test add-on that runs capped (granted cap_net_raw)
// and tries what no capped add-on may: signal, trace or read addond, write
// under its runtime root, reach its user manager's bus, move itself into
// addond's cgroup. It writes what happened as JSON to sock/report.json in
// its runtime directory (the one place it and addond share), then stays up.
//
// Its configuration: {"addond_pid": N, "runtime_root": DIR, "user_bus":
// PATH, "agent_cgroup": PATH}.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type config struct {
	AddondPID   int    `json:"addond_pid"`
	RuntimeRoot string `json:"runtime_root"`
	UserBus     string `json:"user_bus"`
	AgentCgroup string `json:"agent_cgroup"`
}

// outcome is "allowed" or what refused it.
func outcome(err error) string {
	if err == nil {
		return "allowed"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return "denied: " + unix.ErrnoName(errno)
	}
	return "denied: " + err.Error()
}

func main() {
	cfgPath := os.Getenv("ADDOND_CONFIG")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "capprobe:", err)
		os.Exit(1)
	}
	var cfg config
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.AddondPID <= 0 {
		fmt.Fprintln(os.Stderr, "capprobe: configuration:", err)
		os.Exit(1)
	}
	report := map[string]string{
		"uid": strconv.Itoa(os.Getuid()),
		"gid": strconv.Itoa(os.Getgid()),
	}
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"} {
			if v, ok := strings.CutPrefix(line, k+":\t"); ok {
				report[k] = v
			}
		}
	}
	// The grant works: a raw ICMP socket.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err == nil {
		unix.Close(fd)
	}
	report["raw_socket"] = outcome(err)

	report["kill"] = outcome(unix.Kill(cfg.AddondPID, 0))
	err = unix.PtraceAttach(cfg.AddondPID)
	if err == nil {
		unix.PtraceDetach(cfg.AddondPID)
	}
	report["ptrace_attach"] = outcome(err)
	err = unix.PtraceSeize(cfg.AddondPID)
	if err == nil {
		unix.PtraceDetach(cfg.AddondPID)
	}
	report["ptrace_seize"] = outcome(err)
	_, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", cfg.AddondPID))
	report["read_environ"] = outcome(err)
	f, err := os.OpenFile(filepath.Join(cfg.RuntimeRoot, "capprobe-was-here"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		f.Close()
	}
	report["write_runtime_root"] = outcome(err)
	_, err = os.ReadDir(cfg.RuntimeRoot)
	report["read_runtime_root"] = outcome(err)
	fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: cfg.UserBus})
		unix.Close(fd)
	}
	report["user_bus"] = outcome(err)
	// Into addond's cgroup, and a sub-cgroup of its own (to escape its
	// limits): the cgroup tree is read-only.
	// (The unified hierarchy is /sys/fs/cgroup/unified on a hybrid host.)
	tree := "/sys/fs/cgroup"
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
		tree = "/sys/fs/cgroup/unified"
	}
	err = os.WriteFile(filepath.Join(tree, cfg.AgentCgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	report["cgroup_procs"] = outcome(err)
	own, _ := os.ReadFile("/proc/self/cgroup")
	var ownPath string
	for _, line := range strings.Split(string(own), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			ownPath = p
		}
	}
	report["cgroup_mkdir"] = outcome(os.Mkdir(filepath.Join(tree, ownPath, "escape"), 0o755))
	_, err = os.ReadFile("/run/addond-updater.sock")
	if _, serr := os.Stat("/run/addond-updater.sock"); serr != nil {
		err = serr
	}
	report["updater_socket"] = outcome(err)

	data, _ := json.MarshalIndent(report, "", "  ")
	out := filepath.Join(filepath.Dir(cfgPath), "sock", "report.json")
	if err := os.WriteFile(out+".tmp", data, 0o640); err != nil {
		fmt.Fprintln(os.Stderr, "capprobe:", err)
		os.Exit(1)
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		fmt.Fprintln(os.Stderr, "capprobe:", err)
		os.Exit(1)
	}
	fmt.Printf("capprobe: %s\n", data)
	for { // a service stays up
		time.Sleep(time.Hour)
	}
}
