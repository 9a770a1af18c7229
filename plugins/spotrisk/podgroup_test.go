package spotrisk

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes/fake"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/component-base/metrics/testutil"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
	config "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/names"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/schedulertest"
)

// startPodGroupScheduler runs a real kube-scheduler with the GenericWorkload
// gate on (pod-group cycle, GangScheduling) and the deployed profile's
// SpotRisk, with args, on nodes. A pod group that fails is retried only
// after backoff: kube-scheduler 1.37 parks no pod group as unschedulable,
// it backs the group off and retries it, so the queue's own retry comes at
// most the maximum backoff (10s by default) after a wait ends.
func startPodGroupScheduler(t *testing.T, args *Args, backoff time.Duration, nodes ...*corev1.Node) *schedulertest.Cluster {
	t.Helper()
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	prof := schedulertest.DeployedProfile(t, Name, args)
	// The deployed queue sort is PennyGang's, which this package cannot
	// build: kube-scheduler's own takes its place.
	prof.Plugins.QueueSort = config.PluginSet{Enabled: []config.Plugin{{Name: names.PrioritySort}}}
	prices := catalog(t)
	return schedulertest.Start(t, schedulertest.Options{
		Profile: prof,
		Registry: frameworkruntime.Registry{Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			return New(ctx, obj, h, Deps{Prices: prices})
		}},
		Nodes:          nodes,
		BackoffSeconds: int64(backoff / time.Second),
	})
}

// groupMembers creates PodGroup name with gang minCount n and its n members,
// created now, annotated ann.
func groupMembers(t *testing.T, c *schedulertest.Cluster, name string, n int, ann map[string]string) []string {
	t.Helper()
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
			Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: int32(n)},
		}},
	}
	if _, err := c.Client.SchedulingV1beta1().PodGroups("default").Create(c.Ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var members []string
	for i := range n {
		p := pod(name+"-"+string(rune('a'+i)), ann)
		p.Spec.SchedulerName = schedulertest.SchedulerName
		p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To(name)}
		// The wait runs from creation, which the fake API server does not
		// stamp.
		p.CreationTimestamp = metav1.Now()
		c.Create(p)
		members = append(members, p.Name)
	}
	return members
}

// A native PodGroup that waits for Spot falls back to on-demand when its
// wait ends, not when the queue next retries it. kube-scheduler's pod-group
// cycle runs no PostFilter for the group's pods, and DefaultPreemption ends
// the PodGroupPostFilter chain when it finds no victims, so the timer
// PostFilter arms for a lone pod was never armed: the group fell back only
// when its backoff ran out (here ten minutes, so that only the timer can
// bring it back within the test). The members are reserved twice (on the
// cycle's snapshot, then for binding), and each still falls back once, with
// one event naming its node.
func TestNativePodGroupFallsBackWhenItsWaitEnds(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Second}
	c := startPodGroupScheduler(t, args, 10*time.Minute, node("od", pricing.OnDemand, "us-east-1a"))
	fell := fallbacks.WithLabelValues(string(Prefer))
	before, _ := testutil.GetCounterMetricValue(fell)
	members := groupMembers(t, c, "trainers", 2, map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})

	c.WaitEvent(members[0], "waits for Spot capacity")
	got := c.WaitBound(30*time.Second, members...)
	for _, m := range members {
		if got[m] != "od" {
			t.Errorf("%s bound to %q, want od", m, got[m])
		}
		c.WaitEvent(m, "No Spot capacity within 2s (checkpointing training): placed on on-demand node od")
	}
	// PostBind counts after the binding the test saw.
	var n float64
	_ = wait.PollUntilContextTimeout(c.Ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		n, _ = testutil.GetCounterMetricValue(fell)
		return n >= before+2, nil
	})
	if n != before+2 {
		t.Errorf("penny_spot_fallbacks_total{policy=%q} rose by %v, want 2 (one per member)", Prefer, n-before)
	}
}

