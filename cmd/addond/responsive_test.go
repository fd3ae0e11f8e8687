package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
)

// TestLoopNeverWaitsForABackend: a sidecar that never writes go-plugin's
// handshake holds its backend's Start for the whole handshake timeout
// (10 s). Meanwhile addond's loop goes on: GET /v1/status answers within
// 100 ms throughout and shows the rest of the assignment running, a
// reconcile request and a SIGHUP are answered at once, and a new add-on
// assigned during the hang starts.
func TestLoopNeverWaitsForABackend(t *testing.T) {
	e := newEnv(t, "file")
	hang := filepath.Join(t.TempDir(), "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.publishFile("hang", "1.0.0", hang)
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.publishFile("late", "1.0.0", filepath.Join(bin, "hello"))
	e.assign("hang@1.0.0", "hello@1.0.0")
	d, notify := e.startReady(t)

	// One kept-alive connection, as a monitoring poller would hold.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.socket)
	}}}
	get := func() (time.Duration, *daemon.Status) {
		start := time.Now()
		resp, err := hc.Get("http://addond/v1/status")
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		defer resp.Body.Close()
		var st daemon.Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
		return time.Since(start), &st
	}
	addon := func(st *daemon.Status, id string) daemon.AddonStatus {
		for _, a := range st.Addons {
			if a.AddonID == id {
				return a
			}
		}
		return daemon.AddonStatus{}
	}

	// Until the hanging sidecar's first start gave up (it then backs off
	// and tries again: the window repeats), poll status every 20 ms.
	var (
		lat            []time.Duration
		helloRunning   bool
		reconcileTook  time.Duration
		reloadTook     time.Duration
		lateRunning    bool
		hangStarting   int
		once, reloaded sync.Once
	)
	began := time.Now()
	for time.Since(began) < 9*time.Second {
		took, st := get()
		lat = append(lat, took)
		if a := addon(st, "hang"); a.State == "starting" {
			hangStarting++
		}
		if a := addon(st, "hello"); a.State == "running" && a.Health == "healthy" {
			helloRunning = true
		}
		if addon(st, "late").State == "running" {
			lateRunning = true
		}
		if time.Since(began) > 2*time.Second {
			once.Do(func() {
				e.assign("hang@1.0.0", "hello@1.0.0", "late@1.0.0")
				start := time.Now()
				if err := d.client.Reconcile(context.Background()); err != nil {
					t.Errorf("reconcile: %v", err)
				}
				reconcileTook = time.Since(start)
			})
		}
		if time.Since(began) > 4*time.Second {
			reloaded.Do(func() {
				drain(notify)
				start := time.Now()
				d.cmd.Process.Signal(syscall.SIGHUP)
				notify.waitFor(t, "READY=1", 5*time.Second)
				reloadTook = time.Since(start)
			})
		}
		time.Sleep(20 * time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d status requests during the hang: median %v, 90th percentile %v, max %v; reconcile answered in %v, SIGHUP to READY in %v",
		len(lat), lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)-1], reconcileTook, reloadTook)
	// A loop that waited for the hung handshake would hold a request for
	// seconds (the handshake times out after 10). One request in hundreds
	// may still wait out a scheduling or GC pause on a busy machine (CI saw
	// 128 ms beside the race detector and a VM under TCG): the bound on the
	// slowest is 1 s, well under the hang, and the bulk must be quick.
	if max := lat[len(lat)-1]; max > time.Second {
		t.Errorf("a status request took %v while a sidecar hung in its handshake, want at most 1s", max)
	}
	if p90 := lat[len(lat)*9/10]; p90 > 100*time.Millisecond {
		t.Errorf("90th percentile of status requests %v while a sidecar hung, want at most 100ms", p90)
	}
	if hangStarting == 0 {
		t.Fatal("the hanging sidecar was never seen starting: the test proved nothing")
	}
	if !helloRunning {
		t.Error("hello never ran healthy while the other sidecar hung")
	}
	if !lateRunning {
		t.Error("an add-on assigned during the hang did not start during it")
	}
	if reconcileTook > time.Second || reloadTook > time.Second {
		t.Errorf("reconcile took %v, SIGHUP to READY %v: the loop waited for the backend", reconcileTook, reloadTook)
	}
}
