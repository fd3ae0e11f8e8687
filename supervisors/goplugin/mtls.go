package goplugin

// The mutual TLS between addond and a sidecar, made independent of the
// wall clock.
//
// go-plugin's AutoMTLS makes both certificates valid from their creation
// time - 30 s by the wall clock, and verifies each against the current wall
// time: once the clock steps back by more than 30 s (an NTP correction, an
// RTC fault), a sidecar started before the step can no longer be reattached
// to — addond refuses the server's certificate as "not yet valid", and the
// sidecar refuses addond's client certificate likewise. addond therefore
// does AutoMTLS's client side itself, with go-plugin's AutoMTLS off and
// ClientConfig.TLSConfig set:
//
//   - addond makes the client certificate (newClientCert), valid from the
//     Unix epoch to the end of year 9999, and hands it to the sidecar as
//     PLUGIN_CLIENT_CERT exactly as AutoMTLS does. The sidecar's side is
//     go-plugin's server, unchanged: seeing PLUGIN_CLIENT_CERT it makes its
//     own certificate, announces it on the handshake line and requires and
//     verifies the client certificate against a pool holding exactly that
//     one certificate — at its own current time, which the validity covers
//     whatever the clock says.
//   - addond checks the sidecar's certificate by exact pinning (serverPin):
//     the certificate presented in the TLS handshake must be, byte for
//     byte, the one the handshake line announced (recorded in the reattach
//     file for the next addond). TLS itself proves that the peer holds its
//     private key. A pinned self-signed certificate needs no validity
//     period, chain or host name: nothing of it depends on the clock.
//
// go-plugin, with AutoMTLS off, neither makes nor passes a client
// certificate, but still loads a certificate from the handshake line into
// TLSConfig.RootCAs and ClientCAs: with InsecureSkipVerify and the pin in
// VerifyConnection, those pools play no part.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin/runner"
)

// The client certificate's validity. A sidecar checks it against its own
// wall clock for as long as it runs (on every connection, and an addond
// restart is a new connection), so it must hold at whatever time the clock
// may show: from the Unix epoch — what a machine without a battery-backed
// RTC boots to before NTP, the earliest time a clock can be reset to — up
// to RFC 5280's "no well-defined expiration date" (99991231235959Z,
// §4.1.2.5). Expiry would add nothing: the key is made for one run of one
// sidecar, lives only in addond's memory and the sidecar's 0600 reattach
// file, and the sidecar trusts the certificate, and only it (never as a
// CA), for that run alone.
var (
	clientCertNotBefore = time.Unix(0, 0).UTC()
	clientCertNotAfter  = time.Date(9999, time.December, 31, 23, 59, 59, 0, time.UTC)
)

// newClientCert makes addond's certificate and key for one sidecar run
// (ECDSA P-256, self-signed, for "localhost" like go-plugin's), and its
// PEM, which is what PLUGIN_CLIENT_CERT carries.
func newClientCert() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "localhost", Organization: []string{"addond"}},
		DNSNames:     []string{"localhost"},
		NotBefore:    clientCertNotBefore,
		NotAfter:     clientCertNotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// ServerAuth too, as go-plugin's: the sidecar's pool of client
		// certificates is also its RootCAs, for connections it would dial.
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false, // it vouches for itself only, never for certificates signed with its key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, certPEM, nil
}

// clientCertEnv is the environment variable go-plugin's server reads
// addond's certificate from (PEM).
const clientCertEnv = "PLUGIN_CLIENT_CERT"

// serverPin is the one server certificate a sidecar run may present: the
// one its handshake line announced.
type serverPin struct {
	mu  sync.Mutex
	der []byte
	// started: the runner started the process (a failure after it is
	// the handshake's).
	started atomic.Bool
}

// pinned is a pin set to der from the start (a reattachment).
func pinned(der []byte) *serverPin { return &serverPin{der: bytes.Clone(der)} }

// announce sets the pin from the handshake line, once: the certificate is
// its sixth field, base64 DER (go-plugin's server pads it not; padding is
// accepted). A line without one leaves the pin unset, and every connection
// is refused.
func (p *serverPin) announce(line string) {
	der, err := handshakeCert(strings.Split(strings.TrimSpace(line), "|"))
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.der == nil {
		p.der = der
	}
}

// get is the pinned certificate (nil before the handshake line).
func (p *serverPin) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.der
}

