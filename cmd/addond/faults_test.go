package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest/faultproxy"
	"github.com/addond/addond/vmtest/miniotest"
	"github.com/addond/addond/vmtest/nspawn"
)

// The store faults of the fault-injection suite (`make faults`): a real
// MinIO behind a fault proxy (vmtest/faultproxy) on the loopback, `addond
// run` with go-plugin sidecars as its children, the publisher writing to
// MinIO directly. Every case injects its fault while hello 1.0.0 runs and
// 2.0.0 (the same program padded to tens of MiB, so that a fault lands
// mid-body) is being delivered, then asserts the invariants of
// invariants_test.go: 1.0.0 keeps running as the same process, current
// points at a complete verified version, status names the fault, and once
// the fault is gone 2.0.0 arrives and no partial file remains.

// faultEnv is an env whose addond reaches MinIO only through a fault
// proxy.
type faultEnv struct {
	*env
	proxy *faultproxy.Proxy
	store store.Store       // MinIO directly, to replace objects under addond
	shas  map[string]string // id@version → the sha256 the publisher signed
	objs  map[string][]byte // id@version → the artifact's bytes
}

func newFaultEnv(t *testing.T) *faultEnv {
	e := newEnv(t, "s3")
	srv := miniotest.Require(t)
	p := faultproxy.Start(t, srv.Endpoint, "/artifacts/")
	proxied := strings.Replace(e.storeURL, "endpoint="+srv.Endpoint, "endpoint="+p.Addr(), 1)
	if proxied == e.storeURL {
		t.Fatalf("cannot point %s at the proxy", e.storeURL)
	}
	e.extra = map[string]any{"store": proxied, "download_retries": 2}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := store.Open(e.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	return &faultEnv{env: e, proxy: p, store: st, shas: map[string]string{}, objs: map[string][]byte{}}
}

// publishPadded publishes path's bytes followed by pad random bytes as
// id@version (an ELF binary runs with bytes appended) and records them.
func (f *faultEnv) publishPadded(id, version, path string, pad int) {
	f.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		f.t.Fatal(err)
	}
	tail := make([]byte, pad)
	rand.Read(tail)
	data = append(data, tail...)
	file := filepath.Join(f.t.TempDir(), id)
	os.WriteFile(file, data, 0o755)
	f.publishFile(id, version, file)
	sum := sha256.Sum256(data)
	f.shas[id+"@"+version] = hex.EncodeToString(sum[:])
	f.objs[id+"@"+version] = data
}

func (f *faultEnv) published(id, version string) string { return f.shas[id+"@"+version] }

// putObject replaces id@version's artifact in the store behind addond.
func (f *faultEnv) putObject(id, version string, data []byte) {
	f.t.Helper()
	key := "artifacts/" + id + "/" + version + "/linux-amd64/" + id
	if _, err := f.store.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		f.t.Fatalf("replace %s: %v", key, err)
	}
}

// partial is the size of id@version's partial download, -1 if none.
func (f *faultEnv) partial(id, version string) int64 {
	fi, err := os.Stat(filepath.Join(f.root, "tmp", id+"@"+version+".part"))
	if err != nil {
		return -1
	}
	return fi.Size()
}

// upgradeUnderFault starts addond with hello 1.0.0 running healthy,
// injects fault, assigns 2.0.0 and returns the daemon and hello's PID.
func (f *faultEnv) upgradeUnderFault(t *testing.T, fault *faultproxy.Fault, pad int) (*daemonProc, map[string]int) {
	t.Helper()
	hello := filepath.Join(bin, "hello")
	f.publishPadded("hello", "1.0.0", hello, 0)
	f.publishPadded("hello", "2.0.0", hello, pad)
	f.assign("hello@1.0.0")
	d, _ := f.startReady(t)
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	before := pids(t, d.client, "hello")
	if fault != nil {
		f.proxy.Inject(*fault)
	}
	f.assign("hello@2.0.0")
	return d, before
}

