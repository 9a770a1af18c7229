package notice_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/aws"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// scripted is a Source that replays a list of check results.
type scripted struct {
	steps []step
	done  chan struct{}
}

type step struct {
	notices []notice.Notice
	err     error
}

func (s *scripted) Provider() telemetryv1.CloudProvider {
	return telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS
}

func (s *scripted) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	for _, st := range s.steps {
		observe(st.notices, st.err)
	}
	close(s.done)
}

func spot(id string, detected, deadline time.Time) notice.Notice {
	return notice.Notice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: deadline}
}

func TestWatcherKeepsNoticesThroughErrorsAndCallsOncePerNotice(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	a := spot("a", t0, t0.Add(2*time.Minute))
	aLater := spot("a", t0.Add(time.Second), t0.Add(3*time.Minute)) // the same notice, moved by the cloud
	b := spot("b", t0.Add(2*time.Second), t0.Add(time.Minute))
	src := &scripted{done: make(chan struct{}), steps: []step{
		{notices: []notice.Notice{a}},
		{err: errors.New("IMDS hiccup")},                                      // a failed check drops nothing
		{notices: []notice.Notice{aLater}},                                    // first detection stays, the cloud's new deadline is taken
		{notices: []notice.Notice{b}, err: errors.New("one document failed")}, // b is added, a stays
		{notices: nil}, // a successful empty check withdraws both
	}}
	var calls []string
	var snapshots [][]notice.Notice
	var statuses []telemetryv1.CollectorStatus_State
	var w *notice.Watcher
	// Look at the watcher's state after each step.
	w = notice.NewWatcher(&observing{scripted: src, after: func() {
		snapshots = append(snapshots, w.Notices())
		st, _ := w.Pending()
		statuses = append(statuses, st.GetState())
	}}, testr.New(t), nil)
	w.OnNotice(func(n notice.Notice) { calls = append(calls, n.ID) })
	w.Run(context.Background())

	if want := []string{"a", "b"}; len(calls) != 2 || calls[0] != want[0] || calls[1] != want[1] {
		t.Errorf("OnNotice calls = %v, want %v (once per notice)", calls, want)
	}
	wantCounts := []int{1, 1, 1, 2, 0}
	for i, s := range snapshots {
		if len(s) != wantCounts[i] {
			t.Errorf("after step %d: %d notices pending, want %d: %v", i, len(s), wantCounts[i], s)
		}
	}
	if got := snapshots[2][0]; !got.Detected.Equal(t0) || !got.Deadline.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("re-seen notice: detected %v deadline %v, want the first detection %v and the cloud's new deadline %v", got.Detected, got.Deadline, t0, t0.Add(3*time.Minute))
	}
	if got := snapshots[3]; got[0].ID != "b" {
		t.Errorf("notices not ordered by deadline: %v", got)
	}
	wantStates := []telemetryv1.CollectorStatus_State{
		telemetryv1.CollectorStatus_STATE_OK, telemetryv1.CollectorStatus_STATE_ERROR, telemetryv1.CollectorStatus_STATE_OK,
		telemetryv1.CollectorStatus_STATE_ERROR, telemetryv1.CollectorStatus_STATE_OK,
	}
	for i := range wantStates {
		if statuses[i] != wantStates[i] {
			t.Errorf("after step %d: status %v, want %v", i, statuses[i], wantStates[i])
		}
	}
}

// observing calls after once each step has been observed.
type observing struct {
	*scripted
	after func()
}

func (o *observing) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	o.scripted.Watch(ctx, func(n []notice.Notice, err error) {
		observe(n, err)
		o.after()
	})
}

func TestPendingValidatesAsTelemetry(t *testing.T) {
	t0 := time.Now()
	src := &scripted{done: make(chan struct{}), steps: []step{{notices: []notice.Notice{
		spot("aws-spot-terminate-x", t0, t0.Add(2*time.Minute)),
		{ID: "aws-rebalance-x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "rebalance", Detected: t0},
	}}}}
	w := notice.NewWatcher(src, testr.New(t), nil)
	w.Run(context.Background())
	st, notices := w.Pending()
	if len(notices) != 2 {
		t.Fatalf("got %d notices, want 2", len(notices))
	}
	r := &telemetryv1.NodeReport{
		NodeName: "n", AgentId: "a", Sequence: 1, CollectedAt: notices[0].DetectedAt,
		Nvml:           &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_UNAVAILABLE},
		PodResources:   &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED},
		Profiling:      &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED},
		Reclaim:        st,
		ReclaimNotices: notices,
	}
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatalf("the scheduler would refuse the notices: %v", err)
	}
	if notices[1].Deadline != nil {
		t.Errorf("rebalance recommendation has a deadline %v; it promises none", notices[1].Deadline)
	}
}

