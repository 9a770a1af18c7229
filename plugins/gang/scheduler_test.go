package gang

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/metricstest"
)

func nodes(prefix string, n int, opts ...nodeOpt) []*corev1.Node {
	out := make([]*corev1.Node, n)
	for i := range out {
		out[i] = gpuNode(fmt.Sprintf("%s-%d", prefix, i), opts...)
	}
	return out
}

func TestGangOfEightBindsWhenItFits(t *testing.T) {
	registerMetrics()
	scheduledBefore := metricstest.Counter(t, "penny_gang_attempts_total", "result", "scheduled")
	waitsBefore, _ := testutil.GetHistogramMetricCount(waitSeconds.ObserverMetric)
	c := startCluster(t, testArgs(), nodes("n", 8)...)
	var pods []*corev1.Pod
	for i := range 8 {
		pods = append(pods, member("llm", 8, i, 8))
	}
	c.Create(pods...)
	got := c.WaitBound(10*time.Second, names("llm", 8)...)
	used := map[string]bool{}
	for _, n := range got {
		used[n] = true
	}
	if len(used) != 8 {
		t.Errorf("8 whole-node members should use 8 nodes, used %d: %v", len(used), got)
	}
	if n := metricstest.Counter(t, "penny_gang_attempts_total", "result", "scheduled"); n != scheduledBefore+1 {
		t.Errorf("penny_gang_attempts_total{result=scheduled} went from %v to %v, want one more", scheduledBefore, n)
	}
	if n, _ := testutil.GetHistogramMetricCount(waitSeconds.ObserverMetric); n != waitsBefore+1 {
		t.Errorf("penny_gang_wait_seconds observed %d gangs, want %d", n, waitsBefore+1)
	}
}

func TestGangOfEightBindsNoneWhenOnlySevenFit(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 7)...)
	var pods []*corev1.Pod
	for i := range 8 {
		pods = append(pods, member("llm", 8, i, 8))
	}
	c.Create(pods...)
	c.WaitEvent("llm-0", "gang team/llm: 7/8 members placeable, the other 1 need 8 nvidia.com/gpu in one zone on one capacity type")
	c.NeverBound(2*time.Second, names("llm", 8)...)
}

func gangPods(name string, size int, gpus int64, opts ...podOpt) []*corev1.Pod {
	var pods []*corev1.Pod
	for i := range size {
		pods = append(pods, member(name, size, i, gpus, opts...))
	}
	return pods
}

// completeGangs returns the gangs whose members are all bound, and fails the
// test if any gang stays partly bound. Members of a gang are let through
// Permit together, but each binds with its own API call, so a gang can be
// seen half-bound for the moment those calls take.
func (c *cluster) completeGangs(gangs []string, size int) []string {
	c.t.Helper()
	var complete []string
	for _, g := range gangs {
		var n int
		settled := pollFor(2*time.Second, func() bool {
			n = len(c.Bound(names(g, size)...))
			return n == 0 || n == size
		})
		if settled != nil {
			c.t.Fatalf("gang %s stays partly bound: %d/%d members: %v", g, n, size, c.Bound(names(g, size)...))
		}
		if n == size {
			complete = append(complete, g)
		}
	}
	return complete
}

func TestCompetingGangsOneCompletesThenTheOther(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 8)...)
	// Two gangs of 8 whole-node members on 8 nodes, created interleaved so
	// that neither gets its members in first.
	a, b := gangPods("a", 8, 8), gangPods("b", 8, 8)
	for i := range 8 {
		c.Create(a[i], b[i])
	}
	var first, second string
	err := pollFor(10*time.Second, func() bool {
		done := c.completeGangs([]string{"a", "b"}, 8)
		if len(done) == 1 {
			first = done[0]
			return true
		}
		if len(done) > 1 {
			t.Fatalf("both gangs bound on capacity for one")
		}
		return false
	})
	if err != nil {
		t.Fatal("neither gang bound: the gangs deadlocked")
	}
	second = map[string]string{"a": "b", "b": "a"}[first]
	// The loser holds nothing and binds nothing while the winner runs.
	c.NeverBound(time.Second, names(second, 8)...)
	if n := c.plugin.claimedSlots.Load(); n != 0 {
		t.Errorf("gang %s still claims %d slots while it cannot fit", second, n)
	}
	// The winner finishes: the loser binds, whole.
	c.Delete(names(first, 8)...)
	c.WaitBound(10*time.Second, names(second, 8)...)
}

