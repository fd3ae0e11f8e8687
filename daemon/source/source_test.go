package source

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/addond/addond/daemon/signing"
)

func TestFileSourceIsConditional(t *testing.T) {
	p := filepath.Join(t.TempDir(), "assignments.json")
	os.WriteFile(p, []byte(`{"agent_id":"a","serial":1,"addons":[]}`), 0o644)
	src := &File{Path: p}
	got, err := src.Fetch(context.Background(), "")
	if err != nil || got.Sig != nil || got.Remote {
		t.Fatalf("Fetch = %+v, %v", got, err)
	}
	if _, err := src.Fetch(context.Background(), got.Token); !errors.Is(err, ErrUnchanged) {
		t.Fatalf("Fetch(unchanged) = %v, want ErrUnchanged", err)
	}
	os.WriteFile(p+".sig", []byte("00\n"), 0o644) // a new .sig is a change
	if _, err := src.Fetch(context.Background(), got.Token); err != nil {
		t.Fatalf("Fetch after a .sig appeared = %v, want the document", err)
	}
}

func TestAccept(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	keys := signing.NewKeyring(pub)
	doc := []byte(`{"agent_id":"edge-01","serial":5,"addons":[]}`)
	sig := []byte(hex.EncodeToString(ed25519.Sign(priv, doc)))
	policy := Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 5}
	cv := DocumentDigest(doc)
	// The same serial, other content; and doc again with other whitespace.
	other := []byte(`{"agent_id":"edge-01","serial":5,"addons":[{"addon_id":"hello","version":"1.0.0"}]}`)
	otherSig := []byte(hex.EncodeToString(ed25519.Sign(priv, other)))
	cases := []struct {
		name string
		f    Fetched
		p    Policy
		want error
	}{
		{"signed", Fetched{Raw: doc, Sig: sig, Remote: true}, policy, nil},
		{"unsigned remote", Fetched{Raw: doc, Remote: true}, policy, ErrUnsigned},
		{"unsigned local file", Fetched{Raw: doc}, policy, nil},
		{"bad signature", Fetched{Raw: append(doc, ' '), Sig: sig, Remote: true}, policy, signing.ErrBadSignature},
		{"signature but no keys", Fetched{Raw: doc, Sig: sig, Remote: true}, Policy{AgentID: "edge-01", Keys: signing.NewKeyring()}, signing.ErrUnknownKey},
		{"other agent", Fetched{Raw: doc, Sig: sig, Remote: true}, Policy{AgentID: "edge-02", Keys: keys}, ErrOtherAgent},
		{"replay", Fetched{Raw: doc, Sig: sig, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 6}, ErrSerialReplay},
		{"replay from the store, signatures not required", Fetched{Raw: doc, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, LastSerial: 6}, ErrSerialReplay},
		{"replay of a signed local file", Fetched{Raw: doc, Sig: sig}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 6}, ErrSerialReplay},
		{"local file going back, signatures not required", Fetched{Raw: doc}, Policy{AgentID: "edge-01", Keys: keys, LastSerial: 6}, nil},
		{"same serial, same content", Fetched{Raw: doc, Sig: sig, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 5, LastDigest: cv}, nil},
		{"same serial, other content", Fetched{Raw: other, Sig: otherSig, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 5, LastDigest: cv}, ErrSerialReplay},
		{"same serial, other content, signatures not required", Fetched{Raw: other, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, LastSerial: 5, LastDigest: cv}, nil},
		{"same serial, digest unknown", Fetched{Raw: other, Sig: otherSig, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 5}, nil},
		{"higher serial", Fetched{Raw: other, Sig: otherSig, Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 4, LastDigest: cv}, nil},
	}
	respaced := []byte(`{ "agent_id": "edge-01", "serial": 5, "addons": [] }`)
	cases = append(cases, struct {
		name string
		f    Fetched
		p    Policy
		want error
	}{"same serial, same content reformatted (other bytes)", Fetched{Raw: respaced, Sig: []byte(hex.EncodeToString(ed25519.Sign(priv, respaced))), Remote: true}, Policy{AgentID: "edge-01", Keys: keys, RequireSignatures: true, LastSerial: 5, LastDigest: cv}, ErrSerialReplay})
	for _, tc := range cases {
		_, err := Accept(&tc.f, tc.p)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: Accept = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := 0; i < 1000; i++ {
		d := Jitter(30 * time.Second)
		if d < 24*time.Second || d > 36*time.Second {
			t.Fatalf("Jitter(30s) = %v, outside ±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Fatalf("Jitter produced only %d distinct intervals", len(seen))
	}
}

func TestReplayMessages(t *testing.T) {
	doc := []byte(`{"agent_id":"edge-01","serial":5,"addons":[]}`)
	_, err := Accept(&Fetched{Raw: doc, Origin: "store/agents/edge-01/assignments.json", Remote: true}, Policy{AgentID: "edge-01", Keys: signing.NewKeyring(), LastSerial: 7})
	var re *ReplayError
	if !errors.As(err, &re) || re.Serial != 5 || re.LastSerial != 7 || re.SameSerial {
		t.Fatalf("Accept = %v, want a ReplayError 5 < 7", err)
	}
	if want := "assignments store/agents/edge-01/assignments.json: serial 5 is lower than 7, the last applied: refused as a replay"; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if got := (&ReplayError{Serial: 7, LastSerial: 7, SameSerial: true}).Error(); got != "serial 7 was already applied with different content: refused as a replay" {
		t.Fatalf("same-serial message %q", got)
	}
}
