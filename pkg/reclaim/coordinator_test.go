package reclaim

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/utils/ptr"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
)

// commander records the commands the coordinator sends; nodes in offline
// have no agent connected. Its zero value is ready to use.
type commander struct {
	mu      sync.Mutex
	sent    map[string]*telemetryv1.CheckpointCommand // by node
	all     []*telemetryv1.CheckpointCommand
	firstAt map[string]time.Time // by node, and by command id: when it was first sent
	offline map[string]bool
}

func (c *commander) SendCheckpoint(node string, cmd *telemetryv1.CheckpointCommand) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.offline[node] {
		return 0, nil
	}
	// As the telemetry server does: an agent would refuse it.
	if err := telemetryv1.ValidateCheckpointCommand(cmd); err != nil {
		return 0, err
	}
	if c.sent == nil {
		c.sent, c.firstAt = map[string]*telemetryv1.CheckpointCommand{}, map[string]time.Time{}
	}
	c.sent[node] = cmd
	c.all = append(c.all, cmd)
	for _, k := range []string{node, cmd.GetId()} {
		if _, ok := c.firstAt[k]; !ok {
			c.firstAt[k] = time.Now()
		}
	}
	return 1, nil
}

func (c *commander) get(node string) *telemetryv1.CheckpointCommand {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[node]
}

// sentAt returns when node, or a command id, was first sent.
func (c *commander) sentAt(node string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.firstAt[node]
}

type feed struct {
	mu    sync.Mutex
	pools []pricing.Pool
}

func (f *feed) ObserveExposure(pricing.Pool, float64, time.Time) {}
func (f *feed) ObserveReclaim(p pricing.Pool, _ string, _ time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pools = append(f.pools, p)
}

func member(name, node, gangName string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml", UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: ptr.To[int64](600)},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if gangName != "" {
		p.Labels = map[string]string{gang.LabelName: gangName, gang.KeySize: "4"}
	}
	return p
}

func TestCoordinatorFansOutToGangMembersAndEvictsThemWhenCheckpointed(t *testing.T) {
	nodeA := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "p4d.24xlarge", corev1.LabelTopologyZone: "us-east-1a", "karpenter.sh/capacity-type": "spot",
	}}}
	native := member("pg-0", "a", "")
	native.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("pg")}
	nativePeer := member("pg-1", "c", "")
	nativePeer.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("pg")}
	done := member("old", "b", "g")
	done.Status.Phase = corev1.PodSucceeded
	objs := []runtime.Object{nodeA,
		member("g-0", "a", "g"), member("g-1", "a", "g"), member("g-2", "b", "g"), member("g-3", "c", "g"),
		member("h-0", "b", "h"), member("h-1", "c", "h"), // a gang with no member on a
		member("solo", "a", ""), // no gang
		done,                    // a finished member is not asked
		native, nativePeer,
	}
	client := fake.NewClientset(objs...)
	var mu sync.Mutex
	var evicted []string
	var graces []int64
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		evicted = append(evicted, ev.Name)
		graces = append(graces, *ev.DeleteOptions.GracePeriodSeconds)
		return nil
	})
	risk := &feed{}
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Risk: risk})

	detected := time.Now()
	deadline := detected.Add(2 * time.Minute)
	n := telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: deadline}
	state := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}}
	c.OnNodeUpdate(nil, state)
	c.OnNodeUpdate(state, state) // the same notice in the next report: nothing new

	waitFor(t, "commands to b and c", func() bool { return cmds.get("b") != nil && cmds.get("c") != nil })
	pods := func(cmd *telemetryv1.CheckpointCommand) []string {
		var out []string
		for _, p := range cmd.GetPods() {
			out = append(out, p.GetNamespace()+"/"+p.GetName())
		}
		sort.Strings(out)
		return out
	}
	if got := pods(cmds.get("b")); len(got) != 1 || got[0] != "ml/g-2" {
		t.Errorf("command to b names %v, want ml/g-2 only (not gang h, not finished pods)", got)
	}
	if got := pods(cmds.get("c")); len(got) != 2 || got[0] != "ml/g-3" || got[1] != "ml/pg-1" {
		t.Errorf("command to c names %v, want ml/g-3 and the native PodGroup's ml/pg-1", got)
	}
	b := cmds.get("b")
	if !b.GetDeadline().AsTime().Equal(deadline) || b.GetOriginNode() != "a" || b.GetOriginNoticeId() != "aws-spot-1" || b.GetId() != commandID(nodeNotice{"a", n}, "b", time.Time{}) {
		t.Errorf("command %v: want the notice's deadline, origin and a deterministic id", b)
	}
	waitFor(t, "the reclaim fed to the risk model", func() bool {
		risk.mu.Lock()
		defer risk.mu.Unlock()
		return len(risk.pools) == 1
	})
	if p := risk.pools[0]; p.InstanceType != "p4d.24xlarge" || p.Zone != "us-east-1a" || p.Capacity != pricing.Spot {
		t.Errorf("observed pool %v", p)
	}

	// The result labels penny_telemetry_checkpoint_statuses_total.
	statusIs := func(want telemetry.StatusResult, node, cmd, pod string, s telemetryv1.CheckpointStatus_State) {
		t.Helper()
		if got := c.OnCheckpointStatus(node, &telemetryv1.CheckpointStatus{CommandId: cmd, Pod: &telemetryv1.PodRef{Namespace: "ml", Name: pod}, State: s}); got != want {
			t.Errorf("status of %s for command %s from node %s: %s, want %s", pod, cmd, node, got, want)
		}
	}
	status := func(node, cmd, pod string, s telemetryv1.CheckpointStatus_State) {
		t.Helper()
		statusIs(telemetry.StatusAccepted, node, cmd, pod, s)
	}
	statusIs(telemetry.StatusUnknownCommand, "b", "another-replicas-command", "g-2", telemetryv1.CheckpointStatus_STATE_DONE)
	// An agent speaks only for its node: c's agent cannot finish b's command.
	statusIs(telemetry.StatusWrongNode, "c", b.GetId(), "g-2", telemetryv1.CheckpointStatus_STATE_DONE)
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	if len(evicted) != 0 {
		t.Fatalf("evicted %v on a status from another node's agent", evicted)
	}
	mu.Unlock()
	status("b", b.GetId(), "g-2", telemetryv1.CheckpointStatus_STATE_DONE)
	waitFor(t, "b's member evicted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(evicted) == 1
	})
	mu.Lock()
	if evicted[0] != "g-2" || graces[0] > 120 || graces[0] < 110 {
		t.Errorf("evicted %v with grace %v: want g-2 with its grace cut to the ~120s left", evicted, graces)
	}
	mu.Unlock()
	cc := cmds.get("c")
	status("c", cc.GetId(), "g-3", telemetryv1.CheckpointStatus_STATE_DONE)
	status("c", cc.GetId(), "pg-1", telemetryv1.CheckpointStatus_STATE_FAILED)
	waitFor(t, "c's members evicted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(evicted) == 3
	})
}

