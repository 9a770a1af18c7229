package notice

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the notice watchers.
type Metrics struct {
	notices *prometheus.CounterVec
	errors  *prometheus.CounterVec
	pending *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_reclaim_notices_total",
			Help: "Reclaim notices seen on this node's metadata service, by provider and kind.",
		}, []string{"provider", "kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_reclaim_notice_check_errors_total",
			Help: "Checks of the metadata service for reclaim notices that failed (no answer, malformed answer).",
		}, []string{"provider"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "penny_reclaim_notices_pending",
			Help: "Reclaim notices pending on this node.",
		}, []string{"provider"}),
	}
	if reg != nil {
		reg.MustRegister(m.notices, m.errors, m.pending)
	}
	return m
}
