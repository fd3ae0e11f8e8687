package rollout

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// Options are one rollout.
type Options struct {
	Store store.Store
	Key   ed25519.PrivateKey // signs the documents it writes
	// Trust verifies the documents it changes and the package (default:
	// Key's public key).
	Trust            *signing.Keyring
	AddonID, Version string
	Agents           []string // in this order; with All, every agent whose document has AddonID
	All              bool
	Canary           int   // agents in the first wave
	Waves            []int // cumulative percentages, the last 100
	MaxFailures      int   // more halt the rollout
	Wait             time.Duration
	// MaxRate caps the document changes per minute (0: one after
	// another, as fast as the store takes them): a large wave's agents
	// then fetch the new version a few at a time instead of all within
	// one poll interval.
	MaxRate      int
	RevertOnHalt bool
	Resume       bool
	Poll         time.Duration // how often reports are read (default 5s)
	// Log receives one line per event (an agent changed, promoted,
	// failed, a wave begun …).
	Log func(string)
}

// ErrHalted: more agents failed than MaxFailures; no further agent was
// changed.
var ErrHalted = errors.New("rollout halted")

// Agent states in the progress record.
const (
	StatusWaiting  = "waiting"  // not changed yet
	StatusChanged  = "changed"  // its document names the version
	StatusPromoted = "promoted" // its report shows the version promoted
	StatusFailed   = "failed"   // rolled back, failed, or no report in time
)

// Progress is rollouts/<id>/<version>.json.
type Progress struct {
	AddonID     string                    `json:"addon_id"`
	Version     string                    `json:"version"`
	State       string                    `json:"state"` // running, done, halted
	Waves       [][]string                `json:"waves"`
	MaxFailures int                       `json:"max_failures"`
	Wait        string                    `json:"wait"`
	MaxRate     int                       `json:"max_rate,omitempty"` // changes per minute
	StartedAt   time.Time                 `json:"started_at"`
	UpdatedAt   time.Time                 `json:"updated_at"`
	Agents      map[string]*AgentProgress `json:"agents"`
}

// AgentProgress is one agent in the rollout.
type AgentProgress struct {
	Wave      int       `json:"wave"`
	Status    string    `json:"status"`
	Serial    uint64    `json:"serial,omitempty"` // of the document the rollout wrote
	ChangedAt time.Time `json:"changed_at,omitzero"`
	// WaitFrom starts its --wait: the change, or the resume.
	WaitFrom time.Time `json:"wait_from,omitzero"`
	Reason   string    `json:"reason,omitempty"`
	// Reverted: given its previous entry back after a halt.
	Reverted bool `json:"reverted,omitempty"`
	// Previous is its entry before the rollout (for --revert-on-halt);
	// nil when it already had the version.
	Previous *assignment.Addon `json:"previous,omitempty"`
}

// Failures counts the failed agents.
func (p *Progress) Failures() []string {
	var out []string
	for _, w := range p.Waves {
		for _, a := range w {
			if p.Agents[a].Status == StatusFailed {
				out = append(out, a)
			}
		}
	}
	return out
}

// ProgressKey is where a rollout's progress is kept.
func ProgressKey(id, version string) string { return "rollouts/" + id + "/" + version + ".json" }

// runner executes one rollout.
type runner struct {
	o     Options
	p     *Progress
	etag  string // of the progress record as last written
	trust *signing.Keyring
}

