package store

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/nginxtest"
)

// testPKI is a CA and a server certificate it signed, as PEM files.
type testPKI struct {
	caFile, certFile, keyFile string
}

// newPKI makes a CA and a certificate for 127.0.0.1 and names.
func newPKI(t *testing.T, names ...string) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "addond test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "addond test server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	p := testPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key")}
	for path, block := range map[string]*pem.Block{
		p.caFile: {Type: "CERTIFICATE", Bytes: caDER}, p.certFile: {Type: "CERTIFICATE", Bytes: der}, p.keyFile: {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// servedTree is a directory in the bucket layout (written through the
// directory store, as addonctl publish does to a file:// store) served by
// a real nginx.
type servedTree struct {
	dir *Dir // the tree, writable
	srv *nginxtest.Server
	pki testPKI // https only
}

func serveTree(t *testing.T, scheme string, names ...string) *servedTree {
	t.Helper()
	root := t.TempDir()
	st := &servedTree{}
	st.dir, _ = NewDir(root)
	o := nginxtest.Options{Root: root}
	if scheme == "https" {
		st.pki = newPKI(t, names...)
		o.CertFile, o.KeyFile = st.pki.certFile, st.pki.keyFile
	}
	st.srv = nginxtest.Start(t, o)
	return st
}

// storeURL is the tree's store URL, under prefix ("" for none).
func (s *servedTree) storeURL(prefix string) string {
	u := s.srv.URL
	if prefix != "" {
		u += "/" + prefix
	}
	if s.pki.caFile != "" {
		u += "?ca_file=" + url.QueryEscape(s.pki.caFile)
	}
	return u
}

func (s *servedTree) put(t *testing.T, key string, body []byte) Info {
	t.Helper()
	info, err := s.dir.Put(context.Background(), key, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// sawRequest waits until nginx logged a request, after the first `after`
// lines, that contains want: nginx logs a request once it has answered,
// which may be after the client has the answer.
func (s *servedTree) sawRequest(t *testing.T, after int, want string) {
	t.Helper()
	var got []string
	vmtest.Eventually(t, 5*time.Second, "a request in nginx's log like "+want, func() bool {
		got = s.srv.Requests()[after:]
		for _, r := range got {
			if strings.Contains(r, want) {
				return true
			}
		}
		return false
	})
}

// TestHTTPStoreNginx reads a published tree from a real nginx, over http
// and https, under a prefix.
func TestHTTPStoreNginx(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) { testHTTPStoreNginx(t, scheme) })
	}
}

func testHTTPStoreNginx(t *testing.T, scheme string) {
	ctx := context.Background()
	tree := serveTree(t, scheme)
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	const key = "artifacts/hello/1.0.0/linux-amd64/hello"
	tree.put(t, "fleet/"+key, body)
	s, err := Open(tree.storeURL("fleet"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), tree.srv.URL+"/fleet"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}

	var info Info
	t.Run("stat", func(t *testing.T) {
		before := len(tree.srv.Requests())
		info, err = s.Stat(ctx, key)
		if err != nil || info.Size != int64(len(body)) || !strings.HasPrefix(info.ETag, `"`) || info.ModTime.IsZero() {
			t.Fatalf("Stat = %+v, %v; want size %d, nginx's ETag and time", info, err, len(body))
		}
		tree.sawRequest(t, before, "HEAD /fleet/"+key+" 200")
	})
	t.Run("open whole", func(t *testing.T) {
		rc, got, err := s.Open(ctx, key, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(data, body) || got.ETag != info.ETag || got.Size != info.Size {
			t.Fatalf("Open read %d bytes, %v, %+v; want %d bytes, %+v", len(data), err, got, len(body), info)
		}
	})
	t.Run("escaped key", func(t *testing.T) {
		const odd = "packages/we?ird #%20name;x/1.0.0+b/package.json"
		tree.put(t, "fleet/"+odd, []byte("odd"))
		data, _, err := ReadSmall(ctx, s, odd, 10, OpenOptions{})
		if err != nil || string(data) != "odd" {
			t.Fatalf("ReadSmall(%q) = %q, %v", odd, data, err)
		}
	})
	t.Run("if-none-match", func(t *testing.T) {
		before := len(tree.srv.Requests())
		if _, _, err := s.Open(ctx, key, OpenOptions{IfNoneMatch: info.ETag}); !errors.Is(err, ErrNotModified) {
			t.Fatalf("Open with the current ETag in If-None-Match = %v, want ErrNotModified", err)
		}
		tree.sawRequest(t, before, " 304 range=[] if_match=[] if_range=[] if_none_match=["+info.ETag+"]")
		rc, _, err := s.Open(ctx, key, OpenOptions{IfNoneMatch: `"other"`})
		if err != nil {
			t.Fatalf("Open with another ETag in If-None-Match = %v, want the body", err)
		}
		rc.Close()
	})
	t.Run("ranged resume", func(t *testing.T) {
		before := len(tree.srv.Requests())
		rc, got, err := s.Open(ctx, key, OpenOptions{Offset: 1000, IfMatch: info.ETag})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(data, body[1000:]) || got.Size != int64(len(body)) || got.ETag != info.ETag {
			t.Fatalf("ranged Open read %d bytes, %v, %+v; want %d bytes of %d", len(data), err, got, len(body)-1000, len(body))
		}
		tree.sawRequest(t, before, fmt.Sprintf(" 206 range=[bytes=1000-] if_match=[%s] if_range=[%s]", info.ETag, info.ETag))
	})
	t.Run("changed between ranges", func(t *testing.T) {
		const k = "artifacts/changing/1/linux-amd64/c"
		tree.put(t, "fleet/"+k, body)
		rc, first, err := s.Open(ctx, k, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		part := make([]byte, 100)
		_, err = io.ReadFull(rc, part)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		// A new version under nginx: its ETag (mtime and size) differs.
		tree.put(t, "fleet/"+k, append([]byte("v2"), body...))
		later := time.Now().Add(time.Hour)
		os.Chtimes(filepath.Join(tree.dir.dir, "fleet", k), later, later)
		before := len(tree.srv.Requests())
		rc, _, err = s.Open(ctx, k, OpenOptions{Offset: 100, IfMatch: first.ETag})
		if !errors.Is(err, ErrChanged) || rc != nil {
			t.Fatalf("ranged Open of a replaced object = %v, want ErrChanged and no body", err)
		}
		// The first read, cut short, may be logged after this one.
		tree.sawRequest(t, before, fmt.Sprintf(" 412 range=[bytes=100-] if_match=[%s] if_range=[%s]", first.ETag, first.ETag))
	})
	t.Run("rewritten within a second", func(t *testing.T) {
		// nginx's ETag is the whole-second mtime and the size: the
		// directory store makes every rewrite a later second.
		const k = "agents/edge-01/assignments.json"
		tree.put(t, "fleet/"+k, []byte(`{"serial": 1}`))
		first, err := s.Stat(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		tree.put(t, "fleet/"+k, []byte(`{"serial": 2}`))
		if _, _, err := s.Open(ctx, k, OpenOptions{IfNoneMatch: first.ETag}); err != nil {
			t.Fatalf("a document rewritten at once at the same size, read with the old ETag: %v, want the new document", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		if _, err := s.Stat(ctx, "artifacts/missing"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(missing) = %v, want ErrNotFound", err)
		}
		if _, _, err := s.Open(ctx, "artifacts/missing", OpenOptions{}); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(missing) = %v, want ErrNotFound", err)
		}
		// A directory: nginx redirects to its index, then forbids it.
		// 403 is an error, not "no such object".
		_, _, err := s.Open(ctx, "artifacts/hello", OpenOptions{})
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "403") {
			t.Errorf("Open(a directory) = %v, want 403 and not ErrNotFound", err)
		}
	})
	t.Run("invalid keys never reach the server", func(t *testing.T) {
		// A store of its own prefix: whatever it sends is logged under it.
		g, err := Open(tree.storeURL("guarded"))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"", "../etc/passwd", "a/../../b", "/abs", "a//b", "a\\b", "./a", "a/", "a\x00b", "a\nb"} {
			if _, _, err := g.Open(ctx, k, OpenOptions{}); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Open(%q) = %v, want ErrInvalidKey", k, err)
			}
			if _, err := g.Stat(ctx, k); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidKey", k, err)
			}
		}
		// A sentinel request after them: once it is logged, so would be
		// anything nginx answered before it.
		g.Stat(ctx, "sentinel")
		tree.sawRequest(t, 0, "/guarded/sentinel ")
		var guarded []string
		for _, r := range tree.srv.Requests() {
			if strings.Contains(r, "/guarded") {
				guarded = append(guarded, r)
			}
		}
		if len(guarded) != 1 {
			t.Fatalf("nginx saw %q, want only the sentinel", guarded)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		if !ReadOnly(s) || !errors.Is(Writable(s), ErrReadOnly) {
			t.Fatalf("ReadOnly = %v, Writable = %v", ReadOnly(s), Writable(s))
		}
		errs := map[string]error{}
		_, errs["Put"] = s.Put(ctx, key, strings.NewReader("x"), 1)
		_, errs["PutIfMatch"] = s.PutIfMatch(ctx, key, strings.NewReader("x"), 1, "")
		errs["Delete"] = s.Delete(ctx, key)
		errs["List"] = s.List(ctx, "artifacts/", func(Info) error { return nil })
		for op, err := range errs {
			if !errors.Is(err, ErrReadOnly) || !strings.Contains(err.Error(), tree.srv.URL) {
				t.Errorf("%s = %v, want ErrReadOnly naming the store", op, err)
			}
		}
		if data, _, err := ReadSmall(ctx, s, key, 1<<20, OpenOptions{}); err != nil || !bytes.Equal(data, body) {
			t.Fatalf("the object after the refused writes: %d bytes, %v", len(data), err)
		}
	})
	if scheme != "https" {
		return
	}
	t.Run("untrusted certificate", func(t *testing.T) {
		other := newPKI(t)
		for name, u := range map[string]string{
			"system roots":    tree.srv.URL,
			"another CA file": tree.srv.URL + "?ca_file=" + url.QueryEscape(other.caFile),
		} {
			s, err := Open(u)
			if err != nil {
				t.Fatal(err)
			}
			before := len(tree.srv.Requests())
			_, err = s.Stat(ctx, "fleet/"+key)
			var unknown x509.UnknownAuthorityError
			if !errors.As(err, &unknown) {
				t.Errorf("%s: Stat = %v, want the certificate refused", name, err)
			}
			if n := len(tree.srv.Requests()); n != before {
				t.Errorf("%s: nginx answered a request over the refused connection", name)
			}
		}
	})
}

// hostile is an httptest server whose handler a test sets, and a store
// reading it.
type hostile struct {
	srv  *httptest.Server
	s    *HTTP
	hits atomic.Int32
}

func newHostile(t *testing.T, h http.HandlerFunc) *hostile {
	t.Helper()
	x := &hostile{}
	x.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(x.srv.Close)
	s, err := Open(x.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	x.s = s.(*HTTP)
	t.Cleanup(x.s.client.CloseIdleConnections)
	return x
}

// hijack answers with raw bytes: the head as given, then body, then
// garbage until the client stops reading (bounded by a deadline).
func hijack(t *testing.T, w http.ResponseWriter, head string, body []byte) {
	c, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	buf.WriteString(head)
	buf.Write(body)
	junk := bytes.Repeat([]byte("X"), 64<<10)
	for i := 0; i < 1024; i++ { // at most 64 MiB
		if _, err := buf.Write(junk); err != nil {
			return
		}
	}
	buf.Flush()
}

// endless writes junk until the client goes or 64 MiB are written.
func endless(w http.ResponseWriter) {
	junk := bytes.Repeat([]byte("X"), 64<<10)
	for i := 0; i < 1024; i++ {
		if _, err := w.Write(junk); err != nil {
			return
		}
	}
}

// TestHTTPStoreHostileServers: what a misbehaving server answers is
// refused or cut to the size it stated; nothing past it is read, and no
// wrong bytes are handed on as the object's.
func TestHTTPStoreHostileServers(t *testing.T) {
	ctx := context.Background()
	body := []byte(strings.Repeat("0123456789", 10)) // 100 bytes

	t.Run("ignores Range", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"v1"`)
			w.Write(body) // 200, whole
		})
		rc, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"v1"`})
		if !errors.Is(err, ErrRangeIgnored) || rc != nil {
			t.Fatalf("ranged Open answered with the whole object = %v, want ErrRangeIgnored and no body", err)
		}
		// The same answer with another ETag: If-Range did its work.
		if _, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"v0"`}); !errors.Is(err, ErrChanged) {
			t.Fatalf("ranged Open answered with another version = %v, want ErrChanged", err)
		}
	})
	t.Run("more than Content-Length", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			hijack(t, w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: \"e\"\r\nConnection: close\r\n\r\n", body)
		})
		rc, info, err := x.s.Open(ctx, "artifacts/a", OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(data, body) || info.Size != 100 {
			t.Fatalf("read %d bytes, %v (size %d); want exactly the 100 stated", len(data), err, info.Size)
		}
	})
	t.Run("more than Content-Range", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"e"`)
			w.Header().Set("Content-Range", "bytes 10-99/100")
			w.WriteHeader(http.StatusPartialContent) // chunked: no Content-Length
			w.Write(body[10:])
			endless(w)
		})
		rc, info, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"e"`})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(data, body[10:]) || info.Size != 100 {
			t.Fatalf("read %d bytes, %v (size %d); want exactly the 90 the range states", len(data), err, info.Size)
		}
	})
	t.Run("Content-Length beyond Content-Range", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			hijack(t, w, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-99/100\r\nContent-Length: 1000000\r\nETag: \"e\"\r\n\r\n", body)
		})
		if rc, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"e"`}); err == nil || rc != nil {
			t.Fatalf("Open of a 206 whose lengths disagree = %v, want an error", err)
		}
	})
	t.Run("no length", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"e"`)
			w.WriteHeader(http.StatusOK)
			endless(w) // chunked, endless
		})
		if rc, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{}); err == nil || rc != nil || !strings.Contains(err.Error(), "Content-Length") {
			t.Fatalf("Open of a body without a length = %v, want refused", err)
		}
		if _, err := x.s.Stat(ctx, "artifacts/a"); err == nil {
			t.Fatal("Stat of an object without a length succeeded")
		}
	})
	t.Run("ignores If-None-Match", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"v1"`)
			w.Write(body)
		})
		if _, _, err := x.s.Open(ctx, "agents/a/assignments.json", OpenOptions{IfNoneMatch: `"v1"`}); !errors.Is(err, ErrNotModified) {
			t.Fatalf("the unchanged object answered in full = %v, want ErrNotModified", err)
		}
	})
	t.Run("206 from the wrong start", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"e"`)
			w.Header().Set("Content-Range", "bytes 0-99/100")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body)
		})
		rc, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"e"`})
		if err == nil || rc != nil || errors.Is(err, ErrRangeIgnored) || errors.Is(err, ErrChanged) {
			t.Fatalf("Open answered from byte 0 for bytes=10- = %v, want an error", err)
		}
		if rc, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{}); err == nil || rc != nil {
			t.Fatalf("206 to a request without Range = %v, want an error", err)
		}
	})
	t.Run("206 without the ETag", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 10-99/100")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body[10:])
		})
		if _, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10, IfMatch: `"e"`}); !errors.Is(err, ErrChanged) {
			t.Fatalf("206 that does not say it is the same object = %v, want ErrChanged", err)
		}
	})
	t.Run("no ETag to resume from", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
		if _, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{Offset: 10}); !errors.Is(err, ErrChanged) || x.hits.Load() != 0 {
			t.Fatalf("ranged Open without If-Match = %v after %d requests, want ErrChanged before any", err, x.hits.Load())
		}
	})
	t.Run("status codes", func(t *testing.T) {
		for code, want := range map[int]error{404: ErrNotFound, 410: ErrNotFound, 412: ErrChanged, 403: nil, 500: nil, 416: nil, 304: nil} {
			x := newHostile(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })
			_, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{})
			switch {
			case err == nil:
				t.Errorf("%d: Open succeeded", code)
			case want != nil && !errors.Is(err, want):
				t.Errorf("%d: Open = %v, want %v", code, err, want)
			case want == nil && (errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotModified) || errors.Is(err, ErrChanged)):
				t.Errorf("%d: Open = %v, want a plain error", code, err)
			}
		}
	})
	t.Run("encoded body", func(t *testing.T) {
		x := newHostile(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Accept-Encoding") != "identity" {
				t.Errorf("Accept-Encoding %q, want identity", r.Header.Get("Accept-Encoding"))
			}
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(body)
		})
		if _, _, err := x.s.Open(ctx, "artifacts/a", OpenOptions{}); err == nil || !strings.Contains(err.Error(), "gzip") {
			t.Fatalf("Open of a gzip-encoded body = %v, want refused", err)
		}
	})
	t.Run("redirects", func(t *testing.T) {
		var plainHits atomic.Int32
		plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			plainHits.Add(1)
			w.Write(body)
		}))
		defer plain.Close()
		tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/artifacts/down":
				http.Redirect(w, r, plain.URL+"/artifacts/a", http.StatusFound)
			case "/artifacts/moved":
				http.Redirect(w, r, "/artifacts/a", http.StatusMovedPermanently)
			case "/artifacts/loop":
				http.Redirect(w, r, "/artifacts/loop", http.StatusFound)
			default:
				w.Write(body)
			}
		}))
		defer tlsSrv.Close()
		ca := filepath.Join(t.TempDir(), "ca.pem")
		os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)
		s, err := Open(tlsSrv.URL + "?ca_file=" + url.QueryEscape(ca))
		if err != nil {
			t.Fatal(err)
		}
		if data, _, err := ReadSmall(ctx, s, "artifacts/moved", 1000, OpenOptions{}); err != nil || !bytes.Equal(data, body) {
			t.Fatalf("https to https redirect: %q, %v", data, err)
		}
		if _, _, err := s.Open(ctx, "artifacts/down", OpenOptions{}); err == nil || !strings.Contains(err.Error(), "refused") || plainHits.Load() != 0 {
			t.Fatalf("https to http redirect = %v, %d plain requests; want refused before any", err, plainHits.Load())
		}
		if _, _, err := s.Open(ctx, "artifacts/loop", OpenOptions{}); err == nil || !strings.Contains(err.Error(), "redirects") {
			t.Fatalf("a redirect loop = %v, want stopped", err)
		}
	})
}

