package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"strings"
	"testing"
)

// fuzzSeedKey is fixed so that the corpus stays meaningful.
var fuzzSeedKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))

// FuzzParseSigFile: a .sig file (from the store, next to a document or a
// package) decodes to exactly 64 bytes or is refused; what it decodes to
// is what the hex (or base64) in it says, and hex-encoding the result reads
// back the same.
func FuzzParseSigFile(f *testing.F) {
	sig := ed25519.Sign(fuzzSeedKey, []byte("{}"))
	f.Add([]byte(hex.EncodeToString(sig) + "\n"))
	f.Add([]byte(strings.ToUpper(hex.EncodeToString(sig))))
	f.Add([]byte("  " + hex.EncodeToString(sig) + " \r\n"))
	f.Add([]byte(base64.StdEncoding.EncodeToString(sig)))
	f.Add([]byte(hex.EncodeToString(sig) + "\n" + hex.EncodeToString(sig) + "\n"))
	f.Add([]byte(hex.EncodeToString(sig[:63])))
	f.Add([]byte(""))
	f.Add([]byte("\n"))
	f.Add(bytes.Repeat([]byte("a"), 1025))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseSigFile(data)
		if err != nil {
			if got != nil {
				t.Fatalf("refused (%v) with a value", err)
			}
			return
		}
		if len(got) != ed25519.SignatureSize {
			t.Fatalf("ParseSigFile(%q) = %d bytes", data, len(got))
		}
		if len(data) > 1024 {
			t.Fatalf("accepted a %d-byte .sig file", len(data))
		}
		s := strings.TrimSpace(string(data))
		if b, err := hex.DecodeString(s); err == nil && len(b) == ed25519.SignatureSize && !bytes.Equal(b, got) {
			t.Fatalf("ParseSigFile(%q) = %x, the hex says %x", data, got, b)
		}
		again, err := ParseSigFile([]byte(hex.EncodeToString(got) + "\n"))
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("hex of %x re-parses as %x, %v", got, again, err)
		}
	})
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// FuzzParsePublicKeyPEM: a trust key file parses to an Ed25519 key that
// marshals back to a PEM which parses to the same key (and key id), or it
// is refused.
func FuzzParsePublicKeyPEM(f *testing.F) {
	pkix, _ := x509.MarshalPKIXPublicKey(fuzzSeedKey.Public())
	p8, _ := x509.MarshalPKCS8PrivateKey(fuzzSeedKey)
	f.Add(pemOf("PUBLIC KEY", pkix))
	f.Add(append([]byte("# comment\n"), pemOf("PUBLIC KEY", pkix)...))
	f.Add(append(pemOf("PUBLIC KEY", pkix), pemOf("PUBLIC KEY", pkix)...))
	f.Add(pemOf("PRIVATE KEY", p8))
	f.Add(pemOf("PUBLIC KEY", p8))
	f.Add(pemOf("PUBLIC KEY", pkix[:len(pkix)-1]))
	f.Add(pemOf("RSA PUBLIC KEY", pkix))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ParsePublicKeyPEM(data)
		if err != nil {
			if pub != nil {
				t.Fatalf("refused (%v) with a key", err)
			}
			return
		}
		if len(pub) != ed25519.PublicKeySize {
			t.Fatalf("a %d-byte public key", len(pub))
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatalf("accepted key does not marshal: %v", err)
		}
		again, err := ParsePublicKeyPEM(pemOf("PUBLIC KEY", der))
		if err != nil || !again.Equal(pub) || KeyID(again) != KeyID(pub) {
			t.Fatalf("round trip: %x, %v; want %x", again, err, pub)
		}
		// The key ring indexes it under its id, in either case.
		kr := NewKeyring(pub)
		if c, err := kr.Candidates(strings.ToUpper(KeyID(pub))); err != nil || len(c) != 1 || !c[0].Equal(pub) {
			t.Fatalf("key ring lookup: %v, %v", c, err)
		}
	})
}

// FuzzParsePrivateKeyPEM: a signing key parses to an Ed25519 key that signs
// what its own public half verifies and round-trips through PKCS#8, or it
// is refused.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	pkix, _ := x509.MarshalPKIXPublicKey(fuzzSeedKey.Public())
	p8, _ := x509.MarshalPKCS8PrivateKey(fuzzSeedKey)
	f.Add(pemOf("PRIVATE KEY", p8))
	f.Add(pemOf("PRIVATE KEY", pkix))
	f.Add(pemOf("PUBLIC KEY", p8))
	f.Add(pemOf("PRIVATE KEY", p8[:len(p8)-1]))
	f.Add(pemOf("ENCRYPTED PRIVATE KEY", p8))
	f.Add(append([]byte("junk\n"), pemOf("PRIVATE KEY", p8)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		priv, err := ParsePrivateKeyPEM(data)
		if err != nil {
			if priv != nil {
				t.Fatalf("refused (%v) with a key", err)
			}
			return
		}
		if len(priv) != ed25519.PrivateKeySize {
			t.Fatalf("a %d-byte private key", len(priv))
		}
		msg := []byte("assignments.json")
		if !ed25519.Verify(priv.Public().(ed25519.PublicKey), msg, ed25519.Sign(priv, msg)) {
			t.Fatal("the parsed key's signature does not verify under its own public key")
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatalf("accepted key does not marshal: %v", err)
		}
		again, err := ParsePrivateKeyPEM(pemOf("PRIVATE KEY", der))
		if err != nil || !again.Equal(priv) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
