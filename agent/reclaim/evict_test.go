package reclaim

import (
	"context"
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

// A pod a PodDisruptionBudget protects must not hold back the node's other
// pods: they are evicted at once, with their whole grace period, while the
// protected one is asked again until the deadline.
func TestEvictionRefusedByABudgetDoesNotHoldTheOthers(t *testing.T) {
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name)},
			Spec:       corev1.PodSpec{NodeName: "n1", TerminationGracePeriodSeconds: ptr.To[int64](3)},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
	}
	client := fake.NewClientset(pod("protected"), pod("a"), pod("b"))
	type call struct {
		pod   string
		grace int64
	}
	var mu sync.Mutex
	var calls []call
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev := action.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		mu.Lock()
		calls = append(calls, call{ev.Name, *ev.DeleteOptions.GracePeriodSeconds})
		mu.Unlock()
		if ev.Name == "protected" {
			return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
		}
		return true, nil, nil
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
	// The protected pod's checkpoint is written, so it comes first.
	j := &Job{ID: "notice-x", Notice: &NoticeRecord{ID: "x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION},
		Deadline: time.Now().Add(8 * time.Second),
		Pods:     map[string]*PodRecord{"ml/protected": {UID: "uid-protected", Checkpoint: telemetryv1.CheckpointStatus_STATE_DONE.String()}}}
	js := &jobState{f: f, j: j}
	f.evictAll(ctx, js, time.Now())

	mu.Lock()
	defer mu.Unlock()
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
	t.Logf("evictions asked: %v", calls)
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
