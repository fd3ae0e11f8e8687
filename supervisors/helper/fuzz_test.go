package helper

import (
	"bytes"
	"io"
	"testing"
)

// repeatReader yields chunk n times, in reads of at most step bytes.
type repeatReader struct {
	chunk []byte
	n     int
	off   int
	step  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 || len(r.chunk) == 0 {
		return 0, io.EOF
	}
	if len(p) > r.step {
		p = p[:r.step]
	}
	k := copy(p, r.chunk[r.off:])
	r.off += k
	if r.off == len(r.chunk) {
		r.off, r.n = 0, r.n-1
	}
	return k, nil
}

// FuzzReadBounded: a helper's stdout and stderr are the add-on's to write.
// What is kept is exactly the first OutputLimit bytes, and truncated says
// whether anything was dropped; the whole stream is drained either way.
func FuzzReadBounded(f *testing.F) {
	f.Add([]byte("probe: a b\n"), uint16(1), uint16(4096))
	f.Add([]byte{}, uint16(3), uint16(1))
	f.Add(bytes.Repeat([]byte("x"), 1024), uint16(1024), uint16(65535)) // exactly the limit
	f.Add(bytes.Repeat([]byte("y"), 1024), uint16(1025), uint16(7))     // one chunk more
	f.Add([]byte("z"), uint16(65535), uint16(3))
	f.Fuzz(func(t *testing.T, chunk []byte, n, step uint16) {
		if step == 0 {
			step = 1
		}
		total := len(chunk) * int(n)
		if total > 4*OutputLimit {
			return
		}
		r := &repeatReader{chunk: chunk, n: int(n), step: int(step)}
		got, truncated := readBounded(r)
		want := bytes.Repeat(chunk, int(n))
		if len(want) > OutputLimit {
			want = want[:OutputLimit]
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("kept %d bytes, want the first %d", len(got), len(want))
		}
		if truncated != (total > OutputLimit) {
			t.Fatalf("%d bytes: truncated = %v", total, truncated)
		}
		if r.n != 0 && len(chunk) > 0 {
			t.Fatal("the stream was not drained")
		}
	})
}
