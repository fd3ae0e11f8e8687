package sdk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-plugin"
)

// Status is an add-on's health.
type Status int

const (
	Unknown Status = iota
	Healthy
	Degraded
	Unhealthy
)

func (s Status) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// Health is a health report: a status and, unless healthy, why.
type Health struct {
	Status Status
	Reason string
}

// Info is what an add-on says about itself.
type Info struct {
	ID           string
	Version      string
	Capabilities []string
}

// Addon is implemented by every sidecar add-on.
type Addon interface {
	// Info describes the add-on (informational; the assignment counts).
	Info(ctx context.Context) (Info, error)
	// Configure applies config_json (a JSON object, possibly empty). An
	// error refuses the configuration; during probation that rolls the
	// version back.
	Configure(ctx context.Context, configJSON []byte) error
	// Health reports the add-on's health; it is called every 5 s and must
	// answer within 5 s.
	Health(ctx context.Context) (Health, error)
}

// Handshake is the go-plugin handshake between addond and its sidecars.
// The cookie is not a secret: it stops a sidecar binary started by hand
// from waiting for a host that is not there (Serve runs it standalone).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "ADDOND_PLUGIN",
	MagicCookieValue: "2c3b1f6e-addond-sidecar-v1",
}

// PluginName is the name the add-on service is dispensed under.
const PluginName = "addon"

// ConfigEnv names the file holding config_json for add-ons not started by
// go-plugin (systemd units; standalone runs).
const ConfigEnv = "ADDOND_CONFIG"

// ConfigHash is the hex SHA-256 of a configuration, as Configure reports it.
func ConfigHash(configJSON []byte) string {
	sum := sha256.Sum256(configJSON)
	return hex.EncodeToString(sum[:])
}

// Serve runs the add-on: as a go-plugin sidecar when addond started it,
// standalone otherwise. It returns only when running standalone and a
// signal or Configure's error ended it; a sidecar exits the process when
// the host is done.
func Serve(a Addon) {
	if os.Getenv(Handshake.MagicCookieKey) == Handshake.MagicCookieValue {
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: Handshake,
			Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: a}},
			GRPCServer:      plugin.DefaultGRPCServer,
		})
		return
	}
	if err := runStandalone(a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// runStandalone configures the add-on from $ADDOND_CONFIG and waits for
// SIGTERM/SIGINT.
func runStandalone(a Addon) error {
	config := []byte("{}")
	if path := os.Getenv(ConfigEnv); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", ConfigEnv, err)
		}
		config = data
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Configure(ctx, config); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	<-ctx.Done()
	return nil
}