func TestCoordinatorRetriesAnAgentThatIsNotConnected(t *testing.T) {
	cmds := &commander{offline: map[string]bool{"b": true}}
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: gangOnAB(), Commands: cmds, KeepGangsRunning: true})
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "gcp-preempted-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Detected: now, Deadline: now.Add(30 * time.Second),
	}}})
	time.Sleep(700 * time.Millisecond)
	cmds.mu.Lock()
	cmds.offline["b"] = false // the agent reconnects
	cmds.mu.Unlock()
	waitFor(t, "the command once b's agent is back", func() bool { return cmds.get("b") != nil })
}

// A stream that took a command can break before its agent read it (the
// agent restarted, the connection dropped), and the agent's next stream
// carries no trace of it. The coordinator counted the command sent and never
// sent it again: the members were evicted at the deadline less the margin
// without a checkpoint, and no event said why. It now sends the command
// again, under its id, until the agent answers.
func TestCoordinatorSendsACommandAgainUntilTheAgentAnswers(t *testing.T) {
	defer func(d time.Duration) { resendEvery = d }(resendEvery)
	resendEvery = 50 * time.Millisecond
	client := gangOnAB()
	evicted := recordEvictions(client)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client})
	spotNoticeOnA(c)
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	id := cmds.get("b").GetId()
	sent := func() int {
		cmds.mu.Lock()
		defer cmds.mu.Unlock()
		n := 0
		for _, cmd := range cmds.all {
			if cmd.GetId() == id {
				n++
			}
		}
		return n
	}
	// The first one was lost with its stream: the agent does not answer.
	waitFor(t, "the command to b again", func() bool { return sent() >= 3 })
	status := func(s telemetryv1.CheckpointStatus_State) {
		t.Helper()
		if got := c.OnCheckpointStatus("b", &telemetryv1.CheckpointStatus{CommandId: id, Pod: &telemetryv1.PodRef{Namespace: "ml", Name: "g-1"}, State: s}); got != telemetry.StatusAccepted {
			t.Fatalf("status %s: %s", s, got)
		}
	}
	status(telemetryv1.CheckpointStatus_STATE_REQUESTED)
	// A resend may have been on its way as the status came.
	answered := sent() + 1
	time.Sleep(10 * resendEvery)
	if n := sent(); n > answered {
		t.Errorf("sent the command %d times after the agent answered, want none", n-answered+1)
	}
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v before the checkpoint was in", got)
	}
	status(telemetryv1.CheckpointStatus_STATE_DONE)
	waitFor(t, "b's member evicted once its checkpoint is in", func() bool { return slices.Equal(evicted(), []string{"g-1"}) })
}

// One failed pod list when the notice comes (an API server blip, a
// throttled request) does not cost the gang its fan-out, two minutes before
// the reclaim: the coordinator asks again. It gave up, and the gang's
// members on other nodes were neither asked to checkpoint nor evicted.
func TestCoordinatorPlansAgainAfterAFailedList(t *testing.T) {
	client := gangOnAB()
	var lists atomic.Int32
	client.PrependReactor("list", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		if lists.Add(1) == 1 {
			return true, nil, apierrors.NewServiceUnavailable("etcd leader election")
		}
		return false, nil, nil
	})
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client})
	spotNoticeOnA(c)
	waitFor(t, "the command to b despite one failed list", func() bool { return cmds.get("b") != nil })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: not within 5s", what)
	}
}

// A Spot interruption records how long each pod on the node had run, so that
// SpotRisk keeps training without checkpoints off Spot when it comes back.
func TestCoordinatorRecordsTheRunsAReclaimCutsShort(t *testing.T) {
	detected := time.Now()
	started := func(p *corev1.Pod, ago time.Duration) *corev1.Pod {
		p.Status.StartTime = &metav1.Time{Time: detected.Add(-ago)}
		return p
	}
	pending := member("pending", "a", "")
	objs := []runtime.Object{
		started(member("g-0", "a", "g"), 30*time.Hour),
		started(member("solo", "a", ""), 2*time.Hour),
		started(member("elsewhere", "b", ""), 9*time.Hour),
		pending, // bound, not started: nothing to lose
	}
	interrupted := pricing.NewInterrupted(0)
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: fake.NewClientset(objs...), Interrupted: interrupted})

	maintenance := telemetry.ReclaimNotice{ID: "gce-maint", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Detected: detected, Deadline: detected.Add(time.Hour)}
	// Maintenance on b is not a reclaim: the node comes back.
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "b", ReclaimNotices: []telemetry.ReclaimNotice{maintenance}})
	spot := telemetry.ReclaimNotice{ID: "aws-spot-2", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{spot}})

	waitFor(t, "the runs on a recorded", func() bool { return interrupted.Longest(member("g-1", "c", "g")) > 0 })
	time.Sleep(100 * time.Millisecond) // b's notice came first; give it time to (wrongly) record
	cases := []struct {
		pod  *corev1.Pod
		want time.Duration
	}{
		{member("g-1", "c", "g"), 30 * time.Hour}, // any member of the gang
		{member("solo", "a", ""), 2 * time.Hour},
		{member("elsewhere", "b", ""), 0},
		{pending, 0},
	}
	for _, tc := range cases {
		if got := interrupted.Longest(tc.pod); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.pod.Name, got, tc.want)
		}
	}
}

// A node is reclaimed once. An agent that reports Spot interruptions under
// ever new ids (a compromised one, or a cloud that announces one again)
// speaks only for its own node: it must not count as many reclaims of the
// whole pool, whose estimate every tenant's pods on its other nodes follow.
func TestCoordinatorCountsOneReclaimPerNode(t *testing.T) {
	nodeA := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "p4d.24xlarge", corev1.LabelTopologyZone: "us-east-1a", "karpenter.sh/capacity-type": "spot",
	}}}
	nodeB := nodeA.DeepCopy()
	nodeB.Name = "b"
	risk := &feed{}
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: fake.NewClientset(nodeA, nodeB), Risk: risk})
	now := time.Now()
	spot := func(id string) telemetry.ReclaimNotice {
		return telemetry.ReclaimNotice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now, Deadline: now.Add(2 * time.Minute)}
	}
	first := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{spot("i-1"), spot("i-2"), spot("i-3")}}
	c.OnNodeUpdate(nil, first)
	c.OnNodeUpdate(first, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{spot("i-4")}})
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "b", ReclaimNotices: []telemetry.ReclaimNotice{spot("i-1")}})
	observed := func() int {
		risk.mu.Lock()
		defer risk.mu.Unlock()
		return len(risk.pools)
	}
	waitFor(t, "the reclaims fed to the risk model", func() bool { return observed() >= 2 })
	time.Sleep(300 * time.Millisecond) // give the other notices time to (wrongly) count
	if n := observed(); n != 2 {
		t.Errorf("the risk model was fed %d reclaims, want 2: one for a, however many notices its agent reports, and one for b", n)
	}
}

