package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/state"
	"github.com/addond/addond/daemon/store"
)

// Options carry host access that tests replace.
type Options struct {
	Log      *slog.Logger
	Platform assignment.Platform // zero: the host's
	// Sleep waits between download retries (nil: real time).
	Sleep func(ctx context.Context, d time.Duration) error
	// PrivilegedRoot is where addond-updater puts capped copies (zero:
	// its default, /var/lib/addond-privileged).
	PrivilegedRoot string
}

// Agent is one addond instance bound to its runtime root.
type Agent struct {
	cfg      *config.Config
	log      *slog.Logger
	platform assignment.Platform
	keys     *signing.Keyring
	// privilegedRoot is where addond-updater's capped copies are.
	privilegedRoot string
	store          store.Store
	src            source.Source
	del            *delivery.Deliverer
	lock           *os.File
	runner         atomic.Pointer[runner] // while Run runs
	opts           Options

	docMu sync.Mutex
	// checkedAt is when the source last gave an answer that counts as
	// fresh (an accepted document, or unchanged), in this process.
	checkedAt time.Time
	// lastReplay identifies the last document refused as a replay, so a
	// replay that stays in the store is warned about and counted once.
	lastReplay [sha256.Size]byte
}

// Open prepares the runtime root and takes its lock: two addond processes
// never work on one tree.
func Open(cfg *config.Config, o Options) (*Agent, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Platform == (assignment.Platform{}) {
		o.Platform = assignment.Host()
	}
	if o.PrivilegedRoot == "" {
		o.PrivilegedRoot = capabilities.DefaultPrivilegedRoot
	}
	a := &Agent{cfg: cfg, log: o.Log, platform: o.Platform, privilegedRoot: o.PrivilegedRoot}
	for _, dir := range []string{cfg.RuntimeRoot, filepath.Join(cfg.RuntimeRoot, "addons")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("runtime root: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(cfg.RuntimeRoot, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("runtime root: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("runtime root %s is in use by another addond: %w", cfg.RuntimeRoot, err)
	}
	a.lock = lock

	a.opts = o
	if err := a.configure(cfg); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// configure (re)builds what depends on the config: trust keys, store,
// assignment source and delivery. The runtime root stays the one Open
// locked.
func (a *Agent) configure(cfg *config.Config) error {
	keys, err := signing.LoadKeyring(cfg.Trust.PublicKeys)
	if err != nil {
		return err
	}
	var st store.Store
	if cfg.Store != "" {
		if st, err = store.Open(cfg.Store); err != nil {
			return err
		}
	}
	var src source.Source
	switch {
	case cfg.Assignments.StoreKey != "":
		src = &source.Store{Store: st, Key: cfg.Assignments.StoreKey}
	case cfg.Assignments.File != "":
		src = &source.File{Path: cfg.Assignments.File}
	}
	a.cfg, a.keys, a.store, a.src = cfg, keys, st, src
	a.del = delivery.New(delivery.Options{
		Root:              cfg.RuntimeRoot,
		Store:             st,
		Keys:              keys,
		RequireSignatures: cfg.Trust.Required(),
		MaxConcurrent:     cfg.MaxConcurrentDownloads,
		Retries:           cfg.DownloadRetries,
		MinFree:           cfg.MinFreeBytes,
		Log:               a.log,
		Sleep:             a.opts.Sleep,
	})
	return nil
}

// Close releases the runtime root.
func (a *Agent) Close() error {
	if a.lock != nil {
		return a.lock.Close()
	}
	return nil
}

// Report is the outcome of one delivery reconcile.
type Report struct {
	Serial uint64
	// DocumentErr is why the assignment document could not be refreshed;
	// the cached one (FromCache) was used, or none.
	DocumentErr error
	FromCache   bool
	// DocumentRefused: the source answered, but with a document that was
	// refused (DocumentErr says why).
	DocumentRefused bool
	// Fresh: the document in use is confirmed by the source — it was just
	// accepted, or the source said it is unchanged — or there is no
	// source. Otherwise what runs is not confirmed (from_lkg).
	Fresh bool
	// CheckedAt is when the source last answered freshly (this process);
	// AppliedAt when the document in use was accepted (persisted). Zero:
	// never.
	CheckedAt, AppliedAt time.Time
	// Replay is set when the source's document was refused as a replay;
	// NewReplay when this process had not refused that document before.
	Replay    *source.ReplayError
	NewReplay bool
	// Pinned names the add-ons whose version the local overrides set.
	Pinned       map[string]bool
	OverridesErr error // a malformed overrides file was ignored
	Addons       []AddonReport
}

// AddonReport is one add-on's outcome.
type AddonReport struct {
	AddonID       string
	Version       string // desired
	ActiveVersion string // what current points to now
	State         string // staged, disabled, skipped, failed
	FromLKG       bool   // delivery failed; the last-known-good version stays
	Downloaded    bool
	Err           error
}

// Converged reports whether every enabled pushed artifact is staged and
// current, from a fresh document.
func (r *Report) Converged() bool {
	if r.DocumentErr != nil {
		return false
	}
	for _, a := range r.Addons {
		if a.Err != nil {
			return false
		}
	}
	return true
}

// Errors lists every problem, each naming the add-on (or the document).
func (r *Report) Errors() []error {
	var errs []error
	if r.DocumentErr != nil {
		errs = append(errs, r.DocumentErr)
	}
	if r.OverridesErr != nil {
		errs = append(errs, fmt.Errorf("%w (ignored; the pushed set is used)", r.OverridesErr))
	}
	for _, a := range r.Addons {
		if a.Err != nil {
			errs = append(errs, a.Err)
		}
	}
	return errs
}

// Stage runs one delivery reconcile: refresh the document, apply
// overrides, and fetch, verify, stage and activate every enabled pushed
// artifact.
func (a *Agent) Stage(ctx context.Context) (*Report, error) {
	rep := &Report{}
	addons, authoritative, err := a.desired(ctx, rep)
	if err != nil {
		return nil, err
	}

	assigned := map[string]bool{}
	results := make([]AddonReport, len(addons))
	keepPartials := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, ad := range addons {
		assigned[ad.AddonID] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := a.stageOne(ctx, ad, rep.Pinned[ad.AddonID])
			if r.Err != nil && r.State == "failed" {
				mu.Lock()
				keepPartials[r.AddonID+"@"+r.Version] = true
				mu.Unlock()
			}
			results[i] = r
		}()
	}
	wg.Wait()
	rep.Addons = results
	sort.Slice(rep.Addons, func(i, j int) bool { return rep.Addons[i].AddonID < rep.Addons[j].AddonID })

	// Prune add-ons no longer assigned — only with a document in hand:
	// without one, every add-on keeps its last-known-good.
	ids, err := a.del.AddonIDs()
	if err != nil {
		return rep, err
	}
	for _, id := range ids {
		if !authoritative {
			break
		}
		if !assigned[id] {
			a.log.Info("removing add-on no longer assigned", "addon_id", id)
			if err := a.del.RemoveAddon(id); err != nil {
				return rep, err
			}
		}
	}
	return rep, a.del.CleanTmp(keepPartials)
}

// document refreshes the assignment document, falling back to the last
// accepted one when the source fails or the new document is refused. It
// reports whether the result is authoritative: an accepted document (fresh
// or cached), or none configured — as opposed to nothing known.
func (a *Agent) document(ctx context.Context, ast *state.Agent, rep *Report) (*assignment.Document, bool, error) {
	if a.src == nil {
		rep.Fresh = true
		return &assignment.Document{AgentID: a.cfg.AgentID}, true, nil
	}
	// Serials (and the conditional-fetch token) are the source's own: when
	// the operator points addond at another source, its documents are
	// judged afresh — not as replays of the old one's.
	id := a.sourceID()
	last := *ast
	if last.Source != "" && last.Source != id {
		a.log.Info("the assignment source changed; its serials are its own", "was", last.Source, "now", id, "last_serial_there", last.LastSerial)
		last = state.Agent{AppliedAt: ast.AppliedAt}
	}
	policy := source.Policy{AgentID: a.cfg.AgentID, Keys: a.keys, RequireSignatures: a.cfg.Trust.Required(), LastSerial: last.LastSerial, LastDigest: last.DocumentDigest}
	f, err := a.src.Fetch(ctx, last.DocumentToken)
	if err == nil {
		doc, aerr := source.Accept(f, policy)
		if aerr == nil {
			cv, _ := assignment.ComputeConfigVersion(*doc)
			if err := state.SaveDocument(a.cfg.RuntimeRoot, f.Raw, f.Sig); err != nil {
				return nil, false, err
			}
			now := time.Now().UTC()
			*ast = state.Agent{Source: id, LastSerial: max(doc.Serial, last.LastSerial), ConfigVersion: cv, DocumentToken: f.Token, DocumentDigest: source.DocumentDigest(f.Raw), AppliedAt: now}
			if err := state.SaveAgent(a.cfg.RuntimeRoot, ast); err != nil {
				return nil, false, err
			}
			rep.Fresh, rep.AppliedAt, rep.CheckedAt = true, now, a.checked(now)
			return doc, true, nil
		}
		err = aerr
		rep.DocumentRefused = true
		a.noteReplay(f, err, rep)
	}
	rep.AppliedAt = ast.AppliedAt
	if errors.Is(err, source.ErrUnchanged) {
		rep.Fresh, rep.CheckedAt = true, a.checked(time.Now().UTC())
	} else {
		rep.DocumentErr = err
		rep.CheckedAt = a.checked(time.Time{})
		a.log.Info("assignment document not refreshed; using the last accepted one", "error", err)
	}
	raw, sig, ok, cerr := state.LoadDocument(a.cfg.RuntimeRoot)
	if cerr != nil {
		return nil, false, cerr
	}
	if !ok {
		if rep.DocumentErr == nil {
			rep.DocumentErr = errors.New("assignment document unchanged but no cached copy")
		}
		rep.Fresh = false
		return &assignment.Document{AgentID: a.cfg.AgentID}, false, nil
	}
	_, remote := a.src.(*source.Store)
	doc, err := source.Accept(&source.Fetched{Raw: raw, Sig: sig, Origin: "cached " + a.cfg.RuntimeRoot + "/state/assignments.json", Remote: remote}, policy)
	if err != nil {
		rep.DocumentErr = errors.Join(rep.DocumentErr, err)
		rep.Fresh = false
		return &assignment.Document{AgentID: a.cfg.AgentID}, false, nil
	}
	rep.FromCache = rep.DocumentErr != nil
	return doc, true, nil
}

// sourceID names the configured assignment source for state.Agent.Source.
func (a *Agent) sourceID() string {
	if a.cfg.Assignments.StoreKey != "" {
		return a.cfg.Store + "#" + a.cfg.Assignments.StoreKey
	}
	return "file:" + a.cfg.Assignments.File
}

// checked records t (unless zero) as the last fresh answer of the source
// and returns the last one.
func (a *Agent) checked(t time.Time) time.Time {
	a.docMu.Lock()
	defer a.docMu.Unlock()
	if !t.IsZero() {
		a.checkedAt = t
	}
	return a.checkedAt
}

// noteReplay reports a document refused as a replay: a warning with both
// serials, once per distinct document (a replay left in the store is
// fetched again on every poll).
func (a *Agent) noteReplay(f *source.Fetched, err error, rep *Report) {
	var re *source.ReplayError
	if !errors.As(err, &re) {
		return
	}
	h := sha256.New()
	h.Write(f.Raw)
	h.Write([]byte{0})
	h.Write(f.Sig)
	var id [sha256.Size]byte
	h.Sum(id[:0])
	a.docMu.Lock()
	rep.NewReplay = a.lastReplay != id
	a.lastReplay = id
	a.docMu.Unlock()
	rep.Replay = re
	if rep.NewReplay {
		a.log.Warn("assignment document refused as a replay; the last applied one stays in use", "origin", f.Origin, "serial", re.Serial, "last_serial", re.LastSerial, "same_serial", re.SameSerial)
	}
}

// overrides reads the local overrides file; a missing file is none.
func (a *Agent) overrides() (*assignment.Overrides, error) {
	if a.cfg.LocalOverrides == "" {
		return nil, nil
	}
	data, err := os.ReadFile(a.cfg.LocalOverrides)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local overrides %s: %w", a.cfg.LocalOverrides, err)
	}
	ov, err := assignment.ParseOverrides(data)
	if err != nil {
		return nil, fmt.Errorf("local overrides %s: %w", a.cfg.LocalOverrides, err)
	}
	return ov, nil
}