// A deadline the agent estimated from its own detection (the cloud named no
// time) is not moved later by the estimate of a later check.
func TestWatcherKeepsItsFirstEstimate(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	first := spot("gcp", t0, t0.Add(30*time.Second))
	first.Estimated = true
	again := spot("gcp", t0.Add(time.Minute), t0.Add(time.Minute+30*time.Second))
	again.Estimated = true
	started := spot("gcp", t0.Add(2*time.Second), t0.Add(2*time.Second)) // the event started: sooner
	started.Estimated = true
	var deadlines []time.Time
	var w *notice.Watcher
	src := &scripted{done: make(chan struct{}), steps: []step{{notices: []notice.Notice{first}}, {notices: []notice.Notice{again}}, {notices: []notice.Notice{started}}}}
	w = notice.NewWatcher(&observing{scripted: src, after: func() { deadlines = append(deadlines, w.Notices()[0].Deadline) }}, testr.New(t), nil)
	w.Run(context.Background())
	want := []time.Time{t0.Add(30 * time.Second), t0.Add(30 * time.Second), t0.Add(2 * time.Second)}
	for i := range want {
		if !deadlines[i].Equal(want[i]) {
			t.Errorf("after check %d: deadline %v, want %v", i, deadlines[i], want[i])
		}
	}
}

