package gang

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gang"
)

const stateKey fwk.StateKey = "penny.dev/" + Name

// cycleState is what PreFilter hands Filter, Score, Reserve and Permit for
// one pod. It is never modified after PreFilter, so Clone shares it.
type cycleState struct {
	spec gang.Spec
	// inGang is false for a pod in no gang.
	inGang bool
	// roundID is the admission this member is placed under; 0 when the gang
	// needs no admission (enough members already run) or is native.
	roundID uint64
	shape   string
	demand  demand
	rules   rules
	// domain, when set, is where every member must go.
	domain *domain
	// claims is, per node, room other gangs hold that this pod must leave.
	claims map[string]*demand
}

func (s *cycleState) Clone() fwk.StateData { return s }

func readState(cs fwk.CycleState) (*cycleState, error) {
	data, err := cs.Read(stateKey)
	if err != nil {
		return nil, fmt.Errorf("reading %s state: %w", Name, err)
	}
	s, ok := data.(*cycleState)
	if !ok {
		return nil, fmt.Errorf("%s state has type %T", Name, data)
	}
	return s, nil
}

// roundOf is the gang of pod and the round its PreFilter placed it in.
// Without PennyGang's state, an earlier PreFilter (VolumeBinding's, for a
// PersistentVolumeClaim that does not exist) turned the member away before
// PennyGang's ran: no round can begin in that cycle, so the round in
// progress, if any (roundID 0), is the one the member cannot join.
func roundOf(cs fwk.CycleState, pod *corev1.Pod) (ref gang.Ref, roundID uint64, ok bool) {
	if st, err := readState(cs); err == nil {
		return st.spec.Ref, st.roundID, st.inGang && st.roundID != 0
	}
	spec, ok, err := gang.Of(pod)
	if err != nil || !ok || spec.Source == gang.SourcePodGroup {
		return gang.Ref{}, 0, false
	}
	return spec.Ref, 0, true
}

// SignPod lets the scheduler batch pods with the same signature. Members of
// different gangs must not share cached results (their domains differ), so
// a member's gang is part of its signature.
func (pl *Gang) SignPod(_ context.Context, pod *corev1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	ref, ok := gang.RefOf(pod)
	if !ok {
		return nil, nil
	}
	return []fwk.SignFragment{{Key: string(stateKey), Value: ref.Key()}}, nil
}

