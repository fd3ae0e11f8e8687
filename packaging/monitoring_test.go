package packaging

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAlertRules: the alert rules are valid Prometheus rules and pass
// their unit tests (promtool, from Debian's prometheus package).
func TestAlertRules(t *testing.T) {
	need(t, "promtool")
	dir := filepath.Join("monitoring")
	t.Log(run(t, "promtool", "check", "rules", filepath.Join(dir, "addond-alerts.yml")))
	out := run(t, "promtool", "test", "rules", filepath.Join(dir, "addond-alerts.test.yml"))
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// TestDashboard: the Grafana dashboard is JSON Grafana takes (unique
// panel ids, every panel placed and with a query), and every query is
// PromQL that parses: they are checked by promtool as recording rules,
// with Grafana's variables replaced.
func TestDashboard(t *testing.T) {
	need(t, "promtool")
	b, err := os.ReadFile(filepath.Join("monitoring", "addond-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int                       `json:"id"`
			Title   string                    `json:"title"`
			GridPos *struct{ X, Y, W, H int } `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) < 10 {
		t.Fatalf("dashboard %q (%q): %d panels", d.Title, d.UID, len(d.Panels))
	}
	ids := map[int]bool{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range d.Panels {
		if ids[p.ID] || p.GridPos == nil || p.GridPos.W == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: duplicate id, no place or no query", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(tg.Expr)
			n++
			q, _ := json.Marshal(expr)
			rules.WriteString("      - record: dashboard:query" + strings.Repeat("x", n) + "\n        expr: " + string(q) + "\n")
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	os.WriteFile(path, []byte(rules.String()), 0o644)
	if out := run(t, "promtool", "check", "rules", path); !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules (the dashboard's queries):\n%s", out)
	}
}
