package gcp_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/gcp"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

func upcomingOptions() gcp.Options {
	return gcp.Options{UpcomingMaintenancePoll: 20 * time.Millisecond, BootID: "boot-a"}
}

// readAgain waits until the watcher read upcoming-maintenance a few more
// times.
func readAgain(t *testing.T, f *metadatatest.GCP) {
	t.Helper()
	want := f.Requests(metadatatest.GCPUpcomingMaintenance) + 3
	deadline := time.Now().Add(5 * time.Second)
	for f.Requests(metadatatest.GCPUpcomingMaintenance) < want {
		if time.Now().After(deadline) {
			t.Fatal("upcoming-maintenance is not read again")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settledWith is a check without error that found count notices. (The
// recorder looks like one before its first check: the tests read the value
// first, see readAgain.)
func settledWith(count int) func([]notice.Notice, error) bool {
	return func(n []notice.Notice, err error) bool { return err == nil && len(n) == count }
}

// Maintenance GCE announces ahead is a notice at the window's start; a moved
// window is the same notice with the new deadline, and one no longer
// announced is withdrawn.
func TestUpcomingMaintenanceIsFollowedAndWithdrawn(t *testing.T) {
	f, src := start(t, upcomingOptions())
	r := watch(t, src)
	readAgain(t, f)
	r.waitFor(t, "first read, nothing announced (404)", settledWith(0))

	window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	n, _ := r.waitFor(t, "the announced maintenance", settledWith(1))
	first := n[0]
	if first.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE || first.Provider != telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP || first.Action != gcp.UpcomingScheduled {
		t.Errorf("notice %v, want a GCP maintenance, action SCHEDULED", first)
	}
	if !first.Deadline.Equal(window) || first.Estimated {
		t.Errorf("deadline %v (estimated %v), want the window's start %v, the cloud's own time", first.Deadline, first.Estimated, window)
	}
	if !strings.HasPrefix(first.ID, "gcp-upcoming-scheduled-") || !strings.HasSuffix(first.ID, "-boot-a") {
		t.Errorf("id %q does not name the maintenance and the boot", first.ID)
	}

	moved := window.Add(24 * time.Hour)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, moved))
	n, _ = r.waitFor(t, "the moved window", func(n []notice.Notice, err error) bool {
		return err == nil && len(n) == 1 && !n[0].Deadline.Equal(window)
	})
	if n[0].ID != first.ID || !n[0].Deadline.Equal(moved) {
		t.Errorf("moved window: notice %s with deadline %v, want id %s with deadline %v", n[0].ID, n[0].Deadline, first.ID, moved)
	}

	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingOngoing, moved))
	readAgain(t, f)
	n, _ = r.waitFor(t, "the window open", settledWith(1))
	if n[0].ID != first.ID {
		t.Errorf("the maintenance under way has id %s, was %s", n[0].ID, first.ID)
	}

	f.SetUpcomingMaintenance("")
	r.waitFor(t, "the maintenance withdrawn", settledWith(0))

	// Announced again after it was withdrawn: new work, named by its own
	// start, not the first one's.
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, moved))
	n, _ = r.waitFor(t, "a new announcement", settledWith(1))
	if want := "gcp-upcoming-scheduled-" + moved.Format("20060102T150405Z") + "-boot-a"; n[0].ID != want {
		t.Errorf("a maintenance announced after the first was withdrawn has id %s, want %s (the first was %s)", n[0].ID, want, first.ID)
	}
}

// Every answer Google documents or its own agents expect for "nothing
// scheduled" is a successful check without a notice.
func TestNoUpcomingMaintenanceAnswers(t *testing.T) {
	cases := []struct {
		name  string
		fault metadatatest.Fault
	}{
		{"404", nil},
		{"empty object", metadatatest.Garbage("{ }")},
		{"NONE", metadatatest.Garbage("NONE")},
		{"503 no notifications", metadatatest.Status(http.StatusServiceUnavailable, `{ "error": "no notifications have been received yet, try again later" }`)},
		{"complete", metadatatest.Garbage(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingComplete, time.Now()))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, src := start(t, upcomingOptions())
			if c.fault != nil {
				f.SetFault(metadatatest.GCPUpcomingMaintenance, c.fault)
			}
			r := watch(t, src)
			r.waitFor(t, "a successful check without a notice", settledWith(0))
			// It is polled, and stays that way.
			readAgain(t, f)
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.n == 0 || r.err != nil || len(r.last) != 0 {
				t.Errorf("after %d checks: %v, %v; want no notice and no error", r.n, r.last, r.err)
			}
		})
	}
}

