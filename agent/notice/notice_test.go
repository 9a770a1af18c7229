package notice_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/pennysched/penny/agent/notice"
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
	aLater := spot("a", t0.Add(time.Second), t0.Add(3*time.Minute)) // the same notice seen again
	b := spot("b", t0.Add(2*time.Second), t0.Add(time.Minute))
	src := &scripted{done: make(chan struct{}), steps: []step{
		{notices: []notice.Notice{a}},
		{err: errors.New("IMDS hiccup")},                                      // a failed check drops nothing
		{notices: []notice.Notice{aLater}},                                    // first detection and the earlier deadline stay
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
	if got := snapshots[2][0]; !got.Detected.Equal(t0) || !got.Deadline.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("re-seen notice: detected %v deadline %v, want the first detection %v and the earlier deadline %v", got.Detected, got.Deadline, t0, t0.Add(2*time.Minute))
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
