package gang

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func withPriority(p int32) podOpt {
	return func(pod *corev1.Pod) { pod.Spec.Priority = ptr.To(p) }
}

func onNode(name string) podOpt {
	return func(pod *corev1.Pod) { pod.Spec.NodeSelector = map[string]string{corev1.LabelHostname: name} }
}

// claimedNode is the one node gang name has room claimed on.
func (c *cluster) claimedNode(gangName string) string {
	c.t.Helper()
	_, claimed := c.roundOf(gangName)
	if len(claimed) != 1 {
		c.t.Fatalf("gang %s claims room on %v, want one node", gangName, claimed)
	}
	for n := range claimed {
		return n
	}
	return ""
}

// A gang's claim keeps room only from pods of its own priority or lower, as
// kube-scheduler's nominated pods do (addGENominatedPods): held against
// every pod, it made a system-critical pod that fitted only in the room of a
// batch gang of priority 0 wait up to maxPermitTimeout, unable even to
// preempt for it (a claim is no pod DefaultPreemption could evict). Here
// gang llm (priority 0) has three members waiting in Permit and a whole node
// claimed for the fourth: pods and gangs of priority 0 or lower stay off
// that node, while a pod and a gang of priority 1000 that may use only that
// node are placed on it at once, long before the 30 s the round may last,
// and the gang's waiting members stay where they are.
func TestClaimsHoldRoomOnlyFromPodsOfNoHigherPriority(t *testing.T) {
	c, _ := threeOfFourWaiting(t)
	claimed := c.claimedNode("llm")
	c.Create(plainPod("equal", 8), plainPod("lower", 8, withPriority(-5)), member("peer", 1, 0, 8, withPriority(0)))
	c.NeverBound(time.Second, "equal", "lower", "peer-0")

	c.Create(plainPod("urgent", 8, withPriority(1000), onNode(claimed)))
	c.WaitBound(5*time.Second, "urgent")
	// The claim outlives the pod that took its room, for the member it was
	// made for; a gang of higher priority is admitted to it all the same.
	c.Delete("urgent")
	c.Create(member("vip", 1, 0, 8, withPriority(1000), onNode(claimed)))
	c.WaitBound(5*time.Second, "vip-0")
	c.NeverBound(500*time.Millisecond, "equal", "lower", "peer-0", "llm-0", "llm-1", "llm-2")
	if placed, _ := c.roundOf("llm"); len(placed) != 3 {
		t.Errorf("gang llm has members waiting on %v, want the 3 it had", placed)
	}
}

// waitCondition waits until pod's PodScheduled condition says text.
func (c *cluster) waitCondition(pod, text string) {
	c.t.Helper()
	var msg string
	err := pollFor(10*time.Second, func() bool {
		p, err := c.Client.CoreV1().Pods("team").Get(c.Ctx, pod, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodScheduled {
				msg = cond.Message
			}
		}
		return strings.Contains(msg, text)
	})
	if err != nil {
		c.t.Fatalf("%s's PodScheduled condition says %q, want it to say %q", pod, msg, text)
	}
}

// When a pod of higher priority takes the room a gang claimed, the gang
// does not end up half bound or stuck: its last member finds no room, the
// whole round is released (PostFilter) and the gang retries as a unit,
// binding every member once room comes back.
func TestGangWhoseClaimedRoomWasTakenRetriesWhole(t *testing.T) {
	c, _ := threeOfFourWaiting(t)
	c.Create(plainPod("urgent", 8, withPriority(1000)))
	c.WaitBound(5*time.Second, "urgent")
	// It took the free room the gang claimed rather than preempting a
	// member waiting in Permit.
	if placed, _ := c.roundOf("llm"); len(placed) != 3 {
		t.Fatalf("gang llm has members waiting on %v, want the 3 it had", placed)
	}

	c.unhold("llm-3")
	c.WaitEvent("llm-0", "gang team/llm released: member llm-3 fits no node; all 3 placed members were released")
	// The retry after the backoff finds room for three members only. (The
	// scheduler folds that FailedScheduling into the first one's series,
	// note unchanged; the pod's condition shows it.)
	c.waitCondition("llm-0", "gang team/llm: 3/4 members placeable")
	c.NeverBound(time.Second, names("llm", 4)...)
	if n := c.plugin.claimedSlots.Load(); n != 0 {
		t.Errorf("gang llm claims %d slots while it does not fit", n)
	}

	c.Delete("urgent")
	c.WaitBound(10*time.Second, names("llm", 4)...)
}
