package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/vmtest/faultproxy"
	"github.com/addond/addond/vmtest/miniotest"
)

// TestSoak runs `addond run` (manager "none": sidecars are its children)
// against a real MinIO behind vmtest/faultproxy for ADDOND_SOAK_DURATION
// (default 45s, so that it runs in `make test`), and applies at random —
// seeded; the seed is logged and ADDOND_SOAK_SEED replays it —
//
//   - assignment churn over a pool of six add-ons with two or three
//     published versions each (1.0.0 and 1.1.0 are the hello example; 1.2.0
//     of some is a script that exits at once, so its probation ends in a
//     rollback): add-ons added and removed, versions changed, disabled and
//     enabled, then a reconcile asked for (status API or `addonctl
//     reconcile`); every document allows downgrades, since going back from
//     a rolled-back 1.2.0 is part of the churn;
//   - add-on crashes: kill -9 of a running add-on's PID (from status);
//   - store outages: the proxy down for a few seconds, then up; and Cut or
//     Flip faults on artifact downloads.
//
// Before the churn, once the initial assignment has converged and settled,
// it measures addond's resident memory, goroutines and open fds (from its
// /metrics: process_resident_memory_bytes, go_goroutines,
// process_open_fds; the minimum of several samples, since nothing from
// outside can force a GC). At the end it goes back to exactly the initial
// assignment with the store up, waits for convergence, lets it settle and
// measures again. The goroutine and fd counts do not depend on the heap:
// they must come back within 10 % of the start, or within an absolute
// slack of 5 goroutines and 2 fds, since the counts are small and a
// connection being served or closed (the metrics scrape itself, a status
// request, an idle connection to the store that the HTTP transport keeps
// or has just dropped) moves them by one or two. Resident memory depends on
// the Go heap and on how much of it the runtime has handed back to the
// system: it must also be within 10 % of the start — but under the race
// detector (make test), where the detector's shadow memory dominates and
// only grows, the Go heap in use must be (with 2 MiB of slack for garbage
// not yet collected). Then every invariant
// holds: each assigned add-on runs healthy on its expected version,
// current is complete and verified (checkCurrent), no partial file is left
// (checkNoPartials), addond's children are exactly the running add-ons, no
// process of a removed add-on is left, no directory of one either, a
// reloaded config (SIGHUP) still takes effect, and stopping addond stops
// its sidecars.
//
// The long run (the lead's `make soak`):
//
//	ADDOND_SOAK_DURATION=10m ADDOND_TEST_STRICT=1 go test -count=1 -timeout 30m -run '^TestSoak$' -v ./cmd/addond/
//
// It logs one summary line starting "soak summary:" with the figures.
func TestSoak(t *testing.T) {
	duration := 45 * time.Second
	if v := os.Getenv("ADDOND_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("ADDOND_SOAK_DURATION=%q: want a positive Go duration", v)
		}
		duration = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ADDOND_SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ADDOND_SOAK_SEED=%q: %v", v, err)
		}
		seed = s
	}
	t.Logf("soak: seed %d (replay with ADDOND_SOAK_SEED=%d), duration %v", seed, seed, duration)

	s := newSoak(t, seed)
	s.run(duration)
}

// soakIDs is the pool of add-ons; the ones with a crash version have
// 1.2.0, a script that exits before go-plugin's handshake.
var (
	soakIDs       = []string{"soak0", "soak1", "soak2", "soak3", "soak4", "soak5"}
	soakCrashVers = map[string]bool{"soak0": true, "soak2": true, "soak4": true}
)

const soakCrash = "1.2.0"

// soakWant is one add-on of an assignment.
type soakWant struct {
	version string
	enabled bool
}

type soakFigures struct {
	rss, heap       int64
	anon, file      int64 // RssAnon and RssFile of /proc/<pid>/status
	goroutines, fds int
	fdTargets       []string
}

type soak struct {
	t       *testing.T
	e       *env
	rng     *rand.Rand
	proxy   *faultproxy.Proxy
	d       *daemonProc
	pid     int
	hc      *http.Client // status socket, no keep-alive: no idle connection skews the fd count
	metrics string
	sums    map[string]string // id@version → published sha256
	initial map[string]soakWant
	desired map[string]soakWant
	serial  uint64
	log     *os.File

	seed                                                  uint64
	steps, crashes, outages, faults, faultHits, rollbacks int
}

