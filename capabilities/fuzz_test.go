package capabilities

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
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
		p, _, err := VerifyPackage(raw, sig, trusted(pub))
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
		`{"op":"start","start":{"addon_id":"pingsweep","version":"1.0.0","file":"pingsweep","description":"addond add-on pingsweep 1.0.0 [0123456789abcdef]","sidecar":true,"env":["PLUGIN_UNIX_SOCKET_DIR=/run/addond-cap/pingsweep/sock/plugin-dir1"]}}`,
		`{"op":"start","start":{"addon_id":"x","version":"1","file":"x","description":"addond add-on x 1 [0f]","restart":{"delay":1000000000,"interval":10000000000,"burst":5},"args":["--a"],"config":{"k":1}}}`,
		`{"op":"start"}`,
		`{"op":"stop","addon_id":"../etc"}`,
		`{"op":"prepare","addon_id":"pingsweep"}`,
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
			RunRoot: filepath.Join(dir, "run"),
		},
		// No manager: a start, stop or prepare that gets that far fails.
		Systemd:     func(context.Context) (*sd.Conn, error) { return nil, errors.New("no manager in the fuzz") },
		AgentCgroup: CgroupOf(cg),
		Version:     "fuzz",
		Log:         slog.New(slog.DiscardHandler),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := socketPair(t)
		defer client.Close()
		handled := make(chan struct{})
		go func() {
			p, err := PeerOf(server)
			s.handle(server, p, err)
			close(handled)
		}()
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
		case req.Op == "start" || req.Op == "stop" || req.Op == "prepare":
			if resp.Error == "" || resp.Started != nil {
				t.Fatalf("%s without trust keys or a manager answered %+v", req.Op, resp)
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

// FuzzParseCap: a capability name (from a package, an assignment, a
// policy line or a command line) parses to a known capability whose own
// name parses back to it, in any case, with or without "cap_"; a set of
// names holds exactly the capabilities named.
func FuzzParseCap(f *testing.F) {
	for _, s := range []string{"cap_net_raw", "CAP_NET_RAW", "net_raw", " cap_bpf\t", "cap_cap_net_raw", "cap_", "", "cap_41", "checkpoint_restore", "CAP_SYS_ADMIN", "cap_net_raw,cap_bpf", "cap_net_rаw"} {
		f.Add(s, "cap_net_admin")
	}
	f.Fuzz(func(t *testing.T, name, other string) {
		c, err := Parse(name)
		if err != nil {
			if c != 0 {
				t.Fatalf("refused (%v) with %d", err, c)
			}
			return
		}
		if c > Last {
			t.Fatalf("Parse(%q) = unknown capability %d", name, c)
		}
		for _, n := range []string{c.String(), strings.ToUpper(c.String()), strings.TrimPrefix(c.String(), "cap_")} {
			if again, err := Parse(n); err != nil || again != c {
				t.Fatalf("Parse(%q) = %v, %v; want %v", n, again, err, c)
			}
		}
		if !strings.EqualFold(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(name)), "cap_"), strings.TrimPrefix(c.String(), "cap_")) {
			t.Fatalf("Parse(%q) = %v, a capability it does not name", name, c)
		}
		s, err := ParseSet([]string{name, other})
		o, oerr := Parse(other)
		if (err == nil) != (oerr == nil) {
			t.Fatalf("ParseSet(%q, %q): %v, Parse(%q): %v", name, other, err, other, oerr)
		}
		if err == nil && s != Set(0).Add(c).Add(o) {
			t.Fatalf("ParseSet(%q, %q) = %s", name, other, s)
		}
	})
}

