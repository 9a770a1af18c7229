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
	fwk "k8s.io/kube-scheduler/framework"

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
	r.roomChanges++
	return r.placeAgain(order, nodes)
}

// returnCandidates are the workloads running on capacity SpotRisk lets
// them move from, each member given room on Spot (PlaceOnSpot), or none.
func (r *elastic) returnCandidates() ([]spotrisk.ReturnCandidate, error) {
	var room [][]spotrisk.SpotRoom
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
		pods := make([]*v1.Pod, len(members))
		for k, j := range members {
			pods[k] = r.pods[j].pod
		}
		spot := r.spotRisk.PlaceOnSpot(pods, room)
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

// spotRoom is what each Spot pool's ready nodes have free now, but for
// those under a reclaim notice, pool by pool. Room the autoscaler could add
// does not count: penny-scheduler's mover sees only the nodes there are
// (the autoscaler grows a pool for pods that wait, not for pods that run).
// GPUs count as free only when no pod holds any part of them, as the mover
// counts them (spotrisk.GPUsHeld): a GPU shared (penny.dev/gpu-milli, not
// in nvidia.com/gpu) is no whole-GPU pod's.
func (r *elastic) spotRoom() ([][]spotrisk.SpotRoom, error) {
	ready, err := r.readyRoom()
	if err != nil {
		return nil, err
	}
	nis, err := r.e.NodeInfos()
	if err != nil {
		return nil, err
	}
	infos := make(map[string]fwk.NodeInfo, len(nis))
	for _, ni := range nis {
		infos[ni.Node().Name] = ni
	}
	byPool := make([][]spotrisk.SpotRoom, len(r.pools))
	var pods []*v1.Pod
	for _, f := range ready {
		if f.node.pool.spec.capacity != pricing.Spot || f.node.noticed {
			continue
		}
		ni := infos[f.node.name]
		if ni == nil {
			continue
		}
		pods = pods[:0]
		for _, pi := range ni.GetPods() {
			pods = append(pods, pi.GetPod())
		}
		k := f.node.pool.index
		byPool[k] = append(byPool[k], spotrisk.SpotRoom{Node: f.node.node, CPUMilli: f.cpu, MemoryBytes: f.mem,
			GPUs: ni.GetAllocatable().GetScalarResources()[gpu.ResourceGPU] - spotrisk.GPUsHeld(pods)})
	}
	return byPool, nil
}
