package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// DecodeSHA256 accepts a SHA-256 digest as 64 hex characters (either case)
// or as base64 (standard or URL alphabet, padded or not), as the origin
// design's assignments do, and returns the 32 raw bytes.
func DecodeSHA256(s string) ([]byte, error) {
	b, err := decodeFixed(s, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("sha256: %w", err)
	}
	return b, nil
}

// DecodeSignature accepts an Ed25519 signature as 128 hex characters or as
// base64 and returns the 64 raw bytes.
func DecodeSignature(s string) ([]byte, error) {
	b, err := decodeFixed(s, ed25519.SignatureSize)
	if err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	return b, nil
}

// NormalizeSHA256 returns the lowercase hex form of a digest in any
// accepted encoding.
func NormalizeSHA256(s string) (string, error) {
	b, err := DecodeSHA256(s)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// ParseSigFile decodes the contents of a .sig file: one line, the hex
// signature of the bytes beside it. Surrounding white space is ignored.
func ParseSigFile(data []byte) ([]byte, error) {
	if len(data) > 1024 {
		return nil, fmt.Errorf("signature file is %d bytes, too large", len(data))
	}
	return DecodeSignature(strings.TrimSpace(string(data)))
}

func decodeFixed(s string, n int) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("empty")
	}
	if len(s) == 2*n {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if enc.DecodedLen(len(s)) < n || len(s) > enc.EncodedLen(n) {
			continue
		}
		b, err := enc.Strict().DecodeString(s)
		if err == nil && len(b) == n {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%q is neither %d hex characters nor base64 of %d bytes", truncate(s, 80), 2*n, n)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
