package fleet

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/daemon/reconcile"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func addon(id, version, active string, state reconcile.State, health string) reconcile.AddonStatus {
	return reconcile.AddonStatus{AddonID: id, Version: version, ActiveVersion: active, State: state, Health: reconcile.Health(health)}
}

func report(agent string, addons ...reconcile.AddonStatus) *Report {
	return &Report{AgentID: agent, ReportedAt: t0, Ready: true, DocumentFresh: true, Serial: 3, Addons: addons}
}

func TestReportRoundTrip(t *testing.T) {
	r := report("edge-01", addon("hello", "1.2.0", "1.2.0", reconcile.StateRunning, "healthy"))
	r.Addons[0].Probation = true
	data, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseReport(data, "edge-01")
	if err != nil || got.Material() != r.Material() || !got.ReportedAt.Equal(t0) || !got.Addons[0].Probation {
		t.Fatalf("ParseReport(Marshal) = %+v, %v", got, err)
	}
	if !strings.Contains(string(data), `"probation": true`) {
		t.Fatalf("no probation field in %s", data)
	}
	if AgentOfDocumentKey("agents/edge-01/assignments.json") != "edge-01" || AgentOfDocumentKey(ReportKey("edge-01")) != "" || AgentOfKey("agents/edge-01/assignments.json") != "" {
		t.Fatal("AgentOfDocumentKey and AgentOfKey tell documents and reports apart wrongly")
	}
	if AgentOfKey(ReportKey("edge-01")) != "edge-01" {
		t.Fatal("AgentOfKey(ReportKey) is not the agent")
	}
	for _, k := range []string{"agents/edge-01/assignments.json", "agents/a/b/status.json", "agents/../status.json", "other/edge-01/status.json", "agents/status.json"} {
		if a := AgentOfKey(k); a != "" {
			t.Errorf("AgentOfKey(%q) = %q, want none", k, a)
		}
	}
}

func TestParseReportRefuses(t *testing.T) {
	ok := `{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z","addons":[]}`
	if _, err := ParseReport([]byte(ok), "edge-01"); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		`{"agent_id":"edge-02","reported_at":"2026-12-06T12:00:00Z"}`: `"edge-02" in agents/edge-01/status.json`,
		`{"agent_id":"../x","reported_at":"2026-12-06T12:00:00Z"}`:    `not a safe agent id`,
		`{"agent_id":"edge-01"}`:                                      `no reported_at`,
		ok + ` {}`:                                                    `trailing data`,
		`[]`:                                                          `cannot unmarshal`,
		`{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z","addons":[{"addon_id":"A\u001b[2J"}]}`:         `not a safe id`,
		`{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z","addons":[{"addon_id":"a"},{"addon_id":"a"}]}`: `listed twice`,
		`{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z","addons":[{"addon_id":"a","version":"1\n2"}]}`: `not a safe version`,
	}
	for in, want := range cases {
		if _, err := ParseReport([]byte(in), "edge-01"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseReport(%s) = %v, want an error containing %q", in, err, want)
		}
	}
	big := make([]byte, MaxReportSize+1)
	if _, err := ParseReport(big, ""); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a report over the limit: %v", err)
	}
}

// Material changes with what an operator acts on, not with pids,
// restarts or times.
func TestMaterial(t *testing.T) {
	base := report("a", addon("hello", "1", "1", reconcile.StateRunning, "healthy"))
	same := *base
	same.Addons = []reconcile.AddonStatus{base.Addons[0]}
	same.Addons[0].PID, same.Addons[0].Restarts, same.Addons[0].Since = 42, 7, t0.Add(time.Hour)
	same.ReportedAt = t0.Add(time.Hour)
	if same.Material() != base.Material() {
		t.Fatal("pid, restarts or a time changed the material")
	}
	for name, change := range map[string]func(r *Report){
		"state":     func(r *Report) { r.Addons[0].State = reconcile.StateRolledBack },
		"health":    func(r *Report) { r.Addons[0].Health = "unhealthy" },
		"version":   func(r *Report) { r.Addons[0].Version = "2" },
		"active":    func(r *Report) { r.Addons[0].ActiveVersion = "2" },
		"probation": func(r *Report) { r.Addons[0].Probation = true },
		"from_lkg":  func(r *Report) { r.Addons[0].FromLKG = true },
		"error":     func(r *Report) { r.Addons[0].LastError = "boom" },
		"serial":    func(r *Report) { r.Serial++ },
		"fresh":     func(r *Report) { r.DocumentFresh = false },
		"expired":   func(r *Report) { r.DocumentExpired = true },
		"doc error": func(r *Report) { r.DocumentError = "x" },
		"ready":     func(r *Report) { r.Ready = false },
		"removed":   func(r *Report) { r.Addons = nil },
	} {
		c := *base
		c.Addons = append([]reconcile.AddonStatus(nil), base.Addons...)
		change(&c)
		if c.Material() == base.Material() {
			t.Errorf("a change of %s left the material as it was", name)
		}
	}
}

