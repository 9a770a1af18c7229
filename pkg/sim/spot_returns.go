package sim

// Moves back to Spot in an elastic replay: SpotRisk's returnToSpot planner
// (spotrisk.PlanReturn) picks a workload that fell back to on-demand, and
// the replay does what penny-scheduler's mover does with it (docs/spot.md,
// "Moving work back to Spot"): the pods write a checkpoint on request, stop
// keeping all their work, and wait to be placed again, on Spot.

import (
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// returnArgs are the policy's returnToSpot args; ok is false when its
// profile does not filter with SpotRisk or moves are off.
func (r *elastic) returnArgs() (spotrisk.ReturnToSpot, bool) {
	if r.spotRisk == nil || !r.riskFilter {
		return spotrisk.ReturnToSpot{}, false
	}
	rs := r.spotRisk.ReturnArgs()
	return rs, rs.Enabled != nil && *rs.Enabled
}

// armReturns queues the first round of moves.
func (r *elastic) armReturns() {
	if rs, ok := r.returnArgs(); ok {
		r.push(elEvent{at: r.now + rs.Every.Duration, kind: elReturn})
	}
}

// returnToSpot is one round of the mover: at most one workload moves.
func (r *elastic) returnToSpot() error {
	rs, ok := r.returnArgs()
	if !ok {
		return nil
	}
	if r.q.Len() > 0 || !r.over() {
		r.push(elEvent{at: r.now + rs.Every.Duration, kind: elReturn})
	}
	// Pods waiting come first: Spot room that appears is theirs, and a
	// move would only make one more pod wait.
	if len(r.pending) > 0 {
		return nil
	}
	cands, err := r.returnCandidates()
	if err != nil || len(cands) == 0 {
		return err
	}
	movedAt := func(w string) (time.Time, bool) {
		at, ok := r.movedAt[w]
		return r.epoch.Add(at), ok
	}
	move, ok := r.spotRisk.PlanReturn(r.epoch.Add(r.now), cands, movedAt)
	if !ok {
		return nil
	}
	if r.movedAt == nil {
		r.movedAt = map[string]time.Duration{}
	}
	r.movedAt[move.Workload] = r.now
	r.res.Returns++
	var order []int
	var nodes []string
	for _, pod := range move.Pods {
		i := r.byUID[string(pod.UID)]
		p := r.pods[i]
		if err := r.e.Remove(p.pod); err != nil {
			return err
		}
		nodes = append(nodes, p.node)
		r.freed = append(r.freed, p.node)
		// The checkpoint it was asked for holds all its work so far.
		r.stop(i, runMoved, r.workAt(p, r.now))
		p.movedBack = true
		p.waitStart = r.now
		r.setDeadline(i)
		r.enqueue(i)
		order = append(order, i)
		r.res.ReturnedPods++
	}
	sort.Ints(order)
	r.progress = r.now
	r.roomChanges++
	if err := r.settleAll(); err != nil {
		return err
	}
	for _, name := range nodes {
		r.maybeIdle(r.nodes[name])
	}
	for _, i := range order {
		if r.pods[i].state == podWaiting {
			if err := r.try(i); err != nil {
				return err
			}
		}
	}
	return nil
}

// returnCandidates are the workloads running on capacity SpotRisk lets
// them move from, each member given room in the one Spot pool (PennyGang
// places a gang in one pool) where the whole workload fits and costs
// least, or none.
func (r *elastic) returnCandidates() ([]spotrisk.ReturnCandidate, error) {
	var room map[*elPool][]freeRoom
	seen := map[string]bool{}
	var out []spotrisk.ReturnCandidate
	for i, p := range r.pods {
		if p.state != podRunning || p.workFrom < 0 {
			continue
		}
		n := r.nodes[p.node]
		if n == nil || n.noticed {
			continue
		}
		if _, ok := r.spotRisk.Movable(p.pod, n.node); !ok {
			continue
		}
		key := p.gang
		members := []int{i}
		if key == "" {
			key = p.pod.Namespace + "/" + p.pod.Name
		} else {
			if seen[key] {
				continue
			}
			members = r.runningMembers(p.mates)
			if members == nil {
				continue
			}
		}
		seen[key] = true
		if room == nil {
			var err error
			if room, err = r.spotRoom(); err != nil {
				return nil, err
			}
		}
		c := spotrisk.ReturnCandidate{Workload: key}
		spot := r.roomFor(members, room)
		for k, j := range members {
			q := r.pods[j]
			m := spotrisk.ReturnMember{Pod: q.pod, Node: r.nodes[q.node].node, Usage: q.usage, Started: r.epoch.Add(q.runStart)}
			if spot != nil {
				m.Spot = spot[k]
			}
			c.Members = append(c.Members, m)
		}
		out = append(out, c)
	}
	return out, nil
}

// runningMembers are a gang's members when every one not withdrawn runs
// and works; nil otherwise.
func (r *elastic) runningMembers(g *elGang) []int {
	var out []int
	for _, j := range g.members {
		q := r.pods[j]
		switch {
		case q.state == podWithdrawn || q.state == podDone:
		case q.state != podRunning || q.workFrom < 0 || r.nodes[q.node] == nil || r.nodes[q.node].noticed:
			return nil
		default:
			out = append(out, j)
		}
	}
	return out
}

// spotRoom is what each Spot pool can give now: its ready nodes' free room
// (not those under a reclaim notice) and, for each node it may still add,
// an empty one.
func (r *elastic) spotRoom() (map[*elPool][]freeRoom, error) {
	ready, err := r.readyRoom()
	if err != nil {
		return nil, err
	}
	out := map[*elPool][]freeRoom{}
	for _, f := range ready {
		if f.node.pool.spec.capacity == pricing.Spot && !f.node.noticed {
			out[f.node.pool] = append(out[f.node.pool], f)
		}
	}
	for _, pool := range r.pools {
		if pool.spec.capacity != pricing.Spot {
			continue
		}
		for k := pool.live; k < pool.spec.Max; k++ {
			out[pool] = append(out[pool], freeRoom{cpu: pool.size.CPUMilli, mem: pool.size.MemoryBytes, gpus: pool.size.GPUMilli / gpu.MilliPerGPU})
		}
	}
	return out, nil
}

// roomFor gives each member a node, or its pool's template for room the
// pool would add, in the Spot pool that admits all of them, has room for
// all of them and costs them least; nil when none does.
func (r *elastic) roomFor(members []int, room map[*elPool][]freeRoom) []*v1.Node {
	var best []*v1.Node
	bestCost := 0.0
	for _, pool := range r.pools {
		free := room[pool]
		if len(free) == 0 {
			continue
		}
		left := append([]freeRoom(nil), free...)
		nodes := make([]*v1.Node, 0, len(members))
		cost := 0.0
		for _, j := range members {
			p := r.pods[j]
			admits := r.spotRisk.Admits(p.pod)
			if admits == nil || !admits(pool.template) || !pool.mayHold(p.usage) {
				nodes = nil
				break
			}
			c, ok := r.spotRisk.Cost(p.pod, p.class, p.usage, pool.template)
			if !ok {
				nodes = nil
				break
			}
			at := takeRoom(left, p.usage)
			if at < 0 {
				nodes = nil
				break
			}
			node := pool.template
			if left[at].node != nil {
				node = left[at].node.node
			}
			nodes = append(nodes, node)
			cost += c
		}
		if nodes != nil && (best == nil || cost < bestCost) {
			best, bestCost = nodes, cost
		}
	}
	return best
}

// takeRoom takes a pod's usage from the first room that holds it and says
// which; -1 when none does. Shares of a GPU count as a whole one.
func takeRoom(room []freeRoom, u pricing.Usage) int {
	gpus := (u.GPUMilli + gpu.MilliPerGPU - 1) / gpu.MilliPerGPU
	for k := range room {
		f := &room[k]
		if f.cpu >= u.CPUMilli && f.mem >= u.MemoryBytes && f.gpus >= gpus {
			f.cpu, f.mem, f.gpus = f.cpu-u.CPUMilli, f.mem-u.MemoryBytes, f.gpus-gpus
			return k
		}
	}
	return -1
}