func TestMalformedUpcomingMaintenanceIsAnErrorNeverANotice(t *testing.T) {
	doc := func(typ, status, start string) string {
		return `{"type":"` + typ + `","maintenance_status":"` + status + `","window_start_time":"` + start + `"}`
	}
	cases := []struct {
		name  string
		fault metadatatest.Fault
		want  string
	}{
		{"time not RFC 3339", metadatatest.Garbage(doc("SCHEDULED", "PENDING", "1 Dec 2024 19:00:01 GMT")), `window_start_time "1 Dec 2024 19:00:01 GMT" is not an RFC 3339 time`},
		{"unknown status", metadatatest.Garbage(doc("SCHEDULED", "SOON", "2024-12-01T19:00:01Z")), `maintenance_status "SOON" is not PENDING, ONGOING or COMPLETE`},
		{"unknown type", metadatatest.Garbage(doc("PLANNED", "PENDING", "2024-12-01T19:00:01Z")), `type "PLANNED" is not SCHEDULED or UNSCHEDULED`},
		{"camelCase keys", metadatatest.Garbage(`{"type":"SCHEDULED","maintenanceStatus":"PENDING","windowStartTime":"2024-12-01T19:00:01Z"}`), `"maintenance_status" is missing`},
		{"start missing", metadatatest.Garbage(`{"type":"SCHEDULED","maintenance_status":"PENDING"}`), `"window_start_time" is missing`},
		{"start a number", metadatatest.Garbage(`{"type":"SCHEDULED","maintenance_status":"PENDING","window_start_time":1733079601}`), `"window_start_time" is a JSON number, want a string`},
		{"key value lines", metadatatest.Garbage("maintenance_status PENDING\ntype SCHEDULED\nwindow_start_time 2024-07-29T14:19:57+00:00"), "want a JSON object"},
		{"truncated JSON", metadatatest.Garbage(`{"type":"SCHEDULED","maintenance_status":"PEN`), "not a JSON document"},
		{"another error", metadatatest.Garbage(`{"error":"quota exceeded"}`), `answered an error: "quota exceeded"`},
		{"503 busy", metadatatest.Status(http.StatusServiceUnavailable, "busy"), "answered 503"},
		{"404 not from the metadata server", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, "Metadata-Flavor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, src := start(t, upcomingOptions())
			f.SetFault(metadatatest.GCPUpcomingMaintenance, c.fault)
			r := watch(t, src)
			_, err := r.waitFor(t, "an error", func(n []notice.Notice, err error) bool {
				return err != nil && !strings.Contains(err.Error(), "not read yet")
			})
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			readAgain(t, f)
			r.mu.Lock()
			defer r.mu.Unlock()
			if len(r.last) != 0 {
				t.Errorf("false notice: %v", r.last)
			}
		})
	}
}

// A failed read in the middle of an announcement neither drops the notice
// nor gives it a new id when the window comes back moved.
func TestUpcomingMaintenanceKeepsItsIDThroughAnError(t *testing.T) {
	f, src := start(t, upcomingOptions())
	r := watch(t, src)
	window := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	n, _ := r.waitFor(t, "the announced maintenance", settledWith(1))
	id := n[0].ID
	f.SetFault(metadatatest.GCPUpcomingMaintenance, metadatatest.Status(http.StatusInternalServerError, "down"))
	r.waitFor(t, "the failed read", func(n []notice.Notice, err error) bool { return err != nil })
	moved := window.Add(2 * time.Hour)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, moved))
	f.SetFault(metadatatest.GCPUpcomingMaintenance, nil)
	n, _ = r.waitFor(t, "the moved window", func(n []notice.Notice, err error) bool {
		return err == nil && len(n) == 1 && n[0].Deadline.Equal(moved)
	})
	if n[0].ID != id {
		t.Errorf("after a failed read the moved window has id %s, was %s", n[0].ID, id)
	}
}

func TestParseUpcomingMaintenanceTimes(t *testing.T) {
	// Google's own agent's test data writes the offset as +00:00.
	body := []byte(`{"type":"SCHEDULED","maintenance_status":"PENDING","window_start_time":"2024-07-29T14:19:57+00:00","can_reschedule":"false"}`)
	n, err := gcp.ParseUpcomingMaintenance(body, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2024, 7, 29, 14, 19, 57, 0, time.UTC); !n.Deadline.Equal(want) || n.ID != "gcp-upcoming-scheduled-20240729T141957Z" {
		t.Errorf("notice %v, want id gcp-upcoming-scheduled-20240729T141957Z and deadline %v", n, want)
	}
	if err := n.Validate(); err != nil {
		t.Error(err)
	}
}

// A VM that GCE live-migrates for host maintenance loses nothing to the
// maintenance it announces: the notice says MIGRATE, as maintenance-event
// would, and is not disruptive. One terminated for it (GPU VMs) is.
func TestUpcomingMaintenanceOfAVMThatMigrates(t *testing.T) {
	f, src := start(t, upcomingOptions())
	f.SetOnHostMaintenance("MIGRATE")
	r := watch(t, src)
	readAgain(t, f)
	window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	n, _ := r.waitFor(t, "the announced maintenance", settledWith(1))
	if n[0].Action != gcp.MaintenanceMigrate || reclaim.Disruptive(n[0].Provider, n[0].Action) {
		t.Fatalf("announced maintenance of a VM set to MIGRATE: action %q (disruptive %v), want %s, not disruptive",
			n[0].Action, reclaim.Disruptive(n[0].Provider, n[0].Action), gcp.MaintenanceMigrate)
	}

	f.SetOnHostMaintenance("TERMINATE")
	f.SetUpcomingMaintenance("")
	readAgain(t, f)
	r.waitFor(t, "withdrawn", settledWith(0))
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window.Add(time.Hour)))
	n, _ = r.waitFor(t, "the maintenance announced again", settledWith(1))
	if n[0].Action != gcp.UpcomingScheduled || !reclaim.Disruptive(n[0].Provider, n[0].Action) {
		t.Fatalf("announced maintenance of a VM set to TERMINATE: action %q, want %s, disruptive", n[0].Action, gcp.UpcomingScheduled)
	}
}
