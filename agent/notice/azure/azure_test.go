package azure_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

const vm = "aks-spot-12345678-vmss_3"

func start(t *testing.T) (*metadatatest.Azure, *azure.Source) {
	t.Helper()
	return startWithTimeout(t, metadatatest.RequestTimeout)
}

func startWithTimeout(t *testing.T, timeout time.Duration) (*metadatatest.Azure, *azure.Source) {
	t.Helper()
	f := metadatatest.NewAzure(vm)
	t.Cleanup(f.Close)
	return f, azure.New(azure.Options{Endpoint: f.URL(), Interval: 20 * time.Millisecond, RequestTimeout: timeout, FirstRequestTimeout: timeout})
}

// notices parses a document and returns this VM's notices.
func notices(body []byte) ([]notice.Notice, error) {
	d, err := azure.ParseDocument(body)
	if err != nil {
		return nil, err
	}
	return d.Notices(vm, time.Now(), azure.DefaultPreemptNotice)
}

func TestPreemptOfThisVMIsANotice(t *testing.T) {
	f, src := start(t)
	notBefore := time.Now().Add(30 * time.Second).Truncate(time.Second).UTC()
	f.Preempt("A123BC45-1234-5678-AB90-ABCDEF123456", notBefore)
	notices, err := src.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 {
		t.Fatalf("got %v, want one notice", notices)
	}
	n := notices[0]
	if n.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION || n.Action != "Preempt" || !n.Deadline.Equal(notBefore) || n.ID != "azure-A123BC45-1234-5678-AB90-ABCDEF123456" {
		t.Errorf("notice %v, want a Preempt at %v", n, notBefore)
	}
	if f.Requests(metadatatest.AzureComputeName) != 1 {
		t.Errorf("the VM name was read %d times, want once", f.Requests(metadatatest.AzureComputeName))
	}
	if src.Incarnation() < 2 {
		t.Errorf("DocumentIncarnation %d not tracked", src.Incarnation())
	}
}

func TestOnlyThisVMsKnownEventsCount(t *testing.T) {
	f, src := start(t)
	soon := time.Now().Add(5 * time.Minute).UTC().Format(http.TimeFormat)
	f.AddEvent(metadatatest.AzureEvent{EventID: "neighbour", EventType: "Preempt", Resources: []string{"aks-spot-12345678-vmss_4"}, NotBefore: soon})
	f.AddEvent(metadatatest.AzureEvent{EventID: "freeze", EventType: "Freeze", NotBefore: soon})
	f.AddEvent(metadatatest.AzureEvent{EventID: "reboot", EventType: "Reboot", NotBefore: soon})
	f.AddEvent(metadatatest.AzureEvent{EventID: "term", EventType: "Terminate", Resources: []string{strings.ToUpper(vm)}, NotBefore: soon})
	notices, err := src.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]telemetryv1.ReclaimKind{}
	for _, n := range notices {
		got[n.ID] = n.Kind
	}
	want := map[string]telemetryv1.ReclaimKind{
		"azure-freeze": telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		"azure-reboot": telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		"azure-term":   telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION,
	}
	if len(got) != len(want) {
		t.Fatalf("notices %v, want %v (a neighbour's event is not this node's)", got, want)
	}
	for id, k := range want {
		if got[id] != k {
			t.Errorf("%s: kind %v, want %v", id, got[id], k)
		}
	}
}

