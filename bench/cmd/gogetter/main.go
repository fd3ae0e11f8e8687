// Command gogetter fetches an artifact the way Nomad's artifact block does:
// hashicorp/go-getter's S3 getter with a checksum=sha256:HEX query (go-getter
// downloads the file, then reads it back to hash it), followed by a separate
// Ed25519 pass: the whole file read into memory and checked with
// crypto/ed25519.Verify. Like go-getter, it does not fsync.
package main

import (
	"context"
	"fmt"
	"net/url"
	"os"

	getter "github.com/hashicorp/go-getter"

	"github.com/addond/addond/bench/internal/child"
)

func main() {
	f := child.Parse(true)
	want := f.Expected()

	// go-getter's S3 getter treats a host outside AWS's DNS suffixes as an
	// S3-compatible endpoint: path-style /BUCKET/KEY, the URL's own scheme
	// (plain http is allowed), region and credentials from the query.
	q := url.Values{}
	q.Set("aws_access_key_id", os.Getenv("AWS_ACCESS_KEY_ID"))
	q.Set("aws_access_key_secret", os.Getenv("AWS_SECRET_ACCESS_KEY"))
	q.Set("region", "us-east-1")
	q.Set("checksum", "sha256:"+f.SHA256)
	src := fmt.Sprintf("s3::http://%s/%s/%s?%s", f.Endpoint, f.Bucket, f.Key, q.Encode())

	c := &getter.Client{
		Ctx:  context.Background(),
		Src:  src,
		Dst:  f.Out,
		Mode: getter.ClientModeFile,
	}
	if err := c.Get(); err != nil {
		child.Fatalf("go-getter: %v", err)
	}
	// go-getter has checked the SHA-256 (or Get failed); the signature is a
	// second pass over the file.
	data, err := os.ReadFile(f.Out)
	if err != nil {
		child.Fatalf("%v", err)
	}
	want.CheckSignature(data)
}