// stillOn waits until status names the fault (last_error contains every
// word) while hello 1.0.0 keeps running as the same process on its
// last-known-good, with current on the verified 1.0.0.
func (f *faultEnv) stillOn(t *testing.T, d *daemonProc, before map[string]int, words ...string) daemon.AddonStatus {
	t.Helper()
	a := d.waitAddon(t, "hello", 60*time.Second, "running 1.0.0 with the fault named ("+strings.Join(words, ", ")+")", func(a daemon.AddonStatus) bool {
		if a.State != "running" || a.ActiveVersion != "1.0.0" || a.Version != "2.0.0" || !a.FromLKG {
			return false
		}
		for _, w := range words {
			if !strings.Contains(a.LastError, w) {
				return false
			}
		}
		return true
	})
	samePIDs(t, d.client, before)
	if v := checkCurrent(t, f.root, "hello", f.published); v != "1.0.0" {
		t.Fatalf("current -> %s during the fault, want 1.0.0", v)
	}
	t.Logf("status during the fault: state %s, active %s, from_lkg %v, last_error %q", a.State, a.ActiveVersion, a.FromLKG, a.LastError)
	return a
}

// recovers waits, the fault gone, for 2.0.0 to be delivered, proved on
// probation and promoted, and checks the invariants.
func (f *faultEnv) recovers(t *testing.T, d *daemonProc, since time.Time) {
	t.Helper()
	d.waitAddon(t, "hello", 90*time.Second, "promoted to 2.0.0", func(a daemon.AddonStatus) bool {
		return runningHealthy("2.0.0")(a) && a.LastError == "" && !a.FromLKG
	})
	t.Logf("recovered %v after the fault was removed", time.Since(since).Round(100*time.Millisecond))
	if v := checkCurrent(t, f.root, "hello", f.published); v != "2.0.0" {
		t.Fatalf("current -> %s after recovery, want 2.0.0", v)
	}
	checkNoPartials(t, f.root)
}

func (d *daemonProc) logged(s string) bool {
	b, _ := os.ReadFile(d.log.Name())
	return strings.Contains(string(b), s)
}

// refusedLeavesNothing waits for a moment between attempts at which no
// partial file exists: a download refused by verification (or a full disk)
// removes its file — while the store still serves the bad bytes, addond
// retries at every poll, so a later attempt's file may be in flight.
func (f *faultEnv) refusedLeavesNothing(t *testing.T) {
	t.Helper()
	eventually(t, 20*time.Second, "free of partial files between attempts", func() bool { return len(partials(f.root)) == 0 })
}

// TestFaultStoreDownAtStart: addond restarts while the store is down. It
// reaches READY on the cached document, hello runs from its last-known-
// good and status says the store is unreachable; the store back, the
// document is fresh again and nothing restarts.
func TestFaultStoreDownAtStart(t *testing.T) {
	f := newFaultEnv(t)
	f.publishPadded("hello", "1.0.0", filepath.Join(bin, "hello"), 0)
	f.assign("hello@1.0.0")
	d, _ := f.startReady(t)
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	d.stop(t)

	f.proxy.Down()
	d, _ = f.startReady(t)
	a := d.waitAddon(t, "hello", 30*time.Second, "running from last-known-good", func(a daemon.AddonStatus) bool {
		return runningHealthy("1.0.0")(a) && a.FromLKG
	})
	st, err := d.client.Status(context.Background())
	if err != nil || !st.Ready || !strings.Contains(st.DocumentError, "connection refused") {
		t.Fatalf("store down: ready %v, document_error %q (%v); want READY and the refused connection named", st.Ready, st.DocumentError, err)
	}
	t.Logf("store down at start: document_error %q", st.DocumentError)
	checkCurrent(t, f.root, "hello", f.published)
	before := map[string]int{"hello": a.PID}

	f.proxy.Up(t)
	d.waitAddon(t, "hello", 30*time.Second, "confirmed by a fresh document", func(a daemon.AddonStatus) bool {
		return runningHealthy("1.0.0")(a) && !a.FromLKG
	})
	if st, _ := d.client.Status(context.Background()); st.DocumentError != "" {
		t.Fatalf("store back, document_error still %q", st.DocumentError)
	}
	samePIDs(t, d.client, before)
	checkNoPartials(t, f.root)
}

