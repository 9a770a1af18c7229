package spot

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// A pod that a scheduling gate holds (Kueue's admission gate, until Kueue
// admits its workload) for longer than fallbackAfter still waits
// fallbackAfter for Spot once ungated: counted from its creation, its wait
// was over before it could be placed, and it went to on-demand at once.
func TestSpotWaitStartsWhenThePodIsUngated(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog})
	ctx := context.Background()

	harness.CreatePod(t, c, gpuPod("filler", "8", map[string]string{spotrisk.AnnotationSpot: "only"}))
	harness.WaitForPod(t, c, "default", "filler", 30*time.Second, "bound", harness.Bound)
	const wait = 3 * time.Second
	p := gpuPod("admitted", "2", map[string]string{
		spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m",
		spotrisk.AnnotationFallbackAfter: wait.String()})
	p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "kueue.x-k8s.io/admission"}}
	created := harness.CreatePod(t, c, p)

	// Gated for longer than its wait: with the wait counted from creation,
	// the pod would be past it when ungated.
	time.Sleep(2 * wait)
	ungated := time.Now()
	p, err := c.Client.CoreV1().Pods("default").Get(ctx, "admitted", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.SchedulingGates = nil
	if _, err := c.Client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The scheduler sees the ungating after the update was sent, and
	// reports the deadline in whole seconds.
	earliest := ungated.Add(wait).Truncate(time.Second)
	msg := harness.WaitForEvent(t, c, "default", "admitted", "FailedScheduling", 20*time.Second)
	m := waitsUntil.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("FailedScheduling %q does not say the ungated pod waits for Spot", msg)
	}
	until, err := time.Parse(time.RFC3339, m[1])
	if err != nil {
		t.Fatal(err)
	}
	if until.Before(earliest) {
		t.Fatalf("the pod waits for Spot until %s, before %s (its ungating plus %v; created %s)",
			m[1], earliest.UTC().Format(time.RFC3339), wait, created.CreationTimestamp.UTC().Format(time.RFC3339))
	}

	bound := harness.WaitForPod(t, c, "default", "admitted", 30*time.Second, "bound", harness.Bound)
	node, err := c.Client.CoreV1().Nodes().Get(ctx, bound.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pool := node.Labels[localcluster.LabelPool]; pool != "ondemand" {
		t.Fatalf("the pod landed on pool %s, want ondemand (Spot is full)", pool)
	}
	harness.WaitForEvent(t, c, "default", "admitted", spotrisk.EventFallback, 10*time.Second)
}