// PreFilter admits a gang: the first member tried finds room for every
// member still to be placed, in one domain, and claims it. Later members of
// an admitted gang pass straight through. A pod in no gang only needs this
// plugin while some gang holds claims.
func (pl *Gang) PreFilter(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	spec, ok, err := gang.Of(pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	if !ok {
		if pl.claimedSlots.Load() == 0 {
			return nil, fwk.NewStatus(fwk.Skip)
		}
		pl.mu.Lock()
		claims := pl.claimsFor("", "", corev1helpers.PodPriority(pod))
		pl.mu.Unlock()
		if claims == nil {
			// Only gangs of lower priority claim room.
			return nil, fwk.NewStatus(fwk.Skip)
		}
		cs.Write(stateKey, &cycleState{demand: podDemand(pod), claims: claims})
		return nil, nil
	}
	if spec.Source == gang.SourcePodGroup {
		return pl.preFilterNative(ctx, cs, pod, spec, nodes)
	}

	r := pl.rulesOf(spec)
	d := podDemand(pod)
	st := &cycleState{spec: spec, inGang: true, demand: d, shape: shapeKey(pod, d), rules: r}
	members, err := gang.Members(pl.pods, spec.Ref)
	if err != nil {
		return nil, fwk.AsStatus(err)
	}

	pl.mu.Lock()
	defer pl.mu.Unlock()
	g := pl.stateOf(spec.Ref)
	now := pl.clock.Now()
	if rd := g.round; rd != nil {
		st.roundID, st.rules, st.domain = rd.id, rd.rules, &rd.domain
		st.claims = pl.claimsFor(spec.Ref.Key(), st.shape, corev1helpers.PodPriority(pod))
		cs.Write(stateKey, st)
		return rd.nodes, nil
	}
	if now.Before(g.backoffUntil) {
		klog.FromContext(ctx).V(5).Info("Gang backing off", "gang", spec.Ref, "pod", klog.KObj(pod), "until", g.backoffUntil)
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, fmt.Sprintf("gang %s is backing off after a failed attempt; it retries in %s", spec.Ref, g.backoffUntil.Sub(now).Round(1e6)))
	}
	running, pending := pl.split(g, members, pod)
	need := int(spec.MinMember) - len(running)
	fixed := pl.domainOfRunning(r, running)
	st.domain = fixed
	if need <= 0 {
		// Enough members already run: this one joins them, in their domain.
		// It needs no admission, so it starts no wait (penny_gang_wait_seconds):
		// nothing would end one until the gang's next admission.
		st.claims = pl.claimsFor("", "", corev1helpers.PodPriority(pod))
		cs.Write(stateKey, st)
		return nodesIn(nodes, r, fixed), nil
	}
	if g.firstAttempt.IsZero() {
		g.firstAttempt = now
	}
	if len(pending) < need {
		// A member went away after this one was let into the queue (or a
		// gated one came in its place): wait, like PreEnqueue does, for
		// onPodAdd or onPodUpdate to bring it back.
		msg := waitingFor(spec, members)
		g.gated[pod.UID] = msg
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}

	if msg := pl.memberProblem(pod, spec, members); msg != "" {
		// A member turned malformed, or changed its size, after this one
		// passed PreEnqueue: claim nothing for a gang that cannot complete.
		// The member's own update retries it, and its admission activates
		// this one again.
		g.gated[pod.UID] = msg
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}
	priority := lowestPriority(pending[:need])
	claims := pl.claimsFor("", "", priority)
	p, short := placeGang(nodes, shapesOf(pending[:need], pl.nodeCheck, pl.nodeCost), r, fixed, claims, pl.risk)
	if p == nil {
		// Count the whole gang, as the other gang messages do: members
		// running or placed are placeable too.
		short.placeable += int64(len(running))
		short.needed += int64(len(running))
		klog.FromContext(ctx).V(4).Info("Gang does not fit", "gang", spec.Ref, "pod", klog.KObj(pod), "placeable", short.placeable, "needed", short.needed)
		attempts.WithLabelValues(string(resultUnschedulable)).Inc()
		pl.lacking.Store(spec.Ref.Key(), short.lacking)
		msg := short.message(spec.Ref, r, fixed != nil)
		if len(claims) > 0 {
			if q, _ := placeGang(nodes, shapesOf(pending[:need], pl.nodeCheck, nil), r, fixed, nil, nil); q != nil {
				// Only other gangs' claims stand in the way: retry when they go.
				pl.blocked[spec.Ref.Key()] = true
				msg += "; room is held for other gangs being placed"
			}
		}
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}
	rd := pl.admit(g, r, p, pl.timeoutFor(spec, members), priority)
	rd.nodes = nodesIn(nodes, r, &rd.domain)
	attempts.WithLabelValues(string(resultAdmitted)).Inc()
	klog.FromContext(ctx).V(4).Info("Gang admitted", "gang", spec.Ref, "members", need, "domain", r.describe(rd.domain), "round", rd.id, "priority", priority)
	st.roundID, st.domain = rd.id, &rd.domain
	st.claims = pl.claimsFor(spec.Ref.Key(), st.shape, corev1helpers.PodPriority(pod))
	cs.Write(stateKey, st)
	return rd.nodes, nil
}

// lowestPriority is the priority of a gang placing these members: the
// lowest of theirs, as kube-scheduler's queue reaches that member last.
func lowestPriority(members []*corev1.Pod) int32 {
	p := corev1helpers.PodPriority(members[0])
	for _, m := range members[1:] {
		p = min(p, corev1helpers.PodPriority(m))
	}
	return p
}

// nodesIn lists the nodes of a domain, so the scheduler filters only those:
// with a gang confined to one of six domains, evaluating every node would
// spend most of a member's cycle on nodes it can never use. Nil (all nodes)
// when no domain applies.
func nodesIn(nodes []fwk.NodeInfo, r rules, d *domain) *fwk.PreFilterResult {
	if d == nil {
		return nil
	}
	names := sets.New[string]()
	for _, ni := range nodes {
		if n := ni.Node(); n != nil && r.domainOf(n) == *d {
			names.Insert(n.Name)
		}
	}
	return &fwk.PreFilterResult{NodeNames: names}
}

