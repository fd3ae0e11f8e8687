package source

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
)

// fuzzKey is fixed so that the corpus stays meaningful; otherKey is
// trusted too, to exercise a key ring of more than one key.
var (
	fuzzKey  = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	otherKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x17}, ed25519.SeedSize))
)

// Flags of FuzzAccept, one bit each.
const (
	fRemote     = 1 << iota // the document came from the store
	fRequire                // trust.require_signatures
	fSig                    // a .sig file is present (its bytes are the input sig)
	fSign                   // ... and replaced by the real signature of doc by fuzzKey
	fNoKeys                 // the key ring is empty
	fDigest                 // the state knows the digest of the document applied at LastSerial
	fSameDigest             // ... and it is the digest of this very document
)

// FuzzAccept drives Accept with a document and .sig through a key ring,
// signed and unsigned, remote and local, and checks its decision against
// the contract: a present .sig must verify (under a trusted key, over the
// exact bytes); a remote document without one is refused when signatures
// are required; the document parses as assignment.Parse parses it; its
// agent_id is this agent's (a local file may name none); with signatures
// required, or for any document from the store, the serial never goes
// back; with signatures required, the last applied serial comes back only
// as the same bytes. An accepted document is exactly
// what assignment.Parse returns, and an acceptable one is never refused.
func FuzzAccept(f *testing.F) {
	doc := `{"agent_id":"edge-01","serial":7,"config_version":"ab","addons":[{"addon_id":"hello","version":"1.0.0","enabled":true,"delivery":"pushed_artifact","supervision":"agent_sidecar","binary_path":"hello","artifact_object_key":"artifacts/hello/1.0.0/linux-amd64/hello","artifact_sha256":"` + strings.Repeat("ab", 32) + `","target_os":"linux","target_arch":"amd64"}]}`
	sig := hex.EncodeToString(ed25519.Sign(fuzzKey, []byte(doc))) + "\n"
	for _, flags := range []uint8{
		fRemote | fRequire | fSig | fSign, fRemote | fRequire | fSig, fRemote | fRequire, fRemote,
		fSig, 0, fRequire, fRemote | fRequire | fSig | fNoKeys, fSig | fSign | fNoKeys,
	} {
		f.Add([]byte(doc), []byte(sig), flags, uint64(3))
	}
	f.Add([]byte(doc), []byte(sig), uint8(fRemote|fRequire|fSig), uint64(8))                                                  // replay
	f.Add([]byte(doc+" "), []byte(sig), uint8(fRemote|fRequire|fSig), uint64(0))                                              // one byte more
	f.Add([]byte(`{"serial":1,"addons":[]}`), []byte(""), uint8(0), uint64(0))                                                // local, no agent_id
	f.Add([]byte(`{"serial":1,"addons":[]}`), []byte(""), uint8(fRemote|fSig|fSign), uint64(0))                               // remote, no agent_id
	f.Add([]byte(`{"agent_id":"edge-02","serial":9,"addons":[]}`), []byte(""), uint8(fRemote|fRequire|fSig|fSign), uint64(0)) // another agent
	f.Add([]byte(`{"agent_id":"edge-01","serial":1,"addons":[],"x":1}`), []byte(""), uint8(fSig|fSign), uint64(0))            // unknown field
	f.Add([]byte(`{"agent_id":"edge-01"} {}`), []byte(""), uint8(fSig|fSign), uint64(0))                                      // trailing data
	f.Add([]byte(doc), []byte(strings.ToUpper(sig)), uint8(fRemote|fRequire|fSig), uint64(0))
	f.Add([]byte(doc), []byte(""), uint8(fRemote|fRequire|fSig), uint64(0)) // an empty .sig
	f.Add([]byte(doc), bytes.Repeat([]byte("0"), 128), uint8(fSig), uint64(0))
	f.Add([]byte(doc), []byte(sig), uint8(fRemote|fRequire|fSig|fDigest|fSameDigest), uint64(7)) // fetched again
	f.Add([]byte(doc), []byte(sig), uint8(fRemote|fRequire|fSig|fDigest), uint64(7))             // same serial, other bytes
	f.Add([]byte(doc), []byte(sig), uint8(fRemote|fSig|fDigest), uint64(7))                      // ... without required signatures
	f.Add([]byte(doc), []byte(sig), uint8(fSig), uint64(8))                                      // a local file may go back

	pub := fuzzKey.Public().(ed25519.PublicKey)
	keys := signing.NewKeyring(pub, otherKey.Public().(ed25519.PublicKey))
	f.Fuzz(func(t *testing.T, raw, sigFile []byte, flags uint8, last uint64) {
		fetched := &Fetched{Raw: raw, Token: "t", Origin: "fuzz", Remote: flags&fRemote != 0}
		if flags&fSig != 0 {
			fetched.Sig = sigFile
			if flags&fSign != 0 {
				fetched.Sig = []byte(hex.EncodeToString(ed25519.Sign(fuzzKey, raw)) + "\n")
			}
			if fetched.Sig == nil {
				fetched.Sig = []byte{}
			}
		}
		p := Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: flags&fRequire != 0, LastSerial: last}
		switch {
		case flags&fDigest != 0 && flags&fSameDigest != 0:
			p.LastDigest = DocumentDigest(raw)
		case flags&fDigest != 0:
			p.LastDigest = DocumentDigest(append(bytes.Clone(raw), '.'))
		}
		if flags&fNoKeys != 0 {
			p.Keys = signing.NewKeyring()
		}
		rawCopy, sigCopy := bytes.Clone(raw), bytes.Clone(fetched.Sig)
		doc, err := Accept(fetched, p)
		if !bytes.Equal(raw, rawCopy) || !bytes.Equal(fetched.Sig, sigCopy) {
			t.Fatal("Accept changed its input")
		}

		// The reference decision, from the contract.
		var why error
		if fetched.Sig != nil {
			s, serr := signing.ParseSigFile(fetched.Sig)
			switch {
			case serr != nil:
				why = serr
			case p.Keys.Len() == 0:
				why = signing.ErrUnknownKey
			case !ed25519.Verify(pub, raw, s) && !ed25519.Verify(otherKey.Public().(ed25519.PublicKey), raw, s):
				why = signing.ErrBadSignature
			}
		} else if p.RequireSignatures && fetched.Remote {
			why = ErrUnsigned
		}
		want, perr := assignment.Parse(raw)
		if why == nil && perr != nil {
			why = perr
		}
		if why == nil && want.AgentID != p.AgentID && (fetched.Remote || want.AgentID != "") {
			why = ErrOtherAgent
		}
		if why == nil && (p.RequireSignatures || fetched.Remote) && want.Serial < last {
			why = ErrSerialReplay
		}
		if why == nil && p.RequireSignatures && want.Serial == last && flags&fDigest != 0 && flags&fSameDigest == 0 {
			why = ErrSerialReplay
		}

		if err != nil {
			if doc != nil {
				t.Fatalf("refused (%v) with a document", err)
			}
			if why == nil {
				t.Fatalf("refused an acceptable document (flags %05b, last %d): %v", flags, last, err)
			}
			for _, sentinel := range []error{ErrUnsigned, ErrOtherAgent, ErrSerialReplay, signing.ErrUnknownKey, signing.ErrBadSignature} {
				if errors.Is(why, sentinel) && !errors.Is(err, sentinel) {
					t.Fatalf("refused with %v, want %v", err, sentinel)
				}
			}
			return
		}
		if why != nil {
			t.Fatalf("accepted (flags %05b, last %d) what must be refused: %v\ndoc %q\nsig %q", flags, last, why, raw, fetched.Sig)
		}
		if !reflect.DeepEqual(doc, want) {
			t.Fatalf("accepted %+v, assignment.Parse says %+v", doc, want)
		}
	})
}