// A native PodGroup is retried once, when the last of its waiting members
// stops waiting: retried when the first did, it would fail while the others
// still wait. Each time the group is queued its members are seen again, and
// arm nothing more. A pod in no PodGroup keeps PostFilter's retry.
func TestNativePodGroupIsRetriedWhenItsLastMemberStopsWaiting(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Minute}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	ann := map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"}
	var members []*corev1.Pod
	for i, name := range []string{"a", "b", "c"} {
		p := pod(name, ann)
		p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("trainers")}
		// b, created last, waits longest.
		p.CreationTimestamp = metav1.NewTime(t0.Add(time.Duration(i%2) * time.Second))
		members = append(members, p)
	}
	lone := pod("lone", ann)
	for range 2 {
		for _, p := range append(members, lone) {
			if s := e.plugin.PreEnqueue(context.Background(), p); !s.IsSuccess() {
				t.Fatalf("PreEnqueue(%s) = %v; it never holds a pod back", p.Name, s)
			}
		}
	}
	e.clock.Step(2 * time.Minute)
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("retried %v while member b still waits", got)
	}
	e.clock.Step(time.Second)
	if got := e.act.list(); len(got) != 1 || got[0] != "default/b" {
		t.Fatalf("retried %v when the last wait ended, want the group once (through default/b)", got)
	}
	if e.clock.HasWaiters() {
		t.Error("a timer is still armed after the group's retry")
	}
}

// groupStates is the scheduler's PodGroup manager as far as PreEnqueue reads
// it: the unscheduled members of each PodGroup, by namespace/name.
type groupStates struct {
	podGroups
	members map[string]map[string]*corev1.Pod
}

func (g groupStates) PodGroupStates() fwk.PodGroupStateLister { return g }

func (g groupStates) Get(namespace, name string) (fwk.PodGroupState, error) {
	if m, ok := g.members[namespace+"/"+name]; ok {
		return unscheduled{pods: m}, nil
	}
	return nil, fmt.Errorf("pod group %s/%s not found", namespace, name)
}

type unscheduled struct {
	fwk.PodGroupState
	pods map[string]*corev1.Pod
}

func (u unscheduled) UnscheduledPods() map[string]*corev1.Pod { return maps.Clone(u.pods) }

// groupMember is a checkpointing training pod of the native PodGroup
// groupName that waits for Spot for after, recorded in group by name.
func groupMember(group map[string]*corev1.Pod, groupName, name, after string) *corev1.Pod {
	p := pod(name, map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m", AnnotationFallbackAfter: after})
	p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To(groupName)}
	group[name] = p
	return p
}

// enqueue hands the pods to PreEnqueue, which never holds one back.
func (e *env) enqueue(t *testing.T, pods ...*corev1.Pod) {
	t.Helper()
	for _, p := range pods {
		if s := e.plugin.PreEnqueue(context.Background(), p); !s.IsSuccess() {
			t.Fatalf("PreEnqueue(%s) = %v; it never holds a pod back", p.Name, s)
		}
	}
}

// A native PodGroup's timer is armed for the last of its members' waits,
// and armed again earlier when that wait is cut short: the member lowers its
// penny.dev/fallback-after (group trainers: b, from 10m to 4m), or is
// deleted (group tuners: y, 30m, leaves x, 6m). The group then falls back
// when its members' waits have ended, not at the wait that is no longer
// there (or when its backoff runs out). The timers replaced do nothing.
func TestNativePodGroupIsRetriedEarlierWhenItsLastWaitIsCutShort(t *testing.T) {
	trainers, tuners := map[string]*corev1.Pod{}, map[string]*corev1.Pod{}
	groups := groupStates{members: map[string]map[string]*corev1.Pod{"default/trainers": trainers, "default/tuners": tuners}}
	e := newEnvWith(t, nil, Deps{Prices: catalog(t)}, []frameworkruntime.Option{frameworkruntime.WithPodGroupManager(groups)},
		node("od", pricing.OnDemand, "us-east-1a"))
	e.enqueue(t, groupMember(trainers, "trainers", "a", "2m"), groupMember(trainers, "trainers", "b", "10m"),
		groupMember(tuners, "tuners", "x", "6m"), groupMember(tuners, "tuners", "y", "30m"))

	lowered := trainers["b"].DeepCopy()
	lowered.Annotations[AnnotationFallbackAfter] = "4m"
	trainers["b"] = lowered
	e.enqueue(t, lowered)
	delete(tuners, "y")
	e.enqueue(t, tuners["x"])

	e.clock.Step(4 * time.Minute)
	if got := e.act.list(); !slices.Equal(got, []string{"default/b"}) {
		t.Fatalf("retried %v when b's lowered wait ended, want trainers once (through default/b)", got)
	}
	e.clock.Step(2 * time.Minute)
	if got := e.act.list(); !slices.Equal(got, []string{"default/b", "default/x"}) {
		t.Fatalf("retried %v when x's wait ended with y deleted, want tuners once more (through default/x)", got)
	}
	e.clock.Step(30 * time.Minute)
	if got := e.act.list(); len(got) != 2 {
		t.Errorf("retried %v; the timers armed for b's and y's old waits retried a group again", got)
	}
	if e.clock.HasWaiters() {
		t.Error("a timer is still armed after both groups' retries")
	}
}

