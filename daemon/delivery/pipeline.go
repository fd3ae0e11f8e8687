package delivery

import (
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// pipeline is the one streaming pass: bytes read from the store are handed,
// without copying, to one goroutine per consumer — the SHA-256 hasher, the
// Ed25519 verifier (SHA-512) for each candidate key, and the file writer —
// so hashing and writing overlap the network read and each other.
//
// On a small machine SHA-512 is the critical path (about 0.75 GB/s on one
// core), so the pipeline is built to keep it busy: enough buffers in flight
// that a reader or writer descheduled for a few time slices does not starve
// it, and the kernel's writeback started from a goroutine of its own, so
// that a congested disk queue never stalls the hashes. Buffers come from a
// fixed pool sized by the artifact (at most maxInFlight), so memory stays
// flat whatever the size of the artifact.
type pipeline struct {
	pool      chan []byte
	consumers []chan *chunk
	pending   sync.WaitGroup // chunks not yet released by every consumer
	workers   sync.WaitGroup
	err       atomic.Pointer[error] // first write error
	// written, when set, is called by the writer after each chunk
	// reaches the file (fault injection in test builds).
	written func(end int64)
}

const (
	chunkSize   = 1 << 20
	maxInFlight = 12 << 20
	// writebackEvery starts the kernel's writeback of what was written so
	// far, so that the final fsync has little left to wait for.
	writebackEvery = 16 << 20
)

type chunk struct {
	b    []byte
	off  int64
	refs atomic.Int32
	p    *pipeline
	skip bool // already on disk (resuming): hash, do not write
}

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 {
		c.p.pool <- c.b[:cap(c.b)]
		c.p.pending.Done()
	}
}

// newPipeline starts one goroutine per hash and, with a file, one writer
// and one writeback goroutine. size (the bytes expected; 0 if unknown)
// bounds the buffer pool.
func newPipeline(f *os.File, size int64, hashes ...hash.Hash) *pipeline {
	n := maxInFlight / chunkSize
	if size > 0 {
		n = int(min(int64(n), max(2, (size+chunkSize-1)/chunkSize)))
	}
	p := &pipeline{pool: make(chan []byte, n)}
	for i := 0; i < n; i++ {
		p.pool <- make([]byte, chunkSize)
	}
	for _, h := range hashes {
		ch := make(chan *chunk, n)
		p.consumers = append(p.consumers, ch)
		p.workers.Add(1)
		go func() {
			defer p.workers.Done()
			for c := range ch {
				h.Write(c.b)
				c.release()
			}
		}()
	}
	if f != nil {
		ch := make(chan *chunk, n)
		p.consumers = append(p.consumers, ch)
		flush := make(chan int64, 1)
		p.workers.Add(2)
		go func() {
			defer p.workers.Done()
			p.write(f, ch, flush)
		}()
		go func() {
			defer p.workers.Done()
			writeback(f, flush)
		}()
	}
	return p
}

// write is the writer goroutine: chunks in, positioned writes out; every
// writebackEvery bytes it tells the writeback goroutine how far the file
// is written, without ever waiting for it.
func (p *pipeline) write(f *os.File, ch <-chan *chunk, flush chan int64) {
	defer close(flush)
	var last int64
	for c := range ch {
		if !c.skip && p.err.Load() == nil {
			end := c.off + int64(len(c.b))
			if _, err := f.WriteAt(c.b, c.off); err != nil {
				p.err.CompareAndSwap(nil, &err)
			} else {
				if p.written != nil {
					p.written(end)
				}
				if end-last >= writebackEvery {
					select {
					case <-flush: // replace a request not yet taken
					default:
					}
					flush <- end
					last = end
				}
			}
		}
		c.release()
	}
}

// writeback starts asynchronous writeback (SYNC_FILE_RANGE_WRITE) up to
// each offset it is told about. It may block on a congested disk queue;
// nothing waits for it.
func writeback(f *os.File, flush <-chan int64) {
	var done int64
	for end := range flush {
		if end > done {
			unix.SyncFileRange(int(f.Fd()), done, end-done, unix.SYNC_FILE_RANGE_WRITE)
			done = end
		}
	}
}

// feed copies r into the pipeline starting at file offset off, until r is
// exhausted or fails. It returns the offset reached: every byte before it
// has been handed to every consumer, even when err is not nil.
func (p *pipeline) feed(r io.Reader, off int64, skipWrite bool) (int64, error) {
	for {
		if err := p.writeErr(); err != nil {
			return off, err
		}
		buf := <-p.pool
		n, err := fill(r, buf)
		if n > 0 {
			c := &chunk{b: buf[:n], off: off, p: p, skip: skipWrite}
			c.refs.Store(int32(len(p.consumers)))
			p.pending.Add(1)
			for _, ch := range p.consumers {
				ch <- c
			}
			off += int64(n)
		} else {
			p.pool <- buf
		}
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// fill reads into buf until it is full or r fails. Unlike io.ReadFull it
// passes every error through as is, so a body cut short
// (io.ErrUnexpectedEOF from net/http) is never mistaken for a clean end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// wait blocks until every chunk handed in so far has been consumed and
// returns the first write error.
func (p *pipeline) wait() error {
	p.pending.Wait()
	return p.writeErr()
}

func (p *pipeline) writeErr() error {
	if e := p.err.Load(); e != nil {
		return *e
	}
	return nil
}

// close stops the consumers after the last chunk.
func (p *pipeline) close() error {
	err := p.wait()
	for _, ch := range p.consumers {
		close(ch)
	}
	p.workers.Wait()
	return err
}
