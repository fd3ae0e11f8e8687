package reconcile

import (
	"fmt"
	"time"

	"github.com/addond/addond/supervisors"
)

// AddonStatus is one add-on in GET /v1/status (DESIGN.md, "Contract:
// status").
type AddonStatus struct {
	AddonID         string `json:"addon_id"`
	Version         string `json:"version"`
	ActiveVersion   string `json:"active_version"`
	PreviousVersion string `json:"previous_version"`
	Supervision     string `json:"supervision"`
	State           State  `json:"state"`
	Health          Health `json:"health"`
	FromLKG         bool   `json:"from_lkg"`
	// Probation: the active version has not proved itself yet (it is
	// promoted when healthy, rolled back when not, within the probation).
	Probation bool      `json:"probation"`
	LastError string    `json:"last_error"`
	Since     time.Time `json:"since"`
	Restarts  int       `json:"restarts"`
	PID       int       `json:"pid,omitempty"`
}

// Addons is every add-on's status, by id.
func (c *Core) Addons() []AddonStatus {
	out := make([]AddonStatus, 0, len(c.addons))
	for _, id := range sortedKeys(c.addons) {
		ar := c.addons[id]
		as := AddonStatus{
			AddonID: id, State: ar.state, Health: ar.health, FromLKG: ar.fromLKG,
			LastError: ar.lastErr, Since: ar.since, Restarts: ar.restarts, PID: ar.pid,
			PreviousVersion: ar.previous,
		}
		if ar.desired != nil {
			as.Version, as.Supervision = ar.desired.Version, ar.desired.Supervision
		} else if ar.refused != "" {
			as.Version = ar.refused
		}
		if ar.running != nil {
			as.ActiveVersion = ar.running.Version
			as.Probation = ar.probation != nil && ar.probation.Version == ar.running.Version
			if as.Supervision == "" {
				as.Supervision = ar.running.Supervision
			}
		}
		out = append(out, as)
	}
	return out
}

// HelperPolicy is who may run an add-on's helper besides itself, and
// whether it runs with capabilities.
type HelperPolicy struct {
	Callers []string
	Capped  bool
}

// HelperPolicies are every known add-on's, from the spec it is assigned
// (or, refused, the one it runs).
func (c *Core) HelperPolicies() map[string]HelperPolicy {
	out := map[string]HelperPolicy{}
	for id, ar := range c.addons {
		spec := ar.desired
		if spec == nil {
			spec = ar.running
		}
		if spec != nil {
			out[id] = HelperPolicy{Callers: spec.HelperCallers, Capped: len(spec.OSCapabilities) > 0}
		}
	}
	return out
}

// Doc is what the last refresh found of the document; nil before the
// first.
func (c *Core) Doc() *DocInfo { return c.doc }

// Owned is the add-ons that own their units: running, or meant to run.
// The orphan sweep keeps those.
func (c *Core) Owned() map[string]bool {
	owned := map[string]bool{}
	for id, ar := range c.addons {
		if ar.running != nil || (ar.desired != nil && ar.desired.Enabled) {
			owned[id] = true
		}
	}
	return owned
}

// OnProbation reports whether any version is on probation: only then are
// Ticks needed.
func (c *Core) OnProbation() bool {
	for _, ar := range c.addons {
		if ar.probation != nil {
			return true
		}
	}
	return false
}

// InFlight is the number of stagings in flight.
func (c *Core) InFlight() int { return c.inflight }

// Idle reports whether nothing the Core waits for is in flight: no
// refresh, no staging (`addond stage` ends then).
func (c *Core) Idle() bool { return !c.fetching && c.inflight == 0 }

// Summary is the one-line sd_notify STATUS=.
func (c *Core) Summary() string {
	running, total := 0, 0
	for _, ar := range c.addons {
		if ar.desired != nil && !ar.desired.Enabled {
			continue
		}
		total++
		if ar.state == StateRunning || ar.state == StateRolledBack && ar.health == supervisors.HealthHealthy {
			running++
		}
	}
	if total == 0 {
		return "no add-ons assigned"
	}
	store, serial := "store not yet contacted", ""
	if d := c.doc; d != nil {
		switch {
		case d.Expired:
			store = "assignments expired"
		case d.Refused && d.Replay:
			store = "assignments refused as a replay"
		case d.Refused:
			store = "assignments refused"
		case d.Err != nil:
			store = "store unreachable"
		default:
			store = "store reachable"
		}
		serial = fmt.Sprintf(", serial %d", d.Serial)
	}
	return fmt.Sprintf("%d/%d add-ons running, %s%s", running, total, store, serial)
}
