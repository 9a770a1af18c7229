package spotrisk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	capacitylabels "github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/pricing"
)

const stateKey fwk.StateKey = Name

// ReasonReclaimPending is the Filter reason for nodes about to be reclaimed.
const ReasonReclaimPending = "node(s) have a pending reclaim notice"

// Event reasons.
const (
	EventInvalidAnnotation = "InvalidSpotAnnotation"
	EventFallback          = "SpotFallback"
)

// podState is what PreFilter learns about a pod for the rest of the cycle.
type podState struct {
	class Class
	// start is when the pod began to wait for a node (waitStart).
	start time.Time
	// deadline ends a waiting pod's wait for the capacity its policy
	// prefers (Class.Waits).
	deadline time.Time
	// waiting is true while the pod may not use the capacity it falls back
	// to (Class.FallbackFrom) yet.
	waiting bool
	// interrupted is the longest run of an avoiding pod's workload that a
	// reclaim cut short; such a pod stays off Spot.
	interrupted time.Duration
	// runtime is how long an avoiding pod is taken to run, and where that
	// comes from, for what a reclaim would cost it.
	runtime       time.Duration
	runtimeSource string
	usage         pricing.Usage
	// readsCapacity is false when none of the pod's rules reads a node's
	// capacity type (an allow pod without a risk limit, a prefer pod past
	// its wait): Filter then reads none of a node's labels, which on a
	// thousand nodes cost more than the rest of the plugin's Filter.
	readsCapacity bool
	// The reasons the pod's rules give: the same words for every node a
	// rule turns away, so they are formatted by the first such node, not
	// once per node.
	offSpot, onlySpot, cutShort, overLimit, overLoss, waits reason
	// risk is excludeByRisk's verdict on each Spot pool, kept from the
	// pool's first node for the others (poolMemo).
	risk *poolMemo[string]

	mu sync.Mutex
	// keptOff is the Spot pools whose reclaim risk Filter turned the pod
	// away from (excludeByRisk), for PostFilter to retry the pod when one of
	// their estimates falls back under its limit (waitForRisk). Filter runs
	// on many nodes at once.
	keptOff map[pricing.Pool]bool
}

// Clone is not needed: the state is read-only after PreFilter but for
// keptOff and risk, which clones may share: preemption's dry runs apply the
// same rules to the same pools in the same cycle.
func (s *podState) Clone() fwk.StateData { return s }

func (s *podState) keepOff(pool pricing.Pool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keptOff == nil {
		s.keptOff = map[pricing.Pool]bool{}
	}
	s.keptOff[pool] = true
}

// reason is a Filter reason formatted once, by the first node that needs
// it: Filter runs on many nodes at once.
type reason struct {
	once sync.Once
	text string
}

func (r *reason) get(format func() string) string {
	r.once.Do(func() { r.text = format() })
	return r.text
}

func getState(cs fwk.CycleState) (*podState, error) { return readState[*podState](cs, stateKey) }

// readState is the plugin's state under key.
func readState[T fwk.StateData](cs fwk.CycleState, key fwk.StateKey) (T, error) {
	var none T
	d, err := cs.Read(key)
	if err != nil {
		return none, fmt.Errorf("%s: reading cycle state: %w", Name, err)
	}
	s, ok := d.(T)
	if !ok {
		return none, fmt.Errorf("%s: cycle state holds %T", Name, d)
	}
	return s, nil
}

