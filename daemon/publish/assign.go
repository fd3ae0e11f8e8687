package publish

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// AssignOptions describe an agent's assignment document. Per-add-on maps
// are keyed by add-on id.
type AssignOptions struct {
	Store          store.Store
	AgentID        string
	Key            ed25519.PrivateKey   // signs the document; nil: unsigned
	Trust          *signing.Keyring     // verifies package.json; default: Key's public key
	Platform       *assignment.Platform // also emit the single artifact reference for it
	Addons         []string             // ID@VERSION
	Supervision    map[string]string
	Schedule       map[string]string
	Args           map[string][]string
	ConfigFiles    map[string]string
	Timeout        map[string]string
	Disable        map[string]bool
	AllowDowngrade map[string]bool
	// HelperCallers: by helper add-on, the other add-ons that may run it.
	HelperCallers map[string][]string
	// Expires: the document expires this long after it is written (0:
	// never).
	Expires time.Duration
	// Merge keeps the current document's add-ons that Addons does not
	// name (in their order, entries unchanged); Addons replace or add.
	Merge bool
	// Remove drops these add-ons from the current document; it implies
	// Merge. Each must be in the current document.
	Remove []string
	// DryRun builds the document and its changes and writes nothing.
	DryRun bool
	// Warn receives non-fatal notes (packages whose signatures could not
	// be checked).
	Warn func(string)
}

// Assigned is what Assign wrote (or, on a dry run, would write).
type Assigned struct {
	*assignment.Document
	Changes []Change // against the current document, by add-on id
	Written bool
}

// Change is how one add-on's entry differs between the current document
// and the new one.
type Change struct {
	AddonID string
	Kind    string   // "added", "removed", "changed"
	Fields  []string // changed: the entry's fields that differ, e.g. "version 1.1.0 → 1.2.0", "config_json"
}

func (c Change) String() string {
	sign := map[string]string{"added": "+", "removed": "-", "changed": "~"}[c.Kind]
	s := sign + " " + c.AddonID
	if len(c.Fields) > 0 {
		s += ": " + strings.Join(c.Fields, ", ")
	}
	return s
}

// AssignmentsKey is where an agent's document lives.
func AssignmentsKey(agent string) string { return "agents/" + agent + "/assignments.json" }

// Assign builds, signs and writes agents/<agent>/assignments.json with a
// serial one above the current document's, on the condition that the
// current document is still the one it read (concurrent writers never
// reuse a serial or lose a change). With Merge or Remove the current
// document's other add-ons stay; with DryRun nothing is written.
func Assign(ctx context.Context, o AssignOptions) (*Assigned, error) {
	if err := store.Writable(o.Store); err != nil {
		return nil, err
	}
	if err := store.ValidKey(AssignmentsKey(o.AgentID)); err != nil || strings.Contains(o.AgentID, "/") || o.AgentID == "" {
		return nil, fmt.Errorf("agent id %q is not a safe name", o.AgentID)
	}
	trust := o.Trust
	if trust.Len() == 0 && o.Key != nil {
		trust = signing.NewKeyring(o.Key.Public().(ed25519.PublicKey))
	}
	key := AssignmentsKey(o.AgentID)
	prev, prevRaw, prevInfo, err := current(ctx, o.Store, key)
	if err != nil {
		return nil, err
	}
	etag := prevInfo.ETag
	known := map[string]bool{}
	named := []assignment.Addon{}
	for _, ref := range o.Addons {
		id, version, ok := strings.Cut(ref, "@")
		if !ok {
			return nil, fmt.Errorf("--addon %q: want ID@VERSION", ref)
		}
		if known[id] {
			return nil, fmt.Errorf("--addon %s given twice", id)
		}
		known[id] = true
		a, err := addonFromPackage(ctx, o, trust, id, version)
		if err != nil {
			return nil, err
		}
		named = append(named, a)
	}
	if err := o.checkNamed(known); err != nil {
		return nil, err
	}
	doc := assignment.Document{AgentID: o.AgentID, Addons: named}
	if o.Merge || len(o.Remove) > 0 {
		// Its entries go into a document signed with o.Key: they must be
		// ones a trusted key signed for this agent, not whatever someone
		// with write access to the store left there.
		reread := false
		err := RereadWhileSigLags(ctx, func() error {
			if reread {
				if prev, prevRaw, prevInfo, err = current(ctx, o.Store, key); err != nil {
					return err
				}
				etag = prevInfo.ETag
			}
			reread = true
			return vouched(ctx, o, trust, key, prev, prevRaw, prevInfo)
		})
		if err != nil {
			return nil, err
		}
		if doc.Addons, err = merge(prev, named, o.Remove); err != nil {
			return nil, err
		}
		if prev != nil && o.Expires == 0 {
			doc.Expires = prev.Expires // merging keeps the document's expiry
		}
	}
	doc.Serial = 1
	if prev != nil {
		if prev.Serial >= assignment.MaxSerial {
			return nil, fmt.Errorf("previous document %s has serial %d: no serial above it is allowed (at most 2^53); refusing to wrap", key, prev.Serial)
		}
		doc.Serial = prev.Serial + 1
	}
	if o.Expires > 0 {
		exp := time.Now().Add(o.Expires).UTC().Truncate(time.Second)
		doc.Expires = &exp
	}
	if doc.Expires != nil && !doc.Expires.After(time.Now()) && o.Warn != nil {
		o.Warn(fmt.Sprintf("the document expired at %s: agents will apply nothing of it (give --expires)", doc.Expires.Format(time.RFC3339)))
	}
	doc.ConfigVersion, err = assignment.ComputeConfigVersion(doc)
	if err != nil {
		return nil, err
	}
	res := &Assigned{Document: &doc, Changes: changes(prev, &doc)}
	if o.DryRun {
		return res, nil
	}
	body, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	// Written on the condition that the document is still the one whose
	// serial this one follows: two writers (assigns, a rollout) never both
	// write serial N+1.
	body = append(body, '\n')
	if _, err := WriteSigned(ctx, o.Store, key, body, etag, o.Key); err != nil {
		if errors.Is(err, store.ErrChanged) {
			return nil, fmt.Errorf("%s changed while this one was being written (another assign or a rollout): nothing written; run it again: %w", key, err)
		}
		return nil, err
	}
	res.Written = true
	return res, nil
}

