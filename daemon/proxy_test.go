package daemon

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/addond/addond/vmtest/miniotest"
)

// cuttingProxy forwards TCP connections to a real MinIO and resets the
// first `cuts` connections after `after` bytes of response. It records the
// requests it forwarded.
type cuttingProxy struct {
	ln       net.Listener
	target   string
	after    int64
	mu       sync.Mutex
	cuts     int
	requests bytes.Buffer
}

func startCuttingProxy(t *testing.T, target string, after int64, cuts int) *cuttingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target, after: after, cuts: cuts}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cuttingProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				p.mu.Lock()
				if p.requests.Len() < 1<<20 {
					p.requests.Write(buf[:n])
				}
				p.mu.Unlock()
				server.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	var limit int64 = -1
	p.mu.Lock()
	if p.cuts > 0 {
		p.cuts--
		limit = p.after
	}
	p.mu.Unlock()
	if limit < 0 {
		io.Copy(client, server)
		return
	}
	io.CopyN(client, server, limit)
	if tc, ok := client.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST, not FIN: a connection reset mid-body
	}
}

func TestConnectionResetMidBodyResumesWithRange(t *testing.T) {
	srv := miniotest.Require(t)
	f := newFixture(t, "s3")
	content := randomBytes(6 << 20)
	f.publish("hello", "1.0.0", content)
	f.assign("hello@1.0.0")

	proxy := startCuttingProxy(t, srv.Endpoint, 2<<20, 1)
	f.cfg.Store = strings.Replace(f.storeURL, srv.Endpoint, proxy.ln.Addr().String(), 1)
	rep := f.stage()
	if !rep.Converged() {
		t.Fatalf("not converged after a connection reset: %v", rep.Errors())
	}
	if !bytes.Equal(f.binary("hello"), content) {
		t.Fatal("staged bytes differ from the published artifact")
	}
	proxy.mu.Lock()
	reqs := proxy.requests.String()
	proxy.mu.Unlock()
	if !strings.Contains(reqs, "Range: bytes=") || !strings.Contains(reqs, "If-Match: ") {
		t.Fatalf("no ranged, If-Match-bound request after the reset; requests:\n%s", reqs)
	}
}
