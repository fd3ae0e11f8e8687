package signing

import (
	"crypto/ed25519"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestGenerateKeyRoundTripAndOpenSSL(t *testing.T) {
	privPEM, pubPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ParsePrivateKeyPEM(privPEM)
	if err != nil {
		t.Fatalf("ParsePrivateKeyPEM: %v", err)
	}
	pub, err := ParsePublicKeyPEM(pubPEM)
	if err != nil {
		t.Fatalf("ParsePublicKeyPEM: %v", err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("public key does not match private key")
	}
	if len(KeyID(pub)) != 16 {
		t.Fatalf("KeyID = %q, want 16 hex characters", KeyID(pub))
	}

	// The contract says both files work with openssl pkey, and that openssl
	// verifies what we sign.
	dir := t.TempDir()
	keyFile, pubFile, msgFile, sigFile := filepath.Join(dir, "k"), filepath.Join(dir, "p"), filepath.Join(dir, "m"), filepath.Join(dir, "s")
	os.WriteFile(keyFile, privPEM, 0o600)
	os.WriteFile(pubFile, pubPEM, 0o644)
	msg := []byte("cross-checked with openssl")
	os.WriteFile(msgFile, msg, 0o644)
	os.WriteFile(sigFile, ed25519.Sign(priv, msg), 0o644)
	for _, args := range [][]string{
		{"pkey", "-in", keyFile, "-noout"},
		{"pkey", "-pubin", "-in", pubFile, "-noout"},
		{"pkeyutl", "-verify", "-pubin", "-inkey", pubFile, "-rawin", "-in", msgFile, "-sigfile", sigFile},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Errorf("openssl %v: %v\n%s", args, err, out)
		}
	}
}

func TestKeyring(t *testing.T) {
	dir := t.TempDir()
	var pubs []ed25519.PublicKey
	for _, name := range []string{"old.pub", "new.pem"} {
		_, pubPEM, _ := GenerateKey()
		os.WriteFile(filepath.Join(dir, name), pubPEM, 0o644)
		p, _ := ParsePublicKeyPEM(pubPEM)
		pubs = append(pubs, p)
	}
	os.WriteFile(filepath.Join(dir, "README"), []byte("not a key"), 0o644)

	kr, err := LoadKeyring([]string{dir})
	if err != nil {
		t.Fatalf("LoadKeyring: %v", err)
	}
	if kr.Len() != 2 {
		t.Fatalf("Len = %d, want 2", kr.Len())
	}
	for _, p := range pubs {
		c, err := kr.Candidates(KeyID(p))
		if err != nil || len(c) != 1 || !c[0].Equal(p) {
			t.Errorf("Candidates(%s) = %v, %v", KeyID(p), c, err)
		}
	}
	if c, err := kr.Candidates(""); err != nil || len(c) != 2 {
		t.Errorf("Candidates(\"\") = %d keys, %v; want 2", len(c), err)
	}
	if _, err := kr.Candidates("0000000000000000"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Candidates(unknown) = %v, want ErrUnknownKey", err)
	}
	if _, err := NewKeyring().Candidates(""); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("empty keyring Candidates = %v, want ErrUnknownKey (fail closed)", err)
	}

	os.WriteFile(filepath.Join(dir, "broken.pub"), []byte("garbage"), 0o644)
	if _, err := LoadKeyring([]string{dir}); err == nil {
		t.Error("LoadKeyring with an unparsable .pub succeeded, want error")
	}
	if _, err := LoadKeyring([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("LoadKeyring(missing path) succeeded, want error")
	}
}
