package spotrisk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/scheduler/util"
	"k8s.io/utils/clock"
)

// ConditionSpotWaitStarted is the pod condition in which penny-scheduler
// records when a gated pod's wait (Class.Waits) started: its
// lastTransitionTime is when the scheduler saw the pod's last scheduling
// gate lifted. The API server records no time for an ungating (it stamps
// PodScheduled=False, SchedulingGated at creation and leaves the condition's
// time alone after), and the scheduler's memory does not outlive a restart
// or a change of leader: without the condition every Kueue-admitted pod
// still pending fell back to on-demand at once under the next scheduler.
//
// It lives in the pod's status because tenants cannot write pods/status
// (kube-scheduler writes PodScheduled there; the kubelet writes only the
// pods bound to its node, and keeps the conditions it does not own), so a
// tenant cannot set its own pod's start earlier to fall back sooner.
// Whoever can write it all the same is held to the pod's lifetime: a time
// before the pod's creation or later than maxClockSkew after the moment the
// scheduler reads it is clamped, and the scheduler writes the clamped time
// back, saying so in the condition and in an InvalidSpotWaitStart event.
const ConditionSpotWaitStarted corev1.PodConditionType = "penny.dev/SpotWaitStarted"

// maxClockSkew is how far after this scheduler's clock a recorded start may
// lie and still be taken for the writer's clock running ahead, not for a
// forgery: the start a new leader reads was dated by its predecessor's
// clock. Control-plane clocks are kept within milliseconds of each other by
// NTP, and a few seconds apart is what Kubernetes copes with without a word
// (kube-scheduler's leader election renews within 10s of a 15s lease); a
// Warning on every pending pod after each change of leader would be noise.
// Such a start is taken to be now, which it becomes by this clock within
// the skew.
const maxClockSkew = 10 * time.Second

// Reasons of ConditionSpotWaitStarted, and the event for a clamped time.
const (
	ReasonUngated         = "Ungated"
	ReasonClamped         = "Clamped"
	EventInvalidWaitStart = "InvalidSpotWaitStart"
)

// ungates remembers when this scheduler saw each pending pod lose its last
// scheduling gate, so that a pod's wait (Class.Waits) and
// penny_spot_wait_seconds start then rather than at its creation: a pod held
// by a gate (Kueue's until it admits the workload) cannot be placed, and one
// gated for longer than fallbackAfter fell back the moment it was ungated,
// without having waited for Spot at all.
//
// The leader writes the time to the pod's status, once per ungating
// (ConditionSpotWaitStarted), so that a restarted scheduler or a new leader
// counts from it too; a pod ungated while no scheduler watched has no such
// time and waits from its creation. The start only ever moves later than
// creation and a gate only lengthens its own pod's wait, so a tenant gains
// nothing by gating: no earlier fallback, no place ahead of other pods and
// no claim on any budget.
//
// An entry is kept per pending pod seen gated, per pod since ungated, and
// per pod whose recorded start had to be clamped, until it is bound or
// deleted: no more pods than the scheduler's informer holds.
type ungates struct {
	clock clock.PassiveClock
	// pods is the informer's store (watch): only a pod it holds is pinned,
	// since only such a pod is forgotten.
	pods cache.Store
	mu   sync.Mutex
	at   map[types.UID]ungating
}

// ungating is what ungates keeps of one pod.
type ungating struct {
	// at is the time the pod was first seen free of gates after it was
	// seen gated, or the clamped start its status recorded; the zero time
	// while it is still gated.
	at time.Time
	// recorded is set once at is in the pod's status, or being written.
	recorded bool
}

func newUngates(c clock.PassiveClock) *ungates {
	return &ungates{clock: c, at: map[types.UID]ungating{}}
}

// watch keeps u current from the scheduler's pod informer, and tells
// deleted of each pod deleted once u has forgotten it.
func (u *ungates) watch(informer cache.SharedInformer, deleted func(*corev1.Pod)) error {
	u.pods = informer.GetStore()
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { u.update(nil, obj) },
		UpdateFunc: u.update,
		DeleteFunc: func(obj interface{}) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				u.forget(pod.UID)
				deleted(pod)
			}
		},
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
		u.at[pod.UID] = ungating{}
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
	e, ok := u.at[uid]
	if ok && e.at.IsZero() {
		e.at = u.clock.Now()
		u.at[uid] = e
	}
	return e.at
}

