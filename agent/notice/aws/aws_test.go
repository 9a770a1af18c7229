package aws_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/aws"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

func start(t *testing.T) (*metadatatest.AWS, *aws.Source) {
	t.Helper()
	return startWithTimeout(t, metadatatest.RequestTimeout)
}

func startWithTimeout(t *testing.T, timeout time.Duration) (*metadatatest.AWS, *aws.Source) {
	t.Helper()
	f := metadatatest.NewAWS()
	t.Cleanup(f.Close)
	return f, aws.New(aws.Options{Endpoint: f.URL(), Interval: 20 * time.Millisecond, RequestTimeout: timeout})
}

func TestNoNoticeWhenIMDSHasNone(t *testing.T) {
	_, src := start(t)
	notices, err := src.Check(context.Background())
	if err != nil || len(notices) != 0 {
		t.Fatalf("Check = %v, %v; want no notices and no error", notices, err)
	}
}

func TestSpotInterruptionRebalanceAndMaintenance(t *testing.T) {
	f, src := start(t)
	at := time.Now().Add(2 * time.Minute).Truncate(time.Second).UTC()
	f.SetSpotInterruption("terminate", at)
	f.SetRebalance(at.Add(-time.Minute))
	f.SetScheduled(`[
	  {"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2030 09:17:23 GMT","State":"active"},
	  {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"done","EventId":"instance-event-old","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"completed"}
	]`)
	notices, err := src.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(notices) != 3 {
		t.Fatalf("got %d notices, want 3 (instance-action, rebalance, the active event): %v", len(notices), notices)
	}
	spot, reb, maint := notices[0], notices[1], notices[2]
	if spot.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION || spot.Action != "terminate" || !spot.Deadline.Equal(at) {
		t.Errorf("instance-action notice = %v, want a terminate spot interruption at %v", spot, at)
	}
	if reb.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION || !reb.Deadline.IsZero() {
		t.Errorf("rebalance notice = %v, want a recommendation without deadline", reb)
	}
	wantMaint := time.Date(2030, 1, 21, 9, 0, 43, 0, time.UTC)
	if maint.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE || maint.Action != "system-reboot" || !maint.Deadline.Equal(wantMaint) || maint.ID != "aws-instance-event-0d59937288b749b32" {
		t.Errorf("maintenance notice = %v, want system-reboot at %v", maint, wantMaint)
	}
	// The id is stable: a second check (or a restarted agent) sees the same.
	again, _ := src.Check(context.Background())
	if again[0].ID != spot.ID {
		t.Errorf("id changed between checks: %q then %q", spot.ID, again[0].ID)
	}
}

