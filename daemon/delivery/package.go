package delivery

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/internal/atomicfile"
)

// Verify once, through the publisher's signed package (DESIGN.md,
// "Delivery v2"). The package.json of an add-on version names, for each
// platform, the artifact's object key, SHA-256 and size, under the
// publisher's signature. When it names the artifact a document asks
// for, the streaming pass only hashes SHA-256 and counts bytes: the
// signature over the package already vouches for them. A document whose
// artifact a verified package does not name (another key, digest or
// size) is refused. Only when there is no package at all (origin mode)
// does the pass verify the Ed25519 signature over the bytes themselves.
//
// The package comes with the document when assign or rollout embedded it
// (package_json, package_sig: no request of the agent's), else from the
// copy kept beside the add-on's state, else from the store. Each version's
// package and .sig are kept beside the add-on's state
// (addons/<id>/package-<version>.json and .sig) once the version is
// staged, verified again on every read, and there when the store is not
// (a capped copy asked for after a reboot).

// packagePath is where version's signed package is kept.
func (d *Deliverer) packagePath(id, version string) string {
	return filepath.Join(d.addonDir(id), "package-"+version+".json")
}

// FetchPackage reads and verifies an add-on version's signed package.json
// (assignment.FetchPackage) from the store under the trusted keys: a
// package is always signed, there is no unsigned mode for package
// metadata. Failures to read it, other than a missing object, are the
// environment's.
func (d *Deliverer) FetchPackage(ctx context.Context, id, version string) (*assignment.Package, []byte, []byte, error) {
	if d.opts.Store == nil {
		return nil, nil, nil, &Error{AddonID: id, Version: version, Op: "fetch package", Err: fmt.Errorf("no store configured"), Environment: true}
	}
	pkg, raw, sig, err := assignment.FetchPackage(ctx, d.opts.Store, d.keys(), id, version)
	if err != nil {
		var re *assignment.ReadError
		env := errors.As(err, &re) && !isNotFound(err)
		return nil, nil, nil, &Error{AddonID: id, Version: version, Op: "fetch package", Err: err, Environment: env}
	}
	return pkg, raw, sig, nil
}

// keys are the publisher keys; never nil (an empty ring fails closed,
// nil would skip the check).
func (d *Deliverer) keys() *signing.Keyring {
	if d.opts.Keys == nil {
		return signing.NewKeyring()
	}
	return d.opts.Keys
}

// SignedPackage returns id@version's package, its exact bytes and its
// .sig file: the copy kept beside the add-on's state when it still
// verifies, else fetched from the store (FetchPackage) and kept.
func (d *Deliverer) SignedPackage(ctx context.Context, id, version string) (*assignment.Package, []byte, []byte, error) {
	pkg, raw, sigFile, keep, err := d.signedPackage(ctx, id, version)
	if err != nil {
		return nil, nil, nil, err
	}
	keep()
	return pkg, raw, sigFile, nil
}

// Package is id@version's verified package, as SignedPackage finds it,
// without keeping it: for deciding about a version (an operator's pin)
// before it is staged.
func (d *Deliverer) Package(ctx context.Context, id, version string) (*assignment.Package, error) {
	pkg, _, _, _, err := d.signedPackage(ctx, id, version)
	return pkg, err
}

// signedPackage is SignedPackage that leaves keeping a fetched package to
// the caller: keep writes it beside the add-on's state (a no-op when it
// came from there). Staging keeps it only once the version is staged, so
// that a refused version writes nothing.
func (d *Deliverer) signedPackage(ctx context.Context, id, version string) (*assignment.Package, []byte, []byte, func(), error) {
	if err := assignment.ValidAddonID(id); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := assignment.ValidVersion(version); err != nil {
		return nil, nil, nil, nil, err
	}
	path := d.packagePath(id, version)
	raw, rerr := os.ReadFile(path)
	sigFile, serr := os.ReadFile(path + ".sig")
	if rerr == nil && serr == nil {
		if pkg, _, err := assignment.VerifyPackage(d.keys(), id, version, raw, sigFile); err == nil {
			return pkg, raw, sigFile, func() {}, nil
		}
		// Altered, or signed by a key no longer trusted: fetch it again.
	}
	pkg, raw, sig, err := d.FetchPackage(ctx, id, version)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	sigFile = []byte(hex.EncodeToString(sig) + "\n") // as the .sig file has it
	return pkg, raw, sigFile, d.keeper(id, version, raw, sigFile), nil
}