// TestInterleavedGangsNeverDeadlock is the scheduler-plugins #114/#117
// scenario: many gangs whose members arrive interleaved, on capacity for
// two at a time. Every round exactly two gangs complete and no gang is ever
// partly bound, until every gang has run.
func TestInterleavedGangsNeverDeadlock(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 2)...)
	gangs := []string{"g0", "g1", "g2", "g3", "g4", "g5"}
	pods := map[string][]*corev1.Pod{}
	for _, g := range gangs {
		pods[g] = gangPods(g, 4, 2) // 8 GPUs per gang; 16 GPUs in the cluster
	}
	for i := range 4 {
		for _, g := range gangs {
			c.Create(pods[g][i])
		}
	}
	ran := map[string]bool{}
	for round := 0; len(ran) < len(gangs); round++ {
		var done []string
		err := pollFor(15*time.Second, func() bool {
			done = nil
			for _, g := range c.completeGangs(gangs, 4) {
				if !ran[g] {
					done = append(done, g)
				}
			}
			return len(done) == min(2, len(gangs)-len(ran))
		})
		if err != nil {
			t.Fatalf("round %d: %d gangs completed (%v), want %d; ran so far %v", round, len(done), done, min(2, len(gangs)-len(ran)), ran)
		}
		for _, g := range done {
			ran[g] = true
			c.Delete(names(g, 4)...)
		}
	}
}

func pollFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("condition not met within %s", timeout)
}

// TestMembersArrivingApartStillForm: members that arrive far apart (further
// apart than the Permit timeout) still form a gang, and nothing is placed
// or held while the gang is incomplete.
func TestMembersArrivingApartStillForm(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 300 * time.Millisecond}
	c := startCluster(t, args, nodes("n", 8)...)
	pods := gangPods("llm", 8, 8)
	for _, p := range pods[:7] {
		c.Create(p)
		time.Sleep(100 * time.Millisecond)
	}
	c.WaitEvent("llm-0", "gang team/llm: 1/8 members exist, waiting for 7 more to be created")
	// Longer than the Permit timeout: if members were placed and waiting,
	// they would have been released by now.
	c.NeverBound(time.Second, names("llm", 8)...)
	c.plugin.mu.Lock()
	g := c.plugin.gangs[gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: "llm"}.Key()]
	c.plugin.mu.Unlock()
	if g != nil && (g.round != nil || len(g.placed) > 0) {
		t.Fatalf("an incomplete gang holds capacity: round %v, placed %v", g.round, g.placed)
	}
	if n := c.plugin.claimedSlots.Load(); n != 0 {
		t.Fatalf("an incomplete gang claims %d slots", n)
	}
	c.Create(pods[7])
	c.WaitBound(10*time.Second, names("llm", 8)...)
}

// waitWaiting waits until n members of gang are placed and waiting in Permit.
func (c *cluster) waitWaiting(gangName string, n int) {
	c.t.Helper()
	key := gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: gangName}.Key()
	err := pollFor(10*time.Second, func() bool {
		c.plugin.mu.Lock()
		defer c.plugin.mu.Unlock()
		g := c.plugin.gangs[key]
		return g != nil && g.round != nil && len(g.round.members) == n
	})
	if err != nil {
		c.t.Fatalf("gang %s never had %d members waiting", gangName, n)
	}
}

// threeOfFourWaiting starts four 8-GPU nodes and gang team/llm of four
// whole-node members, the fourth held back before the queue, and returns
// once the other three wait in Permit (for up to 30 s).
func threeOfFourWaiting(t *testing.T) (*cluster, []*corev1.Pod) {
	t.Helper()
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 4)...)
	pods := gangPods("llm", 4, 8)
	held()(pods[3])
	c.Create(pods...)
	c.waitWaiting("llm", 3)
	return c, pods
}

// TestMemberDeletedWhileOthersWaitReleasesEverything: three members are
// placed and wait for a fourth (held back before the queue). Deleting
// the fourth releases the three at once, long before their Permit timeout,
// and the capacity they held goes to another pod.
func TestMemberDeletedWhileOthersWaitReleasesEverything(t *testing.T) {
	c, _ := threeOfFourWaiting(t)

	// Every node is held: three by waiting members, one claimed for the
	// fourth member. A pod wanting a whole node must wait.
	other := plainPod("other", 8)
	c.Create(other)
	c.NeverBound(500*time.Millisecond, "other")

	start := time.Now()
	c.Delete("llm-3")
	c.WaitBound(5*time.Second, "other")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("release took %s; it should not wait for the 30s Permit timeout", d)
	}
	c.WaitEvent("llm-0", "member llm-3 was deleted and 3/4 members remain")
	c.NeverBound(500*time.Millisecond, names("llm", 3)...)
}

