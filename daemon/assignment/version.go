package assignment

import (
	"errors"
	"fmt"
	"strings"
)

// semver is a version parsed per semantic versioning 2.0.0: build metadata
// is dropped (it has no precedence).
type semver struct {
	core [3]string // numeric, without leading zeros
	pre  []string  // pre-release identifiers; none for a release
}

// parseSemver parses s ("1.2.3", "v1.2.3-rc.1+build.5"); ok is false when
// s is not a semantic version.
func parseSemver(s string) (semver, bool) {
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		if !identifiers(s[i+1:], false) {
			return semver{}, false
		}
		s = s[:i]
	}
	var v semver
	if i := strings.IndexByte(s, '-'); i >= 0 {
		if !identifiers(s[i+1:], true) {
			return semver{}, false
		}
		v.pre = strings.Split(s[i+1:], ".")
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return semver{}, false
	}
	for i, p := range parts {
		if !numeric(p) {
			return semver{}, false
		}
		v.core[i] = p
	}
	return v, true
}

// numeric is a numeric identifier: digits, no leading zero.
func numeric(s string) bool {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return false
	}
	return allDigits(s)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// identifiers checks a dot-separated list of [0-9A-Za-z-] identifiers;
// pre-release numeric identifiers must not have leading zeros.
func identifiers(s string, pre bool) bool {
	for id := range strings.SplitSeq(s, ".") {
		if id == "" {
			return false
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
				return false
			}
		}
		if pre && allDigits(id) && !numeric(id) {
			return false
		}
	}
	return true
}

// compareNumeric compares two numeric identifiers of any length.
func compareNumeric(a, b string) int {
	if len(a) != len(b) {
		return cmpInt(len(a), len(b))
	}
	return strings.Compare(a, b)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (a semver) compare(b semver) int {
	for i := range a.core {
		if c := compareNumeric(a.core[i], b.core[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a.pre) == 0 && len(b.pre) == 0:
		return 0
	case len(a.pre) == 0:
		return 1 // a release is higher than its pre-releases
	case len(b.pre) == 0:
		return -1
	}
	for i := 0; i < len(a.pre) && i < len(b.pre); i++ {
		x, y := a.pre[i], b.pre[i]
		xn, yn := allDigits(x), allDigits(y)
		var c int
		switch {
		case xn && yn:
			c = compareNumeric(x, y)
		case xn:
			c = -1 // numeric identifiers are lower than alphanumeric ones
		case yn:
			c = 1
		default:
			c = strings.Compare(x, y)
		}
		if c != 0 {
			return c
		}
	}
	return cmpInt(len(a.pre), len(b.pre))
}

// CompareVersions orders two versions by semantic versioning 2.0.0
// precedence (an optional leading "v" is allowed; build metadata is
// ignored): -1, 0 or +1 as a is lower than, equal to or higher than b. ok
// is false, and the result 0, when either does not parse as a semantic
// version: such versions have no order.
func CompareVersions(a, b string) (c int, ok bool) {
	va, oka := parseSemver(a)
	vb, okb := parseSemver(b)
	if !oka || !okb {
		return 0, false
	}
	return va.compare(vb), true
}

// IsSemver reports whether v parses as a semantic version.
func IsSemver(v string) bool {
	_, ok := parseSemver(v)
	return ok
}

// HigherVersion returns the higher of two versions for anti-rollback
// bookkeeping: a semantic version beats one that is not (or ""), and of
// two that are not, the first is kept.
func HigherVersion(a, b string) string {
	if c, ok := CompareVersions(a, b); ok {
		if c < 0 {
			return b
		}
		return a
	}
	if !IsSemver(a) && IsSemver(b) {
		return b
	}
	return a
}

// HighestVersion folds HigherVersion over versions, left to right ("" is
// neutral after the first).
func HighestVersion(first string, rest ...string) string {
	for _, v := range rest {
		first = HigherVersion(first, v)
	}
	return first
}

// ErrDowngrade is the reason of a refused downgrade.
var ErrDowngrade = errors.New("refused as a downgrade")

// DowngradeError is a desired version lower than the highest version ever
// activated for an add-on, refused before anything was fetched.
type DowngradeError struct {
	AddonID, Version, Highest string
}

func (e *DowngradeError) Error() string {
	return fmt.Sprintf("addon %q: version %s is lower than %s, the highest ever activated; refused as a downgrade (the assignment may set allow_downgrade)", e.AddonID, e.Version, e.Highest)
}

func (e *DowngradeError) Unwrap() error { return ErrDowngrade }

// CheckDowngrade refuses version for add-on id when it is lower than
// highest (both semantic versions) and the assignment does not allow a
// downgrade. Versions that do not parse have no order: nothing is refused.
func CheckDowngrade(id, version, highest string, allow bool) error {
	if allow || highest == "" {
		return nil
	}
	if c, ok := CompareVersions(version, highest); ok && c < 0 {
		return &DowngradeError{AddonID: id, Version: version, Highest: highest}
	}
	return nil
}
