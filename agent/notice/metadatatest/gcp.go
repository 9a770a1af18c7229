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
// comes back.
type GCP struct {
	*server
	values  map[string]string
	changed chan struct{}
}

// Paths of the values the fake serves.
const (
	GCPPreempted   = "/computeMetadata/v1/instance/preempted"
	GCPMaintenance = "/computeMetadata/v1/instance/maintenance-event"
)

// NewGCP starts a fake metadata server: not preempted, no maintenance.
func NewGCP() *GCP {
	g := &GCP{
		values:  map[string]string{GCPPreempted: "FALSE", GCPMaintenance: "NONE"},
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
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if g.values[path] != value {
		g.values[path] = value
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

// Clear returns both values to their quiet state.
func (g *GCP) Clear() {
	g.set(GCPPreempted, "FALSE")
	g.set(GCPMaintenance, "NONE")
}
