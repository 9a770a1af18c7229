package spot

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// admitAfter fills the Spot pool, creates a checkpointing training pod
// that waits wait for Spot, held by Kueue's gate, lifts the gate gatedFor
// later and returns the pod as created and the end of its wait that the
// scheduler's first FailedScheduling names, having checked that it is
// wait after the ungating or later. The scheduler sees the ungating after
// the update was sent, and reports the end in whole seconds.
func admitAfter(t *testing.T, c *localcluster.Cluster, wait, gatedFor time.Duration) (created *corev1.Pod, until time.Time) {
	t.Helper()
	ctx := context.Background()
	harness.CreatePod(t, c, gpuPod("filler", "8", map[string]string{spotrisk.AnnotationSpot: "only"}))
	harness.WaitForPod(t, c, "default", "filler", 30*time.Second, "bound", harness.Bound)
	p := gpuPod("admitted", "2", map[string]string{
		spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m",
		spotrisk.AnnotationFallbackAfter: wait.String()})
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "kueue.x-k8s.io/admission"}}
	created = harness.CreatePod(t, c, p)

	time.Sleep(gatedFor)
	ungated := time.Now()
	p, err := c.Client.CoreV1().Pods("default").Get(ctx, "admitted", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.SchedulingGates = nil
	if _, err := c.Client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	msg := harness.WaitForEvent(t, c, "default", "admitted", "FailedScheduling", 20*time.Second)
	m := waitsUntil.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("FailedScheduling %q does not say the ungated pod waits for Spot", msg)
	}
	until, err = time.Parse(time.RFC3339, m[1])
	if err != nil {
		t.Fatal(err)
	}
	if earliest := ungated.Add(wait).Truncate(time.Second); until.Before(earliest) {
		t.Fatalf("the pod waits for Spot until %s, before %s (its ungating plus %v; created %s)",
			m[1], earliest.UTC().Format(time.RFC3339), wait, created.CreationTimestamp.UTC().Format(time.RFC3339))
	}
	return created, until
}

// A pod that a scheduling gate holds (Kueue's admission gate, until Kueue
// admits its workload) for longer than fallbackAfter still waits
// fallbackAfter for Spot once ungated: counted from its creation, its wait
// was over before it could be placed, and it went to on-demand at once.
func TestSpotWaitStartsWhenThePodIsUngated(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog})

	// Gated for longer than its wait: with the wait counted from creation,
	// the pod would be past it when ungated.
	const wait = 3 * time.Second
	_, until := admitAfter(t, c, wait, 2*wait)

	bound := harness.WaitForPod(t, c, "default", "admitted", 30*time.Second, "bound", harness.Bound)
	expectFellBackAfter(t, c, bound, until)
	harness.WaitForEvent(t, c, "default", "admitted", spotrisk.EventFallback, 10*time.Second)
}

// A scheduler restarted after a gated pod's ungating (a crash, a rolling
// update, a new leader) counts the pod's wait from the ungating, which the
// first recorded in the pod's status, and not from its creation: counted
// from creation, every Kueue-admitted pod still pending fell back to
// on-demand at once after a restart.
func TestSpotWaitFromTheUngatingOutlivesASchedulerRestart(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	deps := plugins.Deps{Prices: catalog}
	first := harness.StartScheduler(t, c, deps)
	ctx := context.Background()

	// Gated for half its wait: counted from creation, the wait ends half a
	// wait before the one from the ungating.
	const wait = 20 * time.Second
	created, until := admitAfter(t, c, wait, wait/2)
	want := until.UTC().Format(time.RFC3339)
	recorded := harness.WaitForPod(t, c, "default", "admitted", 20*time.Second, "the start of its wait recorded", func(p *corev1.Pod) bool {
		for _, cond := range p.Status.Conditions {
			if cond.Type == spotrisk.ConditionSpotWaitStarted {
				return true
			}
		}
		return false
	})
	for _, cond := range recorded.Status.Conditions {
		if cond.Type == spotrisk.ConditionSpotWaitStarted && !cond.LastTransitionTime.Add(wait).Equal(until) {
			t.Fatalf("recorded the wait's start as %v, want %v: the end the scheduler reported less %v", cond.LastTransitionTime.UTC(), until.Add(-wait), wait)
		}
	}

	first.Stop()
	restarted := time.Now()
	harness.StartScheduler(t, c, deps)

	bound := harness.WaitForPod(t, c, "default", "admitted", 2*wait+30*time.Second, "bound", harness.Bound)
	t.Logf("restarted %v after the pod's creation; bound %v after it", restarted.Sub(created.CreationTimestamp.Time).Round(time.Second),
		time.Since(created.CreationTimestamp.Time).Round(time.Second))
	expectFellBackAfter(t, c, bound, until)
	selector := fields.Set{"involvedObject.name": "admitted", "reason": "FailedScheduling"}.AsSelector().String()
	evs, err := c.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if m := waitsUntil.FindStringSubmatch(ev.Message); m != nil && m[1] != want {
			t.Errorf("a scheduler counted the pod's wait from elsewhere than its ungating: FailedScheduling says it waits until %s, want %s", m[1], want)
		}
	}
	harness.WaitForEvent(t, c, "default", "admitted", spotrisk.EventFallback, 10*time.Second)
}