// A member relabelled out of its gang while the others wait leaves the gang
// short as a deleted one does: the rest are released at once. They held
// their nodes until the Permit timeout.
func TestMemberRelabelledOutWhileOthersWaitReleasesEverything(t *testing.T) {
	c, _ := threeOfFourWaiting(t)
	other := plainPod("other", 8)
	c.Create(other)
	c.NeverBound(500*time.Millisecond, "other")
	c.Update("llm-3", func(p *corev1.Pod) { p.Labels[gang.LabelName] = "another" })
	c.WaitBound(5*time.Second, "other")
	c.WaitEvent("llm-0", fmt.Sprintf("member llm-3 left the gang (its %s changed) and 3/4 members remain", gang.LabelName))
	c.NeverBound(500*time.Millisecond, names("llm", 3)...)
}

// A waiting member relabelled out of a gang that can still make its size
// without it does not bind with that gang: it gives its place back, the gang
// completes with the members it has, and the pod waits as a member of the
// gang it now names (a gang of three alone). It was bound with its old gang,
// running in the new one without that gang ever being admitted.
func TestWaitingMemberRelabelledOutDoesNotBindWithItsOldGang(t *testing.T) {
	// A fourth node: llm-3 need not wait for llm-0's.
	c := spareMemberWaiting(t, 4)
	c.Update("llm-0", func(p *corev1.Pod) { p.Labels[gang.LabelName] = "other" })
	c.unhold("llm-2")
	c.unhold("llm-3")
	c.WaitBound(10*time.Second, "llm-1", "llm-2", "llm-3")
	c.NeverBound(time.Second, "llm-0")
}

// TestPermitTimeoutReleasesTheGang: members that wait longer than the
// gang's Permit timeout are all released together; when the missing member
// can finally be placed, the whole gang binds.
func TestPermitTimeoutReleasesTheGang(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 500 * time.Millisecond}
	c := startCluster(t, args, nodes("n", 4)...)
	pods := gangPods("llm", 4, 8)
	held()(pods[3])
	c.Create(pods...)
	c.WaitEvent("llm-0", "gang team/llm released: not all members were placed within 500ms; all 3 placed members were released")
	c.NeverBound(time.Second, names("llm", 4)...)
	c.unhold("llm-3")
	c.WaitBound(10*time.Second, names("llm", 4)...)
}

// TestGangTimeoutAnnotationIsCapped: a gang's own timeout applies, but never
// above the cluster's maximum.
func TestGangTimeoutAnnotationIsCapped(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 200 * time.Millisecond}
	args.MaxPermitTimeout = &metav1.Duration{Duration: 400 * time.Millisecond}
	c := startCluster(t, args, nodes("n", 4)...)
	pods := gangPods("llm", 4, 8, withLabel(gang.KeyTimeout, "3600"))
	held()(pods[3])
	c.Create(pods...)
	c.WaitEvent("llm-0", "not all members were placed within 400ms")
}

// TestMemberThatFitsNowhereReleasesTheGang: the admission simulation counts
// resources only; a member that then fails another filter (here a host port
// taken on the one node left for it) releases its placed siblings at once
// (scheduler-plugins #713: they must not hold nodes until a timeout).
func TestMemberThatFitsNowhereReleasesTheGang(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 4)...)
	port := func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 8080}}
	}
	squatter := plainPod("squatter", 0, port)
	squatter.Spec.NodeName = "n-3"
	c.Create(squatter)
	c.Create(gangPods("llm", 4, 8, port)...)
	c.WaitEvent("llm-0", "fits no node; all 3 placed members were released")
	c.NeverBound(time.Second, names("llm", 4)...)
	c.Delete("squatter")
	c.WaitBound(10*time.Second, names("llm", 4)...)
}

// A member turned away by a PreFilter that runs before PennyGang's (here
// VolumeBinding: its PVC does not exist) releases its placed siblings at
// once too; they held their nodes until the timeout, again after every
// backoff.
func TestMemberAnEarlierPreFilterTurnsAwayReleasesTheGang(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 4)...)
	pods := gangPods("llm", 4, 8)
	pods[3].Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "missing"}}}}
	c.Create(pods...)
	c.WaitEvent("llm-0", "member llm-3 fits no node; all 3 placed members were released")
	c.NeverBound(time.Second, names("llm", 4)...)
}

