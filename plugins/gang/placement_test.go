package gang

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

func infos(nodes ...*corev1.Node) []fwk.NodeInfo {
	out := make([]fwk.NodeInfo, len(nodes))
	for i, n := range nodes {
		ni := framework.NewNodeInfo()
		ni.SetNode(n)
		out[i] = ni
	}
	return out
}

var zoneRules = rules{sameZone: true, sameCapType: true, zoneLabel: corev1.LabelTopologyZone}

func TestPlaceGangCountsOtherGangsClaims(t *testing.T) {
	ns := infos(gpuNode("n-0"), gpuNode("n-1"))
	shapes := func() []*shape { return shapesOf(gangPods("llm", 2, 8), nil, nil) }
	if p, _ := placeGang(ns, shapes(), zoneRules, nil, nil, nil); p == nil {
		t.Fatal("2 whole-node members fit on 2 free nodes")
	}
	claims := map[string]*demand{"n-0": {scalar: map[corev1.ResourceName]int64{gpu.ResourceGPU: 1}}}
	p, short := placeGang(ns, shapes(), zoneRules, nil, claims, nil)
	if p != nil {
		t.Fatalf("one GPU of n-0 is claimed by another gang, yet placed: %+v", p)
	}
	want := "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu in one zone on one capacity type"
	if got := short.message(gang.Ref{Namespace: "team", Name: "llm"}, zoneRules, false); got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
}

func TestPlaceGangPlacesBigMembersFirst(t *testing.T) {
	// One 8-GPU member and two 4-GPU members fit two 8-GPU nodes only if
	// the big one takes a node before the small ones split both.
	pods := append(gangPods("small", 2, 4), member("big", 3, 0, 8))
	p, short := placeGang(infos(gpuNode("n-0"), gpuNode("n-1")), shapesOf(pods, nil, nil), zoneRules, nil, nil, nil)
	if p == nil {
		t.Fatalf("does not fit: %+v", short)
	}
	var n int64
	for _, s := range p.slots {
		n += s.n
	}
	if n != 3 {
		t.Errorf("plan has %d slots, want 3: %+v", n, p.slots)
	}
}

func TestPlaceGangKeepsToFixedDomain(t *testing.T) {
	ns := infos(gpuNode("a-0", inZone("a")), gpuNode("b-0", inZone("b")), gpuNode("b-1", inZone("b")))
	fixed := zoneRules.domainOf(gpuNode("x", inZone("a")))
	p, short := placeGang(ns, shapesOf(gangPods("llm", 2, 8), nil, nil), zoneRules, &fixed, nil, nil)
	if p != nil {
		t.Fatalf("running members pin the gang to zone a, which has one node: %+v", p)
	}
	want := "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu in zone a, capacity type on-demand, where its running members are"
	if got := short.message(gang.Ref{Namespace: "team", Name: "llm"}, zoneRules, true); got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
}

// A node no capacity label speaks for is on-demand, as SpotRisk prices it
// (AKS and GKE label only their Spot pools): a gang kept on one capacity type
// spans it and a node Karpenter labels on-demand.
func TestPlaceGangTakesUnlabelledNodesAsOnDemand(t *testing.T) {
	plain := gpuNode("plain-0")
	delete(plain.Labels, capacity.LabelKarpenter)
	p, short := placeGang(infos(gpuNode("od-0"), plain), shapesOf(gangPods("llm", 2, 8), nil, nil), zoneRules, nil, nil, nil)
	if p == nil {
		t.Fatalf("two on-demand nodes, one unlabelled, do not take the gang: %s", short.message(gang.Ref{Namespace: "team", Name: "llm"}, zoneRules, false))
	}
	if p.domain.capType != capacity.OnDemand {
		t.Errorf("placed on capacity type %q, want on-demand", p.domain.capType)
	}
}

