package signing

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestDecodeSHA256(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	h := hex.EncodeToString(sum[:])
	cases := []struct {
		in      string
		wantErr bool
	}{
		{h, false},
		{strings.ToUpper(h), false},
		{base64.StdEncoding.EncodeToString(sum[:]), false},
		{base64.RawURLEncoding.EncodeToString(sum[:]), false},
		{"", true},
		{h[:62], true},
		{h + "00", true},
		{"zz" + h[2:], true},
		{base64.StdEncoding.EncodeToString(sum[:31]), true},
		{" " + h, true},
	}
	for _, tc := range cases {
		got, err := DecodeSHA256(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("DecodeSHA256(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && !bytes.Equal(got, sum[:]) {
			t.Errorf("DecodeSHA256(%q) = %x, want %x", tc.in, got, sum)
		}
	}
}

func TestParseSigFile(t *testing.T) {
	sig := bytes.Repeat([]byte{0xab}, 64)
	got, err := ParseSigFile([]byte(hex.EncodeToString(sig) + "\n"))
	if err != nil || !bytes.Equal(got, sig) {
		t.Fatalf("ParseSigFile = %x, %v; want %x", got, err, sig)
	}
	for _, bad := range []string{"", "\n", "abc", strings.Repeat("a", 2000)} {
		if _, err := ParseSigFile([]byte(bad)); err == nil {
			t.Errorf("ParseSigFile(%q) succeeded, want error", truncate(bad, 20))
		}
	}
}

func FuzzDecodeDigestAndSignature(f *testing.F) {
	f.Add(strings.Repeat("ab", 32))
	f.Add(strings.Repeat("ab", 64))
	f.Add(base64.StdEncoding.EncodeToString(make([]byte, 32)))
	f.Add(base64.RawURLEncoding.EncodeToString(make([]byte, 64)))
	f.Add("==")
	f.Fuzz(func(t *testing.T, s string) {
		if b, err := DecodeSHA256(s); err == nil {
			if len(b) != 32 {
				t.Fatalf("DecodeSHA256(%q) returned %d bytes", s, len(b))
			}
			n, err := NormalizeSHA256(s)
			if err != nil || n != hex.EncodeToString(b) {
				t.Fatalf("NormalizeSHA256(%q) = %q, %v", s, n, err)
			}
		}
		if b, err := DecodeSignature(s); err == nil && len(b) != 64 {
			t.Fatalf("DecodeSignature(%q) returned %d bytes", s, len(b))
		}
		ParseSigFile([]byte(s))
	})
}
