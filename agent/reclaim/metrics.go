package reclaim

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the node-side reclaim flow.
type Metrics struct {
	notices           prometheus.Counter
	resumed           prometheus.Counter
	steps             *prometheus.HistogramVec
	checkpoints       *prometheus.CounterVec
	checkpointSeconds prometheus.Histogram
	evictions         *prometheus.CounterVec
	slack             prometheus.Histogram
}

// reclaimStep is a step label value of penny_reclaim_step_seconds.
type reclaimStep string

const (
	stepTaint             reclaimStep = "taint"
	stepCheckpointRequest reclaimStep = "checkpoint_request"
	stepCheckpointDone    reclaimStep = "checkpoint_done"
	stepEvicted           reclaimStep = "evicted"
	stepAcknowledged      reclaimStep = "acknowledged"
)

// checkpointOrigin is an origin label value of
// penny_reclaim_checkpoints_total.
type checkpointOrigin string

const (
	// originNotice: this node's reclaim notice.
	originNotice checkpointOrigin = "notice"
	// originCommand: a gang member's node, through the scheduler.
	originCommand checkpointOrigin = "command"
)

// checkpointResult is a result label value of
// penny_reclaim_checkpoints_total.
type checkpointResult string

const (
	checkpointDone   checkpointResult = "done"
	checkpointFailed checkpointResult = "failed"
	checkpointNoHook checkpointResult = "no_hook"
)

// The label values NewMetrics puts on /metrics at 0, one list per label: a
// value missing here is born at its first observation. The results of
// penny_reclaim_evictions_total are evictResult's (kube.go).
var (
	reclaimSteps      = []reclaimStep{stepTaint, stepCheckpointRequest, stepCheckpointDone, stepEvicted, stepAcknowledged}
	checkpointOrigins = []checkpointOrigin{originNotice, originCommand}
	checkpointResults = []checkpointResult{checkpointDone, checkpointFailed, checkpointNoHook}
	evictResults      = []evictResult{evicted, gone, blocked, unavailable, failed}
)

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	fast := []float64{.01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120}
	m := &Metrics{
		notices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "penny_reclaim_flows_started_total",
			Help: "Reclaim notices the agent started acting on.",
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "penny_reclaim_jobs_resumed_total",
			Help: "Reclaim work an earlier agent process left unfinished and this one resumed.",
		}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "penny_reclaim_step_seconds",
			Help:    "Seconds from detecting a notice (or receiving a gang checkpoint command) to each step: taint, checkpoint_request, checkpoint_done, evicted, acknowledged.",
			Buckets: fast,
		}, []string{"step"}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_reclaim_checkpoints_total",
			Help: "Checkpoint requests by origin (notice: this node's; command: a gang member's node) and result (done, failed, no_hook).",
		}, []string{"origin", "result"}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "penny_reclaim_checkpoint_duration_seconds",
			Help:    "How long pods took to answer a checkpoint request.",
			Buckets: fast,
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_reclaim_evictions_total",
			Help: "Evictions of pods off nodes being reclaimed, by result (evicted, gone, blocked by a PodDisruptionBudget until the deadline, unavailable: the API server or the agent evictions webhook could not decide until the deadline, failed).",
		}, []string{"result"}),
		slack: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "penny_reclaim_deadline_slack_seconds",
			Help:    "Time left before the deadline when the node's pods were evicted.",
			Buckets: []float64{0, 1, 2, 5, 10, 20, 30, 60, 90, 120},
		}),
	}
	// Every step, origin and result has its series at 0 from the start: one
	// born at its first observation hides it from rate() and increase(), and
	// an agent mostly sees one reclaim, its node's, so the first would be
	// the only one.
	for _, s := range reclaimSteps {
		m.steps.WithLabelValues(string(s))
	}
	for _, origin := range checkpointOrigins {
		for _, r := range checkpointResults {
			m.checkpoints.WithLabelValues(string(origin), string(r))
		}
	}
	for _, r := range evictResults {
		m.evictions.WithLabelValues(string(r))
	}
	if reg != nil {
		reg.MustRegister(m.notices, m.resumed, m.steps, m.checkpoints, m.checkpointSeconds, m.evictions, m.slack)
	}
	return m
}

func (m *Metrics) step(s reclaimStep, since time.Time) {
	m.steps.WithLabelValues(string(s)).Observe(time.Since(since).Seconds())
}
