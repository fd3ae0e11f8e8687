package delivery

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func BenchmarkUnzstd(b *testing.B) {
	raw, err := os.ReadFile("../../bin/addond") // a real Go binary: run `make build` first
	if err != nil {
		b.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithWindowSize(8<<20))
	comp := enc.EncodeAll(raw, nil)
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, _ := os.Create(filepath.Join(b.TempDir(), "out"))
		u := newUnzstd(out, sha256.New(), int64(len(raw)))
		for off := 0; off < len(comp); off += 1 << 20 {
			u.Write(comp[off:min(off+1<<20, len(comp))])
		}
		if n, err := u.finish(); err != nil || n != int64(len(raw)) {
			b.Fatal(n, err)
		}
		out.Close()
	}
}