// A notice the agent's clock dates ahead of the scheduler's counts from now:
// the run it cut short is as long as the pod ran, and the workload's reclaim
// is not made the newest until that date.
func TestCoordinatorDoesNotTakeRunsFromAFutureNotice(t *testing.T) {
	now := time.Now()
	solo := member("solo", "a", "")
	solo.Status.StartTime = &metav1.Time{Time: now.Add(-2 * time.Hour)}
	interrupted := pricing.NewInterrupted(0)
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: fake.NewClientset(solo), Interrupted: interrupted})
	ahead := now.Add(365 * 24 * time.Hour)
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{ID: "aws-spot-ahead",
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		Action: "terminate", Detected: ahead, Deadline: ahead.Add(2 * time.Minute)}}})
	waitFor(t, "the run on a recorded", func() bool { return interrupted.Longest(solo) > 0 })
	if got := interrupted.Longest(solo); got < 2*time.Hour || got > 2*time.Hour+time.Minute {
		t.Errorf("run cut short: %v, want the 2h the pod ran", got)
	}
	for _, r := range interrupted.Runs() {
		if r.At.After(time.Now()) {
			t.Errorf("%s recorded as reclaimed at %v, in the future", r.Key, r.At)
		}
	}
}

// Maintenance the cloud calls off before its lead time: the agent drops the
// notice and its pods stay, so the gang's members on other nodes must stay
// too. Maintenance still announced is acted on at its lead time.
func TestCoordinatorDropsMaintenanceTheAgentNoLongerReports(t *testing.T) {
	c, cmds, client := runOnGang(t, time.Minute)
	evicted := recordEvictions(client)

	now := time.Now()
	maint := func(id string) telemetry.ReclaimNotice {
		// Time to act in a second.
		return telemetry.ReclaimNotice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(time.Minute + time.Second)}
	}
	off, on := maint("aws-maint-off"), maint("aws-maint-on")
	both := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{off, on}}
	c.OnNodeUpdate(nil, both)
	// The next report no longer carries the maintenance the cloud called off.
	c.OnNodeUpdate(both, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{on}, NoticesKnown: true})

	waitFor(t, "the command for the maintenance still announced", func() bool { return cmds.get("b") != nil })
	time.Sleep(time.Second) // both notices were due at the same time
	cmds.mu.Lock()
	defer cmds.mu.Unlock()
	for _, cmd := range cmds.all {
		if cmd.GetOriginNoticeId() != "aws-maint-on" {
			t.Errorf("sent %v for maintenance the agent no longer reports", cmd)
		}
	}
	if got := evicted(); len(got) != 0 {
		t.Errorf("evicted %v before the maintenance still announced is due", got)
	}
}

// A node may hold members of many gangs with long names; the reason that
// lists them must stay within what an agent accepts, or the members are
// evicted without a checkpoint.
func TestCoordinatorCommandReasonFitsManyGangs(t *testing.T) {
	var objs []runtime.Object
	long := strings.Repeat("x", 60)
	for i := range 30 {
		name := fmt.Sprintf("%s-%02d", long, i)
		objs = append(objs, member(name+"-0", "a", name), member(name+"-1", "b", name))
	}
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: fake.NewClientset(objs...), Recorder: record.NewFakeRecorder(1000), KeepGangsRunning: true})
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-many", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute),
	}}})
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	cmd := cmds.get("b")
	if len(cmd.GetPods()) != 30 {
		t.Errorf("command names %d pods, want 30", len(cmd.GetPods()))
	}
	reason := cmd.GetReason()
	if !strings.HasPrefix(reason, "gangs ml/"+long+"-00, ") || !strings.Contains(reason, " more have a member on node a, which is being reclaimed (spot-interruption") {
		t.Errorf("reason %q: want the first gangs, how many more, and the node", reason)
	}
	t.Logf("reason (%d bytes): %s", len(reason), reason)
}

func TestCommandReason(t *testing.T) {
	dl := time.Date(2026, 5, 1, 10, 2, 0, 0, time.UTC)
	if got, want := commandReason([]string{"ml/g"}, "n1", "maintenance", dl), "gang ml/g has a member on node n1, which is being reclaimed (maintenance, deadline 2026-05-01T10:02:00Z)"; got != want {
		t.Errorf("one gang: %q, want %q", got, want)
	}
	if got, want := commandReason([]string{"ml/g", "ml/h"}, "n1", "maintenance", dl), "gangs ml/g, ml/h have a member on node n1, which is being reclaimed (maintenance, deadline 2026-05-01T10:02:00Z)"; got != want {
		t.Errorf("two gangs: %q, want %q", got, want)
	}
	for _, n := range []int{1, 14, 15, 16, 17, 100, 1000} {
		var gangs []string
		for i := range n {
			gangs = append(gangs, fmt.Sprintf("%s/%s-%d", strings.Repeat("n", 63), strings.Repeat("g", 55), i))
		}
		r := commandReason(gangs, strings.Repeat("a", 253), "spot-interruption", dl)
		if len(r) > maxReason || !strings.Contains(r, "which is being reclaimed") {
			t.Errorf("%d gangs: %d bytes, %q", n, len(r), r)
		}
	}
}

// A gang member that a PodDisruptionBudget refuses is asked again until the
// deadline, and holds back none of the others (it was asked once and left).
// A server that could not decide (a 5xx: the agent evictions webhook
// failing closed) is asked again too, as the agent does; the coordinator
// gave up on the member at the first one.
func TestGangEvictionRetriesWhatABudgetRefuses(t *testing.T) {
	for name, refuse := range map[string]error{
		"budget":      apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0),
		"undecided":   apierrors.NewServiceUnavailable("the agent evictions webhook did not answer"),
		"server died": apierrors.NewInternalError(fmt.Errorf("etcdserver: leader changed")),
	} {
		guarded, other := member("guarded", "b", "g"), member("other", "b", "g")
		client := fake.NewClientset(guarded, other)
		var mu sync.Mutex
		var asked []string
		refusals := 2
		onEvictions(client, func(ev *policyv1.Eviction) error {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, ev.Name)
			if ev.Name == "guarded" && refusals > 0 {
				refusals--
				return refuse
			}
			return nil
		})
		c := NewCoordinator()
		c.opts = CoordinatorOptions{Client: client}
		c.recorder = record.NewFakeRecorder(100)
		f := &fanout{origin: "a", pods: []*corev1.Pod{guarded, other},
			deadline: time.Now().Add(time.Minute), states: map[string]telemetryv1.CheckpointStatus_State{}}
		c.evictMembers(context.Background(), f, testr.New(t))
		mu.Lock()
		if got := strings.Join(asked, ","); got != "guarded,other,guarded,guarded" {
			t.Errorf("%s: evictions asked %s: want guarded refused twice, other evicted at once", name, got)
		}
		mu.Unlock()
	}
}

// onEvictions answers client's evictions with answer; the clientset handles
// every other create of pods.
func onEvictions(client *fake.Clientset, answer func(*policyv1.Eviction) error) {
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		return true, nil, answer(action.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction))
	})
}

// recordEvictions makes client accept every eviction and returns what it
// evicted so far, in order (dry runs evict nothing).
func recordEvictions(client *fake.Clientset) func() []string {
	var mu sync.Mutex
	var evicted []string
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		if dryRun(ev) {
			return nil
		}
		evicted = append(evicted, ev.Name)
		return nil
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), evicted...)
	}
}