func TestAcknowledgeStartsTheEvent(t *testing.T) {
	f, src := start(t)
	f.Preempt("ev-1", time.Now().Add(30*time.Second))
	before, _ := src.Check(context.Background())
	if err := src.Acknowledge(context.Background(), before[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Acked("ev-1"); !ok {
		t.Fatal("the fake did not receive the StartRequests")
	}
	after, err := src.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || !after[0].Deadline.Before(before[0].Deadline) {
		t.Errorf("after the acknowledgement: %v; the started event's deadline must be now", after)
	}
	if err := src.Acknowledge(context.Background(), "aws-spot-x"); err == nil {
		t.Error("acknowledging a notice that is not Azure's did not fail")
	}
}

func TestMalformedAnswersAreErrorsNeverNotices(t *testing.T) {
	ev := func(fields string) string {
		return `{"DocumentIncarnation":2,"Events":[{` + fields + `}]}`
	}
	good := `"EventId":"e1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["` + vm + `"],"EventStatus":"Scheduled","NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT"`
	cases := []struct {
		name  string
		fault metadatatest.Fault
		want  string
	}{
		{"garbage", metadatatest.Garbage("<html/>"), "want a JSON object"},
		{"truncated JSON", metadatatest.Garbage(ev(good)[:60]), "not a JSON document"},
		{"truncated connection", metadatatest.Truncated(ev(good)[:60]), "truncated"},
		{"incarnation as string", metadatatest.Garbage(`{"DocumentIncarnation":"2","Events":[]}`), `"DocumentIncarnation" is a JSON string, want an integer`},
		{"incarnation fractional", metadatatest.Garbage(`{"DocumentIncarnation":2.5,"Events":[]}`), `"DocumentIncarnation" is a JSON number, want an integer`},
		{"incarnation null", metadatatest.Garbage(`{"DocumentIncarnation":null,"Events":[]}`), `"DocumentIncarnation" is a JSON null, want an integer`},
		{"no incarnation", metadatatest.Garbage(`{"Events":[]}`), `"DocumentIncarnation" is missing`},
		{"events not a list", metadatatest.Garbage(`{"DocumentIncarnation":1,"Events":{}}`), `"Events" is a JSON object, want a list`},
		{"events missing", metadatatest.Garbage(`{"DocumentIncarnation":1}`), `"Events" is missing`},
		{"event not an object", metadatatest.Garbage(`{"DocumentIncarnation":1,"Events":["Preempt"]}`), "Events[0]: want a JSON object"},
		{"resources not strings", metadatatest.Garbage(ev(strings.Replace(good, `["`+vm+`"]`, `[3]`, 1))), `"Resources[0]" is a JSON number`},
		{"wrong-case key", metadatatest.Garbage(ev(strings.Replace(good, `"EventType"`, `"eventtype"`, 1))), `"EventType" is missing`},
		{"bad status", metadatatest.Garbage(ev(strings.Replace(good, "Scheduled", "Soon", 1))), "EventStatus"},
		{"bad NotBefore", metadatatest.Garbage(ev(strings.Replace(good, "Mon, 19 Sep 2016 18:29:47 GMT", "tomorrow", 1))), "NotBefore"},
		{"bad event id", metadatatest.Garbage(ev(strings.Replace(good, `"e1"`, `"a b"`, 1))), "not an event id"},
		{"trailing data", metadatatest.Garbage(ev(good) + "{}"), "data after"},
		{"huge body", metadatatest.Huge(10<<20, false), "over the"},
		{"huge chunked body", metadatatest.Huge(10<<20, true), "over the"},
		{"slow server", metadatatest.Hang(5 * time.Second), "no complete answer within 300ms"},
		{"dripping body", metadatatest.Drip(ev(good), 100*time.Millisecond), "no complete answer within 300ms"},
		{"connection reset", metadatatest.Reset(), "scheduledevents"},
		{"server error", metadatatest.Status(500, "x"), "answered 500"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The cases of an answer that does not come in time.
			timeout := metadatatest.RequestTimeout
			if strings.Contains(c.want, "no complete answer") {
				timeout = metadatatest.ShortTimeout
			}
			f, src := startWithTimeout(t, timeout)
			f.SetFault(metadatatest.AzureScheduledEvents, c.fault)
			notices, err := src.Check(context.Background())
			if err == nil {
				t.Fatalf("no error for a %s answer", c.name)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if len(notices) != 0 {
				t.Errorf("false notice: %v", notices)
			}
		})
	}
}

// Each event is judged on its own. One of this VM's that the agent cannot
// read (an EventStatus or EventType Scheduled Events does not document, a
// NotBefore it cannot read) is an error that names it and hides no event
// listed beside it. One that lists only other VMs is not this node's, read
// or not, and is no error.
func TestOddEventHidesNoOther(t *testing.T) {
	f, src := start(t)
	soon := time.Now().Add(15 * time.Minute).UTC().Truncate(time.Second)
	const neighbour = "aks-spot-12345678-vmss_4"
	f.AddEvent(metadatatest.AzureEvent{EventID: "pending", EventType: "Reboot", EventStatus: "Pending", NotBefore: soon.Format(http.TimeFormat)})
	f.AddEvent(metadatatest.AzureEvent{EventID: "preempt", EventType: "Preempt", NotBefore: soon.Format(http.TimeFormat)})
	f.AddEvent(metadatatest.AzureEvent{EventID: "hibernate", EventType: "Hibernate", NotBefore: soon.Format(http.TimeFormat)})
	f.AddEvent(metadatatest.AzureEvent{EventID: "tomorrow", EventType: "Reboot", NotBefore: "tomorrow"})
	f.AddEvent(metadatatest.AzureEvent{EventID: "theirs", EventType: "Hibernate", EventStatus: "Pending", Resources: []string{neighbour}, NotBefore: "tomorrow"})
	notices, err := src.Check(context.Background())
	if len(notices) != 1 || notices[0].ID != "azure-preempt" || !notices[0].Deadline.Equal(soon) {
		t.Errorf("notices %v; want the Preempt at %v alone", notices, soon)
	}
	if err == nil {
		t.Fatal("no error for this VM's events that cannot be read")
	}
	for _, w := range []string{
		`scheduled events: Events[0]: EventStatus "Pending" is not Scheduled or Started`,
		`scheduled events: Events[2]: EventType "Hibernate" is not Preempt, Terminate, Reboot, Redeploy or Freeze`,
		`scheduled events: Events[3]: NotBefore: "tomorrow" is not a time`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "Events[4]") {
		t.Errorf("error %q names the event of another VM", err)
	}
	// The Preempt is acknowledged as if the others were not there; an
	// event that cannot be read is not, and not taken for one gone.
	if err := src.Acknowledge(context.Background(), "azure-preempt"); err != nil {
		t.Errorf("acknowledging the Preempt: %v", err)
	}
	if err := src.Acknowledge(context.Background(), "azure-pending"); err == nil || errors.Is(err, notice.ErrNotOurs) || !strings.Contains(err.Error(), `EventStatus "Pending"`) {
		t.Errorf("Acknowledge(pending) = %v, want an error naming its EventStatus that is not notice.ErrNotOurs", err)
	}
}

// Scheduled Events writes NotBefore in GMT. Go's RFC 1123 parser takes an
// unknown zone abbreviation as UTC, or as the agent's local zone has it:
// "18:29:47 PST" would have been 8 hours off, silently.
func TestNotBeforeOutsideGMTIsRefused(t *testing.T) {
	doc := func(notBefore string) []byte {
		return []byte(`{"DocumentIncarnation":2,"Events":[{"EventId":"e1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["` + vm + `"],"EventStatus":"Scheduled","NotBefore":"` + notBefore + `"}]}`)
	}
	want := time.Date(2030, 9, 19, 18, 29, 47, 0, time.UTC)
	for _, zone := range []string{"GMT", "UTC"} {
		n, err := notices(doc("Thu, 19 Sep 2030 18:29:47 " + zone))
		if err != nil {
			t.Errorf("NotBefore in %s: %v", zone, err)
			continue
		}
		if len(n) != 1 || !n[0].Deadline.Equal(want) {
			t.Errorf("NotBefore in %s: notices %v, want one with deadline %v", zone, n, want)
		}
	}
	for _, zone := range []string{"PST", "EST", "CET", "XYZ"} {
		_, err := notices(doc("Thu, 19 Sep 2030 18:29:47 " + zone))
		if err == nil {
			t.Errorf("NotBefore in %s accepted; want an error", zone)
			continue
		}
		for _, w := range []string{"Events[0]: NotBefore", zone, "GMT"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("NotBefore in %s: error %q does not say %q", zone, err, w)
			}
		}
	}
}

func TestVMNameFailuresAreClear(t *testing.T) {
	f, src := start(t)
	f.SetFault(metadatatest.AzureComputeName, metadatatest.Status(404, "nope"))
	f.Preempt("e", time.Now().Add(time.Minute))
	notices, err := src.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "this VM's name") || len(notices) != 0 {
		t.Fatalf("Check = %v, %v; want a clear error about the VM name and no notice", notices, err)
	}
}

