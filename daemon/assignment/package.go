package assignment

import (
	"context"
	"fmt"

	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// Package is package.json, written and signed by the publisher for one
// version of an add-on. The root helper trusts nothing else.
type Package struct {
	AddonID        string              `json:"addon_id"`
	Version        string              `json:"version"`
	Supervision    string              `json:"supervision,omitempty"`
	OSCapabilities []string            `json:"os_capabilities,omitempty"`
	Artifacts      map[string]Artifact `json:"artifacts"`
	// AllowDowngrade: addond-updater caps this version although a higher
	// one of the add-on was capped before.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// PackageKey is where a version's package.json lives in the store.
func PackageKey(id, version string) string {
	return "packages/" + id + "/" + version + "/package.json"
}

// ArtifactKey is where publish puts one platform's artifact.
func ArtifactKey(id, version string, p Platform, binary string) string {
	return "artifacts/" + id + "/" + version + "/" + p.OS + "-" + p.Arch + "/" + binary
}

// ParsePackage decodes and validates package.json.
func ParsePackage(data []byte) (*Package, error) {
	if len(data) > MaxPackageSize {
		return nil, fmt.Errorf("package.json is %d bytes, more than %d", len(data), MaxPackageSize)
	}
	var p Package
	if err := decodeStrictTrailing(data, &p, false); err != nil {
		return nil, fmt.Errorf("package.json: %w", err)
	}
	if err := ValidAddonID(p.AddonID); err != nil {
		return nil, fmt.Errorf("package.json: %w", err)
	}
	if err := ValidVersion(p.Version); err != nil {
		return nil, fmt.Errorf("package.json: %w", err)
	}
	for plat, art := range p.Artifacts {
		if _, err := ParsePlatform(plat); err != nil {
			return nil, fmt.Errorf("package.json: %w", err)
		}
		if err := validateArtifact(&art); err != nil {
			return nil, fmt.Errorf("package.json: %s: %w", plat, err)
		}
	}
	return &p, nil
}

// ReadError marks a package that could not be read from the store, as
// opposed to one that was read and refused.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// FetchPackage reads packages/<id>/<version>/package.json and its .sig
// from st, verifies the signature under keys, parses the package and checks
// that it describes id@version. keys nil skips the signature check (the
// publisher's tool, when it was given no key: it says so); an empty key
// ring fails closed. It returns the package, its exact bytes and the raw
// signature.
func FetchPackage(ctx context.Context, st store.Store, keys *signing.Keyring, id, version string) (*Package, []byte, []byte, error) {
	if err := ValidAddonID(id); err != nil {
		return nil, nil, nil, err
	}
	if err := ValidVersion(version); err != nil {
		return nil, nil, nil, err
	}
	key := PackageKey(id, version)
	raw, _, err := store.ReadSmall(ctx, st, key, MaxPackageSize, store.OpenOptions{})
	if err != nil {
		return nil, nil, nil, &ReadError{err}
	}
	sigFile, _, err := store.ReadSmall(ctx, st, key+".sig", store.MaxSigSize, store.OpenOptions{})
	if err != nil {
		return nil, nil, nil, &ReadError{fmt.Errorf("package signature: %w", err)}
	}
	pkg, sig, err := VerifyPackage(keys, id, version, raw, sigFile)
	if err != nil {
		return nil, nil, nil, err
	}
	return pkg, raw, sig, nil
}

// VerifyPackage checks that raw, the bytes of id@version's package.json,
// carry the publisher's signature sigFile (a .sig file's contents) under
// keys, and describe id@version. keys nil skips the signature check (the
// publisher's tool, when it was given no key: it says so); an empty key
// ring fails closed. It returns the package and the raw signature.
func VerifyPackage(keys *signing.Keyring, id, version string, raw, sigFile []byte) (*Package, []byte, error) {
	key := PackageKey(id, version)
	sig, err := signing.ParseSigFile(sigFile)
	if err != nil {
		return nil, nil, fmt.Errorf("%s.sig: %w", key, err)
	}
	if keys != nil {
		if err := keys.VerifyBytes("", raw, sig); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	pkg, err := ParsePackage(raw)
	if err != nil {
		return nil, nil, err
	}
	if pkg.AddonID != id || pkg.Version != version {
		return nil, nil, fmt.Errorf("%s describes %s@%s", key, pkg.AddonID, pkg.Version)
	}
	return pkg, sig, nil
}
