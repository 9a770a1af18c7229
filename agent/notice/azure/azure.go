// Package azure watches Azure's Scheduled Events for Spot evictions
// (Preempt), deletions (Terminate) and maintenance (Reboot, Redeploy,
// Freeze), and acknowledges an event (StartRequests) once the node is ready,
// so that Azure need not wait out the notice.
package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Defaults.
const (
	DefaultEndpoint   = "http://169.254.169.254"
	DefaultAPIVersion = "2020-07-01"
	DefaultInterval   = time.Second
	// DefaultPreemptNotice is the deadline of an event without NotBefore:
	// Azure gives a Spot VM at least 30 seconds.
	DefaultPreemptNotice = 30 * time.Second
	// DefaultRequestTimeout bounds a request once Scheduled Events has
	// answered: then it answers at once.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultFirstRequestTimeout bounds the requests for the document until
	// one is answered: the first turns Scheduled Events on for the VM, and
	// Azure documents that its answer may take up to two minutes. Cut off
	// sooner, the agent would report errors, not notices, all that time.
	DefaultFirstRequestTimeout = 2*time.Minute + 10*time.Second
)

// Paths.
const (
	PathScheduledEvents = "/metadata/scheduledevents"
	PathComputeName     = "/metadata/instance/compute/name"
)

// Options configure the watcher.
type Options struct {
	// Endpoint is the instance metadata service's base URL (DefaultEndpoint).
	Endpoint   string
	APIVersion string
	// Interval between checks (DefaultInterval).
	Interval time.Duration
	// RequestTimeout bounds each request (DefaultRequestTimeout).
	RequestTimeout time.Duration
	// FirstRequestTimeout bounds the requests for the document until one
	// is answered (DefaultFirstRequestTimeout); never less than
	// RequestTimeout.
	FirstRequestTimeout time.Duration
	// VMName is this VM's name as Scheduled Events lists it in Resources;
	// empty: read from the instance metadata (compute/name) at start.
	VMName string
	// PreemptNotice is the deadline of an event without NotBefore.
	PreemptNotice time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Source polls Scheduled Events.
type Source struct {
	opts Options
	http *notice.HTTPClient

	mu          sync.Mutex
	vmName      string
	incarnation int64
}

var (
	_ notice.Source       = &Source{}
	_ notice.Acknowledger = &Source{}
)

// New returns a source with opts' zero fields defaulted.
func New(opts Options) *Source {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.APIVersion == "" {
		opts.APIVersion = DefaultAPIVersion
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.FirstRequestTimeout <= 0 {
		opts.FirstRequestTimeout = DefaultFirstRequestTimeout
	}
	opts.FirstRequestTimeout = max(opts.FirstRequestTimeout, opts.RequestTimeout)
	if opts.PreemptNotice <= 0 {
		opts.PreemptNotice = DefaultPreemptNotice
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Source{opts: opts, http: notice.NewHTTPClient(), vmName: opts.VMName, incarnation: -1}
}

// Provider implements notice.Source.
func (s *Source) Provider() telemetryv1.CloudProvider {
	return telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE
}

var metadataHeader = http.Header{"Metadata": {"true"}}

func (s *Source) eventsURL() string {
	return s.opts.Endpoint + PathScheduledEvents + "?api-version=" + s.opts.APIVersion
}

// Watch implements notice.Source.
func (s *Source) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	notice.Poll(ctx, s.opts.Interval, s.Check, observe)
}

// Check reads the document once and returns this VM's events, with an
// error for each of its events that cannot be read (Document.Notices).
func (s *Source) Check(ctx context.Context) ([]notice.Notice, error) {
	vm, err := s.name(ctx)
	if err != nil {
		return nil, err
	}
	doc, err := s.document(ctx)
	if err != nil {
		return nil, err
	}
	return doc.Notices(vm, s.opts.Now(), s.opts.PreemptNotice)
}

// document reads and parses the Scheduled Events document.
func (s *Source) document(ctx context.Context) (*Document, error) {
	u := s.eventsURL()
	timeout := s.opts.RequestTimeout
	if s.Incarnation() < 0 {
		timeout = s.opts.FirstRequestTimeout
	}
	resp, err := s.http.Do(ctx, http.MethodGet, u, metadataHeader, nil, timeout)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("GET %s: answered %d %s", u, resp.Status, notice.Excerpt(resp.Body))
	}
	doc, err := ParseDocument(resp.Body)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.incarnation = doc.DocumentIncarnation
	s.mu.Unlock()
	return doc, nil
}

// Incarnation is the DocumentIncarnation of the last document read, -1
// before the first.
func (s *Source) Incarnation() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.incarnation
}

