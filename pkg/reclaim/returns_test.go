package reclaim

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
)

// answer has node's agent report state for every pod of the command it got,
// as soon as it got one.
func answer(t *testing.T, c *Coordinator, cmds *commander, node string, state telemetryv1.CheckpointStatus_State) {
	t.Helper()
	waitFor(t, "a command to node "+node, func() bool { return cmds.get(node) != nil })
	cmd := cmds.get(node)
	for _, p := range cmd.GetPods() {
		if r := c.OnCheckpointStatus(node, &telemetryv1.CheckpointStatus{CommandId: cmd.GetId(), Pod: p, State: state, UpdatedAt: timestamppb.Now()}); r != "accepted" {
			t.Errorf("status of %s/%s from %s: %v", p.GetNamespace(), p.GetName(), node, r)
		}
	}
}

// returnOf runs Return for the gang g-0 (node a), g-1 (node b) in the
// background and returns its result when it ends.
func returnOf(t *testing.T, c *Coordinator, timeout time.Duration) func() ReturnResult {
	return returnOfPods(t, c, timeout, member("g-0", "a", "g"), member("g-1", "b", "g"))
}

// waitRunning waits until c runs (Run started it).
func waitRunning(t *testing.T, c *Coordinator) {
	t.Helper()
	waitFor(t, "the coordinator to run", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.started
	})
}

// returnOfPods is returnOf for the gang's pods as given.
func returnOfPods(t *testing.T, c *Coordinator, timeout time.Duration, pods ...*corev1.Pod) func() ReturnResult {
	waitRunning(t, c)
	done := make(chan ReturnResult, 1)
	go func() {
		done <- c.Return(context.Background(), ReturnRequest{Workload: "gang:label:ml/g", Timeout: timeout, Why: "$1.00/h on Spot instead of $4.00/h",
			Pods: pods})
	}()
	return func() ReturnResult { return <-done }
}

func TestReturnCheckpointsThenEvictsTheWholeGang(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := recordEvictions(client)
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	store := noticeStore(client)
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec, Notices: store})
	before := counterValue(t, returnsTotal.WithLabelValues(string(ReturnMoved)))
	result := returnOf(t, c, time.Minute)
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v before every checkpoint was written", got)
	}
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
	if r := result(); r != ReturnMoved {
		t.Fatalf("Return = %s, want moved", r)
	}
	if got := strings.Join(evicted(), ","); got != "g-0,g-1" {
		t.Fatalf("evicted %s, want g-0,g-1", got)
	}
	cmd := cmds.get("a")
	if !strings.HasPrefix(cmd.GetId(), "return-") || cmd.GetOriginNode() != "" || !strings.Contains(cmd.GetReason(), "moving back to Spot: $1.00/h on Spot instead of $4.00/h") {
		t.Fatalf("command %v", cmd)
	}
	if d := time.Until(cmd.GetDeadline().AsTime()); d <= 0 || d > time.Minute {
		t.Fatalf("command deadline in %v, want within the minute's timeout", d)
	}
	if ev := drainEvents(rec); strings.Count(ev, "Normal SpotReturn evicted to move back to Spot, its checkpoint written") != 2 {
		t.Fatalf("events %q", ev)
	}
	if got := counterValue(t, returnsTotal.WithLabelValues(string(ReturnMoved))) - before; got != 1 {
		t.Fatalf("penny_spot_returns_total{result=moved} went up by %v", got)
	}
	// Recorded before the evictions, in case the scheduler stopped
	// between them, and removed once they were made.
	cm, err := client.CoreV1().ConfigMaps(store.Namespace).Get(context.Background(), store.Name, metav1.GetOptions{})
	if text, recorded := cm.Data[ReturnsKey]; err != nil || !recorded || text != "" {
		t.Fatalf("the move's record after the move: %v (%v); want it written and removed", cm.Data, err)
	}
}

