// Package config loads /etc/addond/addond.json (DESIGN.md, "Contract:
// files"). Unknown keys are errors that name the key; every default is
// spelled out here; and the secure choice is the default where one exists
// (signatures are required unless the file says otherwise).
package config

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/addond/addond/daemon/store"
)

// DefaultPath is where addond and addonctl look for the config.
const DefaultPath = "/etc/addond/addond.json"

// Config is addond.json.
type Config struct {
	AgentID        string      `json:"agent_id"`
	RuntimeRoot    string      `json:"runtime_root"`
	Store          string      `json:"store"`
	Assignments    Assignments `json:"assignments"`
	PollInterval   Duration    `json:"poll_interval"`
	Trust          Trust       `json:"trust"`
	LocalOverrides string      `json:"local_overrides"`
	StatusSocket   string      `json:"status_socket"`
	Systemd        Systemd     `json:"systemd"`
	UpdaterSocket  string      `json:"updater_socket"`
	MetricsAddress string      `json:"metrics_address"`
	Probation      Duration    `json:"probation"`

	// Extensions beyond DESIGN.md's example (optional).

	// MaxConcurrentDownloads bounds parallel artifact downloads (default 2).
	MaxConcurrentDownloads int `json:"max_concurrent_downloads"`
	// DownloadRetries is how often one download is retried after a
	// transient failure before the add-on stays on last-known-good
	// (default 4).
	DownloadRetries int `json:"download_retries"`
	// MinFreeBytes is the space left free on the runtime root's file system
	// beyond the artifact itself (default 64 MiB).
	MinFreeBytes int64 `json:"min_free_bytes"`
	// DownloadRateLimit caps the bytes per second of all artifact
	// downloads together; 0: unlimited.
	DownloadRateLimit int64 `json:"download_rate_limit,omitempty"`

	// Report is the agent's report to the store (DESIGN.md, "Fleet").
	Report Report `json:"report"`

	// Path is the file the config was loaded from.
	Path string `json:"-"`
}

// Assignments names where the assignment document comes from: an object in
// the store, or a local file.
type Assignments struct {
	StoreKey string `json:"store_key,omitempty"`
	File     string `json:"file,omitempty"`
}

// Trust configures signature verification.
type Trust struct {
	PublicKeys []string `json:"public_keys"`
	// AssignmentKeys, when set, are the only keys assignment documents
	// verify under; PublicKeys then verify packages only. Unset: PublicKeys
	// verify both.
	AssignmentKeys    []string `json:"assignment_keys,omitempty"`
	RequireSignatures *bool    `json:"require_signatures"`
}

// Required reports whether signatures are required (the default).
func (t Trust) Required() bool { return t.RequireSignatures == nil || *t.RequireSignatures }

// Report configures agents/<agent_id>/status.json: written when
// something an operator cares about changes, at most once per MinInterval,
// and otherwise every Interval (jittered).
type Report struct {
	Enabled     *bool    `json:"enabled"`
	Interval    Duration `json:"interval"`
	MinInterval Duration `json:"min_interval"`
}

// On reports whether reports are wanted (the default); they are written
// only where there is a store.
func (r Report) On() bool { return r.Enabled == nil || *r.Enabled }

// Every is the interval of the periodic report, and Min the least time
// between two reports (their defaults when unset).
func (r Report) Every() time.Duration { return cmp.Or(r.Interval.D(), DefaultReportInterval) }
func (r Report) Min() time.Duration   { return cmp.Or(r.MinInterval.D(), DefaultReportMinInterval) }

// Report bounds.
const (
	DefaultReportInterval    = 10 * time.Minute
	DefaultReportMinInterval = 5 * time.Second
	MinReportMinInterval     = time.Second
	MinReportInterval        = 10 * time.Second
)

