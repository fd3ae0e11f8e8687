package assignment

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

var (
	linuxAMD64 = Platform{"linux", "amd64"}
	sha        = strings.Repeat("ab", 32)
	sig        = strings.Repeat("cd", 64)
)

func pushed(mut func(*Addon)) Addon {
	a := Addon{
		AddonID: "hello", Version: "1.0.0",
		ArtifactObjectKey: "artifacts/hello/1.0.0/linux-amd64/hello",
		ArtifactSHA256:    sha, ArtifactSignature: sig,
		TargetOS: "linux", TargetArch: "amd64", BinaryPath: "hello",
	}
	if mut != nil {
		mut(&a)
	}
	return a
}

func TestResolveRefusesUnsafeSegments(t *testing.T) {
	bad := []string{"..", "../../etc", "a/b", `a\b`, "", ".", "./x", "a\x00b", ".hidden", "-rf"}
	for _, v := range bad {
		t.Run("addon_id="+v, func(t *testing.T) {
			_, err := Resolve(pushed(func(a *Addon) { a.AddonID = v }), linuxAMD64)
			var ae *AddonError
			if !errors.As(err, &ae) || ae.AddonID != v {
				t.Fatalf("Resolve(addon_id %q) = %v, want AddonError naming it", v, err)
			}
		})
		t.Run("version="+v, func(t *testing.T) {
			if v == "" {
				return // an empty version defaults to the digest prefix
			}
			_, err := Resolve(pushed(func(a *Addon) { a.Version = v }), linuxAMD64)
			if err == nil || !strings.Contains(err.Error(), `addon "hello"`) {
				t.Fatalf("Resolve(version %q) = %v, want refusal naming the add-on", v, err)
			}
		})
		t.Run("binary_name="+v, func(t *testing.T) {
			_, err := Resolve(pushed(func(a *Addon) {
				a.ArtifactObjectKey = ""
				a.Artifacts = map[string]Artifact{"linux/amd64": {ObjectKey: "artifacts/x", SHA256: sha, BinaryName: v}}
				if v == "" {
					a.BinaryPath = "dir/"
				}
			}), linuxAMD64)
			if err == nil {
				t.Fatalf("Resolve(binary name %q) succeeded", v)
			}
		})
	}
	for _, bp := range []string{"..", "../..", "a/.."} {
		if _, err := Resolve(pushed(func(a *Addon) { a.BinaryPath = bp }), linuxAMD64); err == nil {
			t.Errorf("Resolve(binary_path %q) succeeded", bp)
		}
	}
	// Only binary_path's base name names the staged file.
	s, err := Resolve(pushed(func(a *Addon) { a.BinaryPath = "../../usr/bin/hello" }), linuxAMD64)
	if err != nil || s.BinaryName != "hello" {
		t.Errorf("Resolve(binary_path ../../usr/bin/hello) = %q, %v; want hello", s.BinaryName, err)
	}
	for _, key := range []string{"../secret", "artifacts/../../x", "/abs", ""} {
		if _, err := Resolve(pushed(func(a *Addon) { a.ArtifactObjectKey = key }), linuxAMD64); err == nil {
			t.Errorf("Resolve(object key %q) succeeded", key)
		}
	}
}

