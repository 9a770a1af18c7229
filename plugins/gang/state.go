package gang

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"

	"github.com/pennysched/penny/pkg/gang"
)

// gangState is what the plugin remembers about one gang. Guarded by Gang.mu.
type gangState struct {
	ref gang.Ref
	// firstAttempt is when the gang was first tried since it last completed;
	// the wait-time metric runs from here.
	firstAttempt time.Time
	// failures counts consecutive released rounds; the backoff doubles with it.
	failures     int
	backoffUntil time.Time
	backoffTimer clock.Timer
	// round is the gang's current admission, nil when not admitted.
	round *round
	// placed are members reserved on a node (waiting in Permit or binding)
	// that the informer does not yet show bound.
	placed map[types.UID]string
	// gated are members PreEnqueue holds back, with the reason each was
	// told by an event (told once per reason).
	gated map[types.UID]string
}

// round is one admission of a gang: room for its remaining members was found
// and claimed; it ends when enough members are placed (complete) or when it
// is released.
type round struct {
	id       uint64
	timeout  time.Duration
	deadline time.Time
	rules    rules
	domain   domain
	// priority is the gang's: the lowest of the members the round claims
	// room for, since the gang is placed only when that one is. Its claims
	// hold only against pods of this priority or lower (claimsFor).
	priority int32
	// members reserved in this round.
	members map[types.UID]bool
	// nodeUIDs are the UIDs of the nodes members were reserved on, so a
	// node deleted and created again under the same name releases only the
	// members placed on the node that went.
	nodeUIDs map[types.UID]types.UID
	// consumed are the members whose reservation used up one of the
	// round's slots (consume), so a member deleted while it waits can give
	// its slot back.
	consumed map[types.UID]bool
	// slots still claimed for members not yet reserved.
	slots []slot
	// nodes are the domain's nodes, handed to the scheduler as the only
	// nodes worth filtering for this round's members.
	nodes     *fwk.PreFilterResult
	activated bool
	timer     clock.Timer
}

// effects are the calls into the framework that a state change asks for.
// They are made after Gang.mu is released: the scheduling queue calls
// QueueSort and PreEnqueue under its own lock, so calling the queue while
// holding ours could deadlock.
type effects struct {
	allow    []types.UID
	reject   []types.UID
	message  string
	activate map[string]*corev1.Pod
	// released are members to tell why their gang was released.
	released []*corev1.Pod
}

func (e *effects) activatePods(pods []*corev1.Pod) {
	if e.activate == nil {
		e.activate = map[string]*corev1.Pod{}
	}
	for _, p := range pods {
		if p.Spec.NodeName == "" {
			e.activate[podKey(p)] = p
		}
	}
}

func (pl *Gang) apply(logger klog.Logger, e *effects) {
	for _, uid := range e.allow {
		if wp := pl.handle.GetWaitingPod(uid); wp != nil {
			wp.Allow(Name)
		}
	}
	for _, uid := range e.reject {
		if wp := pl.handle.GetWaitingPod(uid); wp != nil {
			wp.Reject(Name, e.message)
		}
	}
	for _, p := range e.released {
		pl.handle.EventRecorder().Eventf(p, nil, corev1.EventTypeWarning, "GangReleased", "Scheduling", "%s", e.message)
	}
	if len(e.activate) > 0 {
		pl.handle.Activate(logger, e.activate)
	}
}

// stateOf returns the gang's state, creating it. Caller holds mu.
func (pl *Gang) stateOf(ref gang.Ref) *gangState {
	g := pl.gangs[ref.Key()]
	if g == nil {
		g = &gangState{ref: ref, placed: map[types.UID]string{}, gated: map[types.UID]string{}}
		pl.gangs[ref.Key()] = g
	}
	return g
}

