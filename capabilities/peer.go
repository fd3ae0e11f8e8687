package capabilities

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a unix socket, as the kernel
// names it, and the cgroup it was in when the connection was accepted.
type Peer struct {
	PID, UID, GID int
	Cgroup        string
}

// PeerOf identifies the peer of c once, right after it was accepted:
// everything a server decides about a connection is decided from this,
// never by reading /proc/<pid> again later — by then the peer may have
// exited and its PID been reused by an unrelated process.
//
// The pid the kernel recorded at connect is pinned with a pidfd first:
// SO_PEERPIDFD (Linux 6.5) names the very process that connected; on older
// kernels pidfd_open of the SO_PEERCRED pid, refused when that process
// started after the connection was accepted (a reused pid). Its cgroup is
// then read from /proc, and the pidfd proves the process was alive — so
// its pid not reused — throughout the read.
func PeerOf(c *net.UnixConn) (Peer, error) {
	accepted, err := bootTicks()
	if err != nil {
		return Peer{}, err
	}
	return peerAt(c, accepted)
}

// noPeerPidfd makes peerAt ignore SO_PEERPIDFD (tests of older kernels).
var noPeerPidfd = false

// peerAt is PeerOf for a connection accepted at boot tick accepted.
func peerAt(c *net.UnixConn, accepted uint64) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var (
		cred   *unix.Ucred
		pidfd  = -1
		cerr   error
		direct bool
	)
	raw.Control(func(fd uintptr) {
		if cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); cerr != nil {
			return
		}
		if n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			if noPeerPidfd {
				unix.Close(n)
				return
			}
			pidfd, direct = n, true
		}
	})
	if cerr != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", cerr)
	}
	p := Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
	if p.PID <= 0 {
		return p, errors.New("peer credentials: no pid")
	}
	if !direct {
		if pidfd, err = unix.PidfdOpen(p.PID, 0); err != nil {
			return p, fmt.Errorf("peer pid %d: %w", p.PID, err)
		}
	}
	defer unix.Close(pidfd)
	if !direct {
		started, err := startTicks(p.PID)
		if err != nil {
			return p, fmt.Errorf("peer pid %d: %w", p.PID, err)
		}
		if started > accepted {
			return p, fmt.Errorf("peer pid %d started after the connection was accepted: the peer exited and its pid was reused", p.PID)
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID))
	if err != nil {
		return p, fmt.Errorf("peer pid %d: %w", p.PID, err)
	}
	// Still the same process: the cgroup read was its own. (EPERM: alive,
	// under a uid this process may not signal.)
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return p, fmt.Errorf("peer pid %d exited while it was identified: %w", p.PID, err)
	}
	p.Cgroup = CgroupOf(data)
	return p, nil
}

// bootTicks is the time since boot in clock ticks (the unit of a
// process's start time in /proc/<pid>/stat).
func bootTicks() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Nano()) / (1e9 / clockTicks), nil
}

// clockTicks is the kernel's USER_HZ: 100 on every Linux architecture
// addond is built for.
const clockTicks = 100

// startTicks is when process pid started, in clock ticks since boot.
func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces and parentheses: fields follow the last
	// ')'; starttime is field 22, the 20th after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unreadable stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("unreadable stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}
