// Package signing holds addond's Ed25519 primitives: loading PEM keys and
// key rings for rotation, key ids, decoding the hex/base64 digests and
// signatures that assignments carry, and pure Ed25519 signing and
// verification over streams.
//
// Pure Ed25519 (RFC 8032 §5.1) hashes the message inside the signature
// scheme, which is why crypto/ed25519 wants the whole message in memory. It
// does not have to: verification needs k = SHA-512(R ‖ A ‖ M), which streams,
// and the rest is curve arithmetic on 32-byte values. Signing needs the
// message twice — once for the deterministic nonce r = SHA-512(prefix ‖ M),
// once for k — so it reads a stream twice. Both are written with
// filippo.io/edwards25519, the arithmetic Go's own crypto/ed25519 uses, and
// are differentially fuzzed against crypto/ed25519 so that they accept and
// produce exactly the same signatures.
package signing