// A gang that lacks CPU, not GPUs, is retried as soon as a pod that held
// CPU leaves, not at the scheduler's periodic flush of unschedulable pods
// (five minutes).
func TestGangShortOfCPURetriesWhenACPUPodLeaves(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 2)...)
	for i := range 2 {
		hog := plainPod(fmt.Sprint("hog-", i), 0)
		hog.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("60")
		hog.Spec.NodeName = fmt.Sprint("n-", i)
		c.Create(hog)
	}
	cpu8 := func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("8")
	}
	c.Create(gangPods("llm", 2, 8, cpu8)...)
	c.WaitEvent("llm-0", "gang team/llm: 0/2 members placeable")
	c.NeverBound(time.Second, names("llm", 2)...)
	c.Delete("hog-0", "hog-1")
	c.WaitBound(10*time.Second, names("llm", 2)...)
}

func TestGangStaysInOneZoneUnlessItSaysOtherwise(t *testing.T) {
	c := startCluster(t, testArgs(), append(nodes("a", 4, inZone("zone-a")), nodes("b", 4, inZone("zone-b"))...)...)
	c.Create(gangPods("split", 6, 8)...)
	c.WaitEvent("split-0", "gang team/split: 4/6 members placeable, the other 2 need 16 nvidia.com/gpu in one zone on one capacity type")
	c.NeverBound(500*time.Millisecond, names("split", 6)...)

	c.Create(gangPods("anyzone", 6, 8, withLabel(gang.KeySameZone, "false"))...)
	got := c.WaitBound(10*time.Second, names("anyzone", 6)...)
	zones := map[string]bool{}
	for _, n := range got {
		zones[n[:1]] = true
	}
	if len(zones) != 2 {
		t.Errorf("6 whole-node members on 4+4 nodes must span both zones: %v", got)
	}
}

func TestGangStaysOnOneCapacityType(t *testing.T) {
	c := startCluster(t, testArgs(), append(nodes("s", 4, capType(capacity.Spot)), nodes("o", 2, capType(capacity.OnDemand))...)...)
	c.Create(gangPods("llm", 3, 8)...)
	got := c.WaitBound(10*time.Second, names("llm", 3)...)
	for _, n := range got {
		if n[0] != 's' {
			t.Fatalf("3 members fit only on the 4 spot nodes, got %v", got)
		}
	}
	c.Create(gangPods("big", 2, 8)...)
	got = c.WaitBound(10*time.Second, names("big", 2)...)
	for _, n := range got {
		if n[0] != 'o' {
			t.Fatalf("a 2-member gang fits only on the 2 on-demand nodes now (1 spot node left), got %v", got)
		}
	}
}

func TestPlainPodsIgnoreGangs(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 2)...)
	c.Create(plainPod("a", 4), plainPod("b", 8))
	c.WaitBound(5*time.Second, "a", "b")
}

func TestMalformedGangIsReported(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 1)...)
	bad := plainPod("bad", 1, withLabel(gang.LabelName, "x"))
	c.Create(bad)
	c.WaitEvent("bad", "has no penny.dev/gang-size")
	c.NeverBound(300*time.Millisecond, "bad")

	c.Create(member("mixed", 2, 0, 1), member("mixed", 3, 1, 1))
	c.WaitEvent("mixed-1", "members disagree on penny.dev/gang-size")
	c.NeverBound(300*time.Millisecond, "mixed-0", "mixed-1")
}

// Where the API server keeps spec.schedulingGroup but penny-scheduler runs
// without the GenericWorkload gate, neither GangScheduling nor the pod group
// cycle runs, so nothing else holds the group together: three of its four
// members bound, one by one, on three free nodes.
func TestNativeGroupWithoutTheFeatureGateIsHeldAndTold(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 3)...)
	for i := range 4 {
		c.Create(plainPod(fmt.Sprint("pg-", i), 8, func(p *corev1.Pod) {
			p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("pg")}
		}))
	}
	c.WaitEvent("pg-0", `names PodGroup "pg" in spec.schedulingGroup but penny-scheduler runs without the GenericWorkload feature gate`)
	c.NeverBound(time.Second, names("pg", 4)...)

	// What the plugin remembered of the held group goes with its pods.
	c.Delete(names("pg", 4)...)
	key := gang.Ref{Source: gang.SourcePodGroup, Namespace: "team", Name: "pg"}.Key()
	err := pollFor(5*time.Second, func() bool {
		c.plugin.mu.Lock()
		defer c.plugin.mu.Unlock()
		_, kept := c.plugin.gangs[key]
		return !kept
	})
	if err != nil {
		t.Error("the plugin still holds state for a PodGroup whose pods are all gone")
	}
}