// TestS3RangeIgnored: the S3 backend tells a server that ignored Range
// the same way (a fake S3 endpoint: what is tested is the protocol).
func TestS3RangeIgnored(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	body := []byte(strings.Repeat("0123456789", 10))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(body)
	}))
	defer srv.Close()
	s, err := Open("s3://bucket?endpoint=" + srv.Listener.Addr().String() + "&insecure=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := s.Open(context.Background(), "artifacts/a", OpenOptions{Offset: 10, IfMatch: "v1"})
	if !errors.Is(err, ErrRangeIgnored) || rc != nil {
		t.Fatalf("S3 ranged Open answered with the whole object = %v, want ErrRangeIgnored", err)
	}
}

func TestParseHTTPURL(t *testing.T) {
	good := []struct {
		in   string
		want HTTPConfig
	}{
		{"http://cdn.example", HTTPConfig{Scheme: "http", Host: "cdn.example"}},
		{"https://cdn.example:8443/fleet/a/?ca_file=/etc/ca.pem", HTTPConfig{Scheme: "https", Host: "cdn.example:8443", Prefix: "fleet/a/", CAFile: "/etc/ca.pem"}},
		{"https://[::1]:8443/", HTTPConfig{Scheme: "https", Host: "[::1]:8443"}},
	}
	for _, tc := range good {
		got, err := ParseURL(tc.in)
		if err != nil || got != (URL{Scheme: tc.want.Scheme, HTTP: tc.want}) {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"http://", "https:///x", "http://user:pw@cdn.example", "http://token@cdn.example",
		"http://cdn.example?ca_file=/x", "https://cdn.example?bogus=1", "https://cdn.example?ca_file=",
		"https://cdn.example?ca_file=/a&ca_file=/b", "https://cdn.example/a/../b", "https://cdn.example/a//b",
		"https://cdn.example/#frag", "https://cdn.example:port", "http:cdn.example", "https://cdn.example?ca_file=/x;y=1",
	} {
		if u, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) = %+v, want error", bad, u)
		}
	}
}
