package assignment

import (
	"fmt"
	"regexp"
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