func TestSummarize(t *testing.T) {
	found := []Found{
		{Agent: "b-ok", SeenAt: t0.Add(-time.Minute), Report: report("b-ok",
			addon("hello", "1.2.0", "1.2.0", reconcile.StateRunning, "healthy"),
			addon("beat", "1", "1", reconcile.StateDisabled, "unknown"))},
		{Agent: "a-rolled", SeenAt: t0.Add(-time.Minute), Report: report("a-rolled",
			func() reconcile.AddonStatus {
				a := addon("hello", "1.2.0", "1.1.0", reconcile.StateRolledBack, "healthy")
				a.LastError = "not healthy within the 1m0s probation"
				return a
			}())},
		{Agent: "c-stale", SeenAt: t0.Add(-time.Hour), Report: report("c-stale", addon("hello", "1.1.0", "1.1.0", reconcile.StateRunning, "healthy"))},
		{Agent: "d-broken", SeenAt: t0, Err: errors.New("report: no reported_at")},
		{Agent: "f-never"},
		{Agent: "e-nodoc", SeenAt: t0, Report: func() *Report {
			r := report("e-nodoc")
			r.DocumentFresh, r.DocumentError = false, "store unreachable"
			return r
		}()},
	}
	st := Summarize(found, t0, 30*time.Minute)
	if st.OK {
		t.Fatal("OK with a rolled-back, a stale, a broken and a document-less agent")
	}
	var order []string
	problems := map[string]string{}
	for _, a := range st.Agents {
		order = append(order, a.AgentID)
		problems[a.AgentID] = strings.Join(a.Problems, "; ")
	}
	if strings.Join(order, " ") != "a-rolled b-ok c-stale d-broken e-nodoc f-never" {
		t.Fatalf("agents in order %v", order)
	}
	for agent, want := range map[string]string{
		"b-ok":     "",
		"a-rolled": "hello: rolled_back (healthy): not healthy within the 1m0s probation",
		"c-stale":  "stale: last report 1h0m0s ago",
		"d-broken": "report unreadable: report: no reported_at",
		"e-nodoc":  "document: store unreachable",
		"f-never":  "never reported (it has an assignment document)",
	} {
		if problems[agent] != want {
			t.Errorf("%s: problems %q, want %q", agent, problems[agent], want)
		}
	}
	if !st.Agents[2].Stale || st.Agents[0].Stale {
		t.Error("stale flags")
	}
	want := map[string]map[string]map[string]int{
		"hello": {"1.2.0": {"running": 1, "rolled_back": 1}, "1.1.0": {"running": 1}},
		"beat":  {"1": {"disabled": 1}},
	}
	for id, versions := range want {
		for v, states := range versions {
			for s, n := range states {
				if st.Addons[id][v][s] != n {
					t.Errorf("%s %s %s: %d, want %d (all %v)", id, v, s, st.Addons[id][v][s], n, st.Addons)
				}
			}
		}
	}
	if ok, stale, bad := st.Counts(); ok != 1 || stale != 1 || bad != 4 {
		t.Errorf("counts ok %d stale %d problems %d", ok, stale, bad)
	}
	if good := Summarize(found[:1], t0, 30*time.Minute); !good.OK {
		t.Errorf("one healthy agent is not OK: %+v", good)
	}
	if empty := Summarize(nil, t0, time.Minute); !empty.OK || len(empty.Agents) != 0 {
		t.Errorf("no agents: %+v", empty)
	}
}

func FuzzParseReport(f *testing.F) {
	f.Add([]byte(`{"agent_id":"edge-01","reported_at":"2026-12-06T12:00:00Z","addons":[{"addon_id":"hello","version":"1.0.0","state":"running"}]}`), "edge-01")
	f.Add([]byte(`{"agent_id":"x","reported_at":"0001-01-01T00:00:00Z"}`), "")
	f.Fuzz(func(t *testing.T, data []byte, agent string) {
		r, err := ParseReport(data, agent)
		if err != nil {
			return
		}
		if !ValidAgentID(r.AgentID) || agent != "" && r.AgentID != agent {
			t.Fatalf("accepted agent %q for %q", r.AgentID, agent)
		}
		// What was accepted is written back and read again the same.
		out, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseReport(out, r.AgentID)
		if err != nil || again.Material() != r.Material() {
			t.Fatalf("round trip: %v", err)
		}
		// A summary of it never panics and names the agent.
		if st := Summarize([]Found{{Agent: r.AgentID, SeenAt: time.Now(), Report: &r}}, time.Now(), time.Hour); st.Agents[0].AgentID != r.AgentID {
			t.Fatal("summary lost the agent")
		}
	})
}
