package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/state"
)

// document refreshes the assignment document, falling back to the last
// accepted one when the source fails or the new document is refused. It
// reports whether the result is authoritative: an accepted document (fresh
// or cached), or none configured — as opposed to nothing known.
func (a *Agent) document(ctx context.Context, e *env, ast *state.Agent, rep *Report) (*assignment.Document, bool, error) {
	doc, authoritative, err := a.fetchDocument(ctx, e, ast, rep)
	if err != nil || !authoritative || !doc.Expired(time.Now()) {
		return doc, authoritative, err
	}
	// Past its expiry a document is applied no more — an unchanged one
	// (a 304) no longer confirms anything: what runs stays, as
	// last-known-good, and status says why.
	rep.Expired, rep.Fresh = true, false
	rep.DocumentErr = errors.Join(rep.DocumentErr, fmt.Errorf("%w: serial %d expired at %s", ErrExpired, doc.Serial, doc.Expires.UTC().Format(time.RFC3339)))
	return &assignment.Document{AgentID: e.cfg.AgentID, Serial: doc.Serial}, false, nil
}

// ErrExpired marks an assignment document past its expires.
var ErrExpired = errors.New("assignment document expired")

// fetchDocument is document before its expiry is considered.
func (a *Agent) fetchDocument(ctx context.Context, e *env, ast *state.Agent, rep *Report) (*assignment.Document, bool, error) {
	if e.src == nil {
		rep.Fresh = true
		return &assignment.Document{AgentID: e.cfg.AgentID}, true, nil
	}
	// Serials (and the conditional-fetch token) are the source's own: when
	// the operator points addond at another source, its documents are
	// judged afresh — not as replays of the old one's.
	id := e.sourceID()
	last := *ast
	if last.Source != "" && last.Source != id {
		a.log.Info("the assignment source changed; its serials are its own", "was", last.Source, "now", id, "last_serial_there", last.LastSerial)
		last = state.Agent{AppliedAt: ast.AppliedAt}
	}
	policy := source.Policy{AgentID: e.cfg.AgentID, Keys: e.docKeys, RequireSignatures: e.cfg.Trust.Required(), LastSerial: last.LastSerial, LastDigest: last.DocumentDigest}
	f, err := e.src.Fetch(ctx, last.DocumentToken)
	if err == nil {
		doc, aerr := source.Accept(f, policy)
		if aerr == nil {
			cv, _ := assignment.ComputeConfigVersion(*doc)
			if err := state.SaveDocument(e.cfg.RuntimeRoot, f.Raw, f.Sig); err != nil {
				return nil, false, err
			}
			now := time.Now().UTC()
			*ast = state.Agent{Source: id, LastSerial: max(doc.Serial, last.LastSerial), ConfigVersion: cv, DocumentToken: f.Token, DocumentDigest: source.DocumentDigest(f.Raw), AppliedAt: now}
			if err := state.SaveAgent(e.cfg.RuntimeRoot, ast); err != nil {
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
	raw, sig, ok, cerr := state.LoadDocument(e.cfg.RuntimeRoot)
	if cerr != nil {
		return nil, false, cerr
	}
	if !ok {
		if rep.DocumentErr == nil {
			rep.DocumentErr = errors.New("assignment document unchanged but no cached copy")
		}
		rep.Fresh = false
		return &assignment.Document{AgentID: e.cfg.AgentID}, false, nil
	}
	_, remote := e.src.(*source.Store)
	doc, err := source.Accept(&source.Fetched{Raw: raw, Sig: sig, Origin: "cached " + e.cfg.RuntimeRoot + "/state/assignments.json", Remote: remote}, policy)
	if err != nil {
		rep.DocumentErr = errors.Join(rep.DocumentErr, err)
		rep.Fresh = false
		return &assignment.Document{AgentID: e.cfg.AgentID}, false, nil
	}
	rep.FromCache = rep.DocumentErr != nil
	return doc, true, nil
}

// sourceID names the configured assignment source for state.Agent.Source.
func (e *env) sourceID() string {
	if e.cfg.Assignments.StoreKey != "" {
		return e.cfg.Store + "#" + e.cfg.Assignments.StoreKey
	}
	return "file:" + e.cfg.Assignments.File
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
func (e *env) overrides() (*assignment.Overrides, error) {
	if e.cfg.LocalOverrides == "" {
		return nil, nil
	}
	data, err := os.ReadFile(e.cfg.LocalOverrides)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local overrides %s: %w", e.cfg.LocalOverrides, err)
	}
	ov, err := assignment.ParseOverrides(data)
	if err != nil {
		return nil, fmt.Errorf("local overrides %s: %w", e.cfg.LocalOverrides, err)
	}
	return ov, nil
}

// resolve validates one entry for this host, refuses a downgrade below
// floor (before anything is fetched) and, for a pushed artifact the
// assignment names no build of (an operator's version pin), completes it
// from the version's signed package.json. pinned: the local overrides set
// the version.
//
// A desired version lower than the highest version ever activated for
// the add-on (both semantic versions) is a downgrade, unless the
// assignment allows one, the operator pinned the version locally, or it
// is the version current points to already (nothing changes). Health
// rollbacks never come here.
func (a *Agent) resolve(ctx context.Context, e *env, ad assignment.Addon, pinned bool, floor reconcile.Floor) (assignment.Spec, error) {
	spec, err := assignment.Resolve(ad, a.platform)
	if err == nil && !pinned && !spec.AllowDowngrade && spec.Enabled && spec.Delivery == assignment.DeliveryPushedArtifact {
		err = reconcile.CheckFloor(spec, floor)
	}
	if err == nil && spec.Enabled && spec.NeedsPackage() {
		var pkg *assignment.Package
		if pkg, err = e.del.Package(ctx, spec.AddonID, spec.Version); err == nil {
			spec, err = spec.WithPackage(pkg, a.platform)
		}
	}
	return spec, err
}

// desired refreshes the document, applies the overrides and returns the
// add-on entries to resolve, with what the report should say about the
// document. authoritative is false when no document at all is known.
func (a *Agent) desired(ctx context.Context, e *env, rep *Report) ([]assignment.Addon, bool, error) {
	ast, err := state.LoadAgent(e.cfg.RuntimeRoot)
	if err != nil {
		return nil, false, err
	}
	doc, authoritative, err := a.document(ctx, e, ast, rep)
	if err != nil {
		return nil, false, err
	}
	rep.Serial = doc.Serial
	rep.Pinned = map[string]bool{}
	addons := doc.Addons
	if ov, err := e.overrides(); err != nil {
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
