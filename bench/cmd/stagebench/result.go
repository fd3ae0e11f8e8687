package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// result is what stagebench prints.
type result struct {
	opts     options
	rssFloor int64 // KiB; see bench.rssFloor
	machine  string
	date     string
	rows     []row
	targets  []target
}

// row summarizes one method's measured runs.
type row struct {
	name             string
	median, min, max time.Duration
	cpu              time.Duration // median user + system
	rss              int64         // highest peak RSS over the runs, KiB
	runs             int
}

// target is one goal and whether the measurement met it.
type target struct {
	name     string
	measured string
	goal     string
	pass     bool
}

func newResult(o options, methods []*method, rssFloor int64, reals []*artifact) *result {
	r := &result{opts: o, rssFloor: rssFloor, machine: machine(), date: time.Now().UTC().Format("2006-01-02 15:04 UTC")}
	by := map[string]row{}
	for _, m := range methods {
		w := make([]time.Duration, len(m.samples))
		c := make([]time.Duration, len(m.samples))
		var rss int64
		for i, s := range m.samples {
			w[i], c[i] = s.wall, s.cpu
			rss = max(rss, s.rss)
		}
		slices.Sort(w)
		rw := row{name: m.name, median: median(w), min: w[0], max: w[len(w)-1], cpu: median(c), rss: rss, runs: len(w)}
		r.rows = append(r.rows, rw)
		by[m.slug] = rw
	}
	add := func(name string, v, goal float64) {
		r.targets = append(r.targets, target{name: name, measured: fmt.Sprintf("%.3f", v), goal: fmt.Sprintf("≤ %.2f", goal), pass: v <= goal})
	}
	ratio := func(slug, label, name, other string, goal float64) {
		add(label+" / "+name+" (median wall time)", by[slug].median.Seconds()/by[other].median.Seconds(), goal)
	}
	ratio("addond", "addond stage", "floor", "floor", 1.10)
	add("addond stage / floor (median CPU time)", by["addond"].cpu.Seconds()/by["floor"].cpu.Seconds(), 1.5)
	ratio("addond", "addond stage", "nomad-way", "nomad", 0.6)
	ratio("addond", "addond stage", "origin-way", "origin", 0.3)
	for _, a := range reals {
		if a.compression == "" {
			continue
		}
		plain := strings.TrimSuffix(a.addonID, "-zst")
		var size int64
		for _, p := range reals {
			if p.addonID == plain {
				size = p.size
			}
		}
		add(fmt.Sprintf("%s: bytes on the wire, zstd / plain", plain), float64(a.storedSize)/float64(size), 0.50)
		add(fmt.Sprintf("%s: addond stage, zstd / plain (median wall time)", plain),
			by["addond-"+a.addonID].median.Seconds()/by["addond-"+plain].median.Seconds(), 1.0)
		if slow, ok := by["addond-"+a.addonID+"-slow"]; ok {
			add(fmt.Sprintf("%s: addond stage over 100 Mbit/s, zstd / plain (median wall time)", plain),
				slow.median.Seconds()/by["addond-"+plain+"-slow"].median.Seconds(), 1.0)
		}
	}
	big, small := by["addond"].rss, by["addond-small"].rss
	diff := mib(big - small)
	r.targets = append(r.targets, target{
		name:     fmt.Sprintf("addond stage peak RSS, %s vs %s artifact", o.size, o.smallSize),
		measured: fmt.Sprintf("%.1f vs %.1f MiB (%+.1f MiB)", mib(big), mib(small), diff),
		goal:     "within 16 MiB",
		pass:     diff <= 16 && diff >= -16,
	})
	return r
}

// median of durations in any order (the mean of the middle two for an
// even count).
func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func (r *result) header() string {
	h := fmt.Sprintf("%s artifact, %d measured %s (after %d warm-up), methods alternated in each round",
		r.opts.size, r.opts.rounds, plural(r.opts.rounds, "round"), r.opts.warmup)
	if r.opts.warmMemory {
		h += ", memory warmed before each run"
	}
	return h
}

func (r *result) rssNote() string {
	return fmt.Sprintf("Wall and CPU time are per process; CPU is user + system. Peak RSS is the highest ru_maxrss over the runs; "+
		"no reading can be below the launcher's own footprint, measured as %.1f MiB (/bin/true).", mib(r.rssFloor))
}

func (r *result) writeText(w io.Writer) {
	fmt.Fprintf(w, "stagebench: %s\n", r.header())
	fmt.Fprintf(w, "machine: %s; %s\n\n", r.machine, r.date)
	width := 0
	for _, rw := range r.rows {
		width = max(width, utf8.RuneCountInString(rw.name))
	}
	fmt.Fprintf(w, "%-*s  %9s  %7s  %7s  %14s  %12s\n", width, "method", "median s", "min s", "max s", "CPU s (median)", "peak RSS MiB")
	for _, rw := range r.rows {
		fmt.Fprintf(w, "%-*s  %9.3f  %7.3f  %7.3f  %14.3f  %12.1f\n", width, rw.name, rw.median.Seconds(), rw.min.Seconds(), rw.max.Seconds(), rw.cpu.Seconds(), mib(rw.rss))
	}
	fmt.Fprintf(w, "\n%s\n\n", r.rssNote())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tmeasured\tgoal\tresult")
	for _, t := range r.targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.name, t.measured, t.goal, passFail(t.pass))
	}
	tw.Flush()
}

func (r *result) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "%s.\n\nMachine: %s; %s.\n\n", r.header(), r.machine, r.date)
	fmt.Fprintln(w, "| method | median s | min s | max s | CPU s (median) | peak RSS MiB |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, rw := range r.rows {
		fmt.Fprintf(w, "| %s | %.3f | %.3f | %.3f | %.3f | %.1f |\n", rw.name, rw.median.Seconds(), rw.min.Seconds(), rw.max.Seconds(), rw.cpu.Seconds(), mib(rw.rss))
	}
	fmt.Fprintf(w, "\n%s\n\n", r.rssNote())
	fmt.Fprintln(w, "| target | measured | goal | result |")
	fmt.Fprintln(w, "| --- | ---: | ---: | :---: |")
	for _, t := range r.targets {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.name, t.measured, t.goal, passFail(t.pass))
	}
}

// machine describes the host: cores, CPU model, Go version, OS/arch.
func machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	return fmt.Sprintf("%d × %s, %s %s/%s", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// byteSize is a size flag: a byte count, optionally with a unit (KiB, MiB,
// GiB, or K, M, G meaning the same powers of two).
type byteSize int64

func (s byteSize) String() string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if int64(s) >= u.n && int64(s)%u.n == 0 {
			return fmt.Sprintf("%d %s", int64(s)/u.n, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", int64(s))
}

func (s *byteSize) Set(v string) error {
	v = strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if num, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(num), u.n
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return fmt.Errorf("want a byte count such as 1048576, 512MiB or 1GiB")
	}
	*s = byteSize(n * mult)
	return nil
}
