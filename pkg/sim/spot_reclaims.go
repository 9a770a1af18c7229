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

// evictee is a victim of a reclaim notice: the pod, its run (elPod.gen)
// when the notice came, the work it keeps when it stops, and whether it
// wrote a notice checkpoint.
type evictee struct {
	pod, gen     int
	kept         time.Duration
	checkpointed bool
}

// workAt is how much of this run's work, restart excluded, the pod will
// have done at time at if it keeps running.
func (r *elastic) workAt(p *elPod, at time.Duration) time.Duration {
	return max(0, progressAt(p, at)-p.overhead)
}

// keptOnReclaim is how much of this run's progress each victim of a reclaim
// keeps when it stops at stopAt, by the rules of Penny's reclaim pipeline
// (ReclaimRule): services keep all of it, checkpointing pods what their
// last checkpoint holds, and a gang goes back to the least any of its
// members kept; and which wrote a notice checkpoint.
func (r *elastic) keptOnReclaim(victims []int, notice time.Duration, stopAt map[int]time.Duration) (map[int]time.Duration, map[int]bool) {
	kept := make(map[int]time.Duration, len(victims))
	checkpointed := map[int]bool{}
	least := map[string]time.Duration{}
	for _, i := range victims {
		p := r.pods[i]
		atStop := r.workAt(p, stopAt[i])
		if p.class.Work.Stateless {
			kept[i] = atStop
			continue
		}
		k, how := r.rule.Kept(p.pod, r.workAt(p, r.now), atStop, notice)
		checkpointed[i] = how == KeptNoticeCheckpoint
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
	return kept, checkpointed
}

// notice is a Spot node's reclaim notice, as Penny's agent and reclaim
// coordinator act on it (docs/reclaim.md): the node takes no more pods
// (the agent's taint; here it leaves the scheduler's cluster, where its
// pods' room is of no use to anyone), the risk model and the interrupted
// runs learn of the reclaim, and the node's pods, with the other members
// of their gangs, are evicted once they have answered the checkpoint
// request (ReclaimRule.Answered): each keeps what it holds then and waits
// again from then. The node is billed until the cloud takes it (reclaim).
func (r *elastic) notice(name string) error {
	n := r.nodes[name]
	if n == nil || n.removed || n.noticed {
		return nil
	}
	n.noticed = true
	r.noticedUp++
	// Counted when it is certain and acted on, as the coordinator records
	// it: a replay may end within a notice.
	r.res.Reclaims++
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
	for _, i := range order { // the node's pods; their gang peers join order below
		if g := r.pods[i].mates; g != nil {
			for _, j := range g.members {
				if q := r.pods[j]; q.state == podRunning && !victims[j] {
					victims[j] = true
					order = append(order, j)
				}
			}
		}
	}
	// Members held at Permit on the node were rejected with it (RemoveNode):
	// they, and the gang mates their release rejects in turn, wait again.
	if err := r.settleAll(); err != nil {
		return err
	}
	// The node's room is gone for the pods waiting, as if it had left its
	// pool: the autoscaler's next scan looks at them again (a node the
	// cloud reclaims within its notice of joining never takes the pod it
	// was launched for).
	r.roomChanges++
	r.armScan()
	if len(order) == 0 {
		return nil
	}
	r.progress = r.now
	sort.Ints(order)
	// What is left of the notice: all of it, unless the node joined within
	// its notice of the reclaim.
	notice := n.reclaimAt - r.now
	// The agent evicts a node's pods together, once every one has answered;
	// the coordinator a gang's members on each other node once they have.
	answered := map[string]time.Duration{}
	for _, i := range order {
		p := r.pods[i]
		answered[p.node] = max(answered[p.node], r.rule.Answered(p.pod, notice))
	}
	stopAt := make(map[int]time.Duration, len(order))
	for _, i := range order {
		stopAt[i] = r.now + answered[r.pods[i].node]
	}
	kept, checkpointed := r.keptOnReclaim(order, notice, stopAt)
	// One eviction per instant: a gang's members evicted together all wait
	// again before any is placed again, as when they left at once.
	batches := map[time.Duration]int{}
	for _, i := range order {
		p := r.pods[i]
		// As the reclaim coordinator does on a notice. (Template verdicts
		// it changes are those of avoiding pods, which follow the risk
		// model: riskGen. The autoscaler asks SpotRisk about a gang member
		// as a member, poolFits, so its gang's workload is the one to learn.)
		r.interrupted.Observe(p.pod, r.now-p.runStart, r.clock.Now())
		id, ok := batches[stopAt[i]]
		if !ok {
			if r.evictions == nil {
				r.evictions = map[int][]evictee{}
			}
			id = r.evictSeq
			r.evictSeq++
			batches[stopAt[i]] = id
			r.push(elEvent{at: stopAt[i], kind: elEvict, gen: id})
		}
		r.evictions[id] = append(r.evictions[id], evictee{pod: i, gen: p.gen, kept: kept[i], checkpointed: checkpointed[i]})
	}
	return nil
}

// evictBatch stops the victims of a reclaim notice that are evicted now and
// still run (one may have finished meanwhile, or been evicted by another
// node's notice): each keeps what it kept at the notice, and waits again.
func (r *elastic) evictBatch(ev elEvent) error {
	batch := r.evictions[ev.gen]
	delete(r.evictions, ev.gen)
	var order []int
	var peerNodes []string
	for _, v := range batch {
		p := r.pods[v.pod]
		if p.state != podRunning || p.gen != v.gen {
			continue
		}
		// The reclaimed node's pods left the scheduler's cluster with it at
		// the notice; a gang's members on other nodes leave now.
		if n := r.nodes[p.node]; n != nil && !n.noticed {
			if err := r.e.Remove(p.pod); err != nil {
				return err
			}
			r.freed = append(r.freed, p.node)
			peerNodes = append(peerNodes, p.node)
		}
		if p.reclaimed == 0 {
			r.res.PodsReclaimed++
		}
		if v.checkpointed {
			r.res.NoticeCheckpoints++
		}
		r.stop(v.pod, runReclaimed, v.kept)
		if p.class.Work.Stateless {
			r.res.InterruptedServices++
			p.downSince = r.now
		}
		p.waitStart = r.now
		r.setDeadline(v.pod)
		r.enqueue(v.pod)
		order = append(order, v.pod)
	}
	if len(order) == 0 {
		return nil
	}
	// The victims wait again from now: a quiet spell before the eviction
	// says nothing about whether they can run. The gang peers' nodes may now
	// be empty.
	return r.placeAgain(order, peerNodes)
}

// placeAgain follows pods stopped and queued again (order) off nodes that
// stay up (left): it settles the gangs they were held in, lets those nodes
// scale down like any other once empty, and tries the pods in order.
func (r *elastic) placeAgain(order []int, left []string) error {
	r.progress = r.now
	if err := r.settleAll(); err != nil {
		return err
	}
	for _, name := range left {
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

// reclaim is the cloud taking a Spot node back, its notice after warning of
// it (notice, which evicted its pods): billed until now, the node leaves
// the fleet.
func (r *elastic) reclaim(name string) error {
	n := r.nodes[name]
	if n == nil || n.removed {
		return nil
	}
	if !n.noticed {
		// Every drawn reclaim has its notice first (elNotice sorts before
		// elReclaim); this keeps a reclaim without one whole.
		if err := r.notice(name); err != nil {
			return err
		}
	}
	r.retire(n)
	// An Auto Scaling group keeps its minimum: a reclaim that takes the
	// pool under it launches a replacement at once.
	if n.pool.live < n.pool.spec.Min {
		if err := r.launch(n.pool, false); err != nil {
			return err
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
