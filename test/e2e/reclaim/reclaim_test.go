// Package reclaim is the end-to-end test of reclaim notices: a real
// kube-apiserver with KWOK nodes of three clouds, penny-scheduler,
// penny-agents run in-process against fake metadata services on loopback,
// the real Job controller, and a trainer behind each pod's checkpoint hook. A
// notice on one node of a 4-pod gang spread over two Spot nodes must get all
// four members checkpointed within 2 s, evicted, recreated by the Job
// controller, placed again away from the reclaimed node, and resumed from
// their checkpoints.
//
// `go test` runs it once per cloud; `make e2e-reclaim` runs it
// PENNY_RECLAIM_RUNS times per cloud and writes the latencies to
// PENNY_RECLAIM_RESULTS (benchmarks/results/reclaim.json).
package reclaim

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	pkgreclaim "github.com/pennysched/penny/pkg/reclaim"
)

// Three Spot nodes per cloud with two GPUs each: the 4-member gang fills the
// first two; the third is where it goes after the first is reclaimed.
const fleet = `
pools:
- {name: aws, count: 3, instanceType: p4d.24xlarge, cloud: aws, gpuModel: A100-40GB, gpusPerNode: 2, capacityType: spot, zone: us-east-1a, cpu: "32", memory: 256Gi}
- {name: gcp, count: 3, instanceType: a2-highgpu-2g, cloud: gcp, gpuModel: A100-40GB, gpusPerNode: 2, capacityType: spot, zone: us-central1-a, cpu: "24", memory: 170Gi}
- {name: azure, count: 3, instanceType: Standard_NC48ads_A100_v4, cloud: azure, gpuModel: A100-80GB, gpusPerNode: 2, capacityType: spot, zone: eastus-1, cpu: "48", memory: 440Gi}
`

// NoticeToCheckpoint is the bound: every member's checkpoint is
// written within this long of the cloud publishing the notice.
const NoticeToCheckpoint = 2 * time.Second

// cloudCase is one cloud's nodes, fakes and agents.
type cloudCase struct {
	name    string
	a, b, c string
	publish func() time.Time // a notice on node a; when it became visible
	clear   func()           // withdraw it
	mdA     metadataURL
	agentA  *agent
	agentB  *agent
}

func newCloudCase(t *testing.T, w *world, name string) *cloudCase {
	cc := &cloudCase{name: name, a: name + "-0", b: name + "-1", c: name + "-2"}
	var mdB metadataURL
	switch name {
	case "aws":
		fa, fb := metadatatest.NewAWS(), metadatatest.NewAWS()
		t.Cleanup(fa.Close)
		t.Cleanup(fb.Close)
		cc.mdA, mdB = fa, fb
		cc.publish = func() time.Time { return fa.SetSpotInterruption("terminate", time.Now().Add(2*time.Minute)) }
		cc.clear = fa.Clear
	case "gcp":
		fa, fb := metadatatest.NewGCP(), metadatatest.NewGCP()
		t.Cleanup(fa.Close)
		t.Cleanup(fb.Close)
		cc.mdA, mdB = fa, fb
		cc.publish = func() time.Time { return fa.SetPreempted(true) }
		cc.clear = func() { fa.SetPreempted(false) }
	case "azure":
		fa, fb := metadatatest.NewAzure(cc.a), metadatatest.NewAzure(cc.b)
		t.Cleanup(fa.Close)
		t.Cleanup(fb.Close)
		cc.mdA, mdB = fa, fb
		n := 0
		cc.publish = func() time.Time {
			n++
			return fa.Preempt(fmt.Sprintf("e2e-preempt-%d-%d", n, time.Now().UnixNano()), time.Now().Add(30*time.Second))
		}
		cc.clear = fa.Clear
	}
	cc.agentA = w.startAgent(cc.a, cc.mdA, t.TempDir())
	cc.agentB = w.startAgent(cc.b, mdB, t.TempDir())
	return cc
}

// result is one run's measurements.
type result struct {
	detect, request, fanout, allCheckpointed, replaced time.Duration
	resumed                                            bool
}

