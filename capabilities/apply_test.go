package capabilities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestApply(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	req := f.staged(t, "pingsweep", "1.0.0")
	req2 := f.staged(t, "pingsweep", "1.1.0")
	f.stage(t, "netmon", "2.1.0+b1", "netmon", f.good)
	runtimeBefore := snapshot(t, f.runtime)

	a, err := f.client().Apply(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(f.priv, "pingsweep", "1.0.0", "pingsweep")
	if a.Path != want || strings.Join(a.Caps, ",") != "cap_net_raw" {
		t.Fatalf("applied %+v, want %s with cap_net_raw", a, want)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
	for _, d := range []string{"pingsweep", "pingsweep/1.0.0"} {
		fi, err := os.Lstat(filepath.Join(f.priv, d))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != os.ModeDir|0o755 || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("privileged %s: %v %d:%d, want drwxr-xr-x root:root", d, fi.Mode(), st.Uid, st.Gid)
		}
	}
	sameSnapshot(t, runtimeBefore, snapshot(t, f.runtime)) // the agent's tree is only read

	// Idempotent: the same request again leaves one copy, no temp file.
	again, err := f.client().Apply(ctx, req)
	if err != nil {
		t.Fatalf("applying twice: %v", err)
	}
	if again.Path != a.Path {
		t.Fatalf("second apply made %s, first %s", again.Path, a.Path)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
	entries, err := os.ReadDir(filepath.Dir(a.Path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if fmt.Sprint(names) != "[.package.json .package.json.sig pingsweep]" {
		t.Fatalf("version directory holds %q, want the copy and the signed package that authorized it", names)
	}

	// A subset of what the package grants; and the package's whole grant
	// by default.
	both := f.pkg("netmon", "2.1.0+b1", "netmon", f.good, "CAP_NET_ADMIN", "net_raw")
	a2, err := f.client().Apply(ctx, f.request(t, both, "netmon", "cap_net_raw"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkCopy(t, a2.Path, f.good, Set(0).Add(capNetRaw))
	a2, err = f.client().Apply(ctx, f.request(t, both, "netmon"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkCopy(t, a2.Path, f.good, Set(0).Add(capNetRaw).Add(capNetAdmin))
	if got := strings.Join(a2.Caps, ","); got != "cap_net_admin,cap_net_raw" {
		t.Errorf("applied caps %q", got)
	}
	// Another version beside the first.
	if _, err := f.client().Apply(ctx, req2); err != nil {
		t.Fatal(err)
	}

	// Remove one version, then all of an add-on; removing what is not
	// there is no error.
	if err := f.client().Remove(ctx, "pingsweep", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(f.priv, "pingsweep", "1.0.0")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed version still there: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(f.priv, "pingsweep", "1.1.0", "pingsweep")); err != nil {
		t.Fatalf("removing 1.0.0 removed 1.1.0: %v", err)
	}
	if err := f.client().Remove(ctx, "pingsweep", ""); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(f.priv, "pingsweep")); len(left) != 1 || left[0].Name() != ".floor" {
		t.Fatalf("removed add-on left %v, want its version floor alone", left)
	}
	if _, err := os.Lstat(filepath.Join(f.priv, "netmon", "2.1.0+b1", "netmon")); err != nil {
		t.Fatalf("removing pingsweep removed netmon: %v", err)
	}
	if err := f.client().Remove(ctx, "never-applied", "9"); err != nil {
		t.Fatalf("removing what is not there: %v", err)
	}
	sameSnapshot(t, runtimeBefore, snapshot(t, f.runtime))
}

// Requests for the same copy at once all succeed and leave one copy.
func TestApplyConcurrent(t *testing.T) {
	f := newFixture(t)
	req := f.staged(t, "conc", "1.0.0")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := f.client().Apply(context.Background(), req)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(f.priv, "conc", "1.0.0"))
	if err != nil || len(entries) != 3 { // the copy, its package and signature
		t.Fatalf("after concurrent applies: %v %v", entries, err)
	}
	f.checkCopy(t, filepath.Join(f.priv, "conc", "1.0.0", "pingsweep"), f.good, Set(0).Add(capNetRaw))
}

// The privileged tree is made when missing, root's and 0755.
func TestApplyCreatesPrivilegedRoot(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg
	cfg.PrivilegedRoot = filepath.Join(f.base, "fresh")
	a, err := Apply(cfg, f.staged(t, "pingsweep", "1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
	fi, err := os.Lstat(cfg.PrivilegedRoot)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != os.ModeDir|0o755 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("new privileged root: %v uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}
}

// A file name as long as the helper accepts still gets its copy (the
// temporary name beside it must fit in NAME_MAX too).
func TestApplyLongFileName(t *testing.T) {
	f := newFixture(t)
	name := strings.Repeat("n", 255)
	f.stage(t, "longname", "1.0.0", name, f.good)
	a, err := f.client().Apply(context.Background(), f.request(t, f.pkg("longname", "1.0.0", name, f.good, "cap_net_raw"), name))
	if err != nil {
		t.Fatal(err)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
}

// The package's sha256 may be written in upper case: it is hex all the
// same, and addond accepts it.
func TestApplyUpperCaseDigest(t *testing.T) {
	f := newFixture(t)
	f.stage(t, "upper", "1.0.0", "upper", f.good)
	p := f.pkg("upper", "1.0.0", "upper", f.good, "cap_net_raw")
	art := p.Artifacts[platform]
	art.SHA256 = strings.ToUpper(art.SHA256)
	p.Artifacts[platform] = art
	a, err := f.client().Apply(context.Background(), f.request(t, p, "upper"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
}

func TestApplyRefusesTraversal(t *testing.T) {
	f := newFixture(t)
	// Each bad name is staged where the path it spells leads, with a
	// package signed for exactly that name: only the name check stands
	// between the request and a copy.
	f.stage(t, "trav", "1.0.0", "pingsweep", f.good)
	f.agentFile(t, filepath.Join(f.runtime, "addons", "trav", "pingsweep"), f.good)
	f.stage(t, "trav", "a/b", "pingsweep", f.good)
	f.agentFile(t, filepath.Join(f.outside, "pingsweep"), f.good)

	for _, tc := range []struct{ id, version, file, want string }{
		{"../x", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"..", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"a/b", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"/abs", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"Trav", "1.0.0", "pingsweep", "not a valid add-on id"},
		{"trav", "..", "pingsweep", "is a relative directory name"},
		{"trav", ".", "pingsweep", "is a relative directory name"},
		{"trav", "../x", "pingsweep", "starts with ."},
		{"trav", "a/b", "pingsweep", `contains '/'`},
		{"trav", "/abs", "pingsweep", `contains '/'`},
		{"trav", "", "pingsweep", "empty"},
		{"trav", "1.0.0\x00", "pingsweep", `contains '\x00'`},
		{"trav", "-rf", "pingsweep", "starts with -"},
		{"trav", "1.0.0", "../pingsweep", "starts with ."},
		{"trav", "1.0.0", "..", "is a relative directory name"},
		{"trav", "1.0.0", "a/b", `contains '/'`},
		{"trav", "1.0.0", filepath.Join(f.outside, "pingsweep"), `contains '/'`},
		{"trav", "1.0.0", "", "empty"},
		{"trav", "1.0.0", strings.Repeat("x", 256), "longer than 255"},
		{"trav", "1.0.0", "ping\nsweep", `contains '\n'`},
	} {
		t.Run(tc.id+"|"+tc.version+"|"+tc.file, func(t *testing.T) {
			p := f.pkg(tc.id, tc.version, tc.file, f.good, "cap_net_raw")
			f.refused(t, f.request(t, p, tc.file), tc.want)
		})
	}
	t.Run("remove", func(t *testing.T) {
		if _, err := f.client().Apply(context.Background(), f.staged(t, "victim", "1.0.0")); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, f.base)
		for _, tc := range []struct{ id, version, want string }{
			{"..", "", "not a valid add-on id"},
			{"../priv", "", "not a valid add-on id"},
			{"", "", "not a valid add-on id"},
			{"victim", "..", "is a relative directory name"},
			{"victim", "../victim", "starts with ."},
			{"victim", "/", `contains '/'`},
		} {
			err := f.client().Remove(context.Background(), tc.id, tc.version)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("remove %q %q: %v, want a refusal naming %q", tc.id, tc.version, err, tc.want)
			}
		}
		sameSnapshot(t, before, snapshot(t, f.base))
		f.control(t)
	})
}

func TestApplyRefusesLinks(t *testing.T) {
	f := newFixture(t)
	// Everything an attacker points at is itself a perfect staging of the
	// signed bytes, owned by the agent: only the link checks refuse.
	legit := filepath.Join(f.outside, "legit")
	f.agentDir(t, legit)
	f.agentFile(t, filepath.Join(legit, "pingsweep"), f.good)
	legitTree := filepath.Join(f.outside, "tree")
	f.agentDir(t, legitTree)
	f.agentDir(t, filepath.Join(legitTree, "versions"))
	f.agentDir(t, filepath.Join(legitTree, "versions", "1.0.0"))
	f.agentFile(t, filepath.Join(legitTree, "versions", "1.0.0", "pingsweep"), f.good)

	replace := func(t *testing.T, path, target string) {
		t.Helper()
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(path, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("file is a symlink", func(t *testing.T) {
		req := f.staged(t, "l1", "1.0.0")
		replace(t, filepath.Join(f.versionDir("l1", "1.0.0"), "pingsweep"), filepath.Join(legit, "pingsweep"))
		f.refused(t, req, "not a regular file")
	})
	t.Run("file is a relative symlink", func(t *testing.T) {
		req := f.staged(t, "l2", "1.0.0")
		f.agentFile(t, filepath.Join(f.versionDir("l2", "1.0.0"), "real"), f.good)
		replace(t, filepath.Join(f.versionDir("l2", "1.0.0"), "pingsweep"), "real")
		f.refused(t, req, "not a regular file")
	})
	t.Run("version dir is a symlink", func(t *testing.T) {
		req := f.staged(t, "l3", "1.0.0")
		replace(t, f.versionDir("l3", "1.0.0"), legit)
		f.refused(t, req, "a symbolic link on the way")
	})
	t.Run("addon dir is a symlink", func(t *testing.T) {
		req := f.staged(t, "l4", "1.0.0")
		replace(t, filepath.Join(f.runtime, "addons", "l4"), legitTree)
		f.refused(t, req, "a symbolic link on the way")
	})
	t.Run("versions dir is a relative symlink", func(t *testing.T) {
		req := f.staged(t, "l5", "1.0.0")
		f.agentDir(t, filepath.Join(f.runtime, "addons", "l5", "elsewhere"))
		f.agentDir(t, filepath.Join(f.runtime, "addons", "l5", "elsewhere", "1.0.0"))
		f.agentFile(t, filepath.Join(f.runtime, "addons", "l5", "elsewhere", "1.0.0", "pingsweep"), f.good)
		replace(t, filepath.Join(f.runtime, "addons", "l5", "versions"), "elsewhere")
		f.refused(t, req, "a symbolic link on the way")
	})
	t.Run("swapped after the request was made", func(t *testing.T) {
		// The agent asks while the file is fine, and swaps it before the
		// helper opens it.
		req := f.staged(t, "l6", "1.0.0")
		if _, err := Apply(f.cfg, req); err != nil {
			t.Fatalf("the unswapped request: %v", err)
		}
		if err := f.client().Remove(context.Background(), "l6", ""); err != nil {
			t.Fatal(err)
		}
		replace(t, f.versionDir("l6", "1.0.0"), legit)
		f.refused(t, req, "a symbolic link on the way", "priv/l6")
	})
	t.Run("hard link to a root binary", func(t *testing.T) {
		req := f.staged(t, "l7", "1.0.0")
		staged := filepath.Join(f.versionDir("l7", "1.0.0"), "pingsweep")
		os.Remove(staged)
		if err := os.Link("/usr/bin/true", staged); err != nil {
			// Another file system: a root-owned binary on this one.
			t.Logf("linking /usr/bin/true: %v; linking a root-owned copy instead", err)
			rootBin := filepath.Join(f.outside, "root-true")
			if err := os.WriteFile(rootBin, f.evil, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(rootBin, staged); err != nil {
				t.Fatal(err)
			}
		}
		f.refused(t, req, "hard links")
	})
	t.Run("hard link to the agent's own file", func(t *testing.T) {
		req := f.staged(t, "l8", "1.0.0")
		if err := os.Link(filepath.Join(f.versionDir("l8", "1.0.0"), "pingsweep"), filepath.Join(f.outside, "l8-link")); err != nil {
			t.Fatal(err)
		}
		f.refused(t, req, "2 hard links")
	})
	t.Run("a file not the agent's", func(t *testing.T) {
		req := f.staged(t, "l9", "1.0.0")
		if err := os.Chown(filepath.Join(f.versionDir("l9", "1.0.0"), "pingsweep"), 0, 0); err != nil {
			t.Fatal(err)
		}
		f.refused(t, req, "owned by uid 0, not the agent")
	})
	t.Run("magic link", func(t *testing.T) {
		// /proc/self/root leads back to / through a magic link.
		req := f.staged(t, "l10", "1.0.0")
		replace(t, filepath.Join(f.runtime, "addons", "l10"), "/proc/self/root"+legitTree)
		f.refused(t, req, "a symbolic link on the way")
	})
}

// A goroutine flips a directory on the staged file's path between the
// real one and a symbolic link to other bytes while the helper applies
// again and again: every call succeeds with the signed bytes or refuses
// for the link — it never reads the other file (which a sha256 refusal
// would show).
func TestApplyRace(t *testing.T) {
	f := newFixture(t)
	// The other bytes sit inside the runtime root, reached by relative
	// links: resolving beneath the root alone would not stop them.
	evil := filepath.Join(f.runtime, "evil")
	f.agentDir(t, evil)
	evilDir := filepath.Join(evil, "dir")
	f.agentDir(t, evilDir)
	f.agentFile(t, filepath.Join(evilDir, "pingsweep"), f.evil)
	evilTree := filepath.Join(evil, "tree")
	f.agentDir(t, evilTree)
	f.agentDir(t, filepath.Join(evilTree, "versions"))
	f.agentDir(t, filepath.Join(evilTree, "versions", "1.0.0"))
	f.agentFile(t, filepath.Join(evilTree, "versions", "1.0.0", "pingsweep"), f.evil)

	for _, tc := range []struct{ name, id, flip, target string }{
		{"version dir", "race1", "addons/race1/versions/1.0.0", evilDir},
		{"addon dir", "race2", "addons/race2", evilTree},
		{"file", "race3", "addons/race3/versions/1.0.0/pingsweep", filepath.Join(evilDir, "pingsweep")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := f.staged(t, tc.id, "1.0.0")
			outsideBefore := snapshot(t, evil)
			flip := filepath.Join(f.runtime, tc.flip)
			alt := flip + ".alt"
			target, err := filepath.Rel(filepath.Dir(alt), tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, alt); err != nil {
				t.Fatal(err)
			}
			var stop atomic.Bool
			var wg sync.WaitGroup
			var flips atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					if err := unix.Renameat2(unix.AT_FDCWD, flip, unix.AT_FDCWD, alt, unix.RENAME_EXCHANGE); err != nil {
						t.Errorf("exchange: %v", err)
						return
					}
					flips.Add(1)
				}
			}()
			stopFlips := sync.OnceFunc(func() { stop.Store(true); wg.Wait() })
			defer stopFlips() // also when the test fails
			var ok, refused int
			deadline := time.Now().Add(20 * time.Second)
			for i := 0; i < 300 && time.Now().Before(deadline); i++ {
				a, err := Apply(f.cfg, req)
				if err != nil {
					if strings.Contains(err.Error(), "sha256") || !(strings.Contains(err.Error(), "symbolic link") || strings.Contains(err.Error(), "not a regular file")) {
						t.Fatalf("call %d: refused for another reason than the link: %v", i, err)
					}
					refused++
					continue
				}
				ok++
				data, err := os.ReadFile(a.Path)
				if err != nil {
					t.Fatal(err)
				}
				if string(data) != string(f.good) {
					t.Fatalf("call %d: the copy is not the signed bytes", i)
				}
			}
			stopFlips()
			t.Logf("%d flips: %d copies, %d refusals", flips.Load(), ok, refused)
			if ok+refused == 0 {
				t.Fatal("no call ran")
			}
			if flips.Load() < 10 {
				t.Fatalf("only %d flips: the race was not exercised", flips.Load())
			}
			// The other bytes are untouched; the privileged tree holds the
			// signed copy alone (or nothing), no temporary file.
			sameSnapshot(t, outsideBefore, snapshot(t, evil))
			var found []string
			filepath.WalkDir(filepath.Join(f.priv, tc.id), func(path string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					found = append(found, path)
				}
				return nil
			})
			// With a copy: it, the signed package beside it, and the
			// add-on's version floor.
			want := []string{
				filepath.Join(f.priv, tc.id, ".floor"),
				filepath.Join(f.priv, tc.id, "1.0.0", ".package.json"),
				filepath.Join(f.priv, tc.id, "1.0.0", ".package.json.sig"),
				filepath.Join(f.priv, tc.id, "1.0.0", "pingsweep"),
			}
			if ok > 0 && !slices.Equal(found, want) || ok == 0 && len(found) != 0 {
				t.Fatalf("privileged tree after the race: %q", found)
			}
			if ok > 0 {
				f.checkCopy(t, want[3], f.good, Set(0).Add(capNetRaw))
			}
			f.control(t)
		})
	}
}

// A FIFO or a device in the file's place is refused at once: nothing
// blocks, no device is opened.
func TestApplyRefusesSpecialFiles(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		make func(path string) error
	}{
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o644) }},
		{"char device", func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) }},
		{"block device", func(p string) error { return unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"socket", func(p string) error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Bind(fd, &unix.SockaddrUnix{Name: p})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "special-" + strings.ReplaceAll(tc.name, " ", "-")
			req := f.staged(t, id, "1.0.0")
			staged := filepath.Join(f.versionDir(id, "1.0.0"), "pingsweep")
			os.Remove(staged)
			if err := tc.make(staged); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(staged, f.uid, f.gid); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := Apply(f.cfg, req); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "not a regular file") {
					t.Fatalf("Apply: %v, want a refusal: not a regular file", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Apply blocked on the special file")
			}
			f.refused(t, req, "not a regular file") // and through the server
		})
	}
}

func TestApplyRefusesBadPackages(t *testing.T) {
	f := newFixture(t)
	_, otherKey := newKey(t)
	ctx := context.Background()

	t.Run("sha256 mismatch", func(t *testing.T) {
		f.stage(t, "sha", "1.0.0", "pingsweep", f.evil)
		req := f.request(t, f.pkg("sha", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep")
		// The version directory is made before the bytes can be known
		// wrong (they are hashed as they are copied); no file is left.
		f.refused(t, req, "is not the signed package's", "priv/sha", "priv/sha/1.0.0")
	})
	t.Run("sha256 mismatch keeps the existing copy", func(t *testing.T) {
		req := f.staged(t, "sha2", "1.0.0")
		if _, err := f.client().Apply(ctx, req); err != nil {
			t.Fatal(err)
		}
		f.agentFile(t, filepath.Join(f.versionDir("sha2", "1.0.0"), "pingsweep"), f.evil)
		f.refused(t, req, "is not the signed package's")
		f.checkCopy(t, filepath.Join(f.priv, "sha2", "1.0.0", "pingsweep"), f.good, Set(0).Add(capNetRaw))
	})
	t.Run("truncated file", func(t *testing.T) {
		f.stage(t, "short", "1.0.0", "pingsweep", f.good[:len(f.good)-1])
		f.refused(t, f.request(t, f.pkg("short", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep"), "is not the signed package's", "priv/short", "priv/short/1.0.0")
	})
	t.Run("longer file", func(t *testing.T) {
		f.stage(t, "long", "1.0.0", "pingsweep", append(append([]byte{}, f.good...), 0))
		f.refused(t, f.request(t, f.pkg("long", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep"), "is not the signed package's", "priv/long", "priv/long/1.0.0")
	})
	t.Run("unknown key", func(t *testing.T) {
		f.stage(t, "unknown", "1.0.0", "pingsweep", f.good)
		raw, sig := signed(t, f.pkg("unknown", "1.0.0", "pingsweep", f.good, "cap_net_raw"), otherKey)
		f.refused(t, ApplyRequest{AddonID: "unknown", Version: "1.0.0", File: "pingsweep", Package: raw, Signature: sig}, "does not verify under any trusted key")
	})
	t.Run("altered after signing", func(t *testing.T) {
		f.stage(t, "altered", "1.0.0", "pingsweep", f.good)
		req := f.request(t, f.pkg("altered", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep")
		req.Package = []byte(strings.Replace(string(req.Package), `"cap_net_raw"`, `"cap_sys_admin"`, 1))
		f.refused(t, req, "does not verify under any trusted key")
		req = f.request(t, f.pkg("altered", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep")
		req.Package = append(req.Package, ' ')
		f.refused(t, req, "does not verify under any trusted key")
	})
	t.Run("bad signature line", func(t *testing.T) {
		req := f.staged(t, "badsig", "1.0.0")
		for _, sig := range []string{"", "zz", strings.Repeat("0", 128), req.Signature[:126], req.Signature + "00"} {
			r := req
			r.Signature = sig
			f.refused(t, r, "package.json")
		}
	})
	t.Run("package for another add-on", func(t *testing.T) {
		f.stage(t, "mine", "1.0.0", "pingsweep", f.good)
		p := f.pkg("theirs", "1.0.0", "pingsweep", f.good, "cap_net_raw")
		req := f.request(t, p, "pingsweep")
		req.AddonID = "mine"
		f.refused(t, req, `the signed package is "theirs" version "1.0.0", not this add-on and version`)
	})
	t.Run("package for another version", func(t *testing.T) {
		f.stage(t, "ver", "2.0.0", "pingsweep", f.good)
		req := f.request(t, f.pkg("ver", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep")
		req.Version = "2.0.0"
		f.refused(t, req, "not this add-on and version")
	})
	t.Run("another binary name", func(t *testing.T) {
		f.stage(t, "name", "1.0.0", "other", f.good)
		f.refused(t, f.request(t, f.pkg("name", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "other"), `the signed package's binary is "pingsweep", not "other"`)
	})
	t.Run("no artifact for the platform", func(t *testing.T) {
		req := f.staged(t, "plat", "1.0.0")
		req.Platform = "plan9/mips"
		f.refused(t, req, "platform plan9/mips is not this host's")
	})
	t.Run("not a sha256", func(t *testing.T) {
		f.stage(t, "nosha", "1.0.0", "pingsweep", f.good)
		p := f.pkg("nosha", "1.0.0", "pingsweep", f.good, "cap_net_raw")
		art := p.Artifacts[platform]
		art.SHA256 = art.SHA256[:60]
		p.Artifacts[platform] = art
		f.refused(t, f.request(t, p, "pingsweep"), "is not a SHA-256")
	})
	t.Run("not JSON", func(t *testing.T) {
		raw := []byte(`{"addon_id": "json", "version": `)
		f.refused(t, ApplyRequest{AddonID: "json", Version: "1.0.0", File: "pingsweep", Package: raw, Signature: sign(f.key, raw)}, "package.json")
	})
}

func TestApplyRefusesCapabilities(t *testing.T) {
	f := newFixture(t)
	t.Run("not granted by the package", func(t *testing.T) {
		f.stage(t, "c1", "1.0.0", "pingsweep", f.good)
		f.refused(t, f.request(t, f.pkg("c1", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep", "cap_net_admin"),
			`cap_net_admin not granted by the signed package (it grants "cap_net_raw")`)
		f.refused(t, f.request(t, f.pkg("c1", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep", "cap_net_raw", "cap_bpf"),
			"cap_bpf not granted by the signed package")
	})
	t.Run("not in the policy", func(t *testing.T) {
		f.stage(t, "c2", "1.0.0", "pingsweep", f.good)
		f.refused(t, f.request(t, f.pkg("c2", "1.0.0", "pingsweep", f.good, "cap_net_raw", "cap_sys_admin"), "pingsweep", "cap_sys_admin"),
			"cap_sys_admin not allowed by the policy")
		// By default the whole grant is asked for: refused, not trimmed.
		f.refused(t, f.request(t, f.pkg("c2", "1.0.0", "pingsweep", f.good, "cap_net_raw", "cap_setuid"), "pingsweep"),
			"cap_setuid not allowed by the policy")
	})
	t.Run("unknown in the request", func(t *testing.T) {
		f.stage(t, "c3", "1.0.0", "pingsweep", f.good)
		f.refused(t, f.request(t, f.pkg("c3", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep", "cap_flying"), `unknown capability "cap_flying"`)
		f.refused(t, f.request(t, f.pkg("c3", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep", "cap_41"), `unknown capability "cap_41"`)
	})
	t.Run("unknown in the package", func(t *testing.T) {
		f.stage(t, "c4", "1.0.0", "pingsweep", f.good)
		f.refused(t, f.request(t, f.pkg("c4", "1.0.0", "pingsweep", f.good, "cap_net_raw", "cap_flying"), "pingsweep", "cap_net_raw"),
			`the signed package's os_capabilities: unknown capability "cap_flying"`)
	})
	t.Run("nothing granted", func(t *testing.T) {
		f.stage(t, "c5", "1.0.0", "pingsweep", f.good)
		f.refused(t, f.request(t, f.pkg("c5", "1.0.0", "pingsweep", f.good), "pingsweep"), "no capabilities to grant")
	})
}

// The helper's own configuration — keys, policy, privileged tree — must be
// root's alone; otherwise nothing is applied.
func TestApplyRefusesUntrustedConfig(t *testing.T) {
	f := newFixture(t)
	req := f.staged(t, "cfg", "1.0.0")
	setMode := func(t *testing.T, path string, mode os.FileMode) func() {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return func() { os.Chmod(path, fi.Mode().Perm()) }
	}
	setOwner := func(t *testing.T, path string, uid, gid int) func() {
		t.Helper()
		if err := os.Lchown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
		return func() { os.Lchown(path, 0, 0) }
	}
	t.Run("key writable by group", func(t *testing.T) {
		f.refusedWhile(t, req, "writable by group or others", setMode(t, f.keyFile, 0o664))
	})
	t.Run("key writable by others", func(t *testing.T) {
		f.refusedWhile(t, req, "writable by group or others", setMode(t, f.keyFile, 0o646))
	})
	t.Run("key not root's", func(t *testing.T) {
		f.refusedWhile(t, req, "not owned by root", setOwner(t, f.keyFile, f.uid, f.gid))
	})
	t.Run("trust dir writable by group", func(t *testing.T) {
		f.refusedWhile(t, req, "writable by group or others", setMode(t, f.trust, 0o775))
	})
	t.Run("trust dir not root's", func(t *testing.T) {
		f.refusedWhile(t, req, "not owned by root", setOwner(t, f.trust, f.uid, f.gid))
	})
	t.Run("a second key file not root's", func(t *testing.T) {
		// One bad key spoils the whole directory, even though the good
		// key signs the package.
		extra := filepath.Join(f.trust, "extra.pem")
		pub, _ := newKey(t)
		f.writeKey(t, extra, pub)
		setOwner(t, extra, f.uid, f.gid)
		f.refusedWhile(t, req, "not owned by root", func() { os.Remove(extra) })
	})
	t.Run("key is a symlink", func(t *testing.T) {
		link := filepath.Join(f.trust, "link.pem")
		if err := os.Symlink(f.keyFile, link); err != nil {
			t.Fatal(err)
		}
		f.refusedWhile(t, req, "too many levels of symbolic links", func() { os.Remove(link) })
	})
	t.Run("policy writable by group", func(t *testing.T) {
		f.refusedWhile(t, req, "writable by group or others", setMode(t, f.policy, 0o664))
	})
	t.Run("policy not root's", func(t *testing.T) {
		f.refusedWhile(t, req, "not owned by root", setOwner(t, f.policy, f.uid, f.gid))
	})
	t.Run("policy is a symlink", func(t *testing.T) {
		moved := f.policy + ".real"
		if err := os.Rename(f.policy, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(moved, f.policy); err != nil {
			t.Fatal(err)
		}
		f.refusedWhile(t, req, "too many levels of symbolic links", func() { os.Remove(f.policy); os.Rename(moved, f.policy) })
	})
	t.Run("privileged tree not root's", func(t *testing.T) {
		f.refusedWhile(t, req, "not owned by root", setOwner(t, f.priv, f.uid, f.gid))
	})
	t.Run("privileged tree writable by group", func(t *testing.T) {
		f.refusedWhile(t, req, "writable by group or others", setMode(t, f.priv, 0o775))
	})
	t.Run("privileged add-on dir writable by others", func(t *testing.T) {
		d := filepath.Join(f.priv, "cfg")
		if err := os.Mkdir(d, 0o757); err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o757)
		f.refusedWhile(t, req, "writable by group or others", func() { os.RemoveAll(d) })
	})
	t.Run("privileged version dir is a symlink", func(t *testing.T) {
		d := filepath.Join(f.priv, "cfg")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(f.outside, filepath.Join(d, "1.0.0")); err != nil {
			t.Fatal(err)
		}
		f.refusedWhile(t, req, "is not a directory", func() { os.RemoveAll(d) })
	})
	t.Run("agent user is missing", func(t *testing.T) {
		cfg := f.cfg
		cfg.AgentUser = "addond-capt-nosuchuser"
		before := snapshot(t, f.base)
		if _, err := Apply(cfg, req); err == nil || !strings.Contains(err.Error(), `agent user "addond-capt-nosuchuser"`) {
			t.Fatalf("Apply: %v", err)
		}
		sameSnapshot(t, before, snapshot(t, f.base))
	})
	t.Run("agent user is root", func(t *testing.T) {
		cfg := f.cfg
		cfg.AgentUser = "root"
		if _, err := Apply(cfg, req); err == nil || !strings.Contains(err.Error(), "is root") {
			t.Fatalf("Apply: %v", err)
		}
	})
	// Everything restored: the request goes through.
	a, err := f.client().Apply(context.Background(), req)
	if err != nil {
		t.Fatalf("after the configuration was restored: %v", err)
	}
	f.checkCopy(t, a.Path, f.good, Set(0).Add(capNetRaw))
}

// refusedWhile checks a refusal for a configuration that restore puts
// right: nothing changed, the helper still answers, and once restored a
// good request succeeds.
func (f *fixture) refusedWhile(t *testing.T, req ApplyRequest, want string, restore func()) {
	t.Helper()
	restore = sync.OnceFunc(restore)
	defer restore()
	before := snapshot(t, f.base)
	_, err := f.client().Apply(context.Background(), req)
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), want) {
		t.Fatalf("apply: %v, want a refusal naming %q", err, want)
	}
	t.Logf("refused: %v", err)
	sameSnapshot(t, before, snapshot(t, f.base))
	if v, p, err := f.client().Ping(context.Background()); err != nil || p != Protocol {
		t.Fatalf("ping after the refusal: %q %d %v", v, p, err)
	}
	restore()
	f.control(t)
}

// A privileged tree on a nosuid mount would give copies whose capabilities
// the kernel ignores: refused, naming the reason.
func TestApplyRefusesNosuid(t *testing.T) {
	f := newFixture(t)
	mnt := filepath.Join(f.base, "nosuid")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=0755,size=16m", "capt-nosuid", mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	cfg := f.cfg
	cfg.PrivilegedRoot = filepath.Join(mnt, "priv")
	if err := os.Mkdir(cfg.PrivilegedRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	req := f.staged(t, "nosuid", "1.0.0")
	before := snapshot(t, f.base)
	_, err := Apply(cfg, req)
	if err == nil || !strings.Contains(err.Error(), "is on a nosuid mount") {
		t.Fatalf("Apply: %v, want a refusal naming the nosuid mount", err)
	}
	sameSnapshot(t, before, snapshot(t, f.base))
	if err := Remove(cfg, "nosuid", ""); err == nil || !strings.Contains(err.Error(), "nosuid") {
		t.Fatalf("Remove: %v", err)
	}
	// The mount point itself as the privileged tree.
	cfg.PrivilegedRoot = mnt
	if _, err := Apply(cfg, req); err == nil || !strings.Contains(err.Error(), "is on a nosuid mount") {
		t.Fatalf("Apply: %v, want a refusal naming the nosuid mount", err)
	}
	sameSnapshot(t, before, snapshot(t, f.base))
	f.control(t)
}

// TestVersionFloor: the helper keeps, per add-on, the highest version it
// capped; a lower one needs allow_downgrade in its signed package — a
// compromised addond cannot get an older, vulnerable version capped again.
func TestVersionFloor(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.client().Apply(ctx, f.staged(t, "floor", "1.1.0")); err != nil {
		t.Fatal(err)
	}
	f.refused(t, f.staged(t, "floor", "1.0.0"), "lower than 1.1.0, the highest capped before")
	old := f.pkg("floor", "1.0.0", "pingsweep", f.good, "cap_net_raw")
	old.AllowDowngrade = true
	raw, sig := signed(t, old, f.key)
	if _, err := f.client().Apply(ctx, ApplyRequest{AddonID: "floor", Version: "1.0.0", File: "pingsweep", Package: raw, Signature: sig}); err != nil {
		t.Fatalf("a downgrade its signed package allows: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.priv, "floor", ".floor")); string(b) != "1.1.0\n" {
		t.Fatalf("floor %q after a downgrade, want still 1.1.0", b)
	}
	// A version whose copy is still held (a last-known-good, asked for
	// again after a reboot) is no downgrade; once its copy is gone, it is.
	if _, err := f.client().Apply(ctx, f.staged(t, "floor", "1.2.0")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client().Apply(ctx, f.staged(t, "floor", "1.1.0")); err != nil {
		t.Fatalf("the held copy of 1.1.0 below the floor 1.2.0: %v", err)
	}
	if err := f.client().Remove(ctx, "floor", "1.1.0"); err != nil {
		t.Fatal(err)
	}
	f.refused(t, f.staged(t, "floor", "1.1.0"), "lower than 1.2.0, the highest capped before")
	// Removing every copy of the add-on keeps its floor.
	if err := f.client().Remove(ctx, "floor", ""); err != nil {
		t.Fatal(err)
	}
	f.refused(t, f.staged(t, "floor", "1.0.1"), "lower than 1.2.0, the highest capped before")
	// Versions without an order (not both semantic) pass.
	if _, err := f.client().Apply(ctx, f.staged(t, "floor", "nightly")); err != nil {
		t.Fatalf("a version with no order: %v", err)
	}
}

// TestRevalidate: a grant lasts as long as trust and policy allow it. A
// removed key, a key scoped away from the add-on or the capability, a
// narrowed policy, or a copy without the signed package that authorized it
// — each removes the copy at the next apply (or helper start), naming why;
// what is still allowed stays.
func TestRevalidate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	keep, err := f.client().Apply(ctx, f.staged(t, "keep", "1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey := newKey(t)
	otherFile := filepath.Join(f.trust, "other.pem")
	f.writeKey(t, otherFile, other)
	// Copies signed by the other key: one for each way a grant ends.
	apply := func(id string, caps ...string) string {
		t.Helper()
		f.stage(t, id, "1.0.0", "pingsweep", f.good)
		raw, sig := signed(t, f.pkg(id, "1.0.0", "pingsweep", f.good, caps...), otherKey)
		a, err := f.client().Apply(ctx, ApplyRequest{AddonID: id, Version: "1.0.0", File: "pingsweep", Package: raw, Signature: sig})
		if err != nil {
			t.Fatal(err)
		}
		return a.Path
	}
	scoped := apply("scoped", "cap_net_raw")
	scopedCap := apply("scopedcap", "cap_net_raw", "cap_net_admin")
	removedKey := apply("byother", "cap_net_raw")
	policy := apply("policy", "cap_net_admin")
	unrecorded := apply("unrecorded", "cap_net_raw")
	os.Remove(filepath.Join(filepath.Dir(unrecorded), ".package.json.sig"))

	// other.pem scoped to "scoped" and "scopedcap", cap_net_raw only.
	os.WriteFile(filepath.Join(f.trust, "other.scope"), []byte(`{"addons":["scoped","scopedcap","byother"],"capabilities":["cap_net_raw"]}`), 0o644)
	revoked, err := Revalidate(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range revoked {
		got[r.AddonID] = r.Reason
	}
	want := map[string]string{
		"scopedcap":  "scoped to cap_net_raw: cap_net_admin not granted",
		"unrecorded": "no signature recorded",
	}
	for id, why := range want {
		if !strings.Contains(got[id], why) {
			t.Errorf("%s: revoked for %q, want %q", id, got[id], why)
		}
	}
	// Then the key itself goes, and the policy narrows.
	os.Remove(otherFile)
	os.Remove(filepath.Join(f.trust, "other.scope"))
	os.WriteFile(f.policy, []byte("cap_net_raw\n"), 0o644)
	if _, err := f.client().Apply(ctx, f.staged(t, "next", "1.0.0")); err != nil {
		t.Fatal(err)
	}
	for path, what := range map[string]string{scoped: "signed by a removed key", scopedCap: "scoped away", removedKey: "signed by a removed key", policy: "cap_net_admin, now outside the policy", unrecorded: "without its signed package"} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("the copy %s (%s) is still there: %v", path, what, err)
		}
	}
	f.checkCopy(t, keep.Path, f.good, Set(0).Add(capNetRaw))
	for _, id := range []string{"scoped", "policy"} {
		if _, err := os.Stat(filepath.Join(f.priv, id, ".floor")); err != nil {
			t.Errorf("%s's version floor went with its copy: %v", id, err)
		}
	}
	// A start of a revoked version says why it was revoked.
	s := &Server{Config: f.cfg}
	_, err = s.Start(ctx, StartRequest{AddonID: "policy", Version: "1.0.0", File: "pingsweep", Description: "addond add-on policy 1.0.0 [0f]",
		Restart: &Restart{Delay: time.Second, Interval: time.Minute, Burst: 5}})
	if err == nil || !strings.Contains(err.Error(), "its copy was revoked: key other.pem is scoped to add-ons") {
		t.Errorf("start of the revoked version: %v", err)
	}
}
