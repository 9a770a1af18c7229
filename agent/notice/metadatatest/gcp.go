package metadatatest

import (
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"time"
)

// GCP is a fake GCE metadata server: it needs "Metadata-Flavor: Google",
// answers with it and an ETag, and holds wait_for_change requests until the
// value's ETag differs from last_etag or timeout_sec passes. Like GCE's, the
// ETag is a hash of the value: the same value has the same ETag whenever it
// comes back. instance/upcoming-maintenance is absent (404) until set, and
// served only with alt=json (GCE answers "key value" lines without it, which
// the fake does not write).
type GCP struct {
	*server
	values  map[string]string
	changed chan struct{}
}

// Paths of the values the fake serves.
const (
	GCPPreempted           = "/computeMetadata/v1/instance/preempted"
	GCPMaintenance         = "/computeMetadata/v1/instance/maintenance-event"
	GCPUpcomingMaintenance = "/computeMetadata/v1/instance/upcoming-maintenance"
	GCPOnHostMaintenance   = "/computeMetadata/v1/instance/scheduling/on-host-maintenance"
)

// NewGCP starts a fake metadata server: not preempted, no maintenance, none
// announced, and the VM terminated for host maintenance.
func NewGCP() *GCP {
	g := &GCP{
		values:  map[string]string{GCPPreempted: "FALSE", GCPMaintenance: "NONE", GCPOnHostMaintenance: "TERMINATE"},
		changed: make(chan struct{}),
	}
	g.server = newServer(g.serve)
	return g
}

func etagOf(value string) string {
	h := fnv.New64a()
	h.Write([]byte(value))
	return fmt.Sprintf("%016x", h.Sum64())
}

func (g *GCP) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing required header \"Metadata-Flavor\": \"Google\"", http.StatusForbidden)
		return
	}
	path := r.URL.Path
	q := r.URL.Query()
	deadline := time.Now().Add(60 * time.Second)
	if ts := q.Get("timeout_sec"); ts != "" {
		if n, err := strconv.Atoi(ts); err == nil && n > 0 {
			deadline = time.Now().Add(time.Duration(n) * time.Second)
		}
	}
	for {
		g.mu.Lock()
		v, ok := g.values[path]
		etag := etagOf(v)
		changed := g.changed
		g.mu.Unlock()
		if !ok {
			w.Header().Set("Metadata-Flavor", "Google")
			http.NotFound(w, r)
			return
		}
		if path == GCPUpcomingMaintenance && q.Get("alt") != "json" {
			w.Header().Set("Metadata-Flavor", "Google")
			http.Error(w, "the fake serves upcoming-maintenance only with alt=json", http.StatusBadRequest)
			return
		}
		wait := q.Get("wait_for_change") == "true"
		if !wait || q.Get("last_etag") != etag || !time.Now().Before(deadline) {
			w.Header().Set("Metadata-Flavor", "Google")
			w.Header().Set("ETag", etag)
			w.Header().Set("Content-Type", "application/text")
			w.Write([]byte(v))
			return
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
		case <-r.Context().Done():
			return
		case <-g.stopped:
			return
		}
	}
}

func (g *GCP) set(path, value string) time.Time {
	return g.change(path, value, true)
}

// change sets path to value, or removes it (404) when present is false.
func (g *GCP) change(path, value string, present bool) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	old, had := g.values[path]
	if had != present || old != value {
		if present {
			g.values[path] = value
		} else {
			delete(g.values, path)
		}
		g.published = now
		close(g.changed)
		g.changed = make(chan struct{})
	}
	return now
}

// SetPreempted sets instance/preempted and returns when it became visible.
func (g *GCP) SetPreempted(v bool) time.Time {
	if v {
		return g.set(GCPPreempted, "TRUE")
	}
	return g.set(GCPPreempted, "FALSE")
}

// SetMaintenance sets instance/maintenance-event (NONE,
// MIGRATE_ON_HOST_MAINTENANCE, TERMINATE_ON_HOST_MAINTENANCE).
func (g *GCP) SetMaintenance(v string) time.Time {
	return g.set(GCPMaintenance, v)
}

// SetUpcomingMaintenance sets the JSON document of
// instance/upcoming-maintenance; "" removes the key, which then answers 404.
func (g *GCP) SetUpcomingMaintenance(doc string) time.Time {
	return g.change(GCPUpcomingMaintenance, doc, doc != "")
}

// SetOnHostMaintenance sets the VM's scheduling option
// instance/scheduling/on-host-maintenance (TERMINATE, as GPU VMs have it,
// until set; or MIGRATE).
func (g *GCP) SetOnHostMaintenance(v string) time.Time {
	return g.set(GCPOnHostMaintenance, v)
}

// UpcomingMaintenance is a document of instance/upcoming-maintenance as
// Google documents it (can_reschedule a string).
func UpcomingMaintenance(typ, status string, start time.Time) string {
	return fmt.Sprintf(`{"can_reschedule":"true","latest_window_start_time":%q,"maintenance_reasons":["PLANNED_UPDATE"],`+
		`"maintenance_status":%q,"type":%q,"window_end_time":%q,"window_start_time":%q}`,
		start.UTC().Format(time.RFC3339), status, typ, start.Add(2*time.Hour).UTC().Format(time.RFC3339), start.UTC().Format(time.RFC3339))
}

// Clear returns every value to its quiet state.
func (g *GCP) Clear() {
	g.set(GCPPreempted, "FALSE")
	g.set(GCPMaintenance, "NONE")
	g.SetUpcomingMaintenance("")
}