// A native PodGroup's timer goes with the member it was armed for (group
// trainers: b, whose 10m wait ends last) or the member it retries the group
// through (group tuners: armed through y for x's wait once y lowered its
// own), when that member is deleted: kept until the group was next queued,
// the one waited for a wait no longer there, the other named to the queue a
// pod it no longer holds. Queued again, the group's members still there
// arm it for their own waits.
func TestNativePodGroupTimerGoesWithItsDeletedMember(t *testing.T) {
	client := fake.NewClientset()
	trainers, tuners := map[string]*corev1.Pod{}, map[string]*corev1.Pod{}
	groups := groupStates{members: map[string]map[string]*corev1.Pod{"default/trainers": trainers, "default/tuners": tuners}}
	e := gatedEnvWith(t, client, 2*time.Minute, []frameworkruntime.Option{frameworkruntime.WithPodGroupManager(groups)},
		node("od", pricing.OnDemand, "us-east-1a"))
	member := func(group map[string]*corev1.Pod, groupName, name, after string) *corev1.Pod {
		p := groupMember(group, groupName, name, after)
		createPod(t, client, p)
		return p
	}
	a, b := member(trainers, "trainers", "a", "2m"), member(trainers, "trainers", "b", "10m")
	x, y := member(tuners, "tuners", "x", "6m"), member(tuners, "tuners", "y", "30m")
	e.enqueue(t, a, b, x, y)
	lowered := y.DeepCopy()
	lowered.Annotations[AnnotationFallbackAfter] = "1m"
	tuners["y"] = lowered
	e.enqueue(t, lowered)
	armed := func() map[string]groupWakeup {
		e.plugin.mu.Lock()
		defer e.plugin.mu.Unlock()
		out := map[string]groupWakeup{}
		for k, w := range e.plugin.groupWakeups {
			out[k] = groupWakeup{deadline: w.deadline, by: w.by, via: w.via}
		}
		return out
	}
	if got, want := armed(), map[string]groupWakeup{
		"default/trainers": {deadline: t0.Add(10 * time.Minute), by: b.UID, via: b.UID},
		"default/tuners":   {deadline: t0.Add(6 * time.Minute), by: x.UID, via: y.UID},
	}; !maps.Equal(got, want) {
		t.Fatalf("armed %+v, want %+v", got, want)
	}

	for _, p := range []*corev1.Pod{b, y} {
		if err := client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	delete(trainers, "b")
	delete(tuners, "y")
	// A pod created after the deletions: once the plugin's informer handler
	// has seen it, it has seen them.
	marker := pod("marker", nil)
	marker.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: kueueGate}}
	createPod(t, client, marker)
	e.seenGated(t, marker.UID)
	if got := armed(); len(got) != 0 {
		t.Errorf("armed %+v after the members they were armed for or through were deleted, want none", got)
	}
	if e.clock.HasWaiters() {
		t.Error("a timer is still armed for a deleted member")
	}

	// The queue brings the groups back after their backoff.
	e.enqueue(t, a, x)
	e.clock.Step(2 * time.Minute)
	if got := e.act.list(); !slices.Equal(got, []string{"default/a"}) {
		t.Fatalf("retried %v when a's wait ended, want trainers once (through default/a)", got)
	}
	e.clock.Step(4 * time.Minute)
	if got := e.act.list(); !slices.Equal(got, []string{"default/a", "default/x"}) {
		t.Fatalf("retried %v when x's wait ended, want tuners once more (through default/x)", got)
	}
	if e.clock.HasWaiters() {
		t.Error("a timer is still armed after both groups' retries")
	}
}
