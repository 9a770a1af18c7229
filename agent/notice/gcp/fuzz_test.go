package gcp

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var detected = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

// FuzzPreempted: a notice comes from "TRUE" (with surrounding space) and
// nothing else.
func FuzzPreempted(f *testing.F) {
	for _, s := range []string{"TRUE", "FALSE", "TRUE\n", "true", "", "\x00", "TRUE FALSE"} {
		f.Add([]byte(s), "0123456789abcdef")
	}
	f.Fuzz(func(t *testing.T, body []byte, etag string) {
		n, err := ParsePreempted(body, etag, detected, DefaultPreemptionNotice)
		if err != nil || n == nil {
			return
		}
		if strings.TrimSpace(string(body)) != "TRUE" {
			t.Fatalf("notice %v from %q", n, body)
		}
		if err := n.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzMaintenanceEvent: a notice comes only from the two maintenance actions.
func FuzzMaintenanceEvent(f *testing.F) {
	for _, s := range []string{MaintenanceNone, MaintenanceMigrate, MaintenanceTerminate, "MIGRATE", ""} {
		f.Add([]byte(s), "etag")
	}
	f.Fuzz(func(t *testing.T, body []byte, etag string) {
		n, err := ParseMaintenanceEvent(body, etag, detected, DefaultMaintenanceNotice)
		if err != nil || n == nil {
			return
		}
		if v := strings.TrimSpace(string(body)); v != MaintenanceMigrate && v != MaintenanceTerminate {
			t.Fatalf("notice %v from %q", n, body)
		}
		if err := n.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzUpcomingMaintenance: a notice comes only from pending or ongoing
// maintenance of a known type, at its window_start_time.
func FuzzUpcomingMaintenance(f *testing.F) {
	for _, s := range []string{
		`{"can_reschedule":"true","latest_window_start_time":"2024-12-01T19:00:01Z","maintenance_reasons":["PLANNED_UPDATE"],"maintenance_status":"PENDING","type":"SCHEDULED","window_end_time":"2024-12-01T21:00:01Z","window_start_time":"2024-12-01T19:00:01Z"}`,
		`{"maintenance_status":"ONGOING","type":"UNSCHEDULED","window_start_time":"2024-07-29T14:19:57+00:00"}`,
		`{"maintenance_status":"COMPLETE","type":"SCHEDULED","window_start_time":"2024-12-01T19:00:01Z"}`,
		`{"maintenanceStatus":"PENDING","type":"SCHEDULED","windowStartTime":"2024-12-01T19:00:01Z"}`,
		`{ "error": "no notifications have been received yet, try again later" }`,
		`{ }`, "NONE", "", `{"error":1}`,
		"maintenance_status PENDING\ntype SCHEDULED\nwindow_start_time 2024-07-29T14:19:57+00:00",
	} {
		f.Add([]byte(s), "0f8fad5b-d9cb-469f-a165-70867728950e")
	}
	f.Fuzz(func(t *testing.T, body []byte, boot string) {
		n, err := ParseUpcomingMaintenance(body, boot, detected)
		if err != nil || n == nil {
			return
		}
		// A map, not a struct: encoding/json matches struct fields in any
		// case, the parser only the exact keys.
		var doc map[string]any
		if json.Unmarshal(body, &doc) != nil {
			t.Fatalf("notice %v from a body that is not a JSON object: %q", n, body)
		}
		typ, _ := doc["type"].(string)
		status, _ := doc["maintenance_status"].(string)
		start, _ := doc["window_start_time"].(string)
		if (status != UpcomingPending && status != UpcomingOngoing) || (typ != UpcomingScheduled && typ != UpcomingUnscheduled) || n.Action != typ {
			t.Fatalf("notice %v from %q", n, body)
		}
		if at, err := time.Parse(time.RFC3339, start); err != nil || !at.Equal(n.Deadline) {
			t.Fatalf("deadline %v from window_start_time %q", n.Deadline, start)
		}
		if err := n.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}
