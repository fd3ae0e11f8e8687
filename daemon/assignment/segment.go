package assignment

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
)

var addonIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidAddonID checks an add-on id: ^[a-z0-9][a-z0-9_-]{0,62}$. Ids become
// directory names and unit names (addond-<id>.service), so they hold no '.'
// and no separator.
func ValidAddonID(id string) error {
	if !addonIDRe.MatchString(id) {
		return fmt.Errorf("addon_id %q is not a safe id (want ^[a-z0-9][a-z0-9_-]{0,62}$)", id)
	}
	return nil
}

// ValidSupervision checks a supervision model's name.
func ValidSupervision(s string) error {
	if !slices.Contains(supervisions, s) {
		return fmt.Errorf("unknown supervision %q (want one of %s)", s, strings.Join(supervisions, ", "))
	}
	return nil
}

// ValidFeature checks the name of a compiled-in feature (compiled_in
// delivery): the same shape as an add-on id.
func ValidFeature(name string) error {
	if !addonIDRe.MatchString(name) {
		return fmt.Errorf("compiled-in feature %q (binary_path, else addon_id) is not a feature name (want ^[a-z0-9][a-z0-9_-]{0,62}$)", name)
	}
	return nil
}

// MaxInstalledPath bounds an os_package binary_path.
const MaxInstalledPath = 1024

// ValidInstalledPath checks an os_package binary_path: absolute and clean
// (no "..", ".", "//" or trailing "/"), at most MaxInstalledPath bytes, no
// NUL and no control characters.
func ValidInstalledPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("os_package needs binary_path: the absolute path the package installs the binary at")
	case len(p) > MaxInstalledPath:
		return fmt.Errorf("binary_path is longer than %d bytes", MaxInstalledPath)
	case !path.IsAbs(p):
		return fmt.Errorf("binary_path %q is not absolute (os_package runs the binary its package installed, at an absolute path)", p)
	case path.Clean(p) != p || p == "/":
		return fmt.Errorf("binary_path %q is not a clean path to a file (want e.g. %q)", p, path.Clean(p))
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("binary_path %q contains a control character", p)
		}
	}
	return nil
}

// ValidVersion checks a version string: a safe path segment of at most 64
// characters.
func ValidVersion(v string) error {
	if err := safeSegment(v, 64); err != nil {
		return fmt.Errorf("version %q: %w", v, err)
	}
	return nil
}

// ValidBinaryName checks the staged file's name.
func ValidBinaryName(n string) error {
	if err := safeSegment(n, 128); err != nil {
		return fmt.Errorf("binary name %q: %w", n, err)
	}
	return nil
}

// safeSegment accepts non-empty names of letters, digits and . _ - + ~
// that do not start with '.' — so never ".", "..", a hidden file, a
// separator (/ or \), a NUL or anything a shell or unit file would read
// specially.
func safeSegment(s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case s == "." || s == "..":
		return fmt.Errorf("is a relative directory name")
	case len(s) > max:
		return fmt.Errorf("longer than %d characters", max)
	case s[0] == '.' || s[0] == '-':
		return fmt.Errorf("starts with %q", s[0])
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == '+', c == '~':
		case c == '/' || c == '\\':
			return fmt.Errorf("contains a path separator %q", c)
		default:
			return fmt.Errorf("contains %q", c)
		}
	}
	return nil
}
