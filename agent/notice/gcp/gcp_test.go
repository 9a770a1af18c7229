package gcp_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/gcp"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

func start(t *testing.T, opts gcp.Options) (*metadatatest.GCP, *gcp.Source) {
	t.Helper()
	f := metadatatest.NewGCP()
	t.Cleanup(f.Close)
	opts.Endpoint = f.URL()
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = metadatatest.RequestTimeout
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 20 * time.Millisecond
	}
	return f, gcp.New(opts)
}

// recorder collects what a source observes.
type recorder struct {
	mu   sync.Mutex
	last []notice.Notice
	err  error
	n    int
	ch   chan struct{}
	// ids is every notice id observed.
	ids map[string]bool
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 100), ids: map[string]bool{}} }

// idsSeen is every notice id observed so far.
func (r *recorder) idsSeen() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.ids)
}

func (r *recorder) observe(n []notice.Notice, err error) {
	r.mu.Lock()
	r.last, r.err = n, err
	for _, x := range n {
		r.ids[x.ID] = true
	}
	r.n++
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

func (r *recorder) waitFor(t *testing.T, what string, cond func([]notice.Notice, error) bool) ([]notice.Notice, error) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		n, err := r.last, r.err
		r.mu.Unlock()
		if cond(n, err) {
			return n, err
		}
		select {
		case <-r.ch:
		case <-timeout:
			t.Fatalf("%s: not within 5s (last: %v, %v)", what, n, err)
		}
	}
}

func watch(t *testing.T, src *gcp.Source) *recorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := newRecorder()
	done := make(chan struct{})
	go func() { src.Watch(ctx, r.observe); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func TestPreemptionSeenAtOnceThroughWaitForChange(t *testing.T) {
	// The watcher reads the value again only after a change, an error
	// (RetryInterval) or a wait that timed out (WaitTimeout): both longer
	// than the test waits for the notice, so that it is seen at all only
	// if the held wait_for_change answered with the change, however long a
	// loaded machine takes.
	f, src := start(t, gcp.Options{WaitTimeout: 30 * time.Second, RetryInterval: time.Hour})
	r := watch(t, src)
	r.waitFor(t, "first read of both values", func(n []notice.Notice, err error) bool { return err == nil })
	// Quiet: the watcher hangs in wait_for_change instead of polling.
	time.Sleep(300 * time.Millisecond)
	if n := f.Requests(metadatatest.GCPPreempted); n > 2 {
		t.Errorf("%d requests for instance/preempted in 300ms without a change: it polls instead of waiting for a change", n)
	}
	published := f.SetPreempted(true)
	notices, _ := r.waitFor(t, "preemption notice", func(n []notice.Notice, err error) bool { return len(n) == 1 })
	got := notices[0]
	if got.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION || got.Provider != telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP {
		t.Errorf("notice %v, want a GCP spot interruption", got)
	}
	if got.Detected.Before(published) {
		t.Errorf("preemption detected at %v, before it was set at %v", got.Detected, published)
	}
	if d := got.Deadline.Sub(got.Detected); d != gcp.DefaultPreemptionNotice {
		t.Errorf("deadline %v after detection, want %v", d, gcp.DefaultPreemptionNotice)
	}
	if !strings.HasPrefix(got.ID, "gcp-preempted-") {
		t.Errorf("id %q does not carry the ETag", got.ID)
	}
}

func TestMaintenanceEvents(t *testing.T) {
	f, src := start(t, gcp.Options{})
	r := watch(t, src)
	r.waitFor(t, "first read", func(n []notice.Notice, err error) bool { return err == nil })
	f.SetMaintenance(gcp.MaintenanceTerminate)
	n, _ := r.waitFor(t, "maintenance notice", func(n []notice.Notice, err error) bool { return len(n) == 1 })
	if n[0].Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE || n[0].Action != gcp.MaintenanceTerminate {
		t.Errorf("notice %v, want TERMINATE_ON_HOST_MAINTENANCE", n[0])
	}
	f.SetMaintenance(gcp.MaintenanceNone)
	r.waitFor(t, "maintenance over", func(n []notice.Notice, err error) bool { return err == nil && len(n) == 0 })
}

func TestMalformedAnswersAreErrorsNeverNotices(t *testing.T) {
	noFlavor := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("TRUE")) }
	cases := []struct {
		name  string
		fault metadatatest.Fault
		want  string
	}{
		{"garbage", metadatatest.Garbage("MAYBE"), "want TRUE or FALSE"},
		{"lowercase", metadatatest.Garbage("true"), "want TRUE or FALSE"},
		{"json", metadatatest.Garbage(`{"preempted":true}`), "want TRUE or FALSE"},
		{"TRUE with junk", metadatatest.Garbage("TRUE\x00FALSE"), "want TRUE or FALSE"},
		{"not the metadata server", noFlavor, "Metadata-Flavor"},
		{"truncated", metadatatest.Truncated("TR"), "truncated"},
		{"huge body", metadatatest.Huge(10<<20, false), "over the"},
		{"huge chunked body", metadatatest.Huge(10<<20, true), "over the"},
		{"slow server", metadatatest.Hang(5 * time.Second), "no complete answer within 300ms"},
		{"dripping body", metadatatest.Drip("TRUE", time.Second), "no complete answer within 300ms"},
		{"connection reset", metadatatest.Reset(), "instance/preempted"},
		{"server error", metadatatest.Status(503, "busy"), "answered 503"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The cases of an answer that does not come in time.
			var opts gcp.Options
			if strings.Contains(c.want, "no complete answer") {
				opts.RequestTimeout = metadatatest.ShortTimeout
			}
			f, src := start(t, opts)
			f.SetFault(metadatatest.GCPPreempted, c.fault)
			r := watch(t, src)
			_, err := r.waitFor(t, "an error", func(n []notice.Notice, err error) bool {
				return err != nil && !strings.Contains(err.Error(), "not read yet")
			})
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			// Let it retry a few times: still no notice.
			time.Sleep(100 * time.Millisecond)
			r.mu.Lock()
			defer r.mu.Unlock()
			if len(r.last) != 0 {
				t.Errorf("false notice: %v", r.last)
			}
		})
	}
}