// waitDeadline waits until the watcher's only notice is id with the deadline
// want.
func waitDeadline(t *testing.T, w *notice.Watcher, id string, want time.Time) {
	t.Helper()
	timeout := time.Now().Add(10 * time.Second)
	for {
		n := w.Notices()
		if len(n) == 1 && n[0].ID == id && n[0].Deadline.Equal(want) {
			return
		}
		if time.Now().After(timeout) {
			t.Fatalf("pending notices %v; want %s with deadline %v", n, id, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Clouds move maintenance they announced and keep the event's id (Azure
// changes an event's NotBefore, AWS a scheduled event's): the pending notice
// takes the new time, later or earlier, and is still the one notice.
func TestRescheduledEventMovesTheDeadline(t *testing.T) {
	base := time.Now().Add(48 * time.Hour).Truncate(time.Second).UTC()
	later, earlier := base.Add(24*time.Hour), base.Add(-36*time.Hour)
	run := func(t *testing.T, src notice.Source, id string, announce func(time.Time), move func(time.Time)) {
		w := notice.NewWatcher(src, testr.New(t), nil)
		var calls []string
		w.OnNotice(func(n notice.Notice) { calls = append(calls, n.ID) })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.Run(ctx); close(done) }()
		announce(base)
		waitDeadline(t, w, id, base)
		move(later)
		waitDeadline(t, w, id, later)
		move(earlier)
		waitDeadline(t, w, id, earlier)
		cancel()
		<-done
		if len(calls) != 1 {
			t.Errorf("OnNotice calls %v, want one: a moved event is the same notice", calls)
		}
	}
	t.Run("azure", func(t *testing.T) {
		f := metadatatest.NewAzure("vm0")
		defer f.Close()
		src := azure.New(azure.Options{Endpoint: f.URL(), Interval: 20 * time.Millisecond, VMName: "vm0"})
		run(t, src, "azure-ev-1", func(at time.Time) {
			f.AddEvent(metadatatest.AzureEvent{EventID: "ev-1", EventType: "Reboot", NotBefore: at.Format(http.TimeFormat)})
		}, func(at time.Time) {
			if !f.Reschedule("ev-1", at) {
				t.Fatal("the fake lost the event")
			}
		})
	})
	t.Run("aws", func(t *testing.T) {
		f := metadatatest.NewAWS()
		defer f.Close()
		src := aws.New(aws.Options{Endpoint: f.URL(), Interval: 20 * time.Millisecond})
		set := func(at time.Time) {
			f.SetScheduled(fmt.Sprintf(`[{"NotBefore":%q,"Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotAfter":%q,"State":"active"}]`,
				at.Format("2 Jan 2006 15:04:05 GMT"), at.Add(2*time.Hour).Format("2 Jan 2006 15:04:05 GMT")))
		}
		run(t, src, "aws-instance-event-0d59937288b749b32", set, set)
	})
}

// OnMove hears of every move of a pending notice's deadline, and of nothing
// else: not a new notice, not a check that finds it where it was.
func TestWatcherTellsOfMovedDeadlines(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	a := spot("a", t0, t0.Add(2*time.Minute))
	sooner := spot("a", t0.Add(time.Second), t0.Add(time.Minute))
	src := &scripted{done: make(chan struct{}), steps: []step{
		{notices: []notice.Notice{a}},
		{notices: []notice.Notice{a}},
		{notices: []notice.Notice{sooner}},
		{notices: []notice.Notice{sooner, spot("b", t0, t0.Add(time.Minute))}},
	}}
	w := notice.NewWatcher(src, testr.New(t), nil)
	var moved []notice.Notice
	w.OnMove(func(n notice.Notice) { moved = append(moved, n) })
	w.Run(context.Background())
	if len(moved) != 1 || moved[0].ID != "a" || !moved[0].Deadline.Equal(sooner.Deadline) || !moved[0].Detected.Equal(t0) {
		t.Errorf("OnMove calls %v, want one, for a moved to %v (detected %v)", moved, sooner.Deadline, t0)
	}
}

// A notice an earlier agent left work unfinished for keeps the time that
// agent detected it, once: withdrawn and announced again, it is detected
// anew, as the scheduler must see a new announcement.
func TestWatcherResumesEarlierDetectionTimesOnce(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	earlier := t0.Add(-time.Hour)
	later := t0.Add(time.Minute)
	src := &scripted{done: make(chan struct{}), steps: []step{
		{notices: []notice.Notice{spot("a", t0, t0.Add(time.Hour)), spot("b", t0, t0.Add(time.Hour))}},
		{notices: []notice.Notice{spot("b", t0, t0.Add(time.Hour))}},
		{notices: []notice.Notice{spot("a", later, t0.Add(time.Hour)), spot("b", t0, t0.Add(time.Hour))}},
	}}
	w := notice.NewWatcher(src, testr.New(t), nil)
	w.Resume(map[string]time.Time{"a": earlier})
	var seen []notice.Notice
	w.OnNotice(func(n notice.Notice) { seen = append(seen, n) })
	w.Run(context.Background())
	want := []string{"a@" + earlier.String(), "b@" + t0.String(), "a@" + later.String()}
	var got []string
	for _, n := range seen {
		got = append(got, n.ID+"@"+n.Detected.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("notices seen %v, want %v", got, want)
	}
}

// A resumed notice whose deadline is an estimate (GCE's preemption, an Azure
// event without NotBefore) counts it from the earlier agent's detection, as
// the work it resumes does: reported from the restart, it looked postponed.
func TestWatcherResumedEstimateCountsFromTheEarlierDetection(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	restart := t0.Add(10 * time.Second)
	guess := spot("a", restart, restart.Add(30*time.Second))
	guess.Estimated = true
	named := spot("b", restart, t0.Add(time.Hour))
	src := &scripted{done: make(chan struct{}), steps: []step{{notices: []notice.Notice{guess, named}}}}
	w := notice.NewWatcher(src, testr.New(t), nil)
	w.Resume(map[string]time.Time{"a": t0, "b": t0})
	var seen []notice.Notice
	w.OnNotice(func(n notice.Notice) { seen = append(seen, n) })
	w.Run(context.Background())
	if len(seen) != 2 || !seen[0].Deadline.Equal(t0.Add(30*time.Second)) || !seen[1].Deadline.Equal(t0.Add(time.Hour)) {
		t.Errorf("notices seen %+v; want a due 30 s after its first detection, b when the cloud said", seen)
	}
	if _, got := w.Pending(); len(got) != 2 || !got[0].GetDeadline().AsTime().Equal(t0.Add(30*time.Second)) {
		t.Errorf("reported %v; want a due 30 s after its first detection", got)
	}
}

// A node mostly sees one notice in its life: its series are on /metrics at
// 0 from the start, or increase() would never show it.
func TestWatcherMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	notice.NewWatcher(&scripted{done: make(chan struct{})}, testr.New(t), notice.NewMetrics(reg))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string // in the order of their names
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetValue())
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue() == 0
		}
	}
	aws := telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS.String()
	want := []string{"penny_reclaim_notice_check_errors_total{" + aws + "}"}
	for _, kind := range []string{"spot-interruption", "rebalance-recommendation", "maintenance", "termination"} {
		want = append(want, "penny_reclaim_notices_total{"+kind+","+aws+"}") // labels by name
	}
	for _, series := range want {
		if !got[series] {
			t.Errorf("%s not on /metrics at 0 before any check (have %v)", series, got)
		}
	}
}

