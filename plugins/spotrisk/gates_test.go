package spotrisk

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/pricing"
)

const kueueGate = "kueue.x-k8s.io/admission"

// gatedEnv is newEnv over a fake API server whose pods the plugin watches
// through the scheduler's informer, as it does in penny-scheduler.
func gatedEnv(t *testing.T, fallbackAfter time.Duration, nodes ...*corev1.Node) (*env, kubernetes.Interface) {
	t.Helper()
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: fallbackAfter}
	e := newEnvWith(t, args, Deps{Prices: catalog(t)}, []frameworkruntime.Option{frameworkruntime.WithInformerFactory(factory)}, nodes...)
	e.ungated = map[types.UID]time.Time{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return e, client
}

// ungateEntry is what the plugin keeps of the pod's gates.
func (e *env) ungateEntry(uid types.UID) (time.Time, bool) {
	e.plugin.ungates.mu.Lock()
	defer e.plugin.ungates.mu.Unlock()
	at, ok := e.plugin.ungates.at[uid]
	return at, ok
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

// A pod Kueue holds with its admission gate cannot be placed, so it has not
// waited for Spot while gated: gated longer than fallbackAfter, it fell back
// to on-demand the moment Kueue admitted it. Its wait runs fallbackAfter from
// its ungating, and penny_spot_wait_seconds counts from then too.
func TestWaitStartsWhenTheLastGateIsLifted(t *testing.T) {
	e, client := gatedEnv(t, 2*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	p := pod("admitted", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, p)
	e.seenGated(t, p.UID)

	e.clock.Step(10 * time.Minute)
	p = ungate(t, client, p)
	e.ungated[p.UID] = e.clock.Now()
	e.seenUngated(t, p.UID)

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

	e.clock.Step(10 * time.Minute)
	ungatedCopy := p.DeepCopy()
	ungatedCopy.Spec.SchedulingGates = nil
	r := e.schedule(t, ungatedCopy)
	expectContains(t, "FitError", r.fitError, "waits for Spot capacity until 2026-11-28T12:12:00Z")

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