func TestPlaceGangRespectsTaintsAndSelectors(t *testing.T) {
	tainted := gpuNode("t-0")
	tainted.Spec.Taints = []corev1.Taint{{Key: "nvidia.com/gpu", Effect: corev1.TaintEffectNoSchedule}}
	cordoned := gpuNode("c-0")
	cordoned.Spec.Unschedulable = true
	ns := infos(tainted, cordoned, gpuNode("n-0"))
	if p, _ := placeGang(ns, shapesOf(gangPods("llm", 2, 8), nil, nil), zoneRules, nil, nil, nil); p != nil {
		t.Fatalf("only one node accepts the members, yet placed: %+v", p.slots)
	}
	tolerant := gangPods("llm", 2, 8, func(p *corev1.Pod) {
		p.Spec.Tolerations = []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists}}
	})
	if p, _ := placeGang(ns, shapesOf(tolerant, nil, nil), zoneRules, nil, nil, nil); p == nil {
		t.Fatal("members tolerating the GPU taint fit on the tainted and the plain node")
	}
	picky := gangPods("llm", 1, 8, func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"pool": "h100"} })
	if p, _ := placeGang(ns, shapesOf(picky, nil, nil), zoneRules, nil, nil, nil); p != nil {
		t.Fatalf("no node has pool=h100, yet placed: %+v", p.slots)
	}
}

type riskByZone map[string]float64

func (r riskByZone) GangRisk(nodes []*corev1.Node) float64 {
	worst := 0.0
	for _, n := range nodes {
		worst = max(worst, r[n.Labels[corev1.LabelTopologyZone]])
	}
	return worst
}

func TestPlaceGangAsksTheRiskHelper(t *testing.T) {
	ns := infos(gpuNode("a-0", inZone("a")), gpuNode("b-0", inZone("b")))
	shapes := func() []*shape { return shapesOf(gangPods("llm", 1, 8), nil, nil) }
	if p, _ := placeGang(ns, shapes(), zoneRules, nil, nil, nil); p == nil || p.domain.zone != "a" {
		t.Fatalf("without a risk helper the first domain that fits wins: %+v", p)
	}
	p, _ := placeGang(ns, shapes(), zoneRules, nil, nil, riskByZone{"a": 0.3, "b": 0.1})
	if p == nil || p.domain.zone != "b" {
		t.Fatalf("the risk helper prefers zone b: %+v", p)
	}
}

func TestShapesGroupIdenticalMembers(t *testing.T) {
	pods := append(gangPods("w", 6, 1), gangPods("m", 1, 0)...)
	shapes := shapesOf(pods, nil, nil)
	if len(shapes) != 2 || shapes[0].count != 6 || shapes[1].count != 1 {
		got := ""
		for _, s := range shapes {
			got += fmt.Sprintf("%d×%s ", s.count, s.key)
		}
		t.Errorf("want 6 workers then 1 launcher, got %s", got)
	}
}

// Every member of a shape is asked about, and its check kept unless the
// rule calls an earlier member's alike: a member another plugin keeps off a
// node keeps its whole shape off it, whether its annotations differ or only
// when it began to wait for Spot.
func TestShapeAsksTheNodeCheckOfEveryDistinctMember(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	member := func(name, spot string, age time.Duration) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}
		p.Name, p.Annotations = name, map[string]string{"penny.dev/spot": spot}
		p.CreationTimestamp = metav1.NewTime(now.Add(-age))
		return p
	}
	spot := &corev1.Node{}
	spot.Labels = map[string]string{"capacity": "spot"}
	onDemand := &corev1.Node{}
	shapes := shapesOf([]*corev1.Pod{member("a", "prefer", 40*time.Minute), member("b", "prefer", 40*time.Minute),
		member("c", "never", 40*time.Minute), member("d", "prefer", 40*time.Minute)}, waitsForSpot(now), nil)
	if len(shapes) != 1 || shapes[0].count != 4 {
		t.Fatalf("%d shapes, want the 4 members in one", len(shapes))
	}
	if shapes[0].admits(spot) {
		t.Error("a shape with a member kept off Spot admits a Spot node")
	}
	if !shapes[0].admits(onDemand) {
		t.Error("the shape does not admit an on-demand node")
	}
	if got := len(shapes[0].checks); got != 2 {
		t.Errorf("%d checks kept for 2 distinct members", got)
	}

	// Alike in annotations, but d was created 10 minutes ago and still
	// waits for Spot: it keeps its shape off on-demand nodes.
	shapes = shapesOf([]*corev1.Pod{member("a", "prefer", 40*time.Minute), member("b", "prefer", 40*time.Minute),
		member("d", "prefer", 10*time.Minute)}, waitsForSpot(now), nil)
	if len(shapes) != 1 || len(shapes[0].checks) != 2 {
		t.Fatalf("%d shapes, %d checks; want one shape with 2 checks", len(shapes), len(shapes[0].checks))
	}
	if shapes[0].admits(onDemand) {
		t.Error("a shape with a member still waiting for Spot admits an on-demand node")
	}
	if !shapes[0].admits(spot) {
		t.Error("the shape does not admit a Spot node")
	}
}