// PreFilter reads the pod's class and places it in time, recording in the
// pod's status when its wait began if that was its ungating
// (recordWaitStart). A malformed annotation rejects the pod with an event
// that names the annotation and the fix.
func (pl *SpotRisk) PreFilter(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, _ []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	class, err := pl.classify(pod)
	if err != nil {
		pl.reportInvalid(pod, err)
		// PostFilter, which runs next, then does not report it again.
		cs.Write(invalidKey, invalid{})
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	s := pl.stateFor(pod, class)
	s.usage = pricing.PodUsage(pod)
	cs.Write(stateKey, s)
	pl.recordWaitStart(ctx, pod, s)
	return nil, nil
}

// invalidKey marks a cycle whose PreFilter rejected the pod for a malformed
// annotation and said so (reportInvalid).
const invalidKey fwk.StateKey = Name + "/invalid"

type invalid struct{}

func (invalid) Clone() fwk.StateData { return invalid{} }

// reportInvalid tells the pod, in a Warning event, which of its annotations
// is malformed and how to fix it.
func (pl *SpotRisk) reportInvalid(pod *corev1.Pod, err error) {
	var ae *AnnotationError
	if h := pl.handle; errors.As(err, &ae) && h != nil && h.EventRecorder() != nil {
		h.EventRecorder().Eventf(pod, nil, corev1.EventTypeWarning, EventInvalidAnnotation, "Scheduling", "%s; the pod is not scheduled until it is fixed", ae.Error())
	}
}

// stateFor places a pod's class in time: a Spot-preferring pod waits for
// Spot capacity, and an avoiding pod for capacity that is not Spot, from
// when it may first be scheduled (waitStart) until FallbackAfter has passed;
// an avoiding pod whose workload already lost a run to a reclaim stays off
// Spot, and an avoiding pod is taken to run for its runtime (read once per
// pod, not per node).
func (pl *SpotRisk) stateFor(pod *corev1.Pod, class Class) *podState {
	s := &podState{class: class, start: pl.waitStart(pod)}
	if class.Policy == Avoid {
		s.interrupted = pl.interrupted.Longest(pod)
		s.runtime, s.runtimeSource = pl.runtime(class)
	}
	if class.Waits() {
		s.deadline = s.start.Add(class.FallbackAfter)
		s.waiting = pl.clock.Now().Before(s.deadline)
	}
	// What exclude's rules read a node's capacity for: never and only
	// always, avoid (which follows risk) and risk limits for Spot pools, a
	// waiting pod for the capacity it falls back to.
	s.readsCapacity = class.Policy == Never || class.Policy == Only || class.FollowsRisk() || s.waiting
	if class.FollowsRisk() {
		s.risk = newPoolMemo[string](pl.prices)
	}
	return s
}

// runtime is how long a pod of the class is taken to run, and where that
// comes from: as long as it declares, else, for training, as long as
// training runs here typically last (pricing.RunLengths, which learns from
// training only), else unknownRuntime. The expected-loss rule (riskReason)
// and the price of a reclaim (Score, the Expander: expected) both read it,
// so that one pod's expected loss on a pool is one number: with the learned
// run length in the rule and unknownRuntime in the price, the Expander and
// Score ranked the Spot pools an avoiding pod had fallen back to as if it
// lost 2h of work per reclaim where the rule took it to lose, say, 200h.
func (pl *SpotRisk) runtime(class Class) (time.Duration, string) {
	if class.Work.ExpectedRuntime > 0 {
		return class.Work.ExpectedRuntime, "declared"
	}
	if class.Workload == Training {
		if d, learned := pl.runLengths.Typical(); learned {
			return d, "how long training runs here typically last"
		}
	}
	return pl.args.UnknownRuntime.Duration, "unknownRuntime"
}

// PreFilterExtensions implements fwk.PreFilterPlugin: the plugin's state
// does not depend on other pods.
func (pl *SpotRisk) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// Filter applies the Spot rules to one node. Each rule has its own reason so
// that the scheduler's status says how many nodes each rule excluded.
func (pl *SpotRisk) Filter(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) *fwk.Status {
	s, err := getState(cs)
	if err != nil {
		return fwk.AsStatus(err)
	}
	node := ni.Node()
	if reason := pl.exclude(s, node); reason != "" {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reason)
	}
	return nil
}

// Admits says which nodes the plugin's rules let the pod use, whatever room
// they have. Nil when the pod's annotations are malformed: PreFilter rejects
// the pod, naming the annotation.
func (pl *SpotRisk) Admits(pod *corev1.Pod) func(node *corev1.Node) bool {
	excludes := pl.Excludes(pod)
	if excludes == nil {
		return nil
	}
	return func(node *corev1.Node) bool { return excludes(node) == "" }
}

// Excludes is Admits with the reason Filter gives for each node it rules
// out ("" for a node the pod may use): PennyGang asks it before it admits a
// gang to a set of nodes, and repeats the reasons when the gang does not
// fit, so that a gang waiting for Spot says so. Like Filter's, its verdicts
// on a pool's risk are read once per pool (poolMemo): it is for one cycle.
func (pl *SpotRisk) Excludes(pod *corev1.Pod) func(node *corev1.Node) string {
	excludes, _ := pl.ExcludesAlike(pod)
	return excludes
}

