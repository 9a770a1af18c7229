package gang

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
)

// roundOf returns, for label gang name, the node each member of its round
// was reserved on and the nodes of the slots still claimed, or nil, nil
// without a round.
func (c *cluster) roundOf(gangName string) (placed map[string]bool, claimed map[string]int64) {
	c.plugin.mu.Lock()
	defer c.plugin.mu.Unlock()
	g := c.plugin.gangs[gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: gangName}.Key()]
	if g == nil || g.round == nil {
		return nil, nil
	}
	placed, claimed = map[string]bool{}, map[string]int64{}
	for uid := range g.round.members {
		placed[g.placed[uid]] = true
	}
	for _, s := range g.round.slots {
		claimed[s.node] += s.n
	}
	return placed, claimed
}

// createPodGroup creates PodGroup name with gang minCount n and its n
// members, name-0 and on, each asking for gpus GPUs.
func (c *cluster) createPodGroup(name string, n int, gpus int64) {
	c.t.Helper()
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team"},
		Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
			Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: int32(n)},
		}},
	}
	if _, err := c.Client.SchedulingV1beta1().PodGroups("team").Create(c.Ctx, pg, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
	for _, m := range names(name, n) {
		p := plainPod(m, gpus)
		p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To(name)}
		c.Create(p)
	}
}

// A native PodGroup goes through kube-scheduler's pod-group cycle: its
// members are placed one after another on one snapshot, reserved there,
// reverted (Unreserve, last first) and reserved again for binding, with no
// PreFilter in between. PennyGang keeps no state for such a group (no
// round, no claims, nothing placed), so the cycle has nothing of its to
// double-count, leak or block; its members must still leave alone the room
// a label gang being placed has claimed. Here label gang big has one member
// waiting in Permit and a whole node claimed for the other, held back; the
// group's two half-node members both go to the one node left, the claim
// stays as it was through the group's reservations, and big then completes
// on the node claimed for it.
func TestNativePodGroupLeavesLabelGangClaimsAlone(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 3)...)
	big := gangPods("big", 2, 8)
	held()(big[1])
	c.Create(big...)
	c.waitWaiting("big", 1)
	placed, claimed := c.roundOf("big")
	if len(placed) != 1 || len(claimed) != 1 || c.plugin.claimedSlots.Load() != 1 {
		t.Fatalf("gang big: members on %v, claims %v (%d slots), want one of each", placed, claimed, c.plugin.claimedSlots.Load())
	}
	free := ""
	for _, n := range []string{"n-0", "n-1", "n-2"} {
		if _, ok := claimed[n]; !ok && !placed[n] {
			free = n
		}
	}

	c.createPodGroup("pg", 2, 4)
	for m, node := range c.WaitBound(30*time.Second, "pg-0", "pg-1") {
		if node != free {
			t.Errorf("%s bound to %s, want %s: the other nodes hold big's member and its claim", m, node, free)
		}
	}
	if p, cl := c.roundOf("big"); len(p) != 1 || len(cl) != 1 || cl[free] != 0 || c.plugin.claimedSlots.Load() != 1 {
		t.Fatalf("after the group bound, gang big: members on %v, claims %v (%d slots); want them as before", p, cl, c.plugin.claimedSlots.Load())
	}
	c.plugin.mu.Lock()
	_, native := c.plugin.gangs[gang.Ref{Source: gang.SourcePodGroup, Namespace: "team", Name: "pg"}.Key()]
	c.plugin.mu.Unlock()
	if native {
		t.Error("PennyGang holds state for the native PodGroup")
	}

	var want string
	for n := range claimed {
		want = n
	}
	c.unhold("big-1")
	if got := c.WaitBound(10*time.Second, "big-0", "big-1"); got["big-1"] != want {
		t.Errorf("big-1 bound to %q, want %s, the node claimed for it", got["big-1"], want)
	}
	if n := c.plugin.claimedSlots.Load(); n != 0 {
		t.Errorf("%d slots still claimed after big completed", n)
	}
}

// A native PodGroup whose members' own rules keep them off the nodes says
// so when it does not fit: with room for the whole group on on-demand nodes
// its members may not use yet (SpotRisk's wait for Spot capacity), the
// message that only named the GPUs the group needs sent a user looking for
// capacity the cluster has. It names how many nodes the rule ruled out, in
// the rule's own words.
func TestNativePodGroupWaitingForSpotSaysWhy(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	const waits = "node(s) are on-demand and the pod waits for Spot capacity until 2026-11-30T19:00:00Z (checkpointing training; fallback after 30m0s)"
	spotOnly := func(*corev1.Pod) (func(*corev1.Node) string, string) {
		return func(n *corev1.Node) string {
			if n.Labels[capacity.LabelKarpenter] == string(capacity.OnDemand) {
				return waits
			}
			return ""
		}, waits
	}
	c := startClusterWith(t, testArgs(), []Option{WithNodeRule(spotOnly)}, nodes("n", 3)...)
	c.createPodGroup("trainers", 2, 8)
	c.WaitEvent("trainers-0", "gang team/trainers: 0/2 members placeable, the other 2 need 16 nvidia.com/gpu in one zone on one capacity type; of 3 node(s), ruled out for them: 3 "+waits)
}
