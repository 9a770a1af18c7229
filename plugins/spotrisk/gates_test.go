package spotrisk

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	k8stesting "k8s.io/client-go/testing"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/pricing"
)

const kueueGate = "kueue.x-k8s.io/admission"

// gatedEnv is newEnv over a fake API server whose pods the plugin watches
// through the scheduler's informer, as it does in penny-scheduler.
func gatedEnv(t *testing.T, fallbackAfter time.Duration, nodes ...*corev1.Node) (*env, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	refuseUIDChanges(client)
	return gatedEnvOver(t, client, fallbackAfter, nodes...), client
}

// gatedEnvOver is gatedEnv over a given fake API server: a scheduler
// started after another, over the same cluster.
func gatedEnvOver(t *testing.T, client kubernetes.Interface, fallbackAfter time.Duration, nodes ...*corev1.Node) *env {
	t.Helper()
	return gatedEnvWith(t, client, fallbackAfter, nil, nodes...)
}

// gatedEnvWith is gatedEnvOver with more framework options (a PodGroup
// manager).
func gatedEnvWith(t *testing.T, client kubernetes.Interface, fallbackAfter time.Duration, opts []frameworkruntime.Option, nodes ...*corev1.Node) *env {
	t.Helper()
	factory := informers.NewSharedInformerFactory(client, 0)
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: fallbackAfter}
	e := newEnvWith(t, args, Deps{Prices: catalog(t)}, append([]frameworkruntime.Option{
		frameworkruntime.WithInformerFactory(factory), frameworkruntime.WithClientSet(client)}, opts...), nodes...)
	e.ungated = map[types.UID]time.Time{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return e
}

