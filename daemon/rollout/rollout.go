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
	// MaxRate caps the document changes per minute (0: as fast as the
	// store takes them, writers at a time): a large wave's agents then
	// fetch the new version a few at a time instead of all within one
	// poll interval.
	MaxRate      int
	RevertOnHalt bool
	Resume       bool
	Poll         time.Duration // how often reports are read (default 5s)
	// Log receives one line per event (an agent changed, promoted,
	// failed, a wave begun …).
	Log func(string)
	// Progress, when set, receives where the rollout stands whenever that
	// may have changed (for a progress display; it is called from one
	// goroutine and should return at once).
	Progress func(Stand)
}

// Stand is where a rollout stands: the wave being written or judged, and
// that wave's agents by their status.
type Stand struct {
	Wave, Waves int    // the wave, from 1, of Waves
	Name        string // "wave 1/3 (canary)"
	Agents      int    // in the wave
	// The wave's agents by status. Reverted ones count as failed when
	// they failed, else as changed.
	Waiting, Changed, Promoted, Failed int
	Done                               int // promoted in all the waves
	Total                              int // agents in all the waves
}

// ErrHalted: more agents failed than MaxFailures; no further agent was
// changed (bar the changes already in flight, which are recorded).
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
	pkg   publish.SignedPackage // the version's, verified once
	logMu sync.Mutex            // o.Log is called from the writers too
	cur   int                   // the wave being written or judged
}

// show passes where the rollout stands to o.Progress. Only the goroutine
// that owns the progress record calls it.
func (r *runner) show() {
	if r.o.Progress == nil || r.cur >= len(r.p.Waves) {
		return
	}
	wave := r.p.Waves[r.cur]
	s := Stand{Wave: r.cur + 1, Waves: len(r.p.Waves), Name: r.waveName(r.cur), Agents: len(wave), Total: len(r.p.Agents)}
	for _, a := range wave {
		switch r.p.Agents[a].Status {
		case StatusWaiting:
			s.Waiting++
		case StatusChanged:
			s.Changed++
		case StatusPromoted:
			s.Promoted++
		case StatusFailed:
			s.Failed++
		}
	}
	for _, ap := range r.p.Agents {
		if ap.Status == StatusPromoted {
			s.Done++
		}
	}
	r.o.Progress(s)
}

// waveName is how wave w (from 0) is named in the log.
func (r *runner) waveName(w int) string {
	name := fmt.Sprintf("wave %d/%d", w+1, len(r.p.Waves))
	if w == 0 && r.o.Canary > 0 {
		name += " (canary)"
	}
	return name
}

// log passes one line to o.Log, one at a time.
func (r *runner) log(line string) {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	r.o.Log(line)
}

