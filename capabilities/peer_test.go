package capabilities

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// peerMain is a peer for the tests below (the test binary, run with
// ADDOND_PEER_HELPER set to a socket): it connects, says so, and exits.
func peerMain(sock string) int {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 2
	}
	c.Write([]byte("x"))
	return 0
}

// listen is a unix listener in a temporary directory.
func listen(t *testing.T) (*net.UnixListener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, sock
}

// spawnWithPID starts `sleep 30` as pid (via ns_last_pid; other forks may
// take it, so it tries again).
func spawnWithPID(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for attempt := 0; attempt < 200; attempt++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("ns_last_pid: %v", err)
		}
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			return cmd
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Fatalf("could not start a process as pid %d", pid)
	return nil
}

// identifyMain listens on sock, identifies its first peer and prints the
// Peer as JSON (or the error) — as the unprivileged user the test runs it
// as.
func identifyMain(sock string) int {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Println("listen:", err)
		return 2
	}
	os.Chmod(sock, 0o777)
	fmt.Println("listening")
	c, err := ln.AcceptUnix()
	if err != nil {
		fmt.Println("accept:", err)
		return 2
	}
	p, err := PeerOf(c)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	b, _ := json.Marshal(p)
	fmt.Println(string(b))
	c.Close()
	return 0
}

// TestPeerOfAnotherUser: an unprivileged identifier (the updater has no
// CAP_KILL; addond is not root) identifies a peer of another uid, which it
// may not signal. (Its liveness check once took that EPERM for an exited
// peer, and refused root — and every capped add-on — everywhere.)
func TestPeerOfAnotherUser(t *testing.T) {
	vmtest.RequireRoot(t, "to run the identifier as another user")
	dir := rootDir(t) // reachable by every user, unlike t.TempDir()
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "identifier")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sock"), 0o777)
	os.Chmod(filepath.Join(dir, "sock"), 0o777)
	sock := filepath.Join(dir, "sock", "s")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ADDOND_PEER_IDENTIFY="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	if line, _ := r.ReadString('\n'); line != "listening\n" {
		cmd.Wait()
		t.Fatalf("identifier: %q", line)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, _ := r.ReadString('\n')
	cmd.Wait()
	var p Peer
	if err := json.Unmarshal([]byte(line), &p); err != nil {
		t.Fatalf("identifier (uid 65534) of a root peer: %s", line)
	}
	if p.PID != os.Getpid() || p.UID != 0 || p.Cgroup == "" {
		t.Fatalf("identified %+v, want pid %d uid 0", p, os.Getpid())
	}
}

func TestPeerOf(t *testing.T) {
	own, _ := os.ReadFile("/proc/self/cgroup")
	for _, fallback := range []bool{false, true} {
		t.Run(map[bool]string{false: "SO_PEERPIDFD", true: "pidfd_open"}[fallback], func(t *testing.T) {
			noPeerPidfd = fallback
			defer func() { noPeerPidfd = false }()
			ln, sock := listen(t)
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.AcceptUnix()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			p, err := PeerOf(sc)
			if err != nil {
				t.Fatal(err)
			}
			if p.PID != os.Getpid() || p.UID != os.Getuid() || p.Cgroup != CgroupOf(own) || p.Cgroup == "" {
				t.Fatalf("PeerOf = %+v, want pid %d uid %d cgroup %q", p, os.Getpid(), os.Getuid(), CgroupOf(own))
			}
		})
	}
}

// TestPeerOfRefusesAReusedPid: the peer connected and exited, and another
// process now has its pid. Identifying the connection then must not judge
// that process: with SO_PEERPIDFD the pidfd names the exited peer; without
// it, the process holding the pid started after the connection was
// accepted.
func TestPeerOfRefusesAReusedPid(t *testing.T) {
	vmtest.RequireRoot(t, "to reuse a pid (ns_last_pid)")
	for _, fallback := range []bool{false, true} {
		t.Run(map[bool]string{false: "SO_PEERPIDFD", true: "pidfd_open"}[fallback], func(t *testing.T) {
			noPeerPidfd = fallback
			defer func() { noPeerPidfd = false }()
			ln, sock := listen(t)
			peer := exec.Command(os.Args[0])
			peer.Env = append(os.Environ(), "ADDOND_PEER_HELPER="+sock)
			if err := peer.Start(); err != nil {
				t.Fatal(err)
			}
			sc, err := ln.AcceptUnix()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			accepted, _ := bootTicks()
			bufio.NewReader(sc).ReadByte() // it connected
			pid := peer.Process.Pid
			peer.Wait()
			// The tick the connection was accepted in must be over before
			// the impostor starts (start times count in 10 ms ticks).
			for now, _ := bootTicks(); now <= accepted; now, _ = bootTicks() {
				time.Sleep(5 * time.Millisecond)
			}
			spawnWithPID(t, pid)
			p, err := peerAt(sc, accepted)
			if err == nil {
				t.Fatalf("identified the connection of exited pid %d as %+v, now another process's", pid, p)
			}
			want := map[bool]string{false: "exited", true: "reused"}[fallback]
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q, want it to say %q", err, want)
			}
			t.Logf("pid %d: %v", pid, err)
		})
	}
}
