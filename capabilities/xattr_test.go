package capabilities

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/vmtest"
)

// capFile is a copy of /bin/true in a root-owned directory, opened for
// writing.
func capFile(t *testing.T, dir, name string) (*os.File, string) {
	t.Helper()
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

func needLibcap(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"getcap", "setcap", "capsh"} {
		if _, err := exec.LookPath(tool); err != nil {
			vmtest.Unavailable(t, tool+" (libcap2-bin) is not installed")
		}
	}
}

// getcap is what getcap prints for path, without the path.
func getcap(t *testing.T, path string) string {
	t.Helper()
	out := run(t, "getcap", path)
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), path))
}

func rawXattr(t *testing.T, path string) []byte {
	t.Helper()
	b := make([]byte, 64)
	n, err := unix.Getxattr(path, XattrName, b)
	if err != nil {
		t.Fatalf("getxattr %s: %v", path, err)
	}
	return b[:n]
}

// SetFile writes what setcap writes, and getcap reads it as granted.
func TestSetFileMatchesLibcap(t *testing.T) {
	vmtest.RequireRoot(t, "setting security.capability")
	needLibcap(t)
	dir := rootDir(t)
	all := Set(0)
	for c := Cap(0); c <= Last; c++ {
		all = all.Add(c)
	}
	for _, tc := range []struct {
		name   string
		caps   []string
		getcap string // "" when it is only compared with setcap's
	}{
		{"net_raw", []string{"cap_net_raw"}, "cap_net_raw=ep"},
		{"net_raw+net_admin", []string{"cap_net_raw", "cap_net_admin"}, "cap_net_admin,cap_net_raw=ep"},
		{"bpf+perfmon", []string{"cap_bpf", "cap_perfmon"}, "cap_perfmon,cap_bpf=ep"},
		{"dac_read_search", []string{"cap_dac_read_search"}, "cap_dac_read_search=ep"},
		{"chown (bit 0)", []string{"cap_chown"}, "cap_chown=ep"},
		{"checkpoint_restore (the last)", []string{"cap_checkpoint_restore"}, "cap_checkpoint_restore=ep"},
		{"bits 31 and 32", []string{"cap_setfcap", "cap_mac_override"}, "cap_setfcap,cap_mac_override=ep"},
		{"default policy", []string{"cap_net_raw", "cap_net_admin", "cap_net_bind_service", "cap_bpf", "cap_perfmon", "cap_dac_read_search"}, ""},
		{"all but sys_admin", strings.Split(Set(uint64(all)&^(1<<21)).String(), ","), ""},
		{"all", all.Names(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSet(tc.caps)
			if err != nil {
				t.Fatal(err)
			}
			ours, oursPath := capFile(t, dir, "ours")
			if err := SetFile(ours, s); err != nil {
				t.Fatal(err)
			}
			_, theirsPath := capFile(t, dir, "theirs")
			run(t, "setcap", strings.Join(tc.caps, ",")+"=ep", theirsPath)

			if a, b := rawXattr(t, oursPath), rawXattr(t, theirsPath); !bytes.Equal(a, b) {
				t.Errorf("SetFile wrote %x, setcap %x", a, b)
			}
			got := getcap(t, oursPath)
			if want := getcap(t, theirsPath); got != want {
				t.Errorf("getcap: ours %q, setcap's %q", got, want)
			}
			if tc.getcap != "" && got != tc.getcap {
				t.Errorf("getcap: %q, want %q", got, tc.getcap)
			}
			fc, err := GetFile(ours)
			if err != nil {
				t.Fatal(err)
			}
			if fc != (FileCaps{Permitted: s, Effective: true, Revision: 2}) {
				t.Errorf("GetFile: %+v, want %s+ep", fc, s)
			}
		})
	}
}

// What setcap writes, GetFile reads.
func TestGetFileReadsSetcap(t *testing.T) {
	vmtest.RequireRoot(t, "setting security.capability")
	needLibcap(t)
	dir := rootDir(t)
	for _, tc := range []struct {
		text string
		want FileCaps
	}{
		{"cap_net_raw=ep", FileCaps{Permitted: 1 << 13, Effective: true, Revision: 2}},
		{"cap_net_raw,cap_bpf=ep", FileCaps{Permitted: 1<<13 | 1<<39, Effective: true, Revision: 2}},
		{"cap_net_admin=p", FileCaps{Permitted: 1 << 12, Revision: 2}},
		{"cap_perfmon=eip", FileCaps{Permitted: 1 << 38, Inheritable: 1 << 38, Effective: true, Revision: 2}},
		{"cap_sys_admin=i", FileCaps{Inheritable: 1 << 21, Revision: 2}},
	} {
		f, path := capFile(t, dir, "f")
		run(t, "setcap", tc.text, path)
		got, err := GetFile(f)
		if err != nil {
			t.Fatalf("%s: %v", tc.text, err)
		}
		if got != tc.want {
			t.Errorf("setcap %s: GetFile %+v, want %+v", tc.text, got, tc.want)
		}
		d, err := DecodeFileCaps(rawXattr(t, path))
		if err != nil || d != tc.want {
			t.Errorf("setcap %s: DecodeFileCaps %+v %v", tc.text, d, err)
		}
	}
}

