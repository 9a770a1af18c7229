// Package reclaim holds what the node agent and penny-scheduler must agree on
// about reclaim notices — the taint that marks a node being reclaimed, which
// notices call for checkpoints and evictions and when — and the scheduler's
// side of the flow: the coordinator that fans a notice out to every member of
// an affected gang (see Coordinator).
package reclaim

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/pricing"
)

// TaintKey is the taint penny-agent puts on its node when the cloud announces
// a reclaim; the value is the notice's kind (TaintValue). Penny's SpotRisk
// filter (which lists it among pricing.ReclaimTaintKeys) and the default
// TaintToleration plugin keep new pods off the node.
const TaintKey = pricing.TaintReclaimNotice

// TaintValue is the taint value for a kind of notice: "spot-interruption",
// "rebalance-recommendation", "maintenance" or "termination".
func TaintValue(kind telemetryv1.ReclaimKind) string {
	s := strings.TrimPrefix(kind.String(), "RECLAIM_KIND_")
	return strings.ReplaceAll(strings.ToLower(s), "_", "-")
}

// Taint is the NoSchedule taint for a kind of notice.
func Taint(kind telemetryv1.ReclaimKind) corev1.Taint {
	return corev1.Taint{Key: TaintKey, Value: TaintValue(kind), Effect: corev1.TaintEffectNoSchedule}
}

// Action is what a notice calls for.
type Action struct {
	// Taint: keep new pods off the node.
	Taint bool
	// Checkpoint: ask the pods (and their gangs) to checkpoint.
	Checkpoint bool
	// Evict: move the pods off the node (and their gangs off theirs).
	Evict bool
	// At is when to start checkpointing and evicting: now for a reclaim,
	// shortly before the window for scheduled maintenance announced days
	// ahead. Zero means at once.
	At time.Time
}

// Policy tunes how notices become actions.
type Policy struct {
	// MaintenanceLead is how long before scheduled maintenance the pods are
	// checkpointed and moved (maintenance is often announced days ahead;
	// moving at once would waste the time in between). Default 10 minutes.
	MaintenanceLead time.Duration
	// RebalanceCheckpoint asks pods to checkpoint on an AWS rebalance
	// recommendation (an early sign of a reclaim that may never come). They
	// keep running: a recommendation never evicts. Default true.
	RebalanceCheckpoint *bool
	// RebalanceTaint keeps new pods off a node that got a rebalance
	// recommendation. Default true, as aws-node-termination-handler does.
	RebalanceTaint *bool
}

// DefaultMaintenanceLead is Policy.MaintenanceLead's default.
const DefaultMaintenanceLead = 10 * time.Minute

// RebalanceCheckpointTimeout bounds how long a checkpoint asked for on a
// rebalance recommendation (which has no deadline) may take.
const RebalanceCheckpointTimeout = 2 * time.Minute

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// Decide returns what a notice calls for.
func (p Policy) Decide(kind telemetryv1.ReclaimKind, provider telemetryv1.CloudProvider, action string, deadline time.Time) Action {
	switch kind {
	case telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION:
		return Action{Taint: true, Checkpoint: true, Evict: true}
	case telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION:
		return Action{Taint: boolOr(p.RebalanceTaint, true), Checkpoint: boolOr(p.RebalanceCheckpoint, true)}
	case telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE:
		if !Disruptive(provider, action) {
			return Action{}
		}
		lead := p.MaintenanceLead
		if lead <= 0 {
			lead = DefaultMaintenanceLead
		}
		a := Action{Taint: true, Checkpoint: true, Evict: true}
		if !deadline.IsZero() {
			a.At = deadline.Add(-lead)
		}
		return a
	}
	return Action{}
}

// Disruptive reports whether a maintenance event loses what runs on the
// node. Live migration (GCP MIGRATE_ON_HOST_MAINTENANCE) and Azure's Freeze
// (a pause of a few seconds, memory kept) do not: the pods keep running and
// nothing needs to move.
func Disruptive(provider telemetryv1.CloudProvider, action string) bool {
	switch provider {
	case telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP:
		return action != "MIGRATE_ON_HOST_MAINTENANCE"
	case telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE:
		return action != "Freeze"
	}
	return true
}

// MaxNotice is the longest notice a kind acted on at once can give: AWS
// gives a Spot interruption two minutes, GCP and Azure (Preempt) thirty
// seconds; Azure gives a Terminate the 5 to 15 minutes the scale set
// configures. A deadline further off is the metadata service's error, and
// taken as said it held the pods' checkpoints and eviction until then.
// Maintenance has no such bound (it is announced days or weeks ahead), nor
// needs one: it is acted on MaintenanceLead before its deadline.
func MaxNotice(kind telemetryv1.ReclaimKind) (time.Duration, bool) {
	switch kind {
	case telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION:
		return 2 * time.Minute, true
	case telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION:
		return 15 * time.Minute, true
	}
	return 0, false
}

// Deadline is when checkpoints asked for because of a notice must be done: the
// notice's deadline, but no later than MaxNotice after it was detected, or,
// for a rebalance recommendation (which promises none),
// RebalanceCheckpointTimeout after it was detected.
func Deadline(kind telemetryv1.ReclaimKind, detected, deadline time.Time) time.Time {
	if deadline.IsZero() || kind == telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION {
		return detected.Add(RebalanceCheckpointTimeout)
	}
	if most, ok := MaxNotice(kind); ok && deadline.After(detected.Add(most)) {
		return detected.Add(most)
	}
	return deadline
}

// Undecided reports whether an eviction's error says the API server could
// not decide it (a 5xx or timeout, such as an admission webhook failing
// closed, or a connection lost on the way) rather than refused it: worth
// asking again while the deadline allows.
func Undecided(err error) bool {
	return apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsServerTimeout(err) ||
		apierrors.IsTimeout(err) || utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err)
}

// EvictionGrace is the grace period an eviction before deadline gives pod:
// its own, cut to the seconds left, but never 0. The API server takes a
// 0-second eviction as a force deletion: the pod leaves the API at once
// while its containers still run (on a node that is not being reclaimed,
// or cannot be reached, for as long as that lasts), and its owner's
// replacement, a StatefulSet's with the same identity too, could start
// beside it.
func EvictionGrace(pod *corev1.Pod, deadline time.Time) int64 {
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if left := int64(time.Until(deadline) / time.Second); left < grace {
		grace = max(left, 1)
	}
	return grace
}

// EvictInPasses asks evict for every pod once, then, a second later, again
// for those it says to ask again (a PodDisruptionBudget refused them and
// the deadline is not yet a second away), until none is left: one refused
// pod holds back no other, which go at once with their grace period rather
// than at the deadline with none. The agent and the coordinator evict so.
// It returns false when ctx ended first.
func EvictInPasses(ctx context.Context, pods []*corev1.Pod, evict func(*corev1.Pod) (again bool)) bool {
	for todo := pods; len(todo) > 0; {
		var again []*corev1.Pod
		for _, p := range todo {
			retry := evict(p)
			if ctx.Err() != nil {
				return false
			}
			if retry {
				again = append(again, p)
			}
		}
		if len(again) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
		todo = again
	}
	return true
}