// name returns the VM's name, reading it from the instance metadata the
// first time.
func (s *Source) name(ctx context.Context) (string, error) {
	s.mu.Lock()
	name := s.vmName
	s.mu.Unlock()
	if name != "" {
		return name, nil
	}
	u := s.opts.Endpoint + PathComputeName + "?api-version=2021-02-01&format=text"
	resp, err := s.http.Do(ctx, http.MethodGet, u, metadataHeader, nil, s.opts.RequestTimeout)
	if err != nil {
		return "", fmt.Errorf("this VM's name (to tell its scheduled events from its neighbours'): %w", err)
	}
	name = strings.TrimSpace(string(resp.Body))
	if resp.Status != http.StatusOK || name == "" || len(name) > 128 || strings.ContainsAny(name, " \t\r\n\"") {
		return "", fmt.Errorf("this VM's name: GET %s answered %d %s", u, resp.Status, notice.Excerpt(resp.Body))
	}
	s.mu.Lock()
	s.vmName = name
	s.mu.Unlock()
	return name, nil
}

// Acknowledge implements notice.Acknowledger: it tells Azure the VM is ready
// for the event (POST {"StartRequests":[{"EventId":...}]}), so that it starts
// without waiting out the notice.
//
// Azure starts an acknowledged event for every VM its Resources list, not
// only for the VM that acknowledges it, and the agent speaks for its own node
// alone: the other nodes' pods may still be checkpointing. So the event, as
// the document lists it now, must name this VM and no other; otherwise
// nothing is sent and Azure starts the event at its NotBefore.
func (s *Source) Acknowledge(ctx context.Context, noticeID string) error {
	id, ok := EventID(noticeID)
	if !ok || !validID(id) {
		return fmt.Errorf("notice %q is not an Azure scheduled event", noticeID)
	}
	vm, err := s.name(ctx)
	if err != nil {
		return fmt.Errorf("acknowledge scheduled event %s: %w", id, err)
	}
	doc, err := s.document(ctx)
	if err != nil {
		return fmt.Errorf("acknowledge scheduled event %s: %w", id, err)
	}
	i := slices.IndexFunc(doc.Events, func(e Event) bool { return e.EventID == id })
	if i < 0 {
		if j := slices.IndexFunc(doc.Unread, func(u Unread) bool { return u.EventID == id }); j >= 0 {
			return fmt.Errorf("acknowledge scheduled event %s: Scheduled Events lists it in a form the agent cannot read: %w", id, doc.Unread[j].Err)
		}
		return fmt.Errorf("acknowledge scheduled event %s: Scheduled Events no longer lists it (Azure called it off or it ended); nothing to acknowledge: %w", id, notice.ErrNotOurs)
	}
	resources := doc.Events[i].Resources
	others := slices.DeleteFunc(slices.Clone(resources), func(r string) bool { return strings.EqualFold(r, vm) })
	if len(others) > 0 || !lists(resources, vm) {
		return fmt.Errorf("not acknowledging scheduled event %s: its Resources %q are not this VM %q alone, and Azure would start it for every VM listed; it starts at its NotBefore instead: %w", id, resources, vm, notice.ErrNotOurs)
	}
	type start struct {
		EventID string `json:"EventId"`
	}
	body, _ := json.Marshal(struct {
		StartRequests []start `json:"StartRequests"`
	}{[]start{{id}}})
	u := s.eventsURL()
	h := metadataHeader.Clone()
	h.Set("Content-Type", "application/json")
	resp, err := s.http.Do(ctx, http.MethodPost, u, h, body, s.opts.RequestTimeout)
	if err != nil {
		return fmt.Errorf("acknowledge scheduled event %s: %w", id, err)
	}
	if resp.Status != http.StatusOK {
		return fmt.Errorf("acknowledge scheduled event %s: POST %s answered %d %s", id, u, resp.Status, notice.Excerpt(resp.Body))
	}
	return nil
}
