package spotrisk

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	// fallbacks is how often the capacity a class waits for was not there
	// in time: the first sign that a Spot pool's max, or an on-demand
	// quota, is too small for the work sent to it.
	fallbacks = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_spot_fallbacks_total",
		Help:           "Pods bound to the capacity they waited fallbackAfter to avoid, by Spot policy: prefer (no Spot capacity in time, placed on on-demand) and avoid (training without checkpoints; no on-demand or reserved capacity in time, placed on Spot).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"policy"})

	// expanderRequests says whether Cluster Autoscaler asks, and whether
	// Penny's rules leave it anything to grow.
	expanderRequests = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_expander_requests_total",
		Help:           "Cluster Autoscaler gRPC expander requests by result: ranked (the best option returned), none (no option passes SpotRisk's rules for its pods; Cluster Autoscaler chooses), invalid (malformed request), unavailable (SpotRisk not built yet), cancelled (the caller gave up before the answer).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})

	registerOnce sync.Once
)

// registerMetrics registers the plugin's metrics with the registry the
// scheduler serves on /metrics.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(fallbacks, expanderRequests)
	})
}
