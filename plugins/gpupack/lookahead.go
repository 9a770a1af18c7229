package gpupack

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
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
// the pods already waiting for it are counted.
func (pp *pendingPods) serve(name string) {
	pp.mu.Lock()
	if pp.names[name] {
		pp.mu.Unlock()
		return
	}
	pp.names[name] = true
	pp.mu.Unlock()
	pods, err := pp.lister.List(labels.Everything())
	if err != nil {
		pp.logger.Error(err, "Listing pending pods for the look-ahead")
		return
	}
	for _, p := range pods {
		pp.update(p)
	}
}

func (pp *pendingPods) serves(name string) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.names[name]
}

func (pp *pendingPods) update(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded ||
		pod.Status.Phase == corev1.PodFailed || !pp.serves(pod.Spec.SchedulerName) || !unschedulable(pod) {
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
		pp.learner.RemovePending(string(pod.UID))
	}
}
