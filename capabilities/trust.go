package capabilities

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultTrustDir holds the publishers' public keys the helper trusts.
const DefaultTrustDir = "/etc/addond/trust.d"

// maxKeyFile bounds a key file; maxPackage a package.json.
const (
	maxKeyFile = 64 << 10
	maxPackage = 256 << 10
)

// rootOwned refuses a file (or directory) that is not root's alone: owned
// by another uid, or writable by group or others.
func rootOwned(path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 {
		return fmt.Errorf("%s: not owned by root", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s: writable by group or others (%v)", path, fi.Mode().Perm())
	}
	return nil
}

// LoadTrust reads the public keys (PKIX PEM, ed25519) in each path — a
// key file, or a directory of them — refusing, by name, any key file or
// directory that is not root-owned or is group- or world-writable: the
// keys decide what may be made privileged.
func LoadTrust(paths ...string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, fmt.Errorf("trust: %w", err)
		}
		if err := rootOwned(p, fi); err != nil {
			return nil, fmt.Errorf("trust: %w", err)
		}
		files := []string{p}
		if fi.IsDir() {
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("trust: %w", err)
			}
			files = files[:0]
			for _, e := range entries {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		for _, f := range files {
			k, err := loadKey(f)
			if err != nil {
				return nil, fmt.Errorf("trust: %w", err)
			}
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("trust: no public keys")
	}
	return keys, nil
}

func loadKey(path string) (ed25519.PublicKey, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if err := rootOwned(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxKeyFile)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: not a PEM public key", path)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	k, ok := pub.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ed25519 key", path)
	}
	return k, nil
}

// Package is what the helper reads of a publisher's signed package.json.
type Package struct {
	AddonID        string              `json:"addon_id"`
	Version        string              `json:"version"`
	OSCapabilities []string            `json:"os_capabilities"`
	Artifacts      map[string]Artifact `json:"artifacts"`
}

// Artifact is one platform's binary in a Package.
type Artifact struct {
	ObjectKey  string `json:"object_key"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
	BinaryName string `json:"binary_name"`
}

// VerifyPackage checks that sig (one line: the hex ed25519 signature of
// the exact bytes) signs raw under one of keys, and only then parses it.
func VerifyPackage(raw []byte, sig string, keys []ed25519.PublicKey) (*Package, error) {
	if len(raw) > maxPackage {
		return nil, fmt.Errorf("package.json: larger than %d bytes", maxPackage)
	}
	s, err := hex.DecodeString(string(bytes.TrimSpace([]byte(sig))))
	if err != nil || len(s) != ed25519.SignatureSize {
		return nil, errors.New("package.json.sig: not a hex ed25519 signature")
	}
	verified := false
	for _, k := range keys {
		if ed25519.Verify(k, raw, s) {
			verified = true
			break
		}
	}
	if !verified {
		return nil, errors.New("package.json: signature does not verify under any trusted key")
	}
	var p Package
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("package.json: %w", err)
	}
	return &p, nil
}
