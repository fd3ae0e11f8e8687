package capabilities

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Each fuzz target runs its seeds under plain `go test`.

func FuzzDecodeFileCaps(f *testing.F) {
	f.Add(FileCaps{Permitted: 1 << 13, Effective: true}.Encode())
	f.Add(FileCaps{Permitted: 1<<38 | 1<<39, Inheritable: 1, Effective: true}.Encode())
	f.Add(FileCaps{Permitted: 1 << 13, Effective: true, RootID: 1000}.Encode())
	f.Add(FileCaps{Permitted: 1 << 13, Revision: 3}.Encode())
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 1, 0, 0x20, 0, 0, 0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 24))
	f.Fuzz(func(t *testing.T, b []byte) {
		fc, err := DecodeFileCaps(b)
		if err != nil {
			if fc != (FileCaps{}) {
				t.Fatalf("an error with a value: %+v", fc)
			}
			return
		}
		switch {
		case fc.Revision == 2 && len(b) == 20 && fc.RootID == 0:
		case fc.Revision == 3 && len(b) == 24:
		default:
			t.Fatalf("decoded %d bytes as %+v", len(b), fc)
		}
		// What decodes encodes back to the same bytes.
		if again := fc.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("DecodeFileCaps(%x) = %+v, which encodes to %x", b, fc, again)
		}
	})
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(DefaultPolicy))
	f.Add([]byte("cap_net_raw\r\n# c\n  NET_ADMIN # x\n"))
	f.Add([]byte("cap_flying\n"))
	f.Add([]byte("\x00cap_bpf"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParsePolicy(data)
		if err != nil {
			if s != 0 {
				t.Fatalf("an error with a set: %s", s)
			}
			return
		}
		for _, c := range s.Caps() {
			if c > Last {
				t.Fatalf("policy allows unknown capability %d", c)
			}
		}
		// Every capability allowed is named on a line of its own.
		again, err := ParsePolicy([]byte(strings.Join(s.Names(), "\n")))
		if err != nil || again != s {
			t.Fatalf("%s re-parses as %s, %v", s, again, err)
		}
		if s != 0 && !bytes.Contains(bytes.ToLower(data), []byte(strings.TrimPrefix(s.Caps()[0].String(), "cap_"))) {
			t.Fatalf("%s allowed by a policy that does not name it", s.Caps()[0])
		}
	})
}

// fuzzKey is a fixed key, so that the corpus stays meaningful.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))

func FuzzVerifyPackage(f *testing.F) {
	raw := []byte(`{"addon_id":"pingsweep","version":"1.0.0","os_capabilities":["cap_net_raw"],"artifacts":{"linux/amd64":{"object_key":"a/b","sha256":"` + strings.Repeat("0", 64) + `","size":1,"binary_name":"pingsweep"}}}`)
	sig := hex.EncodeToString(ed25519.Sign(fuzzKey, raw))
	f.Add(raw, sig)
	f.Add(raw, sig+"\n")
	f.Add(raw, strings.ToUpper(sig))
	f.Add(append(raw, ' '), sig)
	f.Add(raw, "")
	f.Add([]byte("null"), hex.EncodeToString(ed25519.Sign(fuzzKey, []byte("null"))))
	f.Add([]byte("[]"), hex.EncodeToString(ed25519.Sign(fuzzKey, []byte("[]"))))
	pub := fuzzKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, raw []byte, sig string) {
		p, err := VerifyPackage(raw, sig, []ed25519.PublicKey{pub})
		s, herr := hex.DecodeString(strings.TrimSpace(sig))
		signedOK := herr == nil && len(s) == ed25519.SignatureSize && ed25519.Verify(pub, raw, s) && len(raw) <= maxPackage
		if err == nil {
			if p == nil {
				t.Fatal("accepted without a package")
			}
			if !signedOK {
				t.Fatalf("accepted a package the key did not sign: %q %q", raw, sig)
			}
			return
		}
		if p != nil {
			t.Fatalf("refused (%v) with a package", err)
		}
		if signedOK && json.Unmarshal(raw, new(Package)) == nil {
			t.Fatalf("refused a correctly signed package: %v", err)
		}
	})
}

// FuzzRequestDecode feeds raw bytes to the server's own handler over a
// unix socket pair, as a connection from an authorized caller (this
// process) would: it answers exactly one Response, and a bad request is
// refused as one.
func FuzzRequestDecode(f *testing.F) {
	for _, seed := range []string{
		`{"op":"ping"}`,
		`{"op":"apply","apply":{"addon_id":"pingsweep","version":"1.0.0","file":"pingsweep","package":"e30=","signature":"00"}}`,
		`{"op":"remove","addon_id":"../etc"}`,
		`{"op":"remove","addon_id":"x","version":".."}`,
		`{"op":"apply"}`,
		`{"op":"ping","x":1}`,
		`{"op":"ping"} trailing`,
		`[`,
		``,
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	me, err := user.Current()
	if err != nil {
		f.Fatal(err)
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		f.Fatal(err)
	}
	s := &Server{
		// Nothing the requests name exists: an apply is refused, a
		// remove works on an empty tree in a temp dir.
		Config: Config{
			RuntimeRoot: filepath.Join(dir, "runtime"), PrivilegedRoot: filepath.Join(dir, "priv"),
			Trust: []string{filepath.Join(dir, "trust")}, Policy: filepath.Join(dir, "policy"), AgentUser: me.Username,
		},
		AgentCgroup: CgroupOf(cg),
		Version:     "fuzz",
		Log:         slog.New(slog.DiscardHandler),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := socketPair(t)
		defer client.Close()
		handled := make(chan struct{})
		go func() { s.handle(server); close(handled) }()
		go func() { client.Write(data); client.CloseWrite() }()
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		answer, err := io.ReadAll(client)
		if err != nil && len(answer) == 0 {
			t.Fatalf("no answer: %v", err)
		}
		<-handled
		dec := json.NewDecoder(bytes.NewReader(answer))
		dec.DisallowUnknownFields()
		var resp Response
		if err := dec.Decode(&resp); err != nil {
			t.Fatalf("answer %q: %v", answer, err)
		}
		if dec.More() {
			t.Fatalf("more than one answer: %q", answer)
		}

		// What the server should have made of it.
		var req Request
		want := json.NewDecoder(io.LimitReader(bytes.NewReader(data), MaxRequest+1))
		want.DisallowUnknownFields()
		switch derr := want.Decode(&req); {
		case derr != nil:
			if !strings.HasPrefix(resp.Error, "bad request: ") {
				t.Fatalf("%q does not decode (%v), answered %+v", data, derr, resp)
			}
		case req.Op == "ping":
			if resp.Error != "" || resp.Protocol != Protocol || resp.Version != "fuzz" {
				t.Fatalf("ping answered %+v", resp)
			}
		case req.Op == "apply":
			if resp.Error == "" || resp.Applied != nil {
				t.Fatalf("an apply without trust keys answered %+v", resp)
			}
		case req.Op == "remove":
			if resp.Applied != nil || resp.Protocol != 0 {
				t.Fatalf("remove answered %+v", resp)
			}
		default:
			if !strings.HasPrefix(resp.Error, "unknown op ") {
				t.Fatalf("op %q answered %+v", req.Op, resp)
			}
		}
	})
}

func socketPair(t *testing.T) (client, server *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		file := os.NewFile(uintptr(fd), "socketpair")
		defer file.Close()
		c, err := net.FileConn(file)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