// waitsForSpot is SpotRisk's rule in small: "never" pods stay off Spot,
// "prefer" pods wait 30m from their creation for Spot before they may use
// other nodes; pods are alike when their verdicts are.
func waitsForSpot(now time.Time) NodeRule {
	return func(pod *corev1.Pod) (func(*corev1.Node) string, string) {
		never := pod.Annotations["penny.dev/spot"] == "never"
		deadline := pod.CreationTimestamp.Add(30 * time.Minute)
		waits := pod.Annotations["penny.dev/spot"] == "prefer" && now.Before(deadline)
		alike := fmt.Sprint(never)
		if waits {
			alike += deadline.Format(time.RFC3339)
		}
		return func(n *corev1.Node) string {
			switch isSpot := n.Labels["capacity"] == "spot" || n.Labels[capacity.LabelKarpenter] == string(capacity.Spot); {
			case never && isSpot:
				return "node(s) are Spot and the pod stays off Spot"
			case waits && !isSpot:
				return "node(s) are on-demand and the pod waits for Spot capacity until " + deadline.Format(time.RFC3339)
			}
			return ""
		}, alike
	}
}

// A gang whose members began to wait for Spot at different times is placed
// where every member's own rule lets it run: on Spot while any of them
// waits, though the oldest, asked alone, would take on-demand nodes that
// the others' filters then turn away (the gang released, backing off and
// admitted there again until the last wait ended).
func TestPlaceGangHoldsEveryMemberToItsOwnWait(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	members := gangPods("llm", 3, 8)
	for i, m := range members {
		m.Annotations = map[string]string{"penny.dev/spot": "prefer"}
		// llm-0's wait ended 10m ago, llm-1's ends in 5m, llm-2's in 20m.
		m.CreationTimestamp = metav1.NewTime(now.Add(-40*time.Minute + time.Duration(i)*15*time.Minute))
	}
	ns := infos(gpuNode("od-0"), gpuNode("od-1"), gpuNode("od-2"),
		gpuNode("spot-0", capType(capacity.Spot)), gpuNode("spot-1", capType(capacity.Spot)), gpuNode("spot-2", capType(capacity.Spot)))
	p, _ := placeGang(ns, shapesOf(members, waitsForSpot(now), nil), zoneRules, nil, nil, nil)
	if p == nil || p.domain.capType != capacity.Spot {
		t.Fatalf("placed %+v; want the gang on Spot while llm-1 and llm-2 wait", p)
	}
	// Each wait is named: the gang falls back when the last one ends.
	_, short := placeGang(ns[:3], shapesOf(members, waitsForSpot(now), nil), zoneRules, nil, nil, nil)
	want := "gang team/llm: 0/3 members placeable, the other 3 need 24 nvidia.com/gpu in one zone on one capacity type; of 3 node(s), ruled out for them: " +
		"3 node(s) are on-demand and the pod waits for Spot capacity until 2026-12-02T12:05:00Z, " +
		"3 node(s) are on-demand and the pod waits for Spot capacity until 2026-12-02T12:20:00Z"
	if got := short.message(gang.Ref{Namespace: "team", Name: "llm"}, zoneRules, false); got != want {
		t.Errorf("on on-demand nodes only:\n got %q\nwant %q", got, want)
	}
	// Once the last wait is over, on-demand room will do.
	if p, _ := placeGang(ns[:3], shapesOf(members, waitsForSpot(now.Add(20*time.Minute)), nil), zoneRules, nil, nil, nil); p == nil {
		t.Error("not placed on on-demand nodes once every member's wait is over")
	}
}