func TestSessionTokenReusedAndRefreshedOn401(t *testing.T) {
	f, src := start(t)
	for i := 0; i < 3; i++ {
		if _, err := src.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if f.Tokens() != 1 {
		t.Fatalf("%d tokens for 3 checks, want 1 (the session token is reused)", f.Tokens())
	}
	f.RevokeTokens()
	f.SetSpotInterruption("stop", time.Now().Add(2*time.Minute))
	notices, err := src.Check(context.Background())
	if err != nil {
		t.Fatalf("check after the token was revoked: %v (a 401 must get a fresh token)", err)
	}
	if len(notices) != 1 || notices[0].Action != "stop" {
		t.Fatalf("after the token refresh: %v, want the stop notice", notices)
	}
	if f.Tokens() != 2 {
		t.Errorf("%d tokens, want 2", f.Tokens())
	}
}

func TestMalformedAnswersAreErrorsNeverNotices(t *testing.T) {
	valid := `{"action":"terminate","time":"2030-01-01T00:00:00Z"}`
	cases := []struct {
		name  string
		fault metadatatest.Fault
		want  string // in the error
	}{
		{"garbage", metadatatest.Garbage("<html>captive portal</html>"), "want a JSON object"},
		{"truncated JSON", metadatatest.Garbage(valid[:30]), "not a JSON document"},
		{"truncated connection", metadatatest.Truncated(valid[:30]), "truncated"},
		{"wrong type", metadatatest.Garbage(`{"action":1,"time":"2030-01-01T00:00:00Z"}`), `"action" is a JSON number, want a string`},
		{"wrong time type", metadatatest.Garbage(`{"action":"terminate","time":1893456000}`), `"time" is a JSON number, want a string`},
		{"null", metadatatest.Garbage(`null`), "want a JSON object"},
		{"list", metadatatest.Garbage(`[` + valid + `]`), "want a JSON object"},
		{"empty object", metadatatest.Garbage(`{}`), `"action" is missing`},
		{"unknown action", metadatatest.Garbage(`{"action":"explode","time":"2030-01-01T00:00:00Z"}`), `action "explode"`},
		{"bad time", metadatatest.Garbage(`{"action":"terminate","time":"soon"}`), `"soon" is not a time`},
		{"trailing data", metadatatest.Garbage(valid + `{"action":"stop"}`), "data after the JSON document"},
		{"huge body", metadatatest.Huge(10<<20, false), "over the"},
		{"huge chunked body", metadatatest.Huge(10<<20, true), "over the"},
		{"slow server", metadatatest.Hang(5 * time.Second), "no complete answer within 300ms"},
		{"dripping body", metadatatest.Drip(valid, 100*time.Millisecond), "no complete answer within 300ms"},
		{"connection reset", metadatatest.Reset(), "GET http://127.0.0.1"},
		{"server error", metadatatest.Status(500, "internal"), "answered 500"},
		{"forbidden", metadatatest.Status(403, "no"), "answered 403"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The cases of an answer that does not come in time.
			timeout := metadatatest.RequestTimeout
			if strings.Contains(c.want, "no complete answer") {
				timeout = metadatatest.ShortTimeout
			}
			f, src := startWithTimeout(t, timeout)
			f.SetFault(metadatatest.AWSInstanceAction, c.fault)
			notices, err := src.Check(context.Background())
			if err == nil {
				t.Fatalf("no error for a %s answer", c.name)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "instance-action") {
				t.Errorf("error %q does not name the document", err)
			}
			if len(notices) != 0 {
				t.Errorf("false notice from a %s answer: %v", c.name, notices)
			}
		})
	}
}

func TestTokenEndpointFailuresAreClear(t *testing.T) {
	f, src := startWithTimeout(t, metadatatest.ShortTimeout)
	f.SetFault("/latest/api/token", metadatatest.Hang(5*time.Second))
	_, err := src.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "IMDSv2 session token") || !strings.Contains(err.Error(), "hop limit") {
		t.Fatalf("error %v does not explain the token failure", err)
	}
	f.SetFault("/latest/api/token", metadatatest.Garbage("a token\nwith lines"))
	if _, err := src.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "malformed token") {
		t.Fatalf("error %v does not refuse a malformed token", err)
	}
}

func TestMalformedScheduledEventsAndRebalance(t *testing.T) {
	for name, c := range map[string]struct{ path, body, want string }{
		"scheduled not a list":   {metadatatest.AWSScheduled, `{"NotBefore":"x"}`, "want a JSON list"},
		"scheduled missing code": {metadatatest.AWSScheduled, `[{"NotBefore":"21 Jan 2030 09:00:43 GMT","EventId":"e","State":"active"}]`, `"Code" is missing`},
		"scheduled bad state":    {metadatatest.AWSScheduled, `[{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"e","State":"maybe"}]`, `State "maybe"`},
		"scheduled bad time":     {metadatatest.AWSScheduled, `[{"NotBefore":"tomorrow","Code":"system-reboot","EventId":"e","State":"active"}]`, "NotBefore"},
		"scheduled bad id":       {metadatatest.AWSScheduled, `[{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"a b","State":"active"}]`, "not an event id"},
		"scheduled bad code":     {metadatatest.AWSScheduled, `[{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"a reboot","EventId":"e","State":"active"}]`, `Code "a reboot" is not an event code`},
		"rebalance wrong type":   {metadatatest.AWSRebalance, `{"noticeTime":true}`, `"noticeTime" is a JSON bool, want a string`},
	} {
		t.Run(name, func(t *testing.T) {
			f, src := start(t)
			f.SetFault(c.path, metadatatest.Garbage(c.body))
			notices, err := src.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
			if len(notices) != 0 {
				t.Errorf("false notice: %v", notices)
			}
		})
	}
}

