package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
)

// arFreeAddr is a free local TCP address for metrics_address.
func arFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// arMetrics returns the /metrics text.
func arMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// arWaitStatus polls /v1/status until ok.
func arWaitStatus(t *testing.T, d *daemonProc, timeout time.Duration, what string, ok func(*daemon.Status) bool) *daemon.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *daemon.Status
	for time.Now().Before(deadline) {
		if st, err := d.client.Status(context.Background()); err == nil {
			last = st
			if ok(st) {
				return st
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.Marshal(last)
	t.Fatalf("status not %s within %v; last %s", what, timeout, b)
	return nil
}

// arHighest is the add-on's persisted highest_version.
func (e *env) arHighest(id string) string {
	e.t.Helper()
	var st struct {
		Highest string `json:"highest_version"`
	}
	b, _ := os.ReadFile(filepath.Join(e.root, "addons", id, "state.json"))
	json.Unmarshal(b, &st)
	return st.Highest
}

// TestAntirollbackEndToEnd: 1.0.0 → 1.2.0; an assignment of 1.1.0 (never
// staged) or 1.0.0 is refused before anything is fetched, while 1.2.0
// keeps running in the same process; across a restart of addond too;
// --allow-downgrade is accepted; an operator's pin to a lower version is
// accepted; the highest version stays 1.2.0 throughout.
func TestAntirollbackEndToEnd(t *testing.T) {
	e := newEnv(t, "file")
	hello := filepath.Join(bin, "hello")
	for _, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
		e.publishFile("hello", v, hello)
	}
	metrics := arFreeAddr(t)
	ov := filepath.Join(e.dir, "addons.local.json")
	e.extra = map[string]any{"metrics_address": metrics, "local_overrides": ov}
	key := filepath.Join(e.dir, "keys", "signing.key")

	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d, notify := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	e.assignWithConfig("hello@1.2.0", "hello", `{}`)
	d.client.Reconcile(context.Background())
	d.waitAddon(t, "hello", 20*time.Second, "running 1.2.0", runningHealthy("1.2.0"))
	// Probation over: 1.2.0 is the last-known-good.
	eventually(t, 10*time.Second, "1.2.0 promoted", func() bool {
		b, _ := os.ReadFile(filepath.Join(e.root, "addons/hello/state.json"))
		return strings.Contains(string(b), `"version": "1.2.0"`) && !strings.Contains(string(b), `"probation"`)
	})
	if h := e.arHighest("hello"); h != "1.2.0" {
		t.Fatalf("highest_version = %q after 1.2.0, want 1.2.0", h)
	}
	running := d.waitAddon(t, "hello", time.Second, "running 1.2.0", runningHealthy("1.2.0"))

	// 1.1.0 was never staged here. Its objects are taken out of the store
	// after the assignment is written: had addond tried to fetch them, it
	// would report that instead of the refusal.
	e.assignWithConfig("hello@1.1.0", "hello", `{}`)
	store := filepath.Join(e.dir, "store")
	hidden := filepath.Join(e.dir, "hidden")
	os.MkdirAll(filepath.Join(hidden, "artifacts/hello"), 0o755)
	os.MkdirAll(filepath.Join(hidden, "packages/hello"), 0o755)
	for _, p := range []string{"artifacts/hello/1.1.0", "packages/hello/1.1.0"} {
		if err := os.Rename(filepath.Join(store, p), filepath.Join(hidden, p)); err != nil {
			t.Fatal(err)
		}
	}
	stateBefore, _ := os.ReadFile(filepath.Join(e.root, "addons/hello/state.json"))
	d.client.Reconcile(context.Background())
	want := `addon "hello": version 1.1.0 is lower than 1.2.0, the highest ever activated; refused as a downgrade (the assignment may set allow_downgrade)`
	refused := d.waitAddon(t, "hello", 10*time.Second, "refusing 1.1.0", func(a daemon.AddonStatus) bool {
		return a.LastError == want
	})
	if refused.PID != running.PID || !alive(running.PID) || refused.ActiveVersion != "1.2.0" || refused.State != "running" || refused.Version != "1.1.0" || !refused.FromLKG {
		t.Fatalf("after the refusal: %+v (was %+v); want 1.2.0 still running in the same process, from_lkg", refused, running)
	}
	d.afterRefreshes(t, 2) // a few polls: still refused, counted once
	checkRefusedUntouched := func() {
		t.Helper()
		if _, err := os.Stat(filepath.Join(e.root, "addons/hello/versions/1.1.0")); !os.IsNotExist(err) {
			t.Fatalf("versions/1.1.0 after a refusal: %v", err)
		}
		if left, _ := os.ReadDir(filepath.Join(e.root, "tmp")); len(left) != 0 {
			t.Fatalf("partial files after a refusal: %v", left)
		}
		if target, _ := os.Readlink(filepath.Join(e.root, "addons/hello/current")); target != "versions/1.2.0" {
			t.Fatalf("current -> %s after a refusal", target)
		}
	}
	checkRefusedUntouched()
	if after, _ := os.ReadFile(filepath.Join(e.root, "addons/hello/state.json")); !bytes.Equal(after, stateBefore) {
		t.Fatalf("a refusal changed the add-on's state:\n%s\n=>\n%s", stateBefore, after)
	}
	if a := d.waitAddon(t, "hello", time.Second, "still 1.2.0", func(a daemon.AddonStatus) bool { return true }); a.PID != running.PID || a.ActiveVersion != "1.2.0" {
		t.Fatalf("1.2.0 was disturbed: %+v", a)
	}
	if m := arMetrics(t, metrics); !strings.Contains(m, `addond_downgrades_refused_total{addon_id="hello"} 1`+"\n") {
		t.Fatalf("/metrics does not count the refusal once:\n%s", grepLines(m, "downgrade"))
	}
	log, _ := os.ReadFile(filepath.Join(e.dir, "run.log"))
	if !strings.Contains(string(log), `level=WARN msg="downgrade refused" addon_id=hello version=1.1.0 active_version=1.2.0`) {
		t.Fatalf("no warning for the refusal in the log")
	}

	// A restart of addond keeps the highest version: still refused.
	d.stop(t)
	notify.waitFor(t, "STOPPING=1", 5*time.Second)
	d = e.startDaemon(t, notify)
	notify.waitFor(t, "READY=1", 10*time.Second)
	r := d.waitAddon(t, "hello", 15*time.Second, "refusing 1.1.0 after a restart", func(a daemon.AddonStatus) bool {
		return a.LastError == want && a.ActiveVersion == "1.2.0" && a.State == "running"
	})
	if h := e.arHighest("hello"); h != "1.2.0" || !r.FromLKG {
		t.Fatalf("after a restart: highest_version %q, %+v", h, r)
	}
	checkRefusedUntouched()
	for _, p := range []string{"artifacts/hello/1.1.0", "packages/hello/1.1.0"} {
		os.Rename(filepath.Join(hidden, p), filepath.Join(store, p))
	}

	// The signed assignment allows the downgrade.
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{}`), 0o644)
	e.run("addonctl", "assign", "--store", e.storeURL, "--agent", "edge-01", "--key", key,
		"--addon", "hello@1.0.0", "--config", "hello="+cfg, "--allow-downgrade", "hello")
	d.client.Reconcile(context.Background())
	a := d.waitAddon(t, "hello", 20*time.Second, "running 1.0.0 (allow_downgrade)", runningHealthy("1.0.0"))
	if a.LastError != "" || a.FromLKG {
		t.Fatalf("allowed downgrade: %+v", a)
	}
	if h := e.arHighest("hello"); h != "1.2.0" {
		t.Fatalf("highest_version = %q after an allowed downgrade, want 1.2.0", h)
	}

	// An operator's local pin to a lower version than the highest is
	// not a downgrade in this sense (pushed: 1.0.0, pinned: 1.1.0 < 1.2.0).
	e.run("addonctl", "override", "set", "hello", "--version", "1.1.0", "--config", e.config)
	a = d.waitAddon(t, "hello", 20*time.Second, "running the pinned 1.1.0", runningHealthy("1.1.0"))
	if strings.Contains(a.LastError, "downgrade") {
		t.Fatalf("pin: %+v", a)
	}
	if h := e.arHighest("hello"); h != "1.2.0" {
		t.Fatalf("highest_version = %q after a pin, want 1.2.0", h)
	}
	// Without the pin the pushed 1.0.0 is refused (1.1.0 is current).
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	e.run("addonctl", "override", "clear", "hello", "--config", e.config)
	d.waitAddon(t, "hello", 10*time.Second, "refusing 1.0.0", func(a daemon.AddonStatus) bool {
		return strings.Contains(a.LastError, "version 1.0.0 is lower than 1.2.0") && a.ActiveVersion == "1.1.0" && a.State == "running"
	})
	// This process refused 1.1.0 once (after the restart) and now 1.0.0.
	if m := arMetrics(t, metrics); !strings.Contains(m, `addond_downgrades_refused_total{addon_id="hello"} 2`+"\n") {
		t.Fatalf("/metrics after the second refusal:\n%s", grepLines(m, "downgrade"))
	}

	// A health rollback is not a downgrade: 1.3.0 fails probation and
	// addond goes back to 1.1.0, lower than the highest (now 1.3.0).
	e.publishFile("hello", "1.3.0", hello)
	e.assignWithConfig("hello@1.3.0", "hello", `{"health":"unhealthy"}`)
	d.client.Reconcile(context.Background())
	rb := d.waitAddon(t, "hello", 20*time.Second, "rolled back to 1.1.0", func(a daemon.AddonStatus) bool {
		return a.State == "rolled_back" && a.ActiveVersion == "1.1.0" && a.Health == "healthy"
	})
	if !strings.Contains(rb.LastError, "probation") || !rb.FromLKG || rb.Version != "1.3.0" {
		t.Fatalf("after the health rollback: %+v", rb)
	}
	if target, _ := os.Readlink(filepath.Join(e.root, "addons/hello/current")); target != "versions/1.1.0" {
		t.Fatalf("current -> %s after the health rollback", target)
	}
	if h := e.arHighest("hello"); h != "1.3.0" {
		t.Fatalf("highest_version = %q after 1.3.0 was activated, want 1.3.0", h)
	}
}

func grepLines(s, word string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReplayRefusedEndToEnd: the previous signed document copied back
// into the store is refused as a replay — reported in document_error,
// warned about with both serials, counted once — and the applied one
// stays in use; the next document written by addonctl assign (its serial
// taken from the replayed one) repeats the applied serial with other
// content and is refused too; one more assign goes through.
func TestReplayRefusedEndToEnd(t *testing.T) {
	e := newEnv(t, "file")
	hello := filepath.Join(bin, "hello")
	e.publishFile("hello", "1.0.0", hello)
	e.publishFile("hello", "1.1.0", hello)
	metrics := arFreeAddr(t)
	e.extra = map[string]any{"metrics_address": metrics}
	docPath := filepath.Join(e.dir, "store/agents/edge-01/assignments.json")

	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	oldDoc, _ := os.ReadFile(docPath)
	oldSig, _ := os.ReadFile(docPath + ".sig")
	d, notify := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	e.assignWithConfig("hello@1.1.0", "hello", `{}`)
	d.client.Reconcile(context.Background())
	running := d.waitAddon(t, "hello", 20*time.Second, "running 1.1.0", runningHealthy("1.1.0"))
	arWaitStatus(t, d, 5*time.Second, "serial 2, fresh", func(st *daemon.Status) bool { return st.Serial == 2 && st.DocumentFresh })
	cached, _ := os.ReadFile(filepath.Join(e.root, "state/assignments.json"))

	os.WriteFile(docPath, oldDoc, 0o644)
	os.WriteFile(docPath+".sig", oldSig, 0o644)
	d.client.Reconcile(context.Background())
	st := arWaitStatus(t, d, 10*time.Second, "reporting the replay", func(st *daemon.Status) bool {
		return strings.Contains(st.DocumentError, "serial 1 is lower than 2, the last applied: refused as a replay")
	})
	if st.Serial != 2 || st.DocumentFresh || st.DocumentAppliedAt == nil {
		t.Fatalf("after a replay: %+v", st)
	}
	notify.waitFor(t, "assignments refused as a replay", 5*time.Second)
	d.afterRefreshes(t, 2) // a few polls of the same replay
	a := d.waitAddon(t, "hello", time.Second, "still 1.1.0", func(a daemon.AddonStatus) bool { return true })
	if a.PID != running.PID || a.ActiveVersion != "1.1.0" || a.Version != "1.1.0" || !a.FromLKG {
		t.Fatalf("after a replay: %+v (was %+v)", a, running)
	}
	if now, _ := os.ReadFile(filepath.Join(e.root, "state/assignments.json")); !bytes.Equal(now, cached) {
		t.Fatal("the replayed document was cached")
	}
	if m := arMetrics(t, metrics); !strings.Contains(m, "addond_assignment_replays_total 1\n") {
		t.Fatalf("/metrics does not count the replay once:\n%s", grepLines(m, "replays"))
	}
	log, _ := os.ReadFile(filepath.Join(e.dir, "run.log"))
	if n := strings.Count(string(log), `level=WARN msg="assignment document refused as a replay`); n != 1 {
		t.Fatalf("%d replay warnings, want 1", n)
	}
	if !strings.Contains(string(log), "serial=1 last_serial=2") {
		t.Fatal("the replay warning does not name both serials")
	}
	if out := e.run("addonctl", "status", "--socket", d.socket); !strings.Contains(out, "refused as a replay") || !strings.Contains(out, "STALE") {
		t.Fatalf("addonctl status after a replay:\n%s", out)
	}

	// addonctl assign numbers from the document in the store (the
	// replayed serial 1): serial 2 again, other content (no config):
	// refused as well, and the operator sees why.
	e.assign("hello@1.1.0")
	d.client.Reconcile(context.Background())
	arWaitStatus(t, d, 10*time.Second, "refusing serial 2 with other content", func(st *daemon.Status) bool {
		return strings.Contains(st.DocumentError, "serial 2 was already applied with different content")
	})
	if a := d.waitAddon(t, "hello", time.Second, "still 1.1.0", func(a daemon.AddonStatus) bool { return true }); a.PID != running.PID {
		t.Fatalf("a same-serial document restarted hello: %+v", a)
	}
	e.assign("hello@1.1.0")
	d.client.Reconcile(context.Background())
	arWaitStatus(t, d, 10*time.Second, "serial 3 applied", func(st *daemon.Status) bool {
		return st.Serial == 3 && st.DocumentError == "" && st.DocumentFresh
	})
	d.waitAddon(t, "hello", 10*time.Second, "confirmed", func(a daemon.AddonStatus) bool { return !a.FromLKG && a.ActiveVersion == "1.1.0" })
	if m := arMetrics(t, metrics); !strings.Contains(m, "addond_assignment_replays_total 2\n") {
		t.Fatalf("/metrics after the same-serial refusal:\n%s", grepLines(m, "replays"))
	}
}