func TestReturnEvictsNothingWithoutEveryCheckpoint(t *testing.T) {
	for name, tc := range map[string]struct {
		offline bool
		state   telemetryv1.CheckpointStatus_State
		want    string
	}{
		"a checkpoint failed":       {state: telemetryv1.CheckpointStatus_STATE_FAILED, want: "ml/g-1 (FAILED)"},
		"a pod without a hook":      {state: telemetryv1.CheckpointStatus_STATE_NO_HOOK, want: "ml/g-1 (NO_HOOK)"},
		"not written in time":       {state: telemetryv1.CheckpointStatus_STATE_REQUESTED, want: "ml/g-1 (REQUESTED)"},
		"an agent is not connected": {offline: true, want: "ml/g-1 (its node's agent could not be asked)"},
	} {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
			evicted := recordEvictions(client)
			rec := record.NewFakeRecorder(100)
			c := NewCoordinator()
			cmds := &commander{offline: map[string]bool{"b": tc.offline}}
			start(t, c, CoordinatorOptions{Client: client, Recorder: rec, Commands: cmds})
			before := counterValue(t, returnsTotal.WithLabelValues(string(ReturnNoCheckpoint)))
			result := returnOf(t, c, 2*time.Second)
			answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
			if !tc.offline {
				answer(t, c, cmds, "b", tc.state)
			}
			if r := result(); r != ReturnNoCheckpoint {
				t.Fatalf("Return = %s, want no_checkpoint", r)
			}
			if got := evicted(); len(got) != 0 {
				t.Fatalf("evicted %v", got)
			}
			ev := drainEvents(rec)
			if strings.Count(ev, "Warning SpotReturnSkipped not moved back to Spot: the checkpoints of "+tc.want+" were not written within 2s; nothing was evicted") != 2 {
				t.Fatalf("events %q", ev)
			}
			if got := counterValue(t, returnsTotal.WithLabelValues(string(ReturnNoCheckpoint))) - before; got != 1 {
				t.Fatalf("penny_spot_returns_total{result=no_checkpoint} went up by %v", got)
			}
		})
	}
}

// A PodDisruptionBudget over both members that allows one disruption
// passes each member's dry run, and would refuse the second real eviction

// A workload whose move evicted nothing is tried again after the cooldown,
// with the same pods: its checkpoints are asked for by new commands, since
// an agent runs a command id once and keeps a finished job for a day.
func TestAMoveTriedAgainAsksForItsCheckpointsAnew(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := recordEvictions(client)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: record.NewFakeRecorder(100)})
	result := returnOf(t, c, 2*time.Second)
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_FAILED)
	if r := result(); r != ReturnNoCheckpoint {
		t.Fatalf("first try: Return = %s, want no_checkpoint", r)
	}
	first := map[string]string{"a": cmds.get("a").GetId(), "b": cmds.get("b").GetId()}
	result = returnOf(t, c, time.Minute)
	for _, node := range []string{"a", "b"} {
		waitFor(t, "a new command to "+node, func() bool { return cmds.get(node).GetId() != first[node] })
		answer(t, c, cmds, node, telemetryv1.CheckpointStatus_STATE_DONE)
	}
	if r := result(); r != ReturnMoved {
		t.Fatalf("second try: Return = %s, want moved", r)
	}
	if got := strings.Join(evicted(), ","); got != "g-0,g-1" {
		t.Fatalf("evicted %s, want g-0,g-1", got)
	}
}

// once the first member is gone. The budget is read before any checkpoint
// is asked for: it stops the move whole, and once it allows two, the move
// is made.
func TestReturnAsksForNothingWhileABudgetCoversMoreMembersThanItAllows(t *testing.T) {
	readyMember := func(name, node string) *corev1.Pod {
		p := member(name, node, "g")
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		return p
	}
	g0, g1 := readyMember("g-0", "a"), readyMember("g-1", "b")
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "keep-three"},
		Spec:       policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{gang.LabelName: "g"}}},
		Status:     policyv1.PodDisruptionBudgetStatus{DisruptionsAllowed: 1},
	}
	client := fake.NewClientset(g0, g1, pdb)
	evicted := recordEvictions(client)
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
	if r := returnOfPods(t, c, time.Minute, g0, g1)(); r != ReturnRefused {
		t.Fatalf("Return = %s, want refused", r)
	}
	if a, b := cmds.get("a"), cmds.get("b"); a != nil || b != nil {
		t.Fatalf("checkpoints asked for (%v, %v) though the budget lets only one member go", a, b)
	}
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v", got)
	}
	why := "PodDisruptionBudget ml/keep-three allows 1 disruptions, and the move would evict 2 of the ready pods it covers"
	if ev := drainEvents(rec); strings.Count(ev, "Warning SpotReturnSkipped not moved back to Spot: the API server would not evict ml/g-0 ("+why+"), ml/g-1 ("+why+") now; nothing was checkpointed or evicted") != 2 {
		t.Fatalf("events %q", ev)
	}

	pdb.Status.DisruptionsAllowed = 2
	if _, err := client.PolicyV1().PodDisruptionBudgets("ml").UpdateStatus(context.Background(), pdb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	result := returnOfPods(t, c, time.Minute, g0, g1)
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
	if r := result(); r != ReturnMoved {
		t.Fatalf("Return = %s with the budget allowing 2, want moved", r)
	}
	if got := strings.Join(evicted(), ","); got != "g-0,g-1" {
		t.Fatalf("evicted %s, want g-0,g-1", got)
	}
}

