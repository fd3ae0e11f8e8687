package delivery

import (
	"context"
	"fmt"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// FetchPackage reads packages/<id>/<version>/package.json and its .sig and
// verifies the signature under the trusted keys. A package is always
// signed: there is no unsigned mode for package metadata.
func (d *Deliverer) FetchPackage(ctx context.Context, id, version string) (*assignment.Package, []byte, []byte, error) {
	fail := func(env bool, err error) (*assignment.Package, []byte, []byte, error) {
		return nil, nil, nil, &Error{AddonID: id, Version: version, Op: "fetch package", Err: err, Environment: env}
	}
	if err := assignment.ValidAddonID(id); err != nil {
		return fail(false, err)
	}
	if err := assignment.ValidVersion(version); err != nil {
		return fail(false, err)
	}
	if d.opts.Store == nil {
		return fail(true, fmt.Errorf("no store configured"))
	}
	key := assignment.PackageKey(id, version)
	raw, _, err := store.ReadSmall(ctx, d.opts.Store, key, assignment.MaxPackageSize, store.OpenOptions{})
	if err != nil {
		return fail(!isNotFound(err), err)
	}
	sigFile, _, err := store.ReadSmall(ctx, d.opts.Store, key+".sig", 1024, store.OpenOptions{})
	if err != nil {
		return fail(!isNotFound(err), fmt.Errorf("package signature: %w", err))
	}
	sig, err := signing.ParseSigFile(sigFile)
	if err != nil {
		return fail(false, fmt.Errorf("%s.sig: %w", key, err))
	}
	if err := d.opts.Keys.VerifyBytes("", raw, sig); err != nil {
		return fail(false, fmt.Errorf("%s: %w", key, err))
	}
	pkg, err := assignment.ParsePackage(raw)
	if err != nil {
		return fail(false, err)
	}
	if pkg.AddonID != id || pkg.Version != version {
		return fail(false, fmt.Errorf("%s describes %s@%s", key, pkg.AddonID, pkg.Version))
	}
	return pkg, raw, sig, nil
}