// Before its first check finishes a watcher knows no notices, which is not
// the same as none: the reclaim coordinator takes a notice missing from a
// report whose check is OK as withdrawn, and a restarted agent's first
// report would call off the notice it is still acting on.
func TestWatcherReportsNoticesUnknownUntilItsFirstCheck(t *testing.T) {
	w := notice.NewWatcher(&scripted{done: make(chan struct{}), steps: []step{{notices: nil}}}, testr.New(t), nil)
	if st, _ := w.Pending(); st.GetState() == telemetryv1.CollectorStatus_STATE_OK {
		t.Errorf("before any check: %v, want a state that says the notices are unknown", st)
	}
	w.Run(context.Background())
	if st, _ := w.Pending(); st.GetState() != telemetryv1.CollectorStatus_STATE_OK {
		t.Errorf("after a check that found no notice: %v, want OK", st)
	}
}

// A report is one moment of the watcher: the check's state and the notices
// it found together. Taken apart, a report made while the first check ends
// could say OK with none of the notices it found, which the reclaim
// coordinator takes as their withdrawal, calling off a notice a restarted
// agent is still acting on.
func TestPendingIsOneMomentOfTheWatcher(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	a := spot("a", t0, t0.Add(2*time.Minute))
	for i := 0; i < 300; i++ {
		src := &scripted{done: make(chan struct{}), steps: []step{{notices: []notice.Notice{a}}}}
		w := notice.NewWatcher(src, logr.Discard(), nil)
		go w.Run(context.Background())
		for {
			st, notices := w.Pending()
			if st.GetState() != telemetryv1.CollectorStatus_STATE_OK {
				continue
			}
			if len(notices) != 1 {
				t.Fatalf("round %d: a report says the check is OK with notices %v, want the one the check found", i, notices)
			}
			break
		}
		<-src.done
	}
}

// checking is a Source that, for each step, sets the fake metadata service
// up, runs one check and then after.
type checking struct {
	provider telemetryv1.CloudProvider
	check    func(context.Context) ([]notice.Notice, error)
	steps    []func()
	after    func()
}

func (c *checking) Provider() telemetryv1.CloudProvider { return c.provider }

func (c *checking) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	for _, setUp := range c.steps {
		setUp()
		n, err := c.check(ctx)
		observe(n, err)
		c.after()
	}
}