// verify is the client's VerifyConnection: the peer's certificate must be
// exactly the pinned one. No validity period, chain or host name is
// checked, so no clock step can make a sidecar's certificate unacceptable;
// the TLS handshake has proved that the peer holds its private key.
func (p *serverPin) verify(cs tls.ConnectionState) error {
	want := p.get()
	switch {
	case want == nil:
		return errors.New("sidecar mTLS: no server certificate was announced on the handshake line")
	case len(cs.PeerCertificates) == 0:
		return errors.New("sidecar mTLS: the sidecar presented no certificate")
	case !bytes.Equal(cs.PeerCertificates[0].Raw, want):
		got := sha256.Sum256(cs.PeerCertificates[0].Raw)
		pin := sha256.Sum256(want)
		return fmt.Errorf("sidecar mTLS: the sidecar presented certificate sha256:%s, not the one its handshake announced (sha256:%s)",
			hex.EncodeToString(got[:8]), hex.EncodeToString(pin[:8]))
	}
	return nil
}

// clientTLS is the tls.Config addond talks to a sidecar run with: its
// client certificate, and the server's certificate pinned.
func clientTLS(cert tls.Certificate, pin *serverPin) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		// Chain and host name verification are replaced by the exact pin
		// in VerifyConnection (which runs on every handshake, resumed or
		// not): verification against roots is what checks validity
		// periods against the wall clock.
		InsecureSkipVerify: true,
		VerifyConnection:   pin.verify,
		ServerName:         "localhost",
		MinVersion:         tls.VersionTLS12,
	}
}

// handshakeCert is the server certificate of a handshake line's fields
// (core version|protocol version|network|address|protocol|server cert),
// parsed to make sure it is one.
func handshakeCert(parts []string) ([]byte, error) {
	// go-plugin loads a certificate only from a sixth field longer than
	// 50 characters (shorter ones are other data of older servers).
	if len(parts) < 6 || len(parts[5]) <= 50 {
		return nil, errors.New("the handshake line announces no server certificate")
	}
	der, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(parts[5], "="))
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	return der, nil
}

// pinRunner is a runner whose stdout's first line, the handshake line
// go-plugin reads, sets pin.
type pinRunner struct {
	runner.Runner
	pin *serverPin
}

// Start starts the process and notes that it did.
func (r *pinRunner) Start(ctx context.Context) error {
	if err := r.Runner.Start(ctx); err != nil {
		return err
	}
	r.pin.started.Store(true)
	return nil
}

func (r *pinRunner) Stdout() io.ReadCloser {
	return &handshakeTap{ReadCloser: r.Runner.Stdout(), pin: r.pin}
}

// handshakeTap passes stdout through and announces its first line (as
// bufio.Scanner, which go-plugin reads it with, splits it) to pin.
type handshakeTap struct {
	io.ReadCloser
	pin  *serverPin
	line []byte
	done bool
}

func (t *handshakeTap) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if !t.done {
		chunk := p[:n]
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			chunk, t.done = chunk[:i], true
		}
		t.line = append(t.line, chunk...)
		if len(t.line) > maxHandshake {
			t.done, t.line = true, nil // no line go-plugin would take
		}
		if err != nil {
			t.done = true // a last line without a newline is still a line
		}
		if t.done && t.line != nil {
			t.pin.announce(string(t.line))
			t.line = nil
		}
	}
	return n, err
}

// childRunner runs a sidecar as addond's child process — go-plugin's own
// command runner (internal to go-plugin) with the process in its own
// process group, killed as a whole, and killed should addond die. It is a
// runner rather than ClientConfig.Cmd so that its stdout can be tapped for
// the handshake line.
type childRunner struct {
	cmd    *exec.Cmd
	stdout io.ReadCloser
	stderr io.ReadCloser
	pid    int
}

var _ runner.Runner = (*childRunner)(nil)

// newChildRunner runs cmd, go-plugin's command (its environment), as a
// child.
func newChildRunner(_ hclog.Logger, cmd *exec.Cmd, _ string) (runner.Runner, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	return &childRunner{cmd: cmd, stdout: stdout, stderr: stderr}, nil
}

func (c *childRunner) Start(context.Context) error {
	if err := c.cmd.Start(); err != nil {
		return err
	}
	c.pid = c.cmd.Process.Pid
	return nil
}

func (c *childRunner) Wait(context.Context) error { return c.cmd.Wait() }

// Kill kills the process (stopClient then kills its process group).
func (c *childRunner) Kill(context.Context) error {
	if c.cmd.Process == nil {
		return nil
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (c *childRunner) Stdout() io.ReadCloser { return c.stdout }
func (c *childRunner) Stderr() io.ReadCloser { return c.stderr }
func (c *childRunner) Name() string          { return c.cmd.Path }
func (c *childRunner) ID() string            { return strconv.Itoa(c.pid) }

func (c *childRunner) Diagnose(context.Context) string {
	return fmt.Sprintf("%s did not complete go-plugin's handshake: is it an add-on built with addond's SDK for this platform? Its stderr is in addond's log.", c.cmd.Path)
}

func (c *childRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (c *childRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}
