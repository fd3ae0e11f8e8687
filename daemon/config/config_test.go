package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseDesignExample(t *testing.T) {
	c, err := Parse([]byte(`{
  "agent_id": "edge-01",
  "runtime_root": "/var/lib/addond",
  "store": "s3://addons?endpoint=127.0.0.1:9000&insecure=true",
  "assignments": {"store_key": "agents/edge-01/assignments.json"},
  "poll_interval": "30s",
  "trust": {"public_keys": ["/etc/addond/trust.d"], "require_signatures": true},
  "local_overrides": "/etc/addond/addons.local.json",
  "status_socket": "/run/addond/addond.sock",
  "systemd": {"manager": "user", "addon_user": "addond"},
  "updater_socket": "/run/addond-updater.sock",
  "metrics_address": "127.0.0.1:9464",
  "probation": "60s"
}`))
	if err != nil {
		t.Fatalf("Parse(DESIGN.md example): %v", err)
	}
	if c.PollInterval.D() != 30*time.Second || !c.Trust.Required() || c.Assignments.StoreKey != "agents/edge-01/assignments.json" {
		t.Fatalf("parsed %+v", c)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if c.AgentID != host || c.RuntimeRoot != "/var/lib/addond" || !c.Trust.Required() || c.Probation.D() != time.Minute || c.MaxConcurrentDownloads != 2 {
		t.Fatalf("defaults = %+v", c)
	}
	if !c.Report.On() || c.Report.Interval.D() != 10*time.Minute || c.Report.MinInterval.D() != 5*time.Second {
		t.Fatalf("report defaults = %+v", c.Report)
	}
	c, err = Parse([]byte(`{"report": {"enabled": false, "interval": "1h", "min_interval": "30s"}}`))
	if err != nil || c.Report.On() || c.Report.Interval.D() != time.Hour || c.Report.MinInterval.D() != 30*time.Second {
		t.Fatalf("report = %+v, %v", c.Report, err)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	cases := map[string]string{
		`{"agent_id":"a","bogus":1}`:                               `unknown key "bogus"`,
		`{"poll_interval":"soon"}`:                                 `poll_interval`,
		`{"poll_interval":"-1s"}`:                                  `must be positive`,
		`{"runtime_root":"relative"}`:                              `runtime_root`,
		`{"store":"ftp://x"}`:                                      `key "store"`,
		`{"assignments":{"store_key":"a"}}`:                        `store_key needs "store"`,
		`{"assignments":{"file":"/a","store_key":"b"}}`:            `not both`,
		`{"assignments":{"file":"rel"}}`:                           `assignments.file`,
		`{"systemd":{"manager":"launchd"}}`:                        `systemd.manager`,
		`{"trust":{"require_signatures":"yes"}}`:                   `require_signatures`,
		`{"agent_id":"../x"}`:                                      `agent_id`,
		`{"max_concurrent_downloads":0.5}`:                         `max_concurrent_downloads`,
		`{"store":"file:///x","assignments":{"store_key":"../a"}}`: `assignments.store_key`,
		`{"report":{"interval":"often"}}`:                          `key "report.interval"`,
		`{"report":{"min_interval":"0s"}}`:                         `key "report.min_interval": duration "0s" must be positive`,
		`{"report":{"min_interval":"100ms"}}`:                      `min_interval at least 1s`,
		`{"report":{"interval":"1m","min_interval":"2m"}}`:         `min_interval not above interval`,
		`{"report":{"interval":"1s"}}`:                             `interval at least 10s`,
		`{"report":{"enabled":"yes"}}`:                             `report.enabled`,
		`{"report":{"every":"1m"}}`:                                `unknown key "every"`,
		`{`:                                                        `invalid JSON`,
		`{}}`:                                                      `invalid JSON`,
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestLoadNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "addond.json")
	os.WriteFile(p, []byte(`{"nope":1}`), 0o644)
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Load = %v, want error naming the file and key", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"agent_id":"edge-01","store":"file:///srv","assignments":{"store_key":"agents/edge-01/assignments.json"}}`))
	f.Add([]byte(`{"poll_interval":"1s","trust":{"public_keys":["/k"],"require_signatures":false}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if !filepath.IsAbs(c.RuntimeRoot) || c.PollInterval <= 0 || c.MaxConcurrentDownloads < 1 {
			t.Fatalf("Parse accepted %+v", c)
		}
	})
}
