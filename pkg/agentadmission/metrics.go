package agentadmission

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// reviews is registered in component-base's legacy registry, so it appears
// on penny-scheduler's /metrics next to kube-scheduler's own.
var reviews = metrics.NewCounterVec(&metrics.CounterOpts{
	Name: "penny_admission_agent_evictions_total",
	Help: "Evictions the agent evictions webhook judged, by result: allowed; other_node (an agent asked to evict a pod not on its node); " +
		"replaced (the pod asked for is gone, and the pod now under its name is on another node; refused with Conflict); unbound_token (its token names no node); no_uid (no UID precondition); invalid (undecodable Eviction); " +
		"error (the pod could not be read; refused); not_agent and not_eviction (not the webhook's to judge; allowed).",
	StabilityLevel: metrics.ALPHA,
}, []string{"result"})

// connectionsOverLimit says when
// --telemetry-eviction-webhook-max-connections turns clients away.
var connectionsOverLimit = metrics.NewCounter(&metrics.CounterOpts{
	Name:           "penny_admission_connections_over_limit_total",
	Help:           "Connections to the agent evictions webhook closed as soon as they were accepted because --telemetry-eviction-webhook-max-connections were open already.",
	StabilityLevel: metrics.ALPHA,
})

// handshakeErrors counts the TLS handshakes the webhook refused: with
// --telemetry-eviction-webhook-client-ca-file, every client without the
// API server's certificate (or with one for a name not allowed).
var handshakeErrors = metrics.NewCounter(&metrics.CounterOpts{
	Name:           "penny_admission_tls_handshake_errors_total",
	Help:           "TLS handshakes the agent evictions webhook failed: clients without a certificate --telemetry-eviction-webhook-client-ca-file signs (for a name --telemetry-eviction-webhook-allowed-names lists, when it is set), or that broke off.",
	StabilityLevel: metrics.ALPHA,
})

// reviewResult is a result label value of
// penny_admission_agent_evictions_total.
type reviewResult string

const (
	reviewAllowed      reviewResult = "allowed"
	reviewOtherNode    reviewResult = "other_node"
	reviewReplaced     reviewResult = "replaced"
	reviewUnboundToken reviewResult = "unbound_token"
	reviewNoUID        reviewResult = "no_uid"
	reviewInvalid      reviewResult = "invalid"
	reviewError        reviewResult = "error"
	reviewNotAgent     reviewResult = "not_agent"
	reviewNotEviction  reviewResult = "not_eviction"
)

// reviewResults is every reviewResult: registration puts each on /metrics
// at 0, so a result missing here is born at its first review.
var reviewResults = []reviewResult{reviewAllowed, reviewOtherNode, reviewReplaced, reviewUnboundToken, reviewNoUID, reviewInvalid, reviewError, reviewNotAgent, reviewNotEviction}

var registerOnce sync.Once

func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(reviews, connectionsOverLimit, handshakeErrors)
		// Every result has its series at 0 from the start: one born at its
		// first increment hides that increment from rate() and increase(),
		// and a single other_node is worth an alert.
		for _, r := range reviewResults {
			reviews.WithLabelValues(string(r))
		}
	})
}
