package daemon

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/addond/addond/daemon/reconcile"
)

// metrics are addond's Prometheus metrics, on their own registry.
type metrics struct {
	reg               *prometheus.Registry
	all               []prometheus.Collector // everything reg serves
	state             *prometheus.GaugeVec
	health            *prometheus.GaugeVec
	fresh             prometheus.Gauge
	checkedAt         prometheus.Gauge
	restarts          *prometheus.GaugeVec
	rollbacks         *prometheus.CounterVec
	deliveryBytes     prometheus.Counter
	deliveryFailures  *prometheus.CounterVec
	reconcile         prometheus.Histogram
	downgradesRefused *prometheus.CounterVec
	replays           prometheus.Counter
	downloads         prometheus.Gauge
	expired           prometheus.Gauge
	reports           *prometheus.CounterVec
	reportedAt        prometheus.Gauge
	reportsOn         prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "addond_addon_state", Help: "1 for each add-on's current state.",
		}, []string{"addon_id", "state"}),
		health: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "addond_addon_health", Help: "1 for each add-on's current health (healthy, degraded, unhealthy, unknown).",
		}, []string{"addon_id", "health"}),
		fresh: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_assignment_fresh", Help: "1 while the assignment document in use is confirmed by its source at the last poll; 0 while addond runs on a cached one (store down, refused, replayed).",
		}),
		checkedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_assignment_last_checked_timestamp_seconds", Help: "When the assignment source last answered (Unix time; 0: not since addond started).",
		}),
		restarts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "addond_addon_restarts", Help: "Restarts of the running version of each add-on.",
		}, []string{"addon_id"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "addond_rollbacks_total", Help: "Versions rolled back after failing probation.",
		}, []string{"addon_id"}),
		deliveryBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "addond_delivery_bytes_total", Help: "Artifact bytes downloaded and verified.",
		}),
		deliveryFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "addond_delivery_failures_total", Help: "Failed deliveries by reason (the step that failed; environment failures separately).",
		}, []string{"reason"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "addond_reconcile_duration_seconds", Help: "Time from the start of a reconcile to the desired set being applied.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		downgradesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "addond_downgrades_refused_total", Help: "Desired versions refused as downgrades (lower than the highest ever activated), once per refused version.",
		}, []string{"addon_id"}),
		expired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_assignment_expired", Help: "1 while the assignment document in use is past its expires (nothing of it is applied; add-ons keep their last-known-good).",
		}),
		downloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_downloads_in_flight", Help: "Stagings (downloads and their verification) in flight.",
		}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "addond_report_writes_total", Help: "Writes of the agent's report (agents/<agent>/status.json) to the store, by result (ok, error).",
		}, []string{"result"}),
		reportedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_report_last_success_timestamp_seconds", Help: "When the agent's report was last written to the store (Unix time; 0: not yet).",
		}),
		reportsOn: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "addond_report_enabled", Help: "1 while the agent writes its report to the store; 0 when reports are off (report.enabled false, no store, or a read-only http(s) store).",
		}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "addond_assignment_replays_total", Help: "Assignment documents refused as replays (a lower serial, or the last serial with other content), once per distinct document.",
		}),
	}
	m.all = []prometheus.Collector{m.state, m.health, m.fresh, m.checkedAt, m.restarts, m.rollbacks, m.deliveryBytes, m.deliveryFailures, m.reconcile, m.downgradesRefused, m.replays, m.downloads, m.expired, m.reports, m.reportedAt, m.reportsOn,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
	m.reg.MustRegister(m.all...)
	return m
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// count counts what the Core counts.
func (m *metrics) count(c reconcile.Count) {
	n := c.N
	if n == 0 {
		n = 1
	}
	switch c.Metric {
	case reconcile.MetricRollbacks:
		m.rollbacks.WithLabelValues(c.Label).Add(n)
	case reconcile.MetricDowngradesRefused:
		m.downgradesRefused.WithLabelValues(c.Label).Add(n)
	case reconcile.MetricReplays:
		m.replays.Add(n)
	case reconcile.MetricDeliveryFailures:
		m.deliveryFailures.WithLabelValues(c.Label).Add(n)
	case reconcile.MetricDeliveryBytes:
		m.deliveryBytes.Add(n)
	}
}

// observe sets the state gauges from a status snapshot.
func (m *metrics) observe(st Status) {
	m.state.Reset()
	m.health.Reset()
	m.restarts.Reset()
	m.fresh.Set(boolGauge(st.DocumentFresh))
	if t := st.DocumentCheckedAt; t != nil {
		m.checkedAt.Set(float64(t.Unix()))
	}
	for _, a := range st.Addons {
		m.state.WithLabelValues(a.AddonID, string(a.State)).Set(1)
		m.health.WithLabelValues(a.AddonID, string(a.Health)).Set(1)
		m.restarts.WithLabelValues(a.AddonID).Set(float64(a.Restarts))
	}
}

// serve exposes /metrics on addr.
func (m *metrics) serve(addr string) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
