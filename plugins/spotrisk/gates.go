package spotrisk

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// ungates remembers when this scheduler saw each pending pod lose its last
// scheduling gate, so that a pod's wait (Class.Waits) and
// penny_spot_wait_seconds start then rather than at its creation: a pod held
// by a gate (Kueue's until it admits the workload) cannot be placed, and one
// gated for longer than fallbackAfter fell back the moment it was ungated,
// without having waited for Spot at all.
//
// The API server records no ungate time, so it lives here only, and a
// restarted scheduler counts from creation again, as it does for a pod
// ungated while no scheduler watched. The start only ever moves later than
// creation and a gate only lengthens its own pod's wait, so a tenant gains
// nothing by gating: no earlier fallback, no place ahead of other pods and
// no claim on any budget.
//
// An entry is kept per pending pod seen gated, and per pod since ungated
// until it is bound or deleted: no more pods than the scheduler's informer
// holds.
type ungates struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	// at is the time each pod was first seen free of gates after it was
	// seen gated; the zero time while it is still gated.
	at map[types.UID]time.Time
}

func newUngates(c clock.PassiveClock) *ungates {
	return &ungates{clock: c, at: map[types.UID]time.Time{}}
}

// watch keeps u current from the scheduler's pod informer.
func (u *ungates) watch(informer cache.SharedInformer) error {
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { u.update(nil, obj) },
		UpdateFunc: u.update,
		DeleteFunc: u.delete,
	})
	return err
}

func (u *ungates) update(_, obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.Spec.NodeName != "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		u.forget(pod.UID)
		return
	}
	u.seen(pod)
}

func (u *ungates) delete(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		u.forget(pod.UID)
	}
}

func (u *ungates) forget(uid types.UID) {
	u.mu.Lock()
	delete(u.at, uid)
	u.mu.Unlock()
}

// seen records what the informer says of pod's gates. Kubernetes lets gates
// be removed but not added; should a pod be seen gated again all the same,
// its wait starts over when it is next seen free of them.
func (u *ungates) seen(pod *corev1.Pod) {
	if len(pod.Spec.SchedulingGates) > 0 {
		u.mu.Lock()
		u.at[pod.UID] = time.Time{}
		u.mu.Unlock()
		return
	}
	u.ungated(pod.UID)
}

// ungated returns when the pod lost its last gate, dating it now if it was
// seen gated and not yet free of gates, or zero when it was never seen gated.
// The scheduler's queue and the informer handler learn of an ungating
// independently, so whichever comes first dates it and the other keeps that
// date.
func (u *ungates) ungated(uid types.UID) time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	at, ok := u.at[uid]
	if ok && at.IsZero() {
		at = u.clock.Now()
		u.at[uid] = at
	}
	return at
}

// waitStart is when pod started to wait for a node: the later of its
// creation and the moment this scheduler saw it lose its last scheduling
// gate; now while it is still gated (its wait has not begun), or when the
// API server has not stamped its creation.
func (pl *SpotRisk) waitStart(pod *corev1.Pod) time.Time {
	now := pl.clock.Now()
	start := pod.CreationTimestamp.Time
	if len(pod.Spec.SchedulingGates) > 0 || start.IsZero() {
		return now
	}
	if pl.ungates != nil {
		if at := pl.ungates.ungated(pod.UID); at.After(start) {
			start = at
		}
	}
	return start
}
