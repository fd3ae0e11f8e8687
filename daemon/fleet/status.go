package fleet

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors"
)

// DefaultStale is how old a report may be before its agent counts as
// stale: three of the default report intervals.
const DefaultStale = 30 * time.Minute

// Found is a report as listed in the store: its agent, the store's time of
// the object, and the report, or why it could not be read. An agent with a
// document and no report has a zero SeenAt and no Report.
type Found struct {
	Agent  string
	SeenAt time.Time // the store's clock, not the agent's
	Report *Report
	Err    error
}

// Agent is one agent in the fleet's view.
type Agent struct {
	AgentID string `json:"agent_id"`
	// SeenAt is when the store took the report (staleness is measured
	// from it: an agent's clock may be wrong); ReportedAt the agent's
	// clock then.
	SeenAt          time.Time               `json:"seen_at,omitzero"`
	ReportedAt      time.Time               `json:"reported_at,omitzero"`
	Stale           bool                    `json:"stale"`
	AddondVersion   string                  `json:"addond_version,omitempty"`
	Platform        string                  `json:"platform,omitempty"`
	Serial          uint64                  `json:"serial"`
	Ready           bool                    `json:"ready"`
	DocumentFresh   bool                    `json:"document_fresh"`
	DocumentExpired bool                    `json:"document_expired"`
	DocumentError   string                  `json:"document_error,omitempty"`
	Addons          []reconcile.AddonStatus `json:"addons"`
	// Problems say why the agent is not OK (empty: it is).
	Problems []string `json:"problems,omitempty"`
}

// Status is `addonctl fleet status --json`.
type Status struct {
	Agents []Agent `json:"agents"`
	// Addons counts add-ons by id, assigned version and state.
	Addons map[string]map[string]map[string]int `json:"addons"`
	// OK: every agent is fresh, ready, on a fresh document, and every
	// add-on it runs is running and healthy (or disabled).
	OK bool `json:"ok"`
}

// Counts are the agents by verdict.
func (s Status) Counts() (ok, stale, problems int) {
	for _, a := range s.Agents {
		switch {
		case a.Stale:
			stale++
		case len(a.Problems) > 0:
			problems++
		default:
			ok++
		}
	}
	return ok, stale, problems
}

// Summarize is the fleet's view at now of the reports found: an agent is
// stale when its report is older than stale.
func Summarize(found []Found, now time.Time, stale time.Duration) Status {
	st := Status{Agents: []Agent{}, Addons: map[string]map[string]map[string]int{}, OK: true}
	for _, f := range found {
		a := Agent{AgentID: f.Agent, SeenAt: f.SeenAt, Addons: []reconcile.AddonStatus{}}
		if age := now.Sub(f.SeenAt); !f.SeenAt.IsZero() && age > stale {
			a.Stale = true
			a.Problems = append(a.Problems, fmt.Sprintf("stale: last report %v ago", age.Round(time.Second)))
		}
		switch {
		case f.SeenAt.IsZero() && f.Report == nil:
			a.Problems = append(a.Problems, "never reported (it has an assignment document)")
		case f.Err != nil || f.Report == nil:
			a.Problems = append(a.Problems, fmt.Sprintf("report unreadable: %v", f.Err))
		default:
			a.addReport(f.Report, st.Addons)
		}
		if len(a.Problems) > 0 {
			st.OK = false
		}
		st.Agents = append(st.Agents, a)
	}
	slices.SortFunc(st.Agents, func(x, y Agent) int { return cmp.Compare(x.AgentID, y.AgentID) })
	return st
}

func (a *Agent) addReport(r *Report, counts map[string]map[string]map[string]int) {
	a.ReportedAt, a.AddondVersion, a.Platform = r.ReportedAt, r.AddondVersion, r.Platform
	a.Serial, a.Ready, a.DocumentFresh, a.DocumentExpired, a.DocumentError = r.Serial, r.Ready, r.DocumentFresh, r.DocumentExpired, r.DocumentError
	a.Addons = append(a.Addons, r.Addons...)
	switch {
	case !r.Ready:
		a.Problems = append(a.Problems, "addond not ready")
	case r.DocumentExpired:
		a.Problems = append(a.Problems, "document expired")
	case r.DocumentError != "":
		a.Problems = append(a.Problems, "document: "+r.DocumentError)
	case !r.DocumentFresh:
		a.Problems = append(a.Problems, "document not confirmed by the store")
	}
	for _, ad := range r.Addons {
		v := cmp.Or(ad.Version, ad.ActiveVersion, "-")
		if counts[ad.AddonID] == nil {
			counts[ad.AddonID] = map[string]map[string]int{}
		}
		if counts[ad.AddonID][v] == nil {
			counts[ad.AddonID][v] = map[string]int{}
		}
		counts[ad.AddonID][v][string(ad.State)]++
		if why := AddonProblem(ad); why != "" {
			a.Problems = append(a.Problems, ad.AddonID+": "+why)
		}
	}
}

// AddonProblem is why an add-on in a report is not OK ("" when it is
// running and healthy, or disabled on purpose).
func AddonProblem(a reconcile.AddonStatus) string {
	switch {
	case a.State == reconcile.StateDisabled:
		return ""
	case a.State == reconcile.StateRunning && a.Health == supervisors.HealthHealthy:
		return ""
	case a.LastError != "":
		return fmt.Sprintf("%s (%s): %s", a.State, a.Health, a.LastError)
	}
	return fmt.Sprintf("%s (%s)", a.State, a.Health)
}
