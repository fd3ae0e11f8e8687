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
// follow its result line.
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
	flag.Parse()
	*verbose = *verbose || *logs

	output := map[string]*strings.Builder{} // package/test → output
	key := func(e event) string { return e.Package + " " + e.Test }
	var passed, failed, skipped int
	var failures, skips []string
	pkgFailedTests := map[string]int{}

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
				skips = append(skips, key(e))
			}
		case "fail":
			if e.Test != "" {
				failed++
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
	fmt.Printf("\ntests: %d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || (*strict && skipped > 0) || passed == 0 {
		os.Exit(1)
	}
}
