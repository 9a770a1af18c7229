package spotrisk

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"
)

// groupWakeup is the timer armed for a native PodGroup: it retries the
// group when deadline, the latest end of its members' waits, has passed.
// by is the member whose wait ends then, via the member the retry names to
// the queue, and timer the timer once armed.
type groupWakeup struct {
	deadline time.Time
	by, via  types.UID
	timer    clock.Timer
}

// PreEnqueue arms the retry PostFilter arms for a lone pod, for a native
// PodGroup whose members wait (Class.Waits). kube-scheduler's pod-group cycle
// runs no PostFilter for the group's pods, only PodGroupPostFilter plugins
// once the group fails, and DefaultPreemption ends that chain whenever it
// finds no victims: in a profile that lists SpotRisk's PodGroupPostFilter
// (which holds the group for a pool's risk) after it, or not at all, a
// group waiting for Spot would fall back only when its backoff ran out. The
// queue runs PreEnqueue for each of the group's pods whenever the group
// enters the active or backoff queue, whichever plugin then turns it away.
// It never holds a pod back.
//
// The group is retried once, when the last of its members stops waiting:
// retried when the first did, it fails while the others still wait, and a
// member's retry that comes while the group is being scheduled is lost
// (kube-scheduler 1.37 drops an activation that arrives during a pod group's
// cycle), so members created a few milliseconds apart fell back only after
// the group's backoff. That last wait can end earlier than the timer armed
// for it: the member whose wait ends last lowers its
// penny.dev/fallback-after, or is deleted (memberDeleted then drops the
// timer). The timer is then armed again for the latest wait of the members
// the scheduler still holds unscheduled.
func (pl *SpotRisk) PreEnqueue(ctx context.Context, pod *corev1.Pod) *fwk.Status {
	group := pod.Spec.SchedulingGroup
	if group == nil || group.PodGroupName == nil || pl.handle == nil {
		return nil
	}
	key := pod.Namespace + "/" + *group.PodGroupName
	w := &groupWakeup{deadline: pl.waitEnd(pod), by: pod.UID}
	pl.mu.Lock()
	armed := pl.groupWakeups[key]
	switch {
	case armed == nil || w.deadline.After(armed.deadline):
		if w.deadline.IsZero() {
			pl.mu.Unlock()
			return nil
		}
	case pod.UID == armed.by && w.deadline.Equal(armed.deadline):
		pl.mu.Unlock()
		return nil
	default:
		latest, ok := pl.groupWaitEnd(pod, w, *group.PodGroupName, armed.by)
		if !ok || latest.deadline.Equal(armed.deadline) {
			if ok {
				armed.by = latest.by
			}
			pl.mu.Unlock()
			return nil
		}
		if latest.deadline.IsZero() {
			// No member waits: the queue places the group now.
			delete(pl.groupWakeups, key)
			replaced := armed.timer
			pl.mu.Unlock()
			stopTimer(replaced)
			return nil
		}
		w = latest
	}
	w.via = pod.UID
	pl.groupWakeups[key] = w
	var replaced clock.Timer
	if armed != nil {
		replaced = armed.timer
	}
	pl.mu.Unlock()
	stopTimer(replaced)
	// As for a lone pod: at most maxWakeupDelay ahead (the group is then
	// retried, and its members arm the next), holding only what the queue
	// looks the group up by. A timer that fires as another replaces it
	// does nothing.
	now := pl.clock.Now()
	wake := w.deadline
	if limit := now.Add(maxWakeupDelay); wake.After(limit) {
		wake = limit
	}
	logger := klog.FromContext(ctx)
	ref := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Spec: corev1.PodSpec{SchedulingGroup: group.DeepCopy()}}
	// Armed and stopped without pl.mu held: a clock (a replay's) may run
	// the timer's function, which takes pl.mu, under its own lock.
	timer := pl.clock.AfterFunc(wake.Sub(now), func() {
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
	pl.mu.Lock()
	current := pl.groupWakeups[key] == w
	if current {
		w.timer = timer
	}
	pl.mu.Unlock()
	if !current {
		timer.Stop()
	}
	return nil
}

// memberDeleted drops the timer armed for a deleted pod's PodGroup when the
// pod is the member it was armed for (by) or the one it would retry the
// group through (via), so that neither the timer nor its entry outlives
// the pod: the one would wait for a wait no longer there, the other names
// a pod the queue no longer holds. The queue brings the group back when
// its backoff ends (kube-scheduler 1.37 backs a failed pod group off, it
// does not park it), and its members still there arm it again.
func (pl *SpotRisk) memberDeleted(pod *corev1.Pod) {
	group := pod.Spec.SchedulingGroup
	if group == nil || group.PodGroupName == nil {
		return
	}
	key := pod.Namespace + "/" + *group.PodGroupName
	pl.mu.Lock()
	w := pl.groupWakeups[key]
	if w == nil || (w.by != pod.UID && w.via != pod.UID) {
		pl.mu.Unlock()
		return
	}
	delete(pl.groupWakeups, key)
	armed := w.timer
	pl.mu.Unlock()
	stopTimer(armed)
}

// stopTimer stops a group's timer, if one was armed.
func stopTimer(t clock.Timer) {
	if t != nil {
		t.Stop()
	}
}

// waitEnd is when pod stops waiting for the capacity its policy prefers
// (Class.Waits), or the zero time when it does not wait. A malformed
// annotation is PreFilter's to report, with the fix.
func (pl *SpotRisk) waitEnd(pod *corev1.Pod) time.Time {
	class, err := pl.classify(pod)
	if err != nil || !class.Waits() {
		return time.Time{}
	}
	if s := pl.stateFor(pod, class); s.waiting {
		return s.deadline
	}
	return time.Time{}
}

// groupWaitEnd reads again when the last wait of group's unscheduled
// members ends (a zero deadline when none waits) and whose it is, taking pod
// as given, with its wait own (the scheduler's cache may hold an older
// version of it). It does
// so only when by's wait, which the group's timer was armed for, may have
// ended earlier: by is pod, whose wait did not grow, or by is no longer
// among the unscheduled members. Otherwise, or without the group's state, it
// reports false and the armed timer stays: reading every member each time
// one of them is queued would cost the square of the group's size.
func (pl *SpotRisk) groupWaitEnd(pod *corev1.Pod, own *groupWakeup, group string, by types.UID) (*groupWakeup, bool) {
	pgm := pl.handle.PodGroupManager()
	if pgm == nil {
		return nil, false
	}
	state, err := pgm.PodGroupStates().Get(pod.Namespace, group)
	if err != nil {
		return nil, false
	}
	members := state.UnscheduledPods()
	if pod.UID != by {
		for _, m := range members {
			if m.UID == by {
				return nil, false
			}
		}
	}
	latest := &groupWakeup{deadline: own.deadline, by: own.by}
	for _, m := range members {
		if m.UID == pod.UID {
			continue
		}
		if end := pl.waitEnd(m); end.After(latest.deadline) {
			latest.deadline, latest.by = end, m.UID
		}
	}
	return latest, true
}

// PodGroupPostFilter holds a native PodGroup that found no placement for the
// Spot pools whose reclaim risk keeps its members off, as PostFilter holds a
// lone pod (waitForRisk), so that the group is retried when one of their
// estimates falls under its limit: kube-scheduler's pod-group cycle runs no
// PostFilter for the group's pods, and the group waited for an unrelated
// event or its backoff. It runs before DefaultPreemption in the deployed
// profile (deploy/scheduler/config.yaml), which ends the chain whenever it
// finds no victims, and returns Unschedulable so that preemption still runs.
//
// The pools are read off the snapshot (keepOffSnapshot), as for a pod an
// earlier PreFilter turned away: the members' cycle states are not handed to
// this extension point, and the cycle stops at the first member that cannot
// be placed, often turned away by PennyGang's PreFilter before this plugin's
// ran. Retrying any member retries the whole group, so members that ask the
// same of a node (same class, node selector, affinity and tolerations) are
// held through the first of them: one pass over the nodes per kind of
// member, not per member.
//
// For the same reason it records when each member's wait began
// (recordWaitStart), as PostFilter does for a lone pod turned away before
// this plugin's PreFilter: a group waiting for Spot fails at PennyGang's
// PreFilter, which finds no domain with room for all of it, so none of its
// members reached this plugin's PreFilter, and a restarted scheduler counted
// a Kueue-admitted group's wait from its creation and let it fall back at
// once.
func (pl *SpotRisk) PodGroupPostFilter(ctx context.Context, _ fwk.PodGroupCycleState, group fwk.PodGroupInfo, _ fwk.PodGroupSchedulingFunc) (*fwk.PodGroupPostFilterResult, *fwk.Status) {
	if pl.handle == nil {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	logger := klog.FromContext(ctx)
	var held []heldMember
	// A composite group's unscheduled pods are all its leaf groups' (the
	// framework gathers them), so its children are not walked as well:
	// that read each member twice.
	for _, pod := range group.GetUnscheduledPods() {
		class, err := pl.classify(pod)
		if err != nil {
			// As PostFilter does for a lone pod: the cycle may have ended
			// before this plugin's PreFilter named it.
			pl.reportInvalid(pod, err)
			continue
		}
		s := pl.stateFor(pod, class)
		pl.recordWaitStart(ctx, pod, s)
		if pl.priors == nil || !class.FollowsRisk() {
			continue
		}
		m := heldMember{pod: pod, state: s}
		if slices.ContainsFunc(held, m.alike) {
			continue
		}
		pl.keepOffSnapshot(logger, pod, m.state)
		pl.waitForRisk(logger, pod, m.state)
		held = append(held, m)
	}
	return nil, fwk.NewStatus(fwk.Unschedulable)
}

// heldMember is a native PodGroup's member PodGroupPostFilter held, with
// what its risk rules read.
type heldMember struct {
	pod   *corev1.Pod
	state *podState
}

// alike reports whether two members get the same verdicts from
// keepOffSnapshot: the same class and what stateFor derives from it for the
// risk rules, on the same nodes.
func (m heldMember) alike(o heldMember) bool {
	a, b := m.state, o.state
	if a.class != b.class || a.interrupted != b.interrupted || a.runtime != b.runtime {
		return false
	}
	p, q := m.pod.Spec, o.pod.Spec
	return apiequality.Semantic.DeepEqual(p.NodeSelector, q.NodeSelector) &&
		apiequality.Semantic.DeepEqual(p.Affinity, q.Affinity) &&
		apiequality.Semantic.DeepEqual(p.Tolerations, q.Tolerations)
}
