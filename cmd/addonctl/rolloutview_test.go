package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/rollout"
)

// TestRolloutView: the event lines go to standard output whole and
// unchanged, with or without a terminal; on a terminal a bar of the
// current wave is drawn on standard error and cleared at the end.
func TestRolloutView(t *testing.T) {
	stands := []rollout.Stand{
		{Wave: 1, Waves: 2, Name: "wave 1/2 (canary)", Agents: 1, Waiting: 1, Total: 5},
		{Wave: 1, Waves: 2, Name: "wave 1/2 (canary)", Agents: 1, Changed: 1, Total: 5},
		{Wave: 1, Waves: 2, Name: "wave 1/2 (canary)", Agents: 1, Promoted: 1, Done: 1, Total: 5},
		{Wave: 2, Waves: 2, Name: "wave 2/2", Agents: 4, Waiting: 2, Changed: 1, Failed: 1, Done: 1, Total: 5},
	}
	lines := []string{"wave 1/2 (canary): 1 agents", "edge-01: hello 1.0.0 -> 1.1.0 (serial 2)", "edge-01: promoted", "wave 2/2: 4 agents", "edge-03: failed: \x1b[31mred"}
	for _, terminal := range []bool{false, true} {
		var out, errw bytes.Buffer
		v := newRolloutView(&out, &errw, terminal)
		v.now = func() time.Time { return time.Date(2026, 12, 7, 14, 0, 0, 0, time.UTC) }
		for i, s := range stands {
			v.line(lines[i])
			v.progress(s)
			v.draw()
		}
		v.line(lines[4])
		v.close()

		var want strings.Builder
		for _, l := range lines {
			want.WriteString("14:00:00 " + printable(l) + "\n")
		}
		if out.String() != want.String() {
			t.Fatalf("terminal=%v: standard output\n%q\nwant\n%q", terminal, out.String(), want.String())
		}
		if strings.Contains(out.String(), "\x1b") {
			t.Fatal("an escape sequence reached standard output")
		}
		bar := errw.String()
		if !terminal {
			if bar != "" {
				t.Fatalf("no terminal, yet a bar: %q", bar)
			}
			continue
		}
		// A wave whose agents are all decided has no bar: the canary's
		// last drawing is of it pending.
		for _, s := range []string{"wave 1/2 (canary): 0 promoted, 0 failed, 1 pending",
			"wave 2/2: 0 promoted, 1 failed, 1 pending", "(1/4)"} {
			if !strings.Contains(bar, s) {
				t.Fatalf("the bar never showed %q:\n%q", s, bar)
			}
		}
		// The bar's last drawing is cleared: the terminal's line ends blank.
		last := bar[strings.LastIndex(bar, "\r")-1:]
		if strings.Trim(last, " \r") != "" {
			t.Fatalf("the bar was left on the terminal: %q", bar[max(0, len(bar)-200):])
		}
	}
}