// Run runs (or, with Resume, continues) the rollout. It returns the final
// progress, and ErrHalted when it halted.
func Run(ctx context.Context, o Options) (*Progress, error) {
	if err := store.Writable(o.Store); err != nil {
		return nil, err
	}
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
	// The package is read and verified once, before any agent is
	// touched; every agent's entry is moved to this very package.
	pkg, raw, sig, err := assignment.FetchPackage(ctx, o.Store, r.trust, o.AddonID, o.Version)
	if err != nil {
		return nil, fmt.Errorf("addon %s@%s: %w", o.AddonID, o.Version, err)
	}
	r.pkg = publish.SignedPackage{Package: pkg, Raw: raw, Sig: sig}
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
	r.log(fmt.Sprintf("done: %s@%s promoted on %d of %d agents", o.AddonID, o.Version, len(r.p.Agents)-len(failed), len(r.p.Agents)))
	if err := r.save(ctx); err != nil {
		return r.p, err
	}
	if len(failed) > 0 {
		for _, a := range failed {
			r.log(fmt.Sprintf("  %s: %s", a, r.p.Agents[a].Reason))
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
		p, err := r.verifyRecord(ctx, key, data, info)
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
		r.log(fmt.Sprintf("resuming the rollout of %s@%s from %s", o.AddonID, o.Version, key))
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
func (r *runner) verifyRecord(ctx context.Context, key string, data []byte, info store.Info) (*Progress, error) {
	sigData, _, err := store.Signature(ctx, r.o.Store, key, info)
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
			r.log(fmt.Sprintf("%s: left out: %v", a, err))
			continue
		}
		switch i := entry(doc, r.o.AddonID); {
		case i < 0:
		case doc.Addons[i].Enabled != nil && !*doc.Addons[i].Enabled:
			r.log(fmt.Sprintf("%s: left out: %s is disabled in its document", a, r.o.AddonID))
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
	name := r.waveName(w)
	r.cur = w
	r.log(fmt.Sprintf("%s: %d agents", name, len(wave)))
	r.show()
	if err := r.prepare(ctx, wave); err != nil {
		return err
	}
	if err := r.write(ctx, wave); err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		pending, decided := r.judgeWave(ctx, wave)
		r.show()
		if decided {
			if err := r.save(ctx); err != nil {
				return err
			}
		}
		if failed := r.p.Failures(); len(failed) > r.o.MaxFailures {
			return r.halt(ctx, failed)
		}
		if pending == 0 {
			r.log(fmt.Sprintf("%s: done", name))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.o.Poll):
		}
	}
}

// write changes the wave's waiting agents, up to writers at a time (one
// at first, one more after each change that succeeds), and at most
// MaxRate a minute. The changes in flight are a window in the wave's
// order: change k starts only once every change before k-writers has
// finished, so a change that is slow to fail holds the wave behind it.
// Meanwhile the changed agents are judged every Poll. More failures than
// MaxFailures stop the changes — the ones in flight (at most writers)
// finish and are recorded, and a halt with RevertOnHalt reverts them too —
// and halt the rollout. The changes are recorded at most every saveEvery
// (the record holds every agent: saved after each change, a wave's
// writing grew with the square of the fleet), and a refusal at once.
//
// The writers and the judging only read and write the store; the
// progress record is touched by this goroutine alone.
func (r *runner) write(ctx context.Context, wave []string) error {
	var todo []string
	for _, a := range wave {
		if r.p.Agents[a].Status == StatusWaiting {
			todo = append(todo, a)
		}
	}
	type result struct {
		k   int
		c   changed
		err error
	}
	results := make(chan result, writers)
	judgments := make(chan judgment, 1)
	var (
		next, lo       int    // the next change to start; the oldest not finished
		finished       []bool // by change
		inflight, ok   int    // changes started and not finished; that succeeded
		judging        bool   // a judgment is being read
		halting        []string
		dirty, saveNow bool // changes not recorded yet; a refusal to record
		start, saved   = time.Now(), time.Now()
		judged         = time.Now()
	)
	finished = make([]bool, len(todo))
	// turn is when change k may start under MaxRate.
	turn := func(k int) time.Time {
		if r.o.MaxRate <= 0 {
			return start
		}
		return start.Add(time.Minute * time.Duration(k) / time.Duration(r.o.MaxRate))
	}
	check := func() {
		if failed := r.p.Failures(); len(failed) > r.o.MaxFailures {
			halting = failed
		}
	}
	// settle waits for the writers and the judgment in flight, recording
	// what they did (or, with record false, dropping it: the command
	// stops on an error).
	settle := func(record bool) {
		for ; inflight > 0; inflight-- {
			res := <-results
			if record && res.err == nil {
				r.record(todo[res.k], r.p.Agents[todo[res.k]], res.c)
			}
		}
		if judging {
			j := <-judgments
			if record {
				r.apply(j)
			}
			judging = false
		}
	}
	for {
		stopped := halting != nil || ctx.Err() != nil
		width := min(writers, ok+1)
		for !stopped && next < len(todo) && next-lo < width && !time.Now().Before(turn(next)) {
			k, a := next, todo[next]
			next, inflight = next+1, inflight+1
			go func() {
				c, err := r.change(ctx, a)
				results <- result{k, c, err}
			}()
		}
		if inflight == 0 && (stopped || next == len(todo)) {
			break
		}
		// Wait for a change to finish, a judgment, the next change's
		// turn, or the next judging, whichever comes first; once
		// stopped, for what is in flight alone.
		var timer <-chan time.Time
		done := ctx.Done()
		if stopped {
			done = nil
		} else {
			wait := time.Duration(1<<63 - 1)
			if !judging {
				wait = r.o.Poll - time.Since(judged)
			}
			if next < len(todo) && next-lo < width {
				wait = min(wait, time.Until(turn(next)))
			}
			timer = time.After(max(wait, 0))
		}
		select {
		case res := <-results:
			inflight--
			finished[res.k] = true
			for lo < next && finished[lo] {
				lo++
			}
			a := todo[res.k]
			ap := r.p.Agents[a]
			switch {
			case res.err != nil && ctx.Err() == nil:
				ap.Status, ap.Reason, saveNow = StatusFailed, res.err.Error(), true
				r.log(fmt.Sprintf("%s: failed: %v", a, res.err))
			case res.err == nil:
				r.record(a, ap, res.c)
				ok++
			} // an error of an interrupted command leaves the agent waiting
			dirty = true
			check()
		case j := <-judgments:
			judging, judged = false, time.Now()
			dirty = r.apply(j) || dirty
			check()
		case <-timer:
			if judging || time.Since(judged) < r.o.Poll {
				continue // the next change's turn
			}
			if list := r.toJudge(wave); len(list.agents) > 0 {
				judging = true
				go func() { judgments <- r.read(ctx, list) }()
			} else {
				judged = time.Now()
			}
		case <-done:
			// Stopped at the top of the loop.
		}
		r.show()
		if saveNow || halting == nil && dirty && time.Since(saved) >= saveEvery {
			if err := r.save(ctx); err != nil {
				settle(false)
				return err
			}
			saved, dirty, saveNow = time.Now(), false, false
		}
	}
	settle(true)
	check()
	r.show()
	if halting != nil {
		return r.halt(ctx, halting)
	}
	if err := r.save(ctx); err != nil {
		return err
	}
	return ctx.Err() // --resume goes on from here
}

// judgment is the verdicts on a wave's changed agents, each on the
// document the rollout wrote for it.
type judgment struct {
	agents   []string
	serials  []uint64
	verdicts []Verdict
	whys     []string
}

// judgeWave reads the reports of the wave's changed agents (several at a
// time) and decides each: promoted, failed, or still pending. It returns
// how many are pending and whether any was decided; its caller records
// the decisions and halts the rollout on more failures than MaxFailures.
func (r *runner) judgeWave(ctx context.Context, wave []string) (pending int, decided bool) {
	decided = r.apply(r.read(ctx, r.toJudge(wave)))
	for _, a := range wave {
		if r.p.Agents[a].Status == StatusChanged && !r.p.Agents[a].Reverted {
			pending++
		}
	}
	return pending, decided
}

// toJudge is the judgment to read for the wave: its changed agents.
func (r *runner) toJudge(wave []string) judgment {
	var j judgment
	for _, a := range wave {
		if ap := r.p.Agents[a]; ap.Status == StatusChanged && !ap.Reverted {
			j.agents, j.serials = append(j.agents, a), append(j.serials, ap.Serial)
		}
	}
	return j
}

// read reads the judgment's reports, readers at a time. It touches the
// store only, not the progress record.
func (r *runner) read(ctx context.Context, j judgment) judgment {
	j.verdicts, j.whys = make([]Verdict, len(j.agents)), make([]string, len(j.agents))
	parallel(len(j.agents), func(k int) {
		j.verdicts[k], j.whys[k] = r.verdict(ctx, j.agents[k], j.serials[k])
	})
	return j
}

// apply records a judgment's decisions: promoted, failed, or failed for
// want of a report within Wait. An agent that is no longer the judgment's
// (decided or reverted meanwhile) is left as it is. It reports whether
// any was decided.
func (r *runner) apply(j judgment) (decided bool) {
	for k, a := range j.agents {
		ap := r.p.Agents[a]
		if ap.Status != StatusChanged || ap.Reverted || ap.Serial != j.serials[k] {
			continue
		}
		switch {
		case j.verdicts[k] == Promoted:
			ap.Status, decided = StatusPromoted, true
			r.log(fmt.Sprintf("%s: promoted %s@%s (%v after its document changed)", a, r.o.AddonID, r.o.Version, time.Since(ap.ChangedAt).Round(time.Second)))
		case j.verdicts[k] == Failed:
			ap.Status, ap.Reason, decided = StatusFailed, j.whys[k], true
			r.log(fmt.Sprintf("%s: failed: %s", a, j.whys[k]))
		case time.Since(ap.WaitFrom) > r.o.Wait:
			ap.Status, ap.Reason, decided = StatusFailed, fmt.Sprintf("no report of %s@%s promoted within %v", r.o.AddonID, r.o.Version, r.o.Wait), true
			r.log(fmt.Sprintf("%s: failed: %s", a, ap.Reason))
		}
	}
	return decided
}

// saveEvery is how often a wave's changes are recorded while it writes.
const saveEvery = time.Second

// readers is how many reports or documents are read at once.
const readers = 16

// writers is how many agents' documents a wave changes at once (each a
// read, a check of its signature, and a conditional write of it and its
// .sig): one after another, a 2,000-agent wave took 4-5 minutes.
const writers = 8

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

// verdict reads agent a's report and judges it.
func (r *runner) verdict(ctx context.Context, a string, serial uint64) (Verdict, string) {
	data, _, err := store.ReadSmall(ctx, r.o.Store, fleet.ReportKey(a), fleet.MaxReportSize, store.OpenOptions{})
	if err != nil {
		return Pending, ""
	}
	rep, err := fleet.ParseReport(data, a)
	if err != nil {
		return Pending, ""
	}
	return Judge(&rep, r.o.AddonID, r.o.Version, serial)
}

// halt stops the rollout: no further agent is changed; with RevertOnHalt
// the agents it changed get their previous entry back.
func (r *runner) halt(ctx context.Context, failed []string) error {
	r.p.State = "halted"
	r.log(fmt.Sprintf("halted: %d agents failed, more than --max-failures %d", len(failed), r.o.MaxFailures))
	for _, a := range failed {
		r.log(fmt.Sprintf("  %s: %s", a, r.p.Agents[a].Reason))
	}
	if r.o.RevertOnHalt {
		for _, w := range r.p.Waves {
			for _, a := range w {
				ap := r.p.Agents[a]
				if ap.Previous == nil || ap.Status == StatusWaiting || ap.Reverted {
					continue
				}
				if err := r.revert(ctx, a, ap); err != nil {
					r.log(fmt.Sprintf("%s: not reverted: %v", a, err))
					continue
				}
				ap.Reverted = true
				r.log(fmt.Sprintf("%s: reverted to %s@%s", a, r.o.AddonID, ap.Previous.Version))
			}
		}
	}
	if err := r.save(ctx); err != nil {
		return err
	}
	return fmt.Errorf("%w: %d of %d agents failed (--max-failures %d)", ErrHalted, len(failed), len(r.p.Agents), r.o.MaxFailures)
}

// changed is what a change found or did to an agent's document.
type changed struct {
	serial  uint64            // of the document at the version
	already bool              // it was at the version before this change
	from    *assignment.Addon // the entry it replaced, when it wrote one
}

// change moves agent a's entry of the add-on to the version. It reads and
// writes the agent's document only: record keeps what it did.
func (r *runner) change(ctx context.Context, a string) (changed, error) {
	var c changed
	serial, err := r.rewrite(ctx, a, func(doc *assignment.Document, i int) (bool, error) {
		c = changed{} // again for a document read again
		cur := doc.Addons[i]
		if cur.Version == r.o.Version {
			c.serial, c.already = doc.Serial, true
			return false, nil
		}
		next, err := publish.Retarget(cur, r.pkg)
		if err != nil {
			return false, err
		}
		doc.Addons[i] = next
		c.from = &cur
		return true, nil
	})
	if err != nil {
		return changed{}, err
	}
	if !c.already {
		c.serial = serial
	}
	return c, nil
}

// record marks agent a changed. An agent found at the version keeps the
// Previous that prepare recorded: nothing when it had the version before
// the rollout, its old entry when this rollout's change of it was never
// recorded (the command killed in between).
func (r *runner) record(a string, ap *AgentProgress, c changed) {
	ap.Status, ap.Serial, ap.ChangedAt = StatusChanged, c.serial, time.Now().UTC()
	ap.WaitFrom = ap.ChangedAt
	if c.already {
		r.log(fmt.Sprintf("%s: already at %s@%s (serial %d)", a, r.o.AddonID, r.o.Version, c.serial))
		return
	}
	ap.Previous = c.from
	r.log(fmt.Sprintf("%s: %s %s -> %s (serial %d)", a, r.o.AddonID, c.from.Version, r.o.Version, c.serial))
}

// revert gives agent a its previous entry back, unless someone else has
// changed the entry since.
func (r *runner) revert(ctx context.Context, a string, ap *AgentProgress) error {
	_, err := r.rewrite(ctx, a, func(doc *assignment.Document, i int) (bool, error) {
		if doc.Serial != ap.Serial {
			return false, fmt.Errorf("its document is at serial %d now, not the rollout's %d: someone changed it since; left as it is", doc.Serial, ap.Serial)
		}
		doc.Addons[i] = *ap.Previous
		return true, nil
	})
	return err
}

// rewrite reads agent a's document, lets edit change the add-on's entry
// (index i), and writes it back signed with serial + 1, on the condition
// that nobody wrote it meanwhile; a concurrent writer makes it read and
// edit again, never overwrite. It returns the serial written (0: edit
// wrote nothing).
func (r *runner) rewrite(ctx context.Context, a string, edit func(doc *assignment.Document, i int) (bool, error)) (uint64, error) {
	for attempt := 0; ; attempt++ {
		doc, etag, err := r.readDoc(ctx, a)
		if err != nil {
			return 0, err
		}
		i := entry(doc, r.o.AddonID)
		if i < 0 {
			return 0, fmt.Errorf("add-on %s is not in its document", r.o.AddonID)
		}
		write, err := edit(doc, i)
		if err != nil || !write {
			return 0, err
		}
		if doc.Serial >= assignment.MaxSerial {
			return 0, fmt.Errorf("its document has serial %d: no serial above it is allowed", doc.Serial)
		}
		doc.Serial++
		if doc.ConfigVersion, err = assignment.ComputeConfigVersion(*doc); err != nil {
			return 0, err
		}
		body, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return 0, err
		}
		body = append(body, '\n')
		_, err = r.writeSigned(ctx, publish.AssignmentsKey(a), body, etag)
		if errors.Is(err, store.ErrChanged) && attempt < 5 {
			r.log(fmt.Sprintf("%s: its document changed while it was being rewritten; reading it again", a))
			continue
		}
		if err != nil {
			return 0, err
		}
		return doc.Serial, nil
	}
}