// A gang that does not fit says which resources the nodes it may use ran
// out of, so that only a pod giving one of them back retries it.
func TestPlaceGangNamesWhatTheNodesLack(t *testing.T) {
	busy := func(node *corev1.Node, pods ...*corev1.Pod) fwk.NodeInfo {
		ni := framework.NewNodeInfo(pods...)
		ni.SetNode(node)
		return ni
	}
	cpu := func(q string) podOpt {
		return func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse(q)
		}
	}
	members := gangPods("llm", 2, 8)
	for _, m := range members {
		cpu("8")(m)
	}
	// n-0 has its GPUs but only 4 CPUs free; n-1 has its CPUs but 4 GPUs.
	nodes := []fwk.NodeInfo{busy(gpuNode("n-0"), plainPod("web", 0, cpu("60"))), busy(gpuNode("n-1"), plainPod("train", 4))}
	p, short := placeGang(nodes, shapesOf(members, nil, nil), zoneRules, nil, nil, nil)
	if p != nil {
		t.Fatalf("placed on nodes without room: %+v", p)
	}
	want := []corev1.ResourceName{corev1.ResourceCPU, gpu.ResourceGPU}
	if !slices.Equal(short.lacking, want) {
		t.Errorf("lacking %v, want %v", short.lacking, want)
	}
	// Where no node may take a member, nothing given back helps.
	other := domain{zone: "zone-b", capType: capacity.OnDemand}
	if _, short := placeGang(nodes, shapesOf(members, nil, nil), zoneRules, &other, nil, nil); short.lacking == nil || len(short.lacking) != 0 {
		t.Errorf("no node in the gang's zone: lacking %#v, want none (and known)", short.lacking)
	}
}