// Azure starts an acknowledged event for every VM its Resources list. An
// agent that acknowledged an event it shares with its neighbours would cut
// short their notice while their pods may still be checkpointing: it
// acknowledges only an event that names its VM alone, as listed now.
func TestAcknowledgeOnlyEventsOfThisVMAlone(t *testing.T) {
	f, src := start(t)
	ctx := context.Background()
	soon := time.Now().Add(15 * time.Minute).UTC().Format(http.TimeFormat)
	const neighbour = "aks-spot-12345678-vmss_4"
	f.AddEvent(metadatatest.AzureEvent{EventID: "shared", EventType: "Reboot", Resources: []string{vm, neighbour}, NotBefore: soon})
	f.AddEvent(metadatatest.AzureEvent{EventID: "theirs", EventType: "Preempt", Resources: []string{neighbour}, NotBefore: soon})
	notices, err := src.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 || notices[0].ID != "azure-shared" {
		t.Fatalf("notices %v, want the shared event only: it concerns this VM too", notices)
	}
	for id, want := range map[string]string{
		"shared": "not this VM", "theirs": "not this VM", "gone": "no longer lists it",
	} {
		err := src.Acknowledge(ctx, "azure-"+id)
		if _, acked := f.Acked(id); acked {
			t.Errorf("event %s acknowledged: Azure would start it for %s", id, neighbour)
		}
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, notice.ErrNotOurs) {
			t.Errorf("Acknowledge(%s) = %v, want an error saying %q that is notice.ErrNotOurs", id, err, want)
		}
	}
	f.AddEvent(metadatatest.AzureEvent{EventID: "mine", EventType: "Reboot", Resources: []string{strings.ToUpper(vm)}, NotBefore: soon})
	if err := src.Acknowledge(ctx, "azure-mine"); err != nil {
		t.Fatalf("acknowledging this VM's own event: %v", err)
	}
	if _, acked := f.Acked("mine"); !acked {
		t.Error("this VM's own event was not acknowledged")
	}
}