// claimsFor sums, per node, the room other gangs claimed that a pod of the
// given priority must not take. A member may use its own gang's slots of its
// own shape; slots of its gang's other shapes stay out of reach, so a big
// member cannot take the room planned for a smaller sibling.
//
// Another gang's claim holds only against pods of that gang's priority or
// lower, as a nominated pod's room does in kube-scheduler: held against
// every pod, it kept a system-critical pod off the room of a batch gang for
// as long as the gang's round lasted, and DefaultPreemption could not help,
// a claim being no pod to evict. The gang whose room is taken finds out when
// a member fits nowhere (PostFilter releases it whole). Caller holds mu.
func (pl *Gang) claimsFor(own string, ownShape string, priority int32) map[string]*demand {
	if pl.claimedSlots.Load() == 0 {
		return nil
	}
	var out map[string]*demand
	for key, g := range pl.gangs {
		if g.round == nil || (key != own && priority > g.round.priority) {
			continue
		}
		for _, s := range g.round.slots {
			if key == own && s.shape == ownShape {
				continue
			}
			if out == nil {
				out = map[string]*demand{}
			}
			d := out[s.node]
			if d == nil {
				d = &demand{}
				out[s.node] = d
			}
			d.add(s.d, s.n)
		}
	}
	return out
}

// admit starts a round for g with the plan's claims. Caller holds mu.
func (pl *Gang) admit(g *gangState, r rules, p *plan, timeout time.Duration, priority int32) *round {
	pl.seq++
	rd := &round{
		id:       pl.seq,
		timeout:  timeout,
		deadline: pl.clock.Now().Add(timeout),
		rules:    r,
		domain:   p.domain,
		priority: priority,
		members:  map[types.UID]bool{},
		nodeUIDs: map[types.UID]types.UID{},
		consumed: map[types.UID]bool{},
		slots:    p.slots,
	}
	var n int64
	for _, s := range p.slots {
		n += s.n
	}
	pl.claimedSlots.Add(n)
	g.round = rd
	pl.lacking.Delete(g.ref.Key())
	id, key := rd.id, g.ref.Key()
	// The round ends here, at its deadline, whether or not any member waits
	// in Permit: its claims go and every waiting member is rejected from
	// this one goroutine (Permit sets the framework's own timers later).
	rd.timer = pl.clock.AfterFunc(timeout, func() { pl.expire(key, id) })
	return rd
}

// consume drops the claim a reserved member no longer needs: one slot of its
// shape, on its node if the plan put one there. It reports whether there was
// one. Caller holds mu.
func (pl *Gang) consume(rd *round, shape, node string) bool {
	pick := -1
	for i, s := range rd.slots {
		if s.shape != shape {
			continue
		}
		if pick < 0 || s.node == node {
			pick = i
		}
		if s.node == node {
			break
		}
	}
	if pick < 0 {
		return false
	}
	pl.claimedSlots.Add(-1)
	rd.slots[pick].n--
	if rd.slots[pick].n == 0 {
		rd.slots = append(rd.slots[:pick], rd.slots[pick+1:]...)
	}
	return true
}

// leave takes a member that left (deleted, or relabelled out of the gang)
// out of its round without releasing the gang, when enough members remain
// to make the gang's size, and claims the room it held again for them: the
// scheduler forgets the member's reservation right after. It reports false
// when the gang must be released instead. Caller holds mu.
func (pl *Gang) leave(rd *round, st *cycleState, pod *corev1.Pod, node string) bool {
	if st == nil || !pl.left(pod, st.spec.Ref) {
		return false
	}
	members, err := gang.Members(pl.pods, st.spec.Ref)
	if n, _ := ungated(members); err != nil || int32(n) < st.spec.MinMember {
		return false
	}
	delete(rd.members, pod.UID)
	delete(rd.nodeUIDs, pod.UID)
	if rd.consumed[pod.UID] {
		delete(rd.consumed, pod.UID)
		rd.slots = append(rd.slots, slot{node: node, shape: st.shape, d: st.demand, n: 1})
		pl.claimedSlots.Add(1)
	}
	return true
}

