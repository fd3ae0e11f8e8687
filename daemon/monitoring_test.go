package daemon

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMonitoringKitUsesServedMetrics: every addond_* metric the alert
// rules and the dashboard (packaging/monitoring) query is one addond
// serves — a rename breaks this test, not an operator's alerting.
func TestMonitoringKitUsesServedMetrics(t *testing.T) {
	served := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, c := range newMetrics().all {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if n := fqName.FindStringSubmatch(d.String()); n != nil {
				served[n[1]] = true
				// A histogram's series.
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					served[n[1]+s] = true
				}
			}
		}
	}
	if len(served) < 15*1 {
		t.Fatalf("only %d metric names found: %v", len(served), served)
	}
	used := regexp.MustCompile(`\baddond_[a-z_]+\b`)
	files, _ := filepath.Glob("../packaging/monitoring/*")
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range used.FindAllString(string(b), -1) {
			if strings.HasSuffix(f, ".test.yml") && !served[name] {
				t.Errorf("%s: its input series %s is not a metric addond serves", f, name)
				continue
			}
			if !served[name] {
				t.Errorf("%s queries %s, which addond does not serve", f, name)
			}
			n++
		}
	}
	if n < 20 {
		t.Fatalf("only %d uses of addond metrics in %v", n, files)
	}
}
