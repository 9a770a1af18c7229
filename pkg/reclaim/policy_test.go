package reclaim

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

func TestTaintValues(t *testing.T) {
	want := map[telemetryv1.ReclaimKind]string{
		telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION:        "spot-interruption",
		telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION: "rebalance-recommendation",
		telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE:              "maintenance",
		telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION:              "termination",
	}
	for k, v := range want {
		if got := TaintValue(k); got != v {
			t.Errorf("TaintValue(%v) = %q, want %q", k, got, v)
		}
		if tt := Taint(k); tt.Key != "penny.dev/reclaim" || tt.Value != v || tt.Effect != "NoSchedule" {
			t.Errorf("Taint(%v) = %v", k, tt)
		}
	}
}

func TestDecide(t *testing.T) {
	deadline := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	off := false
	aws, gcp, azure := telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE
	cases := []struct {
		name     string
		policy   Policy
		kind     telemetryv1.ReclaimKind
		provider telemetryv1.CloudProvider
		action   string
		want     Action
	}{
		{"spot interruption", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, aws, "terminate", Action{Taint: true, Checkpoint: true, Evict: true}},
		{"termination", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION, azure, "Terminate", Action{Taint: true, Checkpoint: true, Evict: true}},
		{"rebalance: checkpoint and taint, never evict", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, aws, "rebalance", Action{Taint: true, Checkpoint: true}},
		{"rebalance with both off", Policy{RebalanceCheckpoint: &off, RebalanceTaint: &off}, telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, aws, "rebalance", Action{}},
		{"reboot: act 10 minutes before", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, aws, "system-reboot", Action{Taint: true, Checkpoint: true, Evict: true, At: deadline.Add(-10 * time.Minute)}},
		{"reboot with a 1h lead", Policy{MaintenanceLead: time.Hour}, telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, aws, "system-reboot", Action{Taint: true, Checkpoint: true, Evict: true, At: deadline.Add(-time.Hour)}},
		{"GCP live migration keeps the pods", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, gcp, "MIGRATE_ON_HOST_MAINTENANCE", Action{}},
		{"GCP terminate on maintenance", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, gcp, "TERMINATE_ON_HOST_MAINTENANCE", Action{Taint: true, Checkpoint: true, Evict: true, At: deadline.Add(-10 * time.Minute)}},
		{"Azure Freeze keeps the pods", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, azure, "Freeze", Action{}},
		{"unknown kind does nothing", Policy{}, telemetryv1.ReclaimKind_RECLAIM_KIND_UNSPECIFIED, aws, "", Action{}},
	}
	for _, c := range cases {
		if got := c.policy.Decide(c.kind, c.provider, c.action, deadline); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	detected := deadline.Add(-time.Minute)
	if got := Deadline(telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, detected, time.Time{}); !got.Equal(detected.Add(RebalanceCheckpointTimeout)) {
		t.Errorf("rebalance deadline %v", got)
	}
	if got := Deadline(telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, detected, deadline); !got.Equal(deadline) {
		t.Errorf("spot deadline %v", got)
	}
}

func TestEvictionGraceIsCutToTheDeadlineButNeverZero(t *testing.T) {
	own := func(s int64) *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &s}}
	}
	now := time.Now()
	for _, tt := range []struct {
		name     string
		pod      *corev1.Pod
		deadline time.Time
		want     int64
	}{
		{"its own, when there is time", own(10), now.Add(time.Minute), 10},
		{"the default without its own", &corev1.Pod{}, now.Add(time.Minute), corev1.DefaultTerminationGracePeriodSeconds},
		{"cut to the seconds left", own(600), now.Add(20*time.Second + 500*time.Millisecond), 20},
		{"one second, not a force deletion, under a second before the deadline", own(600), now.Add(300 * time.Millisecond), 1},
		{"one second past the deadline too", own(600), now.Add(-time.Minute), 1},
		{"its own 0 stays 0: the pod asked for it", own(0), now.Add(time.Minute), 0},
	} {
		if got := EvictionGrace(tt.pod, tt.deadline); got != tt.want {
			t.Errorf("%s: grace %ds, want %ds", tt.name, got, tt.want)
		}
	}
}

// A metadata service that says a Spot interruption is years off does not
// hold the pods' checkpoints and eviction that long: the deadline is no
// later than the longest notice of its kind. Maintenance, announced weeks
// ahead and acted on its lead before, keeps its own.
func TestDeadlineIsCappedAtTheLongestNoticeOfItsKind(t *testing.T) {
	detected := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	years := detected.AddDate(10, 0, 0)
	for _, c := range []struct {
		kind     telemetryv1.ReclaimKind
		deadline time.Time
		want     time.Time
	}{
		{telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, years, detected.Add(2 * time.Minute)},
		{telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, detected.Add(30 * time.Second), detected.Add(30 * time.Second)},
		{telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION, years, detected.Add(15 * time.Minute)},
		{telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION, detected.Add(5 * time.Minute), detected.Add(5 * time.Minute)},
		{telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, detected.AddDate(0, 0, 14), detected.AddDate(0, 0, 14)},
		{telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, time.Time{}, detected.Add(RebalanceCheckpointTimeout)},
	} {
		if got := Deadline(c.kind, detected, c.deadline); !got.Equal(c.want) {
			t.Errorf("Deadline(%v, deadline %v after detection) = %v after, want %v", c.kind, c.deadline.Sub(detected), got.Sub(detected), c.want.Sub(detected))
		}
	}
}