// TestFaultStoreDownMidDownload: the store goes away while 2.0.0 is half
// downloaded. 1.0.0 keeps running, the partial file is kept, and when the
// store is back the download resumes where it stopped.
func TestFaultStoreDownMidDownload(t *testing.T) {
	f := newFaultEnv(t)
	d, before := f.upgradeUnderFault(t, &faultproxy.Fault{Kind: faultproxy.Stall, Match: "/artifacts/hello/2.0.0/", After: 8 << 20}, 24<<20)
	eventually(t, 30*time.Second, "8 MiB of 2.0.0 on disk", func() bool { return f.partial("hello", "2.0.0") >= 8<<20 })
	f.proxy.Down()
	f.stillOn(t, d, before, "2.0.0", "connection refused", "kept to resume")
	if n := f.partial("hello", "2.0.0"); n < 8<<20 {
		t.Fatalf("the partial download was not kept for resuming (%d bytes)", n)
	}
	f.proxy.Clear()
	f.proxy.Up(t)
	f.recovers(t, d, time.Now())
	if !d.logged("resuming download") {
		t.Fatal("the download started again from zero instead of resuming")
	}
}

// TestFaultConnectionResetMidBody: every connection for 2.0.0's body is
// reset after 4 MiB. The add-on's error names it; once the connections
// hold, the download resumes with a Range request.
func TestFaultConnectionResetMidBody(t *testing.T) {
	f := newFaultEnv(t)
	d, before := f.upgradeUnderFault(t, &faultproxy.Fault{Kind: faultproxy.Cut, Match: "/artifacts/hello/2.0.0/", After: 4 << 20}, 24<<20)
	f.stillOn(t, d, before, "2.0.0", "connection reset", "kept to resume")
	f.proxy.Clear()
	f.recovers(t, d, time.Now())
	if !d.logged("resuming download") {
		t.Fatal("the download did not resume after the resets")
	}
}

// TestFaultBitFlip: one bit of 2.0.0's body is flipped in transit. The
// streaming verification refuses it, nothing of it is kept, 1.0.0 runs on;
// with the bytes intact again it arrives.
func TestFaultBitFlip(t *testing.T) {
	f := newFaultEnv(t)
	d, before := f.upgradeUnderFault(t, &faultproxy.Fault{Kind: faultproxy.Flip, Match: "/artifacts/hello/2.0.0/", After: 5 << 20}, 8<<20)
	f.stillOn(t, d, before, "2.0.0", "sha256 mismatch")
	f.refusedLeavesNothing(t)
	if _, err := os.Stat(filepath.Join(f.root, "addons", "hello", "versions", "2.0.0")); err == nil {
		t.Fatal("a version that failed verification has a directory under versions/")
	}
	f.proxy.Clear()
	f.recovers(t, d, time.Now())
}

// TestFaultObjectReplacedBetweenRanges: the connection is cut mid-body,
// and before the download resumes the object is replaced (its ETag
// changes). The resumed range is refused by If-Match, the download starts
// again from zero, and the new bytes fail verification against the signed
// sha256 — never a splice of two objects. The original back, it arrives.
func TestFaultObjectReplacedBetweenRanges(t *testing.T) {
	f := newFaultEnv(t)
	f.extra["download_retries"] = 8
	unavailable := &faultproxy.Fault{Kind: faultproxy.Status, Match: "/artifacts/hello/2.0.0/", Code: 503}
	d, before := f.upgradeUnderFault(t, &faultproxy.Fault{Kind: faultproxy.Cut, Match: "/artifacts/hello/2.0.0/", After: 4 << 20, Times: 1, Then: unavailable}, 24<<20)
	eventually(t, 30*time.Second, "the first range cut", func() bool { return d.logged("download interrupted, retrying") })
	other := make([]byte, len(f.objs["hello@2.0.0"]))
	rand.Read(other)
	f.putObject("hello", "2.0.0", other)
	f.proxy.Clear()
	f.stillOn(t, d, before, "2.0.0", "sha256 mismatch")
	if !d.logged("download starts again from zero") {
		t.Fatal("the changed object was not detected between ranges")
	}
	f.refusedLeavesNothing(t)
	f.putObject("hello", "2.0.0", f.objs["hello@2.0.0"])
	f.recovers(t, d, time.Now())
}

