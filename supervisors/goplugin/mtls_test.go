package goplugin

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestClientCert(t *testing.T) {
	cert, certPEM, err := newClientCert()
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if !leaf.NotBefore.Equal(time.Unix(0, 0)) || !leaf.NotAfter.Equal(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)) {
		t.Errorf("validity %s – %s, want the Unix epoch – 9999-12-31T23:59:59Z", leaf.NotBefore, leaf.NotAfter)
	}
	// Valid at any time a clock may show.
	for _, at := range []time.Time{time.Unix(0, 0), time.Now().Add(-5 * time.Hour), time.Now(), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if at.Before(leaf.NotBefore) || at.After(leaf.NotAfter) {
			t.Errorf("not valid at %s", at)
		}
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %b, want digital signature only", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageServerAuth {
		t.Errorf("extended key usage %v, want client and server auth", leaf.ExtKeyUsage)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA %v (basic constraints %v), want a non-CA certificate", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if err := leaf.VerifyHostname("localhost"); err != nil {
		t.Error(err)
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	// PLUGIN_CLIENT_CERT: the PEM of the very certificate, as go-plugin's
	// server parses it.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("PEM not accepted by AppendCertsFromPEM")
	}
	if b, _ := pem.Decode(certPEM); b == nil || b.Type != "CERTIFICATE" || string(b.Bytes) != string(cert.Certificate[0]) {
		t.Fatal("PEM is not the certificate")
	}
	// A new one for every run.
	other, _, err := newClientCert()
	if err != nil {
		t.Fatal(err)
	}
	if string(other.Certificate[0]) == string(cert.Certificate[0]) || other.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two runs got the same certificate")
	}
}

// pluginCert makes a server certificate as go-plugin's generateCert does,
// with the validity given, signed with key (a new one when nil).
func pluginCert(t *testing.T, key *ecdsa.PrivateKey, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"HashiCorp"}},
		DNSNames:              []string{"localhost"},
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		SerialNumber:          sn,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// handshake runs one TLS handshake between client and a sidecar's
// go-plugin server (its AutoMTLS configuration, server.go) presenting
// serverCert, trusting clientPEM, with its wall clock at serverNow. It
// returns the client's error and the server's.
func handshake(t *testing.T, client *tls.Config, serverCert tls.Certificate, clientPEM []byte, serverNow time.Time) (error, error) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(clientPEM) {
		t.Fatal("client PEM")
	}
	server := &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		ServerName:   "localhost",
		Time:         func() time.Time { return serverNow },
	}
	// A unix socket, as go-plugin's (buffered, unlike net.Pipe: an alert
	// is sent while the other side writes).
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "plugin"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(10 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	serr := make(chan error, 1)
	go func() {
		ts := tls.Server(s, server)
		err := ts.Handshake()
		if err == nil {
			// TLS 1.3: the client's certificate is checked after the
			// client's handshake is done; a read makes it final.
			_, err = ts.Read(make([]byte, 1))
		}
		serr <- err
		s.Close()
	}()
	tc := tls.Client(c, client)
	cerr := tc.Handshake()
	if cerr == nil {
		_, cerr = tc.Write([]byte{1})
	}
	c.Close()
	return cerr, <-serr
}

// The pin accepts the announced certificate whatever its validity and
// whatever either side's clock says, and nothing else.
func TestServerPin(t *testing.T) {
	clientCert, clientPEM, err := newClientCert()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	current := pluginCert(t, key, now.Add(-30*time.Second), now.Add(262980*time.Hour))
	// Made by a sidecar whose clock was 3 hours ahead when it started (the
	// clock has stepped back since): not yet valid.
	future := pluginCert(t, key, now.Add(3*time.Hour), now.Add(262980*time.Hour))
	// And one long expired.
	expired := pluginCert(t, key, now.Add(-20*365*24*time.Hour), now.Add(-10*365*24*time.Hour))

	for _, c := range []struct {
		name string
		cert tls.Certificate
	}{{"current", current}, {"not yet valid", future}, {"expired", expired}} {
		t.Run(c.name, func(t *testing.T) {
			// The sidecar's clock: now, 5 hours behind (the clock stepped
			// back), or decades ahead.
			for _, serverNow := range []time.Time{now, now.Add(-5 * time.Hour), time.Unix(0, 0), time.Date(2090, 1, 1, 0, 0, 0, 0, time.UTC)} {
				cerr, serr := handshake(t, clientTLS(clientCert, pinned(c.cert.Certificate[0])), c.cert, clientPEM, serverNow)
				if cerr != nil || serr != nil {
					t.Errorf("sidecar clock %s: client %v, server %v; want the pinned certificate accepted", serverNow.Format(time.RFC3339), cerr, serr)
				}
			}
		})
	}

	// What AutoMTLS did: the announced certificate as the only root,
	// verified at the current time. It refuses the certificate made
	// before the clock stepped back — the bug.
	pool := x509.NewCertPool()
	pool.AddCert(future.Leaf)
	autoMTLS := &tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cerr, _ := handshake(t, autoMTLS, future, clientPEM, now); cerr == nil || !strings.Contains(cerr.Error(), "not yet valid") {
		t.Errorf("chain verification of a not yet valid certificate: %v, want 'not yet valid'", cerr)
	}

	// Anything but the pinned certificate is refused, whatever its
	// validity: another sidecar's, one re-signed with the same key and
	// subject, one with the same subject and another key.
	others := map[string]tls.Certificate{
		"another sidecar's":       pluginCert(t, nil, now.Add(-30*time.Second), now.Add(time.Hour)),
		"re-signed, same key":     pluginCert(t, key, now.Add(-30*time.Second), now.Add(262980*time.Hour)),
		"same subject, other key": pluginCert(t, nil, current.Leaf.NotBefore, current.Leaf.NotAfter),
	}
	for name, other := range others {
		cerr, _ := handshake(t, clientTLS(clientCert, pinned(current.Certificate[0])), other, clientPEM, now)
		if cerr == nil || !strings.Contains(cerr.Error(), "not the one its handshake announced") {
			t.Errorf("%s certificate: %v, want refused by the pin", name, cerr)
		}
	}

	// No pin (no certificate on the handshake line): nothing is accepted.
	if cerr, _ := handshake(t, clientTLS(clientCert, &serverPin{}), current, clientPEM, now); cerr == nil || !strings.Contains(cerr.Error(), "no server certificate") {
		t.Errorf("without a pin: %v, want refused", cerr)
	}

	// The sidecar refuses a client certificate it was not given.
	stranger, _, err := newClientCert()
	if err != nil {
		t.Fatal(err)
	}
	if _, serr := handshake(t, clientTLS(stranger, pinned(current.Certificate[0])), current, clientPEM, now); serr == nil {
		t.Error("the sidecar accepted a client certificate other than PLUGIN_CLIENT_CERT's")
	}
}

