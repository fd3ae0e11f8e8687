package goplugin

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fuzzCert is a fixed self-signed certificate and its PKCS #8 key, like
// those of a sidecar's mutual TLS (deterministic: Ed25519 signatures are).
func fuzzCert(f *testing.F, seed byte) (certDER, keyDER []byte) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(int64(seed)),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		f.Fatal(err)
	}
	return der, p8
}

// FuzzLoadReattach: <id>.reattach.json sits in the runtime root, which an
// unsandboxed add-on (addond's uid) can write. It loads to complete
// reattach data or is refused; what loads saves and loads back equal; and
// its TLS material is either refused or makes a client configuration
// that pins exactly the server certificate it names.
func FuzzLoadReattach(f *testing.F) {
	serverDER, _ := fuzzCert(f, 1)
	clientDER, clientKey := fuzzCert(f, 2)
	good := reattachState{
		Unit: "addond-hello.service", InvocationID: "0123456789abcdef0123456789abcdef", Fingerprint: "0123456789abcdef",
		Protocol: "grpc", ProtocolVersion: 1, Addr: "/var/lib/addond/plugins/hello-1/plugin.sock", PID: 4242,
		ServerCert: base64.RawStdEncoding.EncodeToString(serverDER),
		ClientCert: base64.StdEncoding.EncodeToString(clientDER),
		ClientKey:  base64.StdEncoding.EncodeToString(clientKey),
	}
	seed := func(change func(*reattachState)) {
		st := good
		if change != nil {
			change(&st)
		}
		b, _ := json.MarshalIndent(st, "", "  ")
		f.Add(append(b, '\n'))
	}
	seed(nil)
	seed(func(s *reattachState) { s.ServerCert = base64.StdEncoding.EncodeToString(serverDER) }) // padded
	seed(func(s *reattachState) { s.ClientKey = s.ServerCert })                                  // not a key
	seed(func(s *reattachState) { s.ClientCert = "!!" })
	seed(func(s *reattachState) { s.PID = -1 })
	seed(func(s *reattachState) { s.Unit = "" })
	seed(func(s *reattachState) { s.Addr = "/tmp/../etc/x.sock" })
	seed(func(s *reattachState) { s.ProtocolVersion = -9 })
	f.Add([]byte(`{"unit":"u","invocation_id":"i","fingerprint":"f","addr":"a","pid":1,"server_cert":"s","client_cert":"c","client_key":"k"}`))
	f.Add([]byte(`{"pid":1e100}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(fuzzDir(t), "hello.reattach.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := loadReattach(path)
		if err != nil {
			if st != nil {
				t.Fatalf("refused (%v) with data", err)
			}
			return
		}
		if st.Unit == "" || st.InvocationID == "" || st.Fingerprint == "" || st.Addr == "" || st.PID <= 0 ||
			st.ServerCert == "" || st.ClientCert == "" || st.ClientKey == "" {
			t.Fatalf("loaded incomplete %+v", st)
		}
		again := filepath.Join(filepath.Dir(path), "again.reattach.json")
		if err := saveReattach(again, st); err != nil {
			t.Fatalf("loaded data does not save: %v", err)
		}
		st2, err := loadReattach(again)
		if err != nil || !reflect.DeepEqual(st, st2) {
			t.Fatalf("round trip: %+v, %v; want %+v", st2, err, st)
		}
		if fi, err := os.Stat(again); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("saved with mode %v, %v", fi.Mode(), err)
		}
		cfg, err := st.tlsConfig()
		if err != nil {
			if cfg != nil {
				t.Fatalf("refused (%v) with a TLS configuration", err)
			}
			return
		}
		if len(cfg.Certificates) != 1 || cfg.Certificates[0].PrivateKey == nil || cfg.Certificates[0].Leaf == nil || cfg.VerifyConnection == nil {
			t.Fatalf("TLS configuration without its material: %+v", cfg)
		}
		server, _ := base64.RawStdEncoding.DecodeString(strings.TrimRight(st.ServerCert, "="))
		cert, err := x509.ParseCertificate(server)
		if err != nil {
			t.Fatal(err)
		}
		peer := func(c *x509.Certificate) tls.ConnectionState {
			return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
		}
		if err := cfg.VerifyConnection(peer(cert)); err != nil {
			t.Fatalf("the recorded server certificate is refused: %v", err)
		}
		if !bytes.Equal(cert.Raw, cfg.Certificates[0].Leaf.Raw) {
			if err := cfg.VerifyConnection(peer(cfg.Certificates[0].Leaf)); err == nil {
				t.Fatal("a certificate other than the recorded server certificate is accepted")
			}
		}
	})
}

// FuzzReadHandshake: the handshake file is the sidecar's own stdout (an
// add-on writes it). Only its first line counts; it yields the six or
// more go-plugin fields with a unix network and a server certificate, or
// an error.
func FuzzReadHandshake(f *testing.F) {
	serverDER, _ := fuzzCert(f, 1)
	cert := base64.RawStdEncoding.EncodeToString(serverDER)
	f.Add([]byte("1|1|unix|/var/lib/addond/plugins/hello-1/plugin.sock|grpc|" + cert + "\n"))
	f.Add([]byte("1|1|unix|/s|grpc|" + cert + "\nsecond line|x\n"))
	f.Add([]byte("  1|1|unix|/s|grpc|" + cert + "  \r\n"))
	f.Add([]byte("1|1|tcp|127.0.0.1:1234|grpc|" + cert + "\n"))
	f.Add([]byte("1|1|unix|/s|grpc|\n"))
	f.Add([]byte("1|1|unix|/s|grpc\n"))
	f.Add([]byte("\n1|1|unix|/s|grpc|c\n"))
	f.Add([]byte("1|1|unix|/s|grpc|c|extra|fields"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "hello.handshake")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		parts, err := readHandshake(path)
		if err != nil {
			if parts != nil {
				t.Fatalf("refused (%v) with fields", err)
			}
			return
		}
		if len(parts) < 6 || parts[2] != "unix" || parts[5] == "" {
			t.Fatalf("accepted %q", parts)
		}
		line := strings.Join(parts, "|")
		if strings.Contains(line, "\n") || !bytes.Contains(data, []byte(line)) {
			t.Fatalf("fields %q are not from one line of %q", parts, data)
		}
		if len(data) > maxReattachFile && !bytes.Contains(data[:maxReattachFile], []byte(line)) {
			t.Fatalf("fields %q read past the bound", parts)
		}
	})
}

// fuzzDir is a temporary directory on tmpfs when there is one: the state
// files are written durably (fsync), which on a disk would make each
// execution cost milliseconds.
func fuzzDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "addond-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// FuzzHandshakeReader: go-plugin reads the sidecar's handshake from the
// unit's stdout file, which the add-on writes. The reader yields exactly
// the file up to and including its first newline, bounded by
// maxHandshake, and ends once the unit is gone.
func FuzzHandshakeReader(f *testing.F) {
	serverDER, _ := fuzzCert(f, 1)
	line := "1|1|unix|/var/lib/addond/plugins/hello-1/plugin.sock|grpc|" + base64.RawStdEncoding.EncodeToString(serverDER)
	f.Add([]byte(line + "\n"))
	f.Add([]byte(line + "\nlater output\n"))
	f.Add([]byte(line))
	f.Add([]byte("\n"))
	f.Add([]byte(""))
	f.Add(bytes.Repeat([]byte("x"), 5000))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "hello.handshake")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		gone := make(chan struct{})
		close(gone)
		r := &unitRunner{gone: gone, detached: make(chan struct{})}
		h := &handshakeReader{r: r, path: path, closed: make(chan struct{})}
		got, err := io.ReadAll(h)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := data
		if i := bytes.IndexByte(want, '\n'); i >= 0 {
			want = want[:i+1]
		}
		if len(want) > maxHandshake {
			want = want[:maxHandshake]
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %q, want %q", got, want)
		}
	})
}
