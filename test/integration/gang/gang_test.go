// Package gang tests Penny's gang scheduling on a real kube-apiserver and
// etcd, with KWOK GPU nodes and penny-scheduler running the deployed profile:
// all or nothing, competing gangs, members arriving apart, a member held by a
// scheduling gate, a node deleted under a placed member, the deletion of a
// member that held its gang, and a pod of higher priority taking the room a
// gang claimed.
package gang

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// Eight 8-GPU nodes: room for exactly one gang of eight whole-node members.
const fleet = `
pools:
- {name: h100, count: 8, instanceType: p5.48xlarge, gpuModel: H100-80GB, gpusPerNode: 8, capacityType: on-demand, zone: z1, cpu: "192", memory: 2048Gi}
`

// env is a local cluster with penny-scheduler running the deployed
// configuration, with the gang plugin's Permit timeout set for the test.
type env struct {
	t *testing.T
	c *localcluster.Cluster
}

func start(t *testing.T, permitTimeout string) *env {
	t.Helper()
	return startWith(t, fleet, permitTimeout)
}

// startWith is start with the nodes of another cluster spec.
func startWith(t *testing.T, nodes, permitTimeout string) *env {
	t.Helper()
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, nodes)})
	harness.StartScheduler(t, c, plugins.Deps{}, withGangArgs(t, map[string]any{"permitTimeout": permitTimeout, "backoff": "500ms", "maxBackoff": "2s"}))
	return &env{t: t, c: c}
}

