package delivery

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/addond/addond/daemon/assignment"
)

// errPastSize: the artifact decompresses to more than its signed size.
var errPastSize = errors.New("decompresses past the signed size")

// unzstd is the pass's decompressing consumer: it rides the pipeline like
// a hash, takes the object's compressed bytes in order, and hands what
// they decompress to — never more than limit bytes — to a pipeline of its
// own, whose writer fills out while sum hashes, both alongside the
// decoder. Its errors are the decoder's (corrupt or oversized input) and
// out's.
type unzstd struct {
	pw   *io.PipeWriter
	done chan struct{}
	n    int64 // bytes decompressed
	err  error
}

func newUnzstd(out *os.File, sum hash.Hash, limit int64) *unzstd {
	pr, pw := io.Pipe()
	u := &unzstd{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		dec, err := zstd.NewReader(pr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(assignment.MaxZstdWindow),
			zstd.WithDecoderMaxMemory(uint64(max(limit, 1))+assignment.MaxZstdWindow))
		if err == nil {
			p := newPipeline(out, limit, sum)
			u.n, err = p.feed(&capReader{r: dec, left: limit}, 0, false)
			err = cmpErr(err, p.close())
			dec.Close()
		}
		u.err = err
		// Unblocks the pipeline's writes when the decoder stopped early.
		pr.CloseWithError(cmpErr(err, io.ErrClosedPipe))
	}()
	return u
}

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// Write hands compressed bytes to the decoder. A failure is kept by the
// decoder's goroutine and returned by finish; the pipeline ignores it.
func (u *unzstd) Write(p []byte) (int, error) { return u.pw.Write(p) }

// The rest of hash.Hash: unzstd only rides the pipeline.
func (u *unzstd) Sum(b []byte) []byte { return b }
func (u *unzstd) Reset()              {}
func (u *unzstd) Size() int           { return 0 }
func (u *unzstd) BlockSize() int      { return 1 << 17 }

// finish ends the compressed stream and returns the bytes decompressed,
// or why decompression failed.
func (u *unzstd) finish() (int64, error) {
	u.pw.Close()
	<-u.done
	if u.err != nil {
		return u.n, fmt.Errorf("zstd: %w", u.err)
	}
	return u.n, nil
}

// abort stops the decoder without waiting for the stream's end.
func (u *unzstd) abort() {
	u.pw.CloseWithError(errors.New("download ended"))
	<-u.done
}

// capReader reads r up to left bytes; a byte beyond them is errPastSize,
// and is never returned.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			return 0, errPastSize
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