// left reports whether the informer shows pod gone, going, or no longer a
// member of gang ref.
func (pl *Gang) left(pod *corev1.Pod, ref gang.Ref) bool {
	obj, exists, err := pl.pods.GetByKey(podKey(pod))
	if err != nil {
		return false
	}
	if !exists {
		return true
	}
	cur, ok := obj.(*corev1.Pod)
	if !ok {
		return false
	}
	now, in := gang.RefOf(cur)
	return cur.UID != pod.UID || cur.DeletionTimestamp != nil || !in || now.Key() != ref.Key()
}

// endRound drops a round's claims and timer and wakes gangs that waited for
// claims to go. Caller holds mu.
func (pl *Gang) endRound(g *gangState, e *effects) {
	rd := g.round
	if rd == nil {
		return
	}
	g.round = nil
	if rd.timer != nil {
		rd.timer.Stop()
	}
	var n int64
	for _, s := range rd.slots {
		n += s.n
	}
	pl.claimedSlots.Add(-n)
	for key := range pl.blocked {
		delete(pl.blocked, key)
		if other := pl.gangs[key]; other != nil && other.round == nil {
			pl.activateMembers(other, e)
		}
	}
}

// release ends g's round because it cannot complete: every member waiting
// in Permit is rejected at once, and the gang backs off as a unit. Caller
// holds mu.
func (pl *Gang) release(g *gangState, why string, e *effects) {
	rd := g.round
	if rd == nil {
		return
	}
	pl.endRound(g, e)
	for uid := range rd.members {
		e.reject = append(e.reject, uid)
		delete(g.placed, uid)
	}
	g.failures++
	backoff := pl.args.Backoff.Duration << min(g.failures-1, 16)
	if backoff > pl.args.MaxBackoff.Duration || backoff <= 0 {
		backoff = pl.args.MaxBackoff.Duration
	}
	g.backoffUntil = pl.clock.Now().Add(backoff)
	e.message = fmt.Sprintf("gang %s released: %s; all %d placed members were released and the gang retries in %s",
		g.ref, why, len(rd.members), backoff.Round(time.Millisecond))
	if members, err := gang.Members(pl.pods, g.ref); err == nil {
		for _, p := range members {
			if rd.members[p.UID] {
				e.released = append(e.released, p)
			}
		}
	}
	if g.backoffTimer != nil {
		g.backoffTimer.Stop()
	}
	key := g.ref.Key()
	g.backoffTimer = pl.clock.AfterFunc(backoff, func() { pl.backoffDone(key) })
	attempts.WithLabelValues(string(resultReleased)).Inc()
	klog.Background().V(4).Info("Gang released", "gang", g.ref, "round", rd.id, "reason", why, "backoff", backoff)
}

// activateMembers queues every unplaced member of g. Caller holds mu.
func (pl *Gang) activateMembers(g *gangState, e *effects) {
	members, err := gang.Members(pl.pods, g.ref)
	if err != nil {
		return
	}
	var pending []*corev1.Pod
	for _, p := range members {
		if _, placed := g.placed[p.UID]; !placed {
			pending = append(pending, p)
		}
	}
	e.activatePods(pending)
}

func (pl *Gang) backoffDone(key string) {
	var e effects
	pl.mu.Lock()
	if g := pl.gangs[key]; g != nil && g.round == nil {
		pl.activateMembers(g, &e)
	}
	pl.mu.Unlock()
	pl.apply(klog.Background(), &e)
}

func (pl *Gang) expire(key string, id uint64) {
	var e effects
	pl.mu.Lock()
	if g := pl.gangs[key]; g != nil && g.round != nil && g.round.id == id {
		pl.release(g, fmt.Sprintf("not all members were placed within %s", g.round.timeout), &e)
	}
	pl.mu.Unlock()
	pl.apply(klog.Background(), &e)
}

