package delivery

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// safeDir makes a directory that passes CheckInstalled's directory
// checks: every directory up to / owned by root and writable by no one
// else (t.TempDir() is under the world-writable /tmp). Root only.
func safeDir(t testing.TB) string {
	t.Helper()
	for _, parent := range []string{"/run", "/var/lib", "/var/cache", "/opt"} {
		dir, err := os.MkdirTemp(parent, "addond-ospkg-test-")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		os.Chmod(dir, 0o755)
		probe := filepath.Join(dir, "probe")
		os.WriteFile(probe, nil, 0o755)
		_, err = CheckInstalled(probe, "", nil)
		os.Remove(probe)
		if err != nil {
			t.Logf("not in %s: %v", parent, err)
			continue
		}
		return dir
	}
	t.Fatal("no root-owned directory chain (/run, /var/lib, /var/cache, /opt) to create test files in")
	return ""
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkNoBlock runs CheckInstalled, failing the test should it block (a FIFO).
func checkNoBlock(t *testing.T, path, want string, prev *Installed) (Installed, error) {
	t.Helper()
	type result struct {
		in  Installed
		err error
	}
	ch := make(chan result, 1)
	go func() {
		in, err := CheckInstalled(path, want, prev)
		ch <- result{in, err}
	}()
	select {
	case r := <-ch:
		return r.in, r.err
	case <-time.After(5 * time.Second):
		t.Fatalf("CheckInstalled(%s) blocked", path)
		return Installed{}, nil
	}
}

func TestCheckInstalled(t *testing.T) {
	content := []byte("#!/bin/sh\necho installed\n")
	good := sum(content)
	cases := []struct {
		name string
		root bool // needs root: the file must be root-owned to get past the owner check
		// make creates the file to check in dir and returns its path.
		make func(t *testing.T, dir string) string
		sha  string
		want string // "" = accepted
	}{
		{name: "root-owned 0755", root: true, make: file(0o755), want: ""},
		{name: "root-owned 0755 with its sha256", root: true, make: file(0o755), sha: good, want: ""},
		{name: "root-owned 0500", root: true, make: file(0o500), want: ""},
		{name: "sha256 mismatch", root: true, make: file(0o755), sha: strings.Repeat("ab", 32), want: "sha256 is " + good},
		{name: "owned by another uid", root: true, make: chown(file(0o755), 65534, 0), want: "owned by uid 65534, not root"},
		{name: "group-writable", make: file(0o775), want: "writable by its group"},
		{name: "world-writable", make: file(0o757), want: "writable by others"},
		{name: "not executable", make: file(0o644), want: "not executable"},
		{name: "symbolic link to a good file", make: func(t *testing.T, dir string) string {
			target := file(0o755)(t, dir)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, want: "is a symbolic link"},
		{name: "directory", make: func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "bin")
			os.Mkdir(d, 0o755)
			return d
		}, want: "is a directory"},
		{name: "FIFO", make: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "fifo")
			if err := syscall.Mkfifo(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p
		}, want: "named pipe"},
		{name: "missing", make: func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") }, want: "no such file"},
		{name: "directory group-writable", root: true, make: func(t *testing.T, dir string) string {
			sub := filepath.Join(dir, "sub")
			os.Mkdir(sub, 0o775)
			os.Chmod(sub, 0o775)
			return file(0o755)(t, sub)
		}, want: "sub is writable by its group"},
		{name: "directory owned by another uid", root: true, make: func(t *testing.T, dir string) string {
			sub := filepath.Join(dir, "sub")
			os.Mkdir(sub, 0o755)
			p := file(0o755)(t, sub)
			os.Chown(sub, 65534, 65534)
			return p
		}, want: "sub is owned by uid 65534"},
		{name: "through a symlinked directory (merged /usr)", root: true, make: func(t *testing.T, dir string) string {
			sub := filepath.Join(dir, "usr-bin")
			os.Mkdir(sub, 0o755)
			file(0o755)(t, sub)
			os.Symlink("usr-bin", filepath.Join(dir, "bin"))
			return filepath.Join(dir, "bin", "addon")
		}, sha: good, want: ""},
		{name: "through a symlinked directory into /tmp", root: true, make: func(t *testing.T, dir string) string {
			tmp := t.TempDir()
			file(0o755)(t, tmp)
			os.Symlink(tmp, filepath.Join(dir, "bin"))
			return filepath.Join(dir, "bin", "addon")
		}, want: "is writable by others"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var dir string
			if tc.root {
				vmtest.RequireRoot(t, "root-owned files and chown")
				dir = safeDir(t)
			} else {
				dir = t.TempDir()
			}
			path := tc.make(t, dir)
			in, err := checkNoBlock(t, path, tc.sha, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckInstalled: %v", err)
				}
				if in.Path != path || in.SHA256 != tc.sha {
					t.Fatalf("Installed = %+v", in)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) || !errors.Is(err, ErrUnsafeInstall) {
				t.Fatalf("CheckInstalled = %v; want a refusal naming %s and %q", err, path, tc.want)
			}
		})
	}
}

func TestCheckInstalledRelativePath(t *testing.T) {
	for _, p := range []string{"bin/x", "/usr/bin/../x", "/usr/bin/"} {
		if _, err := CheckInstalled(p, "", nil); err == nil || !strings.Contains(err.Error(), "absolute, clean") {
			t.Errorf("CheckInstalled(%q) = %v", p, err)
		}
	}
}

// TestCheckInstalledNoticesReplacement: with the previous result, an
// unchanged file is not hashed again, and a rewritten or replaced one is.
func TestCheckInstalledNoticesReplacement(t *testing.T) {
	vmtest.RequireRoot(t, "root-owned files")
	dir := safeDir(t)
	path := file(0o755)(t, dir)
	content, _ := os.ReadFile(path)
	want := sum(content)
	first, err := CheckInstalled(path, want, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := CheckInstalled(path, want, &first)
	if err != nil || again != first {
		t.Fatalf("unchanged file: %+v, %v; want %+v", again, err, first)
	}
	// Same size, other bytes, written in place: the digest is checked again.
	other := []byte(strings.ToUpper(string(content)))
	if err := os.WriteFile(path, other, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckInstalled(path, want, &first); err == nil || !strings.Contains(err.Error(), "sha256 is "+sum(other)) {
		t.Fatalf("rewritten file: %v, want a sha256 mismatch", err)
	}
	// Replaced by rename (as dpkg does) with a good copy: accepted, and a
	// different file than before.
	tmp := filepath.Join(dir, "addon.new")
	os.WriteFile(tmp, content, 0o755)
	os.Rename(tmp, path)
	replaced, err := CheckInstalled(path, want, &first)
	if err != nil || replaced == first {
		t.Fatalf("replaced file: %+v, %v; want accepted as another file", replaced, err)
	}
	// chmod alone is noticed as well.
	os.Chmod(path, 0o775)
	if _, err := CheckInstalled(path, want, &replaced); err == nil {
		t.Fatal("a file made group-writable was accepted on the strength of the previous check")
	}
}

// file returns a maker of a regular file "addon" with mode (set after
// creation: the umask does not apply).
func file(mode os.FileMode) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "addon")
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho installed\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func chown(make func(*testing.T, string) string, uid, gid int) func(*testing.T, string) string {
	return func(t *testing.T, dir string) string {
		p := make(t, dir)
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