func TestNoticeSurvivesALaterError(t *testing.T) {
	f, src := start(t, gcp.Options{WaitTimeout: time.Second})
	w := notice.NewWatcher(src, testr.New(t), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.SetPreempted(true)
	deadline := time.Now().Add(5 * time.Second)
	for len(w.Notices()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	f.SetFault(metadatatest.GCPPreempted, metadatatest.Status(500, "down"))
	f.SetFault(metadatatest.GCPMaintenance, metadatatest.Status(500, "down"))
	for time.Now().Before(deadline) {
		st, notices := w.Pending()
		if st.GetState() == telemetryv1.CollectorStatus_STATE_ERROR {
			if len(notices) != 1 {
				t.Fatalf("the preemption notice was dropped on an error: %v", notices)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the watcher never reported the server's errors")
}

// At start the two values are read at once and one answers first. A healthy
// metadata server must not count a failed check (nor report the collector
// failing, "maintenance-event: not read yet") on every agent start.
func TestStartIsNoFailedCheck(t *testing.T) {
	f, src := start(t, gcp.Options{})
	// maintenance-event answers NONE, as the server does, only once
	// preempted's answer is published: the two answers arrive one after
	// the other, preempted's first.
	release := make(chan struct{})
	f.SetFault(metadatatest.GCPMaintenance, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		if r.URL.Query().Get("wait_for_change") == "true" {
			<-r.Context().Done() // no change
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("ETag", "00000000000000aa")
		w.Write([]byte(gcp.MaintenanceNone))
	})
	reg := prometheus.NewRegistry()
	w := notice.NewWatcher(src, testr.New(t), notice.NewMetrics(reg))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// preempted's second request waits for a change: its first answer is
	// published, with maintenance-event not read yet.
	for stop := time.Now().Add(5 * time.Second); f.Requests(metadatatest.GCPPreempted) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(stop) {
			t.Fatal("instance/preempted is not waited on")
		}
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, settled := w.Settled(); settled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never finished a check against a healthy server")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "penny_reclaim_notice_check_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v != 0 {
				t.Errorf("penny_reclaim_notice_check_errors_total = %v after a start against a healthy server, want 0", v)
			}
		}
	}
}

// GCE's ETag comes from the value, so every preemption has the same one. The
// id must still tell two events apart, or the second is taken for the first
// (the agent's state file and the scheduler remember notices they handled),
// and still be the same for one event after an agent restart.
func TestRepeatedEventsGetTheirOwnIDs(t *testing.T) {
	f := metadatatest.NewGCP()
	t.Cleanup(f.Close)
	source := func(boot string) *gcp.Source {
		return gcp.New(gcp.Options{Endpoint: f.URL(), RequestTimeout: metadatatest.RequestTimeout, RetryInterval: 20 * time.Millisecond, WaitTimeout: time.Second, BootID: boot})
	}
	// run watches until the first notice and returns its id, stopping the
	// watch (an agent that stops) when stop is set.
	run := func(src *gcp.Source, stop bool) (string, *recorder, func()) {
		ctx, cancel := context.WithCancel(context.Background())
		r := newRecorder()
		done := make(chan struct{})
		go func() { src.Watch(ctx, r.observe); close(done) }()
		end := func() { cancel(); <-done }
		n, _ := r.waitFor(t, "the preemption notice", func(n []notice.Notice, err error) bool { return len(n) == 1 })
		if stop {
			end()
		}
		return n[0].ID, r, end
	}
	f.SetPreempted(true)
	first, _, _ := run(source("boot-a"), true)
	afterRestart, r, end := run(source("boot-a"), false)
	if afterRestart != first {
		t.Fatalf("the same preemption after an agent restart has id %q, was %q", afterRestart, first)
	}
	f.SetPreempted(false)
	r.waitFor(t, "the preemption over", func(n []notice.Notice, err error) bool { return err == nil && len(n) == 0 })
	f.SetPreempted(true)
	n, _ := r.waitFor(t, "a second preemption", func(n []notice.Notice, err error) bool { return len(n) == 1 })
	second := n[0].ID
	end()
	if second == first {
		t.Errorf("a second preemption after the first ended has the first one's id %q", first)
	}
	// A preemption stops the VM: the next one is in another boot, which the
	// agent starts after (and may never see FALSE in between).
	rebooted, _, _ := run(source("boot-b"), true)
	if rebooted == first || rebooted == second {
		t.Errorf("a preemption in a later boot has an earlier one's id %q (earlier: %q, %q)", rebooted, first, second)
	}
	for _, id := range []string{first, second, rebooted} {
		if !strings.HasPrefix(id, "gcp-preempted-") {
			t.Errorf("id %q", id)
		}
	}
}

// The id of a notice comes from the value's ETag. A server that drops the
// header during the event, or answers the unchanged value with another one,
// must not turn the event into a new notice: the first would be withdrawn
// and the same preemption acted on again.
func TestNoticeKeepsItsIDWhenTheETagDropsOrChanges(t *testing.T) {
	for name, etag := range map[string]func(n int64) string{
		"dropped": func(n int64) string {
			if n <= 2 {
				return "00000000000000ab"
			}
			return ""
		},
		"changed": func(n int64) string { return fmt.Sprintf("%016x", n) },
	} {
		t.Run(name, func(t *testing.T) {
			f, src := start(t, gcp.Options{WaitTimeout: time.Second})
			var n atomic.Int64
			f.SetFault(metadatatest.GCPPreempted, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Metadata-Flavor", "Google")
				if e := etag(n.Add(1)); e != "" {
					w.Header().Set("ETag", e)
				}
				w.Write([]byte("TRUE"))
			})
			r := watch(t, src)
			r.waitFor(t, "the preemption notice", func(n []notice.Notice, err error) bool { return len(n) == 1 })
			for stop := time.Now().Add(5 * time.Second); n.Load() < 5; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(stop) {
					t.Fatalf("instance/preempted read %d times in 5s", n.Load())
				}
			}
			if ids := r.idsSeen(); len(ids) != 1 {
				t.Errorf("one preemption observed under %d ids: %.300v", len(ids), slices.Sorted(maps.Keys(ids)))
			}
		})
	}
}

// A server that answers wait_for_change at once with the value waited on
// does not wait; asked again at once, it was asked thousands of times a
// second. It is read every RetryInterval instead.
func TestServerThatDoesNotWaitIsNotAskedInALoop(t *testing.T) {
	f, src := start(t, gcp.Options{WaitTimeout: 30 * time.Second, RetryInterval: 200 * time.Millisecond})
	f.SetFault(metadatatest.GCPPreempted, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("ETag", "00000000000000ab")
		w.Write([]byte("FALSE"))
	})
	r := watch(t, src)
	r.waitFor(t, "the first read", func(n []notice.Notice, err error) bool { return err == nil })
	time.Sleep(500 * time.Millisecond)
	if n := f.Requests(metadatatest.GCPPreempted); n > 10 {
		t.Errorf("%d requests for instance/preempted in 500ms from a server that does not wait, want a few (one each RetryInterval, 200ms)", n)
	}
}