func TestPodDeletionRequeuesAGangOnlyForWhatItLacked(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	pl := &Gang{}
	waiting := member("llm", 2, 0, 8)
	ref, _ := gang.RefOf(waiting)
	web, train := plainPod("web", 0), plainPod("train", 4)
	for _, c := range []struct {
		name    string
		lacking []corev1.ResourceName
		deleted *corev1.Pod
		want    fwk.QueueingHint
	}{
		{"nothing known yet", nil, web, fwk.Queue},
		{"short of GPUs, a CPU pod left", []corev1.ResourceName{gpu.ResourceGPU}, web, fwk.QueueSkip},
		{"short of GPUs, a GPU pod left", []corev1.ResourceName{gpu.ResourceGPU}, train, fwk.Queue},
		{"short of CPU, a CPU pod left", []corev1.ResourceName{corev1.ResourceCPU}, web, fwk.Queue},
		{"short of pod slots", []corev1.ResourceName{corev1.ResourcePods}, web, fwk.Queue},
		{"no node it may use", []corev1.ResourceName{}, train, fwk.QueueSkip},
	} {
		pl.lacking.Delete(ref.Key())
		if c.lacking != nil {
			pl.lacking.Store(ref.Key(), c.lacking)
		}
		if got, err := pl.isSchedulableAfterPodGaveBack(logger, waiting, c.deleted, nil); err != nil || got != c.want {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if got, _ := pl.isSchedulableAfterPodGaveBack(logger, plainPod("solo", 8), web, nil); got != fwk.Queue {
		t.Errorf("a pod in no gang (held back by claims): %v, want Queue", got)
	}
	// Resized down in place: only what it no longer requests counts.
	pl.lacking.Store(ref.Key(), []corev1.ResourceName{corev1.ResourceCPU})
	smaller := web.DeepCopy()
	smaller.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("100m")
	if got, _ := pl.isSchedulableAfterPodGaveBack(logger, waiting, web, smaller); got != fwk.Queue {
		t.Errorf("short of CPU, a pod resized down its CPU: %v, want Queue", got)
	}
	pl.lacking.Store(ref.Key(), []corev1.ResourceName{gpu.ResourceGPU})
	if got, _ := pl.isSchedulableAfterPodGaveBack(logger, waiting, train, train.DeepCopy()); got != fwk.QueueSkip {
		t.Errorf("short of GPUs, a GPU pod resized without giving any back: %v, want QueueSkip", got)
	}
	events, err := pl.EventsToRegister(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var scaleDown bool
	for _, e := range events {
		scaleDown = scaleDown || (e.Event.Resource == fwk.AssignedPod && e.Event.ActionType&fwk.UpdatePodScaleDown != 0)
	}
	if !scaleDown {
		t.Error("no AssignedPod/UpdatePodScaleDown event registered: a pod resized down in place would not requeue the gang")
	}
}

// A resize down frees nothing on the node until the kubelet has actuated
// it: the scheduler counts the most of what the spec asks and what the
// status says is allocated, and dispatches UpdatePodScaleDown when the
// status comes down, with the spec as it already was.
func TestPodResizedDownRequeuesAGangWhenTheNodeGivesItBack(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	pl := &Gang{}
	waiting := member("llm", 2, 0, 8)
	ref, _ := gang.RefOf(waiting)
	pl.lacking.Store(ref.Key(), []corev1.ResourceName{corev1.ResourceCPU})
	resizing := plainPod("web", 0)
	resizing.Spec.NodeName = "n-0"
	resizing.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("100m")
	status := func(cpu string) corev1.ContainerStatus {
		return corev1.ContainerStatus{
			Name:               "c",
			AllocatedResources: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)},
			Resources:          &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}},
		}
	}
	resizing.Status.ContainerStatuses = []corev1.ContainerStatus{status("1")}
	actuated := resizing.DeepCopy()
	actuated.Status.ContainerStatuses = []corev1.ContainerStatus{status("100m")}
	if got, err := pl.isSchedulableAfterPodGaveBack(logger, waiting, resizing, actuated); err != nil || got != fwk.Queue {
		t.Errorf("short of CPU, the kubelet actuated a resize down of CPU: %v, %v; want Queue", got, err)
	}
	// Deleted before the resize was actuated: it gave back what it held.
	if got, err := pl.isSchedulableAfterPodGaveBack(logger, waiting, resizing, nil); err != nil || got != fwk.Queue {
		t.Errorf("short of CPU, a pod holding CPU left: %v, %v; want Queue", got, err)
	}
	// Short of pod slots only: a resize frees no slot, a deletion does.
	pl.lacking.Store(ref.Key(), []corev1.ResourceName{corev1.ResourcePods})
	if got, err := pl.isSchedulableAfterPodGaveBack(logger, waiting, resizing, actuated); err != nil || got != fwk.QueueSkip {
		t.Errorf("short of pod slots, a pod resized down in place: %v, %v; want QueueSkip", got, err)
	}
	if got, err := pl.isSchedulableAfterPodGaveBack(logger, waiting, resizing, nil); err != nil || got != fwk.Queue {
		t.Errorf("short of pod slots, a pod left: %v, %v; want Queue", got, err)
	}
}

