package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"io"
	"math/big"
	"testing"
)

// smallOrderAndOddPoints are encodings that trip up Ed25519 verifiers:
// small-order points, non-canonical y coordinates and points off the curve.
var smallOrderAndOddPoints = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4
	"0000000000000000000000000000000000000000000000000000000000000080", // order 4, sign bit set
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p (non-canonical 0)
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+1 (non-canonical 1)
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // same, sign bit set
	"0200000000000000000000000000000000000000000000000000000000000000", // not on the curve
}

// ell is the order of the Ed25519 base point.
var ell, _ = new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)

func streamVerify(t testing.TB, pub, msg, sig []byte, chunk int) bool {
	t.Helper()
	v, err := NewVerifier(pub, sig)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	if chunk <= 0 {
		chunk = 1
	}
	for len(msg) > 0 {
		n := min(chunk, len(msg))
		v.Write(msg[:n])
		msg = msg[n:]
	}
	return v.Verify()
}

func leBytes(n *big.Int) []byte {
	be := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		be[i], be[j] = be[j], be[i]
	}
	return be
}

func TestSignStreamMatchesStdlib(t *testing.T) {
	for _, size := range []int{0, 1, 63, 64, 1000, 1 << 16, 1<<20 + 7} {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := make([]byte, size)
		rand.Read(msg)
		got, err := SignStream(priv, func(pass int, w io.Writer) error {
			_, err := io.Copy(w, bytes.NewReader(msg))
			return err
		})
		if err != nil {
			t.Fatalf("SignStream(%d bytes): %v", size, err)
		}
		if want := ed25519.Sign(priv, msg); !bytes.Equal(got, want) {
			t.Fatalf("SignStream(%d bytes) = %x, want %x", size, got, want)
		}
		if !ed25519.Verify(pub, msg, got) {
			t.Fatalf("stdlib rejects SignStream's signature over %d bytes", size)
		}
	}
}

func TestSignStreamPassError(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	for _, failPass := range []int{1, 2} {
		_, err := SignStream(priv, func(pass int, w io.Writer) error {
			if pass == failPass {
				return io.ErrUnexpectedEOF
			}
			return nil
		})
		if err != io.ErrUnexpectedEOF {
			t.Errorf("SignStream with pass %d failing = %v, want %v", failPass, err, io.ErrUnexpectedEOF)
		}
	}
}

func TestVerifierMatchesStdlib(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte("the artifact bytes")
	sig := ed25519.Sign(priv, msg)

	nonCanonicalS := append([]byte(nil), sig...)
	s := new(big.Int).SetBytes(reverse(sig[32:]))
	copy(nonCanonicalS[32:], leBytes(s.Add(s, ell))) // S + ℓ verifies mathematically; must be refused

	flippedR := append([]byte(nil), sig...)
	flippedR[0] ^= 1
	highBits := append([]byte(nil), sig...)
	highBits[63] |= 0xe0

	cases := []struct {
		name          string
		pub, msg, sig []byte
	}{
		{"valid", pub, msg, sig},
		{"other message", pub, []byte("the artifact bytez"), sig},
		{"empty message", pub, nil, ed25519.Sign(priv, nil)},
		{"non-canonical S", pub, msg, nonCanonicalS},
		{"flipped R", pub, msg, flippedR},
		{"high bits of S", pub, msg, highBits},
		{"short signature", pub, msg, sig[:63]},
		{"long signature", pub, msg, append(append([]byte(nil), sig...), 0)},
		{"no signature", pub, msg, nil},
		{"zero signature", pub, msg, make([]byte, 64)},
	}
	for _, p := range smallOrderAndOddPoints {
		A, _ := hex.DecodeString(p)
		cases = append(cases,
			struct {
				name          string
				pub, msg, sig []byte
			}{"odd A " + p[:8], A, msg, sig},
			// With a small-order A and R, S = 0 satisfies the cofactorless
			// equation for some messages: both verifiers must agree.
			struct {
				name          string
				pub, msg, sig []byte
			}{"odd A and R " + p[:8], A, msg, append(append([]byte(nil), A...), make([]byte, 32)...)},
		)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := ed25519.Verify(tc.pub, tc.msg, tc.sig)
			for _, chunk := range []int{1, 7, 4096} {
				if got := streamVerify(t, tc.pub, tc.msg, tc.sig, chunk); got != want {
					t.Errorf("Verifier (chunk %d) = %v, crypto/ed25519.Verify = %v", chunk, got, want)
				}
			}
		})
	}
	if !streamVerify(t, pub, msg, sig, 3) {
		t.Fatal("valid signature rejected")
	}
}

func TestNewVerifierRejectsBadKeyLength(t *testing.T) {
	if _, err := NewVerifier(make([]byte, 31), make([]byte, 64)); err == nil {
		t.Fatal("NewVerifier(31-byte key) succeeded, want error")
	}
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

// FuzzVerifyDifferential checks the streaming verifier against
// crypto/ed25519.Verify on arbitrary keys, messages and signatures, fed in
// arbitrary chunk sizes. Seeds cover valid signatures, non-canonical S,
// small-order and non-canonical points.
func FuzzVerifyDifferential(f *testing.F) {
	seedPub, seedPriv, _ := ed25519.GenerateKey(bytes.NewReader(make([]byte, 64)))
	msg := []byte("seed message")
	sig := ed25519.Sign(seedPriv, msg)
	f.Add([]byte(seedPub), msg, sig, uint16(5))
	f.Add([]byte(seedPub), msg, append(sig[:32:32], leBytes(new(big.Int).Add(new(big.Int).SetBytes(reverse(sig[32:])), ell))...), uint16(1))
	for _, p := range smallOrderAndOddPoints {
		A, _ := hex.DecodeString(p)
		f.Add(A, msg, append(append([]byte(nil), A...), make([]byte, 32)...), uint16(3))
		f.Add(A, msg, sig, uint16(64))
	}
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte, chunk uint16) {
		if len(pub) != ed25519.PublicKeySize {
			if _, err := NewVerifier(pub, sig); err == nil {
				t.Fatalf("NewVerifier accepted a %d-byte key", len(pub))
			}
			return
		}
		want := ed25519.Verify(pub, msg, sig)
		if got := streamVerify(t, pub, msg, sig, int(chunk)); got != want {
			t.Fatalf("Verifier = %v, crypto/ed25519.Verify = %v (pub %x sig %x msg %x)", got, want, pub, sig, msg)
		}
	})
}

// FuzzSignDifferential checks SignStream against crypto/ed25519.Sign.
func FuzzSignDifferential(f *testing.F) {
	f.Add(make([]byte, 32), []byte("hello"))
	f.Add(bytes.Repeat([]byte{0xff}, 32), []byte{})
	f.Fuzz(func(t *testing.T, seed, msg []byte) {
		if len(seed) != ed25519.SeedSize {
			return
		}
		priv := ed25519.NewKeyFromSeed(seed)
		got, err := SignStream(priv, func(_ int, w io.Writer) error {
			_, err := w.Write(msg)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := ed25519.Sign(priv, msg); !bytes.Equal(got, want) {
			t.Fatalf("SignStream = %x, want %x", got, want)
		}
	})
}
