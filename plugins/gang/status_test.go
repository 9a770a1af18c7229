package gang

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/schedulertest"
)

// kube-scheduler records FailedScheduling with the status message as the
// format and puts the same message in the pod's PodScheduled condition; the
// plugin's own GangInvalid event takes it as the format too. A percent sign
// in a malformed gang key's value turned into %!"(MISSING) and the like in
// the events that should tell the user what to fix.
func TestMalformedKeyWithPercentReadsTheSameInEventsAndCondition(t *testing.T) {
	ctx := context.Background()
	pl, recorder := eventPlugin(t)
	bad := member("llm", 2, 1, 1)
	delete(bad.Labels, gang.KeySize)
	bad.Annotations = map[string]string{gang.KeySize: "2%"}
	good := member("llm", 2, 0, 1)
	for _, p := range []*corev1.Pod{bad, good} {
		if err := pl.pods.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	const shown = `penny.dev/gang-size="2\x25" is not a whole number >= 1`
	var noArgs []any // a format with no arguments, as kube-scheduler passes it

	preEnqueue := func(p *corev1.Pod) *fwk.Status { return pl.PreEnqueue(ctx, p) }
	preFilter := func(p *corev1.Pod) *fwk.Status {
		_, s := pl.PreFilter(ctx, framework.NewCycleState(), p, nil)
		return s
	}
	own := "pod team/llm-1: " + shown
	sibling := "gang team/llm: member llm-1 must be fixed first: " + own
	for _, tc := range []struct {
		what  string
		pod   *corev1.Pod
		check func(*corev1.Pod) *fwk.Status
		want  string
	}{
		{"PreEnqueue of the malformed member", bad, preEnqueue, own},
		{"PreFilter of the malformed member", bad, preFilter, own},
		{"PreEnqueue of its sibling", good, preEnqueue, sibling},
		{"PreFilter of its sibling", good, preFilter, sibling},
	} {
		s := tc.check(tc.pod)
		if s.Code() != fwk.UnschedulableAndUnresolvable {
			t.Fatalf("%s: status %v", tc.what, s)
		}
		msg := s.Message()
		if event := fmt.Sprintf(msg, noArgs...); event != msg {
			t.Errorf("%s: the FailedScheduling event reads\n%s\nwhere the condition reads\n%s", tc.what, event, msg)
		}
		if !strings.HasPrefix(msg, tc.want) {
			t.Errorf("%s: %q, want it to start %q", tc.what, msg, tc.want)
		}
	}
	// Each PreEnqueue told its pod once; the note reads as the status does.
	for _, want := range []string{own, sibling} {
		select {
		case ev := <-recorder.Events:
			if !strings.HasPrefix(ev, "Warning GangInvalid "+want) {
				t.Errorf("event %q, want it to start %q", ev, "Warning GangInvalid "+want)
			}
		default:
			t.Errorf("no GangInvalid event saying %q", want)
		}
	}
}

// eventPlugin is the plugin on a framework that records its events.
func eventPlugin(t *testing.T) (*Gang, *events.FakeRecorder) {
	t.Helper()
	ctx := context.Background()
	client := fake.NewClientset()
	recorder := events.NewFakeRecorder(10)
	h, err := frameworkruntime.NewFramework(ctx, frameworkruntime.Registry{}, nil,
		frameworkruntime.WithClientSet(client),
		frameworkruntime.WithInformerFactory(informers.NewSharedInformerFactory(client, 0)),
		frameworkruntime.WithEventRecorder(recorder))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := NewWith(ctx, nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return pl, recorder
}

// The API server does not validate spec.schedulerName, so a member's may
// hold a percent sign; the message naming it must read the same as a format.
func TestSchedulerNameWithPercentReadsTheSameInTheEvent(t *testing.T) {
	ctx := context.Background()
	pl, _ := eventPlugin(t)
	odd := member("llm", 2, 1, 1)
	odd.Spec.SchedulerName = "batch%d"
	mine := member("llm", 2, 0, 1)
	for _, p := range []*corev1.Pod{odd, mine} {
		if err := pl.pods.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	s := pl.PreEnqueue(ctx, mine)
	if s.Code() != fwk.UnschedulableAndUnresolvable {
		t.Fatalf("status %v", s)
	}
	msg := s.Message()
	var noArgs []any // a format with no arguments, as kube-scheduler passes it
	if event := fmt.Sprintf(msg, noArgs...); event != msg {
		t.Errorf("the FailedScheduling event reads\n%s\nwhere the condition reads\n%s", event, msg)
	}
	if want := `this pod says "` + schedulertest.SchedulerName + `" but llm-1 say "batch\x25d"`; !strings.Contains(msg, want) {
		t.Errorf("%q does not contain %q", msg, want)
	}
}