// NotBefore is a deadline only while the event is Scheduled; Azure empties
// it once the event started, and starts events without notice after a host
// failure (a Reboot already Started).
func TestDeadlineFromNotBeforeAndEventStatus(t *testing.T) {
	detected := time.Date(2030, 9, 19, 18, 0, 0, 0, time.UTC)
	notBefore := "Thu, 19 Sep 2030 18:29:47 GMT"
	for name, c := range map[string]struct {
		status, notBefore string
		deadline          time.Time
		estimated         bool
	}{
		"scheduled with NotBefore":    {"Scheduled", notBefore, time.Date(2030, 9, 19, 18, 29, 47, 0, time.UTC), false},
		"scheduled without NotBefore": {"Scheduled", "", detected.Add(azure.DefaultPreemptNotice), true},
		"started":                     {"Started", "", detected, true},
		"started, NotBefore kept":     {"Started", notBefore, detected, true},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := azure.ParseDocument([]byte(`{"DocumentIncarnation":3,"Events":[{"EventId":"e1","EventType":"Reboot","ResourceType":"VirtualMachine","Resources":["` + vm + `"],"EventStatus":"` + c.status + `","NotBefore":"` + c.notBefore + `","EventSource":"Platform","DurationInSeconds":-1}]}`))
			if err != nil {
				t.Fatal(err)
			}
			n, err := d.Notices(vm, detected, azure.DefaultPreemptNotice)
			if err != nil {
				t.Fatal(err)
			}
			if len(n) != 1 || !n[0].Deadline.Equal(c.deadline) || n[0].Estimated != c.estimated {
				t.Fatalf("notices %v, want one with deadline %v (estimated %v)", n, c.deadline, c.estimated)
			}
		})
	}
}

// A NotBefore without a zone is refused, naming the event and the field.
func TestNotBeforeWithoutZoneIsRefused(t *testing.T) {
	_, err := notices([]byte(`{"DocumentIncarnation":2,"Events":[{"EventId":"e1","EventType":"Preempt","Resources":["` + vm + `"],"EventStatus":"Scheduled","NotBefore":"Thu, 19 Sep 2030 18:29:47"}]}`))
	if err == nil {
		t.Fatal("NotBefore without a zone accepted")
	}
	for _, w := range []string{"Events[0]: NotBefore", "has no time zone", "GMT"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

// The first request for the document turns Scheduled Events on for the VM,
// and Azure documents that its answer may take up to two minutes: it gets
// FirstRequestTimeout, later ones RequestTimeout.
func TestFirstRequestMayTakeLongerThanLaterOnes(t *testing.T) {
	f := metadatatest.NewAzure(vm)
	t.Cleanup(f.Close)
	// The name is given: only the document's requests are timed here.
	src := azure.New(azure.Options{Endpoint: f.URL(), VMName: vm, RequestTimeout: metadatatest.ShortTimeout, FirstRequestTimeout: metadatatest.RequestTimeout})
	// The first answer comes after RequestTimeout, as Scheduled Events turns
	// on; a later one not before the client gives up, however long a loaded
	// machine takes to fire its timer.
	slow := func(w http.ResponseWriter, r *http.Request) {
		if f.Requests(metadatatest.AzureScheduledEvents) > 1 {
			<-r.Context().Done()
			return
		}
		select {
		case <-time.After(3 * metadatatest.ShortTimeout):
		case <-r.Context().Done():
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"DocumentIncarnation": 1, "Events": []any{}})
	}
	f.SetFault(metadatatest.AzureScheduledEvents, slow)
	if notices, err := src.Check(context.Background()); err != nil || len(notices) != 0 {
		t.Fatalf("first check = %v, %v; want it to wait for Scheduled Events to turn on", notices, err)
	}
	if _, err := src.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "no complete answer within 300ms") {
		t.Fatalf("second check: error %v, want the request timeout once Scheduled Events answered", err)
	}
}

