package gcp_test

import (
	"net/http"
	"slices"
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

// A VM switched from MIGRATE to TERMINATE while GCE announces a maintenance
// loses what runs on it: the live migration's notice, acted on already (it
// drains nothing), would not be acted on again under its id, so the
// maintenance becomes a notice of its own that stops the VM, once: it keeps
// that id, also when the option reads MIGRATE again.
func TestUpcomingMaintenanceOfAVMSwitchedToTerminate(t *testing.T) {
	f, src := start(t, upcomingOptions())
	f.SetOnHostMaintenance("MIGRATE")
	r := watch(t, src)
	readAgain(t, f)
	window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	n, _ := r.waitFor(t, "the announced live migration", settledWith(1))
	migration := n[0]

	f.SetOnHostMaintenance("TERMINATE")
	n, _ = r.waitFor(t, "the maintenance that stops the VM", func(n []notice.Notice, err error) bool {
		return err == nil && len(n) == 1 && n[0].Action != gcp.MaintenanceMigrate
	})
	stops := n[0]
	if stops.ID == migration.ID || !reclaim.Disruptive(stops.Provider, stops.Action) || !stops.Deadline.Equal(window) {
		t.Fatalf("switched to TERMINATE: notice %v, want one of its own (the live migration's was %s), disruptive, at %v", stops, migration.ID, window)
	}

	f.SetOnHostMaintenance("MIGRATE")
	readAgain(t, f)
	f.SetOnHostMaintenance("TERMINATE")
	readAgain(t, f)
	n, _ = r.waitFor(t, "the maintenance that stops the VM", settledWith(1))
	if ids := r.idsSeen(); n[0].ID != stops.ID || len(ids) != 2 {
		t.Errorf("after the option read MIGRATE and TERMINATE again: notice %s and ids seen %v, want %s kept and no other", n[0].ID, ids, stops.ID)
	}
}

// An agent that restarts after GCE moved the announced window continues the
// notice an earlier agent left unfinished in this boot rather than make an
// id from the new start; a maintenance announced after that one ended is
// new.
func TestUpcomingMaintenanceContinuesTheUnfinishedNotice(t *testing.T) {
	first := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	stamp := first.Format("20060102T150405Z")
	unfinished := "gcp-upcoming-scheduled-" + stamp + "-boot-a"
	opts := upcomingOptions()
	opts.Unfinished = []string{
		"gcp-upcoming-scheduled-" + stamp + "-boot-b", // an earlier boot's
		"gcp-maintenance-terminate-0123456789abcdef-boot-a",
		unfinished,
	}
	f, src := start(t, opts)
	moved := first.Add(24 * time.Hour)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, moved))
	r := watch(t, src)
	n, _ := r.waitFor(t, "the announced maintenance", settledWith(1))
	if n[0].ID != unfinished || !n[0].Deadline.Equal(moved) {
		t.Errorf("after a restart: notice %s with deadline %v, want the unfinished %s with the moved window's start %v", n[0].ID, n[0].Deadline, unfinished, moved)
	}

	f.SetUpcomingMaintenance("")
	r.waitFor(t, "the maintenance over", settledWith(0))
	later := moved.Add(time.Hour)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, later))
	n, _ = r.waitFor(t, "a new announcement", settledWith(1))
	if want := "gcp-upcoming-scheduled-" + later.Format("20060102T150405Z") + "-boot-a"; n[0].ID != want {
		t.Errorf("a maintenance announced after the continued one ended has id %s, want %s, its own", n[0].ID, want)
	}
}

