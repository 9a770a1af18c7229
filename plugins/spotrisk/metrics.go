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

	// waits is how long pods waited to be placed and where they went, per
	// Spot policy: the cluster's view of the trade fallbackAfter makes
	// between the bill and how long prefer and avoid pods wait
	// (docs/spot.md, How long to wait).
	waits = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Name:           "penny_spot_wait_seconds",
		Help:           "Seconds from a pod's creation, or from the removal of its last scheduling gate as penny-scheduler saw it (this one, or one before it that recorded it in the pod's status), to its binding, by the pod's Spot policy (never, avoid, allow, prefer, only) and the capacity type of the node it was bound to (spot, on-demand, reserved). A prefer pod bound to on-demand capacity waited out fallbackAfter.",
		Buckets:        metrics.ExponentialBuckets(15, 2, 14),
		StabilityLevel: metrics.ALPHA,
	}, []string{"policy", "capacity_type"})

	// expanderRequests says whether Cluster Autoscaler asks, and whether
	// Penny's rules leave it anything to grow.
	expanderRequests = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_expander_requests_total",
		Help:           "Cluster Autoscaler gRPC expander requests by result: ranked (the best option returned, with the unpriced options SpotRisk's rules let its pods on), none (no priced option passes SpotRisk's rules for its pods: the answer holds only options that could not be judged (no template node, none of the profile's pods, unpriced), else none), invalid (malformed request), unavailable (SpotRisk not built yet), cancelled (the caller gave up before the answer).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})

	// expanderConnectionsOverLimit says when --expander-max-connections
	// turns clients away.
	expanderConnectionsOverLimit = metrics.NewCounter(&metrics.CounterOpts{
		Name:           "penny_expander_connections_over_limit_total",
		Help:           "Connections to the Cluster Autoscaler expander endpoint closed as soon as they were accepted because --expander-max-connections were open already.",
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
)

// fallbackPolicies are the policies penny_spot_fallbacks_total counts: the
// two whose pods wait for one kind of capacity and then take the other.
var fallbackPolicies = []Policy{Prefer, Avoid}

// expanderResult is a result label value of penny_expander_requests_total.
type expanderResult string

const (
	expanderRanked      expanderResult = "ranked"
	expanderNone        expanderResult = "none"
	expanderInvalid     expanderResult = "invalid"
	expanderUnavailable expanderResult = "unavailable"
	expanderCancelled   expanderResult = "cancelled"
)

// expanderResults is every expanderResult: registration puts each on
// /metrics at 0, so a result missing here is born at its first request.
var expanderResults = []expanderResult{expanderRanked, expanderNone, expanderInvalid, expanderUnavailable, expanderCancelled}

// registerMetrics registers the plugin's metrics with the registry the
// scheduler serves on /metrics.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(fallbacks, waits, expanderRequests, expanderConnectionsOverLimit)
		// The counters' series exist at 0 from the start: one born at its
		// first increment hides that increment from rate() and increase().
		// waits is left to its observations: its 15 policy and capacity type
		// pairs would be 255 series of buckets, and a quantile over many
		// binds loses little to a pair's first one.
		for _, p := range fallbackPolicies {
			fallbacks.WithLabelValues(string(p))
		}
		for _, r := range expanderResults {
			expanderRequests.WithLabelValues(string(r))
		}
	})
}

// ExpanderConnectionsOverLimit is the counter penny-scheduler's expander
// endpoint adds a refused connection to. It registers the plugin's metrics:
// the endpoint starts whether or not a profile has built SpotRisk yet, and a
// refusal counted before registration would be lost.
func ExpanderConnectionsOverLimit() metrics.CounterMetric {
	registerMetrics()
	return expanderConnectionsOverLimit
}
