// Package sdk is what add-on authors build against. It never imports the
// agent: an add-on links the SDK and its own code, nothing of addond.
//
// The example add-ons under examples/ are test fixtures and the demo:
// probe (an ephemeral helper) and ticker (a timer job) are plain programs;
// the go-plugin sidecars hello and pingsweep arrive with the gRPC contract.
package sdk
