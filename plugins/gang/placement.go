package gang

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/capacity"
)

// ReclaimRisk is the seam for gang-level reclaim risk (pricing.GangRisk,
// handed in through plugins.Deps). Where several domains fit a gang and
// NodeCost does not tell them apart (no price, or none handed in), the one
// least at risk is chosen; without either, the first domain where the whole
// gang fits. Lower is better.
type ReclaimRisk interface {
	// GangRisk is the risk that a gang placed on these nodes loses at least
	// one member to a capacity reclaim, as a probability in [0, 1].
	GangRisk(nodes []*corev1.Node) float64
}

// domain is the set of nodes a gang must stay within: one zone and/or one
// capacity type. A zero field means the rule is off.
type domain struct {
	zone    string
	capType capacity.Type
}

// rules are a gang's placement rules after applying its overrides.
type rules struct {
	sameZone, sameCapType bool
	zoneLabel             string
}

func (r rules) domainOf(node *corev1.Node) domain {
	var d domain
	if r.sameZone {
		d.zone = node.Labels[r.zoneLabel]
	}
	if r.sameCapType {
		d.capType = capacity.NodeType(node.Labels)
	}
	return d
}

// scope says in words where a gang must fit, for messages.
func (r rules) scope() string {
	switch {
	case r.sameZone && r.sameCapType:
		return "in one zone on one capacity type"
	case r.sameZone:
		return "in one zone"
	case r.sameCapType:
		return "on one capacity type"
	}
	return "in the cluster"
}

func (r rules) describe(d domain) string {
	var parts []string
	if r.sameZone {
		z := d.zone
		if z == "" {
			z = "(no zone label)"
		}
		parts = append(parts, "zone "+z)
	}
	if r.sameCapType {
		parts = append(parts, "capacity type "+string(d.capType))
	}
	return strings.Join(parts, ", ")
}

// shape groups members that ask for the same resources under the same node
// constraints: a plan reserves room per shape, and any member of a shape may
// take any slot of that shape.
type shape struct {
	key         string
	demand      demand
	count       int64
	affinity    nodeaffinity.RequiredNodeAffinity
	tolerations []corev1.Toleration
	vec         vec
	// checks are the profile's node checks for the shape's members, one per
	// set of members the check says are alike (NodeRule); each gives the
	// reason it rules a node out.
	checks  []func(node *corev1.Node) string
	checked map[string]bool
	// costs price the shape's members' work on a node (NodeCost), one per
	// set of members the cost calls alike, with how many members it prices.
	costs []memberCost
	seen  map[string]int
}

// memberCost prices the work of members members of a shape on a node.
type memberCost struct {
	of      func(node *corev1.Node) (cost float64, avoided, ok bool)
	members int64
}

// add adds a member's node check unless a member the check calls alike
// gave it already, and its cost unless a member the cost calls alike gave
// it already, in which case it counts the member in that one's cost. Both
// are asked of every member: only they know what they read of a pod. Keyed
// by annotations and priority, a gang of members created minutes apart
// that prefer Spot was asked only of its oldest, whose wait was over, and
// admitted to on-demand nodes whose filters turned the members still
// waiting away; and members differing only in their runtime were priced
// as the first.
func (s *shape) add(pod *corev1.Pod, check NodeRule, cost NodeCost) {
	if check != nil {
		if c, alike := check(pod); c != nil && !s.checked[alike] {
			if s.checked == nil {
				s.checked = map[string]bool{}
			}
			s.checked[alike] = true
			s.checks = append(s.checks, c)
		}
	}
	if cost == nil {
		return
	}
	c, alike := cost(pod)
	if c == nil {
		return
	}
	if i, ok := s.seen[alike]; ok {
		s.costs[i].members++
		return
	}
	if s.seen == nil {
		s.seen = map[string]int{}
	}
	s.seen[alike] = len(s.costs)
	s.costs = append(s.costs, memberCost{of: c, members: 1})
}

// shapeKey is a member's shape: its requests plus what restricts its nodes.
func shapeKey(pod *corev1.Pod, d demand) string {
	var na *corev1.NodeAffinity
	if pod.Spec.Affinity != nil {
		na = pod.Spec.Affinity.NodeAffinity
	}
	constraints, _ := json.Marshal(struct {
		S map[string]string
		A *corev1.NodeAffinity
		T []corev1.Toleration
	}{pod.Spec.NodeSelector, na, pod.Spec.Tolerations})
	return d.key() + "|" + string(constraints)
}