// TestFaultDiskFull: the runtime root's file system fills up while 2.0.0
// is being written. The download fails naming the full disk and removes
// its partial file, state stays intact, 1.0.0 runs on; with a full disk
// the next attempt is refused before a byte is written; with space again
// 2.0.0 arrives.
func TestFaultDiskFull(t *testing.T) {
	f := newFaultEnv(t)
	if err := os.MkdirAll(f.root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", f.root).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs as the runtime root (needs root): %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", f.root).Run() }) // after addond stops
	d, before := f.upgradeUnderFault(t, &faultproxy.Fault{Kind: faultproxy.Stall, Match: "/artifacts/hello/2.0.0/", After: 1 << 20}, 4<<20)
	eventually(t, 30*time.Second, "1 MiB of 2.0.0 on disk", func() bool { return f.partial("hello", "2.0.0") >= 1<<20 })

	// Fill the file system but for 512 KiB, then let the body flow.
	var fs unix.Statfs_t
	if err := unix.Statfs(f.root, &fs); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(f.root, "filler")
	if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(int64(fs.Bavail)*fs.Bsize-512<<10, 10), filler).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v\n%s", err, out)
	}
	f.proxy.Clear()
	// The write that fills the disk fails as "disk full"; within a second
	// the next attempt's refusal ("not enough free space", below) replaces
	// it in the status, so a busy machine's status polls can miss it: the
	// log keeps it.
	eventually(t, 60*time.Second, "the write that filled the disk logged as disk full", func() bool {
		return d.logged("disk full writing")
	})
	f.stillOn(t, d, before, "2.0.0")
	f.refusedLeavesNothing(t)
	// The next attempts are refused before writing.
	f.stillOn(t, d, before, "2.0.0", "not enough free space")
	f.refusedLeavesNothing(t)

	os.Remove(filler)
	f.recovers(t, d, time.Now())
}