// resolve validates one entry for this host, refuses a downgrade (before
// anything is fetched) and, for a pushed artifact the assignment names no
// build of (an operator's version pin), completes it from the version's
// signed package.json. pinned: the local overrides set the version.
func (a *Agent) resolve(ctx context.Context, ad assignment.Addon, pinned bool) (assignment.Spec, error) {
	spec, err := assignment.Resolve(ad, a.platform)
	if err == nil {
		err = a.downgrade(spec, pinned)
	}
	if err == nil && spec.Enabled && spec.NeedsPackage() {
		var pkg *assignment.Package
		if pkg, _, _, err = a.del.FetchPackage(ctx, spec.AddonID, spec.Version); err == nil {
			spec, err = spec.WithPackage(pkg, a.platform)
		}
	}
	return spec, err
}

// downgrade refuses to stage an enabled pushed artifact whose version is
// lower than the highest version ever activated for the add-on (both
// semantic versions), unless the assignment allows a downgrade, the
// operator pinned the version locally, or it is the version current
// already points to (nothing changes). Health rollbacks never come here.
func (a *Agent) downgrade(spec assignment.Spec, pinned bool) error {
	if pinned || spec.AllowDowngrade || !spec.Enabled || spec.Delivery != assignment.DeliveryPushedArtifact {
		return nil
	}
	cur, err := a.del.Current(spec.AddonID)
	if err != nil {
		return err
	}
	if cur == spec.Version {
		return nil
	}
	st, err := a.del.State(spec.AddonID)
	if err != nil {
		return err
	}
	return assignment.CheckDowngrade(spec.AddonID, spec.Version, st.Highest(cur), false)
}

