package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// StatusSocketEnv names addond's status socket in an add-on unit's
// environment.
const StatusSocketEnv = "ADDOND_STATUS_SOCKET"

// HelperResult is one run of an ephemeral helper.
type HelperResult struct {
	ExitCode        int           `json:"exit_code"` // 128+signal when killed
	Signal          int           `json:"signal,omitempty"`
	TimedOut        bool          `json:"timed_out,omitempty"`
	Stdout          []byte        `json:"stdout"`
	Stderr          []byte        `json:"stderr"`
	StdoutTruncated bool          `json:"stdout_truncated,omitempty"`
	StderrTruncated bool          `json:"stderr_truncated,omitempty"`
	Duration        time.Duration `json:"duration_ns"`
}

// RunHelper asks addond to run the ephemeral helper id with args and
// waits for its result. It works from an add-on that addond runs as a
// unit (addond authorizes the call by the caller's unit and logs it with
// the caller's id); the helper's exit status is in the result, an error
// means the run could not be made.
func RunHelper(ctx context.Context, id string, args ...string) (*HelperResult, error) {
	sock := os.Getenv(StatusSocketEnv)
	if sock == "" {
		return nil, errors.New("run helper: $" + StatusSocketEnv + " is not set (not started by addond?)")
	}
	// One connection per run, closed with it: an add-on may call this for
	// as long as it lives, and an idle keep-alive connection (and its two
	// goroutines) per call would pile up.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	body, _ := json.Marshal(map[string][]string{"args": args})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://addond/v1/run/"+id, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("run helper %q: %w", id, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("run helper %q: %w", id, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("run helper %q: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("run helper %q: %s", id, e.Error)
		}
		return nil, fmt.Errorf("run helper %q: %s", id, resp.Status)
	}
	var res HelperResult
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("run helper %q: %w", id, err)
	}
	return &res, nil
}
