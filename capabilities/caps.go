// Package capabilities is addond-updater's trusted code: Linux capability
// names and sets, the security.capability extended attribute (encoded here,
// written on an open file descriptor — no setcap, no libcap), the policy
// of which capabilities may ever be granted, the signed package a grant
// must come from, the apply operation itself, and the updater's protocol
// (server and the small client addond uses).
//
// It runs as root on behalf of an unprivileged agent, so it is written as
// if that agent were compromised, and it imports nothing of daemon/ or
// supervisors/.
package capabilities

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Cap is a Linux capability: its bit number.
type Cap uint

// names are the capabilities by bit number (linux/capability.h).
var names = [...]string{
	"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
	"ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
	"sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
	"lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
	"wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
}

// Last is the highest capability this code knows.
const Last = Cap(len(names) - 1)

// String is the capability's name as getcap prints it: "cap_net_raw".
func (c Cap) String() string {
	if c > Last {
		return fmt.Sprintf("cap_%d", uint(c))
	}
	return "cap_" + names[c]
}

// Parse reads a capability name, in any case, with or without the
// "cap_" prefix: "cap_net_raw", "CAP_NET_RAW", "net_raw".
func Parse(name string) (Cap, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "cap_")
	if i := slices.Index(names[:], n); i >= 0 {
		return Cap(i), nil
	}
	return 0, fmt.Errorf("unknown capability %q", name)
}

// Set is a set of capabilities.
type Set uint64

// ParseSet reads capability names; an unknown one is an error naming it.
func ParseSet(list []string) (Set, error) {
	var s Set
	for _, n := range list {
		c, err := Parse(n)
		if err != nil {
			return 0, err
		}
		s = s.Add(c)
	}
	return s, nil
}

// Add returns s with c.
func (s Set) Add(c Cap) Set { return s | 1<<c }

// Has reports whether c is in s.
func (s Set) Has(c Cap) bool { return c <= 63 && s&(1<<c) != 0 }

// Caps lists s in bit order.
func (s Set) Caps() []Cap {
	var out []Cap
	for v := uint64(s); v != 0; v &= v - 1 {
		out = append(out, Cap(bits.TrailingZeros64(v)))
	}
	return out
}

// Names lists s's names in bit order.
func (s Set) Names() []string {
	var out []string
	for _, c := range s.Caps() {
		out = append(out, c.String())
	}
	return out
}

// String is s as a comma-separated list ("" when empty).
func (s Set) String() string { return strings.Join(s.Names(), ",") }