// maintenance-event's turn while upcoming-maintenance announces the
// maintenance is that maintenance: one notice, with the announced id and the
// sooner deadline, also once GCE stops announcing it; it ends with
// maintenance-event. Without an announcement, or against an announced live
// migration, it is a notice of its own.
func TestMaintenanceEventOfAnnouncedMaintenanceIsOneNotice(t *testing.T) {
	f, src := start(t, upcomingOptions())
	window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	r := watch(t, src)
	n, _ := r.waitFor(t, "the announced maintenance", settledWith(1))
	announced := n[0]

	f.SetMaintenance(gcp.MaintenanceTerminate)
	n, _ = r.waitFor(t, "the maintenance starting", func(n []notice.Notice, err error) bool {
		return err == nil && len(n) > 0 && n[0].Deadline.Before(window)
	})
	if len(n) != 1 || n[0].ID != announced.ID || n[0].Action != gcp.UpcomingScheduled || !n[0].Estimated || n[0].Deadline.After(time.Now().Add(gcp.DefaultMaintenanceNotice)) {
		t.Fatalf("maintenance-event during the announcement: %v, want one notice %s with maintenance-event's estimated deadline", n, announced.ID)
	}

	f.SetUpcomingMaintenance("")
	readAgain(t, f)
	n, _ = r.waitFor(t, "the announcement gone", settledWith(1))
	if n[0].ID != announced.ID {
		t.Errorf("once GCE stops announcing the maintenance under way, the notice is %s, was %s", n[0].ID, announced.ID)
	}
	f.SetMaintenance(gcp.MaintenanceNone)
	r.waitFor(t, "the maintenance over", settledWith(0))

	f.SetMaintenance(gcp.MaintenanceTerminate)
	n, _ = r.waitFor(t, "unannounced maintenance", settledWith(1))
	if !strings.HasPrefix(n[0].ID, "gcp-maintenance-terminate-") {
		t.Errorf("maintenance-event without an announcement: notice %s, want its own", n[0].ID)
	}
	f.SetMaintenance(gcp.MaintenanceNone)
	r.waitFor(t, "the maintenance over", settledWith(0))

	f.SetOnHostMaintenance("MIGRATE")
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	r.waitFor(t, "an announced live migration", settledWith(1))
	f.SetMaintenance(gcp.MaintenanceTerminate)
	n, _ = r.waitFor(t, "a termination against an announced live migration", settledWith(2))
	for _, x := range n {
		if x.Action == gcp.MaintenanceTerminate && !strings.HasPrefix(x.ID, "gcp-maintenance-terminate-") {
			t.Errorf("a termination while a live migration is announced: notice %v, want its own", x)
		}
	}
}

// A TERMINATE that follows maintenance-event's MIGRATE of an announced live
// migration, before maintenance-event went back to NONE (a change the
// watcher missed, or GCE changed its mind), is news the announced notice was
// not acted on for: a notice of its own that stops the VM, whether or not
// GCE still announces the migration.
func TestTerminateAfterAnnouncedMigrationIsANoticeOfItsOwn(t *testing.T) {
	for _, stillAnnounced := range []bool{false, true} {
		t.Run(map[bool]string{false: "announcement gone", true: "still announced"}[stillAnnounced], func(t *testing.T) {
			f, src := start(t, upcomingOptions())
			f.SetOnHostMaintenance("MIGRATE")
			window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
			f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
			r := watch(t, src)
			n, _ := r.waitFor(t, "the announced live migration", settledWith(1))
			announced := n[0]
			f.SetMaintenance(gcp.MaintenanceMigrate)
			r.waitFor(t, "the live migration starting", func(n []notice.Notice, err error) bool {
				return err == nil && len(n) == 1 && n[0].ID == announced.ID && n[0].Deadline.Before(window)
			})
			if !stillAnnounced {
				f.SetUpcomingMaintenance("")
				readAgain(t, f)
			}

			f.SetMaintenance(gcp.MaintenanceTerminate)
			n, _ = r.waitFor(t, "the termination", func(n []notice.Notice, err error) bool {
				return err == nil && slices.ContainsFunc(n, func(x notice.Notice) bool { return x.Action == gcp.MaintenanceTerminate })
			})
			for _, x := range n {
				if x.Action != gcp.MaintenanceTerminate {
					continue
				}
				if x.ID == announced.ID || !strings.HasPrefix(x.ID, "gcp-maintenance-terminate-") || !reclaim.Disruptive(x.Provider, x.Action) {
					t.Errorf("the termination after an announced live migration: notice %v, want its own, disruptive (the migration's was %s)", x, announced.ID)
				}
			}
		})
	}
}

// An agent that starts during maintenance-event's turn of an announced
// maintenance says nothing of it until upcoming-maintenance answers, rather
// than a notice under maintenance-event's id that becomes another a moment
// later.
func TestMaintenanceEventAtStartWaitsForTheAnnouncement(t *testing.T) {
	opts := upcomingOptions()
	opts.RequestTimeout = time.Minute // the held read must not time out
	f, src := start(t, opts)
	window := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	doc := metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window)
	release := make(chan struct{})
	f.SetFault(metadatatest.GCPUpcomingMaintenance, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		w.Write([]byte(doc))
	})
	f.SetMaintenance(gcp.MaintenanceTerminate)

	r := watch(t, src)
	// The second request waits for a change: the first answer is
	// published.
	for stop := time.Now().Add(5 * time.Second); f.Requests(metadatatest.GCPMaintenance) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(stop) {
			t.Fatal("maintenance-event is not waited on")
		}
	}
	close(release)
	n, _ := r.waitFor(t, "the maintenance", settledWith(1))
	if ids := r.idsSeen(); !strings.HasPrefix(n[0].ID, "gcp-upcoming-scheduled-") || len(ids) != 1 {
		t.Errorf("notices seen %v, want only the announced one's id", ids)
	}
}

