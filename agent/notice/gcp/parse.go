package gcp

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// ParsePreempted reads instance/preempted: "TRUE" once the VM is being
// preempted, "FALSE" otherwise. GCE promises no time; Spot and preemptible
// VMs get about 30 seconds, so the deadline is detected + notice, an
// estimate. event (eventTag) tells this event from others with the same
// value and is the same for it after an agent restart.
func ParsePreempted(body []byte, event string, detected time.Time, noticePeriod time.Duration) (*notice.Notice, error) {
	switch v := strings.TrimSpace(string(body)); v {
	case "FALSE":
		return nil, nil
	case "TRUE":
		return &notice.Notice{
			ID:   "gcp-preempted" + idSuffix(event),
			Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
			Action: "preempted", Detected: detected, Deadline: detected.Add(noticePeriod), Estimated: true,
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
// GCE takes when host maintenance starts, about 60 seconds ahead (the
// deadline is an estimate). event is as for ParsePreempted.
func ParseMaintenanceEvent(body []byte, event string, detected time.Time, noticePeriod time.Duration) (*notice.Notice, error) {
	switch v := strings.TrimSpace(string(body)); v {
	case MaintenanceNone:
		return nil, nil
	case MaintenanceMigrate, MaintenanceTerminate:
		return &notice.Notice{
			ID:   "gcp-maintenance-" + strings.ToLower(strings.SplitN(v, "_", 2)[0]) + idSuffix(event),
			Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
			Action: v, Detected: detected, Deadline: detected.Add(noticePeriod), Estimated: true,
		}, nil
	default:
		return nil, fmt.Errorf("instance/maintenance-event: want %s, %s or %s, got %s", MaintenanceNone, MaintenanceMigrate, MaintenanceTerminate, notice.Excerpt(body))
	}
}

// eventTag tells one event from another with the same value. GCE derives a
// value's ETag from its content, so every preemption, and every maintenance
// event of one kind, has the same ETag, and a VM's second event weeks later
// would be the first one again, which the agent's state file and the
// scheduler remember as handled. The boot tells them apart when the first
// event ended the boot (a preemption, a TERMINATE); ended, how many events
// with this ETag this agent saw end, when it did not (a live migration). An
// agent that restarts during the first such event of a boot makes the same
// tag, and so recognises the event.
func eventTag(etag, boot string, ended int) string {
	tag := etag
	if boot != "" {
		tag += "-" + boot
	}
	if ended > 0 {
		tag += "-" + strconv.Itoa(ended)
	}
	return tag
}

// idSuffix makes an event tag safe for an id: letters, digits and dashes,
// at most 64 (GCE's ETags are 16 hex digits, a boot id 36 characters).
func idSuffix(event string) string {
	var b strings.Builder
	for _, c := range event {
		if (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c == '-' && b.Len() > 0) {
			b.WriteRune(c)
		}
		if b.Len() >= 64 {
			break
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "-" + b.String()
}
