package spot

import (
	"context"
	"regexp"
	"strings"
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

// waitsUntil reads the end of the wait a FailedScheduling message names.
var waitsUntil = regexp.MustCompile(`waits for Spot capacity until (\S+) \(`)

// A scheduler restarted while a Spot-preferring pod waits (a crash, a
// rolling update, a new leader) goes on with the pod's wait from its
// creation, which the API server recorded, rather than starting the wait
// over: under a scheduler restarted more often than fallbackAfter, a wait
// started over would never end, and the pod would never fall back.
func TestSpotWaitOutlivesASchedulerRestart(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	deps := plugins.Deps{Prices: catalog}
	first := harness.StartScheduler(t, c, deps)
	ctx := context.Background()

	harness.CreatePod(t, c, gpuPod("filler", "8", map[string]string{spotrisk.AnnotationSpot: "only"}))
	harness.WaitForPod(t, c, "default", "filler", 30*time.Second, "bound", harness.Bound)
	const wait = 20 * time.Second
	created := harness.CreatePod(t, c, gpuPod("patient", "2", map[string]string{
		spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m",
		spotrisk.AnnotationFallbackAfter: wait.String()}))
	// Creation timestamps are whole seconds, and so is the deadline the
	// scheduler reports.
	want := created.CreationTimestamp.Add(wait).UTC().Format(time.RFC3339)
	msg := harness.WaitForEvent(t, c, "default", "patient", "FailedScheduling", 20*time.Second)
	if m := waitsUntil.FindStringSubmatch(msg); m == nil || m[1] != want {
		t.Fatalf("before the restart, FailedScheduling %q does not say the pod waits for Spot until %s", msg, want)
	}

	// A second apart at least, so that a wait started over by the new
	// scheduler ends at another second than the pod's.
	time.Sleep(2 * time.Second)
	first.Stop()
	restarted := time.Now()
	harness.StartScheduler(t, c, deps)

	p := harness.WaitForPod(t, c, "default", "patient", 2*wait+30*time.Second, "bound", harness.Bound)
	t.Logf("restarted %v after the pod's creation; bound %v after it", restarted.Sub(created.CreationTimestamp.Time).Round(time.Second),
		time.Since(created.CreationTimestamp.Time).Round(time.Second))
	expectFellBackAfter(t, c, p, created.CreationTimestamp.Add(wait-time.Second))

	// Each scheduler reports the pod's wait in its FailedScheduling events:
	// the new one must name the same end as the old one.
	events := func(reason string) []corev1.Event {
		selector := fields.Set{"involvedObject.name": "patient", "reason": reason}.AsSelector().String()
		evs, err := c.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		return evs.Items
	}
	for _, ev := range events("FailedScheduling") {
		if m := waitsUntil.FindStringSubmatch(ev.Message); m != nil && m[1] != want {
			t.Errorf("a scheduler counted the pod's wait from elsewhere than its creation: FailedScheduling says it waits until %s, want %s", m[1], want)
		}
	}
	harness.WaitForEvent(t, c, "default", "patient", spotrisk.EventFallback, 10*time.Second)
	fallbacks := events(spotrisk.EventFallback)
	if len(fallbacks) != 1 || !strings.Contains(fallbacks[0].Message, "No Spot capacity within 20s (checkpointing training): placed on on-demand node ondemand-") {
		t.Errorf("want one SpotFallback event for the one fallback, got %d: %v", len(fallbacks), fallbacks)
	}
}

// expectFellBackAfter expects the bound pod p on the on-demand pool (Spot is
// full), bound no earlier than end, the API server's whole second at which
// its wait ended.
func expectFellBackAfter(t *testing.T, c *localcluster.Cluster, p *corev1.Pod, end time.Time) {
	t.Helper()
	node, err := c.Client.CoreV1().Nodes().Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pool := node.Labels[localcluster.LabelPool]; pool != "ondemand" {
		t.Fatalf("the pod landed on pool %s, want ondemand (Spot is full)", pool)
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionTrue && cond.LastTransitionTime.Time.Before(end) {
			t.Errorf("bound at %v, before its wait ended at %v", cond.LastTransitionTime.UTC(), end.UTC())
		}
	}
}