func TestResolve(t *testing.T) {
	cases := []struct {
		name    string
		addon   Addon
		wantErr string
		check   func(t *testing.T, s Spec)
	}{
		{name: "single reference", addon: pushed(nil), check: func(t *testing.T, s Spec) {
			if s.Artifact.SHA256 != sha || s.BinaryName != "hello" || s.Delivery != DeliveryPushedArtifact || s.Supervision != SupervisionAgentSidecar || !s.Enabled {
				t.Errorf("spec = %+v", s)
			}
		}},
		{name: "wrong platform", addon: pushed(func(a *Addon) { a.TargetArch = "arm64" }), wantErr: "artifact is for linux/arm64, this host is linux/amd64"},
		{name: "map picks own platform", addon: pushed(func(a *Addon) {
			a.ArtifactObjectKey, a.ArtifactSHA256 = "", ""
			a.Artifacts = map[string]Artifact{
				"linux/arm64": {ObjectKey: "artifacts/hello/1.0.0/linux-arm64/hello", SHA256: strings.Repeat("11", 32)},
				"linux/amd64": {ObjectKey: "artifacts/hello/1.0.0/linux-amd64/hello", SHA256: strings.ToUpper(sha), KeyID: "ABCDEF0123456789"},
			}
		}), check: func(t *testing.T, s Spec) {
			if s.Artifact.ObjectKey != "artifacts/hello/1.0.0/linux-amd64/hello" || s.Artifact.SHA256 != sha || s.Artifact.KeyID != "abcdef0123456789" {
				t.Errorf("artifact = %+v", s.Artifact)
			}
		}},
		{name: "map without own platform", addon: pushed(func(a *Addon) {
			a.ArtifactObjectKey, a.ArtifactSHA256 = "", ""
			a.Artifacts = map[string]Artifact{"darwin/arm64": {ObjectKey: "k", SHA256: sha}}
		}), wantErr: "no artifact for this host's platform linux/amd64 (have darwin/arm64)"},
		{name: "key without sha", addon: pushed(func(a *Addon) { a.ArtifactSHA256 = "" }), wantErr: "needs both object key and sha256"},
		{name: "bad sha", addon: pushed(func(a *Addon) { a.ArtifactSHA256 = "xyz" }), wantErr: "sha256"},
		{name: "bad signature", addon: pushed(func(a *Addon) { a.ArtifactSignature = "00" }), wantErr: "signature"},
		{name: "base64 digest", addon: pushed(func(a *Addon) { a.ArtifactSHA256 = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=" }), check: func(t *testing.T, s Spec) {
			if s.Artifact.SHA256 != sha {
				t.Errorf("sha = %s, want %s", s.Artifact.SHA256, sha)
			}
		}},
		{name: "empty version from digest", addon: pushed(func(a *Addon) { a.Version = "" }), check: func(t *testing.T, s Spec) {
			if s.Version != sha[:12] {
				t.Errorf("version = %q, want %q", s.Version, sha[:12])
			}
		}},
		{name: "no reference needs package", addon: pushed(func(a *Addon) { a.ArtifactObjectKey, a.ArtifactSHA256 = "", "" }), check: func(t *testing.T, s Spec) {
			if !s.NeedsPackage() {
				t.Error("NeedsPackage = false")
			}
		}},
		{name: "unknown supervision", addon: pushed(func(a *Addon) { a.Supervision = "cron" }), wantErr: `unknown supervision "cron"`},
		{name: "unknown delivery", addon: pushed(func(a *Addon) { a.Delivery = "magic" }), wantErr: `unknown delivery "magic"`},
		{name: "config not an object", addon: pushed(func(a *Addon) { a.ConfigJSON = json.RawMessage(`[1]`) }), wantErr: "config_json is not a JSON object"},
		{name: "config compacted", addon: pushed(func(a *Addon) { a.ConfigJSON = json.RawMessage("{ \"a\" : 1 }") }), check: func(t *testing.T, s Spec) {
			if string(s.ConfigJSON) != `{"a":1}` {
				t.Errorf("config = %s", s.ConfigJSON)
			}
		}},
		{name: "bad timeout", addon: pushed(func(a *Addon) { a.Timeout = "soon" }), wantErr: "timeout"},
		{name: "os package has no artifact", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, Version: "7.93", BinaryPath: "/usr/bin/nmap"}, check: func(t *testing.T, s Spec) {
			if s.Artifact != nil || s.BinaryPath != "/usr/bin/nmap" || s.Supervision != SupervisionAgentSidecar {
				t.Errorf("os_package spec %+v: want no artifact, the binary path, agent_sidecar", s)
			}
		}},
		{name: "os package sha256 and version from it", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/usr/bin/nmap", ArtifactSHA256: strings.ToUpper(sha)}, check: func(t *testing.T, s Spec) {
			if s.BinarySHA256 != sha || s.Version != sha[:12] {
				t.Errorf("sha %q version %q", s.BinarySHA256, s.Version)
			}
		}},
		{name: "os package without path", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage}, wantErr: "os_package needs binary_path"},
		{name: "os package relative path", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "bin/nmap"}, wantErr: `binary_path "bin/nmap" is not absolute`},
		{name: "os package unclean path", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/usr/bin/../../tmp/nmap"}, wantErr: "not a clean path"},
		{name: "os package directory path", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/usr/bin/"}, wantErr: "not a clean path"},
		{name: "os package root", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/"}, wantErr: "not a clean path"},
		{name: "os package NUL", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/usr/bin/nm\x00ap"}, wantErr: "control character"},
		{name: "os package bad sha", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, BinaryPath: "/usr/bin/nmap", ArtifactSHA256: "zz"}, wantErr: "sha256"},
		{name: "os package cannot be toggled", addon: Addon{AddonID: "nmap", Delivery: DeliveryOSPackage, Supervision: SupervisionConfigToggle, BinaryPath: "/usr/bin/nmap"}, wantErr: `delivery "os_package" cannot be supervised by "config_toggle"`},
		{name: "compiled in: feature from addon_id, toggled by default", addon: Addon{AddonID: "heartbeat", Delivery: DeliveryCompiledIn}, check: func(t *testing.T, s Spec) {
			if s.Feature != "heartbeat" || s.Supervision != SupervisionConfigToggle || s.Artifact != nil {
				t.Errorf("spec %+v", s)
			}
		}},
		{name: "config toggle implies compiled in; feature from binary_path", addon: Addon{AddonID: "beat-fast", Supervision: SupervisionConfigToggle, BinaryPath: "heartbeat"}, check: func(t *testing.T, s Spec) {
			if s.Feature != "heartbeat" || s.Delivery != DeliveryCompiledIn {
				t.Errorf("spec %+v", s)
			}
		}},
		{name: "compiled in: feature is a name, not a path", addon: Addon{AddonID: "x", Delivery: DeliveryCompiledIn, BinaryPath: "/usr/bin/x"}, wantErr: "is not a feature name"},
		{name: "compiled in cannot run as a sidecar", addon: Addon{AddonID: "x", Delivery: DeliveryCompiledIn, Supervision: SupervisionAgentSidecar}, wantErr: "cannot be supervised"},
		{name: "pushed artifact cannot be toggled", addon: pushed(func(a *Addon) { a.Delivery, a.Supervision = DeliveryPushedArtifact, SupervisionConfigToggle }), wantErr: "cannot be supervised"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Resolve(tc.addon, linuxAMD64)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), `addon "`) {
					t.Fatalf("Resolve = %v, want error containing %q and the add-on id", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			tc.check(t, s)
		})
	}
}