// A claim holds the pod slots its members need, not only their CPU, memory
// and GPUs: on a node with two pod slots left, claimed for a gang of two,
// neither another gang nor a lone pod may take one.
func TestClaimsHoldPodSlots(t *testing.T) {
	twoSlots := gpuNode("n-0")
	twoSlots.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("2")
	ns := infos(twoSlots)
	p, short := placeGang(ns, shapesOf(gangPods("a", 2, 0), nil, nil), zoneRules, nil, nil, nil)
	if p == nil {
		t.Fatalf("2 one-CPU members fit a node with 2 pod slots: %+v", short)
	}
	pl := &Gang{gangs: map[string]*gangState{}}
	ref := gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: "a"}
	g := pl.stateOf(ref)
	pl.args = &Args{}
	pl.args.SetDefaults()
	g.round = &round{slots: p.slots}
	pl.claimedSlots.Add(2)
	claims := pl.claimsFor("", "", 0)

	if q, _ := placeGang(ns, shapesOf(gangPods("b", 1, 0), nil, nil), zoneRules, nil, claims, nil); q != nil {
		t.Errorf("gang b was planned onto the pod slots gang a claimed: %+v", q.slots)
	}
	if fits, short := podDemand(plainPod("lone", 0)).fitsOn(ns[0], claims["n-0"]); fits {
		t.Error("a lone pod fits in the pod slots gang a claimed")
	} else if short != corev1.ResourcePods {
		t.Errorf("a lone pod is kept off for %s, want pods", short)
	}
}

// reservedForOthers keeps members annotated picky off nodes labelled
// reserved, in a Filter reason's words.
func reservedForOthers(pod *corev1.Pod) (func(*corev1.Node) string, string) {
	if pod.Annotations["picky"] != "true" {
		return nil, ""
	}
	return func(n *corev1.Node) string {
		if n.Labels["reserved"] == "true" {
			return "node(s) are reserved for another team"
		}
		return ""
	}, "picky"
}

func picky() podOpt {
	return func(p *corev1.Pod) { p.Annotations = map[string]string{"picky": "true"} }
}

func reserved() nodeOpt {
	return func(n *corev1.Node) { n.Labels["reserved"] = "true" }
}

func gpus(k int64) nodeOpt {
	return func(n *corev1.Node) {
		n.Status.Allocatable[gpu.ResourceGPU] = *resource.NewQuantity(k, resource.DecimalSI)
	}
}

// The nodes a gang that does not fit names as ruled out are exact: those,
// of the nodes it may use, that keep the members still without a place
// off, each counted once per reason, and how many nodes there are. They
// were counted while placing, for whichever members a node's domain still
// had then: a node that ruled out only a member who found a place further
// on was blamed for the member who did not.
func TestPlaceGangCountsTheNodesRuledOutForTheMembersLeft(t *testing.T) {
	ref := gang.Ref{Namespace: "team", Name: "mixed"}
	// The small member may not use r-0 and goes to n-1; the big one may
	// use r-0, but neither node has room for it.
	members := []*corev1.Pod{member("mixed", 2, 0, 8), member("mixed", 2, 1, 4, picky())}
	ns := infos(gpuNode("r-0", gpus(4), reserved()), gpuNode("n-1", gpus(4)))
	p, short := placeGang(ns, shapesOf(members, reservedForOthers, nil), zoneRules, nil, nil, nil)
	if p != nil {
		t.Fatalf("an 8-GPU member placed on 4-GPU nodes: %+v", p.slots)
	}
	want := "gang team/mixed: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu in one zone on one capacity type"
	if got := short.message(ref, zoneRules, false); got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}

	// Over every domain the gang may use, each node once; in the domain
	// its running members fixed, that domain's nodes alone.
	ref.Name = "llm"
	ns = infos(gpuNode("r-a0", reserved()), gpuNode("n-a1"),
		gpuNode("r-b0", inZone("zone-b"), reserved()), gpuNode("r-b1", inZone("zone-b"), reserved()), gpuNode("n-b2", inZone("zone-b")))
	shapes := func() []*shape { return shapesOf(gangPods("llm", 2, 8, picky()), reservedForOthers, nil) }
	_, short = placeGang(ns, shapes(), zoneRules, nil, nil, nil)
	want = "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu in one zone on one capacity type; of 5 node(s), ruled out for them: 3 node(s) are reserved for another team"
	if got := short.message(ref, zoneRules, false); got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
	zoneB := domain{zone: "zone-b", capType: capacity.OnDemand}
	_, short = placeGang(ns, shapes(), zoneRules, &zoneB, nil, nil)
	want = "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu in zone zone-b, capacity type on-demand, where its running members are; of 3 node(s), ruled out for them: 2 node(s) are reserved for another team"
	if got := short.message(ref, zoneRules, true); got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
}