// Agents send a pod's latest checkpoint status again on every new stream and
// whenever a command comes again (the protocol acknowledges none), so the
// coordinator sees repeats, and may see a status an old stream still carried
// after a newer one. A repeat changes nothing: the members are evicted once,
// as soon as every checkpoint is in, each with one event that says its
// checkpoint is written; a stale REQUESTED does not undo a DONE.
func TestRepeatedAndStaleStatusesChangeNothing(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"), member("g-2", "b", "g"))
	evicted := recordEvictions(client)
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-2", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute),
	}}})
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	id := cmds.get("b").GetId()
	evictedBefore := counterValue(t, evictionsTotal.WithLabelValues("evicted"))

	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	status := func(pod string, s telemetryv1.CheckpointStatus_State, updated *timestamppb.Timestamp) {
		c.OnCheckpointStatus("b", &telemetryv1.CheckpointStatus{CommandId: id, Pod: &telemetryv1.PodRef{Namespace: "ml", Name: pod}, State: s, UpdatedAt: updated})
	}
	requested, done := at(100*time.Millisecond), at(300*time.Millisecond)
	status("g-1", telemetryv1.CheckpointStatus_STATE_REQUESTED, requested)
	status("g-2", telemetryv1.CheckpointStatus_STATE_REQUESTED, requested)
	status("g-1", telemetryv1.CheckpointStatus_STATE_DONE, done)
	status("g-1", telemetryv1.CheckpointStatus_STATE_DONE, done) // a new stream's copy
	status("g-1", telemetryv1.CheckpointStatus_STATE_REQUESTED, requested)
	time.Sleep(100 * time.Millisecond)
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v before g-2's checkpoint is in", got)
	}
	status("g-2", telemetryv1.CheckpointStatus_STATE_DONE, done)
	waitFor(t, "both members evicted", func() bool { return len(evicted()) == 2 })
	for i := 0; i < 3; i++ {
		status("g-1", telemetryv1.CheckpointStatus_STATE_DONE, done)
		status("g-2", telemetryv1.CheckpointStatus_STATE_DONE, done)
	}
	time.Sleep(200 * time.Millisecond)
	if got := evicted(); len(got) != 2 {
		t.Errorf("evictions %v, want g-1 and g-2 once each", got)
	}
	if d := counterValue(t, evictionsTotal.WithLabelValues("evicted")) - evictedBefore; d != 2 {
		t.Errorf("penny_reclaim_gang_evictions_total{result=evicted} rose by %v, want 2", d)
	}
	var evictions []string
	for len(rec.Events) > 0 {
		if e := <-rec.Events; strings.Contains(e, "GangEvicted") {
			evictions = append(evictions, e)
		}
	}
	if len(evictions) != 2 {
		t.Fatalf("GangEvicted events %q, want one per member", evictions)
	}
	for _, e := range evictions {
		if !strings.Contains(e, "its checkpoint is written") {
			t.Errorf("event %q: want it to say the checkpoint is written (a stale REQUESTED must not undo a DONE)", e)
		}
	}
}