// An active event whose code AWS has not documented (yet) is a disruption
// at its NotBefore like the five it has: refused, it failed the whole list,
// and the reboot listed beside it was not seen either.
func TestScheduledEventOfAnUndocumentedCodeIsANotice(t *testing.T) {
	notices, err := aws.ParseScheduledEvents([]byte(`[
		{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-1","State":"active"},
		{"NotBefore":"22 Jan 2030 09:00:43 GMT","Code":"instance-hardware-swap","EventId":"instance-event-2","State":"active"}]`), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(notices) != 2 || notices[1].ID != "aws-instance-event-2" || notices[1].Action != "instance-hardware-swap" ||
		notices[1].Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE || !notices[1].Deadline.Equal(time.Date(2030, 1, 22, 9, 0, 43, 0, time.UTC)) {
		t.Errorf("notices %+v; want the reboot and a maintenance notice for the undocumented code at its NotBefore", notices)
	}
}

// An undocumented code is the notice's action, and the telemetry API takes
// an action of at most 64 characters: a longer one was a notice the
// scheduler refused, with every report of the node that carried it, rather
// than an error naming the event and its Code.
func TestScheduledEventCodeTooLongForAReportIsAnError(t *testing.T) {
	long := strings.Repeat("x", 65)
	notices, err := aws.ParseScheduledEvents([]byte(`[
		{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-1","State":"active"},
		{"NotBefore":"22 Jan 2030 09:00:43 GMT","Code":"`+long+`","EventId":"instance-event-2","State":"active"}]`), time.Now())
	for _, n := range notices {
		if verr := n.Validate(); verr != nil {
			t.Errorf("notice %v would be refused: %v", n.ID, verr)
		}
	}
	if len(notices) != 1 || notices[0].ID != "aws-instance-event-1" {
		t.Errorf("notices %v; want the reboot alone", notices)
	}
	if err == nil || !strings.Contains(err.Error(), "events/maintenance/scheduled[1]: Code") {
		t.Errorf("error %v; want one naming the second event's Code", err)
	}
}

// Each scheduled event is judged on its own. One AWS lists in a form the
// agent does not know (a State it does not document, a NotBefore it cannot
// read) is an error that names it, and hides neither the active event
// listed beside it nor the canceled one's being no notice.
func TestOddScheduledEventHidesNoActiveOne(t *testing.T) {
	f, src := start(t)
	f.SetScheduled(`[
		{"NotBefore":"21 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-1","State":"active"},
		{"NotBefore":"22 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-2","State":"paused"},
		{"NotBefore":"next week","Code":"system-reboot","EventId":"instance-event-3","State":"active"},
		{"NotBefore":"23 Jan 2030 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-4","State":"canceled"},
		{"NotBefore":"24 Jan 2030 09:00:43 GMT","EventId":"instance-event-5","State":"active"}]`)
	notices, err := src.Check(context.Background())
	if len(notices) != 1 || notices[0].ID != "aws-instance-event-1" || !notices[0].Deadline.Equal(time.Date(2030, 1, 21, 9, 0, 43, 0, time.UTC)) {
		t.Errorf("notices %v; want the active reboot instance-event-1 alone", notices)
	}
	if err == nil {
		t.Fatal("no error for the events that cannot be read")
	}
	for _, w := range []string{
		`events/maintenance/scheduled[1]: State "paused" is not active, completed or canceled`,
		`events/maintenance/scheduled[2]: NotBefore: "next week" is not a time`,
		`events/maintenance/scheduled[4]: "Code" is missing`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	for _, w := range []string{"[0]", "[3]"} {
		if strings.Contains(err.Error(), w) {
			t.Errorf("error %q names the well-formed event %s", err, w)
		}
	}
}

// IMDS writes scheduled events' times in GMT. Go's parser takes an unknown
// zone abbreviation as UTC, or as the agent's local zone has it: "09:00:43
// PST" would have been 8 hours off, silently.
func TestScheduledEventTimesOutsideGMTAreRefused(t *testing.T) {
	ev := func(notBefore string) []byte {
		return []byte(`[{"NotBefore":"` + notBefore + `","Code":"system-reboot","EventId":"instance-event-1","NotAfter":"21 Jan 2030 11:00:43 GMT","State":"active"}]`)
	}
	want := time.Date(2030, 1, 21, 9, 0, 43, 0, time.UTC)
	for _, zone := range []string{"GMT", "UTC"} {
		notices, err := aws.ParseScheduledEvents(ev("21 Jan 2030 09:00:43 "+zone), time.Now())
		if err != nil || len(notices) != 1 || !notices[0].Deadline.Equal(want) {
			t.Errorf("NotBefore in %s: %v, %v; want one notice at %v", zone, notices, err, want)
		}
	}
	for _, zone := range []string{"PST", "EST", "CET", "XYZ"} {
		notices, err := aws.ParseScheduledEvents(ev("21 Jan 2030 09:00:43 "+zone), time.Now())
		if err == nil {
			t.Errorf("NotBefore in %s accepted as %v; want an error", zone, notices)
			continue
		}
		for _, w := range []string{"[0]: NotBefore", zone, "GMT"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("NotBefore in %s: error %q does not say %q", zone, err, w)
			}
		}
	}
	// The same holds for the RFC 3339 documents, which take any layout.
	if n, err := aws.ParseInstanceAction([]byte(`{"action":"terminate","time":"21 Jan 2030 09:00:43 PST"}`), time.Now()); err == nil {
		t.Errorf("instance-action time in PST accepted as %v", n)
	}
}

func TestOneBrokenDocumentDoesNotHideAnother(t *testing.T) {
	f, src := start(t)
	f.SetFault(metadatatest.AWSScheduled, metadatatest.Garbage("garbage"))
	f.SetSpotInterruption("terminate", time.Now().Add(2*time.Minute))
	notices, err := src.Check(context.Background())
	if err == nil {
		t.Fatal("no error for the broken scheduled-events document")
	}
	if len(notices) != 1 || notices[0].Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION {
		t.Fatalf("notices %v: the spot interruption must still be reported", notices)
	}
}

// The watcher finds a notice with the first check that starts after it is
// published, and dates it by that check's read. Counted in requests, not
// wall time, so that a loaded machine's late timers cannot fail it.
func TestWatchDetectsWithinAnInterval(t *testing.T) {
	f := metadatatest.NewAWS()
	t.Cleanup(f.Close)
	// reads pairs each time the source asks for with how many requests for
	// the instance-action document the fake had received by then.
	var mu sync.Mutex
	reads := map[time.Time]int{}
	src := aws.New(aws.Options{Endpoint: f.URL(), Interval: 20 * time.Millisecond, RequestTimeout: metadatatest.RequestTimeout,
		Now: func() time.Time {
			now := time.Now().Round(0)
			mu.Lock()
			defer mu.Unlock()
			reads[now] = f.Requests(metadatatest.AWSInstanceAction)
			return now
		}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan notice.Notice, 1)
	w := notice.NewWatcher(src, testLogger(t), nil)
	w.OnNotice(func(n notice.Notice) { got <- n })
	go w.Run(ctx)
	// Published once the watcher has checked at least once.
	for deadline := time.Now().Add(5 * time.Second); f.Requests(metadatatest.AWSInstanceAction) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the watcher made no request within 5s")
		}
	}
	published := f.SetSpotInterruption("terminate", time.Now().Add(2*time.Minute))
	// Requests up to this one may have read the document before it was
	// published; the next one cannot.
	before := f.Requests(metadatatest.AWSInstanceAction)
	select {
	case n := <-got:
		mu.Lock()
		by, ok := reads[n.Detected]
		mu.Unlock()
		if !ok {
			t.Fatalf("detected at %v, a time the source's clock never gave", n.Detected)
		}
		if n.Detected.Before(published) {
			t.Errorf("detected %v before the notice was published", published.Sub(n.Detected))
		}
		if by > before+1 {
			t.Errorf("detected by request %d for the document; want the first after it was published (%d at most)", by, before+1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("notice not detected within 5s")
	}
}

// IMDS names three interruption behaviours; each is a Spot interruption at
// the notice's time.
func TestEveryInstanceActionIsASpotInterruption(t *testing.T) {
	for _, action := range []string{"terminate", "stop", "hibernate"} {
		t.Run(action, func(t *testing.T) {
			f, src := start(t)
			at := time.Now().Add(2 * time.Minute).Truncate(time.Second).UTC()
			f.SetSpotInterruption(action, at)
			notices, err := src.Check(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(notices) != 1 || notices[0].Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION || notices[0].Action != action || !notices[0].Deadline.Equal(at) {
				t.Fatalf("notices %v, want one %s spot interruption at %v", notices, action, at)
			}
		})
	}
}

// The session token is renewed a tenth of its lifetime before it expires,
// not only after IMDS refused it: a 401 costs a check a round trip.
func TestSessionTokenRefreshedBeforeItExpires(t *testing.T) {
	f := metadatatest.NewAWS()
	t.Cleanup(f.Close)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	src := aws.New(aws.Options{Endpoint: f.URL(), RequestTimeout: metadatatest.RequestTimeout, TokenTTL: time.Hour, Now: func() time.Time { return now }})
	for _, c := range []struct {
		after  time.Duration
		tokens int
	}{{0, 1}, {50 * time.Minute, 1}, {5 * time.Minute, 2}, {time.Minute, 2}} {
		now = now.Add(c.after)
		if _, err := src.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		if f.Tokens() != c.tokens {
			t.Fatalf("at %v: %d tokens, want %d", now, f.Tokens(), c.tokens)
		}
	}
}

// A time without a zone is refused, naming the document, the field and what
// to write instead.
func TestTimesWithoutZoneAreRefusedNamingTheField(t *testing.T) {
	for name, c := range map[string]struct{ path, body, field string }{
		"instance-action": {metadatatest.AWSInstanceAction, `{"action":"terminate","time":"2030-01-01T00:00:00"}`, "spot/instance-action: time:"},
		"rebalance":       {metadatatest.AWSRebalance, `{"noticeTime":"2030-01-01T00:00:00"}`, "events/recommendations/rebalance: noticeTime:"},
		"scheduled":       {metadatatest.AWSScheduled, `[{"NotBefore":"21 Jan 2030 09:00:43","Code":"system-reboot","EventId":"instance-event-1","State":"active"}]`, "events/maintenance/scheduled[0]: NotBefore:"},
	} {
		t.Run(name, func(t *testing.T) {
			f, src := start(t)
			f.SetFault(c.path, metadatatest.Garbage(c.body))
			notices, err := src.Check(context.Background())
			if len(notices) != 0 {
				t.Errorf("false notice: %v", notices)
			}
			if err == nil {
				t.Fatal("no error for a time without zone")
			}
			for _, w := range []string{c.field, "has no time zone", "Z"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// encoding/json keeps the last of a repeated member: the second action was
// taken without a word.
func TestRepeatedMemberIsAnErrorNotTheLast(t *testing.T) {
	_, err := aws.ParseInstanceAction([]byte(`{"action":"terminate","time":"2030-01-01T00:00:00Z","action":"stop"}`), time.Now())
	if err == nil || !strings.Contains(err.Error(), `spot/instance-action: "action" is given more than once`) {
		t.Errorf("error %v, want one naming the repeated action", err)
	}
}

// An event listed twice under one EventId is one notice and an error naming
// it: as two notices with one id, the watcher moved the deadline from one's
// NotBefore to the other's and back on every check.
func TestScheduledEventListedTwiceIsOneNotice(t *testing.T) {
	f, src := start(t)
	event := func(day int) string {
		return fmt.Sprintf(`{"NotBefore":"%d Jan 2030 09:00:00 GMT","Code":"system-reboot","Description":"","EventId":"instance-event-1","NotAfter":"","State":"active"}`, day)
	}
	f.SetScheduled(`[` + event(21) + `,` + event(22) + `]`)
	notices, err := src.Check(context.Background())
	if len(notices) != 1 || !notices[0].Deadline.Equal(time.Date(2030, 1, 21, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("notices %v, want the first event's alone", notices)
	}
	if err == nil || !strings.Contains(err.Error(), `events/maintenance/scheduled[1]: EventId "instance-event-1" is listed twice, differently (also events/maintenance/scheduled[0]); the earlier deadline is taken`) {
		t.Errorf("error %v, want one naming the event listed twice", err)
	}
	// The earlier deadline, wherever it is listed: the checkpoints are not
	// late.
	f.SetScheduled(`[` + event(22) + `,` + event(21) + `]`)
	notices, err = src.Check(context.Background())
	if len(notices) != 1 || !notices[0].Deadline.Equal(time.Date(2030, 1, 21, 9, 0, 0, 0, time.UTC)) || err == nil {
		t.Errorf("notices %v, %v; want the earlier event's alone, and an error", notices, err)
	}
	// A copy says nothing new.
	f.SetScheduled(`[` + event(21) + `,` + event(21) + `]`)
	if notices, err = src.Check(context.Background()); len(notices) != 1 || err != nil {
		t.Errorf("an event listed twice alike: notices %v, %v; want one, no error", notices, err)
	}
}