// ExcludesAlike is Excludes with a key for what its verdicts read of the
// pod: pods with the same key are given the same reasons on every node, so
// PennyGang asks one of a gang's members for all those alike. Annotations
// alone do not make pods alike: a waiting pod's wait runs from its own
// creation or ungating, so members of a gang created minutes apart wait
// until different times, and one whose wait is over may take capacity that
// another's Filter still turns away.
func (pl *SpotRisk) ExcludesAlike(pod *corev1.Pod) (excludes func(node *corev1.Node) string, alike string) {
	class, err := pl.classify(pod)
	if err != nil {
		return nil, ""
	}
	s := pl.stateFor(pod, class)
	// The deadline only while the pod waits, in the whole seconds its
	// reason gives: past it, pods that began to wait at different times are
	// alike again.
	var until string
	if s.waiting {
		until = s.deadline.UTC().Format(time.RFC3339)
	}
	alike = fmt.Sprintf("%+v|%d|%d|%s|%s", class, s.interrupted, s.runtime, s.runtimeSource, until)
	return func(node *corev1.Node) string { return pl.exclude(s, node) }, alike
}

// exclude is the reason a node is not for the pod, or "".
func (pl *SpotRisk) exclude(s *podState, node *corev1.Node) string {
	if pl.reclaimPending(node) {
		return ReasonReclaimPending
	}
	if !s.readsCapacity {
		return ""
	}
	c := s.class
	if c.Policy == Never {
		// The label's author may have meant Spot (preemptible, spot-instance):
		// work that must not be interrupted does not bet on a guess.
		if unreadable := capacitylabels.Unreadable(node.Labels); unreadable != "" {
			return fmt.Sprintf("node(s) have a capacity label Penny cannot read (%s; want spot, on-demand or reserved) and the pod stays off Spot (%s)",
				unreadable, c.Why)
		}
	}
	capacity := pricing.NodeCapacity(node)
	switch {
	case c.Policy == Never && capacity.IsSpot():
		return s.offSpot.get(func() string { return fmt.Sprintf("node(s) are Spot and the pod stays off Spot (%s)", c.Why) })
	case c.Policy == Only && !capacity.IsSpot():
		return s.onlySpot.get(func() string { return fmt.Sprintf("node(s) are not Spot and the pod runs only on Spot (%s)", c.Why) })
	case c.Policy == Avoid && s.interrupted > 0 && capacity.IsSpot():
		return s.cutShort.get(func() string {
			return fmt.Sprintf("node(s) are Spot and a reclaim already cut a run of this workload short after %s (%s)",
				s.interrupted.Round(time.Minute), c.Why)
		})
	}
	if reason := pl.excludeByRisk(s, node, capacity); reason != "" {
		return reason
	}
	// Last: a rule above excludes the node for good, the wait only for now.
	if s.waiting && c.FallbackFrom(capacity) {
		return s.waits.get(func() string {
			want, fallback := c.wait()
			return fmt.Sprintf("node(s) are %s and the pod waits for %s capacity until %s (%s; fallback after %s)",
				fallback, want, s.deadline.UTC().Format(time.RFC3339), c.Why, c.FallbackAfter)
		})
	}
	return ""
}

// excludeByRisk applies the rules that weigh a Spot pool's reclaim rate,
// and notes the pool it keeps the pod off for PostFilter (waitForRisk).
func (pl *SpotRisk) excludeByRisk(s *podState, node *corev1.Node, capacity pricing.Capacity) string {
	if !capacity.IsSpot() || !s.class.FollowsRisk() {
		return ""
	}
	k := poolKeyOf(node, capacity)
	reason, stored := s.risk.get(k, func() string { return pl.riskReason(s, pl.poolPrice(node, k).rate) })
	// The pool is noted once, by the node whose verdict was kept, not under
	// the pod's lock by every node of it.
	if stored && reason != "" && pl.priors != nil {
		s.keepOff(k.Pool)
	}
	return reason
}