func counterValue(t *testing.T, c metrics.CounterMetric) float64 {
	t.Helper()
	v, err := testutil.GetCounterMetricValue(c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func dryRun(ev *policyv1.Eviction) bool {
	return ev.DeleteOptions != nil && slices.Contains(ev.DeleteOptions.DryRun, metav1.DryRunAll)
}

// apiServerEvictions makes client's evictions act as the API server's: the
// pod must match the UID and resourceVersion preconditions (a conflict
// otherwise); one not yet being deleted gets a deletionTimestamp and a new
// resourceVersion, and one already being deleted is answered success too.
// It returns how many evictions started a deletion.
func apiServerEvictions(client *fake.Clientset) (deleted func() int) {
	var mu sync.Mutex
	n := 0
	podsGVR := corev1.SchemeGroupVersion.WithResource("pods")
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		obj, err := client.Tracker().Get(podsGVR, ev.Namespace, ev.Name)
		if err != nil {
			return err
		}
		p := obj.(*corev1.Pod).DeepCopy()
		if pre := ev.DeleteOptions.Preconditions; pre != nil {
			if pre.UID != nil && *pre.UID != p.UID || pre.ResourceVersion != nil && *pre.ResourceVersion != p.ResourceVersion {
				return apierrors.NewConflict(podsGVR.GroupResource(), p.Name, fmt.Errorf("precondition failed"))
			}
		}
		if p.DeletionTimestamp != nil || dryRun(ev) {
			return nil
		}
		var rv int
		fmt.Sscan(p.ResourceVersion, &rv)
		p.ResourceVersion = fmt.Sprint(rv + 1)
		p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		n++
		return client.Tracker().Update(podsGVR, p, p.Namespace)
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// readTogether is a client whose first reads of each pod return only once
// replicas of them have come, so that every replica reads a member before
// any evicts it: the replicas race for it. (A reactor cannot hold them: the
// fake clientset runs one reactor at a time.)
type readTogether struct {
	*fake.Clientset
	t        *testing.T
	replicas int

	mu    sync.Mutex
	reads map[string]int
	gates map[string]chan struct{}
}

func (c *readTogether) CoreV1() typedcorev1.CoreV1Interface {
	return togetherCoreV1{c.Clientset.CoreV1(), c}
}

type togetherCoreV1 struct {
	typedcorev1.CoreV1Interface
	c *readTogether
}

func (v togetherCoreV1) Pods(ns string) typedcorev1.PodInterface {
	return togetherPods{v.CoreV1Interface.Pods(ns), v.c}
}

type togetherPods struct {
	typedcorev1.PodInterface
	c *readTogether
}

func (p togetherPods) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Pod, error) {
	pod, err := p.PodInterface.Get(ctx, name, opts)
	c := p.c
	c.mu.Lock()
	if c.gates[name] == nil {
		c.gates[name] = make(chan struct{})
	}
	gate := c.gates[name]
	c.reads[name]++
	n := c.reads[name]
	if n == c.replicas {
		close(gate)
	}
	c.mu.Unlock()
	if n < c.replicas {
		select {
		case <-gate:
		case <-time.After(5 * time.Second):
			c.t.Errorf("only %d of %d replicas read %s", n, c.replicas, name)
		}
	}
	return pod, err
}

// gangEvictedEvents drains recs and returns their GangEvicted events.
func gangEvictedEvents(recs ...*record.FakeRecorder) []string {
	var out []string
	for _, rec := range recs {
		for len(rec.Events) > 0 {
			if e := <-rec.Events; strings.Contains(e, "GangEvicted ") {
				out = append(out, e)
			}
		}
	}
	return out
}

// A member the other replica (or the Job controller) is already deleting is
// left alone: the Eviction API would answer success, and it would be
// recorded evicted twice.
func TestGangEvictionLeavesAMemberBeingDeleted(t *testing.T) {
	pods := []*corev1.Pod{member("g-1", "b", "g"), member("g-2", "b", "g")}
	for _, p := range pods {
		p.ResourceVersion = "1"
	}
	client := fake.NewClientset(pods[0], pods[1])
	deleted := apiServerEvictions(client)
	evictedBefore, goneBefore := counterValue(t, evictionsTotal.WithLabelValues("evicted")), counterValue(t, evictionsTotal.WithLabelValues("gone"))
	var recs []*record.FakeRecorder
	for range 2 { // one replica after the other, on the same snapshot of the members
		c := NewCoordinator()
		c.opts = CoordinatorOptions{Client: client}
		rec := record.NewFakeRecorder(100)
		c.recorder, recs = rec, append(recs, rec)
		f := &fanout{origin: "a", pods: pods, deadline: time.Now().Add(time.Minute), states: map[string]telemetryv1.CheckpointStatus_State{}}
		c.evictMembers(context.Background(), f, testr.New(t))
	}
	if got := deleted(); got != 2 {
		t.Errorf("%d evictions deleted a member, want 2", got)
	}
	if d := counterValue(t, evictionsTotal.WithLabelValues("evicted")) - evictedBefore; d != 2 {
		t.Errorf("penny_reclaim_gang_evictions_total{result=evicted} rose by %v, want 2 (one per member)", d)
	}
	if d := counterValue(t, evictionsTotal.WithLabelValues("gone")) - goneBefore; d != 2 {
		t.Errorf("penny_reclaim_gang_evictions_total{result=gone} rose by %v, want 2 (the second replica's)", d)
	}
	if got := gangEvictedEvents(recs...); len(got) != 2 || len(gangEvictedEvents(recs[1])) != 0 {
		t.Errorf("GangEvicted events %q, want one per member, from the first replica only", got)
	}
}

// Every replica runs a coordinator, hears every agent and evicts the same
// members, at about the same time: each member is still evicted once, with
// one GangEvicted event, even when both replicas read it before either
// evicts it.
func TestTwoReplicasEvictEachGangMemberOnce(t *testing.T) {
	pods := []*corev1.Pod{member("g-0", "a", "g"), member("g-1", "b", "g"), member("g-2", "b", "g")}
	var objs []runtime.Object
	for _, p := range pods {
		p.ResourceVersion = "1"
		objs = append(objs, p)
	}
	fc := fake.NewClientset(objs...)
	deleted := apiServerEvictions(fc)
	client := &readTogether{Clientset: fc, t: t, replicas: 2, reads: map[string]int{}, gates: map[string]chan struct{}{}}
	counts := func() (evicted, gone float64) {
		return counterValue(t, evictionsTotal.WithLabelValues("evicted")), counterValue(t, evictionsTotal.WithLabelValues("gone"))
	}
	evictedBefore, goneBefore := counts()

	now := time.Now()
	notice := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-3", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute),
	}}}
	var replicas []*Coordinator
	var recs []*record.FakeRecorder
	for range 2 {
		c := NewCoordinator()
		rec := record.NewFakeRecorder(100)
		cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
		c.OnNodeUpdate(nil, notice) // the agent reports to every replica
		waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
		replicas, recs = append(replicas, c), append(recs, rec)
	}
	id := commandID(nodeNotice{"a", notice.ReclaimNotices[0]}, "b", time.Time{})
	for _, c := range replicas {
		for _, pod := range []string{"g-1", "g-2"} {
			c.OnCheckpointStatus("b", &telemetryv1.CheckpointStatus{CommandId: id, Pod: &telemetryv1.PodRef{Namespace: "ml", Name: pod},
				State: telemetryv1.CheckpointStatus_STATE_DONE, UpdatedAt: timestamppb.Now()})
		}
	}
	// Each replica settles each of b's two members once, evicted or gone.
	waitFor(t, "both replicas done with both members", func() bool {
		evicted, gone := counts()
		return evicted-evictedBefore+gone-goneBefore == 4
	})
	if got := deleted(); got != 2 {
		t.Errorf("%d evictions deleted a member, want 2", got)
	}
	evicted, gone := counts()
	if d := evicted - evictedBefore; d != 2 {
		t.Errorf("penny_reclaim_gang_evictions_total{result=evicted} rose by %v over both replicas, want 2 (one per member)", d)
	}
	if d := gone - goneBefore; d != 2 {
		t.Errorf("penny_reclaim_gang_evictions_total{result=gone} rose by %v over both replicas, want 2", d)
	}
	var got, asked []string
	for _, rec := range recs {
		for len(rec.Events) > 0 {
			e := <-rec.Events
			if strings.Contains(e, " GangEvicted ") {
				got = append(got, e)
			}
			if strings.Contains(e, "checkpoint this pod") {
				asked = append(asked, e)
			}
		}
	}
	sort.Strings(got)
	if len(got) != 2 || !strings.Contains(got[0], "its checkpoint is written") {
		t.Errorf("GangEvicted events %q over both replicas, want one per member", got)
	}
	// The agent records the checkpoint request, once however many replicas
	// send it; a replica's own event would double it.
	if len(asked) != 0 {
		t.Errorf("the replicas recorded %q; the agent records the request", asked)
	}
}

// The members on a node whose agent cannot be reached are evicted at the
// deadline less the safety margin, as documented, with the margin as their
// grace period: not after trying to reach the agent until just before the
// deadline, and then with no grace period at all.
func TestCoordinatorEvictsMembersOfAnUnreachableNodeAtTheMargin(t *testing.T) {
	client := gangOnAB()
	graces := evictionGraces(client)
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	const margin = 4 * time.Second
	start(t, c, CoordinatorOptions{Client: client, Commands: &commander{offline: map[string]bool{"b": true}}, Recorder: rec, SafetyMargin: margin})
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "gcp-preempted-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Detected: now, Deadline: now.Add(margin + 2*time.Second),
	}}})
	// Until past the deadline: evicted later than the margin is a failure
	// too, told by the grace period below.
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, margin+5*time.Second, true, func(context.Context) (bool, error) {
		return len(graces()) == 1, nil
	}); err != nil {
		t.Fatal("b's member not evicted by the deadline")
	}
	// Evicted at the deadline less the margin, with about the margin left
	// (whole seconds, less what the test's machine took to get there).
	if g := graces()[0]; g < int64(margin/time.Second)-2 {
		t.Errorf("evicted with a grace period of %ds: want about %v, the time left at the deadline less the margin", g, margin)
	}
	if got := drainEvents(rec); !strings.Contains(got, "GangCheckpointUndelivered") {
		t.Errorf("events %q: want GangCheckpointUndelivered", got)
	}
}

// A notice whose deadline has passed (an agent that reports it late, or
// one that dates it so) still evicts the members on other nodes with a grace
// period: an eviction with 0 seconds deletes the pod object at once, while
// its containers still run on a node that is not going away, and its
// owner's replacement (a StatefulSet's, with the same identity) may start
// beside it.
func TestCoordinatorNeverForceDeletesMembersOnOtherNodes(t *testing.T) {
	client := gangOnAB()
	graces := evictionGraces(client)
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: client})
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-late", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now.Add(-time.Minute), Deadline: now.Add(-time.Second),
	}}})
	waitFor(t, "b's member evicted", func() bool { return len(graces()) == 1 })
	if g := graces()[0]; g < 1 {
		t.Errorf("b's member evicted with a grace period of %ds: 0 force-deletes it", g)
	}
}