// pin keeps at as the pod's start unless the pod already has one here, and
// returns the start kept: a clamped start read from the pod's status must
// not move with the clock until the leader writes it back. A pod the
// informer does not hold is not kept: nothing would forget it. Cluster
// Autoscaler's requests describe pods the scheduler may not hold (deleted
// since, or never created: whoever reaches the expander may send any),
// and each one with a clamped start stayed for good.
func (u *ungates) pin(pod *corev1.Pod, at time.Time) time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e, ok := u.at[pod.UID]; ok && !e.at.IsZero() {
		return e.at
	}
	if u.pods != nil {
		held, ok, err := u.pods.Get(pod)
		if p, isPod := held.(*corev1.Pod); err != nil || !ok || !isPod || p.UID != pod.UID {
			return at
		}
	}
	u.at[pod.UID] = ungating{at: at}
	return at
}

// toRecord returns the start to write to the pod's status and marks it
// written, or false when there is none to write: the pod's ungating was not
// dated here, is written already, or its status holds a valid start
// (inStatus; another scheduler wrote it before this one took over).
func (u *ungates) toRecord(uid types.UID, inStatus bool) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	e, ok := u.at[uid]
	if !ok || e.at.IsZero() || e.recorded {
		return time.Time{}, false
	}
	e.recorded = true
	u.at[uid] = e
	return e.at, !inStatus
}

// unrecord lets a failed write be tried again in the pod's next cycle.
func (u *ungates) unrecord(uid types.UID, at time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e, ok := u.at[uid]; ok && e.at.Equal(at) {
		e.recorded = false
		u.at[uid] = e
	}
}

// waitStart is when pod started to wait for a node: the later of its
// creation and the moment a scheduler saw it lose its last scheduling gate
// (this one, or one before it that recorded it in the pod's status); now
// while it is still gated (its wait has not begun), or when the API server
// has not stamped its creation.
func (pl *SpotRisk) waitStart(pod *corev1.Pod) time.Time {
	now := pl.clock.Now()
	start := pod.CreationTimestamp.Time
	if len(pod.Spec.SchedulingGates) > 0 || start.IsZero() {
		return now
	}
	if pl.ungates == nil {
		return start
	}
	at := pl.ungates.ungated(pod.UID)
	if at.IsZero() {
		recorded, found, problem := recordedStart(pod, now)
		if problem != "" {
			recorded = pl.ungates.pin(pod, recorded)
		}
		if found {
			at = recorded
		}
	}
	if at.After(start) {
		start = at
	}
	return start
}

// recordedStart reads the start ConditionSpotWaitStarted records in pod's
// status, clamped to the pod's life until now, and says what was wrong
// with it when it had to be clamped.
func recordedStart(pod *corev1.Pod, now time.Time) (at time.Time, found bool, problem string) {
	for _, c := range pod.Status.Conditions {
		if c.Type != ConditionSpotWaitStarted || c.Status != corev1.ConditionTrue {
			continue
		}
		at = c.LastTransitionTime.Time
		// Read in queueing hints too: words only for a start that is wrong.
		was := func(why string, t time.Time) string {
			return fmt.Sprintf("%s was %s, %s (%s)", ConditionSpotWaitStarted, at.UTC().Format(time.RFC3339), why, t.UTC().Format(time.RFC3339))
		}
		switch created := pod.CreationTimestamp.Time; {
		case at.Before(created):
			return created, true, was("before the pod's creation", created)
		case at.After(now.Add(maxClockSkew)):
			return now, true, was("after the scheduler read it", now)
		case at.After(now):
			// The writer's clock runs ahead of this one.
			return now, true, ""
		}
		return at, true, ""
	}
	return time.Time{}, false, ""
}

