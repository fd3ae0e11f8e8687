// Command addonctl is the operator's and publisher's tool for addond.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// exitError carries an exit status without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	var ee exitError
	var ew exitErrorWith
	switch {
	case err == nil:
	case errors.As(err, &ew):
		fmt.Fprintln(os.Stderr, "addonctl:", err)
		os.Exit(ew.code)
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "addonctl:", err)
		os.Exit(1)
	}
}
