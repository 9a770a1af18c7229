package azure

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Document is the Scheduled Events document.
type Document struct {
	DocumentIncarnation int64
	Events              []Event
}

// Event is one scheduled event.
type Event struct {
	EventID      string `json:"EventId"`
	EventType    string
	ResourceType string
	Resources    []string
	EventStatus  string
	NotBefore    string
	Description  string
	EventSource  string
	// DurationInSeconds is -1 when unknown.
	DurationInSeconds int64
}

// MaxEvents bounds a document; Azure lists the events of one availability
// set or scale-set placement group, a few at a time.
const MaxEvents = 256

// ParseDocument reads a Scheduled Events document strictly: every required
// member present, by its exact name, with its JSON type; nothing after the
// document.
func ParseDocument(body []byte) (*Document, error) {
	const what = "scheduled events"
	o, err := notice.ParseObject(what, body)
	if err != nil {
		return nil, err
	}
	inc, _, err := o.Int("DocumentIncarnation", true)
	if err != nil {
		return nil, err
	}
	if inc < 0 {
		return nil, fmt.Errorf("%s: DocumentIncarnation %d is negative", what, inc)
	}
	items, _, err := o.List("Events", true)
	if err != nil {
		return nil, err
	}
	if len(items) > MaxEvents {
		return nil, fmt.Errorf("%s: %d events; more than %d is not a plausible answer", what, len(items), MaxEvents)
	}
	doc := &Document{DocumentIncarnation: inc, Events: make([]Event, 0, len(items))}
	for i, raw := range items {
		p := fmt.Sprintf("%s: Events[%d]", what, i)
		eo, err := notice.ParseObject(p, raw)
		if err != nil {
			return nil, err
		}
		e := Event{DurationInSeconds: -1}
		for _, f := range []struct {
			key      string
			v        *string
			required bool
		}{
			{"EventId", &e.EventID, true}, {"EventType", &e.EventType, true}, {"EventStatus", &e.EventStatus, true},
			{"NotBefore", &e.NotBefore, true}, {"ResourceType", &e.ResourceType, false},
			{"Description", &e.Description, false}, {"EventSource", &e.EventSource, false},
		} {
			if *f.v, _, err = eo.String(f.key, f.required); err != nil {
				return nil, err
			}
		}
		if e.Resources, _, err = eo.Strings("Resources", true); err != nil {
			return nil, err
		}
		if d, ok, err := eo.Int("DurationInSeconds", false); err != nil {
			return nil, err
		} else if ok {
			e.DurationInSeconds = d
		}
		if !validID(e.EventID) {
			return nil, fmt.Errorf("%s: EventId %s is not an event id", p, notice.Excerpt([]byte(e.EventID)))
		}
		if e.EventStatus != "Scheduled" && e.EventStatus != "Started" {
			return nil, fmt.Errorf("%s: EventStatus %s is not Scheduled or Started", p, notice.Excerpt([]byte(e.EventStatus)))
		}
		if e.NotBefore != "" {
			if _, err := parseNotBefore(e.NotBefore); err != nil {
				return nil, fmt.Errorf("%s: NotBefore: %w", p, err)
			}
		}
		doc.Events = append(doc.Events, e)
	}
	return doc, nil
}

// Kinds of event types. Freeze pauses the VM for seconds with its memory
// kept; Penny reports it and leaves the pods alone (reclaim.Disruptive).
var eventKinds = map[string]telemetryv1.ReclaimKind{
	"Preempt":   telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
	"Terminate": telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION,
	"Reboot":    telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
	"Redeploy":  telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
	"Freeze":    telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
}

// Notices returns the document's events that concern vmName: Azure sends
// every VM of an availability set or placement group the events of all of
// them, and only those listing this VM in Resources are this node's. An
// event of a type Penny does not know is skipped. minNotice is the deadline
// of an event that gives no NotBefore (Azure promises Preempt 30 s).
func (d *Document) Notices(vmName string, detected time.Time, minNotice time.Duration) []notice.Notice {
	var out []notice.Notice
	for _, e := range d.Events {
		kind, known := eventKinds[e.EventType]
		if !known || !lists(e.Resources, vmName) {
			continue
		}
		deadline, estimated := detected.Add(minNotice), true
		switch {
		case e.EventStatus == "Started":
			deadline = detected
		case e.NotBefore != "":
			deadline, _ = parseNotBefore(e.NotBefore)
			estimated = false
		}
		out = append(out, notice.Notice{
			ID:   "azure-" + e.EventID,
			Kind: kind, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE,
			Action: e.EventType, Detected: detected, Deadline: deadline, Estimated: estimated,
		})
	}
	return out
}

// lists reports whether resources names vm; Azure's VM names are
// case-insensitive.
func lists(resources []string, vm string) bool {
	return slices.ContainsFunc(resources, func(r string) bool { return strings.EqualFold(r, vm) })
}

// EventID returns the Azure event id of a notice id made by Notices.
func EventID(noticeID string) (string, bool) {
	return strings.CutPrefix(noticeID, "azure-")
}

func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Azure writes NotBefore as RFC 1123 in GMT ("Mon, 19 Sep 2016 18:29:47
// GMT"; UTC is taken as the same). Any other zone abbreviation is refused:
// Go's parser would take "PST" or "EST" as UTC, or as whatever offset the
// agent's local zone gives it, and move the deadline by hours without a word.
var notBeforeLayouts = []string{"Mon, 02 Jan 2006 15:04:05 GMT", "Mon, 02 Jan 2006 15:04:05 UTC"}

func parseNotBefore(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range notBeforeLayouts {
		t, err := time.Parse(l, s)
		if err != nil {
			continue
		}
		if t.Year() < 2000 || t.Year() > 9999 {
			return time.Time{}, fmt.Errorf("%s is not a plausible time", notice.Excerpt([]byte(s)))
		}
		return t.UTC(), nil
	}
	if _, err := time.Parse("Mon, 02 Jan 2006 15:04:05", s); err == nil {
		return time.Time{}, fmt.Errorf("%s has no time zone: want GMT, as Scheduled Events writes it (e.g. \"Mon, 19 Sep 2016 18:29:47 GMT\")", notice.Excerpt([]byte(s)))
	}
	if t, err := time.Parse(time.RFC1123, s); err == nil {
		zone, _ := t.Zone()
		return time.Time{}, fmt.Errorf("%s is in time zone %q, which Scheduled Events never writes: want GMT, like \"Mon, 19 Sep 2016 18:29:47 GMT\"", notice.Excerpt([]byte(s)), zone)
	}
	return time.Time{}, fmt.Errorf("%s is not a time like \"Mon, 19 Sep 2016 18:29:47 GMT\"", notice.Excerpt([]byte(s)))
}
