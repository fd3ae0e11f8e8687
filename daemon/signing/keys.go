package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/addond/addond/capabilities"
)

// KeyID names a public key in package.json and assignments: the first 16
// hex characters of SHA-256 over the raw 32-byte key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// GenerateKey returns a new key pair encoded as PKCS#8 (private) and PKIX
// (public) PEM, the formats openssl pkey reads.
func GenerateKey() (privPEM, pubPEM []byte, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	pkix, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}), nil
}

// ParsePrivateKeyPEM decodes a PKCS#8 PEM Ed25519 private key.
func ParsePrivateKeyPEM(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" block (want PKCS#8)")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, want ed25519", key)
	}
	return priv, nil
}

// ParsePublicKeyPEM decodes a PKIX PEM Ed25519 public key.
func ParsePublicKeyPEM(data []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM \"PUBLIC KEY\" block (want PKIX)")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %T, want ed25519", key)
	}
	return pub, nil
}

// LoadPrivateKey reads a PKCS#8 PEM private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	priv, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return priv, nil
}

// LoadPublicKey reads a PKIX PEM public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pub, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pub, nil
}

// Keyring is the set of trusted publisher keys, indexed by key id. Several
// keys at once is how keys are rotated: trust the new key, publish with it,
// then drop the old one.
type Keyring struct {
	byID     map[string]ed25519.PublicKey
	ids      []string // sorted
	unscoped []string
}

// Shared lists the ids of keys that are in both kr and other.
func (kr *Keyring) Shared(other *Keyring) []string {
	if kr == nil || other == nil {
		return nil
	}
	var ids []string
	for _, id := range kr.ids {
		if _, ok := other.byID[id]; ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// ErrUnknownKey is returned when a signature names a key id that is not
// trusted, or when no key at all is trusted.
var ErrUnknownKey = errors.New("no trusted key")

// NewKeyring builds a key ring from keys.
func NewKeyring(keys ...ed25519.PublicKey) *Keyring {
	kr := &Keyring{byID: map[string]ed25519.PublicKey{}}
	for _, k := range keys {
		id := KeyID(k)
		if _, dup := kr.byID[id]; !dup {
			kr.ids = append(kr.ids, id)
		}
		kr.byID[id] = k
	}
	sort.Strings(kr.ids)
	return kr
}

// LoadKeyring reads the trusted keys in each path with the one loader
// addond and addond-updater share (capabilities.LoadKeys): a key file, or
// a directory whose *.pub and *.pem files are keys (a renamed
// x.pem.disabled or a dpkg leftover is not), owned by root or by this
// process's user and writable by no one else. A file that does not parse
// is an error: a trust store that is silently half-loaded fails open in
// the wrong way.
func LoadKeyring(paths []string) (*Keyring, error) {
	trusted, err := capabilities.LoadKeys(os.Getuid(), paths...)
	if err != nil {
		return nil, err
	}
	keys := make([]ed25519.PublicKey, len(trusted))
	for i, k := range trusted {
		keys[i] = k.Key
	}
	kr := NewKeyring(keys...)
	for _, k := range trusted {
		if k.Scope == nil {
			kr.unscoped = append(kr.unscoped, k.Name)
		}
	}
	return kr, nil
}

// Unscoped names the keys with no scope beside them: packages they sign
// may be granted any capability the policy allows, for any add-on.
func (kr *Keyring) Unscoped() []string {
	if kr == nil {
		return nil
	}
	return kr.unscoped
}

// Len is the number of trusted keys.
func (kr *Keyring) Len() int {
	if kr == nil {
		return 0
	}
	return len(kr.ids)
}

// Candidates returns the keys a signature naming keyID must be checked
// against: exactly that key when keyID is set (so rotation costs no extra
// pass), every trusted key when it is not. It fails closed when nothing is
// trusted or keyID is unknown.
func (kr *Keyring) Candidates(keyID string) ([]ed25519.PublicKey, error) {
	if kr.Len() == 0 {
		return nil, fmt.Errorf("%w: signature present but no trust keys are configured", ErrUnknownKey)
	}
	if keyID != "" {
		k, ok := kr.byID[strings.ToLower(keyID)]
		if !ok {
			return nil, fmt.Errorf("%w: key_id %q is not among the trusted keys %v", ErrUnknownKey, keyID, kr.ids)
		}
		return []ed25519.PublicKey{k}, nil
	}
	out := make([]ed25519.PublicKey, 0, len(kr.ids))
	for _, id := range kr.ids {
		out = append(out, kr.byID[id])
	}
	return out, nil
}

// VerifyBytes checks sig over a small in-memory message (documents, package
// metadata) against the candidate keys for keyID.
func (kr *Keyring) VerifyBytes(keyID string, msg, sig []byte) error {
	keys, err := kr.Candidates(keyID)
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature has %d bytes, want %d", ErrBadSignature, len(sig), ed25519.SignatureSize)
	}
	for _, k := range keys {
		if ed25519.Verify(k, msg, sig) {
			return nil
		}
	}
	return ErrBadSignature
}
