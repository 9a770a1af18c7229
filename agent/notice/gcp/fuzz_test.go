package gcp

import (
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