// hasRound reports whether gang name has a round (room claimed, members
// possibly waiting in Permit).
func (c *cluster) hasRound(gangName string) bool {
	c.plugin.mu.Lock()
	defer c.plugin.mu.Unlock()
	g := c.plugin.gangs[gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: gangName}.Key()]
	return g != nil && g.round != nil
}

// A member whose gang keys are malformed is held by PreEnqueue, yet it
// counts as a member, so its siblings were admitted for it: they claimed
// room and waited in Permit for a member that could never come, were
// released at the timeout and did it again after every backoff, told only
// that not all members were placed in time. The gang must claim nothing
// until the member is fixed, and its siblings must be told which member to
// fix.
func TestMalformedMemberHoldsItsGangWithoutClaimingRoom(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 2)...)
	malformed := member("llm", 2, 1, 8)
	malformed.Labels[gang.KeySize] = "two"
	c.Create(malformed)
	c.WaitEvent("llm-1", `penny.dev/gang-size="two" is not a whole number >= 1`)
	c.Create(member("llm", 2, 0, 8))
	if err := pollFor(time.Second, func() bool { return c.hasRound("llm") || c.plugin.claimedSlots.Load() != 0 }); err == nil {
		t.Fatal("the gang claimed room for a member that cannot be scheduled")
	}
	c.WaitEvent("llm-0", `member llm-1 must be fixed first: pod team/llm-1: penny.dev/gang-size="two" is not a whole number >= 1`)
	c.NeverBound(300*time.Millisecond, names("llm", 2)...)

	c.Update("llm-1", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitBound(10*time.Second, names("llm", 2)...)
}

// A pod held for a malformed gang key is retried as soon as the user fixes
// the key, whether a label or an annotation, not at the scheduler's
// five-minute flush of unschedulable pods.
func TestFixingAMalformedKeyRetriesThePod(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 1)...)
	bad := plainPod("bad", 1, withLabel(gang.LabelName, "x"))
	bad.Annotations = map[string]string{gang.KeySize: "one"}
	c.Create(bad)
	c.WaitEvent("bad", `penny.dev/gang-size="one" is not a whole number >= 1`)
	c.Update("bad", func(p *corev1.Pod) { p.Annotations[gang.KeySize] = "1" })
	c.WaitBound(5*time.Second, "bad")

	c.Create(member("mixed", 2, 0, 1), member("mixed", 3, 1, 1))
	c.WaitEvent("mixed-1", "members disagree on penny.dev/gang-size")
	c.Update("mixed-1", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitBound(5*time.Second, "mixed-0", "mixed-1")
}

// penny_gang_wait_seconds runs from a gang's first attempt until its members
// are placed together. A member placed next to enough running ones (here
// the third of a gang of two) started that clock although it needed no
// admission, and nothing stopped it: the gang's next admission, after its
// running members went away, was measured from then, not from its own
// first attempt.
func TestGangWaitIsMeasuredFromTheAdmissionsOwnFirstAttempt(t *testing.T) {
	registerMetrics()
	c := startCluster(t, testArgs(), nodes("n", 3)...)
	c.Create(member("llm", 2, 0, 8), member("llm", 2, 1, 8), member("llm", 2, 2, 8))
	c.WaitBound(10*time.Second, names("llm", 3)...)

	const idle = 2 * time.Second
	time.Sleep(idle)
	countBefore, _ := testutil.GetHistogramMetricCount(waitSeconds.ObserverMetric)
	sumBefore, _ := testutil.GetHistogramMetricValue(waitSeconds.ObserverMetric)
	c.Delete("llm-0", "llm-1")
	c.Create(member("llm", 2, 3, 8))
	c.WaitBound(10*time.Second, "llm-3")
	count, _ := testutil.GetHistogramMetricCount(waitSeconds.ObserverMetric)
	sum, _ := testutil.GetHistogramMetricValue(waitSeconds.ObserverMetric)
	if count != countBefore+1 {
		t.Fatalf("penny_gang_wait_seconds observed %d gangs, want 1", count-countBefore)
	}
	if waited := time.Duration((sum - sumBefore) * float64(time.Second)); waited >= idle {
		t.Errorf("penny_gang_wait_seconds observed %s for an admission that took moments; it counted the %s the gang ran", waited, idle)
	}
}

