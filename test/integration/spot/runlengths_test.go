package spot

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// penny-scheduler learns how long training runs last from the training pods
// that succeed in the cluster, and keeps training without checkpoints off a
// Spot pool that would cost it more than maxExpectedLoss (2%) of such a run.
func TestTrainingRunLengthsLearnedFromTheCluster(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog})
	ctx := context.Background()
	training := map[string]string{"penny.dev/workload": "training"}

	// On-demand is full.
	harness.CreatePod(t, c, gpuPod("service", "8", map[string]string{"penny.dev/workload": "inference"}))
	harness.WaitForPod(t, c, "default", "service", 20*time.Second, "bound", harness.Bound)
	// With nothing learned, a run is taken to last unknownRuntime (4h):
	// Spot is fine, once the pod has waited its fallbackAfter for capacity
	// that is not Spot.
	early := map[string]string{"penny.dev/workload": "training", spotrisk.AnnotationFallbackAfter: "3s"}
	harness.CreatePod(t, c, gpuPod("early", "1", early))
	msg := harness.WaitForEvent(t, c, "default", "early", "FailedScheduling", 20*time.Second)
	if want := "1 node(s) are Spot and the pod waits for on-demand or reserved capacity until"; !strings.Contains(msg, want) {
		t.Fatalf("FailedScheduling %q lacks %q", msg, want)
	}
	if p := harness.WaitForPod(t, c, "default", "early", 20*time.Second, "bound", harness.Bound); !strings.Contains(p.Spec.NodeName, "spot") {
		t.Fatalf("training without checkpoints went to %s before any run was seen, want Spot", p.Spec.NodeName)
	}
	ev := harness.WaitForEvent(t, c, "default", "early", spotrisk.EventFallback, 10*time.Second)
	if want := "No on-demand or reserved capacity within 3s (training without checkpoints): placed on Spot node spot-"; !strings.Contains(ev, want) {
		t.Errorf("fallback event %q lacks %q", ev, want)
	}

	// Ten training pods that ran 1,000 hours each succeed (another
	// scheduler's, so that only their end matters here).
	started := metav1.NewTime(time.Now().Add(-1000 * time.Hour))
	for i := range 10 {
		p := gpuPod(fmt.Sprint("done-", i), "1", training)
		p.Spec.SchedulerName = "elsewhere"
		p = harness.CreatePod(t, c, p)
		p.Status = corev1.PodStatus{Phase: corev1.PodSucceeded, StartTime: &started, ContainerStatuses: []corev1.ContainerStatus{{
			Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: started, FinishedAt: metav1.Now()}},
		}}}
		if _, err := c.Client.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The Spot pool (>20% a month until reclaims say otherwise) would cost
	// a 1,000-hour run ~20% of its work. The scheduler learns the runs from
	// its own watch of succeeded pods: a pod it tries before that watch has
	// seen all ten is judged as with nothing learned (it waits for
	// on-demand), so the test asks again, under a new name, until the watch
	// has caught up.
	want := "1 node(s) are in Spot pools where training without checkpoints, on 1 node(s) for 1000h0m0s (how long training runs here typically last), would expect to lose more than 2 percent of its work to reclaims"
	for try := 0; ; try++ {
		name := fmt.Sprint("late-", try)
		harness.CreatePod(t, c, gpuPod(name, "1", training))
		msg = harness.WaitForEvent(t, c, "default", name, "FailedScheduling", 20*time.Second)
		if strings.Contains(msg, want) {
			break
		}
		if try == 20 || !strings.Contains(msg, "the pod waits for on-demand or reserved capacity") {
			t.Fatalf("FailedScheduling %q (try %d) lacks %q", msg, try+1, want)
		}
		if err := c.Client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Checkpointing training still goes to Spot.
	harness.CreatePod(t, c, gpuPod("ckpt", "1", map[string]string{"penny.dev/workload": "training", "penny.dev/checkpoint-interval": "30m"}))
	if p := harness.WaitForPod(t, c, "default", "ckpt", 20*time.Second, "bound", harness.Bound); !strings.Contains(p.Spec.NodeName, "spot") {
		t.Fatalf("checkpointing training went to %s, want Spot", p.Spec.NodeName)
	}
}