// evictionGraces records the grace period of every eviction client is
// asked for.
func evictionGraces(client *fake.Clientset) func() []int64 {
	var mu sync.Mutex
	var graces []int64
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		graces = append(graces, *ev.DeleteOptions.GracePeriodSeconds)
		return nil
	})
	return func() []int64 {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(graces)
	}
}

func drainEvents(rec *record.FakeRecorder) string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return strings.Join(out, "\n")
		}
	}
}

// waitingToAct waits until c has taken the notice off its queue and waits
// for its time to act, so that a move reaches the wait.
func waitingToAct(t *testing.T, c *Coordinator, key string) {
	t.Helper()
	waitFor(t, "the notice waiting for its lead time", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.waiting[key] != nil
	})
}

// moveDeadline has node a's agent report n again with its deadline moved to
// d, and returns the notice as reported.
// spotNoticeOnA tells c of an AWS Spot interruption of node a, detected now,
// two minutes ahead.
func spotNoticeOnA(c *Coordinator) {
	now := time.Now()
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", NoticesKnown: true, ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now, Deadline: now.Add(2 * time.Minute),
	}}})
}

func moveDeadline(c *Coordinator, n telemetry.ReclaimNotice, d time.Time) telemetry.ReclaimNotice {
	moved := n
	moved.Deadline = d
	c.OnNodeUpdate(&telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}},
		&telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{moved}})
	return moved
}

// start runs c with opts until the test ends, or until the stop it
// returns, which waits for Run to return as a scheduler's shutdown does.
// What opts leaves unset is the usual: a new commander, a recorder of 100
// events and the test's log; it returns the commander c sends to.
func start(t *testing.T, c *Coordinator, opts CoordinatorOptions) (cmds *commander, stop func()) {
	t.Helper()
	if opts.Commands == nil {
		opts.Commands = &commander{}
	}
	cmds, _ = opts.Commands.(*commander)
	if opts.Recorder == nil {
		opts.Recorder = record.NewFakeRecorder(100)
	}
	if opts.Log.GetSink() == nil {
		opts.Log = testr.New(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		if err := c.Run(ctx, opts); err != nil {
			t.Errorf("the coordinator did not run: %v", err)
		}
	}()
	stop = func() { cancel(); <-ran }
	t.Cleanup(stop)
	return cmds, stop
}

// gangOnAB is a clientset with gang g of ml, whose members g-0 and g-1 run
// on nodes a and b.
func gangOnAB() *fake.Clientset {
	return fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
}

// runOnGang runs a coordinator, with maintenance lead lead, over gangOnAB
// until the test ends.
func runOnGang(t *testing.T, lead time.Duration) (*Coordinator, *commander, *fake.Clientset) {
	t.Helper()
	client := gangOnAB()
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Policy: Policy{MaintenanceLead: lead}})
	return c, cmds, client
}

// configMapWrites records the data of every write of the notices' ConfigMap.
func configMapWrites(client *fake.Clientset) func() []string {
	var mu sync.Mutex
	var writes []string
	for _, verb := range []string{"create", "update"} {
		client.PrependReactor(verb, "configmaps", func(action clienttesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			defer mu.Unlock()
			writes = append(writes, action.(interface{ GetObject() runtime.Object }).GetObject().(*corev1.ConfigMap).Data[NoticesKey])
			return false, nil, nil
		})
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(writes)
	}
}

// Maintenance the cloud postpones before its lead time (Azure and AWS keep
// the event's id and change its NotBefore): the agent keeps its pods
// running until the new lead time, and so the gang's members elsewhere are
// asked to checkpoint then, by the new deadline, which their record holds.
func TestCoordinatorFollowsPostponedMaintenance(t *testing.T) {
	client := gangOnAB()
	writes := configMapWrites(client)
	c := NewCoordinator()
	const lead = time.Minute
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}})

	now := time.Now()
	n := telemetry.ReclaimNotice{ID: "azure-maint-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE, Action: "Reboot", Detected: now, Deadline: now.Add(lead + time.Second)}
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}})
	waitingToAct(t, c, "a/azure-maint-1")
	postponed := moveDeadline(c, n, now.Add(lead+2500*time.Millisecond))

	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	if at, due := cmds.sentAt("b"), postponed.Deadline.Add(-lead); at.Before(due) {
		t.Errorf("b asked to checkpoint %v before the postponed maintenance's lead time", due.Sub(at))
	}
	if got := cmds.get("b").GetDeadline().AsTime(); !got.Equal(postponed.Deadline) {
		t.Errorf("command deadline %v, want the postponed %v", got, postponed.Deadline)
	}
	deadline := " " + postponed.Deadline.UTC().Format(time.RFC3339Nano) + " "
	waitFor(t, "the notice recorded", func() bool { return len(writes()) > 0 })
	if got := writes(); !strings.Contains(got[0], deadline) {
		t.Errorf("recorded %q, want the postponed deadline", got[0])
	}
}

// Maintenance the cloud brings forward before its lead time: the gang's
// members elsewhere are asked at the new lead time, not the first one.
func TestCoordinatorFollowsMaintenanceBroughtForward(t *testing.T) {
	const lead = time.Minute
	c, cmds, _ := runOnGang(t, lead)

	now := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-maint-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(lead + time.Hour)}
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}})
	waitingToAct(t, c, "a/aws-maint-1")
	earlier := moveDeadline(c, n, now.Add(lead+time.Second))

	waitFor(t, "the command to b at the new lead time", func() bool { return cmds.get("b") != nil })
	if at, due := cmds.sentAt("b"), earlier.Deadline.Add(-lead); at.Before(due) {
		t.Errorf("b asked to checkpoint %v before the new lead time", due.Sub(at))
	}
	if got := cmds.get("b").GetDeadline().AsTime(); !got.Equal(earlier.Deadline) {
		t.Errorf("command deadline %v, want the new %v", got, earlier.Deadline)
	}
}

// A deadline the cloud brings forward after the gang's members were asked
// to checkpoint: they are evicted by the new deadline less the margin, with
// the time left before it as their grace period, and the notice's record
// holds the new deadline.
func TestCoordinatorEvictsByADeadlineBroughtForward(t *testing.T) {
	client := gangOnAB()
	writes := configMapWrites(client)
	var mu sync.Mutex
	var evictedAt time.Time
	var graces []int64
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		evictedAt = time.Now()
		graces = append(graces, *ev.DeleteOptions.GracePeriodSeconds)
		return nil
	})
	c := NewCoordinator()
	const lead, margin = time.Minute, time.Second
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}, SafetyMargin: margin})

	// Within the lead time: acted on at once.
	n := actOnMaintenance(t, c, cmds, "aws-maint-2", lead)
	earlier := moveDeadline(c, n, time.Now().Add(margin+2*time.Second))

	waitFor(t, "b's member evicted by the new deadline", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(graces) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if due := earlier.Deadline.Add(-margin); evictedAt.Before(due) {
		t.Errorf("evicted %v before the new deadline less the margin", due.Sub(evictedAt))
	}
	if graces[0] > int64(margin/time.Second) {
		t.Errorf("evicted with a grace period of %ds, want at most the %v left before the new deadline", graces[0], margin)
	}
	deadline := " " + earlier.Deadline.UTC().Format(time.RFC3339Nano) + " "
	if !slices.ContainsFunc(writes(), func(w string) bool { return strings.Contains(w, deadline) }) {
		t.Errorf("records written %q, none with the new deadline", writes())
	}
}