// The shortfall counts a gang's members, as every other gang message does
// ("k/n members exist", "k/n members placed"): with two of four members
// running and room for one more, 3/4 are placeable, not "1/2".
func TestShortfallCountsRunningMembers(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 3)...)
	pods := gangPods("llm", 4, 8)
	pods[0].Spec.NodeName, pods[1].Spec.NodeName = "n-0", "n-1"
	c.Create(pods...)
	c.WaitEvent("llm-2", "gang team/llm: 3/4 members placeable, the other 1 need 8 nvidia.com/gpu in zone zone-a, capacity type on-demand, where its running members are")
	c.NeverBound(300*time.Millisecond, "llm-2", "llm-3")
}

// spareMemberWaiting starts a gang of three with four members on n nodes:
// llm-0 and llm-1 wait in Permit, llm-2 and llm-3 are held back.
func spareMemberWaiting(t *testing.T, n int) *cluster {
	t.Helper()
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", n)...)
	pods := gangPods("llm", 4, 8)
	for _, p := range pods {
		p.Labels[gang.KeySize] = "3"
	}
	held()(pods[2])
	held()(pods[3])
	c.Create(pods...)
	c.waitWaiting("llm", 2)
	return c
}

// A gang with a spare member loses one of its waiting members: enough
// remain, so the gang keeps its round (onPodDelete says so), and the room
// the deleted member held stays claimed for the others. The scheduler's
// own rejection of the deleted pod reached Unreserve, which released the
// whole gang anyway and sent it into backoff.
func TestDeletingASpareWaitingMemberKeepsTheRound(t *testing.T) {
	c := spareMemberWaiting(t, 3)
	c.Delete("llm-0")
	err := pollFor(time.Second, func() bool {
		c.plugin.mu.Lock()
		defer c.plugin.mu.Unlock()
		g := c.plugin.gangs[gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: "llm"}.Key()]
		return g == nil || g.round == nil
	})
	if err == nil {
		t.Fatal("the gang was released although three members remain for a size of three")
	}
	// The deleted member's node stays claimed for the members to come.
	c.Create(plainPod("other", 8))
	c.NeverBound(500*time.Millisecond, "other")
	c.unhold("llm-2")
	c.unhold("llm-3")
	c.WaitBound(10*time.Second, "llm-1", "llm-2", "llm-3")
}

// TestNodeDeletedUnderAWaitingMemberReleasesTheGang: a member waits in
// Permit on a node that is then deleted (a Spot node reclaimed while the
// gang is being placed). The scheduler does not reject waiting pods when
// their node goes, so the member used to be allowed with its siblings and
// bound to a node that no longer exists, leaving the gang a member short
// once the pod garbage collector removed it. The gang is released at once,
// told which node went, and binds whole on the nodes that remain.
func TestNodeDeletedUnderAWaitingMemberReleasesTheGang(t *testing.T) {
	c, pods := threeOfFourWaiting(t)

	c.plugin.mu.Lock()
	gone := c.plugin.gangs[gang.Ref{Source: gang.SourceLabel, Namespace: "team", Name: "llm"}.Key()].placed[pods[0].UID]
	c.plugin.mu.Unlock()
	if gone == "" {
		t.Fatal("llm-0 waits in Permit but the plugin does not know its node")
	}
	c.DeleteNode(gone)
	c.WaitEvent("llm-0", fmt.Sprintf("gang team/llm released: node %s, where member llm-0 was placed, was deleted", gone))

	c.AddNode(gpuNode("n-4"))
	c.unhold("llm-3")
	got := c.WaitBound(10*time.Second, names("llm", 4)...)
	for pod, node := range got {
		if node == gone {
			t.Errorf("%s was bound to deleted node %s: %v", pod, gone, got)
		}
	}
}

// The gang's placement rules came from whichever member was tried first,
// so members that disagree on penny.dev/gang-same-zone were placed in one
// zone or across two depending on queue order, and nobody was told. They
// are held and told, as for gang-size; a member that leaves a key unset
// agrees with one that sets the scheduler's default.
func TestMembersDisagreeingOnPlacementRulesAreHeld(t *testing.T) {
	c := startCluster(t, testArgs(), append(nodes("a", 1, inZone("zone-a")), nodes("b", 1, inZone("zone-b"))...)...)
	pods := gangPods("split", 2, 8)
	pods[1].Labels[gang.KeySameZone] = "false"
	c.Create(pods...)
	c.WaitEvent("split-0", "members disagree on penny.dev/gang-same-zone")
	c.NeverBound(300*time.Millisecond, names("split", 2)...)
	c.Update("split-0", func(p *corev1.Pod) { p.Labels[gang.KeySameZone] = "false" })
	c.WaitBound(5*time.Second, names("split", 2)...)

	agreeing := gangPods("same", 2, 0)
	agreeing[0].Labels[gang.KeySameCapacityType] = "true"
	c.Create(agreeing...)
	c.WaitBound(5*time.Second, names("same", 2)...)
}

