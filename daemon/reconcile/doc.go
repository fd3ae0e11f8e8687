// Package reconcile is addond's policy: what to run, when to stage, when a
// new version has proved itself and when it goes back. It is a pure state
// machine in the style of etcd's raft: Core.Step folds one Input (a
// desired document, a staging's result, a supervisor event, a tick, an
// operator's request …) into the Core's state at a given time and returns
// the Actions that follow (stage, start, stop, activate, persist, log …).
// It does no I/O, starts no goroutine, reads no clock and calls no
// backend: whoever drives it (daemon's loop, or `addond stage`) executes
// the actions and feeds their results back as inputs. Everything it
// decides can therefore be tested by tables on a fake clock
// (core_test.go), and every interleaving of inputs can be written down.
//
// The Core owns its data: the run view of every add-on (the status
// contract's states), and the policy half of each add-on's persisted
// state (last-known-good spec, probation, failed versions, the highest
// version activated), which it mirrors and asks to persist. Delivery owns
// the other half (staged versions, current, previous).
package reconcile
