package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/vmtest/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Run(m)) }

// testStore is the conformance suite both backends pass.
func testStore(t *testing.T, s Store) {
	ctx := context.Background()
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	info, err := s.Put(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if info.Size != int64(len(body)) || info.ETag == "" {
		t.Fatalf("Put info = %+v, want size %d and an ETag", info, len(body))
	}

	t.Run("stat", func(t *testing.T) {
		got, err := s.Stat(ctx, "artifacts/hello/1.0.0/linux-amd64/hello")
		if err != nil || got.Size != info.Size || got.ETag != info.ETag {
			t.Fatalf("Stat = %+v, %v; want %+v", got, err, info)
		}
	})
	t.Run("open whole", func(t *testing.T) {
		rc, got, err := s.Open(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(data, body) || got.ETag != info.ETag {
			t.Fatalf("Open read %d bytes, %v, etag %q; want %d bytes, etag %q", len(data), err, got.ETag, len(body), info.ETag)
		}
	})
	t.Run("open ranged with matching etag", func(t *testing.T) {
		rc, got, err := s.Open(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", OpenOptions{Offset: 1000, IfMatch: info.ETag})
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(data, body[1000:]) || got.Size != int64(len(body)) {
			t.Fatalf("ranged Open read %d bytes, %v, size %d; want %d bytes, size %d", len(data), err, got.Size, len(body)-1000, len(body))
		}
	})
	t.Run("if-match on a changed object", func(t *testing.T) {
		_, _, err := s.Open(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", OpenOptions{Offset: 10, IfMatch: "0123456789abcdef0123456789abcdef"})
		if !errors.Is(err, ErrChanged) {
			t.Fatalf("Open with stale If-Match = %v, want ErrChanged", err)
		}
	})
	t.Run("if-none-match", func(t *testing.T) {
		_, _, err := s.Open(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", OpenOptions{IfNoneMatch: info.ETag})
		if !errors.Is(err, ErrNotModified) {
			t.Fatalf("Open with current If-None-Match = %v, want ErrNotModified", err)
		}
		rc, _, err := s.Open(ctx, "artifacts/hello/1.0.0/linux-amd64/hello", OpenOptions{IfNoneMatch: "other"})
		if err != nil {
			t.Fatalf("Open with other If-None-Match = %v, want the body", err)
		}
		rc.Close()
	})
	t.Run("replace changes etag", func(t *testing.T) {
		other := []byte("a different body")
		ni, err := s.Put(ctx, "packages/x/1/package.json", bytes.NewReader(other), int64(len(other)))
		if err != nil {
			t.Fatal(err)
		}
		ni2, err := s.Put(ctx, "packages/x/1/package.json", bytes.NewReader(append(other, '!')), int64(len(other)+1))
		if err != nil {
			t.Fatal(err)
		}
		if ni.ETag == ni2.ETag {
			t.Fatalf("ETag unchanged after replacing the object: %q", ni.ETag)
		}
		data, _, err := ReadSmall(ctx, s, "packages/x/1/package.json", 100, OpenOptions{})
		if err != nil || string(data) != "a different body!" {
			t.Fatalf("ReadSmall = %q, %v", data, err)
		}
		if _, _, err := ReadSmall(ctx, s, "packages/x/1/package.json", 5, OpenOptions{}); err == nil {
			t.Fatal("ReadSmall over the limit succeeded")
		}
	})
	t.Run("not found", func(t *testing.T) {
		if _, err := s.Stat(ctx, "artifacts/missing"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(missing) = %v, want ErrNotFound", err)
		}
		if _, _, err := s.Open(ctx, "artifacts/missing", OpenOptions{}); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(missing) = %v, want ErrNotFound", err)
		}
	})
	t.Run("invalid keys", func(t *testing.T) {
		for _, k := range []string{"", "../etc/passwd", "a/../../b", "/abs", "a//b", "a\\b", "./a", "a/", "a\x00b"} {
			if _, _, err := s.Open(ctx, k, OpenOptions{}); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Open(%q) = %v, want ErrInvalidKey", k, err)
			}
			if _, err := s.Put(ctx, k, strings.NewReader("x"), 1); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Put(%q) = %v, want ErrInvalidKey", k, err)
			}
		}
	})
	t.Run("list", func(t *testing.T) {
		for _, k := range []string{"agents/b/status.json", "agents/a/status.json", "agents/a/assignments.json", "agentsx/c"} {
			if _, err := s.Put(ctx, k, strings.NewReader(k), int64(len(k))); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		err := s.List(ctx, "agents/", func(i Info) error {
			if i.Size != int64(len(i.Key)) || i.ETag == "" || i.ModTime.IsZero() {
				t.Errorf("listed %+v: want its size, ETag and time", i)
			}
			got = append(got, i.Key)
			return nil
		})
		if want := "agents/a/assignments.json agents/a/status.json agents/b/status.json"; err != nil || strings.Join(got, " ") != want {
			t.Fatalf("List(agents/) = %q, %v; want %q", got, err, want)
		}
		stop := errors.New("enough")
		n := 0
		if err := s.List(ctx, "agents/", func(Info) error { n++; return stop }); err != stop || n != 1 {
			t.Fatalf("List stopped by fn: %v after %d, want %v after 1", err, n, stop)
		}
		if err := s.List(ctx, "nothing/here/", func(i Info) error { return fmt.Errorf("listed %s", i.Key) }); err != nil {
			t.Fatalf("List of an empty prefix = %v", err)
		}
		for _, p := range []string{"agents", "../", "a//", "/abs/"} {
			if err := s.List(ctx, p, func(Info) error { return nil }); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("List(%q) = %v, want ErrInvalidKey", p, err)
			}
		}
	})
	t.Run("conditional put", func(t *testing.T) {
		const k = "agents/cond/assignments.json"
		first, err := s.PutIfMatch(ctx, k, strings.NewReader("v1"), 2, "")
		if err != nil {
			t.Fatalf("PutIfMatch of a new object: %v", err)
		}
		if _, err := s.PutIfMatch(ctx, k, strings.NewReader("xx"), 2, ""); !errors.Is(err, ErrChanged) {
			t.Fatalf("create-only PutIfMatch over an existing object = %v, want ErrChanged", err)
		}
		second, err := s.PutIfMatch(ctx, k, strings.NewReader("v2"), 2, first.ETag)
		if err != nil || second.ETag == first.ETag {
			t.Fatalf("PutIfMatch with the current ETag = %+v, %v", second, err)
		}
		if _, err := s.PutIfMatch(ctx, k, strings.NewReader("v3"), 2, first.ETag); !errors.Is(err, ErrChanged) {
			t.Fatalf("PutIfMatch with a stale ETag = %v, want ErrChanged", err)
		}
		if _, err := s.PutIfMatch(ctx, "agents/cond/gone", strings.NewReader("v3"), 2, first.ETag); !errors.Is(err, ErrChanged) {
			t.Fatalf("PutIfMatch with an ETag of a missing object = %v, want ErrChanged", err)
		}
		if data, _, err := ReadSmall(ctx, s, k, 10, OpenOptions{}); err != nil || string(data) != "v2" {
			t.Fatalf("after the refused writes: %q, %v; want v2", data, err)
		}
		// Writers racing from one version: exactly one wins.
		var wg sync.WaitGroup
		var won atomic.Int32
		for i := range 8 {
			wg.Go(func() {
				body := fmt.Sprintf("w%d", i)
				if _, err := s.PutIfMatch(ctx, k, strings.NewReader(body), int64(len(body)), second.ETag); err == nil {
					won.Add(1)
				} else if !errors.Is(err, ErrChanged) {
					t.Errorf("writer %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Fatalf("%d of 8 writers from one version succeeded, want 1", won.Load())
		}
		var listed []string
		s.List(ctx, "agents/cond/", func(i Info) error { listed = append(listed, i.Key); return nil })
		if strings.Join(listed, " ") != k {
			t.Fatalf("listed %q: the lock or a temporary file shows", listed)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := s.Delete(ctx, "packages/x/1/package.json"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "packages/x/1/package.json"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Stat after Delete = %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "packages/x/1/package.json"); err != nil {
			t.Fatalf("Delete of a missing object = %v, want nil", err)
		}
	})
}

func TestDirStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open("file://" + dir)
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, s)
}

func TestS3Store(t *testing.T) {
	srv := miniotest.Require(t)
	s, err := Open(srv.NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, s)
}

func TestS3StoreUnreachable(t *testing.T) {
	miniotest.Require(t) // credentials in the environment
	s, err := Open("s3://b?endpoint=127.0.0.1:1&insecure=true")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(context.Background(), "x"); err == nil {
		t.Fatal("Stat on a closed port succeeded")
	}
}

func TestDirStoreRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "artifacts"), 0o755)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "artifacts", "link"))
	os.Symlink(outside, filepath.Join(dir, "artifacts", "dirlink"))
	syscall.Mkfifo(filepath.Join(dir, "artifacts", "fifo"), 0o644)
	s, _ := NewDir(dir)
	for _, k := range []string{"artifacts/link", "artifacts/dirlink/secret", "artifacts/fifo"} {
		if rc, _, err := s.Open(context.Background(), k, OpenOptions{}); err == nil {
			rc.Close()
			t.Errorf("Open(%q) succeeded, want refusal", k)
		}
	}
	if _, err := s.Put(context.Background(), "artifacts/dirlink/planted", strings.NewReader("x"), 1); err == nil {
		t.Error("Put through a symlinked directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
		t.Error("Put wrote outside the store")
	}
	os.WriteFile(filepath.Join(dir, "artifacts", ".put-0123"), []byte("half"), 0o644)
	os.WriteFile(filepath.Join(dir, "artifacts", "real"), []byte("x"), 0o644)
	var listed []string
	if err := s.List(context.Background(), "artifacts/", func(i Info) error { listed = append(listed, i.Key); return nil }); err != nil || strings.Join(listed, " ") != "artifacts/real" {
		t.Errorf("List = %q, %v; want only artifacts/real (no links, fifos or a Put's temporary file)", listed, err)
	}
	os.Symlink(outside, filepath.Join(dir, "linked"))
	if err := s.List(context.Background(), "linked/", func(i Info) error { return fmt.Errorf("listed %s outside the store", i.Key) }); err != nil {
		t.Errorf("List through a symlinked directory: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	good := []struct {
		in   string
		want URL
	}{
		{"file:///srv/addons", URL{Scheme: "file", Path: "/srv/addons"}},
		{"s3://addons?endpoint=127.0.0.1:9000&insecure=true", URL{Scheme: "s3", S3: S3Config{Bucket: "addons", Endpoint: "127.0.0.1:9000", Insecure: true}}},
		{"s3://addons/fleet/a?endpoint=s3.example:443&region=eu-west-1&ca_file=/etc/ca.pem", URL{Scheme: "s3", S3: S3Config{Bucket: "addons", Prefix: "fleet/a/", Endpoint: "s3.example:443", Region: "eu-west-1", CAFile: "/etc/ca.pem"}}},
	}
	for _, tc := range good {
		got, err := ParseURL(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"", "addons", "ftp://x", "file://relative/dir", "file:///srv?x=1", "s3://?endpoint=a:1",
		"s3://b", "s3://b?endpoint=a:1&bogus=1", "s3://b?endpoint=a:1&insecure=maybe",
		"s3://key:secret@b?endpoint=a:1", "s3://b/../x?endpoint=a:1", "s3://b?endpoint=a/b",
		"s3://b?endpoint=a:1&endpoint=b:2",
	} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) succeeded, want error", bad)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"file:///srv/addons", "s3://addons/p?endpoint=127.0.0.1:9000&insecure=true", "s3://b?endpoint=a:1&region=r&ca_file=/x",
		"https://cdn.example:8443/fleet/a?ca_file=/etc/ca.pem", "http://127.0.0.1:8080", "http://[::1]/p/", "https://u@h/", "http://h?ca_file=/x", "https://h/a/../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURL(s)
		if err != nil {
			return
		}
		switch u.Scheme {
		case "file":
			if !strings.HasPrefix(u.Path, "/") {
				t.Fatalf("ParseURL(%q) accepted a relative directory %q", s, u.Path)
			}
		case "s3":
			if u.S3.Bucket == "" || u.S3.Endpoint == "" {
				t.Fatalf("ParseURL(%q) accepted %+v", s, u.S3)
			}
			if u.S3.Prefix != "" && ValidKey(strings.TrimSuffix(u.S3.Prefix, "/")) != nil {
				t.Fatalf("ParseURL(%q) accepted prefix %q", s, u.S3.Prefix)
			}
		case "http", "https":
			c := u.HTTP
			if c.Scheme != u.Scheme || c.Host == "" || c.CAFile != "" && c.Scheme != "https" {
				t.Fatalf("ParseURL(%q) accepted %+v", s, c)
			}
			if c.Prefix != "" && ValidKey(strings.TrimSuffix(c.Prefix, "/")) != nil {
				t.Fatalf("ParseURL(%q) accepted prefix %q", s, c.Prefix)
			}
			if pu, err := url.Parse(s); err != nil || pu.User != nil || pu.Host != c.Host {
				t.Fatalf("ParseURL(%q) accepted %+v: userinfo or another host", s, c)
			}
			if c.CAFile == "" {
				h, err := NewHTTP(c)
				if err != nil {
					t.Fatalf("ParseURL(%q) accepted %+v, NewHTTP refused it: %v", s, c, err)
				}
				if strings.Contains(h.String(), "@") {
					t.Fatalf("String() = %q", h.String())
				}
			}
		default:
			t.Fatalf("ParseURL(%q) returned scheme %q", s, u.Scheme)
		}
	})
}

