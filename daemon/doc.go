// Package daemon is the addond agent: it ties the assignment source, the
// operator's overrides and delivery together (and, with later layers,
// supervision, the status API and sd_notify). `addond stage` is one
// delivery reconcile of an Agent; `addond run` reconciles on events.
//
// Failure is local: one add-on's bad input or failed download never stops
// another's, and an add-on whose delivery fails keeps its last-known-good
// version — across restarts, from the cached assignment document, while
// the store is down.
package daemon