// Any member may set the gang's timeout; two that set different ones would
// leave the wait to whichever the informer lists first.
func TestMembersDisagreeingOnTheTimeoutAreHeld(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("a", 3)...)
	pods := gangPods("slow", 3, 8)
	pods[0].Annotations = map[string]string{gang.KeyTimeout: "90s"}
	pods[1].Annotations = map[string]string{gang.KeyTimeout: "2m"}
	c.Create(pods...)
	c.WaitEvent("slow-2", "members disagree on penny.dev/gang-timeout: slow-0 say 1m30s; slow-1 say 2m0s")
	c.NeverBound(300*time.Millisecond, names("slow", 3)...)
	c.Update("slow-1", func(p *corev1.Pod) { p.Annotations[gang.KeyTimeout] = "90" })
	c.WaitBound(5*time.Second, names("slow", 3)...)
}

// A member carrying spec.schedulingGates (a user's, or Kueue's while it
// holds the workload) counted as an existing member: its siblings were
// admitted, claimed the whole gang's room and waited in Permit for a member
// that could not come until its gate was lifted, released at the timeout
// and did it again after every backoff, holding the nodes the whole time.
// The gang must claim nothing while too few members are free of gates, say
// which members are gated, and start as soon as the gate is lifted.
func TestGatedMemberHoldsItsGangWithoutClaimingRoom(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 4)...)
	pods := gangPods("llm", 4, 8)
	gated()(pods[3])
	c.Create(pods...)
	c.WaitEvent("llm-0", "gang team/llm: 3/4 members may be scheduled; 1 has scheduling gates (llm-3: test.penny.dev/hold); waiting for 1 to be ungated")
	if err := pollFor(time.Second, func() bool { return c.hasRound("llm") || c.plugin.claimedSlots.Load() != 0 }); err == nil {
		t.Fatal("the gang claimed room while one of its members carries a scheduling gate")
	}
	c.NeverBound(300*time.Millisecond, names("llm", 4)...)

	// Lifting the gate starts the gang at once, not at the scheduler's
	// five-minute flush of unschedulable pods.
	c.ungate("llm-3")
	c.WaitBound(5*time.Second, names("llm", 4)...)
}

// Lifting a member's gate retries the members held for it at once, whether
// or not the gang then fits: the scheduler dispatches no other pod's update
// to plugins, and nothing else would retry them before its five-minute
// flush of unschedulable pods. Here the gang does not fit, and every member
// must say so, not only the one ungated.
func TestUngatingAMemberRetriesTheMembersHeldForIt(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 1)...)
	pods := gangPods("llm", 2, 8)
	gated()(pods[1])
	c.Create(pods...)
	c.WaitEvent("llm-0", "gang team/llm: 1/2 members may be scheduled; 1 has scheduling gates (llm-1: test.penny.dev/hold); waiting for 1 to be ungated")
	c.ungate("llm-1")
	c.WaitEvent("llm-0", "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu")
}

// Each profile of a scheduler has its own PennyGang, with its own claims and
// its own count of placed members, and a pod is only ever tried by the
// profile its schedulerName names. Members that name different schedulers
// (another Penny profile, or another scheduler) were each counted as
// members by every profile: this profile's members claimed room for the
// whole gang and waited in Permit for members it would never place, until
// their timeout, again after every backoff. They are held and told which
// members name which scheduler, as for the other gang keys.
func TestMembersNamingDifferentSchedulersAreHeld(t *testing.T) {
	args := testArgs()
	args.PermitTimeout = &metav1.Duration{Duration: 30 * time.Second}
	c := startCluster(t, args, nodes("n", 2)...)
	pods := gangPods("llm", 2, 8)
	pods[1].Spec.SchedulerName = "penny-batch"
	c.Create(pods...)
	c.WaitEvent("llm-0", "gang team/llm: members disagree on spec.schedulerName: this pod says \"penny-scheduler\" but llm-1 say \"penny-batch\"; give every member the same schedulerName (recreate the odd ones: a pod's schedulerName cannot be changed)")
	if err := pollFor(time.Second, func() bool { return c.hasRound("llm") || c.plugin.claimedSlots.Load() != 0 }); err == nil {
		t.Fatal("the gang claimed room for a member another scheduler places")
	}
	c.NeverBound(300*time.Millisecond, "llm-0")

	c.Delete("llm-1")
	c.Create(member("llm", 2, 1, 8))
	c.WaitBound(5*time.Second, names("llm", 2)...)
}

