// Command inmemory is the origin design's way to fetch an artifact: read the
// whole object into memory with minio-go, check its SHA-256 and its Ed25519
// signature over the bytes in memory, then write the file and fsync it.
// Memory grows with the artifact.
package main

import (
	"context"
	"crypto/sha256"
	"io"
	"os"

	"github.com/minio/minio-go/v7"

	"github.com/addond/addond/bench/internal/child"
)

func main() {
	f := child.Parse(true)
	want := f.Expected()
	ctx := context.Background()
	obj, err := f.Client().GetObject(ctx, f.Bucket, f.Key, minio.GetObjectOptions{})
	if err != nil {
		child.Fatalf("get %s: %v", f.Key, err)
	}
	data, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		child.Fatalf("download %s: %v", f.Key, err)
	}
	sum := sha256.Sum256(data)
	want.CheckSHA256(sum[:])
	want.CheckSignature(data)

	out, err := os.OpenFile(f.Out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		child.Fatalf("%v", err)
	}
	if _, err := out.Write(data); err != nil {
		child.Fatalf("write: %v", err)
	}
	if err := out.Sync(); err != nil {
		child.Fatalf("fsync: %v", err)
	}
	if err := out.Close(); err != nil {
		child.Fatalf("%v", err)
	}
}
