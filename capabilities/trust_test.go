package capabilities

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/addond/addond/vmtest"
)

func TestLoadTrust(t *testing.T) {
	vmtest.RequireRoot(t, "trust keys must be root's")
	dir := rootDir(t)
	pub1, _ := newKey(t)
	pub2, _ := newKey(t)
	trust := filepath.Join(dir, "trust.d")
	if err := os.Mkdir(trust, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(path string, data []byte) string {
		t.Helper()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	k1 := write(filepath.Join(trust, "a.pem"), pemKey(t, pub1))
	write(filepath.Join(trust, "b.pem"), pemKey(t, pub2))

	keys, err := LoadTrust(trust)
	if err != nil || len(keys) != 2 {
		t.Fatalf("LoadTrust(dir) = %d keys, %v", len(keys), err)
	}
	keys, err = LoadTrust(k1)
	if err != nil || len(keys) != 1 || !keys[0].Key.Equal(pub1) || keys[0].Scope != nil {
		t.Fatalf("LoadTrust(file) = %v, %v", keys, err)
	}
	keys, err = LoadTrust(k1, trust)
	if err != nil || len(keys) != 3 {
		t.Fatalf("LoadTrust(file, dir) = %d keys, %v", len(keys), err)
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	_, priv := newKey(t)
	privDER, _ := x509.MarshalPKCS8PrivateKey(priv)
	empty := filepath.Join(dir, "empty.d")
	os.Mkdir(empty, 0o755)
	sub := filepath.Join(dir, "sub.d")
	os.MkdirAll(filepath.Join(sub, "nested.pem"), 0o755)
	fifoDir := filepath.Join(dir, "fifo.d")
	os.Mkdir(fifoDir, 0o755)
	if err := unix.Mkfifo(filepath.Join(fifoDir, "key.pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	groupWritable := write(filepath.Join(dir, "gw.pem"), pemKey(t, pub1))
	os.Chmod(groupWritable, 0o664)
	notRoot := write(filepath.Join(dir, "nr.pem"), pemKey(t, pub1))
	os.Chown(notRoot, 65534, 65534)
	link := filepath.Join(dir, "link.pem")
	os.Symlink(k1, link)
	dirLink := filepath.Join(dir, "link.d")
	os.Symlink(trust, dirLink)

	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"empty dir", empty, "no public keys"},
		{"not PEM", write(filepath.Join(dir, "text.pem"), []byte("ssh-ed25519 AAAA")), "not a PEM public key"},
		{"private key", write(filepath.Join(dir, "priv.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})), "not a PEM public key"},
		{"ECDSA key", write(filepath.Join(dir, "ec.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecDER})), "not an ed25519 key"},
		{"garbage DER", write(filepath.Join(dir, "der.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})), "der.pem"},
		{"too large", write(filepath.Join(dir, "big.pem"), append(pemKey(t, pub1), make([]byte, 70<<10)...)), "larger than"},
		{"directory in the trust dir", sub, "not a regular file"},
		{"FIFO in the trust dir", fifoDir, "not a regular file"},
		{"group-writable key", groupWritable, "writable by group or others"},
		{"key not root's", notRoot, "not owned by root"},
		// Lstat: a link's own mode bits are 0777.
		{"key is a symlink", link, "writable by group or others"},
		{"trust dir is a symlink", dirLink, "writable by group or others"},
	} {
		done := make(chan error, 1)
		go func() { _, err := LoadTrust(tc.path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: LoadTrust: %v, want an error naming %q", tc.name, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: LoadTrust blocked", tc.name)
		}
	}
	if _, err := LoadTrust(); err == nil || !strings.Contains(err.Error(), "no public keys") {
		t.Errorf("LoadTrust(): %v", err)
	}
}

func TestVerifyPackage(t *testing.T) {
	pub, key := newKey(t)
	other, otherKey := newKey(t)
	raw := []byte(`{"addon_id":"pingsweep","version":"1.0.0","os_capabilities":["cap_net_raw"],"artifacts":{"linux/amd64":{"object_key":"artifacts/pingsweep/1.0.0/linux-amd64/pingsweep","sha256":"` + strings.Repeat("ab", 32) + `","size":3,"signature":"00","key_id":"00","binary_name":"pingsweep"}},"supervision":"agent_sidecar"}`)
	sig := hex.EncodeToString(ed25519.Sign(key, raw))

	for name, s := range map[string]string{
		"plain": sig, "with newline": sig + "\n", "with spaces": "  " + sig + " \r\n", "upper case": strings.ToUpper(sig),
	} {
		p, by, err := VerifyPackage(raw, s, trusted(other, pub))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !by.Key.Equal(pub) {
			t.Fatalf("%s: verified by %v, not the key that signed", name, by.Name)
		}
		if p.AddonID != "pingsweep" || p.Version != "1.0.0" || len(p.OSCapabilities) != 1 || p.Artifacts["linux/amd64"].Size != 3 || p.Artifacts["linux/amd64"].BinaryName != "pingsweep" {
			t.Fatalf("%s: parsed %+v", name, p)
		}
	}

	altered := []byte(strings.Replace(string(raw), "cap_net_raw", "cap_sys_admi", 1))
	big := append(append([]byte{}, raw...), make([]byte, maxPackage)...)
	notJSON := []byte("addon_id: pingsweep")
	for _, tc := range []struct {
		name string
		raw  []byte
		sig  string
		keys []ed25519.PublicKey
		want string
	}{
		{"unknown key", raw, hex.EncodeToString(ed25519.Sign(otherKey, raw)), []ed25519.PublicKey{pub}, "does not verify under any trusted key"},
		{"no keys", raw, sig, nil, "does not verify"},
		{"altered", altered, sig, []ed25519.PublicKey{pub}, "does not verify"},
		{"truncated", raw[:len(raw)-1], sig, []ed25519.PublicKey{pub}, "does not verify"},
		{"empty sig", raw, "", []ed25519.PublicKey{pub}, "not a hex ed25519 signature"},
		{"short sig", raw, sig[:126], []ed25519.PublicKey{pub}, "not a hex ed25519 signature"},
		{"long sig", raw, sig + "00", []ed25519.PublicKey{pub}, "not a hex ed25519 signature"},
		{"base64 sig", raw, "AAAA" + sig[4:], []ed25519.PublicKey{pub}, "does not verify"},
		{"two lines", raw, sig + "\n" + sig, []ed25519.PublicKey{pub}, "not a hex ed25519 signature"},
		{"too large", big, hex.EncodeToString(ed25519.Sign(key, big)), []ed25519.PublicKey{pub}, "larger than"},
		{"signed, not JSON", notJSON, hex.EncodeToString(ed25519.Sign(key, notJSON)), []ed25519.PublicKey{pub}, "package.json:"},
	} {
		if p, _, err := VerifyPackage(tc.raw, tc.sig, trusted(tc.keys...)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: VerifyPackage = %+v, %v; want an error naming %q", tc.name, p, err, tc.want)
		}
	}
}

// trusted are keys as LoadKeys returns them, unscoped.
func trusted(keys ...ed25519.PublicKey) []TrustedKey {
	var out []TrustedKey
	for i, k := range keys {
		out = append(out, TrustedKey{Name: fmt.Sprintf("k%d.pub", i), Key: k})
	}
	return out
}

// TestLoadKeysFilterAndScopes: only *.pub and *.pem in a trust directory
// are keys — a key "revoked" by renaming it (x.pem.disabled) or left by
// dpkg (x.pem.dpkg-old) is not — each with the scope beside it; a scope
// that does not parse, or that someone else may write, is refused; a
// reader other than root may own its keys (addond's are addond's in a
// test machine), the helper (owner 0) only root's.
func TestLoadKeysFilterAndScopes(t *testing.T) {
	vmtest.RequireRoot(t, "trust keys of root and of another user")
	dir := rootDir(t)
	trust := filepath.Join(dir, "trust.d")
	os.Mkdir(trust, 0o755)
	pub1, _ := newKey(t)
	pub2, _ := newKey(t)
	revoked, _ := newKey(t)
	write := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(trust, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("a.pub", pemKey(t, pub1))
	write("a.scope", []byte(`{"addons":["hello"],"capabilities":["cap_net_raw"]}`))
	write("b.pem", pemKey(t, pub2))
	write("old.pem.disabled", pemKey(t, revoked))
	write("old.pem.dpkg-old", pemKey(t, revoked))
	write("README", []byte("the publishers' keys"))
	keys, err := LoadTrust(trust)
	if err != nil || len(keys) != 2 {
		t.Fatalf("LoadTrust = %d keys, %v; want a.pub and b.pem only", len(keys), err)
	}
	for _, k := range keys {
		if k.Key.Equal(revoked) {
			t.Fatalf("a renamed key (%s) is trusted", k.Name)
		}
	}
	a, b := keys[0], keys[1]
	if a.Name != "a.pub" || a.Scope == nil || b.Scope != nil {
		t.Fatalf("keys %+v %+v", a, b)
	}
	raw, _ := ParseSet([]string{"cap_net_raw"})
	admin, _ := ParseSet([]string{"cap_net_admin"})
	for _, c := range []struct {
		key   TrustedKey
		id    string
		caps  Set
		allow bool
	}{
		{a, "hello", raw, true},
		{a, "pingsweep", raw, false},
		{a, "hello", raw | admin, false},
		{b, "pingsweep", raw | admin, true},
	} {
		if err := c.key.Allows(c.id, c.caps); (err == nil) != c.allow {
			t.Errorf("%s.Allows(%s, %s) = %v, want allowed %v", c.key.Name, c.id, c.caps, err, c.allow)
		}
	}
	for _, bad := range []string{`{"addons":["../x"]}`, `{"capabilities":["cap_fly"]}`, `{"addons":["a"],"extra":1}`, `{} {}`, `[`} {
		write("a.scope", []byte(bad))
		if _, err := LoadTrust(trust); err == nil || !strings.Contains(err.Error(), "a.scope") {
			t.Errorf("scope %s: %v, want a refusal naming a.scope", bad, err)
		}
	}
	write("a.scope", []byte(`{}`))
	os.Chmod(filepath.Join(trust, "a.scope"), 0o666)
	if _, err := LoadTrust(trust); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("a world-writable scope: %v", err)
	}
	os.Chmod(filepath.Join(trust, "a.scope"), 0o644)
	// Another user's trust directory: its owner may read it, root's
	// helper may not.
	os.Chown(trust, 990, 990)
	if _, err := LoadKeys(990, trust); err != nil {
		t.Errorf("uid 990 reading its own trust directory: %v", err)
	}
	if _, err := LoadKeys(0, trust); err == nil || !strings.Contains(err.Error(), "not owned by root") {
		t.Errorf("the helper reading uid 990's trust directory: %v", err)
	}
	if _, err := LoadKeys(991, trust); err == nil || !strings.Contains(err.Error(), "owned by neither root nor uid 991") {
		t.Errorf("uid 991 reading uid 990's trust directory: %v", err)
	}
}