// Where several domains fit, the gang goes where its members' work costs
// least by the profile's NodeCost, in Score's order (Spot a member avoids
// after all else, unpriced nodes after priced ones), each member counted
// by its own price; the risk helper only breaks ties.
func TestPlaceGangChoosesTheDomainWhereItsWorkCostsLeast(t *testing.T) {
	type price struct {
		cost          float64
		avoided, none bool
	}
	ns := infos(gpuNode("a-0", inZone("a")), gpuNode("b-0", inZone("b")), gpuNode("c-0", inZone("c")))
	risk := riskByZone{"a": 0.1, "b": 0.3, "c": 0.2}
	// byZone prices every member alike; a member with a deadline (a
	// runtime SpotRisk reads) is priced by the other table, whatever its
	// annotations.
	place := func(byZone map[string]price, other map[string]price, members []*corev1.Pod) (string, int) {
		cost := func(pod *corev1.Pod) (func(*corev1.Node) (float64, bool, bool), string) {
			table, alike := byZone, "no deadline"
			if pod.Spec.ActiveDeadlineSeconds != nil {
				table, alike = other, "deadline"
			}
			return func(n *corev1.Node) (float64, bool, bool) {
				p := table[n.Labels[corev1.LabelTopologyZone]]
				return p.cost, p.avoided, !p.none
			}, alike
		}
		shapes := shapesOf(members, nil, cost)
		p, _ := placeGang(ns, shapes, zoneRules, nil, nil, risk)
		if p == nil {
			t.Fatal("the gang fits nowhere")
		}
		return p.domain.zone, len(shapes[0].costs)
	}
	gang := func() []*corev1.Pod { return gangPods("llm", 4, 2) }
	for _, c := range []struct {
		name   string
		byZone map[string]price
		want   string
	}{
		{"cheapest work, though riskiest", map[string]price{"a": {cost: 3}, "b": {cost: 1}, "c": {cost: 2}}, "b"},
		{"avoided Spot last, however cheap", map[string]price{"a": {cost: 3}, "b": {cost: 1, avoided: true}, "c": {cost: 2}}, "c"},
		{"unpriced after priced", map[string]price{"a": {none: true}, "b": {cost: 9}, "c": {none: true}}, "b"},
		{"equal costs: least risk", map[string]price{"a": {cost: 2}, "b": {cost: 2}, "c": {cost: 2}}, "a"},
		{"a cost that is not a number, the dearest", map[string]price{"a": {cost: math.NaN()}, "b": {cost: 5}, "c": {cost: 4}}, "c"},
	} {
		if got, _ := place(c.byZone, nil, gang()); got != c.want {
			t.Errorf("%s: placed in zone %s, want %s", c.name, got, c.want)
		}
	}
	// Three members cost 1 in zone b and 2 in zone c, the fourth, with the
	// same annotations but a deadline, 4 in b and nothing in c: 7 in b
	// against 6 in c (priced all by the first member, the gang would cost 4
	// in b and 8 in c). One price is kept per set of members the cost calls
	// alike.
	members := gang()
	deadline := int64(3600)
	members[3].Spec.ActiveDeadlineSeconds = &deadline
	got, kept := place(map[string]price{"a": {none: true}, "b": {cost: 1}, "c": {cost: 2}},
		map[string]price{"a": {none: true}, "b": {cost: 4}, "c": {cost: 0}}, members)
	if got != "c" || kept != 2 {
		t.Errorf("members priced apart: placed in zone %s with %d prices kept, want c with 2", got, kept)
	}
}