func TestParse(t *testing.T) {
	doc := `{"agent_id":"edge-01","serial":7,"addons":[{"addon_id":"hello","version":"1.0.0","future_field":1}]}`
	d, err := Parse([]byte(doc))
	if err != nil || d.AgentID != "edge-01" || d.Serial != 7 || len(d.Addons) != 1 {
		t.Fatalf("Parse = %+v, %v", d, err)
	}
	for _, bad := range []string{
		``, `{`, `[]`, `{"serial":"7"}`, `{"addons":{}}`, `{} {}`, `{"addons":[]} x`,
		`{"addons":[{"addon_id":"a"},{"addon_id":"a"}]}`,
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded, want error", bad)
		}
	}
}

func TestConfigVersionCoversArtifact(t *testing.T) {
	d := Document{AgentID: "a", Serial: 1, Addons: []Addon{pushed(nil)}}
	v1, _ := ComputeConfigVersion(d)
	d.Addons[0].ArtifactSHA256 = strings.Repeat("00", 32)
	v2, _ := ComputeConfigVersion(d)
	d.ConfigVersion = "ignored"
	v3, _ := ComputeConfigVersion(d)
	if v1 == v2 || v2 != v3 {
		t.Fatalf("config versions %s %s %s: artifact must change it, config_version itself must not", v1, v2, v3)
	}
}