// Systemd selects the manager add-on units run in.
type Systemd struct {
	Manager   string `json:"manager"`    // user (default), system, none
	AddonUser string `json:"addon_user"` // for manager=system
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

func (d Duration) D() time.Duration { return time.Duration(d) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	if v <= 0 {
		return fmt.Errorf("duration %q must be positive", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

var agentIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Load reads and validates the config at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.Path = path
	return c, nil
}

// Parse decodes and validates a config, filling in defaults.
func Parse(data []byte) (*Config, error) {
	if len(data) > 1<<20 {
		return nil, errors.New("larger than 1 MiB")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	durations := map[string]json.RawMessage{"poll_interval": top["poll_interval"], "probation": top["probation"]}
	var report map[string]json.RawMessage
	if raw, ok := top["report"]; ok && json.Unmarshal(raw, &report) == nil {
		durations["report.interval"], durations["report.min_interval"] = report["interval"], report["min_interval"]
	}
	for _, key := range slices.Sorted(maps.Keys(durations)) {
		if raw := durations[key]; raw != nil {
			var d Duration
			if err := d.UnmarshalJSON(raw); err != nil {
				return nil, fmt.Errorf("key %q: %w", key, err)
			}
		}
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, explain(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	if err := c.defaults(); err != nil {
		return nil, err
	}
	return &c, c.validate()
}

// explain turns encoding/json's messages into ones that name the key.
func explain(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Errorf("key %q: want %s", te.Field, te.Type)
	case errors.As(err, &se):
		return fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, err)
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return fmt.Errorf("unknown key %s", strings.TrimPrefix(msg, "json: unknown field "))
	}
	return err
}

func (c *Config) defaults() error {
	if c.AgentID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("agent_id not set and no host name: %w", err)
		}
		c.AgentID = host
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.RuntimeRoot, "/var/lib/addond")
	def(&c.StatusSocket, "/run/addond/addond.sock")
	def(&c.Systemd.Manager, "user")
	def(&c.Systemd.AddonUser, "addond")
	def(&c.UpdaterSocket, "/run/addond-updater.sock")
	if c.PollInterval == 0 {
		c.PollInterval = Duration(30 * time.Second)
	}
	if c.Probation == 0 {
		c.Probation = Duration(60 * time.Second)
	}
	if c.MaxConcurrentDownloads == 0 {
		c.MaxConcurrentDownloads = 2
	}
	if c.DownloadRetries == 0 {
		c.DownloadRetries = 4
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = 64 << 20
	}
	if c.Report.Interval == 0 {
		c.Report.Interval = Duration(DefaultReportInterval)
	}
	if c.Report.MinInterval == 0 {
		c.Report.MinInterval = Duration(DefaultReportMinInterval)
	}
	return nil
}

func (c *Config) validate() error {
	if !agentIDRe.MatchString(c.AgentID) {
		return fmt.Errorf("key \"agent_id\": %q is not a safe agent id", c.AgentID)
	}
	if !filepath.IsAbs(c.RuntimeRoot) {
		return fmt.Errorf("key \"runtime_root\": %q must be an absolute path", c.RuntimeRoot)
	}
	if c.Store != "" {
		if _, err := store.ParseURL(c.Store); err != nil {
			return fmt.Errorf("key \"store\": %w", err)
		}
	}
	a := c.Assignments
	switch {
	case a.StoreKey != "" && a.File != "":
		return errors.New("key \"assignments\": set store_key or file, not both")
	case a.StoreKey != "":
		if c.Store == "" {
			return errors.New("key \"assignments\": store_key needs \"store\"")
		}
		if err := store.ValidKey(a.StoreKey); err != nil {
			return fmt.Errorf("key \"assignments.store_key\": %w", err)
		}
	case a.File != "":
		if !filepath.IsAbs(a.File) {
			return fmt.Errorf("key \"assignments.file\": %q must be an absolute path", a.File)
		}
	}
	for _, p := range c.Trust.PublicKeys {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("key \"trust.public_keys\": %q must be an absolute path", p)
		}
	}
	for _, p := range c.Trust.AssignmentKeys {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("key \"trust.assignment_keys\": %q must be an absolute path", p)
		}
	}
	if c.LocalOverrides != "" && !filepath.IsAbs(c.LocalOverrides) {
		return fmt.Errorf("key \"local_overrides\": %q must be an absolute path", c.LocalOverrides)
	}
	switch c.Systemd.Manager {
	case "user", "system", "none":
	default:
		return fmt.Errorf("key \"systemd.manager\": %q, want user, system or none", c.Systemd.Manager)
	}
	if c.MaxConcurrentDownloads < 1 || c.MaxConcurrentDownloads > 64 {
		return fmt.Errorf("key \"max_concurrent_downloads\": %d, want 1..64", c.MaxConcurrentDownloads)
	}
	if c.DownloadRateLimit < 0 || c.DownloadRateLimit > 0 && c.DownloadRateLimit < 1024 {
		return fmt.Errorf("key \"download_rate_limit\": %d, want 0 (unlimited) or at least 1024 bytes per second", c.DownloadRateLimit)
	}
	if c.DownloadRetries < 0 || c.DownloadRetries > 100 {
		return fmt.Errorf("key \"download_retries\": %d, want 0..100", c.DownloadRetries)
	}
	if c.MinFreeBytes < 0 {
		return fmt.Errorf("key \"min_free_bytes\": must not be negative")
	}
	if r := c.Report; r.MinInterval.D() < MinReportMinInterval || r.Interval.D() < MinReportInterval || r.MinInterval > r.Interval {
		return fmt.Errorf("key \"report\": interval %v and min_interval %v: want min_interval at least %v, interval at least %v, min_interval not above interval",
			r.Interval.D(), r.MinInterval.D(), MinReportMinInterval, MinReportInterval)
	}
	return nil
}
