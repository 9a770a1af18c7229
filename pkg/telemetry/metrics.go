package telemetry

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Metrics are registered in component-base's legacy registry, so they appear
// on penny-scheduler's /metrics next to kube-scheduler's own.
var (
	reportsTotal = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_telemetry_reports_total",
		Help:           "Node reports received from agents, by result: accepted, stale (older than what the store holds), invalid (failed validation), wrong_node (about a node other than the agent's own; the stream is closed).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	authFailures = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_telemetry_auth_failures_total",
		Help:           "Agent streams refused or ended by authentication, by reason: missing_token, invalid_token, not_agent, not_bound, expired.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})
	openStreams = metrics.NewGauge(&metrics.GaugeOpts{
		Name:           "penny_telemetry_streams",
		Help:           "Authenticated agent streams open now.",
		StabilityLevel: metrics.ALPHA,
	})
	streamsOverLimit = metrics.NewCounter(&metrics.CounterOpts{
		Name:           "penny_telemetry_streams_over_limit_total",
		Help:           "Agent streams refused because their node already held --telemetry-max-streams-per-node streams open to this replica.",
		StabilityLevel: metrics.ALPHA,
	})
	streamsEnded = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_telemetry_streams_ended_total",
		Help:           "Agent streams the scheduler ended, by reason: not_reading (the agent did not read a message within the send timeout: hung, or stopped reading; a live agent reconnects); too_many_elements (a message held more list elements than the largest valid report, refused before it was decoded). Streams ended for an expired token are counted in penny_telemetry_auth_failures_total{reason=\"expired\"}.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})
	authenticationsOverLimit = metrics.NewCounter(&metrics.CounterOpts{
		Name:           "penny_telemetry_authentications_over_limit_total",
		Help:           "Agent streams refused with UNAVAILABLE, before their token was checked, because --telemetry-max-authentications-in-flight tokens were being checked already; agents retry.",
		StabilityLevel: metrics.ALPHA,
	})
	connectionsOverLimit = metrics.NewCounter(&metrics.CounterOpts{
		Name:           "penny_telemetry_connections_over_limit_total",
		Help:           "Connections to the telemetry endpoint closed as soon as they were accepted because --telemetry-max-connections were open already.",
		StabilityLevel: metrics.ALPHA,
	})
	reportDelay = metrics.NewHistogram(&metrics.HistogramOpts{
		Name:           "penny_telemetry_report_delay_seconds",
		Help:           "Time from an agent collecting a report to the scheduler storing it (includes clock skew between the two).",
		Buckets:        metrics.ExponentialBuckets(0.001, 2, 16),
		StabilityLevel: metrics.ALPHA,
	})
	nodesGauge = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Name:           "penny_telemetry_nodes",
		Help:           "Nodes in the telemetry store, by freshness (fresh: reported within --telemetry-max-age).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"freshness"})
	checkpointStatuses = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_telemetry_checkpoint_statuses_total",
		Help:           "Checkpoint statuses received from agents, by result: accepted, invalid (failed validation), wrong_node (about a command sent to another node), unknown_command (a command this replica did not send or no longer waits on; agents send every status to every replica), own_notice (a node's agent checkpointing its own pods for its node's notice, no command).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	commandsSent = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_telemetry_commands_sent_total",
		Help:           "Commands sent to agents, by kind.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"kind"})
)

// reportResult is a result label value of penny_telemetry_reports_total.
type reportResult string

const (
	reportAccepted  reportResult = "accepted"
	reportStale     reportResult = "stale"
	reportInvalid   reportResult = "invalid"
	reportWrongNode reportResult = "wrong_node"
)

// authFailureReason is a reason label value of
// penny_telemetry_auth_failures_total.
type authFailureReason string

const (
	authMissingToken authFailureReason = "missing_token"
	authInvalidToken authFailureReason = "invalid_token"
	authNotAgent     authFailureReason = "not_agent"
	authNotBound     authFailureReason = "not_bound"
	authExpired      authFailureReason = "expired"
)

// streamEndReason is a reason label value of
// penny_telemetry_streams_ended_total.
type streamEndReason string

const (
	streamNotReading      streamEndReason = "not_reading"
	streamTooManyElements streamEndReason = "too_many_elements"
)

// commandKind is a kind label value of penny_telemetry_commands_sent_total.
type commandKind string

const commandCheckpoint commandKind = "checkpoint"

// The label values registration puts on /metrics at 0, one list per metric:
// a value missing here is born at its first increment. The results of
// penny_telemetry_checkpoint_statuses_total are StatusResult's.
var (
	reportResults           = []reportResult{reportAccepted, reportStale, reportInvalid, reportWrongNode}
	authFailureReasons      = []authFailureReason{authMissingToken, authInvalidToken, authNotAgent, authNotBound, authExpired}
	checkpointStatusResults = []StatusResult{StatusAccepted, statusInvalid, StatusWrongNode, StatusUnknownCommand, statusOwnNotice}
	commandKinds            = []commandKind{commandCheckpoint}
	streamEndReasons        = []streamEndReason{streamNotReading, streamTooManyElements}
)

var registerOnce sync.Once

// RegisterMetrics registers the package's metrics; calling it again is a
// no-op.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(reportsTotal, authFailures, openStreams, streamsOverLimit, authenticationsOverLimit, connectionsOverLimit, reportDelay, nodesGauge, checkpointStatuses, commandsSent, streamsEnded)
		// Every result, reason and kind has its series at 0 from the start:
		// one born at its first increment hides that increment from rate()
		// and increase(), and a single wrong_node is worth an alert.
		for _, r := range reportResults {
			reportsTotal.WithLabelValues(string(r))
		}
		for _, r := range authFailureReasons {
			authFailures.WithLabelValues(string(r))
		}
		for _, r := range checkpointStatusResults {
			checkpointStatuses.WithLabelValues(string(r))
		}
		for _, k := range commandKinds {
			commandsSent.WithLabelValues(string(k))
		}
		for _, r := range streamEndReasons {
			streamsEnded.WithLabelValues(string(r))
		}
	})
}