// A member given twice is an error naming it: encoding/json keeps the last,
// and an event whose second Resources names another VM was taken for that
// VM's, this VM's Preempt dropped without a word.
func TestRepeatedMemberIsAnErrorNotTheLast(t *testing.T) {
	for name, doc := range map[string]string{
		"event":    `{"DocumentIncarnation":1,"Events":[{"EventId":"e1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["` + vm + `"],"EventStatus":"Scheduled","NotBefore":"","Resources":["aks-spot-12345678-vmss_4"]}]}`,
		"document": `{"DocumentIncarnation":1,"Events":[{"EventId":"e1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["` + vm + `"],"EventStatus":"Scheduled","NotBefore":""}],"Events":[]}`,
	} {
		_, err := notices([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), "more than once") {
			t.Errorf("%s: error %v, want one naming the repeated member", name, err)
		}
	}
}

// An event listed twice for this VM under one EventId is one notice and an
// error naming it: as two notices with one id, the watcher moved the
// deadline from one's NotBefore to the other's and back on every check. One
// listed again for another VM alone is that VM's, and no error.
func TestEventListedTwiceIsOneNotice(t *testing.T) {
	event := func(day int, resource string) string {
		return fmt.Sprintf(`{"EventId":"e1","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":[%q],"EventStatus":"Scheduled","NotBefore":"Thu, %d Sep 2030 18:29:47 GMT"}`, resource, day)
	}
	n, err := notices([]byte(`{"DocumentIncarnation":1,"Events":[` + event(19, vm) + `,` + event(20, vm) + `]}`))
	if len(n) != 1 || !n[0].Deadline.Equal(time.Date(2030, 9, 19, 18, 29, 47, 0, time.UTC)) {
		t.Errorf("notices %v, want the first event's alone", n)
	}
	if err == nil || !strings.Contains(err.Error(), `EventId "e1" is listed twice for this VM, differently ("Preempt" and "Preempt"); the earlier deadline is taken`) {
		t.Errorf("error %v, want one naming the event listed twice", err)
	}
	// The earlier deadline, wherever it is listed: the checkpoints are not
	// late.
	n, err = notices([]byte(`{"DocumentIncarnation":1,"Events":[` + event(20, vm) + `,` + event(19, vm) + `]}`))
	if len(n) != 1 || !n[0].Deadline.Equal(time.Date(2030, 9, 19, 18, 29, 47, 0, time.UTC)) || err == nil {
		t.Errorf("notices %v, %v; want the earlier event's alone, and an error", n, err)
	}
	// A copy says nothing new.
	n, err = notices([]byte(`{"DocumentIncarnation":1,"Events":[` + event(19, vm) + `,` + event(19, vm) + `]}`))
	if len(n) != 1 || err != nil {
		t.Errorf("an event listed twice alike: notices %v, %v; want one, no error", n, err)
	}
	n, err = notices([]byte(`{"DocumentIncarnation":1,"Events":[` + event(19, "aks-spot-12345678-vmss_4") + `,` + event(20, vm) + `]}`))
	if len(n) != 1 || !n[0].Deadline.Equal(time.Date(2030, 9, 20, 18, 29, 47, 0, time.UTC)) || err != nil {
		t.Errorf("notices %v, %v; want this VM's event alone, no error", n, err)
	}
}
