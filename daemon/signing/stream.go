package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"

	"filippo.io/edwards25519"
)

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("ed25519 signature does not verify")

// Verifier checks a pure Ed25519 signature over a message that is written
// to it in pieces. It is an io.Writer: write the message, then call Verify.
// It is not safe for concurrent use.
type Verifier struct {
	h   hash.Hash
	pub ed25519.PublicKey
	sig [ed25519.SignatureSize]byte
	bad bool // the signature is malformed; Verify fails without arithmetic
}

// NewVerifier starts verifying sig under pub. A public key of the wrong
// length is an error; a malformed signature is not (it simply fails Verify),
// matching crypto/ed25519.Verify.
func NewVerifier(pub ed25519.PublicKey, sig []byte) (*Verifier, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ed25519 public key has %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	v := &Verifier{h: sha512.New(), pub: pub}
	if len(sig) != ed25519.SignatureSize || sig[63]&224 != 0 {
		v.bad = true
		return v, nil
	}
	copy(v.sig[:], sig)
	v.h.Write(v.sig[:32])
	v.h.Write(pub)
	return v, nil
}

// Write feeds the next piece of the message. It never fails.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.bad {
		return len(p), nil
	}
	return v.h.Write(p)
}

// Verify reports whether the signature is valid for everything written so
// far. It performs the same checks as crypto/ed25519.Verify: S must be a
// canonical scalar (S < ℓ), A must decode, and [S]B − [k]A must encode to
// exactly R's bytes.
func (v *Verifier) Verify() bool {
	if v.bad {
		return false
	}
	A, err := new(edwards25519.Point).SetBytes(v.pub)
	if err != nil {
		return false
	}
	k, err := edwards25519.NewScalar().SetUniformBytes(v.h.Sum(nil))
	if err != nil {
		return false
	}
	S, err := edwards25519.NewScalar().SetCanonicalBytes(v.sig[32:])
	if err != nil {
		return false
	}
	minusA := new(edwards25519.Point).Negate(A)
	R := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(k, minusA, S)
	return bytes.Equal(v.sig[:32], R.Bytes())
}

// MessageFunc writes the message to be signed to w. SignStream calls it
// twice and both calls must write the same bytes.
type MessageFunc func(pass int, w io.Writer) error

// SignStream produces the pure Ed25519 signature of a message that is too
// large to hold in memory. It calls message twice: pass 1 derives the
// deterministic nonce, pass 2 the challenge. The result is byte-for-byte the
// signature crypto/ed25519.Sign would produce for the same bytes.
//
// The two passes must see identical bytes: signing different messages with
// one nonce leaks the private key. Callers that read a file twice should
// compare a digest of both passes and discard the signature when they differ
// (see publish); SignStream itself cannot tell.
func SignStream(priv ed25519.PrivateKey, message MessageFunc) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("ed25519 private key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	seed, pub := priv[:32], priv[32:]
	h := sha512.Sum512(seed)
	s, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		return nil, err
	}
	prefix := h[32:]

	mh := sha512.New()
	mh.Write(prefix)
	if err := message(1, mh); err != nil {
		return nil, err
	}
	r, err := edwards25519.NewScalar().SetUniformBytes(mh.Sum(nil))
	if err != nil {
		return nil, err
	}
	R := new(edwards25519.Point).ScalarBaseMult(r)
	encR := R.Bytes()

	kh := sha512.New()
	kh.Write(encR)
	kh.Write(pub)
	if err := message(2, kh); err != nil {
		return nil, err
	}
	k, err := edwards25519.NewScalar().SetUniformBytes(kh.Sum(nil))
	if err != nil {
		return nil, err
	}
	S := edwards25519.NewScalar().MultiplyAdd(k, s, r)

	sig := make([]byte, 0, ed25519.SignatureSize)
	sig = append(sig, encR...)
	return append(sig, S.Bytes()...), nil
}
