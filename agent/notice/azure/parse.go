package azure

import (
	"cmp"
	"errors"
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
	// Unread are the events that could not be taken: not well-formed, or
	// of an EventType or EventStatus that Scheduled Events does not
	// document.
	Unread []Unread
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

// Unread is an event of the document that could not be taken.
type Unread struct {
	// EventID is the event's EventId as it reads, "" when it does not read
	// as a string.
	EventID string
	// Resources are the VMs the event lists, when ResourcesRead.
	Resources     []string
	ResourcesRead bool
	// Err names the event's index, the field and its value.
	Err error
}

// concerns reports whether the event may be vm's: it lists vm, or its
// Resources could not be read.
func (u Unread) concerns(vm string) bool {
	return !u.ResourcesRead || lists(u.Resources, vm)
}

// MaxEvents bounds a document; Azure lists the events of one availability
// set or scale-set placement group, a few at a time.
const MaxEvents = 256

// ParseDocument reads a Scheduled Events document strictly: every required
// member present, by its exact name, with its JSON type; nothing after the
// document. A document that is not that is an error. An event that is not
// is judged on its own: it goes to Unread, and the others are still read,
// so that one odd event does not hide those beside it.
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
		e, resourcesRead, err := parseEvent(fmt.Sprintf("%s: Events[%d]", what, i), raw)
		if err != nil {
			doc.Unread = append(doc.Unread, Unread{EventID: e.EventID, Resources: e.Resources, ResourcesRead: resourcesRead, Err: err})
			continue
		}
		doc.Events = append(doc.Events, e)
	}
	return doc, nil
}

// parseEvent reads one event, named p in errors. With an error, e holds the
// EventId and Resources when they read, and resourcesRead says whether
// Resources did: they tell an event that cannot be read from this VM's.
func parseEvent(p string, raw []byte) (e Event, resourcesRead bool, err error) {
	eo, err := notice.ParseObject(p, raw)
	if err != nil {
		return Event{}, false, err
	}
	e = Event{DurationInSeconds: -1}
	id, _, errID := eo.String("EventId", true)
	resources, _, errResources := eo.Strings("Resources", true)
	e.EventID, e.Resources, resourcesRead = id, resources, errResources == nil
	if err := cmp.Or(errID, errResources); err != nil {
		return e, resourcesRead, err
	}
	for _, f := range []struct {
		key      string
		v        *string
		required bool
	}{
		{"EventType", &e.EventType, true}, {"EventStatus", &e.EventStatus, true},
		{"NotBefore", &e.NotBefore, true}, {"ResourceType", &e.ResourceType, false},
		{"Description", &e.Description, false}, {"EventSource", &e.EventSource, false},
	} {
		if *f.v, _, err = eo.String(f.key, f.required); err != nil {
			return e, resourcesRead, err
		}
	}
	if d, ok, err := eo.Int("DurationInSeconds", false); err != nil {
		return e, resourcesRead, err
	} else if ok {
		e.DurationInSeconds = d
	}
	if !validID(e.EventID) {
		return e, resourcesRead, fmt.Errorf("%s: EventId %s is not an event id", p, notice.Excerpt([]byte(e.EventID)))
	}
	if e.EventStatus != "Scheduled" && e.EventStatus != "Started" {
		return e, resourcesRead, fmt.Errorf("%s: EventStatus %s is not Scheduled or Started", p, notice.Excerpt([]byte(e.EventStatus)))
	}
	// An EventType Azure adds later is neither a notice nor skipped: what
	// it does to the VM is unknown (a Freeze leaves the pods be, a Preempt
	// deletes the VM), and someone must see it.
	if _, known := eventKinds[e.EventType]; !known {
		return e, resourcesRead, fmt.Errorf("%s: EventType %s is not Preempt, Terminate, Reboot, Redeploy or Freeze", p, notice.Excerpt([]byte(e.EventType)))
	}
	if e.NotBefore != "" {
		if _, err := parseNotBefore(e.NotBefore); err != nil {
			return e, resourcesRead, fmt.Errorf("%s: NotBefore: %w", p, err)
		}
	}
	return e, resourcesRead, nil
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
// them, and only those listing this VM in Resources are this node's.
// minNotice is the deadline of an event that gives no NotBefore (Azure
// promises Preempt 30 s).
//
// The error names each Unread event that may be this VM's (it lists the VM,
// or its Resources do not read), and each EventId listed for this VM again
// differently (the earlier deadline is taken), returned with the notices of the others:
// the check is a failed one then, and withdraws no notice, since the event
// that cannot be read may be one already seen.
func (d *Document) Notices(vmName string, detected time.Time, minNotice time.Duration) ([]notice.Notice, error) {
	var out []notice.Notice
	var unread []error
	// at is each id's place in out (notice.Relist).
	at := map[string]int{}
	for _, e := range d.Events {
		if !lists(e.Resources, vmName) {
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
		n := notice.Notice{
			ID:   "azure-" + e.EventID,
			Kind: eventKinds[e.EventType], Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE,
			Action: e.EventType, Detected: detected, Deadline: deadline, Estimated: estimated,
		}
		if i, dup := at[n.ID]; dup {
			if before := out[i].Action; notice.Relist(&out[i], n) {
				unread = append(unread, fmt.Errorf("scheduled events: EventId %s is listed twice for this VM, differently (%s and %s); the earlier deadline is taken", notice.Excerpt([]byte(e.EventID)), notice.Excerpt([]byte(before)), notice.Excerpt([]byte(n.Action))))
			}
			continue
		}
		at[n.ID] = len(out)
		out = append(out, n)
	}
	for _, u := range d.Unread {
		if u.concerns(vmName) {
			unread = append(unread, u.Err)
		}
	}
	return out, errors.Join(unread...)
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
