// Command hello is the example sidecar add-on. Its config_json lets tests
// make it sick:
//
//	{"health": "healthy|degraded|unhealthy", "crash_after": "2s", "exit_code": 3,
//	 "configure_error": "refuse this config", "hang_health": true,
//	 "run_helper": "probe", "run_helper_args": ["a", "b"]}
//
// health is what Health reports (default healthy); crash_after makes the
// process exit with exit_code (default 1) that long after it was
// configured; configure_error makes Configure fail; hang_health makes
// Health never answer; run_helper makes hello run that ephemeral helper
// through addond (sdk.RunHelper, retried for a minute) and report its exit
// status and output as the reason of its health, so tests can see the call
// went through.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/addond/addond/sdk"
)

// version is set at build time (-ldflags -X main.version=…).
var version = "1.0.0"

type config struct {
	Health         string   `json:"health"`
	CrashAfter     string   `json:"crash_after"`
	ExitCode       int      `json:"exit_code"`
	ConfigureError string   `json:"configure_error"`
	HangHealth     bool     `json:"hang_health"`
	RunHelper      string   `json:"run_helper"`
	RunHelperArgs  []string `json:"run_helper_args"`
}

type hello struct {
	mu     sync.Mutex
	health sdk.Health
	hang   bool
	crash  *time.Timer
}

func (h *hello) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{ID: "hello", Version: version, Capabilities: []string{"hello:v1"}}, nil
}

func (h *hello) Configure(ctx context.Context, raw []byte) error {
	var c config
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if c.ConfigureError != "" {
		return errors.New(c.ConfigureError)
	}
	health := sdk.Health{Status: sdk.Healthy}
	switch c.Health {
	case "", "healthy":
	case "degraded":
		health = sdk.Health{Status: sdk.Degraded, Reason: "configured to be degraded"}
	case "unhealthy":
		health = sdk.Health{Status: sdk.Unhealthy, Reason: "configured to be unhealthy"}
	default:
		return fmt.Errorf("config: health %q, want healthy, degraded or unhealthy", c.Health)
	}
	var crashAfter time.Duration
	if c.CrashAfter != "" {
		d, err := time.ParseDuration(c.CrashAfter)
		if err != nil || d < 0 {
			return fmt.Errorf("config: crash_after %q is not a duration", c.CrashAfter)
		}
		crashAfter = d
	}
	code := c.ExitCode
	if code == 0 {
		code = 1
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.health, h.hang = health, c.HangHealth
	if h.crash != nil {
		h.crash.Stop()
		h.crash = nil
	}
	if c.RunHelper != "" {
		go h.runHelper(c.RunHelper, c.RunHelperArgs)
	}
	if c.CrashAfter != "" {
		h.crash = time.AfterFunc(crashAfter, func() {
			fmt.Fprintf(os.Stderr, "hello: crashing as configured (exit %d)\n", code)
			os.Exit(code)
		})
	}
	return nil
}

// runHelper runs an ephemeral helper through addond, retrying for a
// while (the helper may not be assigned yet), and puts the outcome in its
// health reason.
func (h *hello) runHelper(id string, args []string) {
	report := func(reason string) {
		h.mu.Lock()
		h.health.Reason = reason
		h.mu.Unlock()
	}
	for range 120 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := sdk.RunHelper(ctx, id, args...)
		cancel()
		if err == nil {
			report(fmt.Sprintf("helper %s exited %d: %s", id, res.ExitCode, strings.TrimSpace(string(res.Stdout))))
			return
		}
		report("helper: " + err.Error())
		time.Sleep(500 * time.Millisecond)
	}
}

func (h *hello) Health(ctx context.Context) (sdk.Health, error) {
	h.mu.Lock()
	health, hang := h.health, h.hang
	h.mu.Unlock()
	if hang {
		<-ctx.Done()
		return sdk.Health{}, ctx.Err()
	}
	return health, nil
}

func main() {
	sdk.Serve(&hello{health: sdk.Health{Status: sdk.Healthy}})
}