// Run runs (or, with Resume, continues) the rollout. It returns the final
// progress, and ErrHalted when it halted.
func Run(ctx context.Context, o Options) (*Progress, error) {
	if err := assignment.ValidAddonID(o.AddonID); err != nil {
		return nil, err
	}
	if err := assignment.ValidVersion(o.Version); err != nil {
		return nil, err
	}
	if o.Key == nil {
		return nil, errors.New("a rollout signs the documents it changes: give --key")
	}
	if o.Poll <= 0 {
		o.Poll = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = func(string) {}
	}
	r := &runner{o: o, trust: o.Trust}
	if r.trust.Len() == 0 {
		r.trust = signing.NewKeyring(o.Key.Public().(ed25519.PublicKey))
	}
	// The package is checked before any agent is touched.
	if _, _, _, err := assignment.FetchPackage(ctx, o.Store, r.trust, o.AddonID, o.Version); err != nil {
		return nil, fmt.Errorf("addon %s@%s: %w", o.AddonID, o.Version, err)
	}
	if err := r.load(ctx); err != nil {
		return nil, err
	}
	for w, wave := range r.p.Waves {
		if err := r.wave(ctx, w, wave); err != nil {
			return r.p, err
		}
	}
	failed := r.p.Failures()
	r.p.State = "done"
	r.o.Log(fmt.Sprintf("done: %s@%s promoted on %d of %d agents", o.AddonID, o.Version, len(r.p.Agents)-len(failed), len(r.p.Agents)))
	if err := r.save(ctx); err != nil {
		return r.p, err
	}
	if len(failed) > 0 {
		for _, a := range failed {
			r.o.Log(fmt.Sprintf("  %s: %s", a, r.p.Agents[a].Reason))
		}
		return r.p, fmt.Errorf("%d of %d agents failed (within --max-failures %d): not every agent promoted %s@%s", len(failed), len(r.p.Agents), r.o.MaxFailures, o.AddonID, o.Version)
	}
	return r.p, nil
}

// load starts the progress record, or reads it back with Resume.
func (r *runner) load(ctx context.Context) error {
	o := r.o
	key := ProgressKey(o.AddonID, o.Version)
	data, info, err := store.ReadSmall(ctx, o.Store, key, 16<<20, store.OpenOptions{})
	switch {
	case err == nil && !o.Resume:
		return fmt.Errorf("a rollout of %s@%s is already recorded in %s: --resume continues it", o.AddonID, o.Version, key)
	case err == nil:
		p, err := r.verifyRecord(ctx, key, data)
		if err != nil {
			return err
		}
		if p.State == "done" {
			return fmt.Errorf("the rollout of %s@%s is done (%s)", o.AddonID, o.Version, key)
		}
		r.p, r.etag = p, info.ETag
		// The agents went on meanwhile: those not decided get a new
		// --wait from now. Failures stay failures; a halted rollout goes
		// on only under a --max-failures they fit in.
		// Agents given their previous entry back after a halt start over.
		for _, a := range p.Agents {
			switch {
			case a.Reverted:
				*a = AgentProgress{Wave: a.Wave, Status: StatusWaiting}
			case a.Status == StatusChanged:
				a.WaitFrom = time.Now().UTC()
			}
		}
		r.p.State, r.p.MaxFailures = "running", o.MaxFailures
		r.o.Log(fmt.Sprintf("resuming the rollout of %s@%s from %s", o.AddonID, o.Version, key))
		return r.save(ctx)
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: %w", key, err)
	case o.Resume:
		return fmt.Errorf("--resume: no rollout of %s@%s is recorded (%s)", o.AddonID, o.Version, key)
	}
	agents := o.Agents
	if o.All {
		var err error
		if agents, err = r.assignedAgents(ctx); err != nil {
			return err
		}
	}
	if len(agents) == 0 {
		return fmt.Errorf("no agents to roll %s@%s out to", o.AddonID, o.Version)
	}
	seen := map[string]bool{}
	for _, a := range agents {
		if !fleet.ValidAgentID(a) || seen[a] {
			return fmt.Errorf("agent %q: not a safe agent id, or named twice", a)
		}
		seen[a] = true
	}
	now := time.Now().UTC()
	r.p = &Progress{AddonID: o.AddonID, Version: o.Version, State: "running", Waves: Plan(agents, o.Canary, o.Waves),
		MaxFailures: o.MaxFailures, Wait: o.Wait.String(), StartedAt: now,
		MaxRate: o.MaxRate, Agents: map[string]*AgentProgress{}}
	for w, wave := range r.p.Waves {
		for _, a := range wave {
			r.p.Agents[a] = &AgentProgress{Wave: w, Status: StatusWaiting}
		}
	}
	return r.save(ctx)
}

