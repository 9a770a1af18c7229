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

// Values of instance/upcoming-maintenance: type and maintenance_status.
const (
	UpcomingScheduled   = "SCHEDULED"
	UpcomingUnscheduled = "UNSCHEDULED"
	UpcomingPending     = "PENDING"
	UpcomingOngoing     = "ONGOING"
	// UpcomingComplete is the state Google's documentation gives finished
	// maintenance, whose notification GCE then removes.
	UpcomingComplete = "COMPLETE"
)

// An upcoming maintenance's id is upcomingPrefix, its type in lower case, a
// dash, its window's start as upcomingStamp and idSuffix(boot); a live
// migration's has upcomingMigration after upcomingPrefix.
const (
	upcomingPrefix    = "gcp-upcoming-"
	upcomingMigration = "migrate-"
	upcomingStamp     = "20060102T150405Z"
)

// upcomingOfBoot reports whether id is one ParseUpcomingMaintenance made in
// this boot. A live migration's (the watcher's) is not: its work stopped
// nothing, and a maintenance that stops the VM must not continue it.
func upcomingOfBoot(id, boot string) bool {
	rest, ok := strings.CutPrefix(id, upcomingPrefix)
	if !ok {
		return false
	}
	typ, rest, ok := strings.Cut(rest, "-")
	if !ok || (typ != strings.ToLower(UpcomingScheduled) && typ != strings.ToLower(UpcomingUnscheduled)) || len(rest) < len(upcomingStamp) {
		return false
	}
	_, err := time.Parse(upcomingStamp, rest[:len(upcomingStamp)])
	return err == nil && rest[len(upcomingStamp):] == idSuffix(boot)
}

// noNotifications opens the error GCE answers (with 503) on
// instance/upcoming-maintenance while no maintenance was ever announced to
// the VM: { "error": "no notifications have been received yet, try again
// later" }.
const noNotifications = "no notifications have been received yet"

// ParseUpcomingMaintenance reads instance/upcoming-maintenance?alt=json:
// {"type":"SCHEDULED","maintenance_status":"PENDING",
// "window_start_time":"2024-12-01T19:00:01Z",...}, maintenance GCE announced
// ahead (days or weeks for scheduled maintenance, hours for unscheduled).
// Pending or ongoing maintenance is a notice whose deadline is
// window_start_time. "{ }", "NONE" and the no-notifications error say that
// nothing is scheduled. can_reschedule (a string, "true", in this document
// but a boolean in the Compute API), latest_window_start_time,
// window_end_time and maintenance_reasons are not read: the agent needs none
// of them, and their form is the least pinned down.
//
// GCE gives the maintenance no id: the id made here names the VM's boot and
// the window's start, and the watcher keeps the first one for as long as the
// maintenance is announced, so a moved window stays one notice.
func ParseUpcomingMaintenance(body []byte, boot string, detected time.Time) (*notice.Notice, error) {
	const what = "instance/upcoming-maintenance"
	if v := strings.TrimSpace(string(body)); v == "NONE" || strings.Join(strings.Fields(v), "") == "{}" {
		return nil, nil
	}
	o, err := notice.ParseObject(what, body)
	if err != nil {
		return nil, err
	}
	if o.Has("error") {
		msg, _, err := o.String("error", true)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(msg, noNotifications) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: the metadata server answered an error: %s", what, notice.Excerpt([]byte(msg)))
	}
	var typ, status, start string
	for _, f := range []struct {
		key string
		v   *string
	}{{"type", &typ}, {"maintenance_status", &status}, {"window_start_time", &start}} {
		if *f.v, _, err = o.String(f.key, true); err != nil {
			return nil, err
		}
	}
	switch status {
	case UpcomingPending, UpcomingOngoing:
	case UpcomingComplete:
		return nil, nil
	default:
		return nil, fmt.Errorf("%s: maintenance_status %s is not %s, %s or %s", what, notice.Excerpt([]byte(status)), UpcomingPending, UpcomingOngoing, UpcomingComplete)
	}
	if typ != UpcomingScheduled && typ != UpcomingUnscheduled {
		return nil, fmt.Errorf("%s: type %s is not %s or %s", what, notice.Excerpt([]byte(typ)), UpcomingScheduled, UpcomingUnscheduled)
	}
	at, err := time.Parse(time.RFC3339, start)
	if err != nil || at.Year() < 2000 || at.Year() > 9999 {
		return nil, fmt.Errorf("%s: window_start_time %s is not an RFC 3339 time (e.g. 2024-12-01T19:00:01Z)", what, notice.Excerpt([]byte(start)))
	}
	at = at.UTC()
	return &notice.Notice{
		ID:   upcomingPrefix + strings.ToLower(typ) + "-" + at.Format(upcomingStamp) + idSuffix(boot),
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
		Action: typ, Detected: detected, Deadline: at,
	}, nil
}
