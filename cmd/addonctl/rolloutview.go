package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/addond/addond/daemon/rollout"
)

// rolloutView shows a rollout: one timestamped line per event on out and,
// when errw is a terminal, a bar of the current wave beneath them (its
// agents decided of all: promoted, failed, and pending: changed, not yet
// judged). The
// rollout tells the view where it stands as often as that changes; the bar
// is drawn from the latest of it a few times a second, and cleared before
// each line and at the end.
type rolloutView struct {
	out  io.Writer
	errw io.Writer // the bar's; nil: no bar
	now  func() time.Time

	mu            sync.Mutex // lines come from the rollout's writers too
	bar           *progressbar.ProgressBar
	latest, shown rollout.Stand

	stop chan struct{}
	done chan struct{}
}

func newRolloutView(out, errw io.Writer, terminal bool) *rolloutView {
	v := &rolloutView{out: out, now: time.Now}
	if terminal {
		v.errw = errw
	}
	return v
}

// start draws the bar every period until close.
func (v *rolloutView) start(period time.Duration) {
	if v.errw == nil {
		return
	}
	v.stop, v.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(v.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-v.stop:
				return
			case <-t.C:
				v.draw()
			}
		}
	}()
}

// line prints one event above the bar.
func (v *rolloutView) line(s string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bar != nil {
		v.bar.Clear()
	}
	fmt.Fprintf(v.out, "%s %s\n", v.now().Format(time.TimeOnly), printable(s))
	if v.bar != nil {
		v.bar.RenderBlank()
	}
}

// progress takes where the rollout stands, for the next drawing.
func (v *rolloutView) progress(s rollout.Stand) {
	v.mu.Lock()
	v.latest = s
	v.mu.Unlock()
}

// draw redraws the bar when the rollout moved since the last drawing: a
// new bar for a new wave; a wave whose agents are all decided has none.
func (v *rolloutView) draw() {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.latest
	if v.errw == nil || s == v.shown || s.Wave == 0 {
		return
	}
	if s.Wave != v.shown.Wave {
		v.clear()
		v.bar = progressbar.NewOptions(s.Agents,
			progressbar.OptionSetWriter(v.errw),
			progressbar.OptionSetWidth(24), // narrowed to fit the terminal
			progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(false),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionThrottle(0), // drawn at the view's pace
			progressbar.OptionClearOnFinish(),
		)
	}
	v.shown = s
	if v.bar == nil {
		return
	}
	// Short enough for 80 columns with the bar's own figures: the lines
	// above say the rest.
	v.bar.Describe(fmt.Sprintf("%s: %d promoted, %d failed, %d pending", s.Name, s.Promoted, s.Failed, s.Changed))
	v.bar.Set(s.Promoted + s.Failed)
}

// close stops the drawing and clears the bar: the lines stay, the bar
// does not.
func (v *rolloutView) close() {
	if v.stop != nil {
		close(v.stop)
		<-v.done
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.clear()
}

func (v *rolloutView) clear() {
	if v.bar != nil {
		v.bar.Exit()
		v.bar.Clear()
		v.bar = nil
	}
}
