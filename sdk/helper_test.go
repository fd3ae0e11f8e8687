package sdk

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestRunHelperLeaksNothing: an add-on calls RunHelper for as long as it
// lives; 500 runs leave no connection, descriptor or goroutine behind.
func TestRunHelperLeaksNothing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "addond.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"exit_code":0,"stdout":"b2sK"}`))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	t.Setenv(StatusSocketEnv, sock)

	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	run := func() {
		res, err := RunHelper(context.Background(), "probe", "x")
		if err != nil || string(res.Stdout) != "ok\n" {
			t.Fatalf("RunHelper: %+v, %v", res, err)
		}
	}
	run()
	time.Sleep(50 * time.Millisecond)
	fd0, g0 := fds(), runtime.NumGoroutine()
	for range 500 {
		run()
	}
	deadline := time.Now().Add(5 * time.Second)
	for fds() > fd0+4 || runtime.NumGoroutine() > g0+10 {
		if time.Now().After(deadline) {
			t.Fatalf("after 500 runs: %d open descriptors (was %d), %d goroutines (was %d)", fds(), fd0, runtime.NumGoroutine(), g0)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