// onPodAdd lets a gang's gated members into the queue once the member that
// completes the gang arrives. The scheduler itself only dispatches
// "unscheduled pod added" events to plugins with GenericWorkload on.
func (pl *Gang) onPodAdd(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if ref, inGang := gang.RefOf(pod); inGang && pod.Spec.NodeName == "" {
		// A gang queues from when its newest waiting member was created: a
		// pod that joins it later moves it back, rather than take the place
		// its older members hold.
		pl.queueGangAfter(ref.Key(), place{at: pod.CreationTimestamp.Time, uid: pod.UID})
	}
	pl.wake(pod)
}

// onPodUpdate notices members the informer now shows bound, so they count
// as running rather than placed, and members whose scheduling gates were
// lifted, which may complete their gang, and members whose gang keys were
// fixed or changed: the scheduler dispatches no other pod's update to
// plugins, so the waiting siblings are activated here.
func (pl *Gang) onPodUpdate(oldObj, newObj any) {
	pod, ok := newObj.(*corev1.Pod)
	if !ok {
		return
	}
	ref, inGang := gang.RefOf(pod)
	if old, ok := oldObj.(*corev1.Pod); ok {
		// A member relabelled out of its gang leaves it as a deleted one
		// does: the gang being placed held its room until its timeout.
		if was, in := gang.RefOf(old); in && (!inGang || ref.Key() != was.Key()) {
			pl.memberGone(old, fmt.Sprintf("left the gang (its %s changed)", gang.LabelName))
			// Placed and waiting for its old gang, it would bind with it
			// when that gang completes: its Unreserve gives the room back
			// to the old gang (leave), or releases it.
			if wp := pl.handle.GetWaitingPod(pod.UID); wp != nil {
				wp.Reject(Name, fmt.Sprintf("left gang %s while waiting for it (its %s changed)", was, gang.LabelName))
			}
		}
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		// A finished member leaves its gang as a deleted one does (Members
		// leaves it out); a Job keeps its pods once done, so their
		// deletion may never come.
		pl.memberGone(pod, "finished")
		return
	}
	if pod.Spec.NodeName == "" {
		old, ok := oldObj.(*corev1.Pod)
		if ok && len(old.Spec.SchedulingGates) > 0 && len(pod.Spec.SchedulingGates) == 0 {
			pl.wake(pod)
		} else if ok && inGang && !gang.SameKeys(old, pod) {
			var e effects
			pl.mu.Lock()
			if g := pl.gangs[ref.Key()]; g != nil {
				pl.retryHeld(g, pod, &e)
			}
			pl.mu.Unlock()
			pl.apply(klog.Background(), &e)
		}
		return
	}
	if !inGang {
		return
	}
	if old, ok := oldObj.(*corev1.Pod); ok && old.Spec.NodeName == "" {
		// The gang's members bind together: its place in the queue was
		// for getting them placed. A pod that names the gang later queues
		// by its own time, or a tenant could keep one member running and
		// put every new pod ahead of all queued since by naming its gang.
		pl.order.Delete(ref.Key())
	}
	var e effects
	pl.mu.Lock()
	if g := pl.gangs[ref.Key()]; g != nil {
		delete(g.placed, pod.UID)
		if old, ok := oldObj.(*corev1.Pod); ok && !gang.SameKeys(old, pod) {
			pl.retryHeld(g, pod, &e)
		}
	}
	pl.mu.Unlock()
	pl.apply(klog.Background(), &e)
}

// wake activates the members PreEnqueue (or PreFilter) held for pod's gang
// once pod, arrived or ungated, gives the gang enough members to try, or
// completes it with members still gated: those held are then told they wait
// for the gates, not for members to be created.
func (pl *Gang) wake(pod *corev1.Pod) {
	if pod.Spec.NodeName != "" {
		return
	}
	ref, ok := gang.RefOf(pod)
	if !ok || ref.Source != gang.SourceLabel {
		return
	}
	members, err := gang.Members(pl.pods, ref)
	if err != nil {
		return
	}
	// A malformed arrival wakes the held members too: they are waiting for
	// it, and PreEnqueue now tells them which member to fix.
	if spec, _, err := gang.Of(pod); err == nil && int32(len(members)) < spec.MinMember {
		return
	}
	var e effects
	pl.mu.Lock()
	if g := pl.gangs[ref.Key()]; g != nil {
		g.wakeHeld(members, &e)
	}
	pl.mu.Unlock()
	pl.apply(klog.Background(), &e)
}