// A PodDisruptionBudget that allows no disruption of one member now stops
// the move before it asks for any checkpoint: the dry run finds the refusal,
// and the other member is not evicted alone (a torn gang).
func TestReturnAsksForNothingWhileAnEvictionWouldBeRefused(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := budgetRefuses(client, func(name string) bool { return name == "g-1" })
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
	before := counterValue(t, returnsTotal.WithLabelValues(string(ReturnRefused)))
	if r := returnOf(t, c, time.Minute)(); r != ReturnRefused {
		t.Fatalf("Return = %s, want refused", r)
	}
	if a, b := cmds.get("a"), cmds.get("b"); a != nil || b != nil {
		t.Fatalf("checkpoints asked for (%v, %v) though the move could not be made", a, b)
	}
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v", got)
	}
	if ev := drainEvents(rec); strings.Count(ev, "Warning SpotReturnSkipped not moved back to Spot: the API server would not evict ml/g-1 (Cannot evict pod as it would violate the pod's disruption budget.) now; nothing was checkpointed or evicted") != 2 {
		t.Fatalf("events %q", ev)
	}
	if got := counterValue(t, returnsTotal.WithLabelValues(string(ReturnRefused))) - before; got != 1 {
		t.Fatalf("penny_spot_returns_total{result=refused} went up by %v", got)
	}
}

// A budget that starts refusing one member while the checkpoints are
// written is asked again, as a dry run, until the timeout: no member is
// evicted until every one may be, and none at all if that never comes.
func TestReturnEvictsNoMemberUntilEveryEvictionWouldPass(t *testing.T) {
	for name, tc := range map[string]struct {
		refusals int32 // of g-1, after the checkpoints; -1: every one
		want     ReturnResult
	}{
		"refused until the timeout": {refusals: -1, want: ReturnNotEvicted},
		"refused for a while":       {refusals: 2, want: ReturnMoved},
	} {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
			var tight atomic.Bool
			var refused atomic.Int32
			evicted := budgetRefuses(client, func(name string) bool {
				if tight.Load() && name == "g-1" && (tc.refusals < 0 || refused.Load() < tc.refusals) {
					refused.Add(1)
					return true
				}
				return false
			})
			rec := record.NewFakeRecorder(100)
			c := NewCoordinator()
			cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
			result := returnOf(t, c, 2*time.Second)
			waitFor(t, "the commands", func() bool { return cmds.get("a") != nil && cmds.get("b") != nil })
			tight.Store(true)
			answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
			answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
			if r := result(); r != tc.want {
				t.Fatalf("Return = %s, want %s", r, tc.want)
			}
			ev := drainEvents(rec)
			if tc.want == ReturnNotEvicted {
				if got := evicted(); len(got) != 0 {
					t.Fatalf("evicted %v while g-1 could not go", got)
				}
				if n := refused.Load(); n < 2 {
					t.Fatalf("g-1 asked %d times: want it asked again after the budget refused it", n)
				}
				if strings.Count(ev, "Warning SpotReturnSkipped not moved back to Spot: the checkpoints are written, but the API server would not evict ml/g-1 (Cannot evict pod as it would violate the pod's disruption budget.) within 2s; nothing was evicted") != 2 {
					t.Fatalf("events %q", ev)
				}
				return
			}
			if got := strings.Join(evicted(), ","); got != "g-0,g-1" {
				t.Fatalf("evicted %s, want g-0,g-1 once the budget let g-1 go", got)
			}
			if strings.Count(ev, "Normal SpotReturn evicted to move back to Spot") != 2 {
				t.Fatalf("events %q", ev)
			}
		})
	}
}

// budgetRefuses makes client refuse, as a PodDisruptionBudget does, the
// evictions of the pods refuse names, dry runs included, and accept the
// others; it returns the pods evicted so far (not dry runs), in order.
func budgetRefuses(client *fake.Clientset, refuse func(name string) bool) (evicted func() []string) {
	var mu sync.Mutex
	var names []string
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		if refuse(ev.Name) {
			return apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
		}
		if !dryRun(ev) {
			names = append(names, ev.Name)
		}
		return nil
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), names...)
	}
}