// merge is the current document's add-ons with named ones replacing (in
// place) or added (at the end), and those in remove dropped.
func merge(prev *assignment.Document, named []assignment.Addon, remove []string) ([]assignment.Addon, error) {
	var cur []assignment.Addon
	if prev != nil {
		cur = prev.Addons
	}
	in := map[string]bool{}
	for _, a := range cur {
		in[a.AddonID] = true
	}
	drop := map[string]bool{}
	for _, id := range remove {
		if !in[id] {
			return nil, fmt.Errorf("--remove %s: the current document has no add-on %q", id, id)
		}
		drop[id] = true
	}
	byID := map[string]assignment.Addon{}
	for _, a := range named {
		if drop[a.AddonID] {
			return nil, fmt.Errorf("add-on %s is both in --addon and --remove", a.AddonID)
		}
		byID[a.AddonID] = a
	}
	out := []assignment.Addon{}
	for _, a := range cur {
		switch n, ok := byID[a.AddonID]; {
		case drop[a.AddonID]:
		case ok:
			out = append(out, n)
			delete(byID, a.AddonID)
		default:
			out = append(out, a)
		}
	}
	for _, a := range named {
		if _, left := byID[a.AddonID]; left {
			out = append(out, a)
		}
	}
	return out, nil
}

// changes lists how next differs from prev, add-on by add-on: in next's
// order the added and changed, then the removed.
func changes(prev, next *assignment.Document) []Change {
	old := map[string]assignment.Addon{}
	if prev != nil {
		for _, a := range prev.Addons {
			old[a.AddonID] = a
		}
	}
	var cs []Change
	seen := map[string]bool{}
	for _, a := range next.Addons {
		seen[a.AddonID] = true
		p, ok := old[a.AddonID]
		if !ok {
			cs = append(cs, Change{AddonID: a.AddonID, Kind: "added", Fields: []string{"version " + a.Version}})
			continue
		}
		if f := entryDiff(p, a); len(f) > 0 {
			cs = append(cs, Change{AddonID: a.AddonID, Kind: "changed", Fields: f})
		}
	}
	if prev != nil {
		for _, a := range prev.Addons {
			if !seen[a.AddonID] {
				cs = append(cs, Change{AddonID: a.AddonID, Kind: "removed", Fields: []string{"version " + a.Version}})
			}
		}
	}
	return cs
}