// A deadline the cloud brought forward while no scheduler ran reaches the
// notice resumed from its record: the agent's first report to the new
// scheduler carries the notice again (no earlier report to compare with),
// and its deadline is followed, not dropped as a notice already in hand.
func TestCoordinatorResumedNoticeFollowsADeadlineMovedMeanwhile(t *testing.T) {
	client := gangOnAB()
	writes := configMapWrites(client)
	const lead, margin = time.Minute, time.Second
	now := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-maint-3", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(lead / 2)}
	rec := noticeRecord{nodeNotice: nodeNotice{node: "a", notice: n}, gangs: []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}},
		members: []types.UID{"uid-g-1"}}
	if err := noticeStore(client).put(context.Background(), rec, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}, SafetyMargin: margin})
	waitFor(t, "the resumed notice's command to b", func() bool { return cmds.get("b") != nil })

	earlier := n
	earlier.Deadline = time.Now().Add(margin + 2*time.Second)
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{earlier}})
	deadline := " " + earlier.Deadline.UTC().Format(time.RFC3339Nano) + " "
	waitFor(t, "the record to take the deadline reported after the restart", func() bool {
		return slices.ContainsFunc(writes(), func(w string) bool { return strings.Contains(w, deadline) })
	})
}

// actOnMaintenance has node a's agent report maintenance id, due within
// lead, so that the coordinator acts on it at once (node a's member g-0,
// b's g-1), and waits for its command to b. It returns the notice.
func actOnMaintenance(t *testing.T, c *Coordinator, cmds *commander, id string, lead time.Duration) telemetry.ReclaimNotice {
	t.Helper()
	now := time.Now()
	n := telemetry.ReclaimNotice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(lead / 2)}
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}})
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	return n
}

// checkpointedOnB has b's agent report g-1, gangOnAB's member on b,
// checkpointed for cmd, and returns how the coordinator took the status.
func checkpointedOnB(c *Coordinator, cmd *telemetryv1.CheckpointCommand) telemetry.StatusResult {
	return c.OnCheckpointStatus("b", &telemetryv1.CheckpointStatus{CommandId: cmd.GetId(), UpdatedAt: timestamppb.Now(),
		Pod: &telemetryv1.PodRef{Namespace: "ml", Name: "g-1"}, State: telemetryv1.CheckpointStatus_STATE_DONE})
}

// postponedAfterCommands has a coordinator act on maintenance within its
// lead time, and has the cloud postpone it, once b was asked to
// checkpoint, so far that the new lead time is ahead by wait; it returns
// the notice as postponed and the first command.
func postponedAfterCommands(t *testing.T, c *Coordinator, cmds *commander, lead, wait time.Duration) (telemetry.ReclaimNotice, *telemetryv1.CheckpointCommand) {
	t.Helper()
	n := actOnMaintenance(t, c, cmds, "aws-maint-4", lead)
	first := cmds.get("b")
	later := moveDeadline(c, n, time.Now().Add(lead+wait))
	// Called off, the notice waits for its new lead time as before its
	// first plan.
	waitingToAct(t, c, "a/aws-maint-4")
	return later, first
}

// Maintenance the cloud postpones after the gang's members were asked to
// checkpoint, past the new lead time: a's agent keeps its pods until then,
// so the members elsewhere are not evicted either, even once their
// checkpoints are in. At the new lead time they are asked again, by a
// command with a new id (the agent runs an id once) and the new deadline,
// and evicted once that checkpoint is in.
func TestCoordinatorKeepsMembersRunningWhenMaintenanceIsPostponedAfterCommands(t *testing.T) {
	const lead = time.Minute
	c, cmds, client := runOnGang(t, lead)
	evicted := recordEvictions(client)
	later, first := postponedAfterCommands(t, c, cmds, lead, 3*time.Second)
	// The checkpoint the first command asked for comes in.
	checkpointedOnB(c, first)

	waitFor(t, "b asked again at the new lead time", func() bool { return cmds.get("b").GetId() != first.GetId() })
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v while a's agent keeps its pods until the postponed maintenance's lead time", got)
	}
	again := cmds.get("b")
	if at, due := cmds.sentAt(again.GetId()), later.Deadline.Add(-lead); at.Before(due) {
		t.Errorf("b asked again %v before the new lead time", due.Sub(at))
	}
	if !again.GetDeadline().AsTime().Equal(later.Deadline) {
		t.Errorf("command %v after the postponement: want the new deadline %v", again, later.Deadline)
	}
	checkpointedOnB(c, again)
	waitFor(t, "b's member evicted once its new checkpoint is in", func() bool { return slices.Equal(evicted(), []string{"g-1"}) })
}

// A postponement that comes once the reclaimed node's agent has evicted its
// gang's member (it acts on a move only until its evictions begin) changes
// nothing: the gang is short of that member already, and its members
// elsewhere are evicted as planned.
func TestCoordinatorEvictsAsPlannedWhenTheReclaimedNodesMembersAreGone(t *testing.T) {
	client := gangOnAB()
	evicted := recordEvictions(client)
	c := NewCoordinator()
	const lead = time.Minute
	logged := &logLines{}
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Log: logged.logger(), Policy: Policy{MaintenanceLead: lead}})
	n := actOnMaintenance(t, c, cmds, "aws-maint-5", lead)
	if err := client.CoreV1().Pods("ml").Delete(context.Background(), "g-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	moveDeadline(c, n, time.Now().Add(time.Hour))
	waitFor(t, "the postponement taken", func() bool {
		return logged.has("the cloud postponed the notice, but the reclaimed node's agent has evicted its gangs' members already")
	})
	checkpointedOnB(c, cmds.get("b"))
	waitFor(t, "b's member evicted as planned", func() bool { return slices.Equal(evicted(), []string{"g-1"}) })
}

// withdraw has node a's agent stop reporting n (the cloud withdrew it), and
// waits until the coordinator has dropped its handling.
func withdraw(t *testing.T, c *Coordinator, n telemetry.ReclaimNotice) {
	t.Helper()
	c.OnNodeUpdate(&telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}}, &telemetry.NodeState{Node: "a", NoticesKnown: true})
	waitFor(t, "the withdrawn notice dropped", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, recorded := c.recorded["a/"+n.ID]
		return !recorded && c.waiting["a/"+n.ID] == nil
	})
}

// announceAgain has node a's agent report n again after its withdrawal:
// under the same id, detected anew, due within the lead time. It returns
// the notice as announced again.
func announceAgain(c *Coordinator, n telemetry.ReclaimNotice, lead time.Duration) telemetry.ReclaimNotice {
	n.Detected = time.Now()
	n.Deadline = n.Detected.Add(lead / 2)
	c.OnNodeUpdate(&telemetry.NodeState{Node: "a"}, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}})
	return n
}

