package goplugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/addond/addond/internal/atomicfile"
	"github.com/addond/addond/sdk"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/systemd"
)

// reattachState is what a new addond needs to talk to a sidecar unit an
// earlier one started: which run of which unit it is, what it runs, where
// it listens, and both ends of its mutual TLS (mtls.go): the server's
// certificate from the handshake line, which is pinned, and addond's client
// certificate and key, which the sidecar trusts. It holds a private key:
// the file is 0600, and one that is not is not used.
type reattachState struct {
	Unit            string `json:"unit"`
	InvocationID    string `json:"invocation_id"`
	Fingerprint     string `json:"fingerprint"`
	Protocol        string `json:"protocol"`
	ProtocolVersion int    `json:"protocol_version"`
	Addr            string `json:"addr"` // unix socket path
	PID             int    `json:"pid"`
	ServerCert      string `json:"server_cert"` // base64 DER, as on the handshake line
	ClientCert      string `json:"client_cert"` // base64 DER
	ClientKey       string `json:"client_key"`  // base64 PKCS #8 DER
}

// maxReattachFile bounds what is read of a reattach file.
const maxReattachFile = 64 << 10

// newReattachState collects the reattach data of a sidecar unit r that
// has just completed its handshake with client, which talks to it with
// cert and the server certificate pin.
func newReattachState(client *plugin.Client, cert tls.Certificate, pin *serverPin, r *unitRunner) (*reattachState, error) {
	rc := client.ReattachConfig()
	if rc == nil || rc.Addr == nil || rc.Addr.Network() != "unix" {
		return nil, errors.New("no unix socket address")
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("no client certificate")
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	server := pin.get()
	if server == nil {
		return nil, errors.New("no server certificate pinned")
	}
	parts, err := readHandshake(r.opts.HandshakeFile(r.spec.AddonID))
	if err != nil {
		return nil, err
	}
	if parts[3] != rc.Addr.String() {
		return nil, fmt.Errorf("handshake file names %s, the client connected to %s", parts[3], rc.Addr)
	}
	if der, err := handshakeCert(parts); err != nil || !bytes.Equal(der, server) {
		return nil, errors.New("the handshake file's server certificate is not the one the client pinned")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return &reattachState{
		Unit: r.unit, InvocationID: r.invocation, Fingerprint: r.fingerprint,
		Protocol: string(rc.Protocol), ProtocolVersion: client.NegotiatedVersion(),
		Addr: rc.Addr.String(), PID: r.pid,
		ServerCert: base64.RawStdEncoding.EncodeToString(server),
		ClientCert: base64.StdEncoding.EncodeToString(cert.Certificate[0]),
		ClientKey:  base64.StdEncoding.EncodeToString(key),
	}, nil
}

// readHandshake returns the fields of the handshake line in path
// (core version|protocol version|network|address|protocol|server cert).
func readHandshake(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("handshake file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxReattachFile))
	if err != nil {
		return nil, fmt.Errorf("handshake file: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	parts := strings.Split(strings.TrimSpace(line), "|")
	if len(parts) < 6 || parts[2] != "unix" || parts[5] == "" {
		return nil, fmt.Errorf("handshake file %s: no handshake line with a unix socket and a server certificate", path)
	}
	return parts, nil
}

// saveReattach writes st to path, 0600, atomically.
func saveReattach(path string, st *reattachState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}

// loadReattach reads path; a file that is not a regular file of ours with
// mode 0600 is refused (an error that is not os.ErrNotExist).
func loadReattach(path string) (*reattachState, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link", path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	case !ok || int(sys.Uid) != os.Getuid():
		return nil, fmt.Errorf("%s is not owned by uid %d", path, os.Getuid())
	case fi.Mode().Perm() != 0o600:
		return nil, fmt.Errorf("%s has mode %04o, not 0600", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxReattachFile))
	if err != nil {
		return nil, err
	}
	var st reattachState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Unit == "" || st.InvocationID == "" || st.Fingerprint == "" || st.Addr == "" || st.PID <= 0 ||
		st.ServerCert == "" || st.ClientCert == "" || st.ClientKey == "" {
		return nil, fmt.Errorf("%s: incomplete", path)
	}
	return &st, nil
}

// tlsConfig is the client side of the mutual TLS the sidecar was started
// with: the recorded client certificate, and the recorded server
// certificate pinned (mtls.go) — whatever the wall clock says now.
func (st *reattachState) tlsConfig() (*tls.Config, error) {
	serverDER, err := handshakeCert([]string{5: st.ServerCert})
	if err != nil {
		return nil, err
	}
	clientDER, err := base64.StdEncoding.DecodeString(st.ClientCert)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(clientDER)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	keyDER, err := base64.StdEncoding.DecodeString(st.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{clientDER}, PrivateKey: key, Leaf: leaf}
	if _, err := tls.X509KeyPair(
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: clientDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, fmt.Errorf("client certificate and key: %w", err)
	}
	return clientTLS(cert, pinned(serverDER)), nil
}

// reattach connects to the sidecar unit st describes, if it is still the
// very run that st was written for and still runs spec. It never shuts the
// sidecar down: on an error the caller stops the unit.
func (i *instance) reattach(spec supervisors.Spec, fp string, st *reattachState) (*proc, error) {
	o := &i.b.opts
	u := o.Units
	switch {
	case st.Unit != systemd.ServiceName(spec.AddonID):
		return nil, fmt.Errorf("reattach data names unit %s", st.Unit)
	case st.Fingerprint != fp:
		return nil, fmt.Errorf("the add-on changed since the unit was started (fingerprint %s, the unit runs %s)", fp, st.Fingerprint)
	case st.Protocol != string(plugin.ProtocolGRPC):
		return nil, fmt.Errorf("protocol %q", st.Protocol)
	case filepath.Dir(filepath.Dir(st.Addr)) != u.socketParent(spec.AddonID):
		return nil, fmt.Errorf("socket %s is not under %s", st.Addr, u.socketParent(spec.AddonID))
	}
	tlsConfig, err := st.tlsConfig()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.StartTimeout)
	defer cancel()
	conn, err := u.Manager.Conn(ctx)
	if err != nil {
		return nil, err
	}
	us, err := systemd.ReadUnit(ctx, conn, st.Unit)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", st.Unit, err)
	case !us.Exists():
		return nil, fmt.Errorf("unit %s is gone", st.Unit)
	case us.ActiveState != "active":
		return nil, fmt.Errorf("unit %s is %s", st.Unit, us.ActiveState)
	case us.InvocationID != st.InvocationID:
		return nil, fmt.Errorf("unit %s was restarted since (invocation %s, recorded %s)", st.Unit, us.InvocationID, st.InvocationID)
	case us.MainPID != st.PID:
		return nil, fmt.Errorf("unit %s runs pid %d, recorded %d", st.Unit, us.MainPID, st.PID)
	case systemd.DescriptionFingerprint(us.Description) != fp:
		return nil, fmt.Errorf("unit %s runs fingerprint %s, want %s", st.Unit, systemd.DescriptionFingerprint(us.Description), fp)
	}

	// The handshake line the unit wrote must still be the one recorded.
	if parts, err := readHandshake(u.HandshakeFile(spec.AddonID)); err != nil {
		return nil, err
	} else if parts[3] != st.Addr || strings.TrimRight(parts[5], "=") != strings.TrimRight(st.ServerCert, "=") || parts[1] != strconv.Itoa(st.ProtocolVersion) {
		return nil, errors.New("the handshake file no longer matches the reattach data")
	}

	r := attachedUnitRunner(u, spec, st)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: sdk.Handshake,
		// Plugins, not VersionedPlugins: a reattaching client negotiates
		// no version and dispenses from Plugins.
		Plugins: plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		Reattach: &plugin.ReattachConfig{
			Protocol:        plugin.ProtocolGRPC,
			ProtocolVersion: st.ProtocolVersion,
			Addr:            &net.UnixAddr{Name: st.Addr, Net: "unix"},
			Pid:             st.PID,
			ReattachFunc:    func() (runner.AttachedRunner, error) { return r, nil },
		},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		TLSConfig:        tlsConfig,
		StartTimeout:     o.StartTimeout,
		SkipHostEnv:      true,
		Logger:           newHCLogger(i.log),
	})
	p, err := connect(client, spec, &serverPin{})
	if err == nil {
		p.unit = r
		err = ping(p.rpc, o.HealthTimeout)
		if err != nil {
			p.detach()
		}
	} else {
		// Never Kill: that would shut down a sidecar that may be fine.
		if rpc, cerr := client.Client(); cerr == nil {
			if gc, ok := rpc.(*plugin.GRPCClient); ok {
				gc.Conn.Close()
			}
		}
		r.detach()
	}
	if err != nil {
		return nil, fmt.Errorf("reattach: %w", err)
	}
	if err := r.prepare(spec); err != nil {
		i.log.Warn("cannot refresh the add-on's configuration file", "error", err)
	}
	return p, nil
}

// ping asks go-plugin's own health service of the sidecar: the connection
// and the mutual TLS work.
func ping(rpc plugin.ClientProtocol, timeout time.Duration) error {
	gc, ok := rpc.(*plugin.GRPCClient)
	if !ok {
		return fmt.Errorf("not a gRPC client: %T", rpc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := grpc_health_v1.NewHealthClient(gc.Conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: plugin.GRPCServiceName})
	return err
}
