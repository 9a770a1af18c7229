package spotrisk

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// groupWakeup is the timer armed for a native PodGroup: it retries the
// group when deadline, the latest end of its members' waits, has passed.
type groupWakeup struct {
	deadline time.Time
}

// PreEnqueue arms the retry PostFilter arms for a lone pod, for a native
// PodGroup whose members wait (Class.Waits). kube-scheduler's pod-group cycle
// runs no PostFilter for the group's pods, only PodGroupPostFilter plugins
// once the group fails, and DefaultPreemption, the first of them, ends that
// chain whenever it finds no victims: a group waiting for Spot fell back only
// when its backoff ran out. The queue runs PreEnqueue for each of the group's
// pods whenever the group enters the active or backoff queue, whichever
// plugin then turns it away. It never holds a pod back.
//
// The group is retried once, when the last of its members stops waiting:
// retried when the first did, it fails while the others still wait, and a
// member's retry that comes while the group is being scheduled is lost
// (kube-scheduler 1.37 drops an activation that arrives during a pod group's
// cycle), so members created a few milliseconds apart fell back only after
// the group's backoff.
func (pl *SpotRisk) PreEnqueue(ctx context.Context, pod *corev1.Pod) *fwk.Status {
	group := pod.Spec.SchedulingGroup
	if group == nil || group.PodGroupName == nil || pl.handle == nil {
		return nil
	}
	class, err := pl.classify(pod)
	if err != nil || !class.Waits() {
		// A malformed annotation is PreFilter's to report, with the fix.
		return nil
	}
	s := pl.stateFor(pod, class)
	if !s.waiting {
		return nil
	}
	key := pod.Namespace + "/" + *group.PodGroupName
	pl.mu.Lock()
	if armed := pl.groupWakeups[key]; armed != nil && !s.deadline.After(armed.deadline) {
		pl.mu.Unlock()
		return nil
	}
	w := &groupWakeup{deadline: s.deadline}
	pl.groupWakeups[key] = w
	pl.mu.Unlock()
	// As for a lone pod: at most maxWakeupDelay ahead (the group is then
	// retried, and its members arm the next), holding only what the queue
	// looks the group up by. A timer a later deadline replaced does nothing.
	now := pl.clock.Now()
	wake := s.deadline
	if limit := now.Add(maxWakeupDelay); wake.After(limit) {
		wake = limit
	}
	logger := klog.FromContext(ctx)
	ref := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Spec: corev1.PodSpec{SchedulingGroup: group.DeepCopy()}}
	pl.clock.AfterFunc(wake.Sub(now), func() {
		pl.mu.Lock()
		current := pl.groupWakeups[key] == w
		if current {
			delete(pl.groupWakeups, key)
		}
		pl.mu.Unlock()
		if current {
			pl.handle.Activate(logger, map[string]*corev1.Pod{ref.Namespace + "/" + ref.Name: ref})
		}
	})
	return nil
}
