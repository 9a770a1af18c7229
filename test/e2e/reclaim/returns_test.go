package reclaim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/agent/notice/metadatatest"
	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	pkgreclaim "github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// podWithIndex is the name of the member of original with Job completion
// index i.
func podWithIndex(t *testing.T, original []*podTrainer, i string) string {
	t.Helper()
	for _, pt := range original {
		if pt.pod.Labels[batchv1.JobCompletionIndexAnnotation] == i {
			return pt.pod.Name
		}
	}
	t.Fatalf("no member with completion index %s", i)
	return ""
}

// One on-demand and one Spot node of two GPUs each, priced by the shipped
// catalog.
const returnFleet = `
region: us-east-1
pools:
- {name: od, count: 1, instanceType: p4d.24xlarge, cloud: aws, gpuModel: A100-40GB, gpusPerNode: 2, capacityType: on-demand, zone: us-east-1a, cpu: "32", memory: 256Gi}
- {name: spot, count: 1, instanceType: p4d.24xlarge, cloud: aws, gpuModel: A100-40GB, gpusPerNode: 2, capacityType: spot, zone: us-east-1a, cpu: "32", memory: 256Gi}
`

// A 2-member gang of checkpointing training that prefers Spot finds the
// Spot node cordoned, falls back to the on-demand node after its 1s wait,
// and runs there. While Spot has no room nothing moves it. Once the Spot
// node is schedulable again, a PodDisruptionBudget that covers one member
// and keeps it available stops every move before any checkpoint is asked
// for (the API server refuses the dry-run eviction; a SpotReturnSkipped
// event each), so the other member is not evicted alone; so does one over
// both members that lets one go at a time (each dry run passes, but the
// second eviction would not). With the budgets deleted, penny-scheduler's mover asks both members' agent for a
// checkpoint, evicts them once both are written (a SpotReturn event each),
// the Job controller makes new members, and they run on the Spot node,
// resuming from the checkpoints the move wrote.
func TestFallenBackGangMovesBackToSpot(t *testing.T) {
	catalog, err := pricing.Parse(deploy.PriceCatalog, "deploy/pricing/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Rounds every second, and no wait after a run starts, so that the test
	// need not wait the shipped 10m and 15m.
	const shipped = "enabled: true\n        every: 10m"
	if strings.Count(string(deploy.SchedulerConfig), shipped) != 1 {
		t.Fatalf("deploy/scheduler/config.yaml has no single %q to change", shipped)
	}
	config := strings.Replace(string(deploy.SchedulerConfig), shipped, "enabled: true\n        every: 1s\n        minRunning: 0s\n        cooldown: 2s\n        checkpointTimeout: 20s", 1)
	w := newWorldWith(t, returnFleet, worldOptions{schedulerConfig: []byte(config), returner: spotrisk.NewReturner(), prices: catalog})
	const od, spot = "od-0", "spot-0"
	for _, node := range []string{od, spot} {
		md := metadatatest.NewAWS()
		t.Cleanup(md.Close)
		w.startAgent(node, md, t.TempDir())
	}
	ctx := context.Background()
	ns := "return-to-spot"
	if _, err := w.c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.schedulable(t, od)
	j := job(ns)
	j.Spec.Parallelism, j.Spec.Completions = ptr.To[int32](2), ptr.To[int32](2)
	tpl := &j.Spec.Template
	tpl.Labels[gang.KeySize] = "2"
	tpl.Annotations[spotrisk.AnnotationExpectedRuntime] = "24h"
	tpl.Annotations[spotrisk.AnnotationFallbackAfter] = "1s"
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := w.c.Client.BatchV1().Jobs(ns).Create(ctx, j, metav1.CreateOptions{})
		return err == nil, nil // the namespace's ServiceAccount comes shortly after it
	}); err != nil {
		t.Fatalf("create job: %v", err)
	}
	var original []*podTrainer
	poll(t, "gang placed on the on-demand node", 60*time.Second, func() (bool, string) {
		original = w.trainers.inNamespace(ns)
		per := map[string]int{}
		for _, pt := range original {
			per[pt.pod.Spec.NodeName]++
		}
		return len(original) == 2 && per[od] == 2, fmt.Sprintf("members per node: %v", per)
	})
	poll(t, "both agents reporting", 30*time.Second, func() (bool, string) {
		_, okOD := w.store.Node(od)
		_, okSpot := w.store.Node(spot)
		return okOD && okSpot, fmt.Sprintf("%s=%v %s=%v", od, okOD, spot, okSpot)
	})
	// Rounds run every second: with the Spot node cordoned none moves the
	// gang.
	time.Sleep(3 * time.Second)
	for _, pt := range original {
		if got := pt.tr.Received(); len(got) != 0 {
			t.Fatalf("member %s was asked for a checkpoint with no room on Spot: %v", pt.pod.Name, got)
		}
	}

	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "keep-index-1", Namespace: ns},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{batchv1.JobCompletionIndexAnnotation: "1"}},
		},
	}
	if _, err := w.c.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.schedulable(t, od, spot)
	for _, pt := range original {
		ev := harness.WaitForEvent(t, w.c, ns, pt.pod.Name, "SpotReturnSkipped", 30*time.Second)
		if !strings.Contains(ev, "not moved back to Spot: the API server would not evict "+ns+"/"+podWithIndex(t, original, "1")+" (") ||
			!strings.Contains(ev, "nothing was checkpointed or evicted") {
			t.Errorf("SpotReturnSkipped event of %s: %q", pt.pod.Name, ev)
		}
	}
	for _, pt := range original {
		if got := pt.tr.Received(); len(got) != 0 {
			t.Fatalf("member %s was asked for a checkpoint for a move the budget stops: %v", pt.pod.Name, got)
		}
		if p, err := w.c.Client.CoreV1().Pods(ns).Get(ctx, pt.pod.Name, metav1.GetOptions{}); err != nil || p.UID != pt.pod.UID || p.DeletionTimestamp != nil {
			t.Fatalf("member %s evicted while the budget stops the move of its gang (err %v)", pt.pod.Name, err)
		}
	}

	// A budget over both members that keeps one of them available (lets
	// one go at a time; maxUnavailable needs a controller with a scale
	// subresource, which a Job is not) passes each member's dry run;
	// evicting the first would leave it refusing the second. It is made
	// before the first budget goes, so that no round finds neither, and
	// processed by the disruption controller before.
	oneAtATime := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "one-at-a-time", Namespace: ns},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{gang.LabelName: "train"}},
		},
	}
	if _, err := w.c.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, oneAtATime, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the disruption controller allowing one disruption", 30*time.Second, func() (bool, string) {
		b, err := w.c.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, oneAtATime.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return b.Status.ObservedGeneration == b.Generation && b.Status.DisruptionsAllowed == 1 && b.Status.CurrentHealthy == 2,
			fmt.Sprintf("status %+v", b.Status)
	})
	skippedBefore := time.Now()
	if err := w.c.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, pdb.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	why := "PodDisruptionBudget " + ns + "/one-at-a-time allows 1 disruptions, and the move would evict 2 of the ready pods it covers"
	for _, pt := range original {
		poll(t, "a SpotReturnSkipped event of "+pt.pod.Name+" naming the budget", 30*time.Second, func() (bool, string) {
			evs, err := w.c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pt.pod.Name + ",reason=SpotReturnSkipped"})
			if err != nil {
				return false, err.Error()
			}
			var msgs []string
			for _, ev := range evs.Items {
				if ev.LastTimestamp.Time.After(skippedBefore.Add(-time.Second)) && strings.Contains(ev.Message, why) && strings.Contains(ev.Message, "nothing was checkpointed or evicted") {
					return true, ""
				}
				msgs = append(msgs, ev.Message)
			}
			return false, strings.Join(msgs, "; ")
		})
	}
	for _, pt := range original {
		if got := pt.tr.Received(); len(got) != 0 {
			t.Fatalf("member %s was asked for a checkpoint for a move a budget would cut in half: %v", pt.pod.Name, got)
		}
		if p, err := w.c.Client.CoreV1().Pods(ns).Get(ctx, pt.pod.Name, metav1.GetOptions{}); err != nil || p.UID != pt.pod.UID || p.DeletionTimestamp != nil {
			t.Fatalf("member %s evicted while a budget lets only one member of its gang go (err %v)", pt.pod.Name, err)
		}
	}

	askedAt := time.Now()
	if err := w.c.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, oneAtATime.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	originalUIDs := map[types.UID]bool{}
	for _, pt := range original {
		originalUIDs[pt.pod.UID] = true
	}
	checkpointStep := map[string]int64{}
	poll(t, "both members checkpointed for the move", 30*time.Second, func() (bool, string) {
		for _, pt := range original {
			if _, step, _, ok := firstAfter(pt, askedAt); ok && step > 0 {
				checkpointStep[pt.key] = step
			}
		}
		return len(checkpointStep) == 2, fmt.Sprintf("%d of 2", len(checkpointStep))
	})
	for _, pt := range original {
		ev := harness.WaitForEvent(t, w.c, ns, pt.pod.Name, "SpotReturn", 30*time.Second)
		if !strings.Contains(ev, "evicted to move back to Spot, its checkpoint written: workload label:"+ns+"/train fell back to on-demand capacity and Spot has room for it again") {
			t.Errorf("SpotReturn event of %s: %q", pt.pod.Name, ev)
		}
	}
	// The move is kept for the cooldown, where a restarted scheduler reads
	// it.
	cm, err := w.c.Client.CoreV1().ConfigMaps("penny-system").Get(ctx, "penny-interrupted-runs", metav1.GetOptions{})
	if err != nil || !strings.HasPrefix(cm.Data[spotrisk.MovesKey], "label:"+ns+"/train ") {
		t.Errorf("moves kept in configmap penny-system/penny-interrupted-runs: %v (err %v), want the gang's", cm.Data, err)
	}
	// The move was recorded before its first eviction, in case the
	// scheduler stopped between the two, and the record removed once
	// both were made.
	poll(t, "the move's record removed", 30*time.Second, func() (bool, string) {
		cm, err := w.c.Client.CoreV1().ConfigMaps("penny-system").Get(ctx, "penny-reclaim-notices", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		text, recorded := cm.Data[pkgreclaim.ReturnsKey]
		return recorded && text == "", fmt.Sprintf("data %v", cm.Data)
	})
	var replaced []*podTrainer
	poll(t, "gang evicted and placed again on Spot", 90*time.Second, func() (bool, string) {
		for uid := range originalUIDs {
			p, err := w.c.Client.CoreV1().Pods(ns).Get(ctx, podName(original, uid), metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return false, fmt.Sprintf("original member %s is still there (phase %s, deleting since %v)", p.Name, p.Status.Phase, p.DeletionTimestamp)
			}
		}
		replaced = replaced[:0]
		for _, pt := range w.trainers.inNamespace(ns) {
			if !originalUIDs[pt.pod.UID] {
				replaced = append(replaced, pt)
			}
		}
		return len(replaced) == 2, fmt.Sprintf("%d new members running", len(replaced))
	})
	for _, pt := range replaced {
		if pt.pod.Spec.NodeName != spot {
			t.Errorf("member %s placed on %s, want the Spot node %s", pt.pod.Name, pt.pod.Spec.NodeName, spot)
		}
		if got, want := pt.tr.ResumedFrom(), checkpointStep[pt.key]; got != want || want == 0 {
			t.Errorf("member %s (%s) resumed from step %d, want the move's checkpoint, step %d", pt.pod.Name, pt.key, got, want)
		}
	}
	// On Spot now, the gang is left there: no further checkpoints.
	time.Sleep(2 * time.Second)
	for _, pt := range replaced {
		if got := pt.tr.Received(); len(got) != 0 {
			t.Errorf("member %s on Spot was asked for a checkpoint: %v", pt.pod.Name, got)
		}
	}
}
