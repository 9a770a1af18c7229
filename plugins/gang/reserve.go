package gang

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gang"
)

// memberState returns the state PreFilter wrote for a label-gang member, or
// nil for any other pod.
func memberState(cs fwk.CycleState) *cycleState {
	data, err := cs.Read(stateKey)
	if err != nil {
		return nil
	}
	st, ok := data.(*cycleState)
	if !ok || !st.inGang || st.spec.Source != gang.SourceLabel {
		return nil
	}
	return st
}

// Reserve records a member as placed on its node and turns its share of the
// gang's claim into the real reservation the scheduler cache now holds.
func (pl *Gang) Reserve(_ context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	st := memberState(cs)
	if st == nil {
		return nil
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	g := pl.stateOf(st.spec.Ref)
	if st.roundID != 0 {
		if g.round == nil || g.round.id != st.roundID {
			return fwk.NewStatus(fwk.Unschedulable, fmt.Sprintf("gang %s was released while this member was being placed", st.spec.Ref))
		}
		g.round.members[pod.UID] = true
		if ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(nodeName); err == nil && ni.Node() != nil {
			g.round.nodeUIDs[pod.UID] = ni.Node().UID
		}
		if pl.consume(g.round, st.shape, nodeName) {
			g.round.consumed[pod.UID] = true
		}
	}
	g.placed[pod.UID] = nodeName
	return nil
}

// Unreserve runs when a placed member will not bind after all (its Permit
// wait timed out or was rejected, or binding failed). If its gang was still
// being placed, the whole gang is released: half a gang is useless. A member
// that was deleted is the exception while enough members remain: the gang
// carries on without it, as onPodDelete decided.
func (pl *Gang) Unreserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
	ref, ok := gang.RefOf(pod)
	if !ok || ref.Source != gang.SourceLabel {
		return
	}
	var e effects
	pl.mu.Lock()
	if g := pl.gangs[ref.Key()]; g != nil {
		delete(g.placed, pod.UID)
		if rd := g.round; rd != nil && rd.members[pod.UID] && !pl.leave(rd, memberState(cs), pod, nodeName) {
			why := fmt.Sprintf("member %s lost its place", pod.Name)
			if !pl.clock.Now().Before(rd.deadline) {
				why = fmt.Sprintf("not all members were placed within %s", rd.timeout)
			}
			pl.release(g, why, &e)
		}
	}
	pl.mu.Unlock()
	pl.apply(klog.FromContext(ctx), &e)
}

// Permit holds placed members until the gang has enough of them, then lets
// them all bind at once. Waiting is bounded by the round's deadline, shared
// by every member.
func (pl *Gang) Permit(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, _ string) (*fwk.Status, time.Duration) {
	st := memberState(cs)
	if st == nil {
		return nil, 0
	}
	members, err := gang.Members(pl.pods, st.spec.Ref)
	if err != nil {
		return fwk.AsStatus(err), 0
	}
	var e effects
	status, wait := pl.permit(st, pod, members, &e)
	pl.apply(klog.FromContext(ctx), &e)
	return status, wait
}

func (pl *Gang) permit(st *cycleState, pod *corev1.Pod, members []*corev1.Pod, e *effects) (*fwk.Status, time.Duration) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	g := pl.stateOf(st.spec.Ref)
	rd := g.round
	if st.roundID != 0 && (rd == nil || rd.id != st.roundID) {
		klog.Background().V(4).Info("Gang released before Permit", "gang", st.spec.Ref, "pod", klog.KObj(pod), "round", st.roundID)
		return fwk.NewStatus(fwk.Unschedulable, fmt.Sprintf("gang %s was released while this member was being placed", st.spec.Ref)), 0
	}
	// A sibling whose node went before onNodeDelete heard of it would
	// otherwise be allowed below and bound to a node that no longer exists.
	if why := pl.lostNode(g, pl.goneFromSnapshot); why != "" {
		pl.release(g, why, e)
		return fwk.NewStatus(fwk.Unschedulable, e.message), 0
	}
	placed := 0
	for _, m := range members {
		if _, ok := g.placed[m.UID]; ok || m.Spec.NodeName != "" {
			placed++
		}
	}
	now := pl.clock.Now()
	if placed >= int(st.spec.MinMember) || st.roundID == 0 {
		if rd != nil {
			for uid := range rd.members {
				if uid != pod.UID {
					e.allow = append(e.allow, uid)
				}
			}
			pl.endRound(g, e)
			attempts.WithLabelValues(string(resultScheduled)).Inc()
			if !g.firstAttempt.IsZero() {
				waitSeconds.Observe(now.Sub(g.firstAttempt).Seconds())
			}
			g.firstAttempt, g.failures = time.Time{}, 0
		}
		return nil, 0
	}
	wait := rd.deadline.Sub(now)
	if wait <= 0 {
		pl.release(g, fmt.Sprintf("not all members were placed within %s", rd.timeout), e)
		return fwk.NewStatus(fwk.Unschedulable, e.message), 0
	}
	if !rd.activated {
		// Pull the rest of the gang out of backoff so it is tried now,
		// back to back, rather than whenever each member's backoff ends.
		rd.activated = true
		pl.activateMembers(g, e)
	}
	return fwk.NewStatus(fwk.Wait, fmt.Sprintf("gang %s: %d/%d members placed, waiting for %d more", st.spec.Ref, placed, st.spec.MinMember, int(st.spec.MinMember)-placed)), min(wait+permitTimerGrace, MaxFrameworkPermitWait)
}

// permitTimerGrace puts the framework's timer on a waiting member a moment
// after the round's own deadline (admit), so that the round's timer rejects
// the members and stops theirs. Were both to fire at once, two goroutines
// would reject one waiting pod together, and the framework's waitingPod
// writes its done flag under a read lock (k8s.io/kubernetes v1.37
// waiting_pods_map.go): a data race. The framework's timer stays as a
// backstop, with the message kube-scheduler gives for it. (A round of the
// longest timeout the args allow, MaxFrameworkPermitWait, ends with the
// framework's timer, which the framework caps there.)
const permitTimerGrace = time.Second
