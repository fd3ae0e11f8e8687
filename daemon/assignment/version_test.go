package assignment

import (
	"errors"
	"strings"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
		ok   bool
	}{
		{"1.0.0", "1.0.0", 0, true},
		{"1.0.0", "1.2.0", -1, true},
		{"1.2.0", "1.0.0", 1, true},
		{"v1.2.0", "1.2.0", 0, true},
		{"v1.0.0", "v1.0.1", -1, true},
		{"2.0.0", "10.0.0", -1, true}, // numerically, not lexically
		{"1.10.0", "1.9.0", 1, true},
		{"1.0.10", "1.0.9", 1, true},
		{"99999999999999999999999.0.0", "99999999999999999999998.0.0", 1, true}, // beyond uint64
		{"1.0.0+build.1", "1.0.0+build.2", 0, true},                             // build metadata ignored
		{"1.0.0+20130313144700", "1.0.0", 0, true},
		{"1.0.0-alpha+001", "1.0.0-alpha", 0, true},
		// The precedence example of semver 2.0.0, §11.
		{"1.0.0-alpha", "1.0.0-alpha.1", -1, true},
		{"1.0.0-alpha.1", "1.0.0-alpha.beta", -1, true},
		{"1.0.0-alpha.beta", "1.0.0-beta", -1, true},
		{"1.0.0-beta", "1.0.0-beta.2", -1, true},
		{"1.0.0-beta.2", "1.0.0-beta.11", -1, true},
		{"1.0.0-beta.11", "1.0.0-rc.1", -1, true},
		{"1.0.0-rc.1", "1.0.0", -1, true},
		{"1.0.0", "1.0.0-rc.1", 1, true},
		{"1.0.0-1", "1.0.0-a", -1, true},
		{"1.0.0-x-y", "1.0.0-x-y", 0, true},
		{"1.0.0-A", "1.0.0-a", -1, true}, // ASCII order
		// No order: either is not a semantic version.
		{"1.0", "1.0.0", 0, false},
		{"1.0.0", "latest", 0, false},
		{"01.0.0", "1.0.0", 0, false},
		{"1.0.0-01", "1.0.0", 0, false},
		{"1.0.0-", "1.0.0", 0, false},
		{"1.0.0+", "1.0.0", 0, false},
		{"1.0.0-a..b", "1.0.0", 0, false},
		{"1.0.0+a_b", "1.0.0", 0, false},
		{"vv1.0.0", "1.0.0", 0, false},
		{"V1.0.0", "1.0.0", 0, false},
		{"1.0.0.0", "1.0.0", 0, false},
		{"", "1.0.0", 0, false},
		{"1.-1.0", "1.0.0", 0, false},
		{"1.0.0 ", "1.0.0", 0, false},
	}
	for _, tc := range cases {
		got, ok := CompareVersions(tc.a, tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("CompareVersions(%q, %q) = %d, %v; want %d, %v", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
		if back, okb := CompareVersions(tc.b, tc.a); back != -tc.want || okb != tc.ok {
			t.Errorf("CompareVersions(%q, %q) = %d, %v; want %d, %v", tc.b, tc.a, back, okb, -tc.want, tc.ok)
		}
	}
}

func TestHigherVersion(t *testing.T) {
	for _, tc := range []struct{ a, b, want string }{
		{"", "1.0.0", "1.0.0"},
		{"1.0.0", "", "1.0.0"},
		{"1.2.0", "1.0.0", "1.2.0"},
		{"1.0.0", "1.2.0", "1.2.0"},
		{"1.2.0", "nightly", "1.2.0"},
		{"nightly", "1.0.0", "1.0.0"},
		{"nightly", "weekly", "nightly"},
	} {
		if got := HigherVersion(tc.a, tc.b); got != tc.want {
			t.Errorf("HigherVersion(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestHighestVersion(t *testing.T) {
	for _, tc := range []struct {
		vs   []string
		want string
	}{
		{[]string{"nightly"}, "nightly"},
		{[]string{"nightly", "", ""}, "nightly"},
		{[]string{"1.0.0", "2.0.0", ""}, "2.0.0"},
		{[]string{"", "1.0.0", "3.0.0"}, "3.0.0"},
		{[]string{"3.0.0", "nightly", "1.0.0"}, "3.0.0"},
	} {
		if got := HighestVersion(tc.vs[0], tc.vs[1:]...); got != tc.want {
			t.Errorf("HighestVersion(%q) = %q, want %q", tc.vs, got, tc.want)
		}
	}
}

func TestCheckDowngrade(t *testing.T) {
	err := CheckDowngrade("hello", "1.0.0", "1.2.0", false)
	var de *DowngradeError
	if !errors.As(err, &de) || !errors.Is(err, ErrDowngrade) {
		t.Fatalf("CheckDowngrade = %v, want a DowngradeError", err)
	}
	want := `addon "hello": version 1.0.0 is lower than 1.2.0, the highest ever activated; refused as a downgrade (the assignment may set allow_downgrade)`
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	for _, tc := range []struct {
		version, highest string
		allow            bool
	}{
		{"1.0.0", "1.2.0", true}, // allow_downgrade
		{"1.2.0", "1.2.0", false},
		{"1.3.0", "1.2.0", false},
		{"1.2.0+other", "1.2.0", false},
		{"latest", "1.2.0", false}, // no order
		{"1.0.0", "latest", false},
		{"1.0.0", "", false}, // nothing activated yet
	} {
		if err := CheckDowngrade("hello", tc.version, tc.highest, tc.allow); err != nil {
			t.Errorf("CheckDowngrade(%q, %q, %v) = %v, want nil", tc.version, tc.highest, tc.allow, err)
		}
	}
}

// FuzzCompareVersions: never panics; antisymmetric; reflexive and
// consistent with parsing.
func FuzzCompareVersions(f *testing.F) {
	for _, s := range [][2]string{
		{"1.0.0", "1.2.0"}, {"v1.0.0-rc.1+b", "1.0.0"}, {"1.0.0-alpha.1", "1.0.0-alpha.beta"},
		{"1.0.0-1", "1.0.0-a"}, {"latest", "1.0.0"}, {"01.0.0", "1.0.0"}, {"", ""},
		{"99999999999999999999.0.0", "1.0.0-0.3.7"}, {"1.0.0-x.7.z.92", "1.0.0+exp.sha.5114f85"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, okab := CompareVersions(a, b)
		ba, okba := CompareVersions(b, a)
		if okab != okba || ab != -ba {
			t.Fatalf("not antisymmetric: (%q, %q) = %d, %v; reversed %d, %v", a, b, ab, okab, ba, okba)
		}
		if ab < -1 || ab > 1 {
			t.Fatalf("CompareVersions(%q, %q) = %d", a, b, ab)
		}
		if okab != (IsSemver(a) && IsSemver(b)) {
			t.Fatalf("ok %v, but IsSemver(%q) = %v, IsSemver(%q) = %v", okab, a, IsSemver(a), b, IsSemver(b))
		}
		if !okab && ab != 0 {
			t.Fatalf("no order but %d", ab)
		}
		if IsSemver(a) {
			if c, ok := CompareVersions(a, a); !ok || c != 0 {
				t.Fatalf("CompareVersions(%q, itself) = %d, %v", a, c, ok)
			}
			// Build metadata never changes precedence.
			if !strings.Contains(a, "+") {
				if c, ok := CompareVersions(a, a+"+x.1"); !ok || c != 0 {
					t.Fatalf("CompareVersions(%q, %q) = %d, %v", a, a+"+x.1", c, ok)
				}
			}
		}
		h := HigherVersion(a, b)
		if h != a && h != b {
			t.Fatalf("HigherVersion(%q, %q) = %q", a, b, h)
		}
		if okab {
			if c, _ := CompareVersions(h, a); c < 0 {
				t.Fatalf("HigherVersion(%q, %q) = %q, lower than %q", a, b, h, a)
			}
			if c, _ := CompareVersions(h, b); c < 0 {
				t.Fatalf("HigherVersion(%q, %q) = %q, lower than %q", a, b, h, b)
			}
		}
	})
}

func TestOverridesPinsVersion(t *testing.T) {
	ov, err := ParseOverrides([]byte(`{"addons":[{"addon_id":"a","version":"1.0.0"},{"addon_id":"b","enabled":false}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !ov.PinsVersion("a") || ov.PinsVersion("b") || ov.PinsVersion("c") || (*Overrides)(nil).PinsVersion("a") {
		t.Fatal("PinsVersion: only a's entry sets the version")
	}
}
