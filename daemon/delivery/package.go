package delivery

import (
	"context"
	"errors"
	"fmt"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
)

// FetchPackage reads and verifies an add-on version's signed package.json
// (assignment.FetchPackage) under the trusted keys: a package is always
// signed, there is no unsigned mode for package metadata. Failures to read
// it, other than a missing object, are the environment's.
func (d *Deliverer) FetchPackage(ctx context.Context, id, version string) (*assignment.Package, []byte, []byte, error) {
	if d.opts.Store == nil {
		return nil, nil, nil, &Error{AddonID: id, Version: version, Op: "fetch package", Err: fmt.Errorf("no store configured"), Environment: true}
	}
	keys := d.opts.Keys
	if keys == nil {
		keys = signing.NewKeyring() // fail closed, never skip
	}
	pkg, raw, sig, err := assignment.FetchPackage(ctx, d.opts.Store, keys, id, version)
	if err != nil {
		var re *assignment.ReadError
		env := errors.As(err, &re) && !isNotFound(err)
		return nil, nil, nil, &Error{AddonID: id, Version: version, Op: "fetch package", Err: err, Environment: env}
	}
	return pkg, raw, sig, nil
}
