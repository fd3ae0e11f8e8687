package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/addond/addond/vmtest/miniotest"
)

// cancelAfter cancels its context once n bytes were written to it.
type cancelAfter struct {
	n      int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	if c.n -= int64(len(p)); c.n < 0 {
		c.cancel()
	}
	return len(p), nil
}

// TestPutResumable, on the real MinIO: an upload cut after two of its five
// parts is resumed by the next run, which sends only the three missing
// (the two in the store are kept on their SHA-256); a part whose bytes
// changed meanwhile is sent again; the object is the source's bytes, and
// no unfinished upload is left.
func TestPutResumable(t *testing.T) {
	defer func(p int64) { PartSize = p }(PartSize)
	PartSize = 5 << 20 // S3's smallest
	st, err := Open(miniotest.Require(t).NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	s3 := st.(*S3)
	src := make([]byte, 4*PartSize+1234)
	rand.Read(src)
	ctx := context.Background()

	// The first run is cut while it sends its third part.
	cut, cancel := context.WithCancel(ctx)
	if _, _, err := s3.PutResumable(cut, "artifacts/big", bytes.NewReader(src), int64(len(src)), &cancelAfter{n: 2 * PartSize, cancel: cancel}); !errors.Is(err, context.Canceled) {
		t.Fatalf("the cut upload: %v", err)
	}
	if _, err := st.Stat(ctx, "artifacts/big"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a cut upload is visible: %v", err)
	}

	// Meanwhile the source's second part changed.
	src[PartSize+7] ^= 0xff
	h := sha256.New()
	info, kept, err := s3.PutResumable(ctx, "artifacts/big", bytes.NewReader(src), int64(len(src)), h)
	if err != nil {
		t.Fatal(err)
	}
	if kept != PartSize {
		t.Fatalf("kept %d bytes, want the first part's %d (the second changed)", kept, PartSize)
	}
	if want := sha256.Sum256(src); !bytes.Equal(h.Sum(nil), want[:]) || info.Size != int64(len(src)) {
		t.Fatal("sent is not the source's bytes")
	}
	r, _, err := st.Open(ctx, "artifacts/big", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if !bytes.Equal(got, src) {
		t.Fatal("the object is not the source")
	}
	uploads, err := s3.core.ListMultipartUploads(ctx, s3.cfg.Bucket, "", "", "", "", 1000)
	if err != nil || len(uploads.Uploads) != 0 {
		t.Fatalf("unfinished uploads left: %v %+v", err, uploads.Uploads)
	}

	// A finished object is written again whole: there is nothing to resume.
	_, kept, err = s3.PutResumable(ctx, "artifacts/big", bytes.NewReader(src), int64(len(src)), io.Discard)
	if err != nil || kept != 0 {
		t.Fatalf("rewrite: kept %d, %v", kept, err)
	}

	// An unfinished upload without checksums (another client's) is not
	// resumed, and does not break the write.
	if _, err := s3.core.NewMultipartUpload(ctx, s3.cfg.Bucket, "artifacts/other", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, kept, err := s3.PutResumable(ctx, "artifacts/other", bytes.NewReader(src[:PartSize+1]), PartSize+1, io.Discard); err != nil || kept != 0 {
		t.Fatalf("beside a foreign upload: kept %d, %v", kept, err)
	}
}