// writeSigned writes a document and its signature (publish.WriteSigned);
// an interrupted command (ctx cancelled) still finishes the pair.
func (r *runner) writeSigned(ctx context.Context, key string, body []byte, etag string) (store.Info, error) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return publish.WriteSigned(wctx, r.o.Store, key, body, etag, r.o.Key)
}

// readDoc reads agent a's document and checks it (readDocOnce), again
// while its .sig may lag a concurrent writer's document.
func (r *runner) readDoc(ctx context.Context, a string) (doc *assignment.Document, etag string, err error) {
	key := publish.AssignmentsKey(a)
	err = publish.RereadWhileSigLags(ctx, func() error {
		doc, etag, err = r.readDocOnce(ctx, a, key)
		return err
	})
	return doc, etag, err
}

// readDocOnce reads agent a's document and checks it: signed by the
// rollout's keys — through the signature in its own metadata where the
// store keeps one (S3: written with the document in one PUT), else its
// .sig — and this agent's.
func (r *runner) readDocOnce(ctx context.Context, a, key string) (*assignment.Document, string, error) {
	raw, info, err := store.ReadSmall(ctx, r.o.Store, key, assignment.MaxDocumentSize, store.OpenOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("its document: %w", err)
	}
	sigData, inMeta, err := store.Signature(ctx, r.o.Store, key, info)
	if err != nil {
		return nil, "", fmt.Errorf("its document's signature: %w", err)
	}
	sig, err := signing.ParseSigFile(sigData)
	if err == nil {
		err = r.trust.VerifyBytes("", raw, sig)
	}
	if err != nil {
		err = fmt.Errorf("its document (%s) does not verify under the rollout's keys: %w", key, err)
		if !inMeta {
			err = fmt.Errorf("%w (%w)", err, publish.ErrSigLag)
		}
		return nil, "", err
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
