package gcp

import (
	"fmt"
	"strings"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// ParsePreempted reads instance/preempted: "TRUE" once the VM is being
// preempted, "FALSE" otherwise. GCE promises no time; Spot and preemptible
// VMs get about 30 seconds, so the deadline is detected + notice. etag (the
// answer's ETag) makes the id stable across agent restarts.
func ParsePreempted(body []byte, etag string, detected time.Time, noticePeriod time.Duration) (*notice.Notice, error) {
	switch v := strings.TrimSpace(string(body)); v {
	case "FALSE":
		return nil, nil
	case "TRUE":
		return &notice.Notice{
			ID:   "gcp-preempted" + idSuffix(etag),
			Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
			Action: "preempted", Detected: detected, Deadline: detected.Add(noticePeriod),
		}, nil
	default:
		return nil, fmt.Errorf("instance/preempted: want TRUE or FALSE, got %s", notice.Excerpt(body))
	}
}

// Maintenance event values of instance/maintenance-event.
const (
	MaintenanceNone      = "NONE"
	MaintenanceMigrate   = "MIGRATE_ON_HOST_MAINTENANCE"
	MaintenanceTerminate = "TERMINATE_ON_HOST_MAINTENANCE"
)

// ParseMaintenanceEvent reads instance/maintenance-event: NONE, or the action
// GCE takes when host maintenance starts, about 60 seconds ahead.
func ParseMaintenanceEvent(body []byte, etag string, detected time.Time, noticePeriod time.Duration) (*notice.Notice, error) {
	switch v := strings.TrimSpace(string(body)); v {
	case MaintenanceNone:
		return nil, nil
	case MaintenanceMigrate, MaintenanceTerminate:
		return &notice.Notice{
			ID:   "gcp-maintenance-" + strings.ToLower(strings.SplitN(v, "_", 2)[0]) + idSuffix(etag),
			Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
			Action: v, Detected: detected, Deadline: detected.Add(noticePeriod),
		}, nil
	default:
		return nil, fmt.Errorf("instance/maintenance-event: want %s, %s or %s, got %s", MaintenanceNone, MaintenanceMigrate, MaintenanceTerminate, notice.Excerpt(body))
	}
}

// idSuffix makes an ETag safe for an id: GCE's are 16 hex digits.
func idSuffix(etag string) string {
	var b strings.Builder
	for _, c := range etag {
		if (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') {
			b.WriteRune(c)
		}
		if b.Len() >= 32 {
			break
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "-" + b.String()
}