// An empty set removes the attribute; a file without one reads as none.
func TestSetFileEmpty(t *testing.T) {
	vmtest.RequireRoot(t, "setting security.capability")
	needLibcap(t)
	dir := rootDir(t)
	f, path := capFile(t, dir, "f")
	if got, err := GetFile(f); err != nil || got != (FileCaps{}) {
		t.Fatalf("GetFile without caps: %+v %v", got, err)
	}
	if err := SetFile(f, 0); err != nil {
		t.Fatalf("SetFile(0) without caps: %v", err)
	}
	if err := SetFile(f, Set(0).Add(capNetRaw)); err != nil {
		t.Fatal(err)
	}
	if err := SetFile(f, 0); err != nil {
		t.Fatal(err)
	}
	if out := getcap(t, path); out != "" {
		t.Fatalf("getcap after SetFile(0): %q", out)
	}
	if got, err := GetFile(f); err != nil || got != (FileCaps{}) {
		t.Fatalf("GetFile after SetFile(0): %+v %v", got, err)
	}
}

// Revision 3 (namespaced) attributes encode, decode and survive the
// kernel.
func TestRevision3(t *testing.T) {
	fc := FileCaps{Permitted: Set(0).Add(capNetRaw).Add(39), Inheritable: 1 << 5, Effective: true, RootID: 100000, Revision: 3}
	b := fc.Encode()
	if len(b) != 24 {
		t.Fatalf("revision 3 encodes to %d bytes", len(b))
	}
	if want := "0100000300200000200000008000000000000000a0860100"; hex.EncodeToString(b) != want {
		t.Fatalf("encoded %x, want %s", b, want)
	}
	got, err := DecodeFileCaps(b)
	if err != nil || got != fc {
		t.Fatalf("DecodeFileCaps(Encode(%+v)) = %+v, %v", fc, got, err)
	}
	// Revision 3 asked for without a root id.
	b = FileCaps{Permitted: 1, Revision: 3}.Encode()
	if got, err := DecodeFileCaps(b); err != nil || len(b) != 24 || got.Revision != 3 || got.RootID != 0 || got.Effective {
		t.Fatalf("revision 3 with root id 0: %x → %+v %v", b, got, err)
	}

	vmtest.RequireRoot(t, "setting security.capability")
	needLibcap(t)
	f, path := capFile(t, rootDir(t), "f")
	if err := unix.Fsetxattr(int(f.Fd()), XattrName, FileCaps{Permitted: Set(0).Add(capNetRaw), Effective: true, RootID: 1000}.Encode(), 0); err != nil {
		t.Fatal(err)
	}
	got, err = GetFile(f)
	if err != nil || got != (FileCaps{Permitted: Set(0).Add(capNetRaw), Effective: true, RootID: 1000, Revision: 3}) {
		t.Fatalf("GetFile of a revision 3 attribute: %+v %v", got, err)
	}
	out := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(run(t, "getcap", "-n", path)), path))
	if out != "cap_net_raw=ep [rootid=1000]" {
		t.Fatalf("getcap -n: %q", out)
	}
}

func TestEncodeRevision2(t *testing.T) {
	for _, tc := range []struct {
		fc   FileCaps
		want string
	}{
		{FileCaps{Permitted: 1 << 13, Effective: true}, "0100000200200000000000000000000000000000"},
		{FileCaps{Permitted: 1 << 13}, "0000000200200000000000000000000000000000"},
		{FileCaps{Permitted: 1<<38 | 1<<39, Effective: true}, "010000020000000000000000c000000000000000"},
		{FileCaps{Permitted: 1<<0 | 1<<40, Inheritable: 1<<1 | 1<<33, Effective: true}, "0100000201000000020000000001000002000000"},
	} {
		if got := hex.EncodeToString(tc.fc.Encode()); got != tc.want {
			t.Errorf("Encode(%+v) = %s, want %s", tc.fc, got, tc.want)
		}
		got, err := DecodeFileCaps(tc.fc.Encode())
		tc.fc.Revision = 2
		if err != nil || got != tc.fc {
			t.Errorf("round trip of %+v: %+v %v", tc.fc, got, err)
		}
	}
}

func TestDecodeFileCapsRefuses(t *testing.T) {
	v2 := FileCaps{Permitted: 1 << 13, Effective: true}.Encode()
	v3 := FileCaps{Permitted: 1 << 13, Effective: true, RootID: 5}.Encode()
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"three bytes", v2[:3], "too short"},
		{"revision 2, 4 bytes", v2[:4], "revision 2 with 4 bytes"},
		{"revision 2, 19 bytes", v2[:19], "revision 2 with 19 bytes"},
		{"revision 2, 24 bytes", append(append([]byte{}, v2...), 0, 0, 0, 0), "revision 2 with 24 bytes"},
		{"revision 3, 20 bytes", v3[:20], "revision 3 with 20 bytes"},
		{"revision 3, 28 bytes", append(append([]byte{}, v3...), 0, 0, 0, 0), "revision 3 with 28 bytes"},
		{"revision 1", []byte{1, 0, 0, 1, 0, 0x20, 0, 0, 0, 0, 0, 0}, "unsupported revision 0x1000000"},
		{"revision 4", []byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "unsupported revision"},
		{"revision 0", make([]byte, 20), "unsupported revision"},
		{"unknown flag", []byte{2, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "unknown flags"},
		{"flag in the middle", []byte{0, 1, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "unknown flags"},
	} {
		if got, err := DecodeFileCaps(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: DecodeFileCaps(%x) = %+v, %v; want an error naming %q", tc.name, tc.b, got, err, tc.want)
		}
	}
}
