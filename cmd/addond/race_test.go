//go:build race

package main

// raceBuild: this test binary runs under the race detector, and so do the
// addond binaries it builds (TestMain): a data race in addond, during any
// end-to-end test, ends addond at once (GORACE halt_on_error) and fails
// the test.
const raceBuild = true