func FuzzValidKey(f *testing.F) {
	for _, s := range []string{"artifacts/a/1/linux-amd64/a", "../x", "a/./b", "a\\b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if ValidKey(key) != nil {
			return
		}
		if filepath.IsAbs(key) || !filepath.IsLocal(key) || filepath.Clean(key) != key {
			t.Fatalf("ValidKey(%q) accepted a key that is not a clean local path", key)
		}
	})
}

// TestDirConditionalPutLockHeld: a conditional write whose lock someone
// else holds ends with its context, not never.
func TestDirConditionalPutLockHeld(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewDir(dir)
	os.MkdirAll(filepath.Join(dir, "agents", "a"), 0o755)
	lock, err := os.OpenFile(filepath.Join(dir, "agents", "a", ".put-lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.PutIfMatch(ctx, "agents/a/assignments.json", strings.NewReader("x"), 1, "")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("PutIfMatch under a held lock: %v after %v", err, time.Since(start))
	}
	if _, err := os.Stat(filepath.Join(dir, "agents", "a", "assignments.json")); err == nil {
		t.Fatal("written without the lock")
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := s.PutIfMatch(context.Background(), "agents/a/assignments.json", strings.NewReader("x"), 1, ""); err != nil {
		t.Fatalf("after the lock was released: %v", err)
	}
}

// TestSignature: on S3 the signature comes from the object's own metadata
// and no .sig is read (a stale one beside it does not matter); on a
// directory, and for an S3 object written without one, from the .sig.
func TestSignature(t *testing.T) {
	ctx := context.Background()
	srv := miniotest.Require(t)
	s3, err := Open(srv.NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	put := func(s Store, key, body string) {
		t.Helper()
		if _, err := s.Put(ctx, key, strings.NewReader(body), int64(len(body))); err != nil {
			t.Fatal(err)
		}
	}
	read := func(s Store, key string) Info {
		t.Helper()
		_, info, err := ReadSmall(ctx, s, key, 1<<10, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	check := func(what string, s Store, key, wantSig string, wantMeta bool) {
		t.Helper()
		sig, inMeta, err := Signature(ctx, s, key, read(s, key))
		if err != nil || string(sig) != wantSig || inMeta != wantMeta {
			t.Errorf("%s: Signature = %q, in metadata %v, %v; want %q, %v", what, sig, inMeta, err, wantSig, wantMeta)
		}
	}

	sp := s3.(SignedPutter)
	if _, err := sp.PutIfMatchSigned(ctx, "doc", strings.NewReader("body"), 4, "", "aabb"); err != nil {
		t.Fatal(err)
	}
	put(s3, "doc.sig", "stale\n")
	check("S3, signed in its metadata", s3, "doc", "aabb\n", true)
	put(s3, "plain", "body")
	put(s3, "plain.sig", "ccdd\n")
	check("S3, no signature in its metadata", s3, "plain", "ccdd\n", false)
	put(dir, "doc", "body")
	put(dir, "doc.sig", "eeff\n")
	check("directory", dir, "doc", "eeff\n", false)

	put(dir, "unsigned", "body")
	if _, _, err := Signature(ctx, dir, "unsigned", read(dir, "unsigned")); !errors.Is(err, ErrNotFound) {
		t.Errorf("no .sig: %v, want ErrNotFound", err)
	}
	put(dir, "big", "body")
	put(dir, "big.sig", strings.Repeat("a", MaxSigSize+1))
	if sig, _, err := Signature(ctx, dir, "big", read(dir, "big")); err == nil {
		t.Errorf("a .sig over %d bytes was read: %d bytes", MaxSigSize, len(sig))
	}
}
