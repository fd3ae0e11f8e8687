package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

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

// rewritePartChecksums answers the parts of multipart uploads with the
// checksum rewrite makes of the one the store echoed ("" removes it): a
// store that keeps none, or another.
func rewritePartChecksums(rewrite func(string) string) func(*http.Response) error {
	return func(r *http.Response) error {
		if r.Request.Method == http.MethodPut && r.Request.URL.Query().Has("partNumber") {
			if v := rewrite(r.Header.Get(checksumHeader)); v == "" {
				r.Header.Del(checksumHeader)
			} else {
				r.Header.Set(checksumHeader, v)
			}
		}
		return nil
	}
}

// TestPutResumableRefusesWithoutPartChecksums, on the real MinIO behind a
// proxy: a store that echoes no checksum for a part cannot resume the
// upload (ErrNotResumable), one that echoes another has the part wrong;
// either way the upload is aborted before it completes: the object at the
// key stays as it was and no unfinished upload is left.
func TestPutResumableRefusesWithoutPartChecksums(t *testing.T) {
	defer func(p int64) { PartSize = p }(PartSize)
	PartSize = 5 << 20
	srv := miniotest.Require(t)
	ctx := context.Background()
	src := make([]byte, 2*PartSize+1)
	rand.Read(src)
	for _, tc := range []struct {
		name    string
		rewrite func(string) string
		want    error
	}{
		{"no checksum", func(string) string { return "" }, ErrNotResumable},
		{"another checksum", func(string) string { return base64.StdEncoding.EncodeToString(make([]byte, 32)) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucketURL := srv.NewBucket(t)
			direct, err := Open(bucketURL)
			if err != nil {
				t.Fatal(err)
			}
			bucket := direct.(*S3).cfg.Bucket
			old := []byte("the version before")
			if _, err := direct.Put(ctx, "artifacts/big", bytes.NewReader(old), int64(len(old))); err != nil {
				t.Fatal(err)
			}
			st, err := Open(srv.Through(t, bucketURL, rewritePartChecksums(tc.rewrite)))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = st.(*S3).PutResumable(ctx, "artifacts/big", bytes.NewReader(src), int64(len(src)), io.Discard)
			switch {
			case err == nil:
				t.Fatal("the upload completed")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("%v, want %v", err, tc.want)
			case tc.want == nil && (errors.Is(err, ErrNotResumable) || !strings.Contains(err.Error(), "the store kept checksum")):
				t.Fatalf("%v, want the part's checksum named", err)
			}
			t.Log(err)
			got, _, err := ReadSmall(ctx, direct, "artifacts/big", 1<<10, OpenOptions{})
			if err != nil || !bytes.Equal(got, old) {
				t.Fatalf("the object at the key is %q, %v; want the one before", got, err)
			}
			uploads, err := direct.(*S3).core.ListMultipartUploads(ctx, bucket, "", "", "", "", 1000)
			if err != nil || len(uploads.Uploads) != 0 {
				t.Fatalf("unfinished uploads left: %v %+v", err, uploads.Uploads)
			}
		})
	}
}

// TestPutResumableWithoutListing, on the real MinIO: an identity that may
// write objects but not list uploads (its session policy has s3:PutObject
// and no s3:ListBucketMultipartUploads) still writes, starting anew; its
// refused listing is not a refused write.
func TestPutResumableWithoutListing(t *testing.T) {
	defer func(p int64) { PartSize = p }(PartSize)
	PartSize = 5 << 20
	srv := miniotest.Require(t)
	ctx := context.Background()
	url := srv.NewBucket(t)
	admin, err := Open(url)
	if err != nil {
		t.Fatal(err)
	}
	bucket := admin.(*S3).cfg.Bucket
	policy := fmt.Sprintf(`{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
		"Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"], "Resource": ["arn:aws:s3:::%s/*"]}]}`, bucket)
	creds, err := credentials.NewSTSAssumeRole("http://"+srv.Endpoint, credentials.STSAssumeRoleOptions{
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Policy: policy, DurationSeconds: 3600,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A MinIO just started answers "Server not initialized" until its IAM
	// is loaded.
	var v credentials.Value
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v, err = creds.GetWithContext(nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("AssumeRole: %v", err)
		}
	}
	t.Setenv("AWS_ACCESS_KEY_ID", v.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", v.SecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", v.SessionToken)
	st, err := Open(url)
	if err != nil {
		t.Fatal(err)
	}
	s3 := st.(*S3)
	if _, err := s3.core.ListMultipartUploads(ctx, bucket, "", "", "", "", 1000); !errors.Is(s3.mapErr("", err), ErrDenied) {
		t.Fatalf("the identity may list uploads (%v): the test proves nothing", err)
	}
	src := make([]byte, 2*PartSize+1)
	rand.Read(src)
	if _, kept, err := s3.PutResumable(ctx, "artifacts/big", bytes.NewReader(src), int64(len(src)), io.Discard); err != nil || kept != 0 {
		t.Fatalf("kept %d, %v", kept, err)
	}
	got, _, err := ReadSmall(ctx, admin, "artifacts/big", int64(len(src)), OpenOptions{})
	if err != nil || !bytes.Equal(got, src) {
		t.Fatalf("the object is not the source: %v", err)
	}
}