func TestOverrides(t *testing.T) {
	base := []Addon{pushed(func(a *Addon) { a.Args = []string{"-v"}; a.ConfigJSON = json.RawMessage(`{"x":1}`) }), {AddonID: "other", Version: "2"}}
	o, err := ParseOverrides([]byte(`{"addons":[
		{"addon_id":"hello","enabled":false},
		{"addon_id":"other","version":"3"},
		{"addon_id":"local","version":"0.1","delivery":"os_package"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	got, touched, err := o.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || !touched["hello"] || !touched["local"] {
		t.Fatalf("Apply = %d add-ons, touched %v", len(got), touched)
	}
	h := got[0]
	if h.IsEnabled() || h.Version != "1.0.0" || h.Args[0] != "-v" || string(h.ConfigJSON) != `{"x":1}` || h.ArtifactSHA256 != sha {
		t.Errorf("enabled=false must disable and preserve the rest: %+v", h)
	}
	if got[1].Version != "3" {
		t.Errorf("version pin not applied: %+v", got[1])
	}
	if got[2].AddonID != "local" || got[2].Delivery != DeliveryOSPackage {
		t.Errorf("local-only entry not added: %+v", got[2])
	}
	if !base[0].IsEnabled() {
		t.Error("Apply modified its input")
	}

	// A version pin without artifact fields drops the pushed reference, so
	// the pinned version is resolved from its own signed package.
	o2, _ := ParseOverrides([]byte(`{"addons":[{"addon_id":"hello","version":"0.9.0"}]}`))
	got, _, _ = o2.Apply(base)
	s, err := Resolve(got[0], linuxAMD64)
	if err != nil || !s.NeedsPackage() || s.Version != "0.9.0" {
		t.Errorf("pinned spec = %+v, %v; want version 0.9.0 resolved from its package", s, err)
	}
}

func TestParseOverridesRefuses(t *testing.T) {
	for _, bad := range []string{
		`{`, `{"addons":[{"enabled":false}]}`, `{"addons":[{"addon_id":"../x"}]}`,
		`{"addons":[{"addon_id":"a","enabeld":false}]}`, `{"addons":[{"addon_id":"a","enabled":"no"}]}`,
		`{"addons":[{"addon_id":"a"},{"addon_id":"a"}]}`, `{"addons":[],"extra":1}`,
	} {
		if _, err := ParseOverrides([]byte(bad)); err == nil {
			t.Errorf("ParseOverrides(%q) succeeded, want error", bad)
		}
	}
}

func TestOverridesSet(t *testing.T) {
	o, _ := ParseOverrides([]byte(`{"addons":[{"addon_id":"a","enabled":false}]}`))
	b, err := o.Set("a", map[string]json.RawMessage{"version": json.RawMessage(`"2"`)})
	if err != nil {
		t.Fatal(err)
	}
	o2, err := ParseOverrides(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _, _ := o2.Apply([]Addon{{AddonID: "a", Version: "1"}})
	if got[0].IsEnabled() || got[0].Version != "2" {
		t.Fatalf("Set merged = %+v", got[0])
	}
	b, _ = o2.Set("a", nil)
	if o3, _ := ParseOverrides(b); o3.Len() != 0 {
		t.Fatalf("Set(nil) left %d entries", o3.Len())
	}
}

func TestParsePackage(t *testing.T) {
	good := `{"addon_id":"pingsweep","version":"1.0.0","supervision":"agent_sidecar","os_capabilities":["cap_net_raw"],
	  "artifacts":{"linux/amd64":{"object_key":"artifacts/pingsweep/1.0.0/linux-amd64/pingsweep","sha256":"` + sha + `","size":1234,"signature":"` + sig + `","key_id":"0123456789abcdef","binary_name":"pingsweep"}}}`
	p, err := ParsePackage([]byte(good))
	if err != nil || p.Artifacts["linux/amd64"].Size != 1234 {
		t.Fatalf("ParsePackage = %+v, %v", p, err)
	}
	s, _ := Resolve(Addon{AddonID: "pingsweep", Version: "1.0.0"}, linuxAMD64)
	s, err = s.WithPackage(p, linuxAMD64)
	if err != nil || s.Artifact == nil || s.BinaryName != "pingsweep" || !s.FromPackage {
		t.Fatalf("WithPackage = %+v, %v", s, err)
	}
	if _, err := s.WithPackage(p, Platform{"linux", "riscv64"}); err == nil {
		t.Error("WithPackage for a platform the package lacks succeeded")
	}
	other, _ := Resolve(Addon{AddonID: "pingsweep", Version: "2.0.0"}, linuxAMD64)
	if _, err := other.WithPackage(p, linuxAMD64); err == nil {
		t.Error("WithPackage with another version's package succeeded")
	}
	for _, bad := range []string{
		strings.Replace(good, `"pingsweep","version"`, `"../x","version"`, 1),
		strings.Replace(good, `"1.0.0","supervision"`, `"..","supervision"`, 1),
		strings.Replace(good, `"linux/amd64"`, `"linux"`, 1),
		strings.Replace(good, `"binary_name":"pingsweep"`, `"binary_name":".."`, 1),
	} {
		if _, err := ParsePackage([]byte(bad)); err == nil {
			t.Errorf("ParsePackage accepted %s", bad)
		}
	}
}

func FuzzParseAndResolve(f *testing.F) {
	f.Add([]byte(`{"agent_id":"edge-01","serial":7,"addons":[{"addon_id":"hello","version":"1.0.0","artifact_object_key":"artifacts/hello/1.0.0/linux-amd64/hello","artifact_sha256":"` + sha + `","target_os":"linux","target_arch":"amd64","binary_path":"hello"}]}`))
	f.Add([]byte(`{"addons":[{"addon_id":"x","artifacts":{"linux/amd64":{"object_key":"a/b","sha256":"` + sha + `","binary_name":".."}}}]}`))
	f.Add([]byte(`{"addons":[{"addon_id":"../../etc","version":".."}]}`))
	f.Add([]byte(`{"addons":[{"addon_id":"nmap","delivery":"os_package","binary_path":"/usr/bin/nmap","artifact_sha256":"` + sha + `"}]}`))
	f.Add([]byte(`{"addons":[{"addon_id":"beat","supervision":"config_toggle","binary_path":"heartbeat","config_json":{"interval":"30s"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			return
		}
		for _, a := range d.Addons {
			s, err := Resolve(a, linuxAMD64)
			if err != nil {
				continue
			}
			checkSafe(t, s)
		}
	})
}

func FuzzOverrides(f *testing.F) {
	f.Add([]byte(`{"addons":[{"addon_id":"hello","enabled":false},{"addon_id":"n","version":"1"}]}`))
	f.Add([]byte(`{"addons":[{"addon_id":"hello","version":"..","binary_path":"../x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseOverrides(data)
		if err != nil {
			return
		}
		got, _, err := o.Apply([]Addon{pushed(nil)})
		if err != nil {
			t.Fatalf("Apply of a parsed overrides file failed: %v", err)
		}
		for _, a := range got {
			if s, err := Resolve(a, linuxAMD64); err == nil {
				checkSafe(t, s)
			}
		}
	})
}

func FuzzSegments(f *testing.F) {
	for _, s := range []string{"1.0.0", "..", "a/b", `a\b`, "", ".", "v1+build~2", "hello"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, check := range []func(string) error{ValidVersion, ValidBinaryName, ValidAddonID} {
			if check(s) == nil {
				if !filepath.IsLocal(s) || strings.ContainsAny(s, `/\`) || s == "." || s == ".." || filepath.Base(s) != s {
					t.Fatalf("accepted unsafe segment %q", s)
				}
			}
		}
	})
}

func FuzzParsePackage(f *testing.F) {
	f.Add([]byte(`{"addon_id":"p","version":"1","artifacts":{"linux/amd64":{"object_key":"a/b","sha256":"` + sha + `"}}}`))
	f.Add([]byte(`{"addon_id":"p","version":"1","artifacts":{"linux/amd64":{"object_key":"a/b.zst","sha256":"` + sha + `","size":10,"compression":"zstd","stored_sha256":"` + sha + `","stored_size":5}}}`))
	f.Add([]byte(`{"addon_id":"p","version":"1","artifacts":{"linux/amd64":{"object_key":"a/b","sha256":"` + sha + `","compression":"gzip"}}}`))
	f.Add([]byte(`{"addon_id":"p","version":"1","artifacts":{"linux/amd64":{"object_key":"a/b","sha256":"` + sha + `","stored_size":5}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePackage(data)
		if err != nil {
			return
		}
		if ValidAddonID(p.AddonID) != nil || ValidVersion(p.Version) != nil {
			t.Fatalf("ParsePackage accepted %q@%q", p.AddonID, p.Version)
		}
		for plat, a := range p.Artifacts {
			switch a.Compression {
			case "":
				if a.StoredSHA256 != "" || a.StoredSize != 0 {
					t.Fatalf("%s: stored fields without compression: %+v", plat, a)
				}
			case CompressionZstd:
				if a.Size <= 0 || a.StoredSize <= 0 || len(a.StoredSHA256) != 64 || !strings.HasSuffix(a.ObjectKey, ".zst") {
					t.Fatalf("%s: a zstd artifact without sizes, stored digest or .zst key: %+v", plat, a)
				}
			default:
				t.Fatalf("%s: compression %q accepted", plat, a.Compression)
			}
		}
	})
}

func checkSafe(t *testing.T, s Spec) {
	t.Helper()
	for _, seg := range []string{s.AddonID, s.Version} {
		if seg == "" && seg == s.Version && s.Delivery != DeliveryPushedArtifact {
			continue // nothing is staged: no version directory
		}
		if !filepath.IsLocal(seg) || strings.ContainsAny(seg, `/\`) {
			t.Fatalf("Resolve accepted unsafe segment %q", seg)
		}
	}
	switch s.Delivery {
	case DeliveryOSPackage:
		if !filepath.IsAbs(s.BinaryPath) || filepath.Clean(s.BinaryPath) != s.BinaryPath || strings.ContainsRune(s.BinaryPath, 0) {
			t.Fatalf("Resolve accepted os_package binary_path %q", s.BinaryPath)
		}
		if s.BinarySHA256 != "" && len(s.BinarySHA256) != 64 {
			t.Fatalf("Resolve left sha256 %q unnormalized", s.BinarySHA256)
		}
	case DeliveryCompiledIn:
		if ValidFeature(s.Feature) != nil || s.Supervision != SupervisionConfigToggle {
			t.Fatalf("Resolve accepted compiled_in feature %q supervised by %q", s.Feature, s.Supervision)
		}
	}
	if s.Supervision == SupervisionConfigToggle && s.Delivery != DeliveryCompiledIn {
		t.Fatalf("Resolve accepted config_toggle for delivery %q", s.Delivery)
	}
	if s.Artifact != nil {
		if !filepath.IsLocal(s.BinaryName) || strings.ContainsAny(s.BinaryName, `/\`) || s.BinaryName == "." {
			t.Fatalf("Resolve accepted unsafe binary name %q", s.BinaryName)
		}
		if len(s.Artifact.SHA256) != 64 {
			t.Fatalf("Resolve left sha256 %q unnormalized", s.Artifact.SHA256)
		}
	}
}
