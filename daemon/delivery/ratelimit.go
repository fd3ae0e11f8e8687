package delivery

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// download_rate_limit: every artifact body is read through one token
// bucket of the Deliverer's, so that all downloads together stay within
// the limit (documents and packages, a few kilobytes, are not counted).
// Reads are cut to the bucket's burst and paid for after they return, so
// the rate holds to within one burst of the limit over any window.

// rateBurst is the bucket's size: a twentieth of a second's worth, at
// least 4 KiB and at most 256 KiB.
func rateBurst(limit int64) int {
	return int(min(max(limit/20, 4<<10), 256<<10))
}

// limitedReader reads r within lim.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	lim *rate.Limiter
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if b := l.lim.Burst(); len(p) > b {
		p = p[:b]
	}
	n, err := l.r.Read(p)
	if n > 0 {
		if werr := l.lim.WaitN(l.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// limited is r read within the download rate limit, if there is one.
func (d *Deliverer) limited(ctx context.Context, r io.Reader) io.Reader {
	if d.rate == nil {
		return r
	}
	return &limitedReader{ctx: ctx, r: r, lim: d.rate}
}

// DefaultStallTimeout is how long a body may send nothing before it is
// given up (and the download retried from where it stopped).
const DefaultStallTimeout = time.Minute

// stallGuard closes a body that sends nothing for d: a server that stops
// mid-body never holds a download (and its slot) for good.
type stallGuard struct {
	rc      io.ReadCloser
	d       time.Duration
	t       *time.Timer
	stalled atomic.Bool
}

func guard(rc io.ReadCloser, d time.Duration) *stallGuard {
	g := &stallGuard{rc: rc, d: d}
	g.t = time.AfterFunc(d, func() {
		g.stalled.Store(true)
		rc.Close()
	})
	return g
}

func (g *stallGuard) Read(p []byte) (int, error) {
	n, err := g.rc.Read(p)
	if n > 0 {
		g.t.Reset(g.d)
	}
	if err != nil && g.stalled.Load() {
		err = fmt.Errorf("no data for %s: %w", g.d, err)
	}
	return n, err
}

func (g *stallGuard) Close() error {
	g.t.Stop()
	return g.rc.Close()
}
