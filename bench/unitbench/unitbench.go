// Package unitbench measures how fast transient services can be started
// and stopped in the addond user's systemd user manager: over D-Bus with
// go-systemd (as addond does), against the baseline of a shell script
// running `systemd-run --user` and `systemctl --user stop`.
//
// The measurement is TestUnitStartStop. It boots a real systemd (Debian 12
// in systemd-nspawn, see vmtest/nspawn), measures both ways in the same
// machine, in alternating rounds, and prints a table. Run it as `make bench`
// does, as root, from bench/:
//
//	go test -count=1 -timeout 20m -run '^TestUnitStartStop$' -v ./unitbench/
//
// Flags (after the package): -units (services per round, 50), -rounds
// (measured rounds per method, 5), -warmup (unmeasured rounds first, 1).
// See docs/BENCHMARKS.md for the results.
package unitbench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Goal is the target: systemd-run + systemctl stop take at least
// this many times as long as the same over D-Bus.
const Goal = 3.0

// Results is what the measurement inside the machine hands back to the
// test outside (as JSON in ResultsFile).
type Results struct {
	Units  int `json:"units"`
	Rounds int `json:"rounds"`
	Warmup int `json:"warmup"`
	// UnitType is the services' Type= (both methods).
	UnitType string `json:"unit_type"`
	// Systemd is the first line of `systemctl --version` in the machine,
	// OS its PRETTY_NAME and Debian version.
	Systemd string `json:"systemd"`
	OS      string `json:"os"`
	// Connect is how long opening the go-systemd connection took (once,
	// outside the timings: addond keeps one connection).
	Connect time.Duration `json:"connect_ns"`
	// DBus and SystemdRun are the measured rounds of each method.
	DBus       []Round `json:"dbus"`
	SystemdRun []Round `json:"systemd_run"`
}

// Round is one method's pass over Units services, each started and then
// stopped before the next one.
type Round struct {
	// Index is the round's number; First is whether the method ran first
	// in it (the order alternates from round to round).
	Index int  `json:"index"`
	First bool `json:"first"`
	// Total is the wall time of the whole pass; Start and Stop are each
	// service's start (until the job is done) and stop (likewise).
	Total time.Duration   `json:"total_ns"`
	Start []time.Duration `json:"start_ns"`
	Stop  []time.Duration `json:"stop_ns"`
}

// Summary is one method's figures over all its rounds.
type Summary struct {
	Rounds int
	// Total is the median of the rounds' totals; MinTotal and MaxTotal
	// their range.
	Total, MinTotal, MaxTotal time.Duration
	// PerService is the median of start+stop over every service of every
	// round; Start and Stop the medians of each part.
	PerService, Start, Stop time.Duration
	Samples                 int
}

// Summarize checks that every round of a method is complete and returns
// its figures.
func Summarize(rounds []Round, units int) (Summary, error) {
	if len(rounds) == 0 {
		return Summary{}, fmt.Errorf("no rounds measured")
	}
	var totals, both, starts, stops []time.Duration
	for _, r := range rounds {
		if r.Total <= 0 || len(r.Start) != units || len(r.Stop) != units {
			return Summary{}, fmt.Errorf("round %d incomplete: total %v, %d starts and %d stops of %d services",
				r.Index, r.Total, len(r.Start), len(r.Stop), units)
		}
		totals = append(totals, r.Total)
		for i := range r.Start {
			if r.Start[i] <= 0 || r.Stop[i] <= 0 {
				return Summary{}, fmt.Errorf("round %d, service %d: no timing", r.Index, i)
			}
			both = append(both, r.Start[i]+r.Stop[i])
		}
		starts = append(starts, r.Start...)
		stops = append(stops, r.Stop...)
	}
	return Summary{
		Rounds:     len(rounds),
		Total:      median(totals),
		MinTotal:   slices.Min(totals),
		MaxTotal:   slices.Max(totals),
		PerService: median(both),
		Start:      median(starts),
		Stop:       median(stops),
		Samples:    len(both),
	}, nil
}

// median is the middle value (the mean of the two middle ones for an even
// count).
func median(d []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(d))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Report is the comparison, ready to print.
type Report struct {
	Results
	DBusSum, RunSum Summary
	// Ratio is systemd-run's median total over D-Bus's;
	// PerServiceRatio the same for the per-service medians.
	Ratio, PerServiceRatio float64
	// Machine describes the host (CPUs, kernel, Go).
	Machine string
	When    time.Time
}

// NewReport summarizes both methods and fails unless the ratio can be
// computed.
func NewReport(r Results, machine string, when time.Time) (*Report, error) {
	if r.Units < 1 {
		return nil, fmt.Errorf("results for %d services per round", r.Units)
	}
	d, err := Summarize(r.DBus, r.Units)
	if err != nil {
		return nil, fmt.Errorf("D-Bus: %w", err)
	}
	s, err := Summarize(r.SystemdRun, r.Units)
	if err != nil {
		return nil, fmt.Errorf("systemd-run: %w", err)
	}
	rep := &Report{Results: r, DBusSum: d, RunSum: s, Machine: machine, When: when,
		Ratio:           float64(s.Total) / float64(d.Total),
		PerServiceRatio: float64(s.PerService) / float64(d.PerService),
	}
	for _, x := range []float64{rep.Ratio, rep.PerServiceRatio} {
		if math.IsNaN(x) || math.IsInf(x, 0) || x <= 0 {
			return nil, fmt.Errorf("ratio not measurable: %v", x)
		}
	}
	return rep, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

// ms2 is for the per-service figures, a few milliseconds each.
func ms2(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

// Write prints the report as Markdown (the tables in docs/BENCHMARKS.md).
func (r *Report) Write(w io.Writer) {
	fmt.Fprintf(w, "Start and stop of %d transient services (Type=%s, /bin/sleep 300), one after another, in the user manager of uid 990; "+
		"%d measured rounds per method (after %d warm-up), the order alternating from round to round.\n\n",
		r.Units, r.UnitType, r.Rounds, r.Warmup)
	fmt.Fprintf(w, "Machine: %s; in the container: %s, %s; %s.\n\n", r.Machine, r.OS, r.Systemd, r.When.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "| method | total ms for %d (median) | min | max | per service ms (median of %d) | start ms | stop ms |\n", r.Units, r.DBusSum.Samples)
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	row := func(name string, s Summary) {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", name, ms(s.Total), ms(s.MinTotal), ms(s.MaxTotal), ms2(s.PerService), ms2(s.Start), ms2(s.Stop))
	}
	row("D-Bus (go-systemd, one connection)", r.DBusSum)
	row("systemd-run --user + systemctl --user stop", r.RunSum)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Round totals, ms: D-Bus %s; systemd-run %s. Opening the D-Bus connection (once, not timed above): %s ms.\n\n",
		totals(r.DBus), totals(r.SystemdRun), ms2(r.Connect))
	result := "PASS"
	if r.Ratio < Goal {
		result = "FAIL"
	}
	fmt.Fprintln(w, "| target | measured | goal | result |")
	fmt.Fprintln(w, "| --- | ---: | ---: | :---: |")
	fmt.Fprintf(w, "| systemd-run / D-Bus (median total for %d) | %.2f× | ≥ %.0f× | %s |\n", r.Units, r.Ratio, Goal, result)
	fmt.Fprintf(w, "\nPer service (median start+stop): %.2f×.\n", r.PerServiceRatio)
}

func totals(rounds []Round) string {
	var s []string
	for _, r := range rounds {
		s = append(s, ms(r.Total))
	}
	return strings.Join(s, ", ")
}
