package gpupack

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// listedThen is a pod lister whose List takes its snapshot and then runs
// then before it returns: the informer's events that may come between the
// list serve takes and its counting the pods in it.
type listedThen struct {
	corelisters.PodLister
	then func()
}

func (l listedThen) List(s labels.Selector) ([]*corev1.Pod, error) {
	pods, err := l.PodLister.List(s)
	l.then()
	return pods, err
}

// The first pod of a scheduler name makes the look-ahead list the pods
// already waiting for it, while the informer keeps delivering events. A pod
// deleted, or bound, after the list was taken must not be counted from the
// stale list: no later event would remove it, and it would weigh in the
// demand for the scheduler's lifetime.
func TestLookAheadListDoesNotUndoEvents(t *testing.T) {
	waiting := func(name string) *corev1.Pod {
		p := podOf(name, "4", string(gpu.ResourceGPU), "1")
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}
		return p
	}
	deleted, placed, still := waiting("deleted"), waiting("placed"), waiting("still")
	store := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	l := packing.NewLearner(packing.LearnerOptions{})
	pp := &pendingPods{learner: l, names: map[string]bool{}}
	for _, p := range []*corev1.Pod{deleted, placed, still} {
		if err := store.Add(p); err != nil {
			t.Fatal(err)
		}
		// Before the first pod of its scheduler, the informer's add is
		// not counted: the plugin does not know it serves that name yet.
		pp.update(p)
	}
	// The informer updates its store, then calls the handlers.
	pp.lister = listedThen{PodLister: corelisters.NewPodLister(store), then: func() {
		if err := store.Delete(deleted); err != nil {
			t.Fatal(err)
		}
		pp.delete(deleted)
		bound := placed.DeepCopy()
		bound.Spec.NodeName = "n"
		if err := store.Update(bound); err != nil {
			t.Fatal(err)
		}
		pp.update(bound)
	}}
	pp.serve("penny-scheduler")
	if n := l.Pending(); n != 1 {
		t.Fatalf("the look-ahead counts %d waiting pods, want 1 (a deleted and a bound pod were put back from the list)", n)
	}
	l.RemovePending(string(still.UID))
	if n := l.Pending(); n != 0 {
		t.Fatalf("the pod counted is not the one still waiting: %d left", n)
	}
	// Once the list is counted, events count alone again.
	pp.update(placed)
	if n := l.Pending(); n != 1 {
		t.Fatalf("a waiting pod's event after the list: %d pending, want 1", n)
	}
}