// onPodDelete releases a gang being placed when a member goes away and the
// rest can no longer make the gang's size, instead of letting the others
// hold capacity until their deadline, and retries the members held for the
// one that went away when the rest now make a gang.
func (pl *Gang) onPodDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		pl.memberGone(pod, "was deleted")
	}
}

// memberGone is onPodDelete for a member that left its gang as how says
// (deleted, finished, or relabelled into another gang or none): the gang,
// read without it, is released if it can no longer complete.
func (pl *Gang) memberGone(pod *corev1.Pod, how string) {
	ref, ok := gang.RefOf(pod)
	if !ok {
		return
	}
	members, err := gang.Members(pl.pods, ref)
	if err != nil {
		return
	}
	if len(members) == 0 {
		// The first profile's QueueSort orders every profile's pods, so this
		// instance may hold the order of a gang whose state another profile's
		// instance keeps (or of a native gang): it goes with the last member,
		// or a gang created again under the name would sort by the old time.
		pl.order.Delete(ref.Key())
	}
	// Native gangs have state here only while held (nativeUnsupported); they
	// never have a round, so this only forgets them.
	var e effects
	pl.mu.Lock()
	g := pl.gangs[ref.Key()]
	if g != nil {
		delete(g.placed, pod.UID)
		delete(g.gated, pod.UID)
		if g.round != nil {
			// Gated members remain but cannot be placed before the timeout
			// unless someone lifts their gates: release now, as if gone.
			if spec, ok, err := gang.Of(pod); ok && err == nil {
				if n, gated := ungated(members); int32(n) < spec.MinMember {
					why := fmt.Sprintf("member %s %s and %d/%d members remain", pod.Name, how, len(members), spec.MinMember)
					if len(gated) > 0 {
						why = fmt.Sprintf("member %s %s and %d/%d members remain that may be scheduled (%d more have scheduling gates)", pod.Name, how, n, spec.MinMember, len(gated))
					}
					pl.release(g, why, &e)
				}
			}
		}
		if len(members) == 0 {
			pl.forget(g, &e)
		} else if len(g.gated) > 0 && pl.formed(members) {
			// The deleted member may have been the one holding the rest (a
			// malformed key, a disagreeing timeout or schedulerName). The
			// scheduler dispatches no unscheduled pod's deletion to plugins,
			// so without this they would wait for its five-minute flush.
			g.wakeHeld(members, &e)
		}
	}
	pl.mu.Unlock()
	pl.apply(klog.Background(), &e)
}

// retryHeld queues again the members held for g once pod's gang keys
// changed and the members agree and are enough (formed): the odd member
// fixed, or gang-size edited on every member (down to the members there
// are). The scheduler hands an unscheduled pod's update only to that pod's
// own hints, and no assigned pod's label or annotation change to this
// plugin. The siblings held for pod waited for its admission to activate
// them (Permit), which a gang that does not fit never has, nor one that pod
// completes alone next to running members: they waited for the queue's
// five-minute flush of unschedulable pods. Pod itself is left to its own
// update: activated here, the queue could try the version it still holds,
// with the old keys, and tell it the members disagree. Caller holds mu.
func (pl *Gang) retryHeld(g *gangState, pod *corev1.Pod, e *effects) {
	if len(g.gated) == 0 {
		return
	}
	members, err := gang.Members(pl.pods, g.ref)
	if err != nil || !pl.formed(members) {
		return
	}
	g.wakeHeld(slices.DeleteFunc(slices.Clone(members), func(m *corev1.Pod) bool { return m.UID == pod.UID }), e)
}