// verifyRecord reads a progress record back: its signature must verify
// under the rollout's keys (the record names the entries a revert writes
// and the agents a resume changes, and the store is not trusted with
// either), and its shape must be this rollout's.
func (r *runner) verifyRecord(ctx context.Context, key string, data []byte) (*Progress, error) {
	sigData, _, err := store.ReadSmall(ctx, r.o.Store, key+".sig", 1024, store.OpenOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s's signature: %w", key, err)
	}
	sig, err := signing.ParseSigFile(sigData)
	if err == nil {
		err = r.trust.VerifyBytes("", data, sig)
	}
	if err != nil {
		return nil, fmt.Errorf("%s does not verify under the rollout's keys (%v): refusing to resume from it", key, err)
	}
	var p Progress
	if err := json.Unmarshal(data, &p); err != nil || p.AddonID != r.o.AddonID || p.Version != r.o.Version {
		return nil, fmt.Errorf("%s is not this rollout's progress (%v)", key, err)
	}
	n := 0
	for w, wave := range p.Waves {
		for _, a := range wave {
			ap := p.Agents[a]
			if !fleet.ValidAgentID(a) || ap == nil || ap.Wave != w {
				return nil, fmt.Errorf("%s: agent %q of wave %d is not recorded as such", key, a, w+1)
			}
			if ap.Previous != nil && ap.Previous.AddonID != r.o.AddonID {
				return nil, fmt.Errorf("%s: agent %s's previous entry is of add-on %q", key, a, ap.Previous.AddonID)
			}
			n++
		}
	}
	if n != len(p.Agents) {
		return nil, fmt.Errorf("%s: %d agents recorded, %d in its waves", key, len(p.Agents), n)
	}
	return &p, nil
}