func newSoak(t *testing.T, seed uint64) *soak {
	e := newEnv(t, "s3")
	e.extraEnv = append(e.extraEnv, "GOTRACEBACK=all") // for fatalf's dump
	srv := miniotest.Require(t)
	proxy := faultproxy.Start(t, srv.Endpoint, "/artifacts/", "/agents/")
	// addond reaches the store through the proxy; the publisher (addonctl)
	// writes to MinIO directly, so publishing works during an outage.
	proxyURL := strings.Replace(e.storeURL, "endpoint="+srv.Endpoint, "endpoint="+proxy.Addr(), 1)
	if proxyURL == e.storeURL {
		t.Fatalf("store URL %s does not name MinIO's endpoint %s", e.storeURL, srv.Endpoint)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	e.extra = map[string]any{
		"store":           proxyURL,
		"metrics_address": metricsAddr,
		// Longer than startDaemon's 3s: a healthy hello must never fail
		// probation because two busy cores started it slowly. The crash
		// version is rolled back on its third restart, long before.
		"probation": "15s",
	}

	s := &soak{
		t: t, e: e, rng: rand.New(rand.NewPCG(seed, seed^0x50a4)), proxy: proxy,
		metrics: "http://" + metricsAddr + "/metrics",
		sums:    map[string]string{}, seed: seed,
	}
	s.log, err = os.Create(filepath.Join(e.dir, "soak-steps.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(s.log.Name())
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("the last soak steps (seed above):\n%s", strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})

	// Publish the pool.
	hello := filepath.Join(bin, "hello")
	crash := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(crash, []byte("#!/bin/sh\necho 'soak: this version crashes at once' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	helloSum, crashSum := fileSHA(t, hello), fileSHA(t, crash)
	for _, id := range soakIDs {
		for _, v := range []string{"1.0.0", "1.1.0"} {
			e.publishFile(id, v, hello)
			s.sums[id+"@"+v] = helloSum
		}
		if soakCrashVers[id] {
			e.publishFile(id, soakCrash, crash)
			s.sums[id+"@"+soakCrash] = crashSum
		}
	}
	s.initial = map[string]soakWant{
		"soak0": {"1.0.0", true},
		"soak1": {"1.0.0", true},
		"soak2": {"1.1.0", true},
		"soak3": {"1.0.0", true},
		"soak4": {"1.0.0", false},
	}
	return s
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// fatalf fails the test after a goroutine dump of addond (SIGQUIT; it
// lands in the log startDaemon prints): a soak that fails may have found a
// hang, and the dump says where.
func (s *soak) fatalf(format string, args ...any) {
	s.t.Helper()
	if s.d != nil && s.d.cmd.ProcessState == nil {
		syscall.Kill(s.pid, syscall.SIGQUIT)
		done := make(chan struct{})
		go func() { s.d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.d.cmd.Process.Kill()
			<-done
		}
	}
	s.t.Fatalf(format, args...)
}

func (s *soak) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// assign writes desired as the agent's document (serial one up) straight
// to MinIO.
func (s *soak) assign(desired map[string]soakWant) {
	s.t.Helper()
	args := []string{"assign", "--store", s.e.storeURL, "--agent", "edge-01", "--key", filepath.Join(s.e.dir, "keys", "signing.key")}
	ids := make([]string, 0, len(desired))
	for id := range desired {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		w := desired[id]
		args = append(args, "--addon", id+"@"+w.version, "--allow-downgrade", id)
		if !w.enabled {
			args = append(args, "--disable", id)
		}
	}
	s.e.run("addonctl", args...)
	s.serial++
	s.desired = maps(desired)
	s.logf("assign serial %d: %s", s.serial, describe(desired))
}

func maps(m map[string]soakWant) map[string]soakWant {
	out := make(map[string]soakWant, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func describe(m map[string]soakWant) string {
	var parts []string
	for id, w := range m {
		p := id + "@" + w.version
		if !w.enabled {
			p += "(disabled)"
		}
		parts = append(parts, p)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// status is GET /v1/status over a connection of its own.
func (s *soak) status() (*daemon.Status, error) {
	var st daemon.Status
	return &st, s.call(http.MethodGet, "/v1/status", &st)
}

func (s *soak) call(method, path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://addond"+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// reconcile asks addond for a reconcile, through the status API or
// addonctl at random; both must succeed, store or no store.
func (s *soak) reconcile() {
	s.t.Helper()
	if s.rng.IntN(2) == 0 {
		if r := s.e.exec(nil, "addonctl", "--socket", s.d.socket, "reconcile"); r.code != 0 {
			s.fatalf("soak: addonctl reconcile: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		return
	}
	if err := s.call(http.MethodPost, "/v1/reconcile", nil); err != nil {
		s.fatalf("soak: reconcile: %v", err)
	}
}

// waitStatus polls status until ok holds, or fails the test with what
// and the last status.
func (s *soak) waitStatus(timeout time.Duration, what string, ok func(*daemon.Status) bool) *daemon.Status {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *daemon.Status
	var lastErr error
	for {
		st, err := s.status()
		if err == nil {
			last = st
			if ok(st) {
				return st
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			s.alive()
			b, _ := json.MarshalIndent(last, "", "  ")
			s.fatalf("soak: not %s within %v (last status error %v); last status:\n%s", what, timeout, lastErr, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// applied: addond has fetched and applied the latest document.
func (s *soak) applied(st *daemon.Status) bool {
	return st.Serial == s.serial && st.DocumentError == ""
}

// alive fails the test when addond is gone.
func (s *soak) alive() {
	s.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid))
	if err != nil {
		s.t.Fatalf("soak: addond (pid %d) is gone: %v", s.pid, err)
	}
	if st := procState(string(b)); st == "Z" || st == "X" {
		s.t.Fatalf("soak: addond (pid %d) exited", s.pid)
	}
}

// procState and procPPID parse /proc/<pid>/stat (the command may hold
// spaces and parentheses: fields follow the last ')').
func procState(stat string) string {
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(f) < 1 {
		return ""
	}
	return f[0]
}

func procPPID(stat string) int {
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// eachProc calls fn for every process on the host with its stat line and
// its command line (NULs as spaces).
func eachProc(fn func(pid int, stat, cmdline string)) {
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fn(pid, string(stat), strings.ReplaceAll(string(cmd), "\x00", " "))
	}
}

// children lists addond's child processes (zombies included: an unreaped
// child is a leak too).
func (s *soak) children() map[int]string {
	out := map[int]string{}
	eachProc(func(pid int, stat, cmdline string) {
		if procPPID(stat) == s.pid {
			out[pid] = procState(stat) + " " + cmdline
		}
	})
	return out
}

// addonProcs lists every process on the host that runs something from
// the runtime root (an add-on binary, or a script from it), whoever its
// parent.
func (s *soak) addonProcs() map[int]string {
	out := map[int]string{}
	eachProc(func(pid int, _, cmdline string) {
		if pid == s.pid {
			return
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if strings.HasPrefix(exe, s.e.root+"/") || strings.Contains(cmdline, s.e.root+"/") {
			out[pid] = exe + ": " + cmdline
		}
	})
	return out
}

// converged: the latest document is applied and every add-on of it is
// where it should be (running healthy on its version, or disabled), and
// nothing else is in status.
func (s *soak) converged(st *daemon.Status) bool {
	if !s.applied(st) || len(st.Addons) != len(s.desired) {
		return false
	}
	for _, a := range st.Addons {
		w, ok := s.desired[a.AddonID]
		if !ok {
			return false
		}
		switch {
		case !w.enabled:
			if a.State != "disabled" {
				return false
			}
		case a.State != "running" || a.Health != "healthy" || a.Version != w.version || a.ActiveVersion != w.version || a.PID == 0:
			return false
		}
	}
	return true
}

func (s *soak) scrape() (map[string]float64, error) {
	resp, err := s.hcMetrics().Get(s.metrics)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 && (strings.HasPrefix(name, "addond_rollbacks_total") || strings.HasPrefix(name, "addond_delivery_failures_total")) {
			name = name[:j] // summed over add-ons
		}
		out[name] += v
	}
	return out, sc.Err()
}

func (s *soak) hcMetrics() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// measure takes samples samples a second or two apart and returns the
// minimum of each figure.
func (s *soak) measure(samples int) soakFigures {
	s.t.Helper()
	var f soakFigures
	for i := 0; i < samples; i++ {
		if i > 0 {
			time.Sleep(2 * time.Second)
		}
		m, err := s.scrape()
		if err != nil {
			s.fatalf("soak: /metrics: %v", err)
		}
		for _, k := range []string{"process_resident_memory_bytes", "go_goroutines", "process_open_fds", "go_memstats_heap_inuse_bytes"} {
			if _, ok := m[k]; !ok {
				s.t.Fatalf("soak: /metrics lacks %s", k)
			}
		}
		rss, g, fds, heap := int64(m["process_resident_memory_bytes"]), int(m["go_goroutines"]), int(m["process_open_fds"]), int64(m["go_memstats_heap_inuse_bytes"])
		if i == 0 || rss < f.rss {
			f.rss = rss
		}
		if i == 0 || heap < f.heap {
			f.heap = heap
		}
		if i == 0 || g < f.goroutines {
			f.goroutines = g
		}
		anon, file := s.procRSS()
		if i == 0 || anon < f.anon {
			f.anon = anon
		}
		if i == 0 || file < f.file {
			f.file = file
		}
		if i == 0 || fds < f.fds {
			f.fds = fds
			f.fdTargets = s.fdTargets()
		}
	}
	return f
}

// procRSS returns addond's anonymous and file-backed resident memory.
func (s *soak) procRSS() (anon, file int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		s.t.Fatalf("soak: addond's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "RssAnon":
			anon = n << 10
		case "RssFile":
			file = n << 10
		}
	}
	return anon, file
}

// fdTargets lists what addond's fds point at, for a leak's report.
func (s *soak) fdTargets() []string {
	dir := fmt.Sprintf("/proc/%d/fd", s.pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, ent := range ents {
		target, _ := os.Readlink(filepath.Join(dir, ent.Name()))
		if strings.HasPrefix(target, "socket:") {
			target = "socket"
		}
		out = append(out, target)
	}
	sort.Strings(out)
	return out
}

func (f soakFigures) String() string {
	return fmt.Sprintf("RSS %.1f MiB (anonymous %.1f, file-backed %.1f; heap in use %.1f MiB), %d goroutines, %d fds",
		mib(f.rss), mib(f.anon), mib(f.file), mib(f.heap), f.goroutines, f.fds)
}

func mib(n int64) float64 {
	return float64(n) / (1 << 20)
}

// stablePIDs returns the PIDs of the add-ons that run healthy on their
// desired version with nothing pending: an outage alone must not touch
// them.
func stablePIDs(st *daemon.Status) map[string]int {
	out := map[string]int{}
	for _, a := range st.Addons {
		if a.State == "running" && a.Health == "healthy" && a.Version == a.ActiveVersion && a.PID > 0 {
			out[a.AddonID] = a.PID
		}
	}
	return out
}

func (s *soak) run(duration time.Duration) {
	t, e := s.t, s.e

	// Warm-up: the initial assignment, converged and settled.
	s.assign(s.initial)
	d, notify := e.startReady(t)
	s.d, s.pid = d, d.cmd.Process.Pid
	s.hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.socket)
		},
	}}
	s.waitStatus(60*time.Second, "converged on the initial assignment", s.converged)
	time.Sleep(3 * time.Second)
	s.waitStatus(10*time.Second, "still converged after settling", s.converged)
	startFig := s.measure(4)
	t.Logf("soak: start (initial assignment converged, settled): %v", startFig)
	s.logf("start: %v", startFig)

	began := time.Now()
	lastProgress := began
	for time.Since(began) < duration {
		s.alive()
		drain(notify) // its buffer is finite: a full one would block addond's sd_notify
		s.steps++
		switch r := s.rng.IntN(100); {
		case r < 55:
			s.churn(true)
		case r < 75:
			s.crash()
		case r < 87:
			s.outage()
		default:
			s.artifactFault()
		}
		if time.Since(lastProgress) >= 30*time.Second {
			lastProgress = time.Now()
			t.Logf("soak: %v in, %d steps (%d crashes, %d outages, %d artifact faults)", time.Since(began).Round(time.Second), s.steps, s.crashes, s.outages, s.faults)
		}
		time.Sleep(time.Duration(s.rng.IntN(1200)) * time.Millisecond)
	}
	churned := time.Since(began)

	// Back to exactly the initial assignment, the store up, no fault.
	s.faultHits = s.proxy.TotalHits()
	s.proxy.Clear()
	if !s.proxy.Reachable() {
		t.Fatal("soak: the proxy is not up at the end")
	}
	s.assign(s.initial)
	s.reconcile()
	// Generous: an add-on killed just before the end may sit in its
	// restart backoff (it grows with every kill, up to a minute).
	s.waitStatus(3*time.Minute, "converged back on the initial assignment", s.converged)
	t.Logf("soak: back on the initial assignment %v after the churn", time.Since(began)-churned)
	time.Sleep(5 * time.Second)
	st := s.waitStatus(10*time.Second, "still converged after settling", s.converged)
	endPIDs := stablePIDs(st)
	endFig := s.measure(6)
	st = s.waitStatus(10*time.Second, "still converged after the measurement", s.converged)
	if now := stablePIDs(st); !mapsEqual(now, endPIDs) {
		t.Fatalf("soak: add-ons restarted while settled: %v → %v", endPIDs, now)
	}
	m, err := s.scrape()
	if err != nil {
		t.Fatal(err)
	}
	s.rollbacks = int(m["addond_rollbacks_total"])

	summary := fmt.Sprintf("soak summary: seed %d, duration %v (+%v back to the initial assignment); "+
		"RSS %.1f → %.1f MiB (anonymous %.1f → %.1f, file-backed %.1f → %.1f; heap in use %.1f → %.1f), goroutines %d → %d, open fds %d → %d; "+
		"%d steps, %d add-on crashes (kill -9), %d store outages, %d artifact faults (%d requests hit; %d artifact requests in all, %.0f failed deliveries), %d rollbacks",
		s.seed, churned.Round(time.Second), (time.Since(began) - churned).Round(time.Second),
		mib(startFig.rss), mib(endFig.rss), mib(startFig.anon), mib(endFig.anon), mib(startFig.file), mib(endFig.file),
		mib(startFig.heap), mib(endFig.heap), startFig.goroutines, endFig.goroutines, startFig.fds, endFig.fds,
		s.steps, s.crashes, s.outages, s.faults, s.faultHits, s.proxy.Count("/artifacts/"), m["addond_delivery_failures_total"], s.rollbacks)
	t.Log(summary)
	s.logf("%s", summary)

	// Bounds: back within 10 % of the start (small counts: an absolute
	// slack of 5 goroutines and 2 fds — see the doc comment).
	within := func(start, end, slack int64) bool {
		return end <= start+max(start/10, slack)
	}
	if !within(int64(startFig.goroutines), int64(endFig.goroutines), 5) {
		t.Errorf("soak: goroutines %d at the start, %d at the end: a goroutine leak", startFig.goroutines, endFig.goroutines)
	}
	if !within(int64(startFig.fds), int64(endFig.fds), 2) {
		t.Errorf("soak: open fds %d at the start, %d at the end: an fd leak\nstart: %v\nend:   %v", startFig.fds, endFig.fds, startFig.fdTargets, endFig.fdTargets)
	}
	if raceBuild {
		// Under the race detector addond's resident memory is mostly the
		// detector's shadow of every address the heap ever used, which it
		// maps as the heap moves and never gives back (a 45 s soak in
		// make test: RSS 150.5 → 171.4 MiB with the Go heap 4.4 → 5.3).
		// What leaks is then the heap: within 10 %, or 2 MiB of garbage
		// that no forced GC can take away from outside.
		if !within(startFig.heap, endFig.heap, 2<<20) {
			t.Errorf("soak: Go heap in use %.1f MiB at the start, %.1f MiB at the end: a leak (race build: RSS is the detector's)", mib(startFig.heap), mib(endFig.heap))
		}
	} else if !within(startFig.rss, endFig.rss, 0) {
		t.Errorf("soak: RSS %.1f MiB at the start, %.1f MiB at the end: more than 10 %% up", mib(startFig.rss), mib(endFig.rss))
	}

	s.checkInvariants(st)

	// The loop's bookkeeping came through too: a reloaded config still
	// takes effect (it waits for downloads in flight, so a miscounted
	// download would hold it back for good).
	ov := filepath.Join(e.dir, "addons.local.json")
	if err := os.WriteFile(ov, []byte(`{"addons":[{"addon_id":"soak1","enabled":false}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.extra["local_overrides"] = ov
	e.writeConfig(map[string]any{"status_socket": d.socket, "systemd": map[string]string{"manager": "none"}, "poll_interval": "1s"})
	drain(notify)
	d.cmd.Process.Signal(syscall.SIGHUP)
	notify.waitFor(t, "RELOADING=1", 10*time.Second)
	notify.waitFor(t, "READY=1", 10*time.Second)
	s.desired["soak1"] = soakWant{s.desired["soak1"].version, false}
	s.waitStatus(15*time.Second, "soak1 disabled by a reloaded config", s.converged)

	// Stopping addond stops its sidecars (manager none: they are its
	// children) and leaves no process of any add-on.
	d.stop(t)
	deadline := time.Now().Add(10 * time.Second)
	for len(s.addonProcs()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("soak: add-on processes outlived addond: %v", s.addonProcs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func drain(n *notifySocket) {
	for {
		select {
		case <-n.msgs:
		default:
			return
		}
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkInvariants: what must hold once addond is back on the initial
// assignment.
func (s *soak) checkInvariants(st *daemon.Status) {
	t := s.t
	published := func(id, version string) string { return s.sums[id+"@"+version] }
	running := map[int]string{}
	for _, a := range st.Addons {
		w := s.desired[a.AddonID]
		cur := filepath.Join(s.e.root, "addons", a.AddonID, "current")
		if w.enabled {
			if v := checkCurrent(t, s.e.root, a.AddonID, published); v != w.version {
				t.Fatalf("soak: %s: current -> %s, want %s", a.AddonID, v, w.version)
			}
			if !alive(a.PID) {
				t.Fatalf("soak: %s: status PID %d is not alive", a.AddonID, a.PID)
			}
			running[a.PID] = a.AddonID
		} else if _, err := os.Lstat(cur); err == nil {
			checkCurrent(t, s.e.root, a.AddonID, published) // a disabled add-on's staged version is still whole
		}
	}
	checkNoPartials(t, s.e.root)

	// addond's children are exactly the running add-ons.
	kids := s.children()
	for pid, what := range kids {
		if _, ok := running[pid]; !ok {
			t.Errorf("soak: addond has a child %d that is no running add-on: %s", pid, what)
		}
	}
	for pid, id := range running {
		if _, ok := kids[pid]; !ok {
			t.Errorf("soak: %s's PID %d is not a child of addond", id, pid)
		}
	}
	// No process of a removed (or any other) add-on anywhere.
	for pid, what := range s.addonProcs() {
		if _, ok := running[pid]; !ok {
			t.Errorf("soak: a stray add-on process %d: %s", pid, what)
		}
	}
	// Removed add-ons leave nothing behind.
	ents, err := os.ReadDir(filepath.Join(s.e.root, "addons"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		if _, ok := s.desired[ent.Name()]; !ok {
			t.Errorf("soak: addons/%s is left behind, but %s is not assigned", ent.Name(), ent.Name())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// churn changes the assignment at random (one or two edits), writes it
// and asks for a reconcile; with wait, it waits until addond applied it.
func (s *soak) churn(wait bool) {
	s.t.Helper()
	next := maps(s.desired)
	for n := 1 + s.rng.IntN(2); n > 0; n-- {
		id := soakIDs[s.rng.IntN(len(soakIDs))]
		w, assigned := next[id]
		switch r := s.rng.IntN(100); {
		case !assigned:
			next[id] = soakWant{s.pickVersion(id, ""), s.rng.IntN(5) > 0}
		case r < 20 && len(next) > 2:
			delete(next, id)
		case r < 45:
			w.enabled = !w.enabled
			next[id] = w
		default:
			w.version = s.pickVersion(id, w.version)
			next[id] = w
		}
	}
	s.assign(next)
	s.reconcile()
	if wait {
		s.waitStatus(60*time.Second, fmt.Sprintf("applied serial %d", s.serial), s.applied)
	}
}

// pickVersion picks another published version of id; the crash version a
// third of the time where there is one.
func (s *soak) pickVersion(id, not string) string {
	var vs []string
	for _, v := range []string{"1.0.0", "1.1.0", soakCrash} {
		if v != not && s.sums[id+"@"+v] != "" {
			vs = append(vs, v)
		}
	}
	if slices.Contains(vs, soakCrash) && s.rng.IntN(3) > 0 {
		vs = slices.DeleteFunc(vs, func(v string) bool { return v == soakCrash })
	}
	return vs[s.rng.IntN(len(vs))]
}

// crash kills a running healthy add-on with SIGKILL and waits until addond
// noticed (a new PID, or the add-on no longer running that one).
func (s *soak) crash() {
	s.t.Helper()
	st, err := s.status()
	if err != nil {
		s.fatalf("soak: status: %v", err)
	}
	var cands []daemon.AddonStatus
	for _, a := range st.Addons {
		if (a.State == "running" || a.State == "rolled_back") && a.Health == "healthy" && a.PID > 0 {
			cands = append(cands, a)
		}
	}
	if len(cands) == 0 {
		s.logf("crash: no add-on running")
		return
	}
	a := cands[s.rng.IntN(len(cands))]
	// Only ever a child of addond: a PID from a stale status is not reused
	// this fast, but make sure.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.PID))
	if err != nil || procPPID(string(b)) != s.pid {
		s.logf("crash: %s pid %d is gone already", a.AddonID, a.PID)
		return
	}
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		s.logf("crash: kill %d: %v", a.PID, err)
		return
	}
	s.crashes++
	s.logf("crash: kill -9 %s@%s pid %d", a.AddonID, a.ActiveVersion, a.PID)
	s.waitStatus(20*time.Second, fmt.Sprintf("aware that %s's pid %d died", a.AddonID, a.PID), func(st *daemon.Status) bool {
		for _, b := range st.Addons {
			if b.AddonID == a.AddonID {
				return b.PID != a.PID
			}
		}
		return true
	})
}

// outage takes the store away for a few seconds. Without churn meanwhile,
// the add-ons that were settled keep their PIDs.
func (s *soak) outage() {
	s.t.Helper()
	st, err := s.status()
	if err != nil {
		s.fatalf("soak: status: %v", err)
	}
	before := stablePIDs(st)
	s.proxy.Down()
	s.outages++
	length := time.Duration(2000+s.rng.IntN(4000)) * time.Millisecond
	churn := s.rng.IntN(2) == 0
	s.logf("outage: store down for %v (churn meanwhile: %v)", length, churn)
	downAt := time.Now()
	if churn {
		s.churn(false)
	} else {
		s.reconcile()
	}
	time.Sleep(time.Until(downAt.Add(length)))
	s.proxy.Up(s.t)
	s.reconcile()
	s.waitStatus(60*time.Second, fmt.Sprintf("applied serial %d after the outage", s.serial), s.applied)
	if churn {
		return
	}
	now := stablePIDs(s.waitStatus(10*time.Second, "status", func(*daemon.Status) bool { return true }))
	for id, pid := range before {
		if now[id] != pid && alive(pid) {
			s.t.Fatalf("soak: %s: PID %d before a store outage, %d after (the old one alive): restarted by an outage", id, pid, now[id])
		}
	}
}

// artifactFault arms a Cut or Flip for the next artifact download and
// churns so that one is likely (an add-on added again is downloaded
// again).
func (s *soak) artifactFault() {
	s.t.Helper()
	// A download is a HEAD, then a GET: body faults spare the HEAD and
	// hit the GET — a Cut is resumed with a Range request, a Flip fails
	// verification (twice: the next poll's attempt too).
	f := faultproxy.Fault{Kind: faultproxy.Cut, Match: "/artifacts/", After: int64(s.rng.IntN(4 << 20)), Times: 1}
	if s.rng.IntN(2) == 0 {
		f.Kind, f.Times = faultproxy.Flip, 2
	}
	s.proxy.Inject(f)
	s.faults++
	s.logf("fault: %v after %d bytes on the next artifact download", map[faultproxy.Kind]string{faultproxy.Cut: "cut", faultproxy.Flip: "flip"}[f.Kind], f.After)
	s.churn(true)
}