// wakeHeld queues again the members PreEnqueue held back, and forgets why
// it held them. Caller holds mu.
func (g *gangState) wakeHeld(members []*corev1.Pod, e *effects) {
	if len(g.gated) == 0 {
		return
	}
	var waiting []*corev1.Pod
	for _, m := range members {
		if _, ok := g.gated[m.UID]; ok {
			waiting = append(waiting, m)
		}
	}
	clear(g.gated)
	e.activatePods(waiting)
}

// formed reports whether members make a gang PreEnqueue lets in: enough of
// them free of gates, and none malformed or disagreeing (memberProblem).
func (pl *Gang) formed(members []*corev1.Pod) bool {
	for _, p := range members {
		if p.Spec.NodeName != "" || len(p.Spec.SchedulingGates) > 0 {
			continue
		}
		spec, ok, err := gang.Of(p)
		if !ok || err != nil || spec.Source != gang.SourceLabel {
			return false
		}
		n, _ := ungated(members)
		return int32(n) >= spec.MinMember && pl.memberProblem(p, spec, members) == ""
	}
	return false
}

// forget drops a gang with no members left. Caller holds mu.
func (pl *Gang) forget(g *gangState, e *effects) {
	if g.backoffTimer != nil {
		g.backoffTimer.Stop()
	}
	pl.endRound(g, e)
	delete(pl.gangs, g.ref.Key())
	delete(pl.blocked, g.ref.Key())
	pl.order.Delete(g.ref.Key())
	pl.lacking.Delete(g.ref.Key())
}

// onNodeDelete releases every gang with a member reserved on a node that was
// deleted (a Spot node reclaimed while the gang is being placed). The
// scheduler rejects no waiting pod when its node goes, so the member would be
// allowed with its siblings and bound to a node that no longer exists, and
// the gang would run a member short. Members already bound are left to the
// reclaim flow.
func (pl *Gang) onNodeDelete(obj any) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		tomb, isTomb := obj.(cache.DeletedFinalStateUnknown)
		if !isTomb {
			return
		}
		if node, ok = tomb.Obj.(*corev1.Node); !ok {
			return
		}
	}
	// A node of the same name created since holds members of its own.
	gone := func(name string, uid types.UID) bool {
		return name == node.Name && (uid == "" || uid == node.UID)
	}
	// One effects per gang: each gang's members are told its own message.
	var released []*effects
	pl.mu.Lock()
	for _, g := range pl.gangs {
		if why := pl.lostNode(g, gone); why != "" {
			e := &effects{}
			pl.release(g, why, e)
			released = append(released, e)
		}
	}
	pl.mu.Unlock()
	for _, e := range released {
		pl.apply(klog.Background(), e)
	}
}

// goneFromSnapshot says whether a node is missing from this scheduling
// cycle's snapshot, or is there under another UID: the check a Permit makes
// for a deletion whose event has not reached onNodeDelete yet. The
// simulator, which has no node informer, keeps its nodes in the snapshot
// too.
func (pl *Gang) goneFromSnapshot(name string, uid types.UID) bool {
	ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(name)
	return err != nil || ni.Node() == nil || (uid != "" && ni.Node().UID != uid)
}

// lostNode says which member of g's round was reserved on a node gone says
// is gone (deleted, or deleted and created again under its name: a new
// machine, maybe in another zone or of another capacity type), or "" if
// none was. Caller holds mu.
func (pl *Gang) lostNode(g *gangState, gone func(name string, uid types.UID) bool) string {
	if g.round == nil {
		return ""
	}
	for uid := range g.round.members {
		name, ok := g.placed[uid]
		if !ok || !gone(name, g.round.nodeUIDs[uid]) {
			continue
		}
		member := string(uid)
		if members, err := gang.Members(pl.pods, g.ref); err == nil {
			for _, p := range members {
				if p.UID == uid {
					member = p.Name
				}
			}
		}
		return fmt.Sprintf("node %s, where member %s was placed, was deleted", name, member)
	}
	return ""
}
