// Command floor is stagebench's lower bound: a plain minio-go v7 GetObject
// of the artifact copied into a file, then fsync and close. It verifies
// nothing (stagebench checks the file's digest afterwards, outside the
// timing).
package main

import (
	"context"
	"io"
	"os"

	"github.com/minio/minio-go/v7"

	"github.com/addond/addond/bench/internal/child"
)

func main() {
	f := child.Parse(false)
	ctx := context.Background()
	obj, err := f.Client().GetObject(ctx, f.Bucket, f.Key, minio.GetObjectOptions{})
	if err != nil {
		child.Fatalf("get %s: %v", f.Key, err)
	}
	defer obj.Close()
	out, err := os.OpenFile(f.Out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		child.Fatalf("%v", err)
	}
	if _, err := io.Copy(out, obj); err != nil {
		child.Fatalf("download %s: %v", f.Key, err)
	}
	if err := out.Sync(); err != nil {
		child.Fatalf("fsync: %v", err)
	}
	if err := out.Close(); err != nil {
		child.Fatalf("%v", err)
	}
}