// FuzzCgroupOf: the updater authorizes the agent by the cgroup its
// /proc/<pid>/cgroup names. The path it reads is one a line of the file
// gives, on the unified hierarchy's line or v1's name=systemd line, and
// never spans lines.
func FuzzCgroupOf(f *testing.F) {
	for _, s := range []string{
		"0::/system.slice/addond.service\n",
		"12:pids:/x\n1:name=systemd:/system.slice/addond.service\n0::/\n",
		"0::/\n",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/addond-hello.service\n",
		"1:name=systemd:/a\n0::/b\n",
		"0::/a\n0::/b\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cg := CgroupOf(data)
		if cg == "" {
			return
		}
		if strings.Contains(cg, "\n") {
			t.Fatalf("CgroupOf(%q) = %q, more than a line", data, cg)
		}
		found := false
		for _, line := range strings.Split(string(data), "\n") {
			if line == "0::"+cg || strings.HasSuffix(line, ":name=systemd:"+cg) {
				found = true
			}
		}
		if !found {
			t.Fatalf("CgroupOf(%q) = %q, on no line", data, cg)
		}
	})
}

// FuzzClientResponse: the agent's client of the updater protocol decodes
// whatever answers on the updater socket. An answer that is not one JSON
// Response is ErrUnavailable; a Response with an error is that error;
// an apply succeeds only with the path it was answered, and no call
// succeeds on an answer encoding/json does not decode.
func FuzzClientResponse(f *testing.F) {
	for _, s := range []string{
		`{"protocol":1,"version":"0.1.0"}`,
		`{"applied":{"path":"/var/lib/addond-privileged/pingsweep/1.0.0/pingsweep","caps":["cap_net_raw"]}}`,
		`{"error":"package signature does not verify"}`,
		`{"error":"x","applied":{"path":"/p"}}`,
		`{}`, `null`, `{"protocol":"1"}`, `{"applied":null}`, `{"protocol":1} trailing`, `[`, ``,
	} {
		f.Add([]byte(s))
	}
	sock := filepath.Join(f.TempDir(), "updater.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	answers := make(chan []byte)
	go func() {
		for answer := range answers {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, conn) // the client closes its write side
			conn.Write(answer)
			conn.Close()
		}
	}()
	f.Cleanup(func() { close(answers) })
	c := &Client{Socket: sock, Timeout: 10 * time.Second}
	f.Fuzz(func(t *testing.T, answer []byte) {
		var ref Response
		derr := json.NewDecoder(io.LimitReader(bytes.NewReader(answer), MaxRequest)).Decode(&ref)
		check := func(what string, err error) {
			t.Helper()
			switch {
			case derr != nil:
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("%s: %q answered %v, want %v", what, answer, err, ErrUnavailable)
				}
			case ref.Error != "":
				if err == nil || err.Error() != ref.Error {
					t.Fatalf("%s: %q answered %v, want %q", what, answer, err, ref.Error)
				}
			case what == "apply" && ref.Applied == nil:
				if err == nil {
					t.Fatalf("apply: %q accepted without a path", answer)
				}
			default:
				if err != nil {
					t.Fatalf("%s: %q refused: %v", what, answer, err)
				}
			}
		}
		ctx := context.Background()

		answers <- answer
		version, protocol, err := c.Ping(ctx)
		check("ping", err)
		if err == nil && (derr != nil || ref.Error != "" || version != ref.Version || protocol != ref.Protocol) {
			t.Fatalf("ping of %q = %q, %d", answer, version, protocol)
		}

		answers <- answer
		applied, err := c.Apply(ctx, ApplyRequest{AddonID: "pingsweep", Version: "1.0.0", File: "pingsweep"})
		check("apply", err)
		if err == nil && (applied == nil || ref.Applied == nil || !reflect.DeepEqual(*applied, *ref.Applied)) {
			t.Fatalf("apply of %q = %+v", answer, applied)
		}
		if err != nil && applied != nil {
			t.Fatalf("apply refused (%v) with %+v", err, applied)
		}

		answers <- answer
		err = c.Remove(ctx, "pingsweep", "1.0.0")
		check("remove", err)
		if err == nil && (derr != nil || ref.Error != "") {
			t.Fatalf("remove of %q succeeded", answer)
		}
	})
}
