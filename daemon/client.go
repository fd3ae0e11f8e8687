package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/addond/addond/supervisors/helper"
)

// Client talks to a running addond over its status socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the status socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, c.hc, method, path, nil, out)
}

func (c *Client) doBody(ctx context.Context, hc *http.Client, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://addond"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("addond status socket %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("addond: %s", e.Error)
		}
		return fmt.Errorf("addond: %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// RunHelper runs an ephemeral helper with args and returns its result;
// it waits as long as the run (bounded by the helper's timeout) or ctx.
func (c *Client) RunHelper(ctx context.Context, id string, args []string) (*helper.Result, error) {
	hc := *c.hc
	hc.Timeout = 0
	var res helper.Result
	if err := c.doBody(ctx, &hc, http.MethodPost, "/v1/run/"+id, runRequest{Args: args}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Status returns GET /v1/status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/v1/status", &st)
}

// Reconcile asks for a reconcile now.
func (c *Client) Reconcile(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reconcile", nil)
}

// Retry clears an add-on's failed versions and reconciles.
func (c *Client) Retry(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/v1/retry/"+id, nil)
}
