package daemon

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/logging"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/source"
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
	// Addons, when set, is kept up to date with every add-on's active
	// version and unit, for the log handler (logging.New).
	Addons *logging.Addons
}

// env is what a config makes: the trust keys, the store, the assignment
// source and delivery. It is never changed once made: a reload makes a new
// one, and work in flight keeps the one it started with.
type env struct {
	cfg     *config.Config
	keys    *signing.Keyring // trust.public_keys: packages (and documents when docKeys are the same)
	docKeys *signing.Keyring // trust.assignment_keys, else keys: assignment documents
	store   store.Store
	src     source.Source
	del     *delivery.Deliverer
}

// Agent is one addond instance bound to its runtime root.
type Agent struct {
	log      *slog.Logger
	platform assignment.Platform
	// privilegedRoot is where addond-updater's capped copies are.
	privilegedRoot string
	lock           *os.File
	opts           Options
	env            atomic.Pointer[env]
	loop           atomic.Pointer[loop] // while Run runs

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
	a := &Agent{log: o.Log, platform: o.Platform, privilegedRoot: o.PrivilegedRoot}
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
	for _, name := range keys.Unscoped() {
		a.log.Warn("trust key without a scope: packages it signs may be granted any capability the policy allows, to any add-on (a <name>.scope beside it limits that)", "key", name)
	}
	docKeys := keys
	if len(cfg.Trust.AssignmentKeys) > 0 {
		// Separate roles: the control plane signs what runs where, the
		// publisher the bytes. A document signed by a package key is
		// refused then.
		if docKeys, err = signing.LoadKeyring(cfg.Trust.AssignmentKeys); err != nil {
			return fmt.Errorf("trust.assignment_keys: %w", err)
		}
		if err := separateRoles(keys, docKeys); err != nil {
			return err
		}
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
	a.env.Store(&env{cfg: cfg, keys: keys, docKeys: docKeys, store: st, src: src, del: a.deliverer(cfg, keys, st)})
	return nil
}

// separateRoles refuses a key that is both a package key and an assignment
// key: with it, one signer could still vouch for both what runs where and
// the bytes, which the separate roles are there to prevent.
func separateRoles(keys, docKeys *signing.Keyring) error {
	if shared := keys.Shared(docKeys); len(shared) > 0 {
		return fmt.Errorf("trust: key %s is in both trust.public_keys and trust.assignment_keys: the roles are not separate; give each role its own key", strings.Join(shared, ", "))
	}
	return nil
}

// deliverer is delivery for cfg, with keys and st.
func (a *Agent) deliverer(cfg *config.Config, keys *signing.Keyring, st store.Store) *delivery.Deliverer {
	return delivery.New(delivery.Options{
		Root:              cfg.RuntimeRoot,
		Store:             st,
		Keys:              keys,
		Platform:          a.platform,
		RequireSignatures: cfg.Trust.Required(),
		MaxConcurrent:     cfg.MaxConcurrentDownloads,
		Retries:           cfg.DownloadRetries,
		MinFree:           cfg.MinFreeBytes,
		RateLimit:         cfg.DownloadRateLimit,
		Log:               a.log,
		Sleep:             a.opts.Sleep,
	})
}

// cfg is the config in effect.
func (a *Agent) cfg() *config.Config { return a.env.Load().cfg }

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
	// Expired: the document in use is past its expires; nothing of it is
	// applied (DocumentErr says since when).
	Expired bool
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

// AddonReport is one add-on's outcome of `addond stage`.
type AddonReport = reconcile.Outcome

// doc is what the core is told of the document.
func (r *Report) doc() reconcile.DocInfo {
	return reconcile.DocInfo{
		Serial: r.Serial, Err: r.DocumentErr, Refused: r.DocumentRefused, Replay: r.Replay != nil, NewReplay: r.NewReplay,
		Fresh: r.Fresh, Expired: r.Expired, CheckedAt: r.CheckedAt, AppliedAt: r.AppliedAt,
	}
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