// desired refreshes the document, applies the overrides and returns the
// add-on entries to resolve, with what the report should say about the
// document. authoritative is false when no document at all is known.
func (a *Agent) desired(ctx context.Context, rep *Report) ([]assignment.Addon, bool, error) {
	ast, err := state.LoadAgent(a.cfg.RuntimeRoot)
	if err != nil {
		return nil, false, err
	}
	doc, authoritative, err := a.document(ctx, ast, rep)
	if err != nil {
		return nil, false, err
	}
	rep.Serial = doc.Serial
	rep.Pinned = map[string]bool{}
	addons := doc.Addons
	if ov, err := a.overrides(); err != nil {
		rep.OverridesErr = err
		a.log.Warn("ignoring local overrides", "error", err)
	} else if patched, touched, err := ov.Apply(addons); err != nil {
		rep.OverridesErr = err
	} else {
		addons = patched
		for id := range touched {
			if ov.PinsVersion(id) {
				rep.Pinned[id] = true
			}
		}
	}
	return addons, authoritative, nil
}

// stageOne delivers one add-on and, on success, makes it current and its
// spec the last-known-good.
func (a *Agent) stageOne(ctx context.Context, ad assignment.Addon, pinned bool) AddonReport {
	r := AddonReport{AddonID: ad.AddonID, Version: ad.Version}
	if assignment.ValidAddonID(ad.AddonID) == nil {
		r.ActiveVersion, _ = a.del.Current(ad.AddonID)
	}
	spec, err := a.resolve(ctx, ad, pinned)
	if err != nil {
		return a.failed(r, err)
	}
	r.Version = spec.Version
	switch {
	case !spec.Enabled:
		r.State = "disabled"
		return r
	case spec.Delivery != assignment.DeliveryPushedArtifact:
		r.State = "skipped"
		return r
	}
	staged, err := a.del.Stage(ctx, spec)
	if err != nil {
		return a.failed(r, err)
	}
	if _, err := a.del.Activate(spec.AddonID, spec.Version); err != nil {
		return a.failed(r, &delivery.Error{AddonID: spec.AddonID, Version: spec.Version, Op: "activate", Err: err, Environment: true})
	}
	if err := a.del.UpdateState(spec.AddonID, func(st *state.Addon) error {
		st.NoteActivated(spec.Version)
		st.LKG = &spec
		return nil
	}); err != nil {
		return a.failed(r, err)
	}
	if _, err := a.del.GC(spec.AddonID); err != nil {
		a.log.Warn("garbage collection failed", "addon_id", spec.AddonID, "error", err)
	}
	r.State, r.ActiveVersion, r.Downloaded = "staged", spec.Version, staged.Downloaded
	a.log.Info("staged", "addon_id", spec.AddonID, "version", spec.Version, "downloaded", staged.Downloaded, "bytes", staged.Bytes)
	return r
}

func (a *Agent) failed(r AddonReport, err error) AddonReport {
	r.State, r.Err = "failed", err
	if assignment.ValidAddonID(r.AddonID) == nil {
		if st, serr := a.del.State(r.AddonID); serr == nil && st.LKG != nil && r.ActiveVersion != "" {
			r.FromLKG = true
		}
	}
	a.log.Info("delivery failed", "addon_id", r.AddonID, "version", r.Version, "active_version", r.ActiveVersion, "from_lkg", r.FromLKG, "error", err)
	return r
}