// TestFaultManyAddons: 200 add-ons are assigned at once to an addond whose
// max_concurrent_downloads is 4, in a booted Debian with each add-on a
// service unit, the store a real MinIO behind the fault proxy (which
// delays every artifact request by 100 ms, so downloads overlap). Never
// more than 4 artifact requests are in flight; all 200 come up healthy,
// each unit's MainPID the PID status reports; an add-on that ran before
// keeps its process; every current is verified; nothing partial is left.
func TestFaultManyAddons(t *testing.T) {
	const n, limit = 200, 4
	if !nspawn.InMachine() {
		srv := miniotest.Require(t)
		bucket := srv.NewBucket(t)
		name := strings.TrimPrefix(bucket[:strings.Index(bucket, "?")], "s3://")
		e := newEnv(t, "file")
		nspawn.RunTest(t, nspawn.RunOptions{
			Files:   []string{filepath.Join(bin, "addond"), filepath.Join(bin, "addonctl")},
			Dirs:    map[string]string{filepath.Join(e.dir, "keys"): "/srv/keys"},
			Setup:   "chown -R addond:addond /srv/keys",
			Env:     append(srv.Env(), "ADDOND_FAULT_MINIO="+srv.Endpoint, "ADDOND_FAULT_BUCKET="+name),
			Timeout: 6 * time.Minute,
		})
		return
	}
	endpoint, bucket := os.Getenv("ADDOND_FAULT_MINIO"), os.Getenv("ADDOND_FAULT_BUCKET")
	direct := "s3://" + bucket + "?endpoint=" + endpoint + "&insecure=true"
	p := faultproxy.Start(t, endpoint, "/artifacts/")
	proxied := "s3://" + bucket + "?endpoint=" + p.Addr() + "&insecure=true"

	// Publish n+1 small service add-ons (8 publishers at a time).
	ids := make([]string, n+1)
	shas := map[string]string{}
	dir := t.TempDir()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	errs := make(chan error, n+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("m%03d", i)
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			script := []byte("#!/bin/sh\n# add-on " + id + "\nexec sleep infinity\n")
			path := filepath.Join(dir, id)
			os.WriteFile(path, script, 0o755)
			out, err := exec.Command(filepath.Join(bin, "addonctl"), "publish", "--store", direct, "--key", faultKey,
				"--id", id, "--version", "1.0.0", "--supervision", "systemd_service", "linux/amd64="+path).CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("publish %s: %v\n%s", id, err, out)
			}
			sum := sha256.Sum256(script)
			mu.Lock()
			shas[id] = hex.EncodeToString(sum[:])
			mu.Unlock()
		}(ids[i])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	assign := func(ids ...string) {
		t.Helper()
		args := []string{"assign", "--store", direct, "--agent", "many", "--key", faultKey}
		for _, id := range ids {
			args = append(args, "--addon", id+"@1.0.0", "--supervision", id+"=systemd_service")
		}
		if out, err := exec.Command(filepath.Join(bin, "addonctl"), args...).CombinedOutput(); err != nil {
			t.Fatalf("addonctl assign: %v\n%s", err, out)
		}
	}

	f := newFaultAgent(t, "many", map[string]any{"store": proxied, "max_concurrent_downloads": limit, "probation": "60s"})
	keeper := ids[n]
	assign(keeper)
	d := f.start()
	d.waitAddon(t, keeper, 30*time.Second, "running", runningHealthy("1.0.0"))
	before := f.unitPIDs(d.client, keeper)

	p.Inject(faultproxy.Fault{Kind: faultproxy.Delay, Match: "/artifacts/", Wait: 100 * time.Millisecond})
	assign(ids...)
	start := time.Now()
	d.client.Reconcile(context.Background())
	var st *daemon.Status
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var err error
		st, err = d.client.Status(context.Background())
		healthy := 0
		if err == nil {
			for _, a := range st.Addons {
				if runningHealthy("1.0.0")(a) {
					healthy++
				}
			}
		}
		if healthy == n+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d add-ons running healthy after %v (%v)", healthy, n+1, time.Since(start), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	took := time.Since(start)
	p.Clear()
	if got := p.MaxInFlight("/artifacts/"); got > limit || got < 2 {
		t.Fatalf("at most %d artifact requests were in flight at once; want between 2 and the limit %d", got, limit)
	}
	if got := p.Count("/artifacts/"); got < n {
		t.Fatalf("%d artifact requests for %d add-ons", got, n)
	}
	f.sameUnitPIDs(d.client, before)
	all := f.unitPIDs(d.client, ids...)
	distinct := map[int]bool{}
	for _, pid := range all {
		distinct[pid] = true
	}
	if len(distinct) != n+1 {
		t.Fatalf("%d distinct PIDs for %d add-ons", len(distinct), n+1)
	}
	published := func(id, version string) string { return shas[id] }
	for _, id := range ids {
		checkCurrent(t, f.root, id, published)
	}
	checkNoPartials(t, f.root)
	q := time.Now()
	if _, err := d.client.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d add-ons assigned at once: all running healthy after %v; at most %d of %d artifact requests in flight (%d requests); "+
		"addond VmRSS %d KiB, VmHWM %d KiB; a status of %d add-ons in %v",
		n, took.Round(100*time.Millisecond), p.MaxInFlight("/artifacts/"), limit, p.Count("/artifacts/"),
		procStatusKB(t, d.cmd.Process.Pid, "VmRSS"), procStatusKB(t, d.cmd.Process.Pid, "VmHWM"), len(st.Addons), time.Since(q).Round(time.Millisecond))
}