// assignedAgents is every agent whose document has the add-on, sorted.
func (r *runner) assignedAgents(ctx context.Context) ([]string, error) {
	var agents []string
	err := r.o.Store.List(ctx, fleet.ReportsPrefix, func(i store.Info) error {
		if agent := fleet.AgentOfDocumentKey(i.Key); agent != "" {
			agents = append(agents, agent)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the agents' documents: %w", err)
	}
	var out []string
	for _, a := range agents {
		doc, _, err := r.readDoc(ctx, a)
		if err != nil {
			r.o.Log(fmt.Sprintf("%s: left out: %v", a, err))
			continue
		}
		switch i := entry(doc, r.o.AddonID); {
		case i < 0:
		case doc.Addons[i].Enabled != nil && !*doc.Addons[i].Enabled:
			r.o.Log(fmt.Sprintf("%s: left out: %s is disabled in its document", a, r.o.AddonID))
		default:
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out, nil
}

// wave changes the documents of a wave's agents, then waits for their
// verdicts.
func (r *runner) wave(ctx context.Context, w int, wave []string) error {
	name := fmt.Sprintf("wave %d/%d", w+1, len(r.p.Waves))
	if w == 0 && r.o.Canary > 0 {
		name += " (canary)"
	}
	r.o.Log(fmt.Sprintf("%s: %d agents", name, len(wave)))
	if err := r.prepare(ctx, wave); err != nil {
		return err
	}
	// The changes are recorded at most every saveEvery (the record holds
	// every agent: saved after each change, a wave's writing grew with
	// the square of the fleet), and whenever one fails.
	saved := time.Now()
	interrupted := func() error {
		if err := r.save(ctx); err != nil {
			return err
		}
		return ctx.Err() // --resume goes on from here
	}
	var todo []string
	for _, a := range wave {
		if r.p.Agents[a].Status == StatusWaiting {
			todo = append(todo, a)
		}
	}
	start, judged := time.Now(), time.Now()
	for k, a := range todo {
		if ctx.Err() != nil {
			return interrupted()
		}
		ap := r.p.Agents[a]
		refused := false
		if err := r.change(ctx, a, ap); err != nil {
			if ctx.Err() != nil {
				return interrupted()
			}
			ap.Status, ap.Reason, refused = StatusFailed, err.Error(), true
			r.o.Log(fmt.Sprintf("%s: failed: %v", a, err))
		}
		if refused || time.Since(saved) >= saveEvery {
			if err := r.save(ctx); err != nil {
				return err
			}
			saved = time.Now()
		}
		if failed := r.p.Failures(); len(failed) > r.o.MaxFailures {
			return r.halt(ctx, failed) // before the next agent is changed
		}
		if r.o.MaxRate <= 0 || k == len(todo)-1 {
			continue
		}
		// MaxRate: the next change waits for its turn; meanwhile the
		// changed agents are judged every Poll, so that a failure halts
		// the wave before the next change.
		next := start.Add(time.Minute * time.Duration(k+1) / time.Duration(r.o.MaxRate))
		for {
			if time.Since(judged) >= r.o.Poll {
				if _, err := r.judgeWave(ctx, wave); err != nil {
					return err
				}
				judged = time.Now()
			}
			left := time.Until(next)
			if left <= 0 {
				break
			}
			select {
			case <-ctx.Done():
				return interrupted()
			case <-time.After(min(left, max(r.o.Poll-time.Since(judged), time.Millisecond))):
			}
		}
	}
	if err := r.save(ctx); err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		pending, err := r.judgeWave(ctx, wave)
		if err != nil {
			return err
		}
		if pending == 0 {
			r.o.Log(fmt.Sprintf("%s: done", name))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.o.Poll):
		}
	}
}

// judgeWave reads the reports of the wave's changed agents (several at a
// time) and decides each: promoted, failed, or still pending (returned).
// More failures than MaxFailures halt the rollout (halt's error).
func (r *runner) judgeWave(ctx context.Context, wave []string) (pending int, err error) {
	var judged []string
	for _, a := range wave {
		if ap := r.p.Agents[a]; ap.Status == StatusChanged && !ap.Reverted {
			judged = append(judged, a)
		}
	}
	type verdict struct {
		v   Verdict
		why string
	}
	verdicts := make([]verdict, len(judged))
	parallel(len(judged), func(k int) {
		v, why := r.judge(ctx, judged[k], r.p.Agents[judged[k]])
		verdicts[k] = verdict{v, why}
	})
	changed := false
	for k, a := range judged {
		ap := r.p.Agents[a]
		v, why := verdicts[k].v, verdicts[k].why
		switch {
		case v == Promoted:
			ap.Status, changed = StatusPromoted, true
			r.o.Log(fmt.Sprintf("%s: promoted %s@%s (%v after its document changed)", a, r.o.AddonID, r.o.Version, time.Since(ap.ChangedAt).Round(time.Second)))
		case v == Failed:
			ap.Status, ap.Reason, changed = StatusFailed, why, true
			r.o.Log(fmt.Sprintf("%s: failed: %s", a, why))
		case time.Since(ap.WaitFrom) > r.o.Wait:
			ap.Status, ap.Reason, changed = StatusFailed, fmt.Sprintf("no report of %s@%s promoted within %v", r.o.AddonID, r.o.Version, r.o.Wait), true
			r.o.Log(fmt.Sprintf("%s: failed: %s", a, ap.Reason))
		default:
			pending++
		}
	}
	if changed {
		if err := r.save(ctx); err != nil {
			return pending, err
		}
	}
	if failed := r.p.Failures(); len(failed) > r.o.MaxFailures {
		return pending, r.halt(ctx, failed)
	}
	return pending, nil
}

// saveEvery is how often a wave's changes are recorded while it writes.
const saveEvery = time.Second

// readers is how many reports or documents are read at once.
const readers = 16

// parallel runs fn(0) … fn(n-1), readers at a time.
func parallel(n int, fn func(k int)) {
	sem := make(chan struct{}, readers)
	var wg sync.WaitGroup
	for k := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(k)
		})
	}
	wg.Wait()
}