// Deleting the member that holds its gang (a malformed key, or a
// disagreeing timeout or schedulerName) leaves members that agree and are
// enough. Nothing retried them: the scheduler dispatches no unscheduled
// pod's deletion to plugins, so they waited for the next member to arrive
// or the scheduler's five-minute flush of unschedulable pods.
func TestDeletingTheMemberThatHeldTheGangRetriesTheRest(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 1)...)
	malformed := gangPods("bad", 3, 1)
	for _, p := range malformed {
		p.Labels[gang.KeySize] = "2"
	}
	malformed[2].Labels[gang.KeySize] = "two"
	timeouts := gangPods("slow", 3, 1)
	for _, p := range timeouts {
		p.Labels[gang.KeySize] = "2"
	}
	timeouts[0].Annotations = map[string]string{gang.KeyTimeout: "90s"}
	timeouts[2].Annotations = map[string]string{gang.KeyTimeout: "2m"}
	schedulers := gangPods("other", 3, 1)
	for _, p := range schedulers {
		p.Labels[gang.KeySize] = "2"
	}
	schedulers[2].Spec.SchedulerName = "penny-batch"
	// The odd member first, or the others would form the gang before it came.
	for _, pods := range [][]*corev1.Pod{malformed, timeouts, schedulers} {
		c.Create(pods[2], pods[0], pods[1])
	}
	c.WaitEvent("bad-0", "member bad-2 must be fixed first")
	c.WaitEvent("slow-0", "members disagree on penny.dev/gang-timeout")
	c.WaitEvent("other-0", "members disagree on spec.schedulerName")

	c.Delete("bad-2", "slow-2", "other-2")
	c.WaitBound(5*time.Second, "bad-0", "bad-1", "slow-0", "slow-1", "other-0", "other-1")
}

// A running member can be the one that holds the rest: its gang key is
// fixed with a label edit, an update the scheduler dispatches to no plugin
// that held the others, so without the plugin's own wake-up they would wait
// for the queue's five-minute flush.
func TestFixingARunningMemberRetriesTheMembersHeldForIt(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 2)...)
	running := member("fix", 2, 0, 8)
	running.Labels[gang.KeySize] = "3"
	running.Spec.NodeName = "n-0"
	c.Create(running)
	c.Create(member("fix", 2, 1, 8))
	c.WaitEvent("fix-1", "members disagree on penny.dev/gang-size")

	c.Update("fix-0", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitBound(5*time.Second, "fix-1")
}

// Editing gang-size down on queued members, one at a time, holds the first
// edited: its siblings still say the old size. The scheduler hands the last
// edit only to that member's own hints, and the first edited waited for the
// last one's admission to activate it, which a gang that does not fit never
// has: it kept saying the members disagree until the queue's five-minute
// flush. Every member must say the gang does not fit, as after any change
// that completes a gang.
func TestEditingTheGangSizeRetriesTheMembersHeldForIt(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 1)...)
	c.Create(gangPods("llm", 4, 8)[:2]...)
	c.WaitEvent("llm-1", "gang team/llm: 2/4 members exist, waiting for 2 more to be created")

	c.Update("llm-0", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitEvent("llm-0", "members disagree on penny.dev/gang-size: this pod says 2 but llm-1 say 4")
	c.Update("llm-1", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitEvent("llm-1", "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu")
	c.WaitEvent("llm-0", "gang team/llm: 1/2 members placeable, the other 1 need 8 nvidia.com/gpu")
}

// Fixing the odd member that held a spare one (a member beyond gang-size)
// next to a running member: the odd one completes the gang alone, so no
// admission activates the spare, and it waited for the queue's five-minute
// flush although it only joins the running ones.
func TestFixingAQueuedMemberRetriesTheSpareHeldForIt(t *testing.T) {
	c := startCluster(t, testArgs(), nodes("n", 3)...)
	running := member("fix", 2, 0, 8)
	running.Spec.NodeName = "n-0"
	c.Create(running)
	c.Create(member("fix", 3, 2, 8))
	c.WaitEvent("fix-2", "members disagree on penny.dev/gang-size")
	c.Create(member("fix", 2, 1, 8))
	c.WaitEvent("fix-1", "members disagree on penny.dev/gang-size: this pod says 2 but fix-2 say 3")

	c.Update("fix-2", func(p *corev1.Pod) { p.Labels[gang.KeySize] = "2" })
	c.WaitBound(5*time.Second, "fix-1", "fix-2")
}