// keeper is the keep of a package not kept yet.
func (d *Deliverer) keeper(id, version string, raw, sigFile []byte) func() {
	path := d.packagePath(id, version)
	return func() {
		err := os.MkdirAll(d.addonDir(id), 0o755)
		for p, data := range map[string][]byte{path: raw, path + ".sig": sigFile} {
			if err == nil {
				err = atomicfile.Write(p, data, 0o600)
			}
		}
		if err != nil {
			d.opts.Log.Warn("keeping the signed package", "addon_id", id, "version", version, "error", err)
		}
	}
}

// specPackage is signedPackage for spec, whose document may embed the
// package: an embedded package that does not verify refuses the version
// (it is never taken for "no package").
func (d *Deliverer) specPackage(ctx context.Context, spec assignment.Spec) (*assignment.Package, func(), error) {
	if len(spec.PackageJSON) == 0 {
		pkg, _, _, keep, err := d.signedPackage(ctx, spec.AddonID, spec.Version)
		return pkg, keep, err
	}
	pkg, _, err := assignment.VerifyPackage(d.keys(), spec.AddonID, spec.Version, spec.PackageJSON, []byte(spec.PackageSig))
	if err != nil {
		return nil, nil, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "verify", Err: fmt.Errorf("the document's embedded package: %w", err)}
	}
	keep := func() {}
	if kept, err := os.ReadFile(d.packagePath(spec.AddonID, spec.Version)); err != nil || !bytes.Equal(kept, spec.PackageJSON) {
		keep = d.keeper(spec.AddonID, spec.Version, spec.PackageJSON, []byte(spec.PackageSig))
	}
	return pkg, keep, nil
}

// pin is art as the publisher's package for spec's version names it, and
// whether one does, with the package's keep (see signedPackage). No
// package (origin mode): art itself, unpinned. A
// verified package that does not name art for this platform — another
// object, digest or size — refuses it: the document is not the
// publisher's word.
func (d *Deliverer) pin(ctx context.Context, spec assignment.Spec) (*assignment.Artifact, bool, func(), error) {
	art := spec.Artifact
	pkg, keep, err := d.specPackage(ctx, spec)
	if err != nil {
		var de *Error
		if errors.As(err, &de) && isNotFound(err) && de.Op == "fetch package" {
			if art.Compression != "" {
				return nil, false, nil, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "verify",
					Err: fmt.Errorf("compressed artifact %s has no signed package to pin it", art.ObjectKey)}
			}
			return art, false, func() {}, nil // origin mode
		}
		return nil, false, nil, err
	}
	plat := spec.Platform
	if plat == "" {
		plat = d.opts.Platform.String()
	}
	refuse := func(format string, args ...any) (*assignment.Artifact, bool, func(), error) {
		return nil, false, nil, &Error{AddonID: spec.AddonID, Version: spec.Version, Op: "verify",
			Err: fmt.Errorf("the document's artifact is not the publisher's: "+format, args...)}
	}
	entry, ok := pkg.Artifacts[plat]
	switch {
	case !ok:
		return refuse("package %s@%s has no artifact for %s", spec.AddonID, spec.Version, plat)
	case entry.ObjectKey != art.ObjectKey:
		return refuse("it names object %s, the package %s", art.ObjectKey, entry.ObjectKey)
	case entry.SHA256 != art.SHA256:
		return refuse("it pins sha256 %s, the package %s", art.SHA256, entry.SHA256)
	case art.Size > 0 && art.Size != entry.Size:
		return refuse("it says %d bytes, the package %d", art.Size, entry.Size)
	case entry.Size <= 0:
		return art, false, keep, nil // a package that pins no size: the bytes' own signature decides
	}
	// The package's signature vouches for the bytes: the pass checks
	// SHA-256 and size, not the signature over the bytes.
	pinned := entry
	pinned.BinaryName, pinned.Signature, pinned.KeyID = art.BinaryName, "", ""
	return &pinned, true, keep, nil
}
