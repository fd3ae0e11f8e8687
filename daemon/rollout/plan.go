// Package rollout moves one add-on to a new version across agents in
// waves (DESIGN.md, "Fleet"): a canary wave first, then percentages. After
// each wave it waits for every agent of the wave to promote the version or
// fail it, and halts when failures exceed the budget. The store is the only
// shared component: documents are changed with conditional writes, agents'
// reports are read back, and the rollout's progress is kept in
// rollouts/<id>/<version>.json so that it can be resumed.
//
// plan.go is the pure part: the waves, and the verdict on an agent's
// report. rollout.go executes.
package rollout

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors"
)

// ParseWaves reads --waves: cumulative percentages, ascending, ending at
// 100 ("10%,50%,100%"; the % is optional).
func ParseWaves(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(f), "%"))
		if err != nil || n < 1 || n > 100 {
			return nil, fmt.Errorf("--waves %q: %q is not a percentage from 1%% to 100%%", s, f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("--waves %q: percentages must grow (%d%% after %d%%)", s, n, out[len(out)-1])
		}
		out = append(out, n)
	}
	if out[len(out)-1] != 100 {
		return nil, fmt.Errorf("--waves %q: the last wave must reach 100%%", s)
	}
	return out, nil
}

// Plan splits agents (in their order) into waves: the first canary agents,
// then each percentage's share of all of them (rounded up), without empty
// waves.
func Plan(agents []string, canary int, waves []int) [][]string {
	var out [][]string
	done := min(max(canary, 0), len(agents))
	if done > 0 {
		out = append(out, agents[:done])
	}
	for _, p := range waves {
		upto := (len(agents)*p + 99) / 100
		if upto > done {
			out = append(out, agents[done:upto])
			done = upto
		}
	}
	return out
}

// Verdict is what an agent's report says of the version.
type Verdict int

const (
	Pending  Verdict = iota // not decided yet
	Promoted                // running it, healthy, past probation
	Failed                  // rolled it back, or it failed
)

// Judge reads an agent's report for add-on id at version. Reports of a
// document older than serial (the one the rollout wrote) are not read: a
// rollback of the same version before this rollout is history.
func Judge(rep *fleet.Report, id, version string, serial uint64) (Verdict, string) {
	if rep == nil || rep.Serial < serial {
		return Pending, ""
	}
	for _, a := range rep.Addons {
		if a.AddonID != id {
			continue
		}
		switch {
		case a.Version == version && (a.State == reconcile.StateRolledBack || a.State == reconcile.StateFailed):
			why := string(a.State)
			if a.LastError != "" {
				why += ": " + a.LastError
			}
			return Failed, why
		case a.ActiveVersion == version && a.State == reconcile.StateRunning && a.Health == supervisors.HealthHealthy && !a.Probation:
			return Promoted, ""
		}
	}
	return Pending, ""
}