// A scheduler killed between two evictions of a move would leave the gang
// torn: one member gone to Spot, the other running on on-demand without
// it. The move was recorded before its first eviction, and the replica
// that leads next evicts the member left, then drops the record.
func TestAMoveARestartInterruptedIsFinishedByTheNextLeader(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	deleted := apiServerEvictions(client)
	killed, kill := context.WithCancel(context.Background())
	defer kill()
	var asked atomic.Int32
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		ev, ok := action.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		if action.GetSubresource() != "eviction" || !ok || dryRun(ev) {
			return false, nil, nil
		}
		if asked.Add(1) == 2 {
			kill() // the scheduler dies before the second eviction is made
			return true, nil, context.Canceled
		}
		return false, nil, nil
	})
	store := noticeStore(client)
	c := NewCoordinator()
	cmds, stop := start(t, c, CoordinatorOptions{Client: client, Notices: store})
	waitRunning(t, c)
	done := make(chan ReturnResult, 1)
	go func() {
		done <- c.Return(killed, ReturnRequest{Workload: "gang:label:ml/g", Timeout: time.Minute, Why: "cheaper",
			Pods: []*corev1.Pod{member("g-0", "a", "g"), member("g-1", "b", "g")}})
	}()
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
	if r := <-done; r != ReturnNotEvicted {
		t.Fatalf("Return = %s, want not_evicted (killed between the evictions)", r)
	}
	stop()
	if n := deleted(); n != 1 {
		t.Fatalf("%d evictions made before the kill, want 1: the test shows nothing", n)
	}
	text, err := store.returnsKey().Read(context.Background())
	if err != nil || !strings.Contains(text, "ml/g-0/uid-g-0,ml/g-1/uid-g-1") {
		t.Fatalf("the move's record: %q, %v", text, err)
	}

	rec := record.NewFakeRecorder(100)
	next := NewCoordinator()
	start(t, next, CoordinatorOptions{Client: client, Notices: store, Recorder: rec})
	waitRunning(t, next)
	before := counterValue(t, returnsTotal.WithLabelValues(string(ReturnMoved)))
	if n, err := next.FinishInterruptedMoves(context.Background()); n != 1 || err != nil {
		t.Fatalf("finished %d moves (%v), want 1", n, err)
	}
	if n := deleted(); n != 2 {
		t.Fatalf("%d members evicted in all, want both", n)
	}
	if ev := drainEvents(rec); !strings.Contains(ev, "Normal SpotReturn evicted to finish a move back to Spot that a scheduler restart interrupted after evicting 1 of its 2 pods (workload gang:label:ml/g)") {
		t.Fatalf("events %q", ev)
	}
	if got := counterValue(t, returnsTotal.WithLabelValues(string(ReturnMoved))) - before; got != 1 {
		t.Fatalf("penny_spot_returns_total{result=moved} went up by %v", got)
	}
	if text, err := store.returnsKey().Read(context.Background()); err != nil || text != "" {
		t.Fatalf("the record after the move was finished: %q, %v", text, err)
	}
	if n, err := next.FinishInterruptedMoves(context.Background()); n != 0 || err != nil || deleted() != 2 {
		t.Fatalf("finished %d moves (%v) the second time, %d evictions in all", n, err, deleted())
	}
}

// A recorded move is finished only when it tore its workload: one that
// evicted none of its pods, or ended long ago, is dropped, and a line that
// does not parse is reported and skipped.
func TestRecordedMovesThatToreNothingAreDropped(t *testing.T) {
	now := time.Now()
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"), member("h-1", "b", "h"))
	deleted := apiServerEvictions(client)
	store := noticeStore(client)
	lines := []string{
		// none evicted
		returnRecord{workload: "gang:label:ml/g", until: now.Add(time.Minute), pods: []returnPod{
			{"ml", "g-0", "uid-g-0"}, {"ml", "g-1", "uid-g-1"}}}.String(),
		// h-0 evicted, but the window ended an hour ago
		returnRecord{workload: "gang:label:ml/h", until: now.Add(-time.Hour), pods: []returnPod{
			{"ml", "h-0", "uid-h-0"}, {"ml", "h-1", "uid-h-1"}}}.String(),
		"gang:label:ml/x 2026-12-03T10:00:00Z ml/x-0",
	}
	if err := store.returnsKey().Update(context.Background(), func(string) string { return strings.Join(lines, "\n") }); err != nil {
		t.Fatal(err)
	}
	c := NewCoordinator()
	start(t, c, CoordinatorOptions{Client: client, Notices: store})
	waitRunning(t, c)
	if n, err := c.FinishInterruptedMoves(context.Background()); n != 0 || err != nil || deleted() != 0 {
		t.Fatalf("finished %d moves (%v), evicted %d pods; want none", n, err, deleted())
	}
	if text, err := store.returnsKey().Read(context.Background()); err != nil || text != "" {
		t.Fatalf("the records left: %q, %v", text, err)
	}
}

// A move that cannot be recorded is not made: a restart between its
// evictions would leave the workload torn with nothing to finish it.
func TestReturnEvictsNothingItCannotRecord(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := recordEvictions(client)
	for _, verb := range []string{"create", "update"} {
		client.PrependReactor(verb, "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewServiceUnavailable("etcd is down")
		})
	}
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec, Notices: noticeStore(client)})
	result := returnOf(t, c, time.Minute)
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
	if r := result(); r != ReturnNotEvicted {
		t.Fatalf("Return = %s, want not_evicted", r)
	}
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v without a record of the move", got)
	}
	if ev := drainEvents(rec); strings.Count(ev, "Warning SpotReturnSkipped not moved back to Spot: the checkpoints are written, but the move could not be recorded") != 2 {
		t.Fatalf("events %q", ev)
	}
}