// withGangArgs is the deployed configuration with some PennyGang args
// replaced, so the tests run the profile users get with test-sized timeouts.
func withGangArgs(t *testing.T, args map[string]any) []byte {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(deploy.SchedulerConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range cfg["profiles"].([]any) {
		for _, pc := range p.(map[string]any)["pluginConfig"].([]any) {
			pc := pc.(map[string]any)
			if pc["name"] != "PennyGang" {
				continue
			}
			for k, v := range args {
				pc["args"].(map[string]any)[k] = v
			}
			found = true
		}
	}
	if !found {
		t.Fatal("deploy/scheduler/config.yaml does not configure PennyGang")
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// member is pod i of gang name, asking for a whole 8-GPU node.
func member(name string, size, i int) *corev1.Pod {
	p := harness.Pod(fmt.Sprintf("%s-%d", name, i), corev1.ResourceList{
		gpu.ResourceGPU:    resource.MustParse("8"),
		corev1.ResourceCPU: resource.MustParse("8"),
	})
	p.Labels = map[string]string{gang.LabelName: name, gang.KeySize: fmt.Sprint(size)}
	return p
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// bound counts the named pods that have a node.
func (e *env) bound(pods ...string) int {
	n := 0
	for _, name := range pods {
		p, err := e.c.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && p.Spec.NodeName != "" {
			n++
		}
	}
	return n
}

// waitAllBound waits until every named pod is bound.
func (e *env) waitAllBound(timeout time.Duration, pods ...string) {
	e.t.Helper()
	for _, p := range pods {
		harness.WaitForPod(e.t, e.c, "default", p, timeout, "bound", harness.Bound)
	}
}

// noneBound checks for d that no named pod binds.
func (e *env) noneBound(d time.Duration, pods ...string) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if n := e.bound(pods...); n > 0 {
			e.t.Fatalf("%d of %v bound; want none", n, pods)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) delete(pods ...string) {
	e.t.Helper()
	for _, p := range pods {
		err := e.c.Client.CoreV1().Pods("default").Delete(context.Background(), p, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		if err != nil {
			e.t.Fatal(err)
		}
	}
}

// waitGone waits until the named pods no longer exist, so the capacity they
// held is free in the scheduler's view.
func (e *env) waitGone(pods ...string) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		for _, p := range pods {
			if _, err := e.c.Client.CoreV1().Pods("default").Get(ctx, p, metav1.GetOptions{}); err == nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("pods %v still exist", pods)
	}
}

// TestGangOfEightBindsAllOrNone: a gang that fits binds all eight members; a
// second gang of eight, with room for seven, binds none and says why.
func TestGangOfEightBindsAllOrNone(t *testing.T) {
	e := start(t, "30s")
	for i := range 8 {
		harness.CreatePod(t, e.c, member("first", 8, i))
	}
	e.waitAllBound(60*time.Second, names("first", 8)...)

	// Free seven of the eight nodes: the next gang of eight has room for seven.
	e.delete(names("first", 8)[1:]...)
	e.waitGone(names("first", 8)[1:]...)
	for i := range 8 {
		harness.CreatePod(t, e.c, member("second", 8, i))
	}
	msg := harness.WaitForEvent(t, e.c, "default", "second-0", "FailedScheduling", 60*time.Second)
	if !strings.Contains(msg, "gang default/second: 7/8 members placeable, the other 1 need 8 nvidia.com/gpu") {
		t.Errorf("FailedScheduling %q does not say the gang is one member short", msg)
	}
	e.noneBound(3*time.Second, names("second", 8)...)

	// When the last node frees up, the whole gang binds.
	e.delete("first-0")
	e.waitAllBound(60*time.Second, names("second", 8)...)
}

// TestCompetingGangsOneBindsThenTheOther: two gangs of eight created
// interleaved on room for one. Exactly one binds fully and the other not at
// all; when the first finishes, the other binds fully.
func TestCompetingGangsOneBindsThenTheOther(t *testing.T) {
	e := start(t, "30s")
	for i := range 8 {
		harness.CreatePod(t, e.c, member("red", 8, i))
		harness.CreatePod(t, e.c, member("blue", 8, i))
	}
	var winner, loser string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		red, blue := e.bound(names("red", 8)...), e.bound(names("blue", 8)...)
		if red > 0 && blue > 0 {
			t.Fatalf("both gangs hold nodes: red %d/8, blue %d/8", red, blue)
		}
		switch {
		case red == 8:
			winner, loser = "red", "blue"
		case blue == 8:
			winner, loser = "blue", "red"
		}
		return winner != "", nil
	})
	if err != nil {
		t.Fatalf("neither gang bound fully: red %d/8, blue %d/8", e.bound(names("red", 8)...), e.bound(names("blue", 8)...))
	}
	e.noneBound(3*time.Second, names(loser, 8)...)

	e.delete(names(winner, 8)...)
	e.waitAllBound(60*time.Second, names(loser, 8)...)
}

// TestMembersArrivingApartStillForm: members created seconds apart, with a
// gap longer than the Permit timeout (the honest stand-in for minutes: a
// member that had been placed and left waiting would have been released),
// still form the gang, and nothing binds or is held before the last one.
func TestMembersArrivingApartStillForm(t *testing.T) {
	e := start(t, "1s")
	for i := range 7 {
		harness.CreatePod(t, e.c, member("late", 8, i))
	}
	msg := harness.WaitForEvent(t, e.c, "default", "late-0", "GangWaiting", 30*time.Second)
	if !strings.Contains(msg, "members exist, waiting for") {
		t.Errorf("GangWaiting %q does not say members are missing", msg)
	}
	// Longer than the Permit timeout; nothing binds, nothing is released
	// (nothing was ever placed).
	e.noneBound(4*time.Second, names("late", 7)...)
	evs, err := e.c.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "reason=GangReleased"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) > 0 {
		t.Errorf("an incomplete gang held capacity and was released: %s", evs.Items[0].Message)
	}
	harness.CreatePod(t, e.c, member("late", 8, 7))
	e.waitAllBound(60*time.Second, names("late", 8)...)
}

// TestGatedMemberClaimsNothingUntilUngated: a member carrying a scheduling
// gate (a user's, or Kueue's while it holds the workload) cannot be placed,
// so its seven siblings must not reserve nodes and wait in Permit for it:
// they held all eight nodes until their timeout, again after every backoff.
// The gang claims nothing and says which member is gated; when the gate is
// lifted, the whole gang binds at once.
func TestGatedMemberClaimsNothingUntilUngated(t *testing.T) {
	e := start(t, "60s")
	for i := range 8 {
		p := member("held", 8, i)
		if i == 7 {
			p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "example.com/not-yet"}}
		}
		harness.CreatePod(t, e.c, p)
	}
	msg := harness.WaitForEvent(t, e.c, "default", "held-0", "GangGated", 30*time.Second)
	if want := "gang default/held: 7/8 members may be scheduled; 1 has scheduling gates (held-7: example.com/not-yet); waiting for 1 to be ungated"; msg != want {
		t.Errorf("GangGated %q, want %q", msg, want)
	}
	// No node is held for the gang: a pod wanting a whole node binds now,
	// not after the gang's 60s Permit timeout.
	other := harness.Pod("other", corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("8"), corev1.ResourceCPU: resource.MustParse("8")})
	harness.CreatePod(t, e.c, other)
	harness.WaitForPod(t, e.c, "default", "other", 20*time.Second, "bound", harness.Bound)
	e.noneBound(time.Second, names("held", 8)...)
	e.delete("other")
	e.waitGone("other")

	held7, err := e.c.Client.CoreV1().Pods("default").Get(context.Background(), "held-7", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	held7.Spec.SchedulingGates = nil
	if _, err := e.c.Client.CoreV1().Pods("default").Update(context.Background(), held7, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitAllBound(30*time.Second, names("held", 8)...)
	evs, err := e.c.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "reason=GangReleased"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) > 0 {
		t.Errorf("the gang held nodes for its gated member and was released: %s", evs.Items[0].Message)
	}
}