// prepare records, in one save before a wave writes anything, the entry
// each of its agents has before the rollout changes it. The changes are
// then recorded in batches: an agent whose document was written but whose
// change was not recorded (the command killed in between) is found already
// at the version by a resume, and keeps this entry, so a halt can still
// revert it. An agent already at the version gets none (nothing to
// revert to); an entry recorded before is kept.
func (r *runner) prepare(ctx context.Context, wave []string) error {
	var todo []string
	for _, a := range wave {
		if ap := r.p.Agents[a]; ap.Status == StatusWaiting && ap.Previous == nil {
			todo = append(todo, a)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	prev := make([]*assignment.Addon, len(todo))
	parallel(len(todo), func(k int) {
		doc, _, err := r.readDoc(ctx, todo[k])
		if err != nil {
			return // its change fails with the reason
		}
		if i := entry(doc, r.o.AddonID); i >= 0 && doc.Addons[i].Version != r.o.Version {
			e := doc.Addons[i]
			prev[k] = &e
		}
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	for k, a := range todo {
		r.p.Agents[a].Previous = prev[k]
	}
	return r.save(ctx)
}

// judge reads agent a's report.
func (r *runner) judge(ctx context.Context, a string, ap *AgentProgress) (Verdict, string) {
	data, _, err := store.ReadSmall(ctx, r.o.Store, fleet.ReportKey(a), fleet.MaxReportSize, store.OpenOptions{})
	if err != nil {
		return Pending, ""
	}
	rep, err := fleet.ParseReport(data, a)
	if err != nil {
		return Pending, ""
	}
	return Judge(&rep, r.o.AddonID, r.o.Version, ap.Serial)
}

// halt stops the rollout: no further agent is changed; with RevertOnHalt
// the agents it changed get their previous entry back.
func (r *runner) halt(ctx context.Context, failed []string) error {
	r.p.State = "halted"
	r.o.Log(fmt.Sprintf("halted: %d agents failed, more than --max-failures %d", len(failed), r.o.MaxFailures))
	for _, a := range failed {
		r.o.Log(fmt.Sprintf("  %s: %s", a, r.p.Agents[a].Reason))
	}
	if r.o.RevertOnHalt {
		for _, w := range r.p.Waves {
			for _, a := range w {
				ap := r.p.Agents[a]
				if ap.Previous == nil || ap.Status == StatusWaiting || ap.Reverted {
					continue
				}
				if err := r.revert(ctx, a, ap); err != nil {
					r.o.Log(fmt.Sprintf("%s: not reverted: %v", a, err))
					continue
				}
				ap.Reverted = true
				r.o.Log(fmt.Sprintf("%s: reverted to %s@%s", a, r.o.AddonID, ap.Previous.Version))
			}
		}
	}
	if err := r.save(ctx); err != nil {
		return err
	}
	return fmt.Errorf("%w: %d of %d agents failed (--max-failures %d)", ErrHalted, len(failed), len(r.p.Agents), r.o.MaxFailures)
}

// change moves agent a's entry of the add-on to the version.
func (r *runner) change(ctx context.Context, a string, ap *AgentProgress) error {
	return r.rewrite(ctx, a, func(doc *assignment.Document, i int) (bool, error) {
		cur := doc.Addons[i]
		if cur.Version == r.o.Version {
			// Previous stays what prepare recorded: nothing when the
			// agent had the version before the rollout, its old entry
			// when this rollout's change of it was never recorded.
			ap.Status, ap.Serial, ap.ChangedAt = StatusChanged, doc.Serial, time.Now().UTC()
			ap.WaitFrom = ap.ChangedAt
			r.o.Log(fmt.Sprintf("%s: already at %s@%s (serial %d)", a, r.o.AddonID, r.o.Version, doc.Serial))
			return false, nil
		}
		next, err := publish.Retarget(ctx, r.o.Store, r.trust, cur, r.o.Version)
		if err != nil {
			return false, err
		}
		doc.Addons[i] = next
		ap.Previous = &cur
		return true, nil
	}, func(serial uint64) {
		ap.Status, ap.Serial, ap.ChangedAt = StatusChanged, serial, time.Now().UTC()
		ap.WaitFrom = ap.ChangedAt
		r.o.Log(fmt.Sprintf("%s: %s %s -> %s (serial %d)", a, r.o.AddonID, ap.Previous.Version, r.o.Version, serial))
	})
}

// revert gives agent a its previous entry back, unless someone else has
// changed the entry since.
func (r *runner) revert(ctx context.Context, a string, ap *AgentProgress) error {
	return r.rewrite(ctx, a, func(doc *assignment.Document, i int) (bool, error) {
		if doc.Serial != ap.Serial {
			return false, fmt.Errorf("its document is at serial %d now, not the rollout's %d: someone changed it since; left as it is", doc.Serial, ap.Serial)
		}
		doc.Addons[i] = *ap.Previous
		return true, nil
	}, func(uint64) {})
}

// rewrite reads agent a's document, lets edit change the add-on's entry
// (index i), and writes it back signed with serial + 1, on the condition
// that nobody wrote it meanwhile; a concurrent writer makes it read and
// edit again, never overwrite.
func (r *runner) rewrite(ctx context.Context, a string, edit func(doc *assignment.Document, i int) (bool, error), wrote func(serial uint64)) error {
	for attempt := 0; ; attempt++ {
		doc, etag, err := r.readDoc(ctx, a)
		if err != nil {
			return err
		}
		i := entry(doc, r.o.AddonID)
		if i < 0 {
			return fmt.Errorf("add-on %s is not in its document", r.o.AddonID)
		}
		write, err := edit(doc, i)
		if err != nil || !write {
			return err
		}
		if doc.Serial >= assignment.MaxSerial {
			return fmt.Errorf("its document has serial %d: no serial above it is allowed", doc.Serial)
		}
		doc.Serial++
		if doc.ConfigVersion, err = assignment.ComputeConfigVersion(*doc); err != nil {
			return err
		}
		body, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return err
		}
		body = append(body, '\n')
		_, err = r.writeSigned(ctx, publish.AssignmentsKey(a), body, etag)
		if errors.Is(err, store.ErrChanged) && attempt < 5 {
			r.o.Log(fmt.Sprintf("%s: its document changed while it was being rewritten; reading it again", a))
			continue
		}
		if err != nil {
			return err
		}
		wrote(doc.Serial)
		return nil
	}
}

// writeSigned writes a document and its signature (publish.WriteSigned);
// an interrupted command (ctx cancelled) still finishes the pair.
func (r *runner) writeSigned(ctx context.Context, key string, body []byte, etag string) (store.Info, error) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return publish.WriteSigned(wctx, r.o.Store, key, body, etag, r.o.Key)
}

// readDoc reads agent a's document and checks its signature.
func (r *runner) readDoc(ctx context.Context, a string) (*assignment.Document, string, error) {
	key := publish.AssignmentsKey(a)
	raw, info, err := store.ReadSmall(ctx, r.o.Store, key, assignment.MaxDocumentSize, store.OpenOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("its document: %w", err)
	}
	sigData, _, err := store.ReadSmall(ctx, r.o.Store, key+".sig", 1024, store.OpenOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("its document's signature: %w", err)
	}
	sig, err := signing.ParseSigFile(sigData)
	if err != nil {
		return nil, "", fmt.Errorf("its document's signature: %w", err)
	}
	if err := r.trust.VerifyBytes("", raw, sig); err != nil {
		return nil, "", fmt.Errorf("its document (%s) does not verify under the rollout's keys: %w", key, err)
	}
	doc, err := assignment.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("its document: %w", err)
	}
	if doc.AgentID != a {
		return nil, "", fmt.Errorf("its document names agent %q", doc.AgentID)
	}
	return doc, info.ETag, nil
}

// save writes the progress record, signed, on the condition that it is
// still the one this rollout wrote last: two rollouts of one version never
// run at once, and a resume trusts only a record its keys signed.
func (r *runner) save(ctx context.Context) error {
	r.p.UpdatedAt = time.Now().UTC()
	body, err := json.MarshalIndent(r.p, "", "  ")
	if err != nil {
		return err
	}
	body = append(body, '\n')
	key := ProgressKey(r.o.AddonID, r.o.Version)
	// (writeSigned finishes even when ctx is cancelled: the record
	// outlives an interrupted command.)
	info, err := r.writeSigned(ctx, key, body, r.etag)
	if errors.Is(err, store.ErrChanged) {
		return fmt.Errorf("%s was changed by someone else (another rollout of %s@%s?): stopping", key, r.o.AddonID, r.o.Version)
	}
	if err != nil {
		return fmt.Errorf("recording the rollout's progress: %w", err)
	}
	r.etag = info.ETag
	return nil
}

func entry(doc *assignment.Document, id string) int {
	for i, a := range doc.Addons {
		if a.AddonID == id {
			return i
		}
	}
	return -1
}