// refuseUIDChanges makes client refuse a patch that would change a pod's
// uid, as the API server does (metadata.uid is immutable: 422, naming the
// field); the fake would apply it.
func refuseUIDChanges(client *fake.Clientset) {
	client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		patch := a.(k8stesting.PatchAction)
		var sent struct {
			Metadata struct {
				UID types.UID `json:"uid"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(patch.GetPatch(), &sent); err != nil || sent.Metadata.UID == "" {
			return false, nil, nil
		}
		cur, err := client.Tracker().Get(a.GetResource(), a.GetNamespace(), patch.GetName())
		if err != nil || cur.(*corev1.Pod).UID == sent.Metadata.UID {
			return false, nil, nil
		}
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, patch.GetName(), field.ErrorList{
			field.Invalid(field.NewPath("metadata", "uid"), sent.Metadata.UID, "field is immutable")})
	})
}

// ungateEntry is what the plugin keeps of the pod's gates.
func (e *env) ungateEntry(uid types.UID) (time.Time, bool) {
	e.plugin.ungates.mu.Lock()
	defer e.plugin.ungates.mu.Unlock()
	u, ok := e.plugin.ungates.at[uid]
	return u.at, ok
}

// seenGated waits until the plugin's informer handler has seen the pod
// gated. Its handler takes the pods' events in order, so once it has, it has
// seen every earlier change too.
func (e *env) seenGated(t *testing.T, uid types.UID) {
	t.Helper()
	waitUntil(t, func() bool { at, ok := e.ungateEntry(uid); return ok && at.IsZero() })
}

// seenUngated waits until the plugin's informer handler has dated the
// pod's ungating.
func (e *env) seenUngated(t *testing.T, uid types.UID) {
	t.Helper()
	waitUntil(t, func() bool { at, _ := e.ungateEntry(uid); return !at.IsZero() })
}

// forgotten waits until the plugin keeps nothing of the pod.
func (e *env) forgotten(t *testing.T, uid types.UID) {
	t.Helper()
	waitUntil(t, func() bool { _, ok := e.ungateEntry(uid); return !ok })
}

// held waits until the scheduler's pod informer holds p, as it does every
// pod the scheduler's queue hands a scheduling cycle.
func (e *env) held(t *testing.T, p *corev1.Pod) {
	t.Helper()
	waitUntil(t, func() bool { _, ok, _ := e.plugin.ungates.pods.Get(p); return ok })
}

func createPod(t *testing.T, client kubernetes.Interface, p *corev1.Pod) {
	t.Helper()
	if _, err := client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ungate lifts p's scheduling gates on the API server and returns p as it
// is then.
func ungate(t *testing.T, client kubernetes.Interface, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p = p.DeepCopy()
	p.Spec.SchedulingGates = nil
	if _, err := client.CoreV1().Pods(p.Namespace).Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// admit creates a checkpointing training pod held by Kueue's gate, lifts
// the gate gatedFor later and returns the pod once the plugin has seen it
// ungated.
func (e *env) admit(t *testing.T, client kubernetes.Interface, name string, gatedFor time.Duration) *corev1.Pod {
	t.Helper()
	p := pod(name, map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, p)
	e.seenGated(t, p.UID)
	e.clock.Step(gatedFor)
	p = ungate(t, client, p)
	e.seenUngated(t, p.UID)
	return p
}

// A pod Kueue holds with its admission gate cannot be placed, so it has not
// waited for Spot while gated: gated longer than fallbackAfter, it fell back
// to on-demand the moment Kueue admitted it. Its wait runs fallbackAfter from
// its ungating, and penny_spot_wait_seconds counts from then too.
func TestWaitStartsWhenTheLastGateIsLifted(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := e.admit(t, client, "admitted", 10*time.Minute)
	e.ungated[p.UID] = e.clock.Now()

	r := e.schedule(t, p)
	if len(r.feasible) != 0 {
		t.Fatalf("gated for 10m and just ungated, the pod still waits 2m for Spot; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	e.clock.Step(119 * time.Second)
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("retried %v before the wait from the ungating ended", got)
	}
	e.clock.Step(time.Second)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })
	e.expectFallback(t, p, Prefer, "od", "No Spot capacity within 2m0s (checkpointing training): placed on on-demand node od")

	// Bound, the pod's ungating is forgotten.
	p.Spec.NodeName = "od"
	if _, err := client.CoreV1().Pods(p.Namespace).Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.forgotten(t, p.UID)
}

// The scheduler's queue and the plugin's informer handler hear of an
// ungating independently: a pod scheduled before the handler sees it ungated
// still starts its wait then, and the handler, seeing it later, keeps that
// start.
func TestWaitStartsWhenTheSchedulerFirstSeesThePodUngated(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	ann := map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"}
	p := pod("admitted", ann)
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, p)
	e.seenGated(t, p.UID)

	// The scheduler writes the ungating's time to a pod it holds ungated, so
	// on the API server after the ungating; scheduled here before the test
	// ungates it, it is held back until then, and sent again in the next
	// cycle. A write to the gated pod would show the handler the pod gated
	// again after the queue dated its ungating.
	client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		cur, err := client.Tracker().Get(a.GetResource(), a.GetNamespace(), p.Name)
		if err == nil && len(cur.(*corev1.Pod).Spec.SchedulingGates) > 0 {
			return true, nil, apierrors.NewConflict(a.GetResource().GroupResource(), p.Name, errors.New("still gated"))
		}
		return false, nil, nil
	})
	e.clock.Step(10 * time.Minute)
	ungatedCopy := p.DeepCopy()
	ungatedCopy.Spec.SchedulingGates = nil
	r := e.schedule(t, ungatedCopy)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	waitUntil(t, func() bool {
		e.plugin.ungates.mu.Lock()
		defer e.plugin.ungates.mu.Unlock()
		return !e.plugin.ungates.at[p.UID].recorded
	})

	e.clock.Step(30 * time.Second)
	ungate(t, client, p)
	// A pod created after the update: once the handler has seen it, it has
	// seen the update.
	marker := pod("marker", ann)
	marker.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, marker)
	e.seenGated(t, marker.UID)
	r = e.schedule(t, ungatedCopy)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	if cond := recordedCondition(t, client, p); !cond.LastTransitionTime.Time.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("recorded the wait's start as %v, want the queue's date %v", cond.LastTransitionTime.Time, t0.Add(10*time.Minute))
	}

	// Deleted, its ungating is forgotten.
	if err := client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.forgotten(t, p.UID)
}

// The scheduler keeps no ungating across a restart, nor sees one while it is
// down: a pod it never saw gated waits from its creation, as before. And a
// pod still gated has not begun to wait.
func TestWaitOfAPodNeverSeenGatedRunsFromCreation(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	e.clock.Step(10 * time.Minute)
	ann := map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"}
	p := pod("ungated-before", ann)
	createPod(t, client, p)
	marker := pod("marker", ann)
	marker.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, marker)
	e.seenGated(t, marker.UID)
	if r := e.schedule(t, p); strings.Join(r.feasible, ",") != "od" {
		t.Fatalf("10m after its creation the pod's 2m wait is over; feasible %v (%s)", r.feasible, r.fitError)
	}
	if end := e.plugin.waitEnd(marker); !end.Equal(e.clock.Now().Add(2 * time.Minute)) {
		t.Errorf("a gated pod's wait ends at %v, want fallbackAfter from now (%v): it has not begun", end, e.clock.Now().Add(2*time.Minute))
	}
}

// A native PodGroup's timer, armed when a member is queued, counts each
// member's wait from its ungating, as a lone pod's does.
func TestNativePodGroupWaitsFromTheUngating(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := pod("member", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("trainers")}
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, p)
	e.seenGated(t, p.UID)

	e.clock.Step(10 * time.Minute)
	p = ungate(t, client, p)
	e.seenUngated(t, p.UID)
	if s := e.plugin.PreEnqueue(context.Background(), p); !s.IsSuccess() {
		t.Fatalf("PreEnqueue = %v; it never holds a pod back", s)
	}
	if !e.clock.HasWaiters() {
		t.Fatal("no timer armed for the group: its member's wait from the ungating has not ended")
	}
	e.clock.Step(119 * time.Second)
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("retried %v before the member's wait from its ungating ended", got)
	}
	e.clock.Step(time.Second)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })
}

// recordedCondition waits until the pod's status on the API server holds
// ConditionSpotWaitStarted, and returns it.
func recordedCondition(t *testing.T, client kubernetes.Interface, p *corev1.Pod) corev1.PodCondition {
	t.Helper()
	var found corev1.PodCondition
	waitUntil(t, func() bool {
		cur, err := client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cur.Status.Conditions {
			if c.Type == ConditionSpotWaitStarted {
				found = c
				return true
			}
		}
		return false
	})
	return found
}

// statusPatches are the writes to pods' status the plugin sent, by pod name.
func statusPatches(client *fake.Clientset) []string {
	var out []string
	for _, a := range client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && p.GetResource().Resource == "pods" && p.GetSubresource() == "status" {
			out = append(out, p.GetName())
		}
	}
	return out
}

// A Kueue-admitted pod's wait runs from its ungating under a scheduler
// started after the one that saw it ungated (a restart, a new leader): the
// first writes the time to the pod's status, once, and the next reads it.
// Counted from creation again, every such pod still pending fell back to
// on-demand at once after a restart.
func TestWaitStartOutlivesARestart(t *testing.T) {
	first, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := first.admit(t, client, "admitted", 10*time.Minute)
	r := first.schedule(t, p)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	cond := recordedCondition(t, client, p)
	if cond.Status != corev1.ConditionTrue || cond.Reason != ReasonUngated || !cond.LastTransitionTime.Time.Equal(t0.Add(10*time.Minute)) {
		t.Fatalf("recorded %+v, want status True, reason %s and the ungating's time %v", cond, ReasonUngated, t0.Add(10*time.Minute))
	}
	first.clock.Step(30 * time.Second)
	first.schedule(t, p)
	if got := statusPatches(client); len(got) != 1 {
		t.Errorf("status writes %v, want one for the one ungating", got)
	}

	// The next scheduler never saw the pod gated.
	next := gatedEnvOver(t, client, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	next.clock.SetTime(first.clock.Now())
	cur, err := client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r = next.schedule(t, cur)
	if len(r.feasible) != 0 {
		t.Fatalf("restarted 30s into the pod's 2m wait from its ungating, the scheduler let it fall back; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	next.clock.Step(90 * time.Second)
	next.ungated[p.UID] = t0.Add(10 * time.Minute)
	next.expectFallback(t, cur, Prefer, "od", "No Spot capacity within 2m0s (checkpointing training): placed on on-demand node od")
	if got := statusPatches(client); len(got) != 1 {
		t.Errorf("status writes %v, want only the first scheduler's: the start was recorded", got)
	}
}

// Tenants cannot write pods/status, but whoever can may not move a pod's
// wait out of its life: a recorded start before the pod's creation counts
// from the creation, one after now from now, and the scheduler writes the
// clamped start back, saying what it found in the condition and an event.
func TestForgedWaitStartIsClamped(t *testing.T) {
	for _, tc := range []struct {
		name         string
		recorded     time.Time
		now          time.Time
		until, start string
		problem      string
	}{
		{name: "future", recorded: t0.Add(time.Hour), now: t0.Add(10 * time.Minute),
			until: "2026-11-28T12:12:00Z", start: "2026-11-28T12:10:00Z",
			problem: "penny.dev/SpotWaitStarted was 2026-11-28T13:00:00Z, after the scheduler read it (2026-11-28T12:10:00Z)"},
		{name: "future beyond the clocks' skew", recorded: t0.Add(10*time.Minute + maxClockSkew + time.Second), now: t0.Add(10 * time.Minute),
			until: "2026-11-28T12:12:00Z", start: "2026-11-28T12:10:00Z",
			problem: "penny.dev/SpotWaitStarted was 2026-11-28T12:10:11Z, after the scheduler read it (2026-11-28T12:10:00Z)"},
		{name: "before creation", recorded: t0.Add(-time.Hour), now: t0.Add(time.Minute),
			until: "2026-11-28T12:02:00Z", start: "2026-11-28T12:00:00Z",
			problem: "penny.dev/SpotWaitStarted was 2026-11-28T11:00:00Z, before the pod's creation (2026-11-28T12:00:00Z)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
			e.clock.SetTime(tc.now)
			p := pod("forged", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
			p.Status.Conditions = []corev1.PodCondition{{Type: ConditionSpotWaitStarted, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.NewTime(tc.recorded), Reason: ReasonUngated}}
			createPod(t, client, p)
			e.held(t, p)

			r := e.schedule(t, p)
			expectContains(t, "FitError", r.fitError, "waits for Spot capacity until "+tc.until)
			want := tc.problem + ": the wait for the capacity the pod's Spot policy prefers runs from " + tc.start + " instead"
			if evs := e.events(); len(evs) != 1 {
				t.Errorf("events %v, want one saying the start was clamped", evs)
			} else {
				expectContains(t, "event", evs[0], "Warning", EventInvalidWaitStart, want)
			}
			var cond corev1.PodCondition
			waitUntil(t, func() bool { cond = recordedCondition(t, client, p); return cond.Reason == ReasonClamped })
			if got := cond.LastTransitionTime.UTC().Format(time.RFC3339); got != tc.start || cond.Message != want {
				t.Errorf("rewrote the condition to %s, %q; want %s, %q", got, cond.Message, tc.start, want)
			}

			// The clamped start holds: it does not follow the clock.
			e.clock.Step(30 * time.Second)
			r = e.schedule(t, p)
			expectContains(t, "FitError", r.fitError, "waits for Spot capacity until "+tc.until)
			if got := statusPatches(client); len(got) != 1 {
				t.Errorf("status writes %v, want the one rewrite", got)
			}
		})
	}
}

// A new leader whose clock runs a few seconds behind its predecessor's
// reads the start the predecessor recorded as that far ahead of now: within
// maxClockSkew that is the clocks, not a forgery, and the pod's wait runs
// from now, which is that start by this clock within the skew, with no
// Warning and no rewrite. Clamped, every pending gated pod got a Warning
// after each change of leader. Further ahead it is clamped
// (TestForgedWaitStartIsClamped).
func TestWaitStartAheadWithinClockSkewIsNotClamped(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	e.clock.SetTime(t0.Add(10 * time.Minute))
	p := pod("skewed", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.Status.Conditions = []corev1.PodCondition{{Type: ConditionSpotWaitStarted, Status: corev1.ConditionTrue,
		LastTransitionTime: metav1.NewTime(t0.Add(10*time.Minute + 5*time.Second)), Reason: ReasonUngated}}
	createPod(t, client, p)

	r := e.schedule(t, p)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	if evs := e.events(); len(evs) != 0 {
		t.Errorf("events %v, want none: the recorded start is within the clocks' skew", evs)
	}
	// Once this clock has passed it, the recorded start holds.
	e.clock.Step(30 * time.Second)
	r = e.schedule(t, p)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:05Z")
	if got := statusPatches(client); len(got) != 0 {
		t.Errorf("status writes %v, want none: the recorded start stands", got)
	}
}

// The start of a pod's wait is written off the scheduling cycle, and the
// write ends when the scheduler stops: run for up to a minute from the
// cycle, it outlived a stopped scheduler (a leader that lost its lease, an
// embedding program's) by that long.
func TestWaitStartWriteEndsWhenTheSchedulerStops(t *testing.T) {
	client := &stalledStatus{Clientset: fake.NewClientset(), sent: make(chan struct{}, 1), returned: make(chan error, 1)}
	e := gatedEnvOver(t, client, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := e.admit(t, client, "admitted", 10*time.Minute)
	e.schedule(t, p)
	select {
	case <-client.sent:
	case <-time.After(5 * time.Second):
		t.Fatal("the start of the pod's wait was not written")
	}
	e.stop()
	select {
	case err := <-client.returned:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the write ended with %v, want the scheduler's stop (%v)", err, context.Canceled)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the write of the pod's start outlived the scheduler's stop by 5s")
	}
}

// stalledStatus is an API server that takes writes to pods' status and
// never answers them: a write ends only when its request's context does.
type stalledStatus struct {
	*fake.Clientset
	sent     chan struct{}
	returned chan error
}

func (c *stalledStatus) CoreV1() corev1client.CoreV1Interface {
	return stalledCoreV1{CoreV1Interface: c.Clientset.CoreV1(), c: c}
}

type stalledCoreV1 struct {
	corev1client.CoreV1Interface
	c *stalledStatus
}

func (v stalledCoreV1) Pods(namespace string) corev1client.PodInterface {
	return stalledPods{PodInterface: v.CoreV1Interface.Pods(namespace), c: v.c}
}

type stalledPods struct {
	corev1client.PodInterface
	c *stalledStatus
}

func (p stalledPods) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Pod, error) {
	if len(subresources) == 0 || subresources[0] != "status" {
		return p.PodInterface.Patch(ctx, name, pt, data, opts, subresources...)
	}
	p.c.sent <- struct{}{}
	<-ctx.Done()
	p.c.returned <- ctx.Err()
	return nil, ctx.Err()
}

// A pod deleted and created again under the same name while the start of
// the old one's wait is being written gets none of it: the write names the
// old pod's uid, which the API server refuses to change. Written by name
// alone, the new pod's wait ran from the old one's ungating, and it could
// fall back to on-demand at once.
func TestWaitStartIsNotWrittenToAPodCreatedAgainUnderItsName(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := e.admit(t, client, "admitted", 10*time.Minute)
	again := pod("admitted", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	again.UID = "admitted-again"
	var replace sync.Once
	client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		replace.Do(func() {
			if err := client.Tracker().Delete(a.GetResource(), p.Namespace, p.Name); err != nil {
				t.Error(err)
			}
			if err := client.Tracker().Create(a.GetResource(), again, p.Namespace); err != nil {
				t.Error(err)
			}
		})
		return false, nil, nil
	})

	r := e.schedule(t, p)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")
	// The fake records a write before it answers it, and answers under the
	// lock Actions takes.
	waitUntil(t, func() bool { return len(statusPatches(client)) == 1 })
	cur, err := client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cur.UID != again.UID {
		t.Fatalf("the pod under the name is %s, want the one created again (%s)", cur.UID, again.UID)
	}
	for _, c := range cur.Status.Conditions {
		if c.Type == ConditionSpotWaitStarted {
			t.Errorf("the pod created again under the name got the old one's start: %+v", c)
		}
	}
}

// Only a gated pod that waits is written: a pod never gated waits from its
// creation anyway, and one that does not wait has no wait to keep.
func TestWaitStartIsWrittenOnlyForGatedPodsThatWait(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	e.clock.Step(time.Minute)
	never := pod("never-gated", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	createPod(t, client, never)
	spotOnly := pod("spot-only", map[string]string{AnnotationSpot: "only"})
	spotOnly.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, spotOnly)
	e.seenGated(t, spotOnly.UID)
	spotOnly = ungate(t, client, spotOnly)
	e.seenUngated(t, spotOnly.UID)
	waiting := e.admit(t, client, "waiting", 0)
	e.schedule(t, never)
	e.schedule(t, spotOnly)
	e.schedule(t, waiting)
	recordedCondition(t, client, waiting)
	if got := statusPatches(client); strings.Join(got, ",") != "waiting" {
		t.Errorf("status writes %v, want one, for the gated pod that waits", got)
	}
}

// unscheduledGroup is a native PodGroup as PodGroupPostFilter reads it: its
// unscheduled members.
type unscheduledGroup struct {
	fwk.PodGroupInfo
	pods []*corev1.Pod
}

func (g unscheduledGroup) GetUnscheduledPods() []*corev1.Pod { return g.pods }

// A native PodGroup's members record their ungating too when the group's
// cycle ends before SpotRisk's PreFilter ran for any of them: PennyGang's
// PreFilter turns the first member away when no domain has room for the
// whole group, which is how a group that waits for Spot fails, and the
// cycle stops there. PodGroupPostFilter, the one SpotRisk hook such a group
// reaches, only held members for a pool's risk: a Kueue-admitted group's
// start was never written, and under the next scheduler its wait ran from
// the members' creation, over at once.
func TestNativePodGroupRecordsItsUngatingWhenTurnedAwayBeforeFilter(t *testing.T) {
	first, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := pod("member", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("trainers")}
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, p)
	first.seenGated(t, p.UID)
	first.clock.Step(10 * time.Minute)
	p = ungate(t, client, p)
	first.seenUngated(t, p.UID)

	if _, s := first.plugin.PodGroupPostFilter(context.Background(), nil, unscheduledGroup{pods: []*corev1.Pod{p}}, nil); s.Code() != fwk.Unschedulable {
		t.Fatalf("PodGroupPostFilter = %v, want Unschedulable so that preemption still runs", s)
	}
	cond := recordedCondition(t, client, p)
	if cond.Reason != ReasonUngated || !cond.LastTransitionTime.Time.Equal(t0.Add(10*time.Minute)) {
		t.Fatalf("recorded %+v, want reason %s and the ungating's time %v", cond, ReasonUngated, t0.Add(10*time.Minute))
	}

	// The next scheduler never saw the member gated.
	next := gatedEnvOver(t, client, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	next.clock.SetTime(first.clock.Now().Add(30 * time.Second))
	cur, err := client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := next.schedule(t, cur); len(r.feasible) != 0 {
		t.Fatalf("restarted 30s into the member's 2m wait from its ungating, the scheduler let it fall back; feasible %v", r.feasible)
	}
}
