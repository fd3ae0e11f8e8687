// Package packaging holds the tests of the deb and rpm packages that
// `make packages` builds (packaging/README.md). The tests build them once,
// with build.sh, into a temporary directory, and look at them with the
// distributions' own tools: dpkg-deb, rpm, lintian, and dpkg in a booted
// Debian 12.
package packaging

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/vmtest"
)

// The version the tests build: the Makefile's form, with "-" and "+".
const (
	testVersion = "0.1.0-test+abc1234"
	pkgVersion  = "0.1.0~test+abc1234"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildOut  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// dist builds every package once (the first test to ask waits, about ten
// seconds with a warm build cache) and returns the directory they are in.
func dist(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "addond-packages-test-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("bash", "build.sh")
		cmd.Env = append(os.Environ(), "VERSION="+testVersion, "OUT="+buildDir, "ARCHES=amd64 arm64", "FORMATS=deb rpm")
		out, err := cmd.CombinedOutput()
		buildOut = string(out)
		buildErr = err
	})
	if buildErr != nil {
		t.Fatalf("build.sh: %v\n%s", buildErr, buildOut)
	}
	return buildDir
}

// need stops t unless the tools are installed (`make deps` installs them).
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			vmtest.Unavailable(t, "needs "+tool+" (make deps installs it)")
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// The package file names of the contract (DESIGN.md, "Contract: packages").
var (
	debs = map[string]string{"amd64": "addond_" + pkgVersion + "_amd64.deb", "arm64": "addond_" + pkgVersion + "_arm64.deb"}
	rpms = map[string]string{"amd64": "addond-" + pkgVersion + "-1.x86_64.rpm", "arm64": "addond-" + pkgVersion + "-1.aarch64.rpm"}

	addonDebs = map[string]string{"amd64": "addond-addon-pingsweep_" + pkgVersion + "_amd64.deb", "arm64": "addond-addon-pingsweep_" + pkgVersion + "_arm64.deb"}
	addonRPMs = map[string]string{"amd64": "addond-addon-pingsweep-" + pkgVersion + "-1.x86_64.rpm", "arm64": "addond-addon-pingsweep-" + pkgVersion + "-1.aarch64.rpm"}
)