// Three 8-GPU nodes: room for one gang of three whole-node members, and for
// none once a node goes.
const threeNodes = `
pools:
- {name: h100, count: 3, instanceType: p5.48xlarge, gpuModel: H100-80GB, gpusPerNode: 8, capacityType: on-demand, zone: z1, cpu: "192", memory: 2048Gi}
`

// neverTried makes p a member that counts toward its gang and is planned
// for but never tried: its ResourceClaim does not exist, so DynamicResources
// keeps it out of the queue (PreEnqueue), and the placed members wait in
// Permit for it. (A member that is tried and fails, such as one whose
// PersistentVolumeClaim does not exist, releases them at once.)
func neverTried(p *corev1.Pod) {
	p.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "data", ResourceClaimName: ptr.To("not-yet")}}
}

// TestNodeDeletedUnderAWaitingMemberReleasesTheGang: two members of a gang
// of three are placed and wait in Permit for the third, when the node one of
// them is reserved on is deleted (a Spot node reclaimed mid-placement).
// kube-scheduler rejects no waiting pod when its node goes: without the gang
// plugin the member would be allowed with its siblings and bound to a node
// that no longer exists. The gang is released at once, every placed member
// told which node went, and once there is room again the whole gang binds on
// nodes that exist.
func TestNodeDeletedUnderAWaitingMemberReleasesTheGang(t *testing.T) {
	// Long enough that only the node's deletion can release the gang.
	e := startWith(t, threeNodes, "5m")
	for i := range 3 {
		p := member("spot", 3, i)
		if i == 2 {
			// The others wait in Permit for it.
			neverTried(p)
		}
		harness.CreatePod(t, e.c, p)
	}
	// The scheduler nominates a pod's node when the pod is about to wait in
	// Permit (NominatedNodeNameForExpectation): the only sign, on the API,
	// that a member is reserved and waiting.
	waiting := func(p *corev1.Pod) bool { return p.Status.NominatedNodeName != "" && !harness.Bound(p) }
	spot0 := harness.WaitForPod(t, e.c, "default", "spot-0", 60*time.Second, "waiting in Permit", waiting)
	harness.WaitForPod(t, e.c, "default", "spot-1", 60*time.Second, "waiting in Permit", waiting)
	gone := spot0.Status.NominatedNodeName
	if err := e.c.Client.CoreV1().Nodes().Delete(context.Background(), gone, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	want := fmt.Sprintf("gang default/spot released: node %s, where member spot-0 was placed, was deleted; all 2 placed members were released and the gang retries in 500ms", gone)
	for _, name := range names("spot", 2) {
		if msg := harness.WaitForEvent(t, e.c, "default", name, "GangReleased", 30*time.Second); msg != want {
			t.Errorf("GangReleased on %s: %q, want %q", name, msg, want)
		}
	}
	// Two nodes cannot hold three whole-node members: the gang binds nothing,
	// on the nodes left or on the one that went.
	e.noneBound(3*time.Second, names("spot", 3)...)

	// The member that never came is replaced by one that can be placed while
	// the gang has no room (so no round is released for it), and a node is
	// added: now the gang fits, and binds whole.
	e.delete("spot-2")
	e.waitGone("spot-2")
	harness.CreatePod(t, e.c, member("spot", 3, 2))
	spec := harness.ParseSpec(t, threeNodes)
	if err := e.c.AddNodes(context.Background(), spec.Pools[0].Node(spec.Region, "h100-3")); err != nil {
		t.Fatal(err)
	}
	e.waitAllBound(60*time.Second, names("spot", 3)...)
	nodes := map[string]string{}
	for _, name := range names("spot", 3) {
		p, err := e.c.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodes[name] = p.Spec.NodeName
	}
	for name, node := range nodes {
		if node == gone {
			t.Errorf("%s was bound to deleted node %s: %v", name, gone, nodes)
		}
	}
}

// TestDeletingTheMemberThatHeldTheGangRetriesTheRest: a gang of size two has
// a third member that holds it (a malformed size, a disagreeing timeout,
// another schedulerName), so PreEnqueue keeps the other two out of the
// queue. Deleting the odd member leaves two that agree and make the gang.
// The scheduler dispatches no unscheduled pod's deletion to plugins, so
// unless the gang plugin retries them, they wait for the scheduler's
// five-minute flush of unschedulable pods; they must bind well before it.
func TestDeletingTheMemberThatHeldTheGangRetriesTheRest(t *testing.T) {
	e := start(t, "30s")
	odd := map[string]func(*corev1.Pod){
		"bad": func(p *corev1.Pod) { p.Labels[gang.KeySize] = "two" },
		"slow": func(p *corev1.Pod) {
			p.Annotations = map[string]string{gang.KeyTimeout: "2m"}
		},
		"other": func(p *corev1.Pod) { p.Spec.SchedulerName = "penny-batch" },
	}
	for name, spoil := range odd {
		pods := []*corev1.Pod{member(name, 2, 2), member(name, 2, 0), member(name, 2, 1)}
		spoil(pods[0])
		if name == "slow" {
			pods[1].Annotations = map[string]string{gang.KeyTimeout: "90s"}
		}
		// The odd member first, or the others would form the gang before it
		// came.
		for _, p := range pods {
			harness.CreatePod(t, e.c, p)
		}
	}
	told := map[string]string{
		"bad":   "gang default/bad: member bad-2 must be fixed first: ",
		"slow":  "gang default/slow: members disagree on penny.dev/gang-timeout: slow-0 say 1m30s; slow-2 say 2m0s; give every member that sets it the same value",
		"other": "gang default/other: members disagree on spec.schedulerName: this pod says \"penny-scheduler\" but other-2 say \"penny-batch\"; give every member the same schedulerName (recreate the odd ones: a pod's schedulerName cannot be changed)",
	}
	var rest []string
	for name, want := range told {
		for _, p := range names(name, 2) {
			if msg := harness.WaitForEvent(t, e.c, "default", p, "GangInvalid", 30*time.Second); !strings.HasPrefix(msg, want) {
				t.Errorf("GangInvalid on %s: %q, want %q", p, msg, want)
			}
			rest = append(rest, p)
		}
	}
	e.noneBound(2*time.Second, rest...)

	began := time.Now()
	e.delete("bad-2", "slow-2", "other-2")
	// Far below the five-minute flush, generous for a loaded machine.
	e.waitAllBound(30*time.Second, rest...)
	t.Logf("the held members bound %v after the odd members were deleted", time.Since(began).Round(time.Millisecond))
}

// TestHigherPriorityPodTakesRoomAGangClaimed: a gang of priority 0 has two
// members waiting in Permit and the third node claimed for its last member,
// which cannot be placed yet. A pod of priority 0 stays off the claimed
// node; a pod of priority 1000 that may use only that node binds at once,
// not when the gang's five-minute round ends: a claim keeps room only from
// pods of the gang's priority or lower, as a nominated pod does. The gang,
// its room taken, is released whole, binds nothing while it does not fit,
// and binds whole once the room comes back.
func TestHigherPriorityPodTakesRoomAGangClaimed(t *testing.T) {
	e := startWith(t, threeNodes, "5m")
	for i := range 3 {
		p := member("batch", 3, i)
		if i == 2 {
			neverTried(p)
		}
		harness.CreatePod(t, e.c, p)
	}
	waiting := func(p *corev1.Pod) bool { return p.Status.NominatedNodeName != "" && !harness.Bound(p) }
	held := map[string]bool{}
	for _, name := range names("batch", 2) {
		held[harness.WaitForPod(t, e.c, "default", name, 60*time.Second, "waiting in Permit", waiting).Status.NominatedNodeName] = true
	}
	nodes, err := e.c.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claimed := ""
	for _, n := range nodes.Items {
		if !held[n.Name] {
			claimed = n.Name
		}
	}
	onClaimed := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{claimed}}},
			}}},
		}}
		return p
	}
	whole := corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("8"), corev1.ResourceCPU: resource.MustParse("8")}
	harness.CreatePod(t, e.c, onClaimed(harness.Pod("peer", whole)))
	e.noneBound(3*time.Second, "peer")

	if _, err := e.c.Client.SchedulingV1().PriorityClasses().Create(context.Background(), &schedulingv1.PriorityClass{
		ObjectMeta: metav1.ObjectMeta{Name: "urgent"}, Value: 1000,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	urgent := onClaimed(harness.Pod("urgent", whole))
	urgent.Spec.PriorityClassName = "urgent"
	// The API server's priority admission reads classes from its informer,
	// which sees the new one a moment later.
	var createErr error
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, createErr = e.c.Client.CoreV1().Pods("default").Create(ctx, urgent, metav1.CreateOptions{})
		if createErr != nil && strings.Contains(createErr.Error(), "no PriorityClass") {
			return false, nil
		}
		return true, createErr
	})
	if err != nil {
		t.Fatalf("create pod default/urgent: %v (last error: %v)", err, createErr)
	}
	harness.WaitForPod(t, e.c, "default", "urgent", 30*time.Second, "bound", harness.Bound)
	e.noneBound(time.Second, names("batch", 2)...)

	// The last member comes now, with room for two members left: the gang
	// is released whole and binds nothing until the room comes back.
	e.delete("peer", "batch-2")
	e.waitGone("peer", "batch-2")
	if msg := harness.WaitForEvent(t, e.c, "default", "batch-0", "GangReleased", 30*time.Second); !strings.HasPrefix(msg, "gang default/batch released: ") {
		t.Errorf("GangReleased %q does not say the gang was released", msg)
	}
	// A new name, so that the old member's events are not read as its.
	harness.CreatePod(t, e.c, member("batch", 3, 3))
	gang := []string{"batch-0", "batch-1", "batch-3"}
	// Its first attempt may find the gang backing off, and the scheduler
	// folds later FailedScheduling events into the first one: the pod's
	// condition says what the last attempt found.
	harness.WaitForPod(t, e.c, "default", "batch-3", 60*time.Second, "told the gang is one member short", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && strings.Contains(c.Message, "gang default/batch: 2/3 members placeable") {
				return true
			}
		}
		return false
	})
	e.noneBound(3*time.Second, gang...)
	e.delete("urgent")
	e.waitAllBound(60*time.Second, gang...)
}
