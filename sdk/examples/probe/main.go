// Command probe is the example ephemeral helper: `probe [--exit N] ARGS...`
// prints "probe: ARGS" (space-joined) on stdout and exits with N (default 0).
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	args := os.Args[1:]
	code := 0
	if len(args) >= 2 && args[0] == "--exit" {
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 0 || n > 255 {
			fmt.Fprintf(os.Stderr, "probe: --exit %q: want 0..255\n", args[1])
			os.Exit(2)
		}
		code, args = n, args[2:]
	}
	fmt.Printf("probe: %s\n", strings.Join(args, " "))
	os.Exit(code)
}
