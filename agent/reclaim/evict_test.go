package reclaim

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

type evictCall struct {
	pod   string
	grace int64
}

func evictTestPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: "n1", TerminationGracePeriodSeconds: ptr.To[int64](3)},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

// evictAllWith runs the flow's evictAll over pods of node n1 for a notice
// due in 8 s, the API server answering each eviction with answer(pod, n),
// n counting that pod's evictions from 1. It returns every eviction asked
// for, in order, and the job's state after.
func evictAllWith(t *testing.T, j *Job, answer func(pod string, n int) error, pods ...*corev1.Pod) ([]evictCall, *Job) {
	t.Helper()
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	client := fake.NewClientset(objs...)
	var mu sync.Mutex
	var calls []evictCall
	asked := map[string]int{}
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev := action.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		mu.Lock()
		calls = append(calls, evictCall{ev.Name, *ev.DeleteOptions.GracePeriodSeconds})
		asked[ev.Name]++
		n := asked[ev.Name]
		mu.Unlock()
		return true, nil, answer(ev.Name, n)
	})
	f, err := New(Options{Node: "n1", Client: client, StateDir: t.TempDir(), Recorder: record.NewFakeRecorder(1000), Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.factory.Start(ctx.Done())
	defer func() {
		cancel()
		f.factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), f.synced) {
		t.Fatal("informer did not sync")
	}
	j.ID = "notice-x"
	j.Notice = &NoticeRecord{ID: "x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION}
	j.Deadline = time.Now().Add(8 * time.Second)
	js := &jobState{f: f, j: j}
	f.evictAll(ctx, js, time.Now())
	mu.Lock()
	defer mu.Unlock()
	t.Logf("evictions asked: %v", calls)
	return calls, j
}

// A pod a PodDisruptionBudget protects must not hold back the node's other
// pods: they are evicted at once, with their whole grace period, while the
// protected one is asked again until the deadline.
func TestEvictionRefusedByABudgetDoesNotHoldTheOthers(t *testing.T) {
	// The protected pod's checkpoint is written, so it comes first.
	calls, j := evictAllWith(t, &Job{Pods: map[string]*PodRecord{"ml/protected": {UID: "uid-protected", Checkpoint: telemetryv1.CheckpointStatus_STATE_DONE.String()}}},
		func(pod string, _ int) error {
			if pod == "protected" {
				return apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
			}
			return nil
		}, evictTestPod("protected"), evictTestPod("a"), evictTestPod("b"))

	first := map[string]int{}
	protected := 0
	for i, c := range calls {
		if _, ok := first[c.pod]; !ok {
			first[c.pod] = i
		}
		if c.pod == "protected" {
			protected++
		}
	}
	for _, name := range []string{"a", "b"} {
		i, ok := first[name]
		if !ok {
			t.Fatalf("%s was never evicted", name)
		}
		if i > 2 {
			t.Errorf("%s was asked for at call %d, after the refused pod was retried: a budget held it back", name, i)
		}
		if g := calls[i].grace; g != 3 {
			t.Errorf("%s evicted with grace %ds, want its whole 3s", name, g)
		}
	}
	if protected < 2 {
		t.Errorf("the refused pod was asked %d times, want it asked again until the deadline", protected)
	}
	if !j.Pods["ml/a"].Evicted || !j.Pods["ml/b"].Evicted || j.Pods["ml/protected"].Evicted {
		t.Errorf("state %+v %+v %+v: want a and b evicted, the protected pod not", j.Pods["ml/a"], j.Pods["ml/b"], j.Pods["ml/protected"])
	}
}

// An eviction the API server cannot decide now (the agent evictions webhook
// fails closed while penny-scheduler restarts) is asked again, as one a
// budget refuses; one it refuses (Forbidden) is not: asking again would not
// change the answer.
func TestEvictionTheServerCannotDecideIsAskedAgain(t *testing.T) {
	calls, j := evictAllWith(t, &Job{}, func(pod string, n int) error {
		switch {
		case pod == "refused":
			return apierrors.NewForbidden(policyv1.Resource("pods/eviction"), pod, errors.New("penny-agent on node n1 may evict only pods bound to node n1"))
		case n <= 2:
			return apierrors.NewInternalError(errors.New(`failed calling webhook "agent-evictions.penny.dev": connection refused`))
		}
		return nil
	}, evictTestPod("a"), evictTestPod("refused"))
	asked := map[string]int{}
	for _, c := range calls {
		asked[c.pod]++
	}
	if asked["a"] != 3 || !j.Pods["ml/a"].Evicted {
		t.Errorf("pod a asked %d times, evicted %v: want it asked until the server could decide (3 times) and evicted", asked["a"], j.Pods["ml/a"].Evicted)
	}
	if asked["refused"] != 1 || j.Pods["ml/refused"].Evicted {
		t.Errorf("refused pod asked %d times, evicted %v: want it asked once and left", asked["refused"], j.Pods["ml/refused"].Evicted)
	}
}

type recordingAck struct {
	mu  sync.Mutex
	ids []string
}

func (a *recordingAck) Acknowledge(_ context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids = append(a.ids, id)
	return nil
}

func (a *recordingAck) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ids...)
}

// A pod evicted without a checkpoint and still in its grace period has not
// left the node: acknowledging then let Azure stop the VM under it, cutting
// the grace period the eviction gave. A terminating pod whose checkpoint is
// written holds nothing back.
func TestAcknowledgeWaitsForATerminatingPodWithoutCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		checkpoint telemetryv1.CheckpointStatus_State
		ack        bool
	}{
		{telemetryv1.CheckpointStatus_STATE_NO_HOOK, false},
		{telemetryv1.CheckpointStatus_STATE_DONE, true},
	} {
		p := evictTestPod("leaving")
		p.DeletionTimestamp = ptr.To(metav1.Now())
		ack := &recordingAck{}
		f, err := New(Options{Node: "n1", Client: fake.NewClientset(p), StateDir: t.TempDir(), Acknowledger: ack,
			Recorder: record.NewFakeRecorder(100), Log: testr.New(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		f.factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), f.synced) {
			t.Fatal("the informer did not sync")
		}
		j := &Job{ID: "notice-az", Notice: &NoticeRecord{ID: "az", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION},
			Deadline: time.Now().Add(2 * time.Second),
			Pods:     map[string]*PodRecord{"ml/leaving": {UID: string(p.UID), Checkpoint: tc.checkpoint.String(), Evicted: true}}}
		f.acknowledge(ctx, &jobState{f: f, j: j})
		if got := len(ack.list()) > 0; got != tc.ack {
			t.Errorf("terminating pod, checkpoint %v: acknowledged %v, want %v", tc.checkpoint, got, tc.ack)
		}
		cancel()
		f.factory.Shutdown()
	}
}
