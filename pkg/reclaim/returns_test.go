package reclaim

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
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
	waitFor(t, "the coordinator to run", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.started
	})
	done := make(chan ReturnResult, 1)
	go func() {
		done <- c.Return(context.Background(), ReturnRequest{Workload: "gang:label:ml/g", Timeout: timeout, Why: "$1.00/h on Spot instead of $4.00/h",
			Pods: []*corev1.Pod{member("g-0", "a", "g"), member("g-1", "b", "g")}})
	}()
	return func() ReturnResult { return <-done }
}

func TestReturnCheckpointsThenEvictsTheWholeGang(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := recordEvictions(client)
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
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

func TestReturnAsksARefusedEvictionAgainUntilTheTimeout(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	var mu sync.Mutex
	var asked []string
	onEvictions(client, func(ev *policyv1.Eviction) error {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, ev.Name)
		if ev.Name == "g-1" {
			return apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
		}
		return nil
	})
	rec := record.NewFakeRecorder(100)
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Recorder: rec})
	result := returnOf(t, c, 2*time.Second)
	answer(t, c, cmds, "a", telemetryv1.CheckpointStatus_STATE_DONE)
	answer(t, c, cmds, "b", telemetryv1.CheckpointStatus_STATE_DONE)
	if r := result(); r != ReturnNotEvicted {
		t.Fatalf("Return = %s, want not_evicted", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(strings.Join(asked, ","), "g-1"); n < 2 {
		t.Fatalf("evictions asked %v: want g-1 asked again after the budget refused it", asked)
	}
	if ev := drainEvents(rec); !strings.Contains(ev, "Warning SpotReturnEvictionFailed could not evict this pod to move it back to Spot") {
		t.Fatalf("events %q", ev)
	}
}
