package reconcile

import (
	"fmt"
	"strings"
	"time"

	"github.com/addond/addond/daemon/assignment"
)

// The policy's values, in one place.
const (
	// DefaultProbation is how long a newly activated version has to become
	// healthy before it is rolled back (config "probation").
	DefaultProbation = 60 * time.Second
	// RestartThreshold is how many restarts of a version on probation make
	// a crash loop: it is rolled back without waiting for its deadline.
	RestartThreshold = 3
	// StableAfter is how long a service unit must have been up before it
	// counts as healthy (supervisors/service): a unit that is active right
	// after exec has proved nothing, and without it a crash-looping
	// service would be promoted between two crashes.
	StableAfter = 3 * time.Second
	// ProbationTick is how often deadlines are checked while a version is
	// on probation; an idle Core asks for no ticks (Core.OnProbation).
	ProbationTick = time.Second
)

// Policy is what a Core decides by.
type Policy struct {
	// Probation is how long a new version has to prove itself (0:
	// DefaultProbation).
	Probation time.Duration
	// Models are the backends this host runs, by supervision model; an
	// add-on of another model is reported unsupported. A model with
	// CappedSuffix is its capped backend: when there is any, add-ons with
	// os_capabilities run only there (their units are addond-updater's
	// to make), and a model without one cannot run them.
	Models map[string]bool
	// ActivateAtOnce is `addond stage`: every verified version becomes
	// current and last-known-good at once; nothing is supervised, there
	// is no probation and nothing is recovered at boot.
	ActivateAtOnce bool
}

// CappedSuffix names a model's capped backend in Policy.Models and in
// Start and Stop actions: "agent_sidecar+capped".
const CappedSuffix = "+capped"

// backend is the backend spec runs on, or why there is none.
func (p Policy) backend(spec assignment.Spec) (string, error) {
	model := spec.Supervision
	if needsCaps(spec) && p.capped() {
		if !p.Models[model+CappedSuffix] {
			return "", fmt.Errorf("supervision %q with os_capabilities is not available on this host (capped add-ons run as %s)", model, p.cappedModels())
		}
		return model + CappedSuffix, nil
	}
	if !p.Models[model] {
		return "", fmt.Errorf("supervision %q is not available on this host", model)
	}
	return model, nil
}

func (p Policy) capped() bool { return p.cappedModels() != "" }

func (p Policy) cappedModels() string {
	var out []string
	for _, m := range sortedKeys(p.Models) {
		if base, ok := strings.CutSuffix(m, CappedSuffix); ok {
			out = append(out, base)
		}
	}
	return strings.Join(out, " or ")
}

func (p Policy) probation() time.Duration {
	if p.Probation <= 0 {
		return DefaultProbation
	}
	return p.Probation
}
