package assignment

import (
	"fmt"
)

// Package is package.json, written and signed by the publisher for one
// version of an add-on. The root helper trusts nothing else.
type Package struct {
	AddonID        string              `json:"addon_id"`
	Version        string              `json:"version"`
	Supervision    string              `json:"supervision,omitempty"`
	OSCapabilities []string            `json:"os_capabilities,omitempty"`
	Artifacts      map[string]Artifact `json:"artifacts"`
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
