package sim

// What an elastic replay reports: the result type and the accounting that
// ends a replay (finish).

import (
	"fmt"
	"math"
	"slices"

	"github.com/pennysched/penny/plugins/spotrisk"
)

// NamespaceCost is one namespace's share of an elastic replay.
type NamespaceCost struct {
	AllocatedUSD   float64 `json:"allocated_usd"`
	UsefulGPUHours float64 `json:"useful_gpu_hours"`
	LostGPUHours   float64 `json:"lost_gpu_hours"`
}

// ElasticResult is what one policy's replay cost and what it lost. Money is
// USD; GPU-hours count a share of a GPU as that fraction of a GPU.
type ElasticResult struct {
	Policy string `json:"policy"`
	Seed   uint64 `json:"seed"`
	// BillUSD is the sum over nodes of node-hours x price, from launch to
	// removal (reserved nodes for the whole replay).
	BillUSD float64 `json:"bill_usd"`
	// AllocatedUSD is what the pods' requests cost (OpenCost split of each
	// node's price); IdleUSD is the rest of the bill.
	AllocatedUSD    float64            `json:"allocated_usd"`
	IdleUSD         float64            `json:"idle_usd"`
	BillByCapacity  map[string]float64 `json:"bill_by_capacity_usd"`
	NodeHoursByPool map[string]float64 `json:"node_hours_by_pool"`
	// BillByPool and AllocatedByPool split the bill and its allocated
	// part by pool: the difference is each pool's idle cost.
	BillByPool      map[string]float64 `json:"bill_by_pool_usd"`
	AllocatedByPool map[string]float64 `json:"allocated_by_pool_usd"`
	// GPUHoursByPool is what each pool's nodes offered (node-hours x the
	// node's GPUs); HeldGPUHoursByPool is what running pods held of it: a
	// whole GPU for a share where the policy cannot share one. Their ratio
	// says whether a pool's idle cost is idle GPUs or the CPU and memory
	// that come with GPU nodes, which the OpenCost split also prices.
	GPUHoursByPool     map[string]float64 `json:"gpu_hours_by_pool"`
	HeldGPUHoursByPool map[string]float64 `json:"held_gpu_hours_by_pool"`
	// HoursAtMaxByPool is how long each pool had its max nodes up or on
	// their way: while it did, the scenario's limit, not the policy, decided
	// what waited for that pool (Cluster Autoscaler's "max node group size
	// reached").
	HoursAtMaxByPool map[string]float64 `json:"hours_at_max_by_pool"`
	// ByNamespace is who spent what: the allocated cost, useful and lost
	// GPU-hours of each namespace's pods (a Philly trace's virtual cluster).
	// The bill's idle part is no namespace's, as OpenCost reports it.
	ByNamespace map[string]*NamespaceCost `json:"by_namespace"`
	// GPUHoursByClass is the GPU time pods ran, by their Spot policy
	// (Penny's reading of the pod, the same for every policy) and the
	// capacity type of the node: where each class of work went.
	GPUHoursByClass map[string]map[string]float64 `json:"gpu_hours_by_class"`
	// LostGPUHoursByClass is LostGPUHours by the pods' Spot policy and the
	// pool of the node the work was lost on: which rule to tune.
	LostGPUHoursByClass map[string]map[string]float64 `json:"lost_gpu_hours_by_class"`
	// UsefulGPUHours is GPU time that advanced work; LostGPUHours is GPU
	// time thrown away by reclaims: progress since the last checkpoint and
	// the restart that follows.
	UsefulGPUHours    float64 `json:"useful_gpu_hours"`
	LostGPUHours      float64 `json:"lost_gpu_hours"`
	AllocatedGPUHours float64 `json:"allocated_gpu_hours"`
	Reclaims          int     `json:"reclaims"`
	PodsReclaimed     int     `json:"pods_reclaimed"`
	// NoticeCheckpoints counts reclaimed pods whose work up to the notice
	// survived in a notice-triggered checkpoint (ReclaimRule).
	NoticeCheckpoints int `json:"notice_checkpoints"`
	// GangWaitGPUHours is GPU time gang members held while waiting for the
	// rest of their gang to run (elastic.rendezvous): neither useful nor
	// lost, but billed. Only a policy that places a gang's members one by
	// one has any.
	GangWaitGPUHours float64 `json:"gang_wait_gpu_hours"`
	// NeverOnSpot counts pods of a never-on-Spot class (Penny's reading of
	// the pod) that ran on a Spot node at any time.
	NeverOnSpot          int        `json:"never_on_spot"`
	NeverOnSpotGPUHours  float64    `json:"never_on_spot_gpu_hours"`
	QueueDelay           DelayStats `json:"queue_delay_seconds"`
	QueueDelayP50Seconds float64    `json:"queue_delay_p50_s"`
	QueueDelayP95Seconds float64    `json:"queue_delay_p95_s"`
	// QueueDelayByClass is QueueDelay by the pods' Spot policy: a policy
	// that saves by making one class wait (prefer pods for Spot, avoid
	// pods for on-demand) shows it here even where the few pods of that
	// class leave the overall percentiles where they were.
	QueueDelayByClass map[string]DelayStats `json:"queue_delay_by_class_seconds"`
	// FirstStartDelay is each pod's wait before its work first started,
	// without the waits after reclaims that QueueDelay adds: what the
	// scheduler and the fleet made a pod wait, apart from what Spot cost.
	FirstStartDelay DelayStats `json:"first_start_delay_seconds"`
	PodsTotal       int        `json:"pods_total"`
	PodsCompleted   int        `json:"pods_completed"`
	NeverScheduled  int        `json:"never_scheduled"`
	// FitsNoPool counts the never-scheduled pods that no pool's template
	// node passes the filters of (a GPU model or size the fleet lacks, a
	// Spot rule no pool meets): the scenario, not the load, kept them out.
	// FitsNoPoolExample names the first, with its trace line.
	FitsNoPool        int    `json:"never_scheduled_fits_no_pool"`
	FitsNoPoolExample string `json:"fits_no_pool_example,omitempty"`
	// GangTooLarge counts the never-scheduled pods of gangs that need more
	// nodes at once than any pool that runs their members may have: the
	// gang plugin places a gang in one pool, all of it or none, so the
	// pools' max, not the load, kept them out. GangTooLargeExample names
	// the first gang, with its trace line and what it lacked.
	GangTooLarge        int    `json:"never_scheduled_gang_too_large"`
	GangTooLargeExample string `json:"gang_too_large_example,omitempty"`
	// Unfinished counts pods that ran but had not finished when the replay
	// ended: only a stalled replay (Stalled) leaves any.
	Unfinished int `json:"unfinished"`
	Withdrawn  int `json:"withdrawn"`
	// InterruptedServices counts reclaims that hit a running service
	// (inference, dev); ServiceDowntimeHours is how long those services
	// were down: waiting for a node and restarting, and for one still down
	// when the replay ends, until then.
	InterruptedServices  int     `json:"interrupted_services"`
	ServiceDowntimeHours float64 `json:"service_downtime_hours"`
	// Fallbacks counts pods that ran on the capacity they fall back to
	// after waiting for the other (spotrisk.Class.FellBack): Spot-preferring
	// pods on on-demand, training without checkpoints on Spot; not those
	// whose fallbackAfter is 0s, nor any under a policy without SpotRisk,
	// which never waited.
	Fallbacks int `json:"fallbacks"`
	// Returns counts the moves back to Spot (SpotRisk's returnToSpot): a
	// workload that fell back to on-demand checkpointed, stopped and was
	// placed again once Spot had room; ReturnedPods counts the pods they
	// moved, ReturnedGPUHours the GPU-hours those pods then ran on Spot.
	Returns          int     `json:"returns"`
	ReturnedPods     int     `json:"returned_pods"`
	ReturnedGPUHours float64 `json:"returned_gpu_hours"`
	ScaleUps         int     `json:"scale_ups"`
	ScaleDowns       int     `json:"scale_downs"`
	PeakNodes        int     `json:"peak_nodes"`
	HorizonHours     float64 `json:"horizon_hours"`
	// Stalled is set when the replay ended early after the last arrival:
	// nothing started or finished for StallLimit and nothing running would
	// finish, or no pod finished for LivelockRuns times the trace's longest
	// run. The pods still waiting then count as never scheduled, those
	// still running or waiting to run again as unfinished.
	Stalled     bool    `json:"stalled,omitempty"`
	WallSeconds float64 `json:"wall_seconds"`
}