func TestGangCheckpointsOnReclaimNotice(t *testing.T) {
	runs := 1
	if s := os.Getenv("PENNY_RECLAIM_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("PENNY_RECLAIM_RUNS=%q: want a whole number >= 1", s)
		}
		runs = n
	}
	w := newWorld(t, fleet)
	results := map[string][]result{}
	for _, name := range []string{"aws", "gcp", "azure"} {
		t.Run(name, func(t *testing.T) {
			cc := newCloudCase(t, w, name)
			for i := 0; i < runs; i++ {
				r := w.run(t, cc, i)
				results[name] = append(results[name], r)
				t.Logf("%s run %d: detect %v, checkpoint request %v, gang fan-out %v, all checkpointed %v after the notice, gang placed again %v after it",
					name, i, r.detect, r.request, r.fanout, r.allCheckpointed, r.replaced)
				if t.Failed() {
					return
				}
			}
		})
	}
	if path := os.Getenv("PENNY_RECLAIM_RESULTS"); path != "" && !t.Failed() {
		writeResults(t, path, results)
	}

	t.Run("agent-restart-mid-notice", func(t *testing.T) { w.restartMidNotice(t) })
	t.Run("agent-speaks-only-for-its-node", func(t *testing.T) { w.agentHeldToItsNode(t) })
}

func (w *world) nodes(t *testing.T) []corev1.Node {
	list, err := w.c.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// schedulable cordons every node but those named.
func (w *world) schedulable(t *testing.T, names ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, n := range w.nodes(t) {
		if n.Spec.Unschedulable != want[n.Name] {
			continue
		}
		err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			node, err := w.c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			node.Spec.Unschedulable = !want[n.Name]
			_, err = w.c.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("cordon %s: %v", n.Name, err)
		}
	}
}

func reclaimTaint(n *corev1.Node) *corev1.Taint {
	for i := range n.Spec.Taints {
		if n.Spec.Taints[i].Key == pkgreclaim.TaintKey {
			return &n.Spec.Taints[i]
		}
	}
	return nil
}

// job is the gang: an Indexed Job whose pods form one Penny gang, declare a
// checkpoint hook, and let evictions not count against the Job (the
// podFailurePolicy real training Jobs use with checkpoints).
func job(ns string) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: ns},
		Spec: batchv1.JobSpec{
			Parallelism: ptr.To[int32](4), Completions: ptr.To[int32](4),
			// Per-index backoff: the Job controller waits its pod failure
			// backoff (10s for an index's first failure) before making a
			// replacement; with a Job-wide backoffLimit the four evicted
			// members would count as four failures, 80s.
			CompletionMode: ptr.To(batchv1.IndexedCompletion), BackoffLimitPerIndex: ptr.To[int32](3),
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action:          batchv1.PodFailurePolicyActionIgnore,
				OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}},
			}}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: map[string]string{"app": trainerApp, gang.LabelName: "train", gang.KeySize: "4"},
					Annotations: map[string]string{
						checkpoint.Annotation:           "http://:8080/checkpoint",
						"penny.dev/workload":            "training",
						"penny.dev/checkpoint-interval": "30m",
					},
				},
				Spec: corev1.PodSpec{
					SchedulerName: "penny-scheduler", RestartPolicy: corev1.RestartPolicyNever,
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					Containers: []corev1.Container{{
						Name: "trainer", Image: "registry.example/trainer",
						Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
							gpu.ResourceGPU: resource.MustParse("1"), corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi"),
						}},
					}},
				},
			},
		},
	}
}

func poll(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		ok, state := cond()
		last = state
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: not within %v (%s)", what, timeout, last)
	}
}

// firstAfter is the first checkpoint request a trainer received after t0.
func firstAfter(pt *podTrainer, t0 time.Time) (at time.Time, saved int64, savedAt time.Time, ok bool) {
	for _, r := range pt.tr.Received() {
		if r.At.After(t0) {
			return r.At, r.Saved.Step, r.Saved.At, true
		}
	}
	return time.Time{}, 0, time.Time{}, false
}

