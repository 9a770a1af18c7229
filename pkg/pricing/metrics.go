package pricing

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Metrics are registered with component-base's legacy registry, which is
// what kube-scheduler's /metrics serves.
var (
	metricReclaimRate = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "pool_reclaim_rate_per_hour",
		Help:           "Estimated reclaims per node-hour of a Spot pool (posterior mean of the Gamma-Poisson risk model).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"instance_type", "zone", "capacity_type"})
	metricReclaims = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "pool_reclaims_total",
		Help:           "Reclaims observed per pool.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"instance_type", "zone", "capacity_type"})
	metricCatalogEntries = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "price_catalog_entries",
		Help:           "Price rows in the catalog in force.",
		StabilityLevel: metrics.ALPHA,
	})
	metricCatalogLoads = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "price_catalog_loads_total",
		Help:           "Catalog loads by result (success, error). On error the last good catalog stays in force.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	metricCatalogLastSuccess = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "price_catalog_last_success_timestamp_seconds",
		Help:           "When the catalog in force was loaded.",
		StabilityLevel: metrics.ALPHA,
	})
	// The error count alone rises once per rejected edit and then stands
	// still, and the last success time of a catalog nobody changed is old
	// too: neither says that the edit in place is the rejected one.
	metricCatalogLastLoadSuccessful = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "price_catalog_last_load_successful",
		Help:           "1 when the catalog's last load succeeded, 0 while its source is rejected, unreadable or missing and the last good catalog (if any) stays in force.",
		StabilityLevel: metrics.ALPHA,
	})
	metricCatalogMisses = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "price_catalog_misses_total",
		Help:           "Nodes the catalog in force has no price for, counted once per instance type (none: a node without the instance-type label), capacity type and region for each catalog loaded. SpotRisk scores such nodes last.",
		StabilityLevel: metrics.ALPHA,
	})
	metricInterruptedRuns = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "interrupted_runs_total",
		Help:           "Pod runs a Spot reclaim cut short, as recorded for SpotRisk (Interrupted).",
		StabilityLevel: metrics.ALPHA,
	})
	metricInterruptedWorkloads = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "interrupted_workloads",
		Help:           "Workloads (gangs, controllers, pods) with a run a reclaim cut short that SpotRisk remembers; training without checkpoints among them stays off Spot.",
		StabilityLevel: metrics.ALPHA,
	})
	metricInterruptedSaves = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "interrupted_saves_total",
		Help:           "Saves of the interrupted runs to their ConfigMap, by result (success, error); a save that finds the copy up to date writes nothing and counts as a success.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	metricRiskSaves = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "penny",
		Name:           "reclaim_risk_saves_total",
		Help:           "Saves of the Spot pools' reclaim evidence (the risk model's reclaims and node-hours) to its ConfigMap, by result (success, error); a save that finds the copy up to date writes nothing and counts as a success.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	metricTypicalRunHours = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "penny",
		Name:           "training_run_typical_hours",
		Help:           "How long the training run a typical GPU-hour belongs to lasts (GPU-weighted, size-biased mean of observed runs; RunLengths). SpotRisk keeps training without checkpoints off Spot pools where it would expect to lose more than maxExpectedLoss of its work. 0 while the runs seen, weighed by age, are fewer than 10 and unknownRuntime stands in.",
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
)

// RegisterMetrics registers the pricing metrics once. Until it is called
// updates are dropped, which is what tests and the simulator want.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(metricReclaimRate, metricReclaims, metricCatalogEntries, metricCatalogLoads, metricCatalogLastSuccess, metricCatalogLastLoadSuccessful, metricCatalogMisses,
			metricInterruptedRuns, metricInterruptedWorkloads, metricInterruptedSaves, metricRiskSaves, metricTypicalRunHours)
		// Every result has its series at 0 from the start: one born at its
		// first increment hides that increment from rate() and increase().
		// metricReclaims is left to its increments: its pools (instance
		// type, zone) are whatever the fleet runs.
		for _, vec := range []*metrics.CounterVec{metricCatalogLoads, metricInterruptedSaves, metricRiskSaves} {
			vec.WithLabelValues(resultSuccess)
			vec.WithLabelValues(resultError)
		}
	})
}

// The result label values of the catalog loads and the saves, which
// registration puts on /metrics at 0.
const (
	resultSuccess = "success"
	resultError   = "error"
)

// resultOf is the result label value of an attempt that ended in err.
func resultOf(err error) string {
	if err != nil {
		return resultError
	}
	return resultSuccess
}