// Maintenance postponed after the gang's members were asked to checkpoint,
// then withdrawn and announced again under the same id: b's agent ran the
// first plan's command and runs an id once, so the plan of the notice
// announced again must send it a new one, or b's member would neither
// checkpoint nor be evicted with its gang.
func TestCoordinatorAsksAgainForANoticeWithdrawnAndAnnouncedAgain(t *testing.T) {
	const lead = time.Minute
	c, cmds, client := runOnGang(t, lead)
	evicted := recordEvictions(client)
	later, first := postponedAfterCommands(t, c, cmds, lead, time.Hour)
	withdraw(t, c, later)
	again := announceAgain(c, later, lead)

	waitFor(t, "b asked by a new command for the notice announced again", func() bool { return cmds.get("b").GetId() != first.GetId() })
	cmd := cmds.get("b")
	if !cmd.GetDeadline().AsTime().Equal(again.Deadline) {
		t.Errorf("command %v: want the deadline of the notice announced again, %v", cmd, again.Deadline)
	}
	checkpointedOnB(c, cmd)
	waitFor(t, "b's member evicted once its checkpoint is in", func() bool { return slices.Equal(evicted(), []string{"g-1"}) })
}

// Two replicas hear the same reports: for the notice announced again they
// send the same new command, which the agent runs once.
func TestTwoReplicasGiveANoticeAnnouncedAgainTheSameNewCommand(t *testing.T) {
	client := gangOnAB()
	// Both replicas start before any notice, as they would: neither may
	// resume a record the other wrote for it. On a busy machine the second
	// one's read of the records came after the first had postponed the
	// notice, and it planned from there. The count goes up once a read's
	// answer is settled.
	var reads atomic.Int32
	client.PrependReactor("get", "configmaps", func(a clienttesting.Action) (bool, runtime.Object, error) {
		g := a.(clienttesting.GetAction)
		if g.GetName() != "penny-reclaim-notices" {
			return false, nil, nil
		}
		obj, err := client.Tracker().Get(g.GetResource(), g.GetNamespace(), g.GetName())
		reads.Add(1)
		return true, obj, err
	})
	const lead = time.Minute
	replicas := make([]*Coordinator, 2)
	sent := make([]*commander, 2)
	for i := range replicas {
		replicas[i] = NewCoordinator()
		sent[i], _ = start(t, replicas[i], CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}})
	}
	waitFor(t, "both replicas to read the notices' records", func() bool { return reads.Load() >= 2 })
	now := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-maint-4", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(lead / 2)}
	later := n
	later.Deadline = now.Add(lead + time.Hour)
	for i, c := range replicas {
		c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}})
		waitFor(t, "the command to b", func() bool { return sent[i].get("b") != nil })
		moveDeadline(c, n, later.Deadline)
		waitingToAct(t, c, "a/aws-maint-4")
	}
	first := sent[0].get("b").GetId()
	if got := sent[1].get("b").GetId(); got != first {
		t.Fatalf("the replicas' first commands %s and %s differ", first, got)
	}
	for _, c := range replicas {
		withdraw(t, c, later)
	}
	again := announceAgain(replicas[0], later, lead)
	replicas[1].OnNodeUpdate(&telemetry.NodeState{Node: "a"}, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{again}})
	for i := range replicas {
		waitFor(t, fmt.Sprintf("replica %d's new command to b", i), func() bool { return sent[i].get("b").GetId() != first })
	}
	if a, b := sent[0].get("b").GetId(), sent[1].get("b").GetId(); a != b {
		t.Errorf("the replicas' commands for the notice announced again %s and %s differ", a, b)
	}
}

// The handling of a notice withdrawn after a postponement may still be
// ending, its record still held, when the notice is announced again: the
// plan of the new announcement is its first all the same, named as every
// replica names it, whichever of the two ends first.
func TestCoordinatorPlansANoticeAnnouncedAgainAsItsFirstPlan(t *testing.T) {
	const lead = time.Minute
	now := time.Now()
	earlier := telemetry.ReclaimNotice{ID: "aws-maint-4", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now.Add(-time.Minute), Deadline: now.Add(time.Hour)}
	c := NewCoordinator()
	c.recorded["a/aws-maint-4"] = noticeRecord{nodeNotice: nodeNotice{"a", earlier}, round: earlier.Deadline}
	cmds, _ := start(t, c, CoordinatorOptions{Client: gangOnAB(), Policy: Policy{MaintenanceLead: lead}})
	again := announceAgain(c, earlier, lead)

	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	if got, want := cmds.get("b").GetId(), commandID(nodeNotice{"a", again}, "b", time.Time{}); got != want {
		t.Errorf("b asked by %s; want the first plan's command of the notice announced again, %s", got, want)
	}
}

// A restarted agent whose first check for notices fails reports none: that
// is no withdrawal, and the maintenance still waits for its lead time. The
// node's next report whose check answered settles it, compared with the
// last report that had its notices known: one without the notice calls it
// off even though the report before it did not carry it either.
func TestCoordinatorCallsOffANoticeOnlyOnAReportWhoseCheckAnswered(t *testing.T) {
	c, cmds, _ := runOnGang(t, time.Minute)
	now := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-maint-7", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(time.Hour)}
	const key = "a/aws-maint-7"
	carried := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}, NoticesKnown: true}
	failed := &telemetry.NodeState{Node: "a"}
	waiting := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.waiting[key] != nil
	}
	c.OnNodeUpdate(nil, carried)
	waitingToAct(t, c, key)

	c.OnNodeUpdate(carried, failed)
	if !waiting() {
		t.Fatal("the notice called off by a report whose notice check failed")
	}
	c.OnNodeUpdate(failed, carried)
	if !waiting() {
		t.Fatal("the notice called off by the report that carries it again")
	}

	c.OnNodeUpdate(carried, failed)
	c.OnNodeUpdate(failed, &telemetry.NodeState{Node: "a", NoticesKnown: true})
	waitFor(t, "the notice called off", func() bool { return !waiting() })
	if got := cmds.get("b"); got != nil {
		t.Errorf("sent %v for a notice the cloud withdrew", got)
	}
}

// Maintenance postponed after its commands, withdrawn and announced again
// under the same id between two reports of a's (the agent's stream broke
// meanwhile): the later announcement, dated anew, is no move of the earlier
// one but planned as its first plan, as a replica that heard the withdrawal
// plans it.
func TestCoordinatorHandlesANoticeAnnouncedAgainBetweenTwoReportsAnew(t *testing.T) {
	const lead = time.Minute
	c, cmds, _ := runOnGang(t, lead)
	later, first := postponedAfterCommands(t, c, cmds, lead, time.Hour)

	again := later
	again.Detected = time.Now()
	again.Deadline = again.Detected.Add(lead / 2)
	c.OnNodeUpdate(&telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{later}, NoticesKnown: true},
		&telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{again}, NoticesKnown: true})
	waitFor(t, "b asked again", func() bool { return cmds.get("b").GetId() != first.GetId() })
	if got, want := cmds.get("b").GetId(), commandID(nodeNotice{"a", again}, "b", time.Time{}); got != want {
		t.Errorf("b asked by %s; want the first plan's command of the notice announced again, %s", got, want)
	}
}
