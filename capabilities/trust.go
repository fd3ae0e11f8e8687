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
	"slices"
	"strings"
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
func rootOwned(path string, fi os.FileInfo) error { return ownedBy(path, fi, 0) }

// TrustedKey is one trusted publisher key, and the scope beside it.
type TrustedKey struct {
	Name  string // its file
	Key   ed25519.PublicKey
	Scope *Scope // nil: unscoped (any add-on, any capability policy allows)
}

// Scope limits what packages signed by a key may be granted
// (trust.d/<name>.scope beside trust.d/<name>.pub): capabilities only for
// these add-ons, and only these capabilities. An empty list does not
// limit.
type Scope struct {
	Addons       []string `json:"addons,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	caps         Set
}

// Allows says why the key may not grant caps to add-on id, or nil.
func (k *TrustedKey) Allows(id string, caps Set) error {
	if k.Scope == nil {
		return nil
	}
	if len(k.Scope.Addons) > 0 && !slices.Contains(k.Scope.Addons, id) {
		return fmt.Errorf("key %s is scoped to add-ons %s, not %q", k.Name, strings.Join(k.Scope.Addons, ", "), id)
	}
	if len(k.Scope.Capabilities) > 0 {
		if extra := caps &^ k.Scope.caps; extra != 0 {
			return fmt.Errorf("key %s is scoped to %s: %s not granted", k.Name, k.Scope.caps, extra)
		}
	}
	return nil
}

// LoadKeys is the one loader of trusted keys, addond's and the helper's.
// Each path is a key file, or a directory whose *.pub and *.pem files are
// the keys — nothing else in it is one (x.pem.disabled, x.pem.dpkg-old, a
// README) — each with its scope in <name>.scope beside it, if any. A key,
// scope or directory that is a symbolic link, writable by group or others,
// or owned by anyone but root or owner (the reader's uid: root for the
// helper) is refused, naming it: a trust store that is silently
// half-loaded, or that someone else may write, fails open.
func LoadKeys(owner int, paths ...string) ([]TrustedKey, error) {
	var keys []TrustedKey
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, fmt.Errorf("trust: %w", err)
		}
		if err := ownedBy(p, fi, owner); err != nil {
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
				if n := e.Name(); strings.HasSuffix(n, ".pub") || strings.HasSuffix(n, ".pem") {
					files = append(files, filepath.Join(p, n))
				}
			}
		}
		for _, f := range files {
			k, err := loadKey(f, owner)
			if err != nil {
				return nil, fmt.Errorf("trust: %w", err)
			}
			if k.Scope, err = loadScope(strings.TrimSuffix(strings.TrimSuffix(f, ".pub"), ".pem")+".scope", owner); err != nil {
				return nil, fmt.Errorf("trust: %w", err)
			}
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// LoadTrust is the helper's LoadKeys: root's keys only, and at least one.
func LoadTrust(paths ...string) ([]TrustedKey, error) {
	keys, err := LoadKeys(0, paths...)
	if err == nil && len(keys) == 0 {
		err = errors.New("trust: no public keys")
	}
	return keys, err
}

// ownedBy refuses a file (or directory) that is not root's or owner's
// alone: owned by another uid, or writable by group or others.
func ownedBy(path string, fi os.FileInfo, owner int) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (st.Uid != 0 && int(st.Uid) != owner) {
		if owner == 0 {
			return fmt.Errorf("%s: not owned by root", path)
		}
		return fmt.Errorf("%s: owned by neither root nor uid %d", path, owner)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s: writable by group or others (%v)", path, fi.Mode().Perm())
	}
	return nil
}

// readTrusted reads a small trust file: a regular file (not a link, not a
// FIFO), owned as ownedBy wants.
func readTrusted(path string, owner int) ([]byte, error) {
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
	if err := ownedBy(path, fi, owner); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxKeyFile)
	}
	return data, nil
}

func loadKey(path string, owner int) (TrustedKey, error) {
	data, err := readTrusted(path, owner)
	if err != nil {
		return TrustedKey{}, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return TrustedKey{}, fmt.Errorf("%s: not a PEM public key", path)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return TrustedKey{}, fmt.Errorf("%s: %w", path, err)
	}
	k, ok := pub.(ed25519.PublicKey)
	if !ok {
		return TrustedKey{}, fmt.Errorf("%s: not an ed25519 key", path)
	}
	return TrustedKey{Name: filepath.Base(path), Key: k}, nil
}

// loadScope reads a key's scope, if there is one.
func loadScope(path string, owner int) (*Scope, error) {
	data, err := readTrusted(path, owner)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseScope(path, data)
}

// ParseScope parses a scope file: the JSON object of Scope, nothing else.
func ParseScope(path string, data []byte) (*Scope, error) {
	var sc Scope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: more than one JSON value", path)
	}
	for _, id := range sc.Addons {
		if !addonIDRe.MatchString(id) {
			return nil, fmt.Errorf("%s: %q is not an add-on id", path, id)
		}
	}
	var err error
	if sc.caps, err = ParseSet(sc.Capabilities); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &sc, nil
}

// Package is what the helper reads of a publisher's signed package.json.
type Package struct {
	AddonID        string              `json:"addon_id"`
	Version        string              `json:"version"`
	OSCapabilities []string            `json:"os_capabilities"`
	Artifacts      map[string]Artifact `json:"artifacts"`
	// AllowDowngrade: a copy may be made of this version although a
	// higher one of the add-on was capped before.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
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
// It returns the package and the key that signed it.
func VerifyPackage(raw []byte, sig string, keys []TrustedKey) (*Package, *TrustedKey, error) {
	if len(raw) > maxPackage {
		return nil, nil, fmt.Errorf("package.json: larger than %d bytes", maxPackage)
	}
	s, err := hex.DecodeString(string(bytes.TrimSpace([]byte(sig))))
	if err != nil || len(s) != ed25519.SignatureSize {
		return nil, nil, errors.New("package.json.sig: not a hex ed25519 signature")
	}
	var by *TrustedKey
	for i := range keys {
		if ed25519.Verify(keys[i].Key, raw, s) {
			by = &keys[i]
			break
		}
	}
	if by == nil {
		return nil, nil, errors.New("package.json: signature does not verify under any trusted key")
	}
	var p Package
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, nil, fmt.Errorf("package.json: %w", err)
	}
	return &p, by, nil
}
