// Package child holds what the comparison programs (floor, gogetter,
// inmemory) share: their flags, an S3 client, the expected digest and
// signature, and a loud way to fail. Each program is started by stagebench
// as its own process, so that its wall time and peak RSS are its own.
package child

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Flags name the object to fetch, where to put it and what it must verify
// against. Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
type Flags struct {
	Endpoint string // 127.0.0.1:PORT, plain HTTP
	Bucket   string
	Key      string // object key
	Out      string // file to write
	SHA256   string // expected digest, hex
	Sig      string // Ed25519 signature of the artifact, hex
	Pub      string // PKIX PEM public key file
}

// Parse reads the flags; verify says whether -sha256, -sig and -pub are
// required.
func Parse(verify bool) *Flags {
	var f Flags
	flag.StringVar(&f.Endpoint, "endpoint", "", "S3 endpoint HOST:PORT (plain HTTP)")
	flag.StringVar(&f.Bucket, "bucket", "", "bucket")
	flag.StringVar(&f.Key, "key", "", "object key")
	flag.StringVar(&f.Out, "out", "", "file to write")
	flag.StringVar(&f.SHA256, "sha256", "", "expected SHA-256 of the object, hex")
	flag.StringVar(&f.Sig, "sig", "", "Ed25519 signature of the object, hex")
	flag.StringVar(&f.Pub, "pub", "", "PKIX PEM Ed25519 public key file")
	flag.Parse()
	need := map[string]string{"endpoint": f.Endpoint, "bucket": f.Bucket, "key": f.Key, "out": f.Out}
	if verify {
		need["sha256"], need["sig"], need["pub"] = f.SHA256, f.Sig, f.Pub
	}
	for name, v := range need {
		if v == "" {
			Fatalf("-%s is required", name)
		}
	}
	return &f
}

// Client returns a minio-go client for the endpoint with minio-go's
// default transport, the one addond's S3 store starts from. The region is
// given, so no bucket-location request precedes the GET.
func (f *Flags) Client() *minio.Client {
	c, err := minio.New(f.Endpoint, &minio.Options{
		Creds:  credentials.NewEnvAWS(),
		Secure: false,
		Region: "us-east-1",
	})
	if err != nil {
		Fatalf("s3 client: %v", err)
	}
	return c
}

// Expected decodes the digest, signature and public key to check against.
type Expected struct {
	SHA256 []byte
	Sig    []byte
	Pub    ed25519.PublicKey
}

// Expected loads -sha256, -sig and -pub.
func (f *Flags) Expected() Expected {
	sum, err := hex.DecodeString(f.SHA256)
	if err != nil || len(sum) != sha256.Size {
		Fatalf("-sha256 %q is not a hex SHA-256 digest", f.SHA256)
	}
	sig, err := hex.DecodeString(f.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		Fatalf("-sig %q is not a hex Ed25519 signature", f.Sig)
	}
	pub, err := LoadPublicKey(f.Pub)
	if err != nil {
		Fatalf("%v", err)
	}
	return Expected{SHA256: sum, Sig: sig, Pub: pub}
}

// CheckSHA256 fails unless got is the expected digest.
func (e Expected) CheckSHA256(got []byte) {
	if !bytes.Equal(got, e.SHA256) {
		Fatalf("VERIFY FAILED: sha256 is %x, want %x", got, e.SHA256)
	}
}

// CheckSignature fails unless the signature verifies over msg.
func (e Expected) CheckSignature(msg []byte) {
	if !ed25519.Verify(e.Pub, msg, e.Sig) {
		Fatalf("VERIFY FAILED: ed25519 signature does not verify")
	}
}

// LoadPublicKey reads a PKIX PEM Ed25519 public key (addonctl keygen's
// signing.pub).
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: not a PEM PUBLIC KEY", path)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pub, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New(path + ": not an Ed25519 key")
	}
	return pub, nil
}

// Fatalf prints the program's name and the message to stderr and exits 1.
func Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", filepath.Base(os.Args[0]), fmt.Sprintf(format, args...))
	os.Exit(1)
}