// riskReason is why a Spot pool reclaimed at rate (per node-hour) is not for
// the pod, or "".
func (pl *SpotRisk) riskReason(s *podState, rate float64) string {
	c := s.class
	overLimit, overLoss := pl.riskRules(s, rate)
	switch {
	case overLimit:
		// No percent sign: the scheduler's event recorder takes the
		// message as a format. Six significant digits: 0.07 is 7, not
		// 7.000000000000001.
		return s.overLimit.get(func() string {
			return fmt.Sprintf("node(s) are in Spot pools reclaimed more often than %s=%.6g percent a month allows", AnnotationMaxReclaimRisk, 100*c.MaxMonthlyRisk)
		})
	case overLoss:
		return s.overLoss.get(func() string {
			return fmt.Sprintf("node(s) are in Spot pools where training without checkpoints, on %d node(s) for %s (%s), would expect to lose more than %.6g percent of its work to reclaims",
				max(1, c.Work.Nodes), s.runtime.Round(time.Minute), s.runtimeSource, 100**pl.args.MaxExpectedLoss)
		})
	}
	return ""
}

// riskRules are riskReason's rules without their words: whether a pool
// reclaimed at rate is over the pod's risk limit, else whether it would
// cost training without checkpoints more of its work than maxExpectedLoss
// allows. retryKeptOff asks them of every pod a pool holds each time one
// of them fails, where a reason's words cost one fmt.Sprintf per pod held.
func (pl *SpotRisk) riskRules(s *podState, rate float64) (overLimit, overLoss bool) {
	c := s.class
	// A limit equal to the pool's estimate admits it. The estimate goes
	// through a rate and back, which is off by a few units in the last
	// place: 2.5% came back as 0.025000000000000022, above a 2.5% limit,
	// and kept every <5% pool from a pod that accepts 2.5%.
	if pricing.MonthlyFromRate(rate) > c.MaxMonthlyRisk*(1+1e-9) {
		return true, false
	}
	// Training without checkpoints restarts from nothing after a reclaim,
	// which costs it on average half its run (its runtime: stateFor).
	return false, c.Policy == Avoid && float64(max(1, c.Work.Nodes))*rate*s.runtime.Hours()/2 > *pl.args.MaxExpectedLoss
}

// riskBound is the highest reclaim rate riskReason admits for the pod, up
// to rounding: what a pool's estimate must fall to for the pod to be
// retried (waitForRisk), which asks riskRules again then.
func (pl *SpotRisk) riskBound(s *podState) float64 {
	c := s.class
	bound := math.Inf(1)
	if c.MaxMonthlyRisk < 1 {
		bound = pricing.RateFromMonthly(c.MaxMonthlyRisk)
	}
	if nodes := max(1, c.Work.Nodes); c.Policy == Avoid && s.runtime > 0 {
		bound = min(bound, 2**pl.args.MaxExpectedLoss/(float64(nodes)*s.runtime.Hours()))
	}
	return bound
}