func shapesOf(members []*corev1.Pod, check NodeRule, cost NodeCost) []*shape {
	byKey := map[string]*shape{}
	var out []*shape
	for _, p := range members {
		d := podDemand(p)
		k := shapeKey(p, d)
		if s, ok := byKey[k]; ok {
			s.count++
			s.add(p, check, cost)
			continue
		}
		s := &shape{key: k, demand: d, count: 1, affinity: nodeaffinity.GetRequiredNodeAffinity(p), tolerations: p.Spec.Tolerations}
		s.add(p, check, cost)
		byKey[k] = s
		out = append(out, s)
	}
	// Larger members first, so that they get whole nodes before smaller ones
	// fragment them.
	sort.SliceStable(out, func(i, j int) bool { return bigger(out[i].demand, out[j].demand) })
	return out
}

func bigger(a, b demand) bool {
	ag, bg := scalarSum(a), scalarSum(b)
	if ag != bg {
		return ag > bg
	}
	if a.milliCPU != b.milliCPU {
		return a.milliCPU > b.milliCPU
	}
	return a.memory > b.memory
}

func scalarSum(d demand) int64 {
	var s int64
	for _, v := range d.scalar {
		s += v
	}
	return s
}

func isUnschedulableOrNoExecute(t *corev1.Taint) bool {
	return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
}

var unschedulableTaint = corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}

// admits reports whether a node accepts members of shape s, by the rules the
// in-tree NodeUnschedulable, TaintToleration and NodeAffinity filters apply
// and the profile's node check.
func (s *shape) admits(node *corev1.Node) bool {
	return s.ruledOut(node) == "" && s.fits(node)
}

// ruledOut is the reason the profile's node check gives for keeping members
// of shape s off a node, or "".
func (s *shape) ruledOut(node *corev1.Node) string {
	for _, check := range s.checks {
		if why := check(node); why != "" {
			return why
		}
	}
	return ""
}

// fits applies the in-tree filters' rules of admits.
func (s *shape) fits(node *corev1.Node) bool {
	logger := klog.Background()
	if node.Spec.Unschedulable && !corev1helpers.TolerationsTolerateTaint(logger, s.tolerations, &unschedulableTaint, true) {
		return false
	}
	if len(node.Spec.Taints) > 0 {
		if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logger, node.Spec.Taints, s.tolerations, isUnschedulableOrNoExecute, true); untolerated {
			return false
		}
	}
	ok, err := s.affinity.Match(node)
	return ok && err == nil
}

// slot is room reserved on one node for n members of one shape.
type slot struct {
	node  string
	shape string
	d     demand
	n     int64
}

// plan is where a whole gang fits.
type plan struct {
	domain domain
	slots  []slot
}

// shortfall explains why a gang fits nowhere: the best domain could place
// `placeable` of `needed` members; the rest ask for `missing`. lacking are
// the resources that a node a member may use ran out of before every member
// of its shape had a place: only a pod that gives one of them back can let
// the gang fit. ruledOut are the nodes, of the `nodes` the gang may use,
// that the profile's node check keeps the members still without a place
// off, by reason (see excluded).
type shortfall struct {
	placeable, needed int64
	domain            domain
	missing           demand
	lacking           []corev1.ResourceName
	ruledOut          []exclusion
	nodes             int
}

// exclusion is how many nodes the node check ruled out for one reason.
type exclusion struct {
	reason string
	nodes  int
}

