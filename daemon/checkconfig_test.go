package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/addond/addond/daemon/signing"
)

// TestCheckConfig: a good config and what it names pass; each thing that
// `addond run` or a reload would refuse is an error that names its file,
// line and column — and checking writes nothing.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	_, pub, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "signing.pub"), pub, 0o644)
	os.WriteFile(filepath.Join(dir, "garbage.pub"), []byte("not a key\n"), 0o644)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	overrides := filepath.Join(dir, "addons.local.json")
	good := fmt.Sprintf(`{
  "agent_id": "edge-01",
  "runtime_root": %q,
  "store": "file:///srv/store",
  "assignments": {"store_key": "agents/edge-01/assignments.json"},
  "trust": {"public_keys": [%q]},
  "local_overrides": %q
}
`, filepath.Join(dir, "root"), filepath.Join(dir, "signing.pub"), overrides)
	cfg := write("addond.json", good)
	if errs := CheckConfig(cfg); len(errs) != 0 {
		t.Fatalf("a good config: %v", errs)
	}
	write("addons.local.json", `{"addons": [{"addon_id": "pingsweep", "enabled": false}]}`)
	write(PolicyFile, "# comment\ncap_net_raw\n")
	if errs := CheckConfig(cfg); len(errs) != 0 {
		t.Fatalf("a good config with overrides and policy: %v", errs)
	}

	for _, c := range []struct {
		name      string
		config    string // "" keeps the good one
		overrides string
		policy    string
		want      []string
	}{
		{name: "missing file", want: []string{"CFG:1:1: open "}},
		{name: "syntax", config: "{\n  \"agent_id\": \"edge-01\",,\n}", want: []string{"CFG:2:25: invalid JSON"}},
		{name: "bad key file", config: strings.Replace(good, "signing.pub", "garbage.pub", 1),
			want: []string{`CFG:6:13: key "trust.public_keys": `}},
		{name: "a key in both roles", config: strings.Replace(good, `"trust": {`, fmt.Sprintf(`"trust": {"assignment_keys": [%q], `, filepath.Join(dir, "signing.pub")), 1),
			want: []string{`CFG:6:13: key "trust.assignment_keys": trust: key `}},
		{name: "bad store", config: strings.Replace(good, "file:///srv/store", "ftp://x/y", 1),
			want: []string{`CFG:4:3: key "store": `}},
		{name: "bad overrides", overrides: "{\"addons\": [\n  {\"addon_id\": \"pingsweep\", \"enabld\": false}]}",
			want: []string{overrides + `:2:29: overrides: addon "pingsweep": unknown field "enabld"`}},
		// Each error about an entry points into that entry, not at the
		// first key of the same name elsewhere in the file.
		{name: "a wrong type in the second entry", overrides: "{\"addons\": [\n  {\"addon_id\": \"a\", \"enabled\": false},\n  {\"addon_id\": \"b\", \"enabled\": \"no\"}]}",
			want: []string{overrides + `:3:21: overrides: addon "b": json: cannot unmarshal string into Go struct field Addon.enabled of type bool`}},
		{name: "a nested wrong type", overrides: "{\"addons\": [\n  {\"addon_id\": \"a\", \"resources\": {\"cpu_max_percent\": 5}},\n  {\"addon_id\": \"b\", \"resources\": {\"cpu_max_percent\": \"5\"}}]}",
			want: []string{overrides + `:3:35: overrides: addon "b": json: cannot unmarshal string into Go struct field`}},
		{name: "an unknown field named like a top-level key", overrides: "{\"addons\": [\n  {\"addon_id\": \"b\", \"addons\": []}]}",
			want: []string{overrides + `:2:21: overrides: addon "b": unknown field "addons"`}},
		{name: "an id listed twice", overrides: "{\"addons\": [\n  {\"addon_id\": \"a\"},\n  {\"addon_id\": \"a\"}]}",
			want: []string{overrides + `:3:4: overrides: addon_id "a" listed twice`}},
		{name: "an entry without an id", overrides: "{\"addons\": [\n  {\"addon_id\": \"a\"},\n  {\"enabled\": false}]}",
			want: []string{overrides + `:3:3: overrides: entry 1: addon_id missing`}},
		{name: "an invalid id", overrides: "{\"addons\": [\n  {\"addon_id\": \"a\"},\n    {\"addon_id\": \"../b\"}]}",
			want: []string{overrides + `:3:6: overrides: entry 1: `}},
		{name: "bad policy", policy: "cap_net_raw\n\ncap_fly\n", want: []string{filepath.Join(dir, PolicyFile) + ":3:1: "}},
		{name: "all at once", config: strings.Replace(good, "signing.pub", "garbage.pub", 1), policy: "cap_fly\n",
			overrides: "[]", want: []string{"CFG:6:13:", overrides + ":1:1:", filepath.Join(dir, PolicyFile) + ":1:1:"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := cfg
			if c.name == "missing file" {
				path = cfg + ".missing"
			}
			if c.config != "" {
				path = write("check.json", c.config)
			}
			write("addons.local.json", cmpStr(c.overrides, `{"addons": []}`))
			write(PolicyFile, cmpStr(c.policy, "cap_net_raw\n"))
			before := listDir(t, dir)
			errs := CheckConfig(path)
			if len(errs) != len(c.want) {
				t.Fatalf("errors %v, want %d: %q", errs, len(c.want), c.want)
			}
			for i, err := range errs {
				if want := strings.ReplaceAll(c.want[i], "CFG", path); !strings.HasPrefix(err.Error(), want) {
					t.Errorf("error %d: %s\nwant %s…", i, err, want)
				}
			}
			if after := listDir(t, dir); after != before {
				t.Errorf("checking wrote:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func cmpStr(s, otherwise string) string {
	if s != "" {
		return s
	}
	return otherwise
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		names = append(names, p)
		return nil
	})
	return strings.Join(names, " ")
}
