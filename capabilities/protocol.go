package capabilities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Version is the helper's version (set at build time).
var Version = "dev"

// Protocol is the version of the updater protocol: one JSON Request per
// connection, answered by one JSON Response.
const Protocol = 1

// MaxRequest bounds one request.
const MaxRequest = 1 << 20

// RequestTimeout bounds one connection: the wait for a free slot, and
// reading the request, applying and answering. A variable only so that
// tests can shorten it.
var RequestTimeout = 10 * time.Second

// Request is one call to the helper.
type Request struct {
	// Op is "apply", "remove", "prepare", "start", "stop" or "ping".
	Op      string        `json:"op"`
	Apply   *ApplyRequest `json:"apply,omitempty"`
	Start   *StartRequest `json:"start,omitempty"`
	AddonID string        `json:"addon_id,omitempty"` // remove, prepare, stop
	Version string        `json:"version,omitempty"`  // remove; "" removes every version
}

// Response is the helper's answer.
type Response struct {
	Error    string   `json:"error,omitempty"`
	Applied  *Applied `json:"applied,omitempty"`
	Started  *Started `json:"started,omitempty"`
	Version  string   `json:"version,omitempty"` // ping: the helper's version
	Protocol int      `json:"protocol,omitempty"`
}

// ErrUnavailable is returned when the helper cannot be reached at all —
// as opposed to a refusal, which names its reason.
var ErrUnavailable = errors.New("addond-updater is not available")

// Client calls the helper on its socket.
type Client struct {
	Socket  string
	Timeout time.Duration // per call [30s]
}

func (c *Client) call(ctx context.Context, req Request) (*Response, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// The helper refuses a caller (or an oversized request) without
	// reading all of it, and closes: the write then fails, but its
	// answer — the reason — is there to read all the same.
	werr := json.NewEncoder(conn).Encode(req)
	if werr == nil {
		conn.(*net.UnixConn).CloseWrite()
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(conn, MaxRequest)).Decode(&resp); err != nil {
		if werr != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, werr)
		}
		return nil, fmt.Errorf("%w: no answer: %v", ErrUnavailable, err)
	}
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

// Apply asks for a capped copy (see Apply).
func (c *Client) Apply(ctx context.Context, req ApplyRequest) (*Applied, error) {
	resp, err := c.call(ctx, Request{Op: "apply", Apply: &req})
	if err != nil {
		return nil, err
	}
	if resp.Applied == nil {
		return nil, errors.New("addond-updater answered without a path")
	}
	return resp.Applied, nil
}

// Remove deletes the capped copies of one version of an add-on (or, with
// version "", all of its versions).
func (c *Client) Remove(ctx context.Context, addonID, version string) error {
	_, err := c.call(ctx, Request{Op: "remove", AddonID: addonID, Version: version})
	return err
}

// Prepare stops add-on id's capped unit and makes its runtime directory
// (sock/ in it, for a sidecar's socket directory).
func (c *Client) Prepare(ctx context.Context, id string) error {
	_, err := c.call(ctx, Request{Op: "prepare", AddonID: id})
	return err
}

// Start starts a capped add-on's unit in the system manager.
func (c *Client) Start(ctx context.Context, req StartRequest) (*Started, error) {
	resp, err := c.call(ctx, Request{Op: "start", Start: &req})
	if err != nil {
		return nil, err
	}
	if resp.Started == nil {
		return nil, errors.New("addond-updater answered without a unit")
	}
	return resp.Started, nil
}

// Stop stops a capped add-on's unit.
func (c *Client) Stop(ctx context.Context, id string) error {
	_, err := c.call(ctx, Request{Op: "stop", AddonID: id})
	return err
}

// Ping returns the helper's version and protocol.
func (c *Client) Ping(ctx context.Context) (string, int, error) {
	resp, err := c.call(ctx, Request{Op: "ping"})
	if err != nil {
		return "", 0, err
	}
	return resp.Version, resp.Protocol, nil
}
