package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, content := range []string{"one", "two, longer", ""} {
		if err := Write(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("Write(%q): read back %q, %v", content, got, err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
			t.Fatalf("mode %v under umask 077, want 0644", fi.Mode().Perm())
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d entries left in the directory, want the file alone", len(ents))
	}
}

// TestWriteRefusesLeavesNothing: a target in a directory that does not
// exist, and a target that is a directory, are refused, and nothing is
// written or left behind.
func TestWriteRefusesLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote into a directory that does not exist")
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "keep"), []byte("kept"), 0o600)
	if err := Write(sub, []byte("x"), 0o600); err == nil {
		t.Fatal("replaced a non-empty directory")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "sub" {
		t.Fatalf("left %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(sub, "keep")); string(b) != "kept" {
		t.Fatal("the directory's content changed")
	}
}

func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		// As any user, giving a file to oneself works.
		path := filepath.Join(t.TempDir(), "f")
		if err := Write(path, []byte("x"), 0o600, Owner(os.Getuid(), os.Getgid())); err != nil {
			t.Fatal(err)
		}
		return
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := Write(path, []byte("x"), 0o600, Owner(65534, 65534)); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
		t.Fatalf("owner %d:%d", st.Uid, st.Gid)
	}
}
