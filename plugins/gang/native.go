package gang

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/statustext"
)

const nativeDomainKey fwk.StateKey = "penny.dev/" + Name + "-domain"

// nativeDomain is the domain chosen for a native PodGroup in one pod group
// scheduling cycle, shared by all the group's pods in that cycle.
type nativeDomain struct{ domain domain }

func (d *nativeDomain) Clone() fwk.StateData { return d }

// nativeUnsupported says why a pod that names a PodGroup cannot be
// scheduled here, or "" when it can. The API server keeps
// spec.schedulingGroup whenever its own GenericWorkload gate is on; a
// scheduler without the gate runs neither GangScheduling nor the pod group
// cycle, so the group's pods would bind one by one, a partial gang.
func (pl *Gang) nativeUnsupported(pod *corev1.Pod, spec gang.Spec) string {
	if pl.nativeGangs {
		return ""
	}
	return fmt.Sprintf("pod %s/%s names PodGroup %s in spec.schedulingGroup but penny-scheduler runs without the GenericWorkload feature gate, "+
		"so nothing would keep the group's pods together: start penny-scheduler with --feature-gates=GenericWorkload=true, "+
		"or drop spec.schedulingGroup and set the %s and %s labels", pod.Namespace, pod.Name, statustext.Quote(spec.Name), gang.LabelName, gang.KeySize)
}

// preFilterNative handles a pod that names a native PodGroup. The in-tree
// GangScheduling plugin and the pod group scheduling cycle already gate and
// admit the group as a whole, so this plugin does not gate it a second time:
// it only keeps the group in one domain (zone, capacity type) and keeps its
// pods off room claimed by label gangs.
func (pl *Gang) preFilterNative(_ context.Context, cs fwk.CycleState, pod *corev1.Pod, spec gang.Spec, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	if msg := pl.nativeUnsupported(pod, spec); msg != "" {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}
	st := &cycleState{spec: spec, inGang: true, demand: podDemand(pod), rules: pl.rulesOf(spec)}
	pl.mu.Lock()
	st.claims = pl.claimsFor("", "", corev1helpers.PodPriority(pod))
	pl.mu.Unlock()
	pgm := pl.handle.PodGroupManager()
	if (!st.rules.sameZone && !st.rules.sameCapType) || pgm == nil {
		cs.Write(stateKey, st)
		return nil, nil
	}
	groupState, err := pgm.PodGroupStates().Get(spec.Namespace, spec.Name)
	if err != nil {
		// The in-tree plugin reports a missing PodGroup; nothing to add.
		cs.Write(stateKey, st)
		return nil, nil
	}
	fixed := pl.domainOfRunning(st.rules, groupState.ScheduledPods())
	st.domain = fixed
	if !cs.IsPodGroupSchedulingCycle() || fixed != nil {
		cs.Write(stateKey, st)
		return nodesIn(nodes, st.rules, fixed), nil
	}
	cycle := cs.GetPodGroupSchedulingCycle()
	if data, err := cycle.Read(nativeDomainKey); err == nil {
		d := data.(*nativeDomain).domain
		st.domain = &d
		cs.Write(stateKey, st)
		return nil, nil
	}
	// First pod of the group in this cycle: choose the domain for all of
	// them, where the whole group fits.
	minCount := int64(1)
	if pg, err := pgm.PodGroups().Get(spec.Namespace, spec.Name); err == nil && pg.Spec.SchedulingPolicy.Gang != nil {
		minCount = int64(pg.Spec.SchedulingPolicy.Gang.MinCount)
	}
	pending := []*corev1.Pod{pod}
	for _, p := range groupState.UnscheduledPods() {
		if p.UID != pod.UID {
			pending = append(pending, p)
		}
	}
	need := min(max(minCount-int64(groupState.ScheduledPodsCount()), 1), int64(len(pending)))
	p, short := placeGang(nodes, shapesOf(pending[:need], pl.nodeCheck, pl.nodeCost), st.rules, nil, st.claims, pl.risk)
	if p == nil {
		short.needed = minCount
		short.placeable += int64(groupState.ScheduledPodsCount())
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, short.message(spec.Ref, st.rules, false))
	}
	cycle.Write(nativeDomainKey, &nativeDomain{domain: p.domain})
	st.domain = &p.domain
	cs.Write(stateKey, st)
	return nodesIn(nodes, st.rules, &p.domain), nil
}
