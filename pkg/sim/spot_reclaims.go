package sim

// Reclaims of Spot nodes in an elastic replay: what their pods lose, and
// the exposure and reclaims the risk model is told.

import (
	"sort"
	"time"

	"github.com/pennysched/penny/pkg/pricing"
)

// useful counts GPU-hours that advanced a pod's work.
func (r *elastic) useful(p *elPod, gpuHours float64) {
	r.res.UsefulGPUHours += gpuHours
	r.namespace(p).UsefulGPUHours += gpuHours
}

// lose counts GPU-hours of a pod's work thrown away on node n.
func (r *elastic) lose(p *elPod, n *elNode, gpuHours float64) {
	r.res.LostGPUHours += gpuHours
	r.namespace(p).LostGPUHours += gpuHours
	if gpuHours <= 0 {
		return
	}
	pool := "-"
	if n != nil {
		pool = n.pool.spec.Name
	}
	addTo(r.res.LostGPUHoursByClass, string(p.class.Policy), pool, gpuHours)
}

// keptOnReclaim is how much of this run's progress each victim of a reclaim
// keeps, by the rules of Penny's reclaim pipeline (ReclaimRule): services
// keep all of it, checkpointing pods what their last checkpoint holds, and
// a gang goes back to the least any of its members kept.
func (r *elastic) keptOnReclaim(victims []int, notice time.Duration) map[int]time.Duration {
	kept := make(map[int]time.Duration, len(victims))
	least := map[string]time.Duration{}
	for _, i := range victims {
		p := r.pods[i]
		progress := max(0, r.progressOf(p)-p.overhead)
		if p.class.Work.Stateless {
			kept[i] = progress
			continue
		}
		k, how := r.rule.Kept(p.pod, progress, notice)
		if how == KeptNoticeCheckpoint {
			r.res.NoticeCheckpoints++
		}
		kept[i] = k
		if g := p.gang; g != "" {
			if cur, ok := least[g]; !ok || k < cur {
				least[g] = k
			}
		}
	}
	for _, i := range victims {
		if g := r.pods[i].gang; g != "" && !r.pods[i].class.Work.Stateless {
			kept[i] = least[g]
		}
	}
	return kept
}

// reclaim takes a Spot node away. Its pods, and the other members of their
// gangs, lose the work since their last checkpoint and wait again.
func (r *elastic) reclaim(name string) error {
	n := r.nodes[name]
	if n == nil || n.removed {
		return nil
	}
	r.feedNode(n)
	r.risk.ObserveReclaim(poolKey(n.pool.spec), name, r.epoch.Add(r.now))
	r.riskGen++
	evicted, err := r.e.RemoveNode(name)
	if err != nil {
		return err
	}
	// In pod order, so that a replay repeats exactly.
	victims := map[int]bool{}
	var order []int
	for _, bp := range evicted {
		victims[r.byUID[string(bp.UID)]] = true
		order = append(order, r.byUID[string(bp.UID)])
	}
	sort.Ints(order)
	var peerNodes []string
	for _, i := range order { // the evicted pods; their gang peers join order below
		if g := r.pods[i].mates; g != nil {
			for _, j := range g.members {
				if q := r.pods[j]; q.state == podRunning && !victims[j] {
					if err := r.e.Remove(q.pod); err != nil {
						return err
					}
					victims[j] = true
					order = append(order, j)
					r.freed = append(r.freed, q.node)
					peerNodes = append(peerNodes, q.node)
				}
			}
		}
	}
	r.res.Reclaims++
	// The victims wait again from now: a quiet spell before the reclaim
	// says nothing about whether they can run. (A reclaimed idle node, a
	// pool's min one, changes nothing for the pods.)
	if len(order) > 0 {
		r.progress = r.now
	}
	r.retire(n)
	// Members held at Permit on the node were rejected with it (RemoveNode):
	// they, and the gang mates their release rejects in turn, wait again.
	if err := r.settleAll(); err != nil {
		return err
	}
	// An Auto Scaling group keeps its minimum: a reclaim that takes the
	// pool under it launches a replacement at once.
	if n.pool.live < n.pool.spec.Min {
		if err := r.launch(n.pool, false); err != nil {
			return err
		}
	}
	sort.Ints(order)
	kept := r.keptOnReclaim(order, r.rule.notice(n.node))
	for _, i := range order {
		p := r.pods[i]
		if p.reclaimed == 0 {
			r.res.PodsReclaimed++
		}
		// As the reclaim coordinator does on a notice. (Template verdicts
		// it changes are those of avoiding pods, which follow the risk
		// model: riskGen. The autoscaler asks SpotRisk about a gang member
		// as a member, poolFits, so its gang's workload is the one to learn.)
		r.interrupted.Observe(p.pod, r.now-p.runStart, r.clock.Now())
		r.stop(i, true, kept[i])
		if p.class.Work.Stateless {
			r.res.InterruptedServices++
			p.downSince = r.now
		}
		p.waitStart = r.now
		r.setDeadline(i)
		r.enqueue(i)
	}
	// The gang peers' nodes may now be empty: they scale down like any
	// other empty node.
	for _, name := range peerNodes {
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

// feedExposure tells the risk model how long each Spot node has run.
func (r *elastic) feedExposure() {
	for _, n := range r.upInOrder() {
		r.feedNode(n)
	}
}

// upInOrder is the nodes launched and not removed, in name order: what is
// summed over them is floating-point, and a replay must repeat exactly.
func (r *elastic) upInOrder() []*elNode {
	names := make([]string, 0, len(r.up))
	for name := range r.up {
		names = append(names, name)
	}
	sort.Strings(names)
	nodes := make([]*elNode, len(names))
	for k, name := range names {
		nodes[k] = r.up[name]
	}
	return nodes
}

func (r *elastic) feedNode(n *elNode) {
	if !n.ready || n.pool.spec.capacity != pricing.Spot || r.now <= n.fedUntil {
		return
	}
	r.risk.ObserveExposure(poolKey(n.pool.spec), (r.now - n.fedUntil).Hours(), r.epoch.Add(r.now))
	n.fedUntil = r.now
}