// PostFilter runs when no node fits. A pod still in its wait (Class.Waits)
// gets a timer that retries it when the wait ends, so that falling back
// does not have to wait for an unrelated cluster event, and a pod that its
// risk rules kept off Spot pools is retried when one of their estimates
// falls back under its limit (waitForRisk). Both hold too when an earlier
// PreFilter turned the pod away before this plugin's ran (PennyGang, which
// asks Excludes, finding no room for the gang on the nodes this plugin
// admits): the pools are then read from the snapshot (keepOffSnapshot),
// and a malformed annotation is named in an event as PreFilter names it.
//
// It runs before DefaultPreemption in the deployed profile
// (deploy/scheduler/config.yaml), which ends the chain when it nominates a
// node: the pod then waited for its victims to go, past the end of its wait.
// It always returns Unschedulable, so that preemption still runs. A retry
// that comes while the pod is nominated costs one cycle, which places it on
// its nominated node if the victims went, or elsewhere if its wait is over.
func (pl *SpotRisk) PostFilter(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	s, err := getState(cs)
	if err != nil {
		class, err := pl.classify(pod)
		if err != nil {
			// An earlier PreFilter turned the pod away (PennyGang, finding
			// no room for its gang) before this plugin's could name the
			// malformed annotation: the pod learnt of it only once room
			// came.
			if _, notReported := cs.Read(invalidKey); notReported != nil {
				pl.reportInvalid(pod, err)
			}
			return nil, fwk.NewStatus(fwk.Unschedulable)
		}
		s = pl.stateFor(pod, class)
		pl.recordWaitStart(ctx, pod, s)
		pl.keepOffSnapshot(klog.FromContext(ctx), pod, s)
	}
	if pl.handle != nil {
		pl.waitForRisk(klog.FromContext(ctx), pod, s)
	}
	if !s.waiting || pl.handle == nil {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	// One timer per pod, unless its wait got shorter (a lowered
	// penny.dev/fallback-after): then an earlier one, and the later one
	// retries it once more for nothing. The wait is the pod's to set, and a
	// timer outlives the pod if it is deleted: none is armed more than
	// maxWakeupDelay ahead (a pod still waiting then is retried and arms the
	// next), and it holds only the pod's name, not the pod with its
	// annotations. A tenant churning pods that wait for years kept each of
	// them in the scheduler's memory for as long.
	now := pl.clock.Now()
	wake := s.deadline
	if limit := now.Add(maxWakeupDelay); wake.After(limit) {
		wake = limit
	}
	pl.mu.Lock()
	armed, ok := pl.wakeups[pod.UID]
	arm := !ok || wake.Before(armed)
	if arm {
		pl.wakeups[pod.UID] = wake
	}
	pl.mu.Unlock()
	if arm {
		logger := klog.FromContext(ctx)
		uid, key, ref := pod.UID, pod.Namespace+"/"+pod.Name, queueRef(pod)
		pl.clock.AfterFunc(wake.Sub(now), func() {
			pl.mu.Lock()
			if pl.wakeups[uid].Equal(wake) {
				delete(pl.wakeups, uid)
			}
			pl.mu.Unlock()
			pl.handle.Activate(logger, map[string]*corev1.Pod{key: ref})
		})
	}
	return nil, fwk.NewStatus(fwk.Unschedulable)
}

// keepOffSnapshot notes, as Filter does (excludeByRisk), the Spot pools
// whose risk keeps the pod off the snapshot's nodes, for a pod whose Filter
// never ran: an earlier PreFilter turned it away. A gang that PennyGang
// finds no room for on the nodes this plugin admits waited for an unrelated
// event or the scheduler's five-minute flush, though what kept it out may
// be a pool's risk that decays in minutes. Only nodes the pod's node
// selector, required affinity and tolerations let it use count, as only
// those pass the in-tree filters that run before Filter: a pool the pod may
// not use anyway would retry it for nothing. One pass over the nodes, on
// the failure path only; the verdicts Excludes gave PennyGang are not kept
// for it, since PennyGang asks once per distinct member, for the member
// being scheduled or another, and not at all when it turns the pod away
// first (backing off, a member missing), and a cache of them outside the
// cycle would need forgetting.
func (pl *SpotRisk) keepOffSnapshot(logger klog.Logger, pod *corev1.Pod, s *podState) {
	if pl.priors == nil || pl.handle == nil || pl.handle.SnapshotSharedLister() == nil || !s.class.FollowsRisk() {
		return
	}
	nodes, err := pl.handle.SnapshotSharedLister().NodeInfos().List()
	if err != nil {
		return
	}
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	for _, ni := range nodes {
		node := ni.Node()
		// Only Spot nodes' pools are kept off by risk, and the check is
		// cheaper than exclude's words for the others.
		if node == nil || !pricing.NodeCapacity(node).IsSpot() {
			continue
		}
		if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logger, node.Spec.Taints, pod.Spec.Tolerations, blocksScheduling, true); untolerated {
			continue
		}
		if ok, err := affinity.Match(node); !ok || err != nil {
			continue
		}
		pl.exclude(s, node)
	}
}

// blocksScheduling is a taint that keeps a pod that does not tolerate it
// off a node, as the in-tree TaintToleration filter reads it.
func blocksScheduling(t *corev1.Taint) bool {
	return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
}

// maxWakeupDelay bounds how far ahead PostFilter arms a pod's retry.
const maxWakeupDelay = time.Hour

// queueRef is what the scheduling queue looks a pod up by when it is
// retried (Activate): its name, UID and native pod group, not the pod with
// its annotations, which a timer would keep after the pod is deleted.
func queueRef(pod *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Spec: corev1.PodSpec{SchedulingGroup: pod.Spec.SchedulingGroup.DeepCopy()}}
}
