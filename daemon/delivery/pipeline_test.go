package delivery

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/addond/addond/vmtest"
)

func TestPipelineHashesAndWrites(t *testing.T) {
	data := bytes.Repeat([]byte("addond"), 1<<20) // 6 MiB, not a multiple of the chunk
	f, _ := os.Create(filepath.Join(t.TempDir(), "out"))
	defer f.Close()
	h1, h2 := sha256.New(), sha512.New()
	p := newPipeline(f, int64(len(data)), h1, h2)
	n, err := p.feed(iotest.HalfReader(bytes.NewReader(data)), 0, false)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("feed = %d, %v", n, err)
	}
	if err := p.close(); err != nil {
		t.Fatal(err)
	}
	want1, want2 := sha256.Sum256(data), sha512.Sum512(data)
	if !bytes.Equal(h1.Sum(nil), want1[:]) || !bytes.Equal(h2.Sum(nil), want2[:]) {
		t.Fatal("digests differ from one-shot digests")
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, data) {
		t.Fatal("file differs from the stream")
	}
}

func TestPipelineKeepsErrors(t *testing.T) {
	// A body cut short is an error, never a clean end.
	p := newPipeline(nil, 0, sha256.New())
	defer p.close()
	r := io.MultiReader(bytes.NewReader(make([]byte, 1000)), iotest.ErrReader(io.ErrUnexpectedEOF))
	n, err := p.feed(r, 0, false)
	if err != io.ErrUnexpectedEOF || n != 1000 {
		t.Fatalf("feed = %d, %v; want 1000, io.ErrUnexpectedEOF", n, err)
	}
}

func TestPipelineDiskFull(t *testing.T) {
	vmtest.RequireRoot(t, "to mount a small tmpfs")
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	f, _ := os.Create(filepath.Join(dir, "out"))
	defer f.Close()
	p := newPipeline(f, 0, sha256.New())
	_, err := p.feed(bytes.NewReader(make([]byte, 4<<20)), 0, false)
	if err == nil {
		err = p.wait()
	}
	p.close()
	if !isDiskFull(err) {
		t.Fatalf("writing 4 MiB into a 1 MiB tmpfs: %v, want ENOSPC", err)
	}
}