func TestPackageFiles(t *testing.T) {
	dir := dist(t)
	var want []string
	for _, m := range []map[string]string{debs, rpms, addonDebs, addonRPMs} {
		for _, name := range m {
			want = append(want, name)
		}
	}
	sort.Strings(want)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("packages built:\n  %s\nwant exactly:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// addondFiles is every file in the addond packages, with its mode; the
// owner is root:root throughout. zsh's completion directory differs.
var addondFiles = map[string]string{
	"/etc/addond/addond.json":                                "-rw-r--r--",
	"/etc/addond/capabilities.allow":                         "-rw-r--r--",
	"/etc/addond/credentials/s3":                             "-rw-------", // root's alone: addond gets it as a systemd credential
	"/usr/bin/addond":                                        "-rwx--x--x", // execute-only: non-dumpable from exec
	"/usr/bin/addonctl":                                      "-rwxr-xr-x",
	"/usr/libexec/addond/addond-updater":                     "-rwxr-xr-x",
	"/usr/lib/systemd/system/addond.service":                 "-rw-r--r--",
	"/usr/lib/systemd/system/addond-updater.socket":          "-rw-r--r--",
	"/usr/lib/systemd/system/addond-updater.service":         "-rw-r--r--",
	"/usr/lib/sysusers.d/addond.conf":                        "-rw-r--r--",
	"/usr/lib/tmpfiles.d/addond.conf":                        "-rw-r--r--",
	"/usr/share/doc/addond/copyright":                        "-rw-r--r--",
	"/usr/share/doc/addond/changelog.gz":                     "-rw-r--r--",
	"/usr/share/doc/addond/NOTICE":                           "-rw-r--r--",
	"/usr/share/doc/addond/monitoring/addond-alerts.yml":     "-rw-r--r--",
	"/usr/share/doc/addond/monitoring/addond-dashboard.json": "-rw-r--r--",
	// A few of the license texts and NOTICE files go-licenses saves; every
	// file under licenses/ is 0644 (licensed below).
	"/usr/share/doc/addond/licenses/github.com/spf13/cobra/LICENSE.txt":   "-rw-r--r--",
	"/usr/share/doc/addond/licenses/github.com/godbus/dbus/v5/LICENSE":    "-rw-r--r--",
	"/usr/share/doc/addond/licenses/google.golang.org/grpc/LICENSE":       "-rw-r--r--",
	"/usr/share/doc/addond/licenses/google.golang.org/grpc/NOTICE.txt":    "-rw-r--r--",
	"/usr/share/doc/addond/licenses/github.com/minio/minio-go/v7/LICENSE": "-rw-r--r--",
	// Some of the man pages, one per command; every page is 0644
	// (licensed below).
	"/usr/share/man/man1/addonctl.1.gz":                  "-rw-r--r--",
	"/usr/share/man/man1/addonctl-status.1.gz":           "-rw-r--r--",
	"/usr/share/man/man1/addonctl-assign.1.gz":           "-rw-r--r--",
	"/usr/share/man/man8/addond.8.gz":                    "-rw-r--r--",
	"/usr/share/man/man8/addond-run.8.gz":                "-rw-r--r--",
	"/usr/share/man/man8/addond-check-config.8.gz":       "-rw-r--r--",
	"/usr/share/man/man8/addond-updater.8.gz":            "-rw-r--r--",
	"/usr/share/man/man8/addond-updater-serve.8.gz":      "-rw-r--r--",
	"/usr/share/bash-completion/completions/addonctl":    "-rw-r--r--",
	"/usr/share/fish/vendor_completions.d/addonctl.fish": "-rw-r--r--",
}

// licensed: a license text or NOTICE file of a bundled module, or a man
// page, which the package lists need not name one by one (the set follows
// go.mod and the command tree); doc is the package's documentation
// directory.
func licensed(doc, path, mode string) bool {
	if mode != "-rw-r--r--" {
		return false
	}
	if doc == "/usr/share/doc/addond" && (manPage.MatchString(path)) {
		return true
	}
	return strings.HasPrefix(path, doc+"/licenses/")
}

var manPage = regexp.MustCompile(`^/usr/share/man/(man1/addonctl(-[a-z-]+)?\.1|man8/addond(-[a-z-]+)?\.8)\.gz$`)

var conffiles = []string{"/etc/addond/addond.json", "/etc/addond/capabilities.allow", "/etc/addond/credentials/s3"}

// dirMode is the mode of a package's directory: root's credentials
// directory is root's alone, every other one 0755.
func dirMode(path string) string {
	if path == "/etc/addond/credentials" {
		return "drwx------"
	}
	return "drwxr-xr-x"
}

// entry is one file of a package listing.
type entry struct{ mode, owner string }

// debListing is `dpkg-deb -c`, by absolute path (directories without the
// trailing slash).
func debListing(t *testing.T, deb string) map[string]entry {
	t.Helper()
	files := map[string]entry{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("dpkg-deb -c: unexpected line %q (a symbolic link?)", line)
		}
		path := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		if path == "" {
			continue
		}
		files[path] = entry{f[0], f[1]}
	}
	return files
}

func TestDebContents(t *testing.T) {
	dir := dist(t)
	for arch, name := range debs {
		t.Run(arch, func(t *testing.T) {
			files := debListing(t, filepath.Join(dir, name))
			want := map[string]string{
				"/usr/share/zsh/vendor-completions/_addonctl": "-rw-r--r--",
				"/usr/share/lintian/overrides/addond":         "-rw-r--r--",
			}
			for p, m := range addondFiles {
				want[p] = m
			}
			for path, e := range files {
				if e.owner != "root/root" {
					t.Errorf("%s: owner %s, want root/root", path, e.owner)
				}
				if strings.HasPrefix(e.mode, "d") {
					if e.mode != dirMode(path) {
						t.Errorf("directory %s: mode %s, want %s", path, e.mode, dirMode(path))
					}
					continue
				}
				if m, ok := want[path]; !ok && !licensed("/usr/share/doc/addond", path, e.mode) {
					t.Errorf("unexpected file %s (%s)", path, e.mode)
				} else if ok && e.mode != m {
					t.Errorf("%s: mode %s, want %s", path, e.mode, m)
				}
			}
			for path := range want {
				if _, ok := files[path]; !ok {
					t.Errorf("missing %s", path)
				}
			}
			if _, ok := files["/etc/addond/trust.d"]; !ok {
				t.Error("missing the directory /etc/addond/trust.d/")
			}
		})
	}
}

// control returns the fields of a deb's control file.
func control(t *testing.T, deb string) map[string]string {
	t.Helper()
	fields := map[string]string{}
	var last string
	for _, line := range strings.Split(run(t, "dpkg-deb", "-f", deb), "\n") {
		if strings.HasPrefix(line, " ") {
			fields[last] += "\n" + line
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			last = k
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// controlMembers lists a deb's control archive (maintainer scripts,
// conffiles, md5sums, …) with modes.
func controlMembers(t *testing.T, deb string) map[string]string {
	t.Helper()
	cmd := exec.Command("sh", "-c", `dpkg-deb --ctrl-tarfile "$1" | tar -tvf -`, "sh", deb)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("control archive of %s: %v\n%s", deb, err, out)
	}
	members := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || strings.HasPrefix(f[0], "d") {
			continue
		}
		members[strings.TrimPrefix(f[len(f)-1], "./")] = f[0]
	}
	return members
}

func TestDebControl(t *testing.T) {
	dir := dist(t)
	for arch, name := range debs {
		t.Run(arch, func(t *testing.T) {
			deb := filepath.Join(dir, name)
			f := control(t, deb)
			for k, v := range map[string]string{"Package": "addond", "Version": pkgVersion, "Architecture": arch, "Section": "admin"} {
				if f[k] != v {
					t.Errorf("%s: %q, want %q", k, f[k], v)
				}
			}
			deps := strings.Split(f["Depends"], ", ")
			for _, d := range []string{"systemd", "dbus-user-session", "libpam-systemd"} {
				if !slices.Contains(deps, d) {
					t.Errorf("Depends: %q lacks %s", f["Depends"], d)
				}
			}
			members := controlMembers(t, deb)
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				if members[s] != "-rwxr-xr-x" {
					t.Errorf("maintainer script %s: %q, want -rwxr-xr-x", s, members[s])
				}
			}
			if _, ok := members["preinst"]; ok {
				t.Error("unexpected preinst")
			}
			got := strings.Fields(run(t, "sh", "-c", `dpkg-deb --ctrl-tarfile "$1" | tar -xOf - ./conffiles`, "sh", deb))
			if !slices.Equal(got, conffiles) {
				t.Errorf("conffiles: %q, want %q", got, conffiles)
			}
			info := run(t, "dpkg-deb", "-I", deb)
			for _, s := range []string{"postinst", "prerm", "postrm", "conffiles"} {
				if !strings.Contains(info, " "+s+" ") {
					t.Errorf("dpkg-deb -I does not list %s:\n%s", s, info)
				}
			}
		})
	}
}

// extract unpacks a deb into a new directory.
func extract(t *testing.T, deb string) string {
	t.Helper()
	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	return root
}

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestDebBinaries: each package holds its own architecture's binaries,
// built as position-independent executables with immediate binding,
// stripped, and importing no shared library (lintian's overrides say so).
func TestDebBinaries(t *testing.T) {
	dir := dist(t)
	for arch, name := range debs {
		t.Run(arch, func(t *testing.T) {
			root := extract(t, filepath.Join(dir, name))
			for _, bin := range []string{"/usr/bin/addond", "/usr/bin/addonctl", "/usr/libexec/addond/addond-updater"} {
				f, err := elf.Open(filepath.Join(root, bin))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if f.Machine != machines[arch] {
					t.Errorf("%s: machine %v, want %v", bin, f.Machine, machines[arch])
				}
				if f.Type != elf.ET_DYN {
					t.Errorf("%s: type %v, want ET_DYN (a PIE)", bin, f.Type)
				}
				if libs, _ := f.ImportedLibraries(); len(libs) != 0 {
					t.Errorf("%s: imports %v, want no shared library", bin, libs)
				}
				flags, _ := f.DynValue(elf.DT_FLAGS_1)
				if len(flags) == 0 || flags[0]&uint64(elf.DF_1_NOW) == 0 {
					t.Errorf("%s: DT_FLAGS_1 %v lacks DF_1_NOW (-bindnow)", bin, flags)
				}
				if f.Section(".symtab") != nil {
					t.Errorf("%s: not stripped", bin)
				}
			}
		})
	}
}

// TestShippedFiles compares what the package installs with its sources:
// the units as units/ has them, the default capability policy, the config,
// sysusers and tmpfiles entries.
func TestShippedFiles(t *testing.T) {
	root := extract(t, filepath.Join(dist(t), debs["amd64"]))
	read := func(p string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	for _, u := range []string{"addond.service", "addond-updater.socket", "addond-updater.service"} {
		src, err := os.ReadFile(filepath.Join("..", "units", u))
		if err != nil {
			t.Fatal(err)
		}
		if read("/usr/lib/systemd/system/"+u) != string(src) {
			t.Errorf("%s differs from units/%s", u, u)
		}
	}
	if got := read("/etc/addond/capabilities.allow"); got != capabilities.DefaultPolicy {
		t.Errorf("capabilities.allow is not capabilities.DefaultPolicy:\n%s", got)
	}
	if _, err := capabilities.ParsePolicy([]byte(read("/etc/addond/capabilities.allow"))); err != nil {
		t.Error(err)
	}

	// The config reaches READY with no store and no keys: no store, no
	// assignments (so zero add-ons), the shipped trust directory, and
	// signatures required. (TestInstallPurge sees READY for real.)
	cfg, err := config.Parse([]byte(read("/etc/addond/addond.json")))
	if err != nil {
		t.Fatalf("shipped addond.json: %v", err)
	}
	if cfg.Store != "" || cfg.Assignments != (config.Assignments{}) {
		t.Errorf("shipped config has a store %q or assignments %+v", cfg.Store, cfg.Assignments)
	}
	if !slices.Equal(cfg.Trust.PublicKeys, []string{"/etc/addond/trust.d"}) || !cfg.Trust.Required() {
		t.Errorf("shipped trust: %+v, want /etc/addond/trust.d with signatures required", cfg.Trust)
	}
	if cfg.RuntimeRoot != "/var/lib/addond" || cfg.StatusSocket != "/run/addond/addond.sock" || cfg.Systemd.Manager != "user" ||
		cfg.UpdaterSocket != "/run/addond-updater.sock" || cfg.Systemd.AddonUser != "addond" {
		t.Errorf("shipped config's paths: %+v", cfg)
	}

	entries := func(p string) []string {
		var out []string
		for _, l := range strings.Split(read(p), "\n") {
			if l = strings.Join(strings.Fields(l), " "); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		return out
	}
	wantUsers := []string{
		`u addond - "addond add-on agent" /var/lib/addond /usr/sbin/nologin`,
		"g addond-status -",
		"m addond addond-status",
	}
	if got := entries("/usr/lib/sysusers.d/addond.conf"); !slices.Equal(got, wantUsers) {
		t.Errorf("sysusers.d/addond.conf:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantUsers, "\n"))
	}
	wantDirs := []string{
		"d /var/lib/addond 0700 addond addond -",
		"d /var/lib/addond-privileged 0755 root root -",
		"d /run/addond-cap 0750 root addond -",
		"d /etc/addond 0755 root root -",
		"d /etc/addond/trust.d 0755 root root -",
		"d /etc/addond/credentials 0700 root root -",
	}
	if got := entries("/usr/lib/tmpfiles.d/addond.conf"); !slices.Equal(got, wantDirs) {
		t.Errorf("tmpfiles.d/addond.conf:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDirs, "\n"))
	}

	changelog := gunzip(t, filepath.Join(root, "/usr/share/doc/addond/changelog.gz"))
	if first, _, _ := strings.Cut(changelog, "\n"); !strings.HasPrefix(first, "addond ("+pkgVersion+") ") {
		t.Errorf("changelog's first entry %q is not for %s", first, pkgVersion)
	}
	copyright := read("/usr/share/doc/addond/copyright")
	for _, mod := range []string{"github.com/spf13/cobra", "github.com/hashicorp/go-plugin", "github.com/godbus/dbus/v5"} {
		if !regexp.MustCompile(`(?m)^ ` + regexp.QuoteMeta(mod) + ` v\S+: \S`).MatchString(copyright) {
			t.Errorf("copyright does not list %s with its license", mod)
		}
	}
	if !strings.Contains(copyright, "\nLicense: Apache-2.0\n") || strings.Contains(copyright, "github.com/addond/addond") {
		t.Errorf("copyright: want addond's own files under Apache-2.0 and none of its packages in the module list:\n%s", copyright)
	}
	if strings.Contains(copyright, "@GO_MODULES@") || strings.Contains(strings.ToLower(copyright), "unknown") {
		t.Errorf("copyright: a module list placeholder or an unknown license is left:\n%s", copyright)
	}
}

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(data)
}

// TestManPagesAndCompletions: every command addonctl's own completion
// lists has its page, addonctl-<command>.1, naming each of its flags; every
// page formats without warnings; the completions are cobra's for each
// shell.
func TestManPagesAndCompletions(t *testing.T) {
	if _, ok := machines[runtime.GOARCH]; !ok || runtime.GOOS != "linux" {
		t.Skipf("the packages' binaries do not run on %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	root := extract(t, filepath.Join(dist(t), debs[runtime.GOARCH]))
	addonctl := filepath.Join(root, "usr/bin/addonctl")

	// complete returns the names `addonctl __complete ARGS... PREFIX`
	// offers (cobra's hidden completion entry point, as the shells call it).
	complete := func(args ...string) []string {
		var names []string
		sc := bufio.NewScanner(strings.NewReader(run(t, addonctl, append([]string{"__complete"}, args...)...)))
		for sc.Scan() {
			name, _, _ := strings.Cut(sc.Text(), "\t")
			if strings.HasPrefix(name, ":") {
				break // the directive
			}
			names = append(names, name)
		}
		return names
	}
	var walk func(path []string)
	seen := 0
	walk = func(path []string) {
		for _, name := range complete(append(path, "")...) {
			if strings.HasPrefix(name, "-") || name == "help" || name == "completion" {
				continue // a required flag of a leaf command; help; the shipped completions
			}
			sub := append(slices.Clone(path), name)
			file := "usr/share/man/man1/addonctl-" + strings.Join(sub, "-") + ".1.gz"
			if _, err := os.Stat(filepath.Join(root, file)); err != nil {
				t.Errorf("no page for addonctl %s: %v", strings.Join(sub, " "), err)
				continue
			}
			page := gunzip(t, filepath.Join(root, file))
			seen++
			for _, flag := range complete(append(sub, "--")...) {
				if flag != "--help" && !strings.Contains(page, `\fB`+flag+`\fP`) {
					t.Errorf("%s: flag %s missing", file, flag)
				}
			}
			walk(sub)
		}
	}
	walk(nil)
	if seen < 19 { // 12 commands and 7 subcommands
		t.Errorf("only %d command pages checked", seen)
	}

	pages, _ := filepath.Glob(filepath.Join(root, "usr/share/man/man[18]/*.gz"))
	if len(pages) < 28 {
		t.Errorf("%d man pages: %v", len(pages), pages)
	}
	if _, err := exec.LookPath("man"); err == nil {
		for _, p := range pages {
			cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", p)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				t.Errorf("man --warnings %s: %v\n%s", p, err, stderr.String())
			}
		}
	}

	for file, want := range map[string]string{
		"usr/share/bash-completion/completions/addonctl":    "__start_addonctl",
		"usr/share/zsh/vendor-completions/_addonctl":        "#compdef addonctl",
		"usr/share/fish/vendor_completions.d/addonctl.fish": "complete -c addonctl",
	} {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil || !strings.Contains(string(data), want) {
			t.Errorf("%s: want cobra's completion (%q): %v", file, want, err)
		}
	}
}

// TestLintian: no errors and no warnings on the addond packages (their few
// false positives are overridden, each with its reason); on the add-on
// package only the warning packaging/README.md explains.
func TestLintian(t *testing.T) {
	need(t, "lintian")
	dir := dist(t)
	for _, tc := range []struct {
		deb     string
		allowed []string
	}{
		{debs["amd64"], nil},
		{debs["arm64"], nil},
		{addonDebs["amd64"], []string{"W: addond-addon-pingsweep: shared-library-lacks-prerequisites [usr/libexec/addond-addons/pingsweep/pingsweep]"}},
	} {
		t.Run(tc.deb, func(t *testing.T) {
			cmd := exec.Command("lintian", "--fail-on", "none", filepath.Join(dir, tc.deb))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("lintian: %v\n%s", err, out)
			}
			t.Logf("lintian %s:\n%s", tc.deb, out)
			for _, line := range strings.Split(string(out), "\n") {
				if (strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ")) && !slices.Contains(tc.allowed, line) {
					t.Errorf("lintian: %s", line)
				}
			}
		})
	}
}

// rpmQuery runs `rpm -qp` with args on a package.
func rpmQuery(t *testing.T, rpm string, args ...string) string {
	t.Helper()
	return run(t, "rpm", append(append([]string{"-qp"}, args...), rpm)...)
}

func TestRPM(t *testing.T) {
	need(t, "rpm")
	dir := dist(t)
	for arch, name := range rpms {
		t.Run(arch, func(t *testing.T) {
			rpm := filepath.Join(dir, name)
			wantArch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[arch]
			if got := rpmQuery(t, rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"); got != "addond "+pkgVersion+" 1 "+wantArch {
				t.Errorf("name, version, release, arch: %q", got)
			}
			want := map[string]string{"/usr/share/zsh/site-functions/_addonctl": "-rw-r--r--"}
			for p, m := range addondFiles {
				want[p] = m
			}
			listing := rpmQuery(t, rpm, "--qf", `[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}. %{FILENAMES}\n]`)
			var config []string
			got := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
				f := strings.Fields(line)
				if len(f) != 4 {
					t.Fatalf("rpm listing: %q", line)
				}
				mode, owner, flags, path := f[0], f[1], strings.TrimSuffix(f[2], "."), f[3]
				got[path] = true
				if owner != "root:root" {
					t.Errorf("%s: owner %s", path, owner)
				}
				if strings.Contains(flags, "c") {
					config = append(config, path)
					if !strings.Contains(flags, "n") {
						t.Errorf("%s: %%config without noreplace (%q)", path, flags)
					}
				}
				if strings.HasPrefix(mode, "d") {
					if mode != dirMode(path) {
						t.Errorf("directory %s: mode %s, want %s", path, mode, dirMode(path))
					}
					continue
				}
				if m, ok := want[path]; !ok && !licensed("/usr/share/doc/addond", path, mode) {
					t.Errorf("unexpected file %s (%s)", path, mode)
				} else if ok && mode != m {
					t.Errorf("%s: mode %s, want %s", path, mode, m)
				}
			}
			for p := range want {
				if !got[p] {
					t.Errorf("missing %s", p)
				}
			}
			for _, d := range []string{"/etc/addond/trust.d", "/usr/libexec/addond", "/usr/share/doc/addond"} {
				if !got[d] {
					t.Errorf("the package does not own the directory %s", d)
				}
			}
			sort.Strings(config)
			if !slices.Equal(config, conffiles) {
				t.Errorf("%%config files: %q, want %q", config, conffiles)
			}
			requires := strings.Fields(rpmQuery(t, rpm, "--requires"))
			for _, r := range []string{"systemd", "dbus", "util-linux"} {
				if !slices.Contains(requires, r) {
					t.Errorf("Requires %q lack %s", requires, r)
				}
			}
			scripts := rpmQuery(t, rpm, "--scripts")
			for _, s := range []string{
				"postinstall scriptlet", "systemd-sysusers addond.conf", "systemd-tmpfiles --create addond.conf",
				"loginctl enable-linger addond", "systemctl --no-reload preset addond.service addond-updater.socket",
				"preuninstall scriptlet", "systemctl --user --machine=addond@ stop 'addond-*'",
				"postuninstall scriptlet", "systemctl try-restart addond.service",
			} {
				if !strings.Contains(scripts, s) {
					t.Errorf("rpm scripts lack %q:\n%s", s, scripts)
				}
			}
		})
	}
}

// TestAddonTemplate: the pingsweep package from the add-on template is a
// root-owned 0755 binary where os_package delivery accepts it, depends on
// addond, and has no maintainer script at all: it enables nothing.
func TestAddonTemplate(t *testing.T) {
	dir := dist(t)
	const bin = "/usr/libexec/addond-addons/pingsweep/pingsweep"
	for arch, name := range addonDebs {
		t.Run("deb-"+arch, func(t *testing.T) {
			deb := filepath.Join(dir, name)
			files := debListing(t, deb)
			want := map[string]string{
				bin: "-rwxr-xr-x",
				"/usr/share/doc/addond-addon-pingsweep/README":                                          "-rw-r--r--",
				"/usr/share/doc/addond-addon-pingsweep/copyright":                                       "-rw-r--r--",
				"/usr/share/doc/addond-addon-pingsweep/changelog.gz":                                    "-rw-r--r--",
				"/usr/share/doc/addond-addon-pingsweep/licenses/github.com/hashicorp/go-plugin/LICENSE": "-rw-r--r--",
				"/usr/share/doc/addond-addon-pingsweep/licenses/google.golang.org/grpc/NOTICE.txt":      "-rw-r--r--",
			}
			for path, e := range files {
				if e.owner != "root/root" {
					t.Errorf("%s: owner %s, want root/root", path, e.owner)
				}
				if strings.HasPrefix(e.mode, "d") {
					if e.mode != "drwxr-xr-x" {
						t.Errorf("directory %s: mode %s, want drwxr-xr-x", path, e.mode)
					}
				} else if m, ok := want[path]; !ok && !licensed("/usr/share/doc/addond-addon-pingsweep", path, e.mode) {
					t.Errorf("unexpected file %s (%s)", path, e.mode)
				} else if ok && e.mode != m {
					t.Errorf("%s: mode %s, want %s", path, e.mode, m)
				}
			}
			for path := range want {
				if _, ok := files[path]; !ok {
					t.Errorf("missing %s", path)
				}
			}
			f := control(t, deb)
			if f["Package"] != "addond-addon-pingsweep" || f["Version"] != pkgVersion || f["Architecture"] != arch || f["Depends"] != "addond" {
				t.Errorf("control: %v", f)
			}
			for m := range controlMembers(t, deb) {
				if m != "control" && m != "md5sums" {
					t.Errorf("control archive member %s: want no maintainer scripts or conffiles", m)
				}
			}
			root := extract(t, deb)
			ef, err := elf.Open(filepath.Join(root, bin))
			if err != nil {
				t.Fatal(err)
			}
			ef.Close()
			if ef.Machine != machines[arch] {
				t.Errorf("%s: machine %v, want %v", bin, ef.Machine, machines[arch])
			}
			readme, err := os.ReadFile(filepath.Join(root, "/usr/share/doc/addond-addon-pingsweep/README"))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{`"delivery": "os_package"`, `"binary_path": "` + bin + `"`, `"addon_id": "pingsweep"`} {
				if !strings.Contains(string(readme), s) {
					t.Errorf("README lacks %s:\n%s", s, readme)
				}
			}
			if strings.Contains(string(readme), "@") {
				t.Errorf("README has an unreplaced @PLACEHOLDER@:\n%s", readme)
			}
		})
	}
	for arch, name := range addonRPMs {
		t.Run("rpm-"+arch, func(t *testing.T) {
			need(t, "rpm")
			rpm := filepath.Join(dir, name)
			if s := strings.TrimSpace(rpmQuery(t, rpm, "--scripts")); s != "" {
				t.Errorf("scriptlets: want none:\n%s", s)
			}
			if r := strings.Fields(rpmQuery(t, rpm, "--requires")); !slices.Contains(r, "addond") {
				t.Errorf("Requires %q lack addond", r)
			}
			listing := rpmQuery(t, rpm, "--qf", `[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]`)
			if !strings.Contains(listing, "-rwxr-xr-x root:root "+bin+"\n") {
				t.Errorf("rpm: %s is not root:root 0755:\n%s", bin, listing)
			}
		})
	}
}

// TestScriptsParse: every maintainer script is valid POSIX sh (dash).
func TestScriptsParse(t *testing.T) {
	scripts, err := filepath.Glob("scripts/*/*")
	if err != nil || len(scripts) != 6 {
		t.Fatalf("scripts: %v %v", scripts, err)
	}
	for _, s := range scripts {
		run(t, "sh", "-n", s)
	}
}