// run is one reclaim: place the gang on a and b, publish a notice on a,
// check every promise and measure.
func (w *world) run(t *testing.T, cc *cloudCase, i int) result {
	t.Helper()
	ctx := context.Background()
	ns := fmt.Sprintf("reclaim-%s-%d", cc.name, i)
	if _, err := w.c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.schedulable(t, cc.a, cc.b)
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := w.c.Client.BatchV1().Jobs(ns).Create(ctx, job(ns), metav1.CreateOptions{})
		return err == nil, nil // the namespace's ServiceAccount comes shortly after it
	}); err != nil {
		t.Fatalf("create job: %v", err)
	}

	// The gang lands on a and b, two members each.
	var original []*podTrainer
	poll(t, "gang placed on "+cc.a+" and "+cc.b, 60*time.Second, func() (bool, string) {
		original = w.trainers.inNamespace(ns)
		per := map[string]int{}
		for _, pt := range original {
			per[pt.pod.Spec.NodeName]++
		}
		return len(original) == 4 && per[cc.a] == 2 && per[cc.b] == 2, fmt.Sprintf("members per node: %v", per)
	})
	w.schedulable(t, cc.a, cc.b, cc.c)
	poll(t, "both agents reporting and the watcher settled", 30*time.Second, func() (bool, string) {
		_, okA := w.store.Node(cc.a)
		_, okB := w.store.Node(cc.b)
		_, settled := cc.agentA.watcher.Settled()
		return okA && okB && settled, fmt.Sprintf("a=%v b=%v settled=%v", okA, okB, settled)
	})
	aNode, err := w.c.Client.CoreV1().Nodes().Get(ctx, cc.a, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := pricing.PoolOf(aNode, pricing.NodeCapacity(aNode))
	reclaimsBefore := w.risk.Reclaims(pool)
	rateBefore := w.risk.ReclaimRate(pool)
	time.Sleep(100 * time.Millisecond) // a few training steps

	published := cc.publish()

	// Every member checkpoints within 2 s of the notice.
	var r result
	poll(t, "all four members checkpointed", 10*time.Second, func() (bool, string) {
		n := 0
		for _, pt := range original {
			if _, step, _, ok := firstAfter(pt, published); ok && step > 0 {
				n++
			}
		}
		return n == 4, fmt.Sprintf("%d of 4", n)
	})
	detected, ok := cc.agentA.lastDetected()
	if !ok || detected.Detected.Before(published) {
		t.Fatalf("agent on %s reports no notice detected after %v", cc.a, published)
	}
	r.detect = detected.Detected.Sub(published)
	checkpointStep := map[string]int64{}
	for _, pt := range original {
		at, step, savedAt, _ := firstAfter(pt, published)
		checkpointStep[pt.key] = step
		r.allCheckpointed = max(r.allCheckpointed, savedAt.Sub(published))
		if pt.pod.Spec.NodeName == cc.a {
			r.request = max(r.request, at.Sub(detected.Detected))
		} else {
			r.fanout = max(r.fanout, at.Sub(detected.Detected))
		}
	}
	if r.allCheckpointed > NoticeToCheckpoint {
		t.Errorf("the last member's checkpoint was written %v after the notice; the bound is %v", r.allCheckpointed, NoticeToCheckpoint)
	}
	if r.request > time.Second {
		t.Errorf("the reclaimed node's members were asked to checkpoint %v after detection; the bound is 1s", r.request)
	}
	poll(t, "taint on "+cc.a, 5*time.Second, func() (bool, string) {
		n, err := w.c.Client.CoreV1().Nodes().Get(ctx, cc.a, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		tt := reclaimTaint(n)
		return tt != nil && tt.Value == "spot-interruption" && tt.Effect == corev1.TaintEffectNoSchedule, fmt.Sprintf("taints %v", n.Spec.Taints)
	})

	// The members are evicted, the Job controller makes new ones, and the
	// gang is placed again away from the reclaimed node, resuming from its
	// checkpoints.
	originalUIDs := map[types.UID]bool{}
	for _, pt := range original {
		originalUIDs[pt.pod.UID] = true
	}
	var replaced []*podTrainer
	poll(t, "gang evicted and placed again", 90*time.Second, func() (bool, string) {
		for uid := range originalUIDs {
			p, err := w.c.Client.CoreV1().Pods(ns).Get(ctx, podName(original, uid), metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return false, fmt.Sprintf("original member %s is still there (phase %s, deleting since %v, finalizers %v, conditions %v)", p.Name, p.Status.Phase, p.DeletionTimestamp, p.Finalizers, p.Status.Conditions)
			}
		}
		replaced = replaced[:0]
		for _, pt := range w.trainers.inNamespace(ns) {
			if !originalUIDs[pt.pod.UID] {
				replaced = append(replaced, pt)
			}
		}
		return len(replaced) == 4, fmt.Sprintf("%d new members running", len(replaced))
	})
	r.resumed = true
	for _, pt := range replaced {
		r.replaced = max(r.replaced, pt.started.Sub(published))
		if pt.pod.Spec.NodeName == cc.a {
			t.Errorf("member %s placed on the reclaimed node %s", pt.pod.Name, cc.a)
		}
		want := checkpointStep[pt.key]
		if got := pt.tr.ResumedFrom(); got != want || want == 0 {
			r.resumed = false
			t.Errorf("member %s (%s) resumed from step %d, want the notice's checkpoint, step %d", pt.pod.Name, pt.key, got, want)
		}
	}
	if got := w.risk.Reclaims(pool); got != reclaimsBefore+1 {
		t.Errorf("the risk model saw %d reclaims of pool %s, want %d", got, pool, reclaimsBefore+1)
	}
	if rate := w.risk.ReclaimRate(pool); rate <= rateBefore {
		t.Errorf("pool %s's reclaim rate %g did not rise from %g after the reclaim", pool, rate, rateBefore)
	}

	// Clean up for the next run: the cloud withdraws the notice (as if the
	// node were replaced) and the agent lifts its taint.
	if err := w.c.Client.BatchV1().Jobs(ns).Delete(ctx, "train", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil {
		t.Fatal(err)
	}
	cc.clear()
	poll(t, "job's pods gone", 30*time.Second, func() (bool, string) {
		pods, err := w.c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, "pods left"
	})
	poll(t, "taint lifted by the agent once the notice is withdrawn", 30*time.Second, func() (bool, string) {
		n, err := w.c.Client.CoreV1().Nodes().Get(ctx, cc.a, metav1.GetOptions{})
		return err == nil && reclaimTaint(n) == nil, "still tainted"
	})
	return r
}

func podName(pts []*podTrainer, uid types.UID) string {
	for _, pt := range pts {
		if pt.pod.UID == uid {
			return pt.pod.Name
		}
	}
	return ""
}

// restartMidNotice stops the reclaimed node's agent while its members are
// still writing their checkpoints; a new agent process with the same state
// directory must finish the job: the gang still resumes from checkpoints.
func (w *world) restartMidNotice(t *testing.T) {
	cc := newCloudCase(t, w, "aws")
	ctx := context.Background()
	ns := "reclaim-aws-restart"
	if _, err := w.c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.trainers.takes.Store(int64(1500 * time.Millisecond)) // slow checkpoints: time to kill the agent
	defer w.trainers.takes.Store(int64(20 * time.Millisecond))
	w.schedulable(t, cc.a, cc.b)
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := w.c.Client.BatchV1().Jobs(ns).Create(ctx, job(ns), metav1.CreateOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	var original []*podTrainer
	poll(t, "gang placed", 60*time.Second, func() (bool, string) {
		original = w.trainers.inNamespace(ns)
		per := map[string]int{}
		for _, pt := range original {
			per[pt.pod.Spec.NodeName]++
		}
		return len(original) == 4 && per[cc.a] == 2, fmt.Sprintf("%v", per)
	})
	w.schedulable(t, cc.a, cc.b, cc.c)
	poll(t, "agents ready", 30*time.Second, func() (bool, string) {
		_, okA := w.store.Node(cc.a)
		_, settled := cc.agentA.watcher.Settled()
		return okA && settled, ""
	})
	published := cc.publish()
	var onA []*podTrainer
	for _, pt := range original {
		if pt.pod.Spec.NodeName == cc.a {
			onA = append(onA, pt)
		}
	}
	poll(t, "checkpoint requests on "+cc.a, 5*time.Second, func() (bool, string) {
		for _, pt := range onA {
			if _, _, _, ok := firstAfter(pt, published); !ok {
				return false, ""
			}
		}
		return true, ""
	})
	cc.agentA.stop() // dies with the checkpoints half written
	for _, pt := range onA {
		if _, step, _, _ := firstAfter(pt, published); step != 0 {
			t.Fatalf("checkpoint of %s finished before the agent was stopped; the test did not interrupt anything", pt.pod.Name)
		}
	}
	restarted := w.startAgent(cc.a, cc.mdA, cc.agentA.stateDir)
	poll(t, "gang placed again after the restart", 90*time.Second, func() (bool, string) {
		n := 0
		for _, pt := range w.trainers.inNamespace(ns) {
			if pt.started.After(published) {
				n++
			}
		}
		return n == 4, fmt.Sprintf("%d new members", n)
	})
	for _, pt := range w.trainers.inNamespace(ns) {
		if !pt.started.After(published) {
			continue
		}
		saved, ok := w.trainers.store.Load(pt.key)
		if !ok || pt.tr.ResumedFrom() != saved.Step || saved.Step == 0 || saved.At.Before(published) {
			t.Errorf("member %s resumed from step %d; the checkpoint after the notice is %+v", pt.pod.Name, pt.tr.ResumedFrom(), saved)
		}
		if pt.pod.Spec.NodeName == cc.a {
			t.Errorf("member %s placed on the reclaimed node", pt.pod.Name)
		}
	}
	_ = restarted
	w.c.Client.BatchV1().Jobs(ns).Delete(ctx, "train", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	cc.clear()
}

// agentHeldToItsNode checks the admission policy shipped with the agent:
// with its own bound token, an agent may taint its node but not another,
// and may not change anything else on its own.
func (w *world) agentHeldToItsNode(t *testing.T) {
	ctx := context.Background()
	a := w.startAgent("gcp-2", metadatatest.NewGCP(), t.TempDir())
	taint := pkgreclaim.Taint(telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION)
	// KWOK's heartbeats and the agent's own taint upkeep change the node
	// between the read and the write: a conflict is read again, as any
	// client does, and only the admission's answer counts.
	try := func(node string, mutate func(*corev1.Node)) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := a.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				return err
			}
			mutate(n)
			_, err = a.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			return err
		})
	}
	addTaint := func(n *corev1.Node) { n.Spec.Taints = append(n.Spec.Taints, taint) }
	// The policy takes a moment to be loaded by the API server.
	poll(t, "another node's update refused", 20*time.Second, func() (bool, string) {
		err := try("gcp-1", addTaint)
		return apierrors.IsForbidden(err) || apierrors.IsInvalid(err), fmt.Sprint(err)
	})
	if err := try("gcp-1", addTaint); err == nil || !strings.Contains(err.Error(), "only change the node its token is bound to") {
		t.Errorf("tainting another node: %v", err)
	}
	if err := try("gcp-2", func(n *corev1.Node) { n.Labels[capacity.LabelKarpenter] = "on-demand" }); err == nil {
		t.Error("the agent relabelled its Spot node as on-demand")
	}
	if err := try("gcp-2", func(n *corev1.Node) { n.Spec.Unschedulable = !n.Spec.Unschedulable }); err == nil {
		t.Error("the agent cordoned or uncordoned its node")
	}
	if err := try("gcp-2", addTaint); err != nil {
		t.Errorf("the agent may not taint its own node: %v", err)
	}
	if err := try("gcp-2", func(n *corev1.Node) { n.Spec.Taints = nil }); err != nil {
		t.Errorf("the agent may not lift its own taint: %v", err)
	}
	// The agents' evictions of the runs above went through the agent
	// evictions webhook, which let them by.
	vals, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, "penny_admission_agent_evictions_total", map[string]string{}, "result")
	if err != nil || vals["allowed"] == 0 {
		t.Errorf("the agent evictions webhook allowed no eviction: %v %v", vals, err)
	}
	// Nor evict another node's pods (a dry run: nothing is evicted if the
	// webhook lets it through).
	theirs := w.agentPod("gcp-1")
	err = a.client.PolicyV1().Evictions(theirs.Namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: theirs.Name, Namespace: theirs.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &theirs.UID}, DryRun: []string{metav1.DryRunAll}},
	})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "may evict only pods bound to node gcp-2") {
		t.Errorf("evicting a pod on another node: %v, want refused by the agent evictions webhook", err)
	}
}

