package metadatatest

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/pennysched/penny/agent/notice/azure"
)

// Azure is a fake Azure instance metadata service with Scheduled Events: it
// needs "Metadata: true", serves the document with a DocumentIncarnation
// that grows on every change, and starts an event when a StartRequests POST
// acknowledges it.
type Azure struct {
	*server
	vmName      string
	incarnation int64
	events      []AzureEvent
	acks        map[string]time.Time
}

// AzureEvent is one scheduled event as the document carries it.
type AzureEvent = azure.Event

// Paths the fake serves.
const (
	AzureScheduledEvents = "/metadata/scheduledevents"
	AzureComputeName     = "/metadata/instance/compute/name"
)

// NewAzure starts a fake for the VM vmName, with no events.
func NewAzure(vmName string) *Azure {
	a := &Azure{vmName: vmName, incarnation: 1, acks: map[string]time.Time{}}
	a.server = newServer(a.serve)
	return a
}

func (a *Azure) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata") != "true" {
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"error":"Bad request. Required metadata header not specified"}`))
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"error":"Bad request. api-version was not specified in the request"}`))
		return
	}
	switch {
	case r.URL.Path == AzureComputeName && r.Method == http.MethodGet:
		w.Write([]byte(a.vmName))
	case r.URL.Path == AzureScheduledEvents && r.Method == http.MethodGet:
		a.mu.Lock()
		doc := struct {
			DocumentIncarnation int64
			Events              []AzureEvent
		}{a.incarnation, append([]AzureEvent{}, a.events...)}
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		json.NewEncoder(w).Encode(doc)
	case r.URL.Path == AzureScheduledEvents && r.Method == http.MethodPost:
		var req struct {
			StartRequests []struct {
				EventID string `json:"EventId"`
			}
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || len(req.StartRequests) == 0 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		for _, sr := range req.StartRequests {
			for i := range a.events {
				if a.events[i].EventID == sr.EventID && a.events[i].EventStatus == "Scheduled" {
					a.events[i].EventStatus = "Started"
					a.events[i].NotBefore = ""
					a.acks[sr.EventID] = time.Now()
					a.incarnation++
				}
			}
		}
		a.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	default:
		http.NotFound(w, r)
	}
}

// AddEvent schedules an event (EventStatus Scheduled unless set) and returns
// when it became visible.
func (a *Azure) AddEvent(e AzureEvent) time.Time {
	if e.EventStatus == "" {
		e.EventStatus = "Scheduled"
	}
	if e.ResourceType == "" {
		e.ResourceType = "VirtualMachine"
	}
	if e.EventSource == "" {
		e.EventSource = "Platform"
	}
	if e.Resources == nil {
		e.Resources = []string{a.vmName}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
	a.incarnation++
	a.published = time.Now()
	return a.published
}

// Preempt schedules a Spot eviction of this VM at notBefore.
func (a *Azure) Preempt(eventID string, notBefore time.Time) time.Time {
	return a.AddEvent(AzureEvent{
		EventID: eventID, EventType: "Preempt", NotBefore: notBefore.UTC().Format(http.TimeFormat),
		Description: "Virtual machine is being preempted.", DurationInSeconds: -1,
	})
}

// Reschedule moves an event to notBefore, keeping its EventId, as Azure does
// when it postpones or brings forward an event; false when there is none.
func (a *Azure) Reschedule(eventID string, notBefore time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.events {
		if a.events[i].EventID == eventID {
			a.events[i].NotBefore = notBefore.UTC().Format(http.TimeFormat)
			a.incarnation++
			a.published = time.Now()
			return true
		}
	}
	return false
}

// Clear removes every event.
func (a *Azure) Clear() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = nil
	a.incarnation++
}

// Acked returns when eventID was acknowledged, and whether it was.
func (a *Azure) Acked(eventID string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.acks[eventID]
	return t, ok
}
