package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/addond/addond/internal/atomicfile"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/toggle"
)

// HeartbeatFeature is the name of the compiled-in heartbeat feature: what
// a config_toggle add-on names in binary_path (or as its addon_id).
const HeartbeatFeature = "heartbeat"

// Heartbeat limits and defaults.
const (
	DefaultHeartbeatInterval = 30 * time.Second
	MinHeartbeatInterval     = time.Second
	MaxHeartbeatInterval     = 24 * time.Hour
	// DefaultHeartbeatFile is the file's name under the runtime root.
	DefaultHeartbeatFile = "heartbeat.json"
)

// heartbeatConfig is the heartbeat's config_json.
type heartbeatConfig struct {
	Interval time.Duration
	Path     string
}

// parseHeartbeatConfig reads {"interval": "30s", "path": "/abs/file.json"};
// both keys are optional, unknown keys are an error. root is the runtime
// root. The control plane chooses the path, so it is kept away from
// addond's own tree: it must be absolute and clean, name a .json file, and
// lie outside the runtime root — except for the default,
// <runtime_root>/heartbeat.json.
func parseHeartbeatConfig(data []byte, root string) (heartbeatConfig, error) {
	c := heartbeatConfig{Interval: DefaultHeartbeatInterval, Path: filepath.Join(root, DefaultHeartbeatFile)}
	var raw struct {
		Interval *string `json:"interval"`
		Path     *string `json:"path"`
	}
	if len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&raw); err != nil {
			return c, fmt.Errorf("heartbeat config: %v", err)
		}
		if dec.More() {
			return c, errors.New("heartbeat config: trailing data after the JSON object")
		}
	}
	if raw.Interval != nil {
		d, err := time.ParseDuration(*raw.Interval)
		if err != nil {
			return c, fmt.Errorf("heartbeat config: interval %q is not a duration", *raw.Interval)
		}
		if d < MinHeartbeatInterval || d > MaxHeartbeatInterval {
			return c, fmt.Errorf("heartbeat config: interval %s is outside %s..%s", d, MinHeartbeatInterval, MaxHeartbeatInterval)
		}
		c.Interval = d
	}
	if raw.Path != nil {
		p := *raw.Path
		switch {
		case !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return c, fmt.Errorf("heartbeat config: path %q is not an absolute, clean path", p)
		case !strings.HasSuffix(filepath.Base(p), ".json") || strings.HasPrefix(filepath.Base(p), "."):
			return c, fmt.Errorf("heartbeat config: path %q does not name a .json file", p)
		case p != c.Path && (p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")):
			return c, fmt.Errorf("heartbeat config: path %q is inside the runtime root %s (only the default %s is allowed there)", p, root, c.Path)
		}
		c.Path = p
	}
	return c, nil
}

// Heartbeat is the compiled-in feature "heartbeat": while it is on, it
// writes addond's status (GET /v1/status's document plus the time) to a
// file every interval, atomically (a temporary file renamed over it), so
// that a watchdog outside addond can tell from the file's age that addond
// and its loop are alive. Disable stops it; the file is left behind, its
// time telling how old it is.
type Heartbeat struct {
	status func() Status
	root   string

	op     sync.Mutex // serializes Enable and Disable; guards cancel, done
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex // guards lastErr
	lastErr error
}

// NewHeartbeat returns the heartbeat feature writing what status returns;
// root is the runtime root (for the default path).
func NewHeartbeat(status func() Status, root string) *Heartbeat {
	return &Heartbeat{status: status, root: root}
}

// Heartbeat returns the heartbeat feature for this agent, to be
// registered with the config_toggle backend under HeartbeatFeature.
func (a *Agent) Heartbeat() *Heartbeat {
	return NewHeartbeat(a.Status, a.cfg().RuntimeRoot)
}

// heartbeatDoc is what the file holds.
type heartbeatDoc struct {
	Time time.Time `json:"time"`
	Status
}

// Enable starts the heartbeat, or applies a new configuration to a
// running one. The first write happens before it returns, so a path that
// cannot be written is an error; a configuration that is refused leaves
// a running heartbeat as it was.
func (h *Heartbeat) Enable(ctx context.Context, config []byte) error {
	cfg, err := parseHeartbeatConfig(config, h.root)
	if err != nil {
		return fmt.Errorf("%w: %v", toggle.ErrInvalidConfig, err)
	}
	h.op.Lock()
	defer h.op.Unlock()
	if err := h.write(cfg.Path); err != nil {
		return err
	}
	h.stop()
	h.mu.Lock()
	h.lastErr = nil
	h.mu.Unlock()
	loopCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	h.cancel, h.done = cancel, done
	go h.loop(loopCtx, cfg, done)
	return nil
}

// Disable stops the heartbeat and waits for its goroutine to end.
func (h *Heartbeat) Disable(ctx context.Context) error {
	h.op.Lock()
	defer h.op.Unlock()
	h.stop()
	return nil
}

// stop ends the loop, if one runs; h.op is held.
func (h *Heartbeat) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel, h.done = nil, nil
	}
}

// Health is degraded while writes fail.
func (h *Heartbeat) Health() (supervisors.Health, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastErr != nil {
		return supervisors.HealthDegraded, h.lastErr.Error()
	}
	return supervisors.HealthHealthy, ""
}

func (h *Heartbeat) loop(ctx context.Context, cfg heartbeatConfig, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := h.write(cfg.Path)
			h.mu.Lock()
			h.lastErr = err
			h.mu.Unlock()
		}
	}
}

// write replaces the file at path with the current status, atomically.
func (h *Heartbeat) write(path string) error {
	b, err := json.MarshalIndent(heartbeatDoc{Time: time.Now().UTC(), Status: h.status()}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("heartbeat %s: %w", path, err)
	}
	return nil
}

// Status is the agent's current status, as GET /v1/status serves it;
// before Run (or after it) only the agent's id and version.
func (a *Agent) Status() Status {
	if l := a.loop.Load(); l != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		st := l.status
		st.Addons = append([]AddonStatus(nil), st.Addons...)
		return st
	}
	return Status{AgentID: a.cfg().AgentID, Version: Version, Addons: []AddonStatus{}}
}
