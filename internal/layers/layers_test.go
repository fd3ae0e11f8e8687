package layers

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

const module = "github.com/addond/addond"

// pkg is what `go list -deps -json` says of a package.
type pkg struct {
	ImportPath string
	Imports    []string
	Module     *struct{ Path string }
	Standard   bool
}

// list is every package the patterns need, listed from dir.
func list(t *testing.T, dir string, patterns ...string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps", "-json=ImportPath,Imports,Module,Standard"}, patterns...)...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list in %s: %v", dir, err)
	}
	return pkgs
}

// layer is the part of the repository a package of it is in ("" for none).
func layer(path string) string {
	rest, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return ""
	}
	if rest == "cmd/addond-updater" || strings.HasPrefix(rest, "cmd/addond-updater/") {
		return "updater"
	}
	first, _, _ := strings.Cut(rest, "/")
	return first
}

// TestDependenciesPointOneWay: no package imports one of a layer it must
// not know.
func TestDependenciesPointOneWay(t *testing.T) {
	forbidden := map[string][]string{
		"sdk":          {"cmd", "daemon", "supervisors", "capabilities", "internal", "vmtest", "units", "packaging"},
		"supervisors":  {"cmd", "daemon", "updater", "vmtest"},
		"daemon":       {"cmd", "updater", "vmtest"},
		"capabilities": {"cmd", "daemon", "supervisors", "sdk", "vmtest"},
		"updater":      {"cmd", "daemon", "supervisors", "sdk", "vmtest"},
	}
	// The conformance suite is test code: it may use the test harnesses.
	allowed := map[string]string{module + "/supervisors/conformance": "vmtest"}
	pkgs := list(t, "../..", "./...", module+"/sdk/...")
	checked := 0
	for _, p := range pkgs {
		from := layer(p.ImportPath)
		if from == "" || forbidden[from] == nil {
			continue
		}
		checked++
		for _, imp := range p.Imports {
			if to := layer(imp); slices.Contains(forbidden[from], to) && allowed[p.ImportPath] != to {
				t.Errorf("%s imports %s: %s/ must not depend on %s/", p.ImportPath, imp, from, to)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d packages checked: the listing is not the repository's", checked)
	}
}

// TestSDKModuleStandsAlone: the add-on SDK is its own module, requiring
// go-plugin, grpc and protobuf directly and nothing of the agent; built
// from its own directory, what an add-on links is the SDK, those modules
// and what they need.
func TestSDKModuleStandsAlone(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "sdk", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("sdk/go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Module.Mod.Path != module+"/sdk" || len(f.Replace) != 0 {
		t.Fatalf("sdk/go.mod: module %s, %d replace directives", f.Module.Mod.Path, len(f.Replace))
	}
	allowed := []string{"github.com/hashicorp/go-plugin", "google.golang.org/grpc", "google.golang.org/protobuf"}
	for _, r := range f.Require {
		if !r.Indirect && !slices.Contains(allowed, r.Mod.Path) {
			t.Errorf("sdk/go.mod requires %s directly: the SDK depends on go-plugin and grpc alone", r.Mod.Path)
		}
		if strings.HasPrefix(r.Mod.Path, module) {
			t.Errorf("sdk/go.mod requires %s: the SDK must not pull the agent into an add-on", r.Mod.Path)
		}
	}
	pkgs := list(t, filepath.Join("..", "..", "sdk"), "-test", "./...")
	for _, p := range pkgs {
		if p.Module != nil && p.Module.Path != module+"/sdk" && strings.HasPrefix(p.Module.Path, module) {
			t.Errorf("an add-on built on the SDK links %s (module %s)", p.ImportPath, p.Module.Path)
		}
	}
	if _, ok := pkgs[module+"/sdk/examples/hello"]; !ok {
		t.Fatal("the SDK's own listing has no examples/hello: not the SDK module")
	}
}

// TestModulesTidy: both modules' go.mod and go.sum are what `go mod tidy`
// makes them (an SDK that builds here only through the agent's module
// would not build for an add-on author), and the SDK module carries the
// repository's licence unchanged.
func TestModulesTidy(t *testing.T) {
	for _, dir := range []string{"../..", "../../sdk"} {
		cmd := exec.Command("go", "mod", "tidy", "-diff")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: go mod tidy -diff: %v\n%s", dir, err, out)
		}
	}
	root, err := os.ReadFile("../../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	if sdk, err := os.ReadFile("../../sdk/LICENSE"); err != nil || string(sdk) != string(root) {
		t.Errorf("sdk/LICENSE is not the repository's LICENSE (%v)", err)
	}
}