// namespace is the pod's namespace's share of the result.
func (r *elastic) namespace(p *elPod) *NamespaceCost {
	c := r.res.ByNamespace[p.pod.Namespace]
	if c == nil {
		c = &NamespaceCost{}
		r.res.ByNamespace[p.pod.Namespace] = c
	}
	return c
}

// addTo adds v to m[a][b].
func addTo(m map[string]map[string]float64, a, b string, v float64) {
	if m[a] == nil {
		m[a] = map[string]float64{}
	}
	m[a][b] += v
}

func (r *elastic) finish() {
	res := r.res
	res.HorizonHours = r.now.Hours()
	for i, p := range r.pods {
		if p.started && (p.state == podWaiting || p.state == podHeld) {
			// Waiting again since a reclaim: its queueing goes on too.
			p.delay += r.now - p.waitStart
			if p.downSince >= 0 && p.class.Work.Stateless {
				// A service still down is down until the replay ends:
				// left out, a pool that never takes it back would cost
				// it no downtime at all.
				r.res.ServiceDowntimeHours += (r.now - p.downSince).Hours()
				p.downSince = -1
			}
		}
		if p.state == podRunning {
			r.stop(i, runDone, 0)
			p.state = podRunning
		}
	}
	for _, n := range r.upInOrder() {
		r.retire(n)
	}
	res.IdleUSD = res.BillUSD - res.AllocatedUSD
	var delays, firsts []float64
	byClass := map[string][]float64{}
	for i, p := range r.pods {
		if p.started {
			delays = append(delays, p.delay.Seconds())
			first := p.firstDelay
			if first < 0 {
				// Its gang's work never started: all of its wait was before.
				first = p.delay
			}
			firsts = append(firsts, first.Seconds())
			c := string(p.class.Policy)
			byClass[c] = append(byClass[c], p.delay.Seconds())
			if p.state != podDone && p.state != podWithdrawn {
				res.Unfinished++
			}
		} else if p.state == podWaiting {
			res.NeverScheduled++
			fits, err := r.poolFits(i)
			switch {
			case err != nil:
			case !slices.Contains(fits, true):
				if res.FitsNoPool++; res.FitsNoPoolExample == "" {
					res.FitsNoPoolExample = fmt.Sprintf("%s (%s)", p.pod.Name, p.tp.Source)
				}
			case p.inGang:
				if most, ok := r.gangFitsNoPool(i, fits); ok {
					if res.GangTooLarge++; res.GangTooLargeExample == "" {
						res.GangTooLargeExample = fmt.Sprintf("%s (%s): %d pods at once; the pools that run its members hold at most %d", p.gangSpec.Ref.Name, p.tp.Source, p.gangSpec.MinMember, most)
					}
				}
			}
		}
		if p.everSpot && p.class.Policy == spotrisk.Never {
			res.NeverOnSpot++
		}
	}
	res.QueueDelay = delayStats(delays)
	res.QueueDelayP50Seconds, res.QueueDelayP95Seconds = res.QueueDelay.P50, res.QueueDelay.P95
	res.FirstStartDelay = delayStats(firsts)
	res.QueueDelayByClass = map[string]DelayStats{}
	for c, d := range byClass {
		res.QueueDelayByClass[c] = delayStats(d)
	}
	res.BillUSD = round2(res.BillUSD)
	res.AllocatedUSD, res.IdleUSD = round2(res.AllocatedUSD), round2(res.IdleUSD)
	for _, c := range res.ByNamespace {
		c.AllocatedUSD, c.UsefulGPUHours, c.LostGPUHours = round2(c.AllocatedUSD), round2(c.UsefulGPUHours), round2(c.LostGPUHours)
	}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
