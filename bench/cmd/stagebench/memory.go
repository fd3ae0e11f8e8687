package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// warmMemory touches n bytes of fresh anonymous memory and frees it again
// right away, so that the next run's allocations (page cache for the file
// it writes, heap for the methods that hold the artifact) get pages the
// hypervisor has backed. On a VM with virtio-balloon free page reporting
// (as on the machines this was written on), memory the guest freed is
// handed back to the host after a couple of seconds, and the first touch
// of such a page costs a host fault: copying 1 GiB into the page cache then
// takes anything from 0.2 s to 2 s of system time, run to run, depending on
// how many of the pages it gets were handed back. Without this step that
// noise lands on whichever method happens to run on cold pages.
//
// n is capped so that at least 2 GiB stay available.
func warmMemory(n int64) error {
	if avail := memAvailable(); avail > 0 {
		n = min(n, avail-2<<30)
	}
	if n <= 0 {
		return nil
	}
	m, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	pageSize := os.Getpagesize()
	for i := 0; i < len(m); i += pageSize {
		m[i] = 1
	}
	return syscall.Munmap(m)
}

// memAvailable is MemAvailable from /proc/meminfo in bytes (0 if unknown).
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