// placeGang looks for one domain where every shape fits at once, given what
// nodes already hold (assumed pods included) and what other gangs claimed.
// Nodes are visited in snapshot order, which the scheduler interleaves across
// zones, and without a cost or a risk helper the first domain that completes
// wins, so the common case touches a handful of nodes per domain. With them,
// the complete domain that ranks first by domainRank wins.
func placeGang(nodes []fwk.NodeInfo, shapes []*shape, r rules, fixed *domain, claims map[string]*demand, risk ReclaimRisk) (*plan, shortfall) {
	ds := make([]demand, len(shapes))
	var needed int64
	for i, s := range shapes {
		ds[i] = s.demand
		needed += s.count
	}
	dm := dimsOf(ds)
	for _, s := range shapes {
		s.vec = dm.vecOf(s.demand)
	}

	type progress struct {
		rem    []int64
		placed int64
		slots  []slot
		done   bool
	}
	byDomain := map[domain]*progress{}
	var order []domain
	var complete []domain
	var free vec
	lack := make([]bool, fixedDims+len(dm.scalars))
	for _, ni := range nodes {
		node := ni.Node()
		if node == nil {
			continue
		}
		dom := r.domainOf(node)
		if fixed != nil && dom != *fixed {
			continue
		}
		p := byDomain[dom]
		if p == nil {
			p = &progress{rem: make([]int64, len(shapes))}
			for i, s := range shapes {
				p.rem[i] = s.count
			}
			byDomain[dom] = p
			order = append(order, dom)
		}
		if p.done {
			continue
		}
		free = dm.freeOf(ni, claims[node.Name], free)
		left := int64(0)
		for i, s := range shapes {
			if p.rem[i] == 0 {
				continue
			}
			if s.admits(node) {
				if k := min(p.rem[i], free.times(s.vec)); k > 0 {
					free.take(s.vec, k)
					p.rem[i] -= k
					p.placed += k
					p.slots = append(p.slots, slot{node: node.Name, shape: s.key, d: s.demand, n: k})
				}
				if p.rem[i] > 0 {
					free.short(s.vec, lack)
				}
			}
			left += p.rem[i]
		}
		if left == 0 {
			p.done = true
			complete = append(complete, dom)
			if risk == nil && !priced(shapes) {
				return &plan{domain: dom, slots: p.slots}, shortfall{}
			}
		}
	}
	if len(complete) > 0 {
		best := complete[0]
		bestRank := rankDomain(nodes, shapes, byDomain[best].slots, risk)
		for _, dom := range complete[1:] {
			if rk := rankDomain(nodes, shapes, byDomain[dom].slots, risk); rk.less(bestRank) {
				best, bestRank = dom, rk
			}
		}
		return &plan{domain: best, slots: byDomain[best].slots}, shortfall{}
	}

	short := shortfall{needed: needed, placeable: -1, lacking: dm.names(lack)}
	var unplaced []*shape
	for _, dom := range order {
		if p := byDomain[dom]; p.placed > short.placeable {
			short.placeable, short.domain = p.placed, dom
			short.missing = demand{}
			unplaced = unplaced[:0]
			for i, s := range shapes {
				short.missing.add(s.demand, p.rem[i])
				if p.rem[i] > 0 {
					unplaced = append(unplaced, s)
				}
			}
		}
	}
	if short.placeable < 0 {
		// No node in any allowed domain: nothing is placeable.
		short.placeable = 0
		if fixed != nil {
			short.domain = *fixed
		}
		for _, s := range shapes {
			short.missing.add(s.demand, s.count)
		}
		return nil, short
	}
	short.ruledOut, short.nodes = excluded(nodes, unplaced, r, fixed)
	return nil, short
}

// excluded counts, of the nodes in the domains the gang may use (total),
// those the node check keeps members of the unplaced shapes off, each node
// once per reason it gives, reasons in the order first met: as exact as
// kube-scheduler's "0/5 nodes are available: 3 node(s) ...". It is taken
// over every such domain, not the best one alone: the members still without
// a place could go to any of them, and a user asks where in the cluster
// their own rules keep them off, which one count per reason answers where
// one list per domain (six for three zones and two capacity types) would
// bury it. It is taken once placement has failed, not while placing, which
// checks a node only for the shapes its domain still had members of when it
// came to the node: counted there, a node that ruled out only members that
// found a place further on was blamed for the members that did not, and
// the count hung on the order the nodes were visited in. Asking the check
// again costs a second pass, on the path where the gang does not fit.
func excluded(nodes []fwk.NodeInfo, unplaced []*shape, r rules, fixed *domain) (ex []exclusion, total int) {
	var reasons []string
	for _, ni := range nodes {
		node := ni.Node()
		if node == nil || fixed != nil && r.domainOf(node) != *fixed {
			continue
		}
		total++
		reasons = reasons[:0]
		// Every member's reason, not only the first a shape meets: of
		// members that wait for Spot until different times, the first
		// named a time the gang falls back before.
		for _, s := range unplaced {
			for _, check := range s.checks {
				if why := check(node); why != "" && !slices.Contains(reasons, why) {
					reasons = append(reasons, why)
					ex = countExclusion(ex, why)
				}
			}
		}
	}
	return ex, total
}

// priced is true when a shape's members' work is priced (NodeCost).
func priced(shapes []*shape) bool {
	for _, s := range shapes {
		if len(s.costs) > 0 {
			return true
		}
	}
	return false
}

