package delivery

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzReadMeta: the metadata beside a partial download (tmp/, which an
// unsandboxed add-on can write) either reads as a partMeta or as "no
// metadata" (start from zero), never as half of one; what reads writes
// back and reads the same; and it only ever matches the meta of the object
// it names, so a resume is never attempted for other bytes.
func FuzzReadMeta(f *testing.F) {
	for _, s := range []string{
		`{"object_key":"artifacts/hello/1.0.0/linux-amd64/hello","sha256":"abababababababababababababababababababababababababababababababab","etag":"\"0123\"","size":1234}`,
		`{"object_key":"a","sha256":"b","etag":"","size":0}`,
		`{"object_key":"a","size":-1}`,
		`{"size":1e30}`, `{"size":"1"}`, `{"object_key":"a","object_key":"b"}`,
		`{}`, `null`, `[]`, ``, `{"object_key":"a"} trailing`,
	} {
		f.Add([]byte(s))
	}
	want := partMeta{ObjectKey: "artifacts/hello/1.0.0/linux-amd64/hello", SHA256: "abababababababababababababababababababababababababababababababab", ETag: `"0123"`, Size: 1234}
	f.Fuzz(func(t *testing.T, data []byte) {
		part := filepath.Join(t.TempDir(), "hello@1.0.0.part")
		if err := os.WriteFile(part+".json", data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, ok := readMeta(part)
		var ref partMeta
		refOK := json.Unmarshal(data, &ref) == nil
		if ok != refOK {
			t.Fatalf("readMeta ok=%v, json says %v", ok, refOK)
		}
		if !ok {
			if m != (partMeta{}) {
				t.Fatalf("no metadata, yet %+v", m)
			}
			return
		}
		if m != ref {
			t.Fatalf("readMeta = %+v, json says %+v", m, ref)
		}
		if m == want {
			// Only a document naming exactly the same four values matches.
			var fields map[string]any
			if json.Unmarshal(data, &fields) != nil {
				t.Fatalf("%q matches without being an object", data)
			}
		}
		if err := writeMeta(part, m); err != nil {
			t.Fatal(err)
		}
		again, ok := readMeta(part)
		if !ok || again != m {
			t.Fatalf("written %+v reads back as %+v, %v", m, again, ok)
		}
	})
}

// FuzzCurrent: the current link of an add-on (in the runtime root, which
// an unsandboxed add-on can rewrite) reads as a version only when it is
// exactly versions/<safe version>; anything else is an error, never a
// path that leaves versions/.
func FuzzCurrent(f *testing.F) {
	for _, s := range []string{"versions/1.0.0", "versions/..", "versions/../../etc", "/etc/passwd", "versions/", "versions/1/2", "1.0.0", "./versions/1.0.0", "versions/" + strings.Repeat("9", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if target == "" || strings.ContainsRune(target, 0) || len(target) > 4000 {
			return // not a symbolic link the kernel makes
		}
		root := t.TempDir()
		d := New(Options{Root: root})
		dir := filepath.Join(root, "addons", "hello")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "current")); err != nil {
			t.Skip(err)
		}
		v, err := d.Current("hello")
		if err != nil {
			if v != "" {
				t.Fatalf("an error (%v) with version %q", err, v)
			}
			return
		}
		if "versions/"+v != target || v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/\\") || !filepath.IsLocal(v) {
			t.Fatalf("current -> %q read as version %q", target, v)
		}
	})
}

// FuzzUnzstd: whatever a hostile store serves as a compressed artifact,
// the decoder writes at most the signed size, reports exactly what it
// wrote, and ends (no hang on any input).
func FuzzUnzstd(f *testing.F) {
	small, _ := zstd.NewWriter(nil)
	f.Add(small.EncodeAll([]byte("hello, add-on"), nil), uint16(13))
	f.Add(small.EncodeAll(bytes.Repeat([]byte{0}, 1<<16), nil), uint16(100)) // a bomb
	f.Add(small.EncodeAll([]byte("short"), nil), uint16(1000))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, uint16(10)) // a magic number alone
	f.Add([]byte("not zstd"), uint16(8))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		out, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		sum := sha256.New()
		u := newUnzstd(out, sum, int64(limit))
		for len(data) > 0 { // in pieces, as the pipeline hands them over
			n := min(len(data), 7)
			u.Write(data[:n])
			data = data[n:]
		}
		n, err := u.finish()
		fi, _ := out.Stat()
		if fi.Size() > int64(limit) || n != fi.Size() {
			t.Fatalf("wrote %d bytes (says %d, err %v) under a limit of %d", fi.Size(), n, err, limit)
		}
	})
}