// TestFaultRemovedWhileDownloading: an add-on is removed from the
// assignment while its artifact is still arriving (the body stalls in the
// fault proxy). When the download ends late, nothing of the add-on is left
// behind, and addond is not left thinking a download is in flight: a
// configuration reload — which waits for downloads — still takes effect.
func TestFaultRemovedWhileDownloading(t *testing.T) {
	f := newFaultEnv(t)
	hello := filepath.Join(bin, "hello")
	f.publishPadded("hello", "1.0.0", hello, 0)
	f.publishPadded("late", "1.0.0", hello, 8<<20)
	f.assign("hello@1.0.0")
	d, notify := f.startReady(t)
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	before := pids(t, d.client, "hello")

	f.proxy.Inject(faultproxy.Fault{Kind: faultproxy.Stall, Match: "/artifacts/late/", After: 2 << 20})
	f.assign("hello@1.0.0", "late@1.0.0")
	eventually(t, 30*time.Second, "2 MiB of late on disk", func() bool { return f.partial("late", "1.0.0") >= 2<<20 })
	f.assign("hello@1.0.0")
	eventually(t, 30*time.Second, "late gone from status", func() bool {
		st, err := d.client.Status(context.Background())
		if err != nil {
			return false
		}
		for _, a := range st.Addons {
			if a.AddonID == "late" {
				return false
			}
		}
		return true
	})
	// The removal cancelled the stalled download; the line comes once
	// what it wrote is gone (TestRemovedWhileStaging in daemon/ orders a
	// finished staging's result after the removal, deterministically).
	f.proxy.Clear()
	eventually(t, 30*time.Second, "the late staging discarded", func() bool { return d.logged("discarded a version staged for an add-on no longer assigned") })
	if _, err := os.Stat(filepath.Join(f.root, "addons", "late")); err == nil {
		t.Fatal("addons/late was left behind (or made anew) by a download that ended after its removal")
	}
	checkNoPartials(t, f.root)

	ov := filepath.Join(f.dir, "addons.local.json")
	os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"hello","enabled":false}]}`), 0o644)
	f.extra["local_overrides"] = ov
	f.writeConfig(map[string]any{"status_socket": d.socket, "systemd": map[string]string{"manager": "none"}, "poll_interval": "1s", "probation": "3s"})
	drain(notify)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitAddon(t, "hello", 15*time.Second, "disabled by the reloaded config", func(a daemon.AddonStatus) bool { return a.State == "disabled" })
	if alive(before["hello"]) {
		t.Fatalf("hello's process %d outlived its disabling", before["hello"])
	}
}

// TestFaultNotifySocketNotRead: the service manager stops reading addond's
// notifications (its socket's queue fills up) while the watchdog keeps
// addond sending. addond's loop must not hang on it: status still answers,
// a reconcile still applies a new assignment, and SIGTERM still stops it.
func TestFaultNotifySocketNotRead(t *testing.T) {
	f := newFaultEnv(t)
	f.publishPadded("hello", "1.0.0", filepath.Join(bin, "hello"), 0)
	f.publishPadded("hello", "1.1.0", filepath.Join(bin, "hello"), 0)
	f.assign("hello@1.0.0")
	path := filepath.Join(t.TempDir(), "notify.sock")
	deaf, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.Close() // never read
	sock := filepath.Join(f.dir, "addond.sock")
	f.writeConfig(map[string]any{"status_socket": sock, "systemd": map[string]string{"manager": "none"}, "poll_interval": "1s", "probation": "3s"})
	cmd := exec.Command(filepath.Join(bin, "addond"), "run", "--config", f.config)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+path, "WATCHDOG_USEC=100000")
	logf, _ := os.Create(filepath.Join(f.dir, "run.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, log: logf, socket: sock, client: daemon.NewClient(sock)}
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("addond log:\n%s", b)
		}
	})
	d.waitAddon(t, "hello", 30*time.Second, "running healthy", runningHealthy("1.0.0"))
	time.Sleep(3 * time.Second) // 60 watchdog messages: the socket's queue is long full
	q := time.Now()
	if _, err := d.client.Status(context.Background()); err != nil || time.Since(q) > 2*time.Second {
		t.Fatalf("status with the notification socket full: %v after %v", err, time.Since(q))
	}
	f.assign("hello@1.1.0")
	d.waitAddon(t, "hello", 60*time.Second, "running 1.1.0", runningHealthy("1.1.0"))
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("addond after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("addond did not stop within 10s of SIGTERM with its notification socket full")
	}
	if !d.logged("sd_notify") {
		t.Fatal("the lost notifications were not logged")
	}
	checkCurrent(t, f.root, "hello", f.published)
	checkNoPartials(t, f.root)
}