// recordWaitStart writes the start of pod's wait to its status
// (ConditionSpotWaitStarted) when this scheduler dated the pod's ungating
// and no scheduler wrote it yet, or when the recorded start had to be
// clamped. It runs in the scheduling cycle, which only the leader runs
// (every replica's informers and queue watch the pods), so that replicas do
// not race to write, and only for pods that wait (Class.Waits) and are
// still waiting: after the wait a restart changes nothing. At most one write
// per ungating, sent without holding up the cycle; one that fails is tried
// again in the pod's next cycle.
func (pl *SpotRisk) recordWaitStart(ctx context.Context, pod *corev1.Pod, s *podState) {
	h := pl.handle
	if pl.ungates == nil || !s.waiting || s.class.FallbackAfter <= 0 || h == nil || h.ClientSet() == nil {
		return
	}
	_, found, problem := recordedStart(pod, pl.clock.Now())
	at, write := pl.ungates.toRecord(pod.UID, found && problem == "")
	if !write {
		return
	}
	// The API keeps whole seconds: rounded down, the start written is what
	// the deadlines in FailedScheduling, also whole seconds, already said.
	cond := corev1.PodCondition{Type: ConditionSpotWaitStarted, Status: corev1.ConditionTrue,
		LastTransitionTime: metav1.NewTime(at.Truncate(time.Second)), Reason: ReasonUngated,
		Message: "penny-scheduler saw the pod's last scheduling gate lifted; its wait for the capacity its Spot policy prefers runs from then"}
	logger := klog.FromContext(ctx)
	if problem != "" {
		cond.Reason = ReasonClamped
		cond.Message = fmt.Sprintf("%s: the wait for the capacity the pod's Spot policy prefers runs from %s instead",
			problem, cond.LastTransitionTime.UTC().Format(time.RFC3339))
		logger.Info("Clamped the recorded start of a pod's Spot wait", "pod", klog.KObj(pod), "message", cond.Message)
		if h.EventRecorder() != nil {
			h.EventRecorder().Eventf(pod, nil, corev1.EventTypeWarning, EventInvalidWaitStart, "Scheduling", "%s", cond.Message)
		}
	}
	// The pod's uid makes the write conditional on the pod being the one
	// read, as the kubelet's status patches are: the API server refuses to
	// change a pod's uid, so a pod deleted and created again under the same
	// name since is left alone rather than given the old pod's start.
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
	})
	if err != nil {
		logger.Error(err, "Encoding the start of a pod's Spot wait", "pod", klog.KObj(pod))
		pl.ungates.unrecord(pod.UID, at)
		return
	}
	cs, uid, name, ns := h.ClientSet(), pod.UID, pod.Name, pod.Namespace
	// The cycle's context ends with the cycle; the write ends at the latest
	// when the scheduler stops.
	ctx, cancel := context.WithTimeout(pl.lifetime, time.Minute)
	go func() {
		defer cancel()
		err := retry.OnError(retry.DefaultBackoff, util.RetriableWithConflict, func() error {
			_, err := cs.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
			return err
		})
		switch {
		case err == nil:
			return
		case podReplaced(err) || pl.lifetime.Err() != nil:
			// Nothing to write to any more, or the next leader writes it.
			logger.V(4).Info("Did not record the start of a pod's Spot wait: the pod is gone or replaced, or the scheduler is stopping", "pod", klog.KRef(ns, name), "uid", uid, "err", err)
		default:
			logger.Error(err, "Recording the start of a pod's Spot wait in its status; a restarted scheduler would count it from the pod's creation", "pod", klog.KRef(ns, name))
		}
		pl.ungates.unrecord(uid, at)
	}()
}

// podReplaced reports whether a write to a pod's status failed because the
// pod is no longer the one read: deleted (404), changed at once by another
// writer until the retries ran out (409), or deleted and created again
// under its name, which the uid in the write makes the API server refuse
// (422, metadata.uid is immutable).
func podReplaced(err error) bool {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return true
	}
	var status apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &status) || status.Status().Details == nil {
		return false
	}
	for _, c := range status.Status().Details.Causes {
		if c.Field == "metadata.uid" {
			return true
		}
	}
	return false
}