// domainRank is how a complete domain ranks for a gang, in Score's order
// for its members: fewest members on nodes they avoid, then fewest on
// unpriced nodes, then the least their work costs there (each member's
// cost on its node, which counts the risk that any of the gang's nodes is
// reclaimed), then the lowest reclaim risk.
type domainRank struct {
	avoided, unpriced float64
	cost, risk        float64
}

func (a domainRank) less(b domainRank) bool {
	if a.avoided != b.avoided {
		return a.avoided < b.avoided
	}
	if a.unpriced != b.unpriced {
		return a.unpriced < b.unpriced
	}
	if a.cost != b.cost {
		return a.cost < b.cost
	}
	return a.risk < b.risk
}

// rankDomain ranks the slots of a complete domain. A slot of a shape whose
// members price apart counts each price by its share of the shape's members.
func rankDomain(nodes []fwk.NodeInfo, shapes []*shape, slots []slot, risk ReclaimRisk) domainRank {
	var rk domainRank
	byKey := make(map[string]*shape, len(shapes))
	for _, s := range shapes {
		byKey[s.key] = s
	}
	byName := map[string]*corev1.Node{}
	for _, n := range slotNodes(nodes, slots) {
		byName[n.Name] = n
	}
	for _, sl := range slots {
		s := byKey[sl.shape]
		for _, c := range s.costs {
			n := float64(sl.n) * float64(c.members) / float64(s.count)
			cost, avoided, ok := c.of(byName[sl.node])
			if math.IsNaN(cost) {
				// As Score takes it: the dearest, whatever order the
				// domains are met in (NaN compares as neither).
				cost = math.Inf(1)
			}
			if avoided {
				rk.avoided += n
			}
			if !ok {
				rk.unpriced += n
				continue
			}
			rk.cost += n * cost
		}
	}
	if risk != nil {
		rk.risk = risk.GangRisk(slotNodes(nodes, slots))
	}
	return rk
}

// countExclusion counts one more node ruled out for reason why, reasons in
// the order first met.
func countExclusion(ex []exclusion, why string) []exclusion {
	for i := range ex {
		if ex[i].reason == why {
			ex[i].nodes++
			return ex
		}
	}
	return append(ex, exclusion{reason: why, nodes: 1})
}

func slotNodes(nodes []fwk.NodeInfo, slots []slot) []*corev1.Node {
	want := map[string]bool{}
	for _, s := range slots {
		want[s.node] = true
	}
	var out []*corev1.Node
	for _, ni := range nodes {
		if n := ni.Node(); n != nil && want[n.Name] {
			out = append(out, n)
		}
	}
	return out
}

// message is the shortfall in words a user can act on, e.g.
// "gang team/llm: 5/8 members placeable, the other 3 need 24 nvidia.com/gpu in one zone on one capacity type",
// followed by the nodes the members' own rules ruled out, of those the gang
// may use, in the node check's words: "; of 6 node(s), ruled out for them:
// 3 node(s) are on-demand and the pod waits for Spot capacity until ...".
func (s shortfall) message(ref fmt.Stringer, r rules, fixed bool) string {
	where := r.scope()
	if fixed {
		where = "in " + r.describe(s.domain) + ", where its running members are"
	}
	msg := fmt.Sprintf("gang %s: %d/%d members placeable, the other %d need %s %s",
		ref, s.placeable, s.needed, s.needed-s.placeable, s.missing.headline(), where)
	if len(s.ruledOut) == 0 {
		return msg
	}
	parts := make([]string, len(s.ruledOut))
	for i, e := range s.ruledOut {
		parts[i] = fmt.Sprintf("%d %s", e.nodes, e.reason)
	}
	return msg + fmt.Sprintf("; of %d node(s), ruled out for them: ", s.nodes) + strings.Join(parts, ", ")
}

// headline names the resource that matters most in a demand: the first
// extended resource (GPUs, MIG slices), else CPU, else memory.
func (d demand) headline() string {
	if len(d.scalar) > 0 {
		names := make([]string, 0, len(d.scalar))
		for n := range d.scalar {
			names = append(names, string(n))
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, describe(corev1.ResourceName(n), d.scalar[corev1.ResourceName(n)]))
		}
		return strings.Join(parts, " and ")
	}
	if d.milliCPU > 0 {
		return describe(corev1.ResourceCPU, d.milliCPU)
	}
	if d.memory > 0 {
		return describe(corev1.ResourceMemory, d.memory)
	}
	return "pod slots"
}
