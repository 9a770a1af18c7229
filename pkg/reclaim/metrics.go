package reclaim

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// The coordinator's metrics, on penny-scheduler's /metrics.
var (
	fanoutSeconds = metrics.NewHistogram(&metrics.HistogramOpts{
		Name:           "penny_reclaim_gang_fanout_seconds",
		Help:           "Time from an agent detecting a reclaim notice to the scheduler commanding the agent of another gang member's node to checkpoint (includes clock skew between the two).",
		Buckets:        []float64{.01, .025, .05, .1, .25, .5, 1, 2, 5, 10},
		StabilityLevel: metrics.ALPHA,
	})
	commandsTotal = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_reclaim_gang_commands_total",
		Help:           "Checkpoint commands to gang members' nodes, by result: sent, undelivered (the node's agent was not connected before the members were due to be evicted, at the deadline less the safety margin, or before the deadline when they are not evicted).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	evictionsTotal = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_reclaim_gang_evictions_total",
		Help:           "Evictions of gang members on nodes that are not reclaimed, so the gang is placed again together, by result: evicted, gone (gone, finished or already being deleted, e.g. by another replica), failed.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	returnsTotal = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_spot_returns_total",
		Help:           "Moves of workloads that fell back to on-demand back to Spot (SpotRisk returnToSpot), by result: moved (checkpointed and evicted; the replacement is placed on Spot), no_checkpoint (a member's checkpoint was not written in time: nothing evicted), not_evicted (after the checkpoints, an eviction was refused or failed: nothing evicted, or the members not yet evicted left running), refused (before any checkpoint, a dry run found an eviction the API server would refuse, e.g. a PodDisruptionBudget: nothing asked for or evicted).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	registerOnce sync.Once
)

// commandResult is a result label value of penny_reclaim_gang_commands_total.
type commandResult string

const (
	commandSent        commandResult = "sent"
	commandUndelivered commandResult = "undelivered"
)

// commandResults is every commandResult: registration puts each on /metrics
// at 0, so a result missing here is born at its first command.
var commandResults = []commandResult{commandSent, commandUndelivered}

// memberEviction is a result label value of
// penny_reclaim_gang_evictions_total.
type memberEviction string

const (
	memberEvicted        memberEviction = "evicted"
	memberGone           memberEviction = "gone"
	memberEvictionFailed memberEviction = "failed"
)

// memberEvictions is every memberEviction: registration puts each on
// /metrics at 0, so a result missing here is born at its first eviction.
var memberEvictions = []memberEviction{memberEvicted, memberGone, memberEvictionFailed}

func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(fanoutSeconds, commandsTotal, evictionsTotal, returnsTotal)
		// Every result has its series at 0 from the start: one born at its
		// first increment hides that increment from rate() and increase(),
		// and a single failed eviction is worth an alert.
		for _, r := range commandResults {
			commandsTotal.WithLabelValues(string(r))
		}
		for _, r := range memberEvictions {
			evictionsTotal.WithLabelValues(string(r))
		}
		for _, r := range returnResults {
			returnsTotal.WithLabelValues(string(r))
		}
	})
}
