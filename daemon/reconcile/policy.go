package reconcile

import "time"

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
	// Models are the supervision models this host runs; an add-on of
	// another model is reported unsupported.
	Models map[string]bool
	// ActivateAtOnce is `addond stage`: every verified version becomes
	// current and last-known-good at once; nothing is supervised, there
	// is no probation and nothing is recovered at boot.
	ActivateAtOnce bool
}

func (p Policy) probation() time.Duration {
	if p.Probation <= 0 {
		return DefaultProbation
	}
	return p.Probation
}