// An event that cannot be read (here of a status the cloud does not
// document) hides no other: an event announced beside it is a notice. Nor is
// it taken for a withdrawal of the notice it may be: the check is a failed
// one, whose error names the event, so the notices it does not list stay
// until a check that reads every event.
func TestUnreadableEventHidesNoNoticeAndWithdrawsNone(t *testing.T) {
	soon := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	for _, c := range []struct {
		name string
		// steps set up: a and b; a, b unreadable and c; a alone.
		src        func(t *testing.T) *checking
		ids        [3]string
		unreadable string
	}{
		{"aws", func(t *testing.T) *checking {
			f := metadatatest.NewAWS()
			t.Cleanup(f.Close)
			ev := func(id, state string) string {
				return fmt.Sprintf(`{"NotBefore":%q,"Code":"system-reboot","EventId":%q,"State":%q}`, soon.Format("2 Jan 2006 15:04:05 GMT"), id, state)
			}
			set := func(events ...string) func() {
				return func() { f.SetScheduled("[" + strings.Join(events, ",") + "]") }
			}
			return &checking{
				provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
				check:    aws.New(aws.Options{Endpoint: f.URL()}).Check,
				steps: []func(){
					set(ev("ev-a", "active"), ev("ev-b", "active")),
					set(ev("ev-a", "active"), ev("ev-b", "paused"), ev("ev-c", "active")),
					set(ev("ev-a", "active")),
				},
			}
		}, [3]string{"aws-ev-a", "aws-ev-b", "aws-ev-c"}, `events/maintenance/scheduled[1]: State "paused" is not active, completed or canceled`},
		{"azure", func(t *testing.T) *checking {
			f := metadatatest.NewAzure("vm0")
			t.Cleanup(f.Close)
			set := func(events ...metadatatest.AzureEvent) func() {
				return func() {
					f.Clear()
					for _, e := range events {
						e.EventType, e.NotBefore = "Reboot", soon.Format(http.TimeFormat)
						f.AddEvent(e)
					}
				}
			}
			return &checking{
				provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE,
				check:    azure.New(azure.Options{Endpoint: f.URL(), VMName: "vm0"}).Check,
				steps: []func(){
					set(metadatatest.AzureEvent{EventID: "ev-a"}, metadatatest.AzureEvent{EventID: "ev-b"}),
					set(metadatatest.AzureEvent{EventID: "ev-a"}, metadatatest.AzureEvent{EventID: "ev-b", EventStatus: "Pending"}, metadatatest.AzureEvent{EventID: "ev-c"}),
					set(metadatatest.AzureEvent{EventID: "ev-a"}),
				},
			}
		}, [3]string{"azure-ev-a", "azure-ev-b", "azure-ev-c"}, `scheduled events: Events[1]: EventStatus "Pending" is not Scheduled or Started`},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b, cc := c.ids[0], c.ids[1], c.ids[2]
			src := c.src(t)
			reg := prometheus.NewRegistry()
			var w *notice.Watcher
			var pending [][]string
			var statuses []*telemetryv1.CollectorStatus
			src.after = func() {
				var ids []string
				for _, n := range w.Notices() {
					ids = append(ids, n.ID)
				}
				slices.Sort(ids)
				pending = append(pending, ids)
				st, _ := w.Pending()
				statuses = append(statuses, st)
			}
			w = notice.NewWatcher(src, testr.New(t), notice.NewMetrics(reg))
			var calls []string
			w.OnNotice(func(n notice.Notice) { calls = append(calls, n.ID) })
			w.Run(context.Background())

			for i, want := range [][]string{{a, b}, {a, b, cc}, {a}} {
				if !slices.Equal(pending[i], want) {
					t.Errorf("after check %d: pending %v, want %v", i, pending[i], want)
				}
			}
			if want := []string{a, b, cc}; !slices.Equal(calls, want) {
				t.Errorf("OnNotice calls %v, want %v", calls, want)
			}
			for i, want := range []telemetryv1.CollectorStatus_State{telemetryv1.CollectorStatus_STATE_OK, telemetryv1.CollectorStatus_STATE_ERROR, telemetryv1.CollectorStatus_STATE_OK} {
				if statuses[i].GetState() != want {
					t.Errorf("after check %d: status %v, want %v", i, statuses[i], want)
				}
			}
			if msg := statuses[1].GetMessage(); !strings.Contains(msg, c.unreadable) {
				t.Errorf("status message %q does not name the unreadable event: want %q", msg, c.unreadable)
			}
			if got := checkErrors(t, reg, src.provider); got != 1 {
				t.Errorf("penny_reclaim_notice_check_errors_total = %v, want 1: the check with the unreadable event", got)
			}
		})
	}
}

// checkErrors reads penny_reclaim_notice_check_errors_total of provider.
func checkErrors(t *testing.T, reg *prometheus.Registry, provider telemetryv1.CloudProvider) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "penny_reclaim_notice_check_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) == 1 && l[0].GetValue() == provider.String() {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("penny_reclaim_notice_check_errors_total{provider=%q} is not on /metrics", provider)
	return 0
}
