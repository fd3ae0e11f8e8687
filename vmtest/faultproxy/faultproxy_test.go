package faultproxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 10000)
	var hostSeen string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hostSeen = r.Host
		time.Sleep(20 * time.Millisecond)
		w.Write(body)
	}))
	defer backend.Close()
	p := Start(t, strings.TrimPrefix(backend.URL, "http://"), "/artifacts/")
	get := func(path string) ([]byte, error) {
		resp, err := http.Get("http://" + p.Addr() + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}

	if b, err := get("/artifacts/x"); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("pass-through: %d bytes, %v", len(b), err)
	}
	if hostSeen != p.Addr() {
		t.Fatalf("the store saw Host %q, want the proxy's %q (signatures)", hostSeen, p.Addr())
	}

	p.Inject(Fault{Kind: Cut, Match: "/artifacts/", After: 1000, Times: 1})
	if b, err := get("/packages/x"); err != nil || len(b) != len(body) {
		t.Fatalf("a request the fault does not match was hit: %d bytes, %v", len(b), err)
	}
	if b, err := get("/artifacts/x"); err == nil || len(b) != 1000 {
		t.Fatalf("cut after 1000: %d bytes, %v; want 1000 and an error", len(b), err)
	}
	if b, err := get("/artifacts/x"); err != nil || len(b) != len(body) {
		t.Fatalf("after Times: 1 the fault must be gone: %d bytes, %v", len(b), err)
	}

	p.Inject(Fault{Kind: Flip, Match: "/artifacts/", After: 5})
	b, err := get("/artifacts/x")
	if err != nil || len(b) != len(body) || b[5] == body[5] || !bytes.Equal(b[6:], body[6:]) || !bytes.Equal(b[:5], body[:5]) {
		t.Fatalf("flip at 5: %v, byte %q", err, b[5])
	}

	p.Inject(Fault{Kind: Cut, Match: "/artifacts/", After: 10, Times: 1, Then: &Fault{Kind: Status, Code: 412, Times: 1}})
	if b, err := get("/artifacts/x"); err == nil || len(b) != 10 {
		t.Fatalf("cut then 412: first %d bytes, %v", len(b), err)
	}
	if resp, err := http.Get("http://" + p.Addr() + "/artifacts/x"); err != nil || resp.StatusCode != 412 {
		t.Fatalf("cut then 412: second %v %v", resp, err)
	}
	if b, err := get("/artifacts/x"); err != nil || len(b) != len(body) {
		t.Fatalf("cut then 412 then nothing: %d bytes, %v", len(b), err)
	}

	p.Inject(Fault{Kind: Delay, Wait: 200 * time.Millisecond, Times: 1})
	start := time.Now()
	if b, err := get("/x"); err != nil || len(b) != len(body) || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("delay: %d bytes, %v, after %v", len(b), err, time.Since(start))
	}

	p.Inject(Fault{Kind: Status, Code: 503})
	if resp, err := http.Get("http://" + p.Addr() + "/x"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("status 503: %v %v", resp, err)
	}

	p.Inject(Fault{Kind: Stall, After: 100})
	done := make(chan int)
	go func() { b, _ := get("/artifacts/y"); done <- len(b) }()
	select {
	case n := <-done:
		t.Fatalf("a stalled body ended (%d bytes)", n)
	case <-time.After(300 * time.Millisecond):
	}
	p.Clear()
	if n := <-done; n != len(body) {
		t.Fatalf("released stall: %d bytes", n)
	}

	p.Down()
	if _, err := get("/x"); err == nil || p.Reachable() {
		t.Fatal("down, but reachable")
	}
	p.Up(t)
	if !p.Reachable() {
		t.Fatal("up again, but unreachable")
	}

	before := p.Count("/artifacts/")
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); get("/artifacts/z") }()
	}
	wg.Wait()
	if got := p.Count("/artifacts/") - before; got != 5 {
		t.Fatalf("counted %d requests, want 5", got)
	}
	if m := p.MaxInFlight("/artifacts/"); m < 2 {
		t.Fatalf("max in flight %d for 5 concurrent slow requests", m)
	}
}