// writeResults writes the runs' latencies, p50 and p99 per cloud.
func writeResults(t *testing.T, path string, results map[string][]result) {
	type cloudResult struct {
		Runs               int     `json:"runs"`
		Resumed            int     `json:"resumed_from_checkpoint"`
		DetectP50          float64 `json:"notice_to_detect_p50_ms"`
		DetectP99          float64 `json:"notice_to_detect_p99_ms"`
		RequestP50         float64 `json:"detect_to_checkpoint_request_p50_ms"`
		RequestP99         float64 `json:"detect_to_checkpoint_request_p99_ms"`
		FanoutP50          float64 `json:"gang_fanout_p50_ms"`
		FanoutP99          float64 `json:"gang_fanout_p99_ms"`
		AllCheckpointedP50 float64 `json:"notice_to_all_checkpointed_p50_ms"`
		AllCheckpointedP99 float64 `json:"notice_to_all_checkpointed_p99_ms"`
		ReplacedP50        float64 `json:"notice_to_gang_running_again_p50_ms"`
		ReplacedP99        float64 `json:"notice_to_gang_running_again_p99_ms"`
	}
	out := struct {
		Command string                 `json:"command"`
		Machine map[string]string      `json:"machine"`
		Date    string                 `json:"date"`
		Notes   []string               `json:"notes"`
		Clouds  map[string]cloudResult `json:"clouds"`
	}{
		Command: "make e2e-reclaim RUNS=" + strconv.Itoa(len(results["aws"])) + "  (PENNY_RECLAIM_RUNS=" + strconv.Itoa(len(results["aws"])) + " go test -run TestGangCheckpointsOnReclaimNotice ./test/e2e/reclaim/)",
		Machine: machine(),
		Date:    time.Now().UTC().Format(time.RFC3339),
		Notes: []string{
			"notice_to_detect: fake metadata service publishing the notice -> the agent's watcher seeing it (AWS and Azure are polled every 1s, the default; GCP uses wait_for_change)",
			"detect_to_checkpoint_request: detection -> the last of the reclaimed node's members receiving its checkpoint request",
			"gang_fanout: detection on the reclaimed node -> the last member on the other node receiving its checkpoint request (agent report -> penny-scheduler coordinator -> command to the other agent -> pod)",
			"notice_to_all_checkpointed: notice published -> the last of the 4 members' checkpoints written (the issue's bound is 2000 ms)",
			"notice_to_gang_running_again: notice published -> the last replacement member running on its new node (eviction, Job controller, gang placement)",
			"p99 over N runs is the nearest-rank percentile: with N < 100 it is the slowest run",
		},
		Clouds: map[string]cloudResult{},
	}
	ms := func(rs []result, f func(result) time.Duration, p float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = float64(f(r).Microseconds()) / 1000
		}
		return percentile(v, p)
	}
	for name, rs := range results {
		cr := cloudResult{Runs: len(rs)}
		for _, r := range rs {
			if r.resumed {
				cr.Resumed++
			}
		}
		get := []func(result) time.Duration{
			func(r result) time.Duration { return r.detect },
			func(r result) time.Duration { return r.request },
			func(r result) time.Duration { return r.fanout },
			func(r result) time.Duration { return r.allCheckpointed },
			func(r result) time.Duration { return r.replaced },
		}
		cr.DetectP50, cr.DetectP99 = ms(rs, get[0], 50), ms(rs, get[0], 99)
		cr.RequestP50, cr.RequestP99 = ms(rs, get[1], 50), ms(rs, get[1], 99)
		cr.FanoutP50, cr.FanoutP99 = ms(rs, get[2], 50), ms(rs, get[2], 99)
		cr.AllCheckpointedP50, cr.AllCheckpointedP99 = ms(rs, get[3], 50), ms(rs, get[3], 99)
		cr.ReplacedP50, cr.ReplacedP99 = ms(rs, get[4], 50), ms(rs, get[4], 99)
		out.Clouds[name] = cr
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// percentile is the nearest-rank percentile, rounded to 0.1 ms.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return math.Round(s[rank-1]*10) / 10
}

func machine() map[string]string {
	m := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "goos": runtime.GOOS, "goarch": runtime.GOARCH, "go": runtime.Version()}
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Model name" {
				m["cpu_model"] = strings.TrimSpace(v)
			}
		}
	}
	return m
}
