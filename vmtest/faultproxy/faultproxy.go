// Package faultproxy is an HTTP proxy on the loopback in front of a real
// object store (MinIO) that injects the faults of addond's fault matrix on
// command: the store down (connections refused), a body cut after N bytes,
// a bit flipped in a body, a body that stalls, and an error status. Faults
// apply to the requests whose path contains a pattern (e.g. "/artifacts/"),
// for the next n requests or until cleared; faults on a body (cut, flip,
// stall) apply to GETs only. It also counts the requests it
// forwarded and the most it had in flight at once.
//
// The Host header passes through unchanged, so SigV4 signatures made for
// the proxy's address verify at the store.
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Kind is what a fault does to a matching request.
type Kind int

const (
	// Cut ends the response after After bytes of body: the connection is
	// closed mid-body, as a reset or a crashed store would.
	Cut Kind = iota + 1
	// Flip inverts one bit of the body at byte offset After.
	Flip
	// Stall sends After bytes of body, then nothing until the fault is
	// cleared, the proxy goes down, or the client gives up.
	Stall
	// Status answers with HTTP status Code and no body.
	Status
	// Delay holds the response for Wait, then sends it whole.
	Delay
)

// Fault is one injected fault.
type Fault struct {
	Kind  Kind
	Match string        // path substring the fault applies to ("" = every request)
	After int64         // body offset for Cut, Flip and Stall
	Code  int           // for Status
	Wait  time.Duration // for Delay
	Times int           // how many requests it hits; 0 = until cleared
	Then  *Fault        // the fault in force once Times is used up
}

// Proxy is a running fault proxy.
type Proxy struct {
	target *url.URL
	addr   string
	rp     *httputil.ReverseProxy

	mu       sync.Mutex
	srv      *http.Server
	fault    *Fault
	hits     int
	total    int
	unstall  chan struct{}
	requests map[string]int // by path pattern counted (see Count)
	inflight map[string]int
	maxIn    map[string]int
	patterns []string
}

// Start listens on a free loopback port in front of target (host:port).
// It is stopped when t ends.
func Start(t testing.TB, target string, patterns ...string) *Proxy {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: target}
	p := &Proxy{
		target: u, unstall: make(chan struct{}),
		requests: map[string]int{}, inflight: map[string]int{}, maxIn: map[string]int{},
		patterns: append([]string{""}, patterns...),
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // the client signed the proxy's address
		},
		Transport:     &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64},
		FlushInterval: -1,
		ErrorLog:      nil,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

func (p *Proxy) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(p.handle), ErrorLog: nil}
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	go srv.Serve(ln)
}

// Down closes the listener and every open connection: the store is gone
// (connections are refused) until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Up listens again on the same address.
func (p *Proxy) Up(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the old socket may linger a moment
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("faultproxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// Close stops the proxy for good.
func (p *Proxy) Close() {
	p.Clear()
	p.Down()
}

// Inject sets the fault (replacing any other).
func (p *Proxy) Inject(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.hits = &f, 0
}

// Clear removes the fault and releases stalled bodies.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = nil
	close(p.unstall)
	p.unstall = make(chan struct{})
}

// Hits is how many requests the current fault has hit.
func (p *Proxy) Hits() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits
}

// TotalHits is how many requests every fault so far has hit.
func (p *Proxy) TotalHits() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// Count is how many requests whose path contains pattern (one given to
// Start, or "" for all) were forwarded.
func (p *Proxy) Count(pattern string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[pattern]
}

// MaxInFlight is the most requests matching pattern that were in flight at
// once (body included).
func (p *Proxy) MaxInFlight(pattern string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxIn[pattern]
}

// take returns the fault for r, if it applies, counting the hit.
func (p *Proxy) take(r *http.Request) (*Fault, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fault
	if f == nil || !strings.Contains(r.URL.Path, f.Match) {
		return nil, nil
	}
	if r.Method != http.MethodGet && (f.Kind == Cut || f.Kind == Flip || f.Kind == Stall) {
		return nil, nil // body faults need a body: a HEAD passes
	}
	p.hits++
	p.total++
	if f.Times > 0 && p.hits >= f.Times {
		p.fault, p.hits = f.Then, 0
	}
	return f, p.unstall
}

func (p *Proxy) track(path string, delta int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pat := range p.patterns {
		if strings.Contains(path, pat) {
			if delta > 0 {
				p.requests[pat]++
			}
			p.inflight[pat] += delta
			p.maxIn[pat] = max(p.maxIn[pat], p.inflight[pat])
		}
	}
}

func (p *Proxy) handle(w http.ResponseWriter, r *http.Request) {
	p.track(r.URL.Path, 1)
	defer p.track(r.URL.Path, -1)
	f, unstall := p.take(r)
	if f == nil {
		p.rp.ServeHTTP(w, r)
		return
	}
	switch f.Kind {
	case Status:
		http.Error(w, "", f.Code)
		return
	case Delay:
		select {
		case <-time.After(f.Wait):
		case <-r.Context().Done():
			return
		}
		p.rp.ServeHTTP(w, r)
		return
	}
	// Fetch the whole response first, then send it damaged.
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	out.RequestURI = ""
	resp, err := p.rp.Transport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	n := min(max(f.After, 0), int64(len(body)))
	switch f.Kind {
	case Flip:
		if n < int64(len(body)) {
			body = bytes.Clone(body)
			body[n] ^= 0x10
		}
		w.Write(body)
	case Cut:
		w.Write(body[:n])
		w.(http.Flusher).Flush()
		abort(w)
	case Stall:
		w.Write(body[:n])
		w.(http.Flusher).Flush()
		select {
		case <-unstall:
			w.Write(body[n:])
		case <-r.Context().Done():
		}
	}
}

// abort closes the client connection at once with a TCP reset.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// Reachable reports whether an HTTP request through the proxy gets an
// answer (any status) within a second.
func (p *Proxy) Reachable() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/minio/health/live", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return !errors.Is(ctx.Err(), context.DeadlineExceeded)
}
