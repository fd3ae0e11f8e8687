package sdk

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	addonpb "github.com/addond/addond/sdk/proto"
)

// GRPCPlugin is the go-plugin glue for the Addon service, both ends.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Addon // the add-on side; nil on the host
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the add-on's implementation.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	addonpb.RegisterAddonServer(s, &server{impl: p.Impl})
	return nil
}

// GRPCClient returns a *Client for the host.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{c: addonpb.NewAddonClient(c)}, nil
}

type server struct {
	addonpb.UnimplementedAddonServer
	impl Addon
}

func (s *server) Info(ctx context.Context, _ *addonpb.InfoRequest) (*addonpb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, err
	}
	return &addonpb.InfoResponse{Id: info.ID, Version: info.Version, Capabilities: info.Capabilities}, nil
}

func (s *server) Configure(ctx context.Context, req *addonpb.ConfigureRequest) (*addonpb.ConfigureResponse, error) {
	if err := s.impl.Configure(ctx, req.ConfigJson); err != nil {
		return &addonpb.ConfigureResponse{Accepted: false, Error: err.Error()}, nil
	}
	return &addonpb.ConfigureResponse{Accepted: true, ConfigHash: ConfigHash(req.ConfigJson)}, nil
}

func (s *server) Health(ctx context.Context, _ *addonpb.HealthRequest) (*addonpb.HealthResponse, error) {
	h, err := s.impl.Health(ctx)
	if err != nil {
		return nil, err
	}
	st := addonpb.HealthResponse_STATUS_UNSPECIFIED
	switch h.Status {
	case Healthy:
		st = addonpb.HealthResponse_HEALTHY
	case Degraded:
		st = addonpb.HealthResponse_DEGRADED
	case Unhealthy:
		st = addonpb.HealthResponse_UNHEALTHY
	}
	return &addonpb.HealthResponse{Status: st, Reason: h.Reason}, nil
}

// Client is the host's view of a running add-on.
type Client struct {
	c addonpb.AddonClient
}

// ErrRejected is returned by Configure when the add-on refused the
// configuration.
var ErrRejected = errors.New("configuration rejected")

func (c *Client) Info(ctx context.Context) (Info, error) {
	r, err := c.c.Info(ctx, &addonpb.InfoRequest{})
	if err != nil {
		return Info{}, err
	}
	return Info{ID: r.Id, Version: r.Version, Capabilities: r.Capabilities}, nil
}

// Configure sends config_json and returns the add-on's config hash.
func (c *Client) Configure(ctx context.Context, configJSON []byte) (string, error) {
	r, err := c.c.Configure(ctx, &addonpb.ConfigureRequest{ConfigJson: configJSON})
	if err != nil {
		return "", err
	}
	if !r.Accepted {
		return "", fmt.Errorf("%w: %s", ErrRejected, r.Error)
	}
	return r.ConfigHash, nil
}

func (c *Client) Health(ctx context.Context) (Health, error) {
	r, err := c.c.Health(ctx, &addonpb.HealthRequest{})
	if err != nil {
		return Health{}, err
	}
	switch r.Status {
	case addonpb.HealthResponse_HEALTHY:
		return Health{Status: Healthy, Reason: r.Reason}, nil
	case addonpb.HealthResponse_DEGRADED:
		return Health{Status: Degraded, Reason: r.Reason}, nil
	case addonpb.HealthResponse_UNHEALTHY:
		return Health{Status: Unhealthy, Reason: r.Reason}, nil
	}
	return Health{Status: Unknown, Reason: r.Reason}, nil
}
