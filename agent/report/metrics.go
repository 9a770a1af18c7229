package report

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Metrics are the agent's Prometheus metrics about collecting and reporting.
type Metrics struct {
	reportsBuilt    prometheus.Counter
	collectDuration prometheus.Histogram
	collectorState  *prometheus.GaugeVec
	gpus            prometheus.Gauge
	gpusUnhealthy   prometheus.Gauge
	reclaimNotices  prometheus.Gauge

	sent       *prometheus.CounterVec
	rejected   *prometheus.CounterVec
	connected  *prometheus.GaugeVec
	reconnects *prometheus.CounterVec
	// streamsEnded counts the streams the agent itself ended, by reason.
	streamsEnded *prometheus.CounterVec
	commands     *prometheus.CounterVec

	statusesSent    *prometheus.CounterVec
	statusesDropped prometheus.Counter
}

// commandKind is a kind label value of penny_agent_commands_received_total.
type commandKind string

const commandCheckpoint commandKind = "checkpoint"

// streamEndReason is a reason label value of penny_agent_streams_ended_total.
type streamEndReason string

// streamNotReading: the replica did not read a message within the send
// timeout (the scheduler's penny_telemetry_streams_ended_total uses the same
// word for an agent that does not read).
const streamNotReading streamEndReason = "not_reading"

// streamEndReasons is every streamEndReason: startEndpoint puts each on
// /metrics at 0 for every endpoint.
var streamEndReasons = []streamEndReason{streamNotReading}

// commandKinds is every commandKind: NewMetrics puts each on /metrics at 0,
// so a kind missing here is born at its first command.
var commandKinds = []commandKind{commandCheckpoint}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reportsBuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "penny_agent_reports_published_total", Help: "Node reports published to the scheduler streams."}),
		collectDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "penny_agent_collect_duration_seconds", Help: "Time to collect one node report from all sources.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		collectorState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "penny_agent_collector_state", Help: "1 for each collector's current state (ok, disabled, unavailable, error)."},
			[]string{"collector", "state"}),
		gpus: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "penny_agent_gpus", Help: "GPUs NVML reports on this node."}),
		gpusUnhealthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "penny_agent_gpus_unhealthy", Help: "GPUs the agent judges unhealthy (XID, ECC, hardware slowdown)."}),
		reclaimNotices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "penny_agent_reclaim_notices", Help: "Reclaim notices pending on this node."}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_reports_sent_total", Help: "Reports sent, by scheduler endpoint."}, []string{"endpoint"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_reports_rejected_total", Help: "Reports a scheduler refused, by endpoint."}, []string{"endpoint"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "penny_agent_stream_connected", Help: "1 while a stream the scheduler endpoint has accepted is open."}, []string{"endpoint"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_stream_failures_total", Help: "Streams to a scheduler endpoint that failed or ended, by endpoint."}, []string{"endpoint"}),
		streamsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_streams_ended_total", Help: "Streams to a scheduler endpoint the agent ended itself, by endpoint and reason: not_reading (a message waited the send timeout, 5s, for the replica to read it: it hung, or stopped reading; the agent reconnects). Each is also counted in penny_agent_stream_failures_total."},
			[]string{"endpoint", "reason"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_commands_received_total", Help: "Commands received from the scheduler, by kind."}, []string{"kind"}),
		statusesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penny_agent_checkpoint_statuses_sent_total", Help: "Checkpoint statuses sent, by scheduler endpoint; every stream the scheduler accepts is sent the latest status of each pod of every command whose deadline is ahead, so repeats count."}, []string{"endpoint"}),
		statusesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "penny_agent_checkpoint_statuses_dropped_total", Help: "Checkpoint statuses dropped before their command's deadline because more than the bound (1024) were kept to send again, the one updated longest ago first."}),
	}
	// A kind's series exists at 0 from the start: one born at its first
	// increment hides that increment from rate() and increase(). An
	// endpoint's exist from when the endpoint is found (startEndpoint) until
	// it goes (forgetEndpoint).
	for _, k := range commandKinds {
		m.commands.WithLabelValues(string(k))
	}
	if reg != nil {
		reg.MustRegister(m.reportsBuilt, m.collectDuration, m.collectorState, m.gpus, m.gpusUnhealthy, m.reclaimNotices,
			m.sent, m.rejected, m.connected, m.reconnects, m.streamsEnded, m.commands, m.statusesSent, m.statusesDropped)
	}
	return m
}

var collectorStates = map[telemetryv1.CollectorStatus_State]string{
	telemetryv1.CollectorStatus_STATE_OK:          "ok",
	telemetryv1.CollectorStatus_STATE_DISABLED:    "disabled",
	telemetryv1.CollectorStatus_STATE_UNAVAILABLE: "unavailable",
	telemetryv1.CollectorStatus_STATE_ERROR:       "error",
}

func (m *Metrics) observeCollection(r *telemetryv1.NodeReport, took time.Duration) {
	m.collectDuration.Observe(took.Seconds())
	for name, st := range map[string]*telemetryv1.CollectorStatus{
		"nvml": r.Nvml, "pod_resources": r.PodResources, "profiling": r.Profiling, "reclaim": r.Reclaim,
	} {
		for s, label := range collectorStates {
			v := 0.0
			if st.GetState() == s {
				v = 1
			}
			m.collectorState.WithLabelValues(name, label).Set(v)
		}
	}
	unhealthy := 0
	for _, g := range r.Gpus {
		if !g.GetHealth().GetHealthy() {
			unhealthy++
		}
	}
	m.gpus.Set(float64(len(r.Gpus)))
	m.gpusUnhealthy.Set(float64(unhealthy))
	m.reclaimNotices.Set(float64(len(r.ReclaimNotices)))
}

// startEndpoint puts a newly found endpoint's counters on /metrics at 0, so
// that its first rejection or failure shows in increase().
func (m *Metrics) startEndpoint(endpoint string) {
	m.sent.WithLabelValues(endpoint)
	m.rejected.WithLabelValues(endpoint)
	m.reconnects.WithLabelValues(endpoint)
	for _, r := range streamEndReasons {
		m.streamsEnded.WithLabelValues(endpoint, string(r))
	}
	m.statusesSent.WithLabelValues(endpoint)
}

func (m *Metrics) forgetEndpoint(endpoint string) {
	m.sent.DeleteLabelValues(endpoint)
	m.rejected.DeleteLabelValues(endpoint)
	m.connected.DeleteLabelValues(endpoint)
	m.reconnects.DeleteLabelValues(endpoint)
	m.streamsEnded.DeletePartialMatch(prometheus.Labels{"endpoint": endpoint})
	m.statusesSent.DeleteLabelValues(endpoint)
}
