// Command testsum reads `go test -json` on stdin, prints the output of
// every failed or skipped test, and ends with the one line `make test`
// promises (DESIGN.md, "Contract: make"):
//
//	tests: N passed, M failed, K skipped
//
// It exits 1 when anything failed, or — with -strict, as in `make test`,
// where every dependency is provided — when anything skipped. A package
// that fails without a failing test (a build error, a panic in TestMain)
// counts as one failure. With -logs, each passed test's own log lines
// (its t.Log output, where the fault suite writes what it measured)
// follow its result line. With -slowest N it lists, before the last line,
// the N slowest tests (top-level, by their own elapsed time), so that the
// time budget of `make test` stays visible. With -counts (`make
// test-stress`, where every test runs -count times) it prints each
// top-level test's pass count, and every subtest that failed at least once.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

// logLine is a t.Log line: "<file>_test.go:<line>: …", indented, possibly
// from a test run inside a machine.
var logLine = regexp.MustCompile(`^\s*[\w.-]+_test\.go:\d+: `)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	strict := flag.Bool("strict", false, "fail when any test skipped")
	verbose := flag.Bool("v", false, "print every test result line")
	logs := flag.Bool("logs", false, "with each passed test, its log lines (implies -v)")
	slowest := flag.Int("slowest", 0, "list the N slowest top-level tests before the summary")
	counts := flag.Bool("counts", false, "print each test's pass and fail counts (for -count=N runs)")
	flag.Parse()
	*verbose = *verbose || *logs

	output := map[string]*strings.Builder{} // package/test → output
	key := func(e event) string { return e.Package + " " + e.Test }
	var passed, failed, skipped int
	var failures, skips []string
	pkgFailedTests := map[string]int{}
	var times []timing
	tally := map[string]*count{}
	tallyOf := func(e event) *count {
		c := tally[key(e)]
		if c == nil {
			c = &count{pkg: e.Package, test: e.Test}
			tally[key(e)] = c
		}
		return c
	}

	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			fmt.Println(string(line)) // build output and the like
			continue
		}
		switch e.Action {
		case "output":
			b := output[key(e)]
			if b == nil {
				b = &strings.Builder{}
				output[key(e)] = b
			}
			if b.Len() < 256<<10 {
				b.WriteString(e.Output)
			}
		case "pass":
			if e.Test != "" {
				passed++
				tallyOf(e).passed++
				if !strings.Contains(e.Test, "/") {
					times = append(times, timing{key(e), e.Elapsed})
				}
				if *verbose {
					fmt.Printf("ok   %s %s (%.2fs)\n", e.Package, e.Test, e.Elapsed)
				}
				if b := output[key(e)]; *logs && b != nil {
					for _, l := range strings.Split(b.String(), "\n") {
						if logLine.MatchString(l) {
							fmt.Println("     " + strings.TrimSpace(l))
						}
					}
				}
			} else {
				fmt.Printf("ok   %s (%.1fs)\n", e.Package, e.Elapsed)
			}
		case "skip":
			if e.Test != "" {
				skipped++
				tallyOf(e).skipped++
				skips = append(skips, key(e))
			}
		case "fail":
			if e.Test != "" {
				failed++
				tallyOf(e).failed++
				if !strings.Contains(e.Test, "/") {
					times = append(times, timing{key(e), e.Elapsed})
				}
				pkgFailedTests[e.Package]++
				failures = append(failures, key(e))
			} else {
				fmt.Printf("FAIL %s (%.1fs)\n", e.Package, e.Elapsed)
				if pkgFailedTests[e.Package] == 0 {
					failed++
					failures = append(failures, key(e))
				}
			}
		}
	}
	sort.Strings(failures)
	for _, k := range failures {
		fmt.Printf("\n--- FAIL: %s\n", k)
		if b := output[k]; b != nil {
			fmt.Print(b.String())
		}
	}
	for _, k := range skips {
		fmt.Printf("\n--- SKIP: %s\n", k)
		if b := output[k]; b != nil {
			fmt.Print(b.String())
		}
	}
	if *counts {
		printCounts(tally)
	}
	if *slowest > 0 {
		printSlowest(times, *slowest)
	}
	fmt.Printf("\ntests: %d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || (*strict && skipped > 0) || passed == 0 {
		os.Exit(1)
	}
}

// timing is one run of a top-level test.
type timing struct {
	test    string // package and test
	elapsed float64
}

func printSlowest(times []timing, n int) {
	sort.SliceStable(times, func(i, j int) bool { return times[i].elapsed > times[j].elapsed })
	if len(times) > n {
		times = times[:n]
	}
	fmt.Printf("\nthe %d slowest tests:\n", len(times))
	for _, t := range times {
		fmt.Printf("  %7.1fs  %s\n", t.elapsed, t.test)
	}
}

// count is how often one test (or subtest) passed, failed and skipped.
type count struct {
	pkg, test               string
	passed, failed, skipped int
}

// printCounts lists every top-level test's results, and the subtests that
// did not pass every time.
func printCounts(tally map[string]*count) {
	var rows []*count
	for _, c := range tally {
		if !strings.Contains(c.test, "/") || c.failed > 0 || c.skipped > 0 {
			rows = append(rows, c)
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].pkg != rows[j].pkg {
			return rows[i].pkg < rows[j].pkg
		}
		return rows[i].test < rows[j].test
	})
	fmt.Printf("\n%-7s %-7s %-7s %s\n", "passed", "failed", "skipped", "test")
	for _, c := range rows {
		mark := ""
		if c.failed > 0 || c.skipped > 0 {
			mark = "  <--"
		}
		fmt.Printf("%-7d %-7d %-7d %s %s%s\n", c.passed, c.failed, c.skipped, c.pkg, c.test, mark)
	}
}
