package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/store"
)

// fleetStatus runs `addonctl fleet status` and returns its exit status and
// output.
func (e *env) fleetStatus(args ...string) result {
	e.t.Helper()
	return e.exec(nil, "addonctl", append([]string{"fleet", "status", "--store", e.storeURL}, args...)...)
}

// fleetJSON waits until `addonctl fleet status --json` shows what ok
// accepts.
func (e *env) fleetJSON(what string, ok func(fleet.Status, int) bool) fleet.Status {
	e.t.Helper()
	var last fleet.Status
	eventually(e.t, 30*time.Second, "fleet status "+what, func() bool {
		r := e.fleetStatus("--json")
		last = fleet.Status{}
		if err := json.Unmarshal([]byte(r.stdout), &last); err != nil {
			e.t.Fatalf("fleet status --json: %v\n%s%s", err, r.stdout, r.stderr)
		}
		return ok(last, r.code)
	})
	return last
}

func reportedAddon(a fleet.Agent, id string) daemon.AddonStatus {
	for _, ad := range a.Addons {
		if ad.AddonID == id {
			return ad
		}
	}
	return daemon.AddonStatus{}
}

// TestFleetStatus: a running addond reports to the store (the real MinIO
// and a directory) and `addonctl fleet status` shows it: healthy (exit 0),
// then rolled back with the reason (exit 1); stale past --stale; beside it,
// an unreadable report and a hostile one, whose escape sequences never
// reach the terminal.
func TestFleetStatus(t *testing.T) {
	for _, kind := range []string{"s3", "file"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, kind)
			hello := filepath.Join(bin, "hello")
			e.publishFile("hello", "1.0.0", hello)
			e.publishFile("hello", "1.1.0", hello)
			e.assignWithConfig("hello@1.0.0", "hello", `{}`)
			e.extra = map[string]any{"report": map[string]string{"min_interval": "1s"}}
			d, _ := e.startReady(t)
			d.waitAddon(t, "hello", 15*time.Second, "running 1.0.0", runningHealthy("1.0.0"))

			// Promoted (off probation) and reported: OK, exit 0.
			sum := e.fleetJSON("with hello 1.0.0 promoted", func(s fleet.Status, code int) bool {
				if len(s.Agents) != 1 {
					return false
				}
				a := reportedAddon(s.Agents[0], "hello")
				return a.ActiveVersion == "1.0.0" && a.State == "running" && !a.Probation
			})
			if a := sum.Agents[0]; !sum.OK || a.AgentID != "edge-01" || a.Stale || len(a.Problems) > 0 || a.Platform != "linux/amd64" || a.Serial == 0 {
				t.Fatalf("a healthy agent: %+v", sum)
			}
			if sum.Addons["hello"]["1.0.0"]["running"] != 1 {
				t.Fatalf("add-on counts %v", sum.Addons)
			}
			r := e.fleetStatus()
			if r.code != 0 || !strings.Contains(r.stdout, "edge-01") || !regexp.MustCompile(`hello\s+1\.0\.0\s+running 1`).MatchString(r.stdout) ||
				!strings.Contains(r.stdout, "1 agents: 1 ok, 0 stale, 0 with problems") {
				t.Fatalf("fleet status: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			t.Logf("fleet status, healthy:\n%s", r.stdout)

			// Rolled back: exit 1, the agent's problem names the add-on and
			// why.
			e.assignWithConfig("hello@1.1.0", "hello", `{"health":"unhealthy"}`)
			d.client.Reconcile(context.Background())
			sum = e.fleetJSON("with hello 1.1.0 rolled back", func(s fleet.Status, code int) bool {
				return len(s.Agents) == 1 && reportedAddon(s.Agents[0], "hello").State == "rolled_back" && code == 1
			})
			if p := strings.Join(sum.Agents[0].Problems, "; "); sum.OK || !strings.Contains(p, "hello: rolled_back") || !strings.Contains(p, "probation") {
				t.Fatalf("a rolled-back agent's problems: %q", p)
			}
			if sum.Addons["hello"]["1.1.0"]["rolled_back"] != 1 {
				t.Fatalf("add-on counts %v", sum.Addons)
			}

			// Stale: the report is older than --stale.
			time.Sleep(10 * time.Millisecond)
			if r := e.fleetStatus("--stale", "1ms"); r.code != 1 || !strings.Contains(r.stdout, "STALE") || !strings.Contains(r.stdout, "1 stale") {
				t.Fatalf("--stale 1ms: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}

			// Beside it: a report that does not parse, and a hostile one.
			st, err := store.Open(e.storeURL)
			if err != nil {
				t.Fatal(err)
			}
			put := func(agent, body string) {
				if _, err := st.Put(context.Background(), fleet.ReportKey(agent), strings.NewReader(body), int64(len(body))); err != nil {
					t.Fatal(err)
				}
			}
			put("broken", `{"agent_id":"broken"`)
			put("evil", `{"agent_id":"evil","reported_at":"2026-12-06T12:00:00Z","ready":true,"document_fresh":true,"addond_version":"\u001b]0;pwned\u0007",`+
				`"addons":[{"addon_id":"hello","version":"1.0.0","state":"running\u001b[2J","health":"sick","last_error":"\u001b[31mred\u202etxt.exe"}]}`)
			put("mallory", `{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z"}`) // claims another agent
			// An agent with a document that never reported.
			e.run("addonctl", "assign", "--store", e.storeURL, "--agent", "edge-09", "--key", filepath.Join(e.dir, "keys", "signing.key"), "--addon", "hello@1.0.0")
			r = e.fleetStatus()
			if r.code != 1 {
				t.Fatalf("fleet status with broken reports: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			for _, bad := range []string{"\x1b", "\a", "\u202e"} {
				if strings.Contains(r.stdout, bad) || strings.Contains(r.stderr, bad) {
					t.Fatalf("a report's %q reached the terminal:\n%q", bad, r.stdout)
				}
			}
			for _, want := range []string{"broken", "report unreadable", "evil", "mallory", `"edge-01" in agents/mallory/status.json`,
				"edge-09", "never reported", "5 agents: 0 ok, 0 stale, 5 with problems"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("fleet status does not say %q:\n%s", want, r.stdout)
				}
			}
			t.Logf("fleet status, with broken and hostile reports:\n%s", r.stdout)

			// A store that cannot be listed is the command's error.
			if r := e.exec(nil, "addonctl", "fleet", "status", "--store", "file://"+filepath.Join(e.dir, "no-such-store")); r.code != 1 || !strings.Contains(r.stderr, "no-such-store") {
				t.Fatalf("fleet status of a missing store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}