// The pin is set from the first line of the runner's stdout, as go-plugin
// reads it, however the reads split it.
func TestHandshakeTap(t *testing.T) {
	now := time.Now()
	cert := pluginCert(t, nil, now, now.Add(time.Hour))
	enc := base64.RawStdEncoding.EncodeToString(cert.Certificate[0])
	other := base64.RawStdEncoding.EncodeToString(pluginCert(t, nil, now, now.Add(time.Hour)).Certificate[0])
	line := "1|1|unix|/run/x/plugin-dir1/plugin2|grpc|" + enc
	cases := []struct {
		name, stdout string
		want         []byte
	}{
		{"line", line + "\n", cert.Certificate[0]},
		{"crlf", line + "\r\n", cert.Certificate[0]},
		{"padded", line + "==\n", cert.Certificate[0]},
		{"no newline before EOF", line, cert.Certificate[0]},
		{"second line ignored", line + "\n1|1|unix|/x|grpc|" + other + "\n", cert.Certificate[0]},
		{"only the first line counts", "1|1|unix|/x|grpc|\n" + line + "\n", nil},
		{"no certificate", "1|1|unix|/run/x/p|grpc\n", nil},
		{"short field", "1|1|unix|/run/x/p|grpc|" + strings.Repeat("A", 50) + "\n", nil},
		{"not a certificate", "1|1|unix|/run/x/p|grpc|" + strings.Repeat("A", 80) + "\n", nil},
		{"overlong", strings.Repeat("x", maxHandshake+1) + line + "\n", nil},
	}
	for _, c := range cases {
		for _, oneByte := range []bool{false, true} {
			pin := &serverPin{}
			var r io.Reader = strings.NewReader(c.stdout)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			tap := &handshakeTap{ReadCloser: io.NopCloser(r), pin: pin}
			got, err := io.ReadAll(tap)
			if err != nil || string(got) != c.stdout {
				t.Fatalf("%s: the tap changed stdout (%v)", c.name, err)
			}
			if string(pin.get()) != string(c.want) {
				t.Errorf("%s (one byte at a time %v): pinned %d bytes, want %d", c.name, oneByte, len(pin.get()), len(c.want))
			}
		}
	}
}

// A reattach file's TLS: the recorded server certificate pinned, the
// recorded client certificate and key (which must match).
func TestReattachTLSConfig(t *testing.T) {
	clientCert, clientPEM, err := newClientCert()
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(clientCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	server := pluginCert(t, nil, now.Add(3*time.Hour), now.Add(4*time.Hour)) // not yet valid
	st := &reattachState{
		ServerCert: base64.RawStdEncoding.EncodeToString(server.Certificate[0]),
		ClientCert: base64.StdEncoding.EncodeToString(clientCert.Certificate[0]),
		ClientKey:  base64.StdEncoding.EncodeToString(key),
	}
	cfg, err := st.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cerr, serr := handshake(t, cfg, server, clientPEM, now.Add(-5*time.Hour)); cerr != nil || serr != nil {
		t.Fatalf("reattach TLS: client %v, server %v", cerr, serr)
	}
	if cerr, _ := handshake(t, cfg, pluginCert(t, nil, now, now.Add(time.Hour)), clientPEM, now); cerr == nil {
		t.Fatal("reattach TLS accepted another server certificate")
	}

	// A key that is not the certificate's is refused up front.
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bad := *st
	bad.ClientKey = base64.StdEncoding.EncodeToString(must(x509.MarshalPKCS8PrivateKey(crypto.Signer(otherKey))))
	if _, err := bad.tlsConfig(); err == nil {
		t.Fatal("a client key that does not match the certificate was accepted")
	}
	bad = *st
	bad.ServerCert = strings.Repeat("A", 80)
	if _, err := bad.tlsConfig(); err == nil {
		t.Fatal("a server certificate that is none was accepted")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
