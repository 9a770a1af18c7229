package gpupack

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// pendingPods feeds the learner's look-ahead: the pods waiting for this
// scheduler (it found no node for them, see unschedulable) are demand that
// is certain to come, so the measure weighs them
// above the distribution learned from past arrivals. Waiting multi-GPU and
// gang members, in particular, make breaking up idle nodes costly while they
// wait. A pod is "for this scheduler" when its schedulerName is one the
// plugin has been asked to schedule (the plugin does not know its profile's
// name before the first pod).
type pendingPods struct {
	logger  klog.Logger
	learner *packing.Learner
	lister  corelisters.PodLister

	mu    sync.Mutex
	names map[string]bool
	// While serve lists the informer's pods (listing > 0), the handlers
	// note each pod they are told about in heard. The list is a snapshot:
	// a pod deleted or bound after it was taken has had its event handled
	// by the time serve counts it, and counting it then would put back a
	// pod that is gone, for good. A pod in heard is the handlers' to count.
	listing int
	heard   map[types.UID]struct{}
}

func watchPending(logger klog.Logger, f informers.SharedInformerFactory, l *packing.Learner) *pendingPods {
	inf := f.Core().V1().Pods()
	pp := &pendingPods{logger: logger, learner: l, lister: inf.Lister(), names: map[string]bool{}}
	_, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    pp.update,
		UpdateFunc: func(_, obj interface{}) { pp.update(obj) },
		DeleteFunc: pp.delete,
	})
	if err != nil {
		logger.Error(err, "Cannot watch pending pods; the look-ahead stays off")
		return nil
	}
	return pp
}

// serve records a scheduler name this profile answers to; the first time,
// the pods already waiting for it are counted. The informer's handlers run
// meanwhile; a pod they hear of while the list is taken and counted is left
// to them, so that the count ends where the event stream does.
func (pp *pendingPods) serve(name string) {
	pp.mu.Lock()
	if pp.names[name] {
		pp.mu.Unlock()
		return
	}
	pp.names[name] = true
	if pp.listing == 0 {
		pp.heard = map[types.UID]struct{}{}
	}
	pp.listing++
	pp.mu.Unlock()
	pods, err := pp.lister.List(labels.Everything())
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if err != nil {
		pp.logger.Error(err, "Listing pending pods for the look-ahead")
	}
	for _, p := range pods {
		if _, ok := pp.heard[p.UID]; !ok {
			pp.count(p)
		}
	}
	pp.listing--
	if pp.listing == 0 {
		pp.heard = nil
	}
}

func (pp *pendingPods) update(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.hear(pod)
	pp.count(pod)
}

// hear notes a pod the informer reported while serve lists. Callers hold mu.
func (pp *pendingPods) hear(pod *corev1.Pod) {
	if pp.listing > 0 {
		pp.heard[pod.UID] = struct{}{}
	}
}

// count adds the pod to the look-ahead while it waits for this scheduler and
// removes it otherwise. Callers hold mu.
func (pp *pendingPods) count(pod *corev1.Pod) {
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded ||
		pod.Status.Phase == corev1.PodFailed || !pp.names[pod.Spec.SchedulerName] || !unschedulable(pod) {
		pp.learner.RemovePending(string(pod.UID))
		return
	}
	req, err := packing.ReqFor(pod)
	if err != nil {
		return
	}
	pp.learner.AddPending(string(pod.UID), req.Shape)
}

// unschedulable reports whether the scheduler found no node for the pod at
// its last attempt (PodScheduled False, reason Unschedulable). Only such pods
// are waiting: one just created is tried within milliseconds, and counting
// it, or the pod of the cycle itself, would change the demand at every
// arrival and make every node's measure stale each cycle.
func unschedulable(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
		}
	}
	return false
}

func (pp *pendingPods) delete(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		pp.mu.Lock()
		defer pp.mu.Unlock()
		pp.hear(pod)
		pp.learner.RemovePending(string(pod.UID))
	}
}