// entryDiff names the fields of an entry that differ; short scalar ones
// with their old and new values.
func entryDiff(a, b assignment.Addon) []string {
	var ma, mb map[string]json.RawMessage
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	json.Unmarshal(ja, &ma)
	json.Unmarshal(jb, &mb)
	keys := slices.Sorted(maps.Keys(mb))
	for k := range ma {
		if _, ok := mb[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	versionChanged := a.Version != b.Version
	for _, k := range keys {
		va, vb := ma[k], mb[k]
		if jsonEqual(va, vb) || versionChanged && fromPackage[k] {
			continue
		}
		if scalar(va) && scalar(vb) {
			out = append(out, fmt.Sprintf("%s %s → %s", k, shown(va), shown(vb)))
		} else {
			out = append(out, k)
		}
	}
	return out
}

// fromPackage are an entry's fields that follow from its version's
// package: a new version changes them all, and saying so adds nothing.
var fromPackage = map[string]bool{
	"artifacts": true, "package_json": true, "package_sig": true, "binary_path": true,
	"artifact_object_key": true, "artifact_sha256": true, "artifact_signature": true, "artifact_key_id": true, "artifact_size": true,
}

// jsonEqual compares two JSON values ignoring layout.
func jsonEqual(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

func scalar(v json.RawMessage) bool {
	return len(v) == 0 || len(v) <= 64 && v[0] != '{' && v[0] != '['
}

func shown(v json.RawMessage) string {
	if len(v) == 0 {
		return "(none)"
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(v)
}

// checkNamed refuses a per-add-on flag that names an add-on not among
// --addon.
func (o AssignOptions) checkNamed(known map[string]bool) error {
	for id := range o.HelperCallers {
		if !known[id] {
			return fmt.Errorf("--helper-caller names add-on %q, which is not among --addon", id)
		}
	}
	for id := range o.Args {
		if !known[id] {
			return fmt.Errorf("--arg names add-on %q, which is not among --addon", id)
		}
	}
	var named []string
	for _, m := range []map[string]bool{o.Disable, o.AllowDowngrade} {
		for id := range m {
			named = append(named, id)
		}
	}
	for _, m := range []map[string]string{o.Supervision, o.Schedule, o.ConfigFiles, o.Timeout} {
		for id := range m {
			named = append(named, id)
		}
	}
	for _, id := range named {
		if !known[id] {
			return fmt.Errorf("flag names add-on %q, which is not among --addon", id)
		}
	}
	return nil
}

// vouched checks that prev, the document a merge builds on, is this
// agent's and — when the new one is signed — signed by o.Key or a key of
// trust (its .sig).
func vouched(ctx context.Context, o AssignOptions, trust *signing.Keyring, key string, prev *assignment.Document, raw []byte, info store.Info) error {
	if prev == nil {
		return nil
	}
	if prev.AgentID != o.AgentID {
		return fmt.Errorf("the current %s names agent %q: not merged into (write it whole, without --merge)", key, prev.AgentID)
	}
	if o.Key == nil {
		return nil
	}
	sigData, inMeta, err := store.Signature(ctx, o.Store, key, info)
	if err != nil {
		return fmt.Errorf("the current %s has no signature to check before its entries are signed again (%v): not merged into; write it whole, without --merge: %w", key, err, ErrSigLag)
	}
	sig, err := signing.ParseSigFile(sigData)
	if err == nil {
		err = signing.NewKeyring(o.Key.Public().(ed25519.PublicKey)).VerifyBytes("", raw, sig)
		if err != nil && trust.Len() > 0 {
			err = trust.VerifyBytes("", raw, sig)
		}
	}
	if err != nil {
		err = fmt.Errorf("the current %s does not verify under --key or --trust (%v): its entries are not signed again; write it whole, without --merge", key, err)
		if !inMeta {
			err = fmt.Errorf("%w (%w)", err, ErrSigLag)
		}
		return err
	}
	return nil
}

// current reads the document at key (nil: there is none), its bytes and
// its ETag ("": none), which the write is conditional on.
func current(ctx context.Context, st store.Store, key string) (*assignment.Document, []byte, store.Info, error) {
	prev, info, err := store.ReadSmall(ctx, st, key, assignment.MaxDocumentSize, store.OpenOptions{})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil, store.Info{}, nil
	case err != nil:
		return nil, nil, store.Info{}, fmt.Errorf("previous document: %w", err)
	}
	p, err := assignment.Parse(prev)
	if err != nil {
		return nil, nil, store.Info{}, fmt.Errorf("previous document %s does not parse (%v); its serial is unknown, fix or delete it", key, err)
	}
	return p, prev, info, nil
}

func addonFromPackage(ctx context.Context, o AssignOptions, trust *signing.Keyring, id, version string) (assignment.Addon, error) {
	verify := trust
	if trust.Len() == 0 {
		verify = nil
		if o.Warn != nil {
			o.Warn(fmt.Sprintf("addon %s@%s: package signature not verified (give --key or --trust)", id, version))
		}
	}
	pkg, raw, sig, err := assignment.FetchPackage(ctx, o.Store, verify, id, version)
	if err != nil {
		return assignment.Addon{}, fmt.Errorf("addon %s@%s: %w", id, version, err)
	}
	enabled := !o.Disable[id]
	a := assignment.Addon{
		AddonID: id, Version: version, Enabled: &enabled,
		Delivery:       assignment.DeliveryPushedArtifact,
		Supervision:    pkg.Supervision,
		Args:           o.Args[id],
		OSCapabilities: pkg.OSCapabilities,
		Schedule:       o.Schedule[id],
		Timeout:        o.Timeout[id],
		AllowDowngrade: o.AllowDowngrade[id],
		HelperCallers:  o.HelperCallers[id],
		Artifacts:      map[string]assignment.Artifact{},
	}
	if s, ok := o.Supervision[id]; ok {
		a.Supervision = s
	}
	if a.Supervision == "" {
		a.Supervision = assignment.SupervisionAgentSidecar
	}
	if path, ok := o.ConfigFiles[id]; ok {
		data, err := os.ReadFile(path)
		if err != nil {
			return assignment.Addon{}, fmt.Errorf("addon %s: --config: %w", id, err)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(data, &obj); err != nil {
			return assignment.Addon{}, fmt.Errorf("addon %s: --config %s is not a JSON object: %w", id, path, err)
		}
		var buf bytes.Buffer
		json.Compact(&buf, data)
		a.ConfigJSON = buf.Bytes()
	}
	if err := setArtifacts(&a, SignedPackage{Package: pkg, Raw: raw, Sig: sig}, o.Platform); err != nil {
		return assignment.Addon{}, err
	}
	return a, nil
}

// SignedPackage is a version's package with its exact bytes and raw
// signature, as assignment.FetchPackage returns them.
type SignedPackage struct {
	*assignment.Package
	Raw, Sig []byte
}

// setArtifacts fills a's artifact fields from its version's package: every
// platform's reference that names both object key and sha256 (the agent is
// never told to fetch what it cannot verify), and with single, the single
// reference for that platform; and embeds the signed package itself, so
// that agents verify the artifact against it without a request of their
// own (without a signature, none is embedded). The entry must then
// resolve as the agent will resolve it.
func setArtifacts(a *assignment.Addon, sp SignedPackage, single *assignment.Platform) error {
	pkg := sp.Package
	a.Artifacts, a.BinaryPath = map[string]assignment.Artifact{}, ""
	a.PackageJSON, a.PackageSig = nil, ""
	if len(sp.Raw) > 0 && len(sp.Sig) > 0 {
		a.PackageJSON, a.PackageSig = sp.Raw, hex.EncodeToString(sp.Sig)
	}
	for _, plat := range slices.Sorted(maps.Keys(pkg.Artifacts)) {
		art := pkg.Artifacts[plat]
		if art.ObjectKey == "" || art.SHA256 == "" {
			continue
		}
		a.Artifacts[plat] = art
		if a.BinaryPath == "" {
			a.BinaryPath = art.BinaryName
		}
	}
	if single != nil {
		art, ok := a.Artifacts[single.String()]
		if !ok {
			return fmt.Errorf("addon %s@%s has no verifiable artifact for %s", a.AddonID, a.Version, single)
		}
		a.ArtifactObjectKey, a.ArtifactSHA256, a.ArtifactSignature, a.ArtifactKeyID, a.ArtifactSize = art.ObjectKey, art.SHA256, art.Signature, art.KeyID, art.Size
		a.TargetOS, a.TargetArch, a.BinaryPath = single.OS, single.Arch, art.BinaryName
	}
	if len(a.Artifacts) == 0 {
		return fmt.Errorf("addon %s@%s: package lists no artifact with both object key and sha256", a.AddonID, a.Version)
	}
	for plat := range a.Artifacts {
		p, _ := assignment.ParsePlatform(plat)
		if _, err := assignment.Resolve(*a, p); err != nil {
			return err
		}
	}
	return nil
}

// Retarget is entry a moved to pkg's version: its version, artifact
// fields and embedded package come from pkg — a package whose signature
// the caller verified
// (assignment.FetchPackage), once for however many entries it moves;
// every other field (args, config, supervision, schedule, capabilities …)
// stays as it was. The entry must resolve as the agent will resolve it.
func Retarget(a assignment.Addon, pkg SignedPackage) (assignment.Addon, error) {
	if a.Delivery != "" && a.Delivery != assignment.DeliveryPushedArtifact {
		return assignment.Addon{}, fmt.Errorf("addon %s: delivery %s has no artifacts to move to %s", a.AddonID, a.Delivery, pkg.Version)
	}
	if pkg.AddonID != a.AddonID {
		return assignment.Addon{}, fmt.Errorf("addon %s: the package to move it to is %s@%s's", a.AddonID, pkg.AddonID, pkg.Version)
	}
	out := a
	out.Version = pkg.Version
	var single *assignment.Platform
	if a.TargetOS != "" || a.ArtifactObjectKey != "" {
		single = &assignment.Platform{OS: a.TargetOS, Arch: a.TargetArch}
	}
	if err := setArtifacts(&out, pkg, single); err != nil {
		return assignment.Addon{}, err
	}
	return out, nil
}

// ErrSigLag marks a document whose .sig does not verify it (or is not
// there yet). The two are separate objects: a read that falls between a
// concurrent writer's document and its .sig gets the old signature with
// the new document, and the writer's next write mends the pair.
var ErrSigLag = errors.New("its .sig may lag the document")

// A pair is read again sigLagAttempts times, sigLagWait apart: about one
// write of the .sig, several times over.
const (
	sigLagAttempts = 10
	sigLagWait     = 100 * time.Millisecond
)

// RereadWhileSigLags calls read, which reads a document and its signature
// and checks them, again while it fails with ErrSigLag: up to
// sigLagAttempts times in all, before the last error stands.
func RereadWhileSigLags(ctx context.Context, read func() error) error {
	for attempt := 1; ; attempt++ {
		err := read()
		if !errors.Is(err, ErrSigLag) || attempt == sigLagAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(sigLagWait):
		}
	}
}

// WriteSigned writes a document at key on the condition that the object is
// still etag ("" : absent; store.ErrChanged otherwise, nothing written),
// then its .sig (or, without a key, removes a stale one). On a store that
// keeps metadata (S3) the signature is also in the document's own
// metadata, written with it; readers that find it there need no .sig.
//
// The two are separate objects, so writers in quick succession can leave
// an older writer's .sig beside a newer document; readers refuse such a
// pair (agents keep what they run and read again at the next poll). To
// close that window as far as two objects allow, the writer whose document
// stands checks the .sig after writing it and writes it again when it no
// longer matches. A condition that fails because this very write already
// landed (a PUT retried after its answer was lost) counts as written.
func WriteSigned(ctx context.Context, st store.Store, key string, body []byte, etag string, priv ed25519.PrivateKey) (store.Info, error) {
	var sig []byte
	if priv != nil {
		sig = []byte(hex.EncodeToString(ed25519.Sign(priv, body)) + "\n")
	}
	put := st.PutIfMatch
	if sp, ok := st.(store.SignedPutter); ok && priv != nil {
		// The signature rides in the document's own metadata as well:
		// agents then need one request, and it can never be another
		// document's. The .sig is still written, for stores and readers
		// without metadata.
		put = func(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (store.Info, error) {
			return sp.PutIfMatchSigned(ctx, key, r, size, ifMatch, string(bytes.TrimSpace(sig)))
		}
	}
	info, err := put(ctx, key, bytes.NewReader(body), int64(len(body)), etag)
	if errors.Is(err, store.ErrChanged) {
		cur, cinfo, rerr := store.ReadSmall(ctx, st, key, int64(len(body))+1, store.OpenOptions{})
		if rerr != nil || !bytes.Equal(cur, body) {
			return store.Info{}, err
		}
		info = cinfo
	} else if err != nil {
		return store.Info{}, err
	}
	if priv == nil {
		return info, st.Delete(ctx, key+".sig")
	}
	for attempt := 1; ; attempt++ {
		if _, err := st.Put(ctx, key+".sig", bytes.NewReader(sig), int64(len(sig))); err != nil {
			if attempt == 3 || ctx.Err() != nil {
				return store.Info{}, fmt.Errorf("%s written, its signature not (readers refuse it until a signed one replaces it): %w", key, err)
			}
			time.Sleep(time.Duration(attempt) * time.Second)
			continue
		}
		cur, _, err := store.ReadSmall(ctx, st, key, int64(len(body))+1, store.OpenOptions{})
		if err != nil || !bytes.Equal(cur, body) {
			return info, nil // a newer document stands: its writer signs it
		}
		if got, _, err := store.ReadSmall(ctx, st, key+".sig", store.MaxSigSize, store.OpenOptions{}); err == nil && bytes.Equal(got, sig) || attempt == 3 {
			return info, nil
		}
	}
}