// PreFilterExtensions is nil: the plugin's Filter does not depend on other
// pods in a way preemption's what-if could change.
func (pl *Gang) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// rulesOf applies a gang's overrides to the plugin's defaults.
func (pl *Gang) rulesOf(spec gang.Spec) rules {
	r := rules{sameZone: *pl.args.SameZone, sameCapType: *pl.args.SameCapacityType, zoneLabel: pl.args.ZoneLabel}
	if spec.SameZone != nil {
		r.sameZone = *spec.SameZone
	}
	if spec.SameCapacityType != nil {
		r.sameCapType = *spec.SameCapacityType
	}
	return r
}

// timeoutFor is how long the gang's placed members may wait for the rest:
// the gang's own timeout (from any member that sets one), capped by the
// maximum the cluster allows.
func (pl *Gang) timeoutFor(spec gang.Spec, members []*corev1.Pod) time.Duration {
	for _, p := range members {
		if spec.Timeout > 0 {
			break
		}
		if s, ok, err := gang.Of(p); ok && err == nil {
			spec.Timeout = s.Timeout
		}
	}
	if spec.Timeout > 0 {
		return min(spec.Timeout, pl.args.MaxPermitTimeout.Duration)
	}
	return pl.args.PermitTimeout.Duration
}

// split sorts members into those running or placed, and those still to be
// placed with pod first; gated members are in neither. Caller holds mu.
func (pl *Gang) split(g *gangState, members []*corev1.Pod, pod *corev1.Pod) (running, pending []*corev1.Pod) {
	pending = append(pending, pod)
	for _, m := range members {
		switch {
		case m.UID == pod.UID:
		case m.Spec.NodeName != "":
			running = append(running, m)
		case len(m.Spec.SchedulingGates) > 0:
			// Not to be planned for: it cannot come until ungated.
		default:
			if node, ok := g.placed[m.UID]; ok {
				c := m.DeepCopy()
				c.Spec.NodeName = node
				running = append(running, c)
			} else {
				pending = append(pending, m)
			}
		}
	}
	return running, pending
}

// domainOfRunning is the domain a gang's running members already fixed, or
// nil when none run or no rule applies.
func (pl *Gang) domainOfRunning(r rules, running []*corev1.Pod) *domain {
	if !r.sameZone && !r.sameCapType {
		return nil
	}
	for _, m := range running {
		if ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(m.Spec.NodeName); err == nil && ni.Node() != nil {
			d := r.domainOf(ni.Node())
			return &d
		}
	}
	return nil
}

// Filter keeps a member inside its gang's domain and keeps every pod off the
// room other gangs of its priority or higher have claimed.
func (pl *Gang) Filter(_ context.Context, cs fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) *fwk.Status {
	st, err := readState(cs)
	if err != nil {
		return fwk.AsStatus(err)
	}
	node := ni.Node()
	if st.domain != nil {
		if got := st.rules.domainOf(node); got != *st.domain {
			return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, fmt.Sprintf("gang %s is placed in %s; node is in %s",
				st.spec.Ref, st.rules.describe(*st.domain), st.rules.describe(got)))
		}
	}
	if claimed, ok := st.claims[node.Name]; ok {
		if fits, short := st.demand.fitsOn(ni, claimed); !fits {
			return fwk.NewStatus(fwk.Unschedulable, fmt.Sprintf("%s on this node is held for a gang being placed", short))
		}
	}
	return nil
}

// PostFilter releases an admitted gang one of whose members fits nowhere:
// the others would otherwise hold their nodes until the deadline.
func (pl *Gang) PostFilter(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	ref, roundID, ok := roundOf(cs, pod)
	if !ok {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	var e effects
	pl.mu.Lock()
	g := pl.gangs[ref.Key()]
	if g != nil && g.round != nil && (roundID == 0 || g.round.id == roundID) {
		pl.release(g, fmt.Sprintf("member %s fits no node", pod.Name), &e)
	}
	pl.mu.Unlock()
	pl.apply(klog.FromContext(ctx), &e)
	if e.message == "" {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	return nil, fwk.NewStatus(fwk.Unschedulable, e.message)
}