// TestStoreDownFreshness: the store goes away while addond runs, and
// addond restarts while it is away: hello keeps running on what it ran,
// from_lkg true and document_fresh false (also once the cached document
// has applied); the store back: fresh again.
func TestStoreDownFreshness(t *testing.T) {
	e := newEnv(t, "file")
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	d, notify := e.startReady(t)
	d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	st := arWaitStatus(t, d, 5*time.Second, "fresh", func(st *daemon.Status) bool { return st.DocumentFresh })
	if st.DocumentCheckedAt == nil || st.DocumentAppliedAt == nil || st.Addons[0].FromLKG {
		t.Fatalf("store up: %+v", st)
	}
	applied := *st.DocumentAppliedAt
	if out := e.run("addonctl", "status", "--socket", d.socket); strings.Contains(out, "STALE") {
		t.Fatalf("addonctl status with the store up:\n%s", out)
	}
	// Unchanged (304 / same file) keeps it fresh and moves checked_at.
	checked := *st.DocumentCheckedAt
	arWaitStatus(t, d, 5*time.Second, "checked again", func(st *daemon.Status) bool {
		return st.DocumentFresh && st.DocumentCheckedAt.After(checked) && st.DocumentAppliedAt.Equal(applied)
	})

	store := filepath.Join(e.dir, "store")
	stale := func(what string) {
		t.Helper()
		arWaitStatus(t, d, 10*time.Second, what, func(st *daemon.Status) bool {
			return !st.DocumentFresh && st.DocumentError != "" && len(st.Addons) == 1 && st.Addons[0].FromLKG
		})
		d.afterRefreshes(t, 2) // the cached document applies on every poll
		a := d.waitAddon(t, "hello", time.Second, "running 1.0.0 from last-known-good", runningHealthy("1.0.0"))
		st, _ := d.client.Status(context.Background())
		if !a.FromLKG || st.DocumentFresh || !strings.Contains(st.DocumentError, "unreachable") || st.DocumentAppliedAt == nil || !st.DocumentAppliedAt.Equal(applied) {
			t.Fatalf("%s: %+v", what, st)
		}
		notify.waitFor(t, "store unreachable", 5*time.Second)
		out := e.run("addonctl", "status", "--socket", d.socket)
		if header, _, _ := strings.Cut(out, "\n"); !strings.Contains(header, "assignments STALE") {
			t.Fatalf("%s: addonctl status header does not say stale:\n%s", what, out)
		}
		if !strings.Contains(out, "1.0.0 (last-known-good)") {
			t.Fatalf("%s: addonctl status:\n%s", what, out)
		}
	}
	os.Rename(store, store+".away")
	stale("store down while running")

	d.stop(t)
	notify.waitFor(t, "STOPPING=1", 5*time.Second)
	d = e.startDaemon(t, notify)
	notify.waitFor(t, "READY=1", 10*time.Second)
	stale("store down after a restart")
	if st, _ := d.client.Status(context.Background()); st.DocumentCheckedAt != nil {
		t.Fatalf("checked_at %v, but the store never answered this addond", st.DocumentCheckedAt)
	}

	os.Rename(store+".away", store)
	d.client.Reconcile(context.Background())
	arWaitStatus(t, d, 10*time.Second, "fresh again", func(st *daemon.Status) bool {
		return st.DocumentFresh && st.DocumentError == "" && st.DocumentCheckedAt != nil && len(st.Addons) == 1 && !st.Addons[0].FromLKG
	})
	if out := e.run("addonctl", "status", "--socket", d.socket); strings.Contains(out, "STALE") || strings.Contains(out, "last-known-good") {
		t.Fatalf("addonctl status with the store back:\n%s", out)
	}
}