// An agent that restarts during maintenance-event's turn of a maintenance
// GCE no longer announces (it may stop once the maintenance is under way)
// continues the notice an earlier agent of this boot left unfinished for
// the announced maintenance: a notice under maintenance-event's own id
// would be a second one, acted on again, and the unfinished one withdrawn.
// A live migration is news the unfinished work was not for, and an earlier
// boot's work is not this maintenance; a later turn is a notice of its own.
func TestMaintenanceEventAtRestartContinuesTheUnfinishedAnnouncement(t *testing.T) {
	stamp := time.Now().Add(time.Hour).UTC().Format("20060102T150405Z")
	for _, c := range []struct {
		name, unfinished, event string
		continued               bool
	}{
		{"this boot", "gcp-upcoming-scheduled-" + stamp + "-boot-a", gcp.MaintenanceTerminate, true},
		{"an earlier boot", "gcp-upcoming-scheduled-" + stamp + "-boot-b", gcp.MaintenanceTerminate, false},
		{"a live migration", "gcp-upcoming-scheduled-" + stamp + "-boot-a", gcp.MaintenanceMigrate, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := upcomingOptions()
			opts.Unfinished = []string{c.unfinished}
			f, src := start(t, opts)
			f.SetMaintenance(c.event)
			r := watch(t, src)
			readAgain(t, f)
			n, _ := r.waitFor(t, "the maintenance under way", settledWith(1))
			if continued := n[0].ID == c.unfinished; continued != c.continued || n[0].Action != c.event {
				t.Errorf("maintenance-event %s at start with %s unfinished: notice %v, continued %v, want %v", c.event, c.unfinished, n[0], continued, c.continued)
			}
			if n[0].Deadline.After(time.Now().Add(gcp.DefaultMaintenanceNotice)) {
				t.Errorf("notice %v: the deadline is not maintenance-event's", n[0])
			}

			f.SetMaintenance(gcp.MaintenanceNone)
			r.waitFor(t, "the maintenance over", settledWith(0))
			f.SetMaintenance(gcp.MaintenanceTerminate)
			n, _ = r.waitFor(t, "a later turn", settledWith(1))
			if !strings.HasPrefix(n[0].ID, "gcp-maintenance-terminate-") {
				t.Errorf("a later maintenance-event turn: notice %s, want its own", n[0].ID)
			}
		})
	}
}

// maintenance-event's turn that went out as a notice of its own (at start,
// while upcoming-maintenance failed to answer, or before GCE announced it)
// keeps its id once upcoming-maintenance announces the maintenance: GCE
// announces one at a time, so this is the maintenance under way, and a new
// id would have it acted on twice, the first notice ending as withdrawn.
func TestMaintenanceEventOutOnItsOwnKeepsItsIDOnceAnnounced(t *testing.T) {
	f, src := start(t, upcomingOptions())
	f.SetFault(metadatatest.GCPUpcomingMaintenance, metadatatest.Status(http.StatusInternalServerError, "oops"))
	f.SetMaintenance(gcp.MaintenanceTerminate)

	r := watch(t, src)
	n, _ := r.waitFor(t, "maintenance-event while upcoming-maintenance fails", func(n []notice.Notice, err error) bool {
		return err != nil && len(n) == 1
	})
	first := n[0]

	window := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingOngoing, window))
	f.SetFault(metadatatest.GCPUpcomingMaintenance, nil)
	readAgain(t, f)
	n, _ = r.waitFor(t, "the maintenance announced", settledWith(1))
	if n[0].ID != first.ID || n[0].Deadline.After(first.Deadline) {
		t.Errorf("once announced, the maintenance under way is %v, was %v: want the same id and deadline", n[0], first)
	}

	// GCE stops announcing it once it is under way, and maintenance-event
	// ends it.
	f.SetUpcomingMaintenance("")
	readAgain(t, f)
	n, _ = r.waitFor(t, "the announcement gone", settledWith(1))
	if n[0].ID != first.ID {
		t.Errorf("the announcement gone, the notice is %s, was %s", n[0].ID, first.ID)
	}
	if ids := r.idsSeen(); len(ids) != 1 {
		t.Errorf("notices seen %v, want one maintenance as one notice", ids)
	}

	// An agent that restarts meanwhile, with the work for that notice
	// unfinished, finds the maintenance announced at once: the same notice.
	f.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingOngoing, window))
	opts := upcomingOptions()
	opts.Endpoint, opts.RequestTimeout, opts.Unfinished = f.URL(), metadatatest.RequestTimeout, []string{first.ID}
	r2 := watch(t, gcp.New(opts))
	n, _ = r2.waitFor(t, "the maintenance after a restart", settledWith(1))
	if n[0].ID != first.ID {
		t.Errorf("after a restart, the maintenance under way is %s, was %s", n[0].ID, first.ID)
	}
}
