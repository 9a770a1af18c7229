package sim

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins"
	gangplugin "github.com/pennysched/penny/plugins/gang"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// ElasticOptions describes one replay of a trace on a SpotScenario's
// elastic, priced fleet.
type ElasticOptions struct {
	Scenario        *SpotScenario
	Trace           *Trace
	Policy          *Policy
	Seed            uint64
	SchedulerConfig []byte
	Parallelism     int
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
	// NeverOnSpot counts pods of a never-on-Spot class (Penny's reading of
	// the pod) that ran on a Spot node at any time.
	NeverOnSpot          int        `json:"never_on_spot"`
	NeverOnSpotGPUHours  float64    `json:"never_on_spot_gpu_hours"`
	QueueDelay           DelayStats `json:"queue_delay_seconds"`
	QueueDelayP50Seconds float64    `json:"queue_delay_p50_s"`
	QueueDelayP95Seconds float64    `json:"queue_delay_p95_s"`
	PodsTotal            int        `json:"pods_total"`
	PodsCompleted        int        `json:"pods_completed"`
	NeverScheduled       int        `json:"never_scheduled"`
	// FitsNoPool counts the never-scheduled pods that no pool's template
	// node passes the filters of (a GPU model or size the fleet lacks, a
	// Spot rule no pool meets): the scenario, not the load, kept them out.
	// FitsNoPoolExample names the first, with its trace line.
	FitsNoPool        int    `json:"never_scheduled_fits_no_pool"`
	FitsNoPoolExample string `json:"fits_no_pool_example,omitempty"`
	// Unfinished counts pods that ran but had not finished when the replay
	// ended: only a stalled replay (Stalled) leaves any.
	Unfinished int `json:"unfinished"`
	Withdrawn  int `json:"withdrawn"`
	// InterruptedServices counts reclaims that hit a running service
	// (inference, dev); ServiceDowntimeHours is how long those services
	// were down: waiting for a node and restarting.
	InterruptedServices  int     `json:"interrupted_services"`
	ServiceDowntimeHours float64 `json:"service_downtime_hours"`
	// Fallbacks counts pods that ran on the capacity they fall back to
	// (spotrisk.Class.FallbackFrom): Spot-preferring pods on on-demand,
	// training without checkpoints on Spot.
	Fallbacks    int     `json:"fallbacks"`
	ScaleUps     int     `json:"scale_ups"`
	ScaleDowns   int     `json:"scale_downs"`
	PeakNodes    int     `json:"peak_nodes"`
	HorizonHours float64 `json:"horizon_hours"`
	// Stalled is set when the replay ended early after the last arrival:
	// nothing started or finished for StallLimit and nothing running would
	// finish, or no pod finished for LivelockRuns times the trace's longest
	// run. The pods still waiting then count as never scheduled, those
	// still running or waiting to run again as unfinished.
	Stalled     bool    `json:"stalled,omitempty"`
	WallSeconds float64 `json:"wall_seconds"`
}

// elastic event kinds, in the order they happen at one instant: capacity
// frees and arrives before it is taken away, arrivals see the result, the
// autoscaler scans last.
type elKind int

const (
	elDeparture elKind = iota
	elNodeReady
	elReclaim
	elScaleDown
	elWithdraw
	elTimer
	elArrival
	elScan
	elSample
)

type elEvent struct {
	at   time.Duration
	kind elKind
	seq  int
	pod  int
	gen  int
	node string
}

type elQueue []elEvent

func (q elQueue) Len() int { return len(q) }
func (q elQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	if q[i].kind != q[j].kind {
		return q[i].kind < q[j].kind
	}
	return q[i].seq < q[j].seq
}
func (q elQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *elQueue) Push(x any)   { *q = append(*q, x.(elEvent)) }
func (q *elQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type elPodState int

const (
	podWaiting elPodState = iota
	podRunning
	podHeld // held at Permit (a gang waiting for its members)
	podDone
	podWithdrawn
)

type elPod struct {
	tp  *TracePod
	pod *v1.Pod
	// gang is the pod's gang key (gangKey), "" outside a gang, and mates
	// the gang (nil outside one).
	gang  string
	mates *elGang
	// gangSpec is what the pod's labels say of its gang, read once;
	// inGang is false outside a gang or when they say it wrongly.
	gangSpec gang.Spec
	inGang   bool
	class    spotrisk.Class
	gpus     float64
	usage    pricing.Usage
	// work is the run time the pod needs; saved is the part of it that
	// survives a reclaim (checkpointed, or all of it for a service).
	work, saved time.Duration
	// overhead is the restart time the next run spends before progress.
	overhead time.Duration
	state    elPodState
	// queued: the pod has arrived and waits in r.pending.
	queued    bool
	node      string
	gen       int
	runStart  time.Duration
	waitStart time.Duration
	delay     time.Duration
	started   bool
	// nominated is the in-flight node the autoscaler launched for the pod.
	nominated string
	hourly    float64
	everSpot  bool
	fellBack  bool
	reclaimed int
	// downSince is when a reclaimed service went down; -1 when it is up.
	downSince  time.Duration
	deadline   time.Duration
	retriedDue bool
	// heldOn is the node a pod held at Permit has reserved.
	heldOn string
	// fits remembers which pools' templates pass the pod's filters
	// (poolFits), for the deadline in fitsFor and whether it had passed.
	fits       []bool
	fitsFor    time.Duration
	fitsWaited bool
	fitsGen    int
}

// elGang is a gang's pods, in the order they were read.
type elGang struct {
	members []int
	// scanned is the scan that last asked the autoscaler for the gang.
	scanned int
}

type elNode struct {
	name     string
	pool     *elPool
	node     *v1.Node
	price    pricing.Price
	launched time.Duration
	ready    bool
	removed  bool
	pods     map[int]bool
	emptyGen int
	fedUntil time.Duration
	// room is what nominated pods leave of an in-flight node.
	roomCPU, roomMem, roomGPU int64
	// nominees are the pods nominated to the node while it is in flight.
	nominees []*elPod
}

type elPool struct {
	// index is the pool's place in elastic.pools.
	index    int
	spec     *ElasticPool
	template *v1.Node
	live     int
	seq      int
	rng      *rand.Rand
	price    pricing.Price
	// size is what a node of the pool can give a pod: CPU, memory and GPUs
	// (in thousandths).
	size pricing.Usage
}

// mayHold is false when a node of the pool, empty, lacks the pod's CPU,
// memory or GPUs: NodeResourcesFit would reject it there, so the filters
// need not run. (A share of a GPU needs one GPU.)
func (pool *elPool) mayHold(u pricing.Usage) bool {
	return u.CPUMilli <= pool.size.CPUMilli && u.MemoryBytes <= pool.size.MemoryBytes && u.GPUMilli <= pool.size.GPUMilli
}

type elastic struct {
	o     ElasticOptions
	sc    *SpotScenario
	e     *Engine
	clock *simClock
	epoch time.Time
	risk  *pricing.RiskModel
	// interrupted is what reclaims cut short, per workload (SpotRisk reads
	// it).
	interrupted *pricing.Interrupted
	runLengths  *pricing.RunLengths
	// riskGen counts changes of the risk model that may change a
	// risk-following pod's pool verdicts (hourly exposure, reclaims).
	riskGen int
	// gangPlugin: the policy's profile runs PennyGang, so a gang's members
	// are placed all together or not at all.
	gangPlugin bool
	// busy is the pod that kept over false last (a hint).
	busy int
	// riskFilter: the policy's profile filters with SpotRisk, whose verdicts
	// on a risk-following pod change with riskGen (no other filter's do).
	riskFilter bool
	// rule is what a reclaim costs the policy's pods (docs/reclaim.md).
	rule ReclaimRule
	rank func(pod *v1.Pod, templates []*v1.Node) ([]int, error)
	// rankOptions, when set, ranks knowing each pool's peers (Penny's
	// expander).
	rankOptions func(pod *v1.Pod, options []spotrisk.Option) ([]int, error)
	q           elQueue
	seq         int
	now         time.Duration
	pods        []*elPod
	byUID       map[string]int
	// gangs are the gangs by gang key.
	gangs map[string]*elGang
	// scans counts the autoscaler's scans.
	scans   int
	pending []int
	nodes   map[string]*elNode
	// up are the nodes launched and not removed yet; nodes keeps every node
	// ever launched, which reclaim churn makes many.
	up map[string]*elNode
	// inflight are the nodes launched and not ready yet.
	inflight map[string]*elNode
	// scanning is set during a scan, which keeps scanRoom (readyRoom).
	scanning bool
	scanRoom nodeRoom
	// scanSlots is roomByPool's answer per pod shape, for scanRoom.
	scanSlots map[pricing.Usage]map[*elPool]int
	pools     []*elPool
	freed     []string
	scanOn    bool
	arrived   int
	// timerAt is when the earliest elTimer event in the queue is due; -1
	// when there is none.
	timerAt time.Duration
	// progress is when a pod last started, finished or was reclaimed.
	progress time.Duration
	// done is when a pod last finished or arrived; livelock is how long
	// after it the replay gives up on the pods still running (stalled).
	done, livelock time.Duration
	// lastLaunched is the node launch created last.
	lastLaunched string
	res          *ElasticResult
	live         int
}

// simEpoch is trace time zero on the plugins' clock.
var simEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// ElasticReplay replays a trace on the scenario's elastic fleet under one
// policy. Pods arrive at their trace time; a pod that fits nowhere makes the
// autoscaler launch a node of the pool the policy ranks first among those
// whose template node passes the pod's filters (Cluster Autoscaler runs the
// scheduler's filters on template nodes the same way); the node joins after
// the pool's provisioning delay. Nodes empty for the pool's scale-down
// delay are removed. Spot nodes are reclaimed after a seeded exponential
// lifetime; their pods lose the work since their last checkpoint and are
// resubmitted.
func ElasticReplay(ctx context.Context, o ElasticOptions) (*ElasticResult, error) {
	start := time.Now()
	sc := o.Scenario
	clk := newSimClock(simEpoch)
	r := &elastic{o: o, sc: sc, clock: clk, timerAt: -1, epoch: simEpoch,
		risk: pricing.NewRiskModel(pricing.RiskConfig{Clock: clk}), interrupted: pricing.NewInterrupted(0), runLengths: pricing.NewRunLengths(0), rule: sc.reclaimRule(o.Policy.Name),
		byUID: map[string]int{}, gangs: map[string]*elGang{}, nodes: map[string]*elNode{}, inflight: map[string]*elNode{}, up: map[string]*elNode{},
		res: &ElasticResult{Policy: o.Policy.Name, Seed: o.Seed, BillByCapacity: map[string]float64{}, NodeHoursByPool: map[string]float64{},
			BillByPool: map[string]float64{}, AllocatedByPool: map[string]float64{}, GPUHoursByClass: map[string]map[string]float64{}, LostGPUHoursByClass: map[string]map[string]float64{}}}
	deps := plugins.Deps{Prices: sc.catalog, Risk: r.risk, Clock: r.clock, Interrupted: r.interrupted, RunLengths: r.runLengths}
	prof, reg, err := o.Policy.Build(Run{Seed: o.Seed, Workload: TypicalWorkload(o.Trace), SchedulerConfig: o.SchedulerConfig, Deps: deps})
	if err != nil {
		return nil, err
	}
	if err := r.setRanker(ctx, deps); err != nil {
		return nil, err
	}
	for i := range sc.Pools {
		p := &sc.Pools[i]
		tpl := sc.node(p, p.Name+"-template")
		price, ok := sc.catalog.NodePrice(tpl)
		if !ok {
			return nil, fmt.Errorf("pool %s: no price for %s %s in %s", p.Name, p.CapacityType, p.InstanceType, sc.Region)
		}
		alloc := tpl.Status.Allocatable
		g := alloc[gpu.ResourceGPU]
		pool := &elPool{index: len(r.pools), spec: p, template: tpl, price: price,
			rng:  rand.New(rand.NewPCG(o.Seed, uint64(i)+0x51ed)),
			size: pricing.Usage{CPUMilli: alloc.Cpu().MilliValue(), MemoryBytes: alloc.Memory().Value(), GPUMilli: g.Value() * gpu.MilliPerGPU}}
		r.pools = append(r.pools, pool)
		if p.capacity == pricing.Spot {
			r.risk.SetPrior(poolKey(p), price.Interruption)
		}
	}
	e, err := NewEngine(ctx, EngineOptions{Profile: prof, Registry: reg, Seed: o.Seed, Parallelism: o.Parallelism, KeepUnschedulable: true})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	r.e = e
	for _, pl := range e.Framework().ListPlugins().PreFilter.Enabled {
		r.gangPlugin = r.gangPlugin || pl.Name == gangplugin.Name
	}
	for _, pl := range e.Framework().ListPlugins().Filter.Enabled {
		r.riskFilter = r.riskFilter || pl.Name == spotrisk.Name
	}
	for _, pool := range r.pools {
		for n := 0; n < pool.spec.Min; n++ {
			if err := r.launch(pool, true); err != nil {
				return nil, err
			}
		}
	}
	for i := range o.Trace.Pods {
		tp := &o.Trace.Pods[i]
		p := tp.Pod.DeepCopy()
		p.Spec.SchedulerName = prof.SchedulerName
		sc.annotate(p, tp.Duration, o.Seed)
		// GPU-hours count what the trace asked for, whatever the policy
		// has to ask for.
		gpus := podGPUs(p)
		sc.admit(p, o.Policy.Name)
		class, err := spotrisk.ClassOf(p, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		ep := &elPod{tp: tp, pod: p, gang: gangKey(p), class: class, gpus: gpus, usage: pricing.PodUsage(p), work: tp.Duration, state: podWaiting, downSince: -1}
		if spec, ok, err := gang.Of(p); ok && err == nil {
			ep.gangSpec, ep.inGang = spec, true
		}
		r.pods = append(r.pods, ep)
		if ep.gang != "" {
			g := r.gangs[ep.gang]
			if g == nil {
				g = &elGang{}
				r.gangs[ep.gang] = g
			}
			g.members = append(g.members, i)
			ep.mates = g
		}
		r.byUID[string(p.UID)] = i
		r.push(elEvent{at: tp.Arrival, kind: elArrival, pod: i})
		if tp.Withdraw > 0 {
			r.push(elEvent{at: tp.Withdraw, kind: elWithdraw, pod: i})
		}
	}
	r.res.PodsTotal = len(r.pods)
	r.livelock = StallLimit
	for _, p := range r.pods {
		r.livelock = max(r.livelock, LivelockRuns*p.work)
	}
	r.push(elEvent{at: time.Hour, kind: elSample})
	if err := r.run(ctx); err != nil {
		if ctx.Err() != nil {
			// The plugins' informers stop with the context, so whatever the
			// event was doing failed for that reason, not its own.
			return nil, fmt.Errorf("replay stopped at %v of trace time: %w", r.now, context.Cause(ctx))
		}
		return nil, err
	}
	r.finish()
	r.res.WallSeconds = time.Since(start).Seconds()
	return r.res, nil
}

func poolKey(p *ElasticPool) pricing.Pool {
	return pricing.Pool{InstanceType: p.InstanceType, Zone: p.Zone, Capacity: p.capacity}
}

// setRanker picks how the policy's autoscaler chooses a pool: Penny asks
// SpotRisk's expander; spot-first takes Spot first; every policy otherwise
// takes the cheapest node that fits, as Karpenter does.
func (r *elastic) setRanker(ctx context.Context, deps plugins.Deps) error {
	cheapest := func(spotFirst bool) func(*v1.Pod, []*v1.Node) ([]int, error) {
		return func(_ *v1.Pod, t []*v1.Node) ([]int, error) {
			order := make([]int, len(t))
			price := make([]float64, len(t))
			spot := make([]bool, len(t))
			for i, n := range t {
				order[i] = i
				p, _ := r.sc.catalog.NodePrice(n)
				price[i], spot[i] = p.NodeHourly, pricing.NodeCapacity(n).IsSpot()
			}
			sort.SliceStable(order, func(a, b int) bool {
				if spotFirst && spot[order[a]] != spot[order[b]] {
					return spot[order[a]]
				}
				return price[order[a]] < price[order[b]]
			})
			return order, nil
		}
	}
	switch r.o.Policy.Name {
	case "penny":
		x, err := spotrisk.NewExpander(ctx, nil, spotrisk.Deps{Prices: deps.Prices, Risk: deps.Risk, Clock: deps.Clock})
		if err != nil {
			return err
		}
		r.rank = x.Rank
		r.rankOptions = x.RankOptions
	case SpotFirstPolicy:
		r.rank = cheapest(true)
	default:
		r.rank = cheapest(false)
	}
	return nil
}

func (r *elastic) push(ev elEvent) {
	ev.seq = r.seq
	r.seq++
	heap.Push(&r.q, ev)
}

// StallLimit ends a replay in which nothing has started, finished or been
// reclaimed for this long after the last arrival, no node is on its way and
// no running pod is left to finish:
// waiting pods that no pool can take (a gang wider than any pool) would
// otherwise keep the autoscaler scanning forever.
const StallLimit = 72 * time.Hour

// LivelockRuns ends a replay in which no pod has finished for this many
// times the trace's longest run (StallLimit at least) after the last
// arrival, whatever is running: a job without checkpoints that its pool
// reclaims more often than it can finish (a long, wide gang on Spot under
// spot-first) restarts forever. A healthy pod finishes within its run time
// of starting, and a pod that waits, waits behind pods that finish.
const LivelockRuns = 3

// stalled: all pods have arrived, and either nothing started, finished or
// was reclaimed for StallLimit, no node is on its way and no running pod
// will finish, or no pod finished for r.livelock.
func (r *elastic) stalled() bool {
	if r.arrived < len(r.pods) {
		return false
	}
	if r.q[0].at-r.done > r.livelock {
		return true
	}
	if r.q[0].at-r.progress <= StallLimit || len(r.inflight) > 0 {
		return false
	}
	for _, ev := range r.q {
		if ev.kind == elDeparture {
			if p := r.pods[ev.pod]; p.state == podRunning && p.gen == ev.gen {
				return false
			}
		}
	}
	return true
}

// timers runs the plugins' timers due by now: a gang's permit wait that runs
// out releases its members held at Permit, and a gang's backoff that ends
// (or a pod's wait for Spot) asks for its pods to be retried, which they are.
// An elTimer event is queued for the next timer still armed.
func (r *elastic) timers() error {
	if r.clock.advance(r.epoch.Add(r.now)) > 0 {
		settled, err := r.e.SettleWaiting()
		if err != nil {
			return err
		}
		r.settle(settled)
		for _, pod := range r.e.Activated() {
			i, ok := r.byUID[string(pod.UID)]
			if !ok {
				continue
			}
			if p := r.pods[i]; p.state == podWaiting && p.queued {
				if err := r.try(i); err != nil {
					return err
				}
			}
		}
	}
	if at, ok := r.clock.next(); ok {
		if d := at.Sub(r.epoch); r.timerAt < 0 || d < r.timerAt {
			r.timerAt = max(d, r.now)
			r.push(elEvent{at: r.timerAt, kind: elTimer})
		}
	}
	return nil
}

func (r *elastic) run(ctx context.Context) error {
	for r.q.Len() > 0 && !r.over() {
		if r.stalled() {
			r.res.Stalled = true
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ev := heap.Pop(&r.q).(elEvent)
		r.now = ev.at
		if ev.kind == elTimer && ev.at == r.timerAt {
			r.timerAt = -1
		}
		if err := r.timers(); err != nil {
			return err
		}
		var err error
		switch ev.kind {
		case elArrival:
			r.arrived++
			r.done = r.now
			p := r.pods[ev.pod]
			p.waitStart = r.now
			r.setDeadline(p)
			err = r.try(ev.pod)
		case elDeparture:
			err = r.departure(ev)
		case elNodeReady:
			err = r.nodeReady(ev.node)
		case elReclaim:
			err = r.reclaim(ev.node)
		case elScaleDown:
			err = r.scaleDown(ev)
		case elTimer:
			// The plugins' timers ran above.
		case elWithdraw:
			p := r.pods[ev.pod]
			if p.state == podWaiting && !p.started {
				p.state = podWithdrawn
				r.dropPending(ev.pod)
				r.res.Withdrawn++
				err = r.e.Withdraw(p.pod)
			}
		case elScan:
			r.scanOn = false
			err = r.scan()
		case elSample:
			r.feedExposure()
			r.riskGen++
			if r.q.Len() > 0 {
				r.push(elEvent{at: r.now + time.Hour, kind: elSample})
			}
		}
		if err != nil {
			return err
		}
		// Once the instant's capacity changes are done, retry waiting pods.
		if len(r.freed) > 0 && (r.q.Len() == 0 || r.q[0].at > r.now || r.q[0].kind > elScaleDown) {
			if err := r.retryPending(); err != nil {
				return err
			}
		}
	}
	return nil
}

// over reports whether nothing is left to happen to the workload: every pod
// has arrived and none runs or is held. Pods still waiting then can never be
// placed (their pools are at their maximum or nothing fits them). Events
// left (reclaims of idle Spot nodes, samples) do not extend the replay.
func (r *elastic) over() bool {
	if r.arrived < len(r.pods) {
		return false
	}
	// A plugin's timer may yet let a waiting pod in (a gang's backoff).
	if _, ok := r.clock.next(); ok && len(r.pending) > 0 {
		return false
	}
	// The pod that kept the replay going last time usually still does.
	if r.busy < len(r.pods) && r.pods[r.busy].keepsReplayGoing() {
		return false
	}
	for i, p := range r.pods {
		if p.keepsReplayGoing() {
			r.busy = i
			return false
		}
	}
	return true
}

// keepsReplayGoing: the pod runs, is held, or waits for a node on its way or
// for its wait for Spot (or on-demand) to end.
func (p *elPod) keepsReplayGoing() bool {
	switch p.state {
	case podRunning, podHeld:
		return true
	case podWaiting:
		return p.nominated != "" || (p.deadline > 0 && !p.retriedDue)
	}
	return false
}

func (r *elastic) setDeadline(p *elPod) {
	p.pod.CreationTimestamp = metav1.NewTime(r.epoch.Add(r.now))
	p.deadline, p.retriedDue = 0, false
	if p.class.Waits() {
		p.deadline = r.now + p.class.FallbackAfter
	}
}

// try schedules a pod now; one that does not fit waits and asks the
// autoscaler for a node.
func (r *elastic) try(i int) error {
	p := r.pods[i]
	out, err := r.e.Schedule(p.pod)
	if err != nil {
		return fmt.Errorf("pod %s (%s): %w", p.pod.Name, p.tp.Source, err)
	}
	switch {
	case out.Waiting:
		p.state, p.heldOn = podHeld, out.Node
		r.dropPending(i)
	case out.Node != "":
		r.placed(i, out.Node)
	default:
		r.enqueue(i)
		if err := r.autoscale(i); err != nil {
			return err
		}
	}
	settled, err := r.e.SettleWaiting()
	if err != nil {
		return err
	}
	r.settle(settled)
	return nil
}

// settle records what became of pods held at Permit: bound, or back to
// waiting.
func (r *elastic) settle(settled []Settled) {
	for _, s := range settled {
		j := r.byUID[string(s.Pod.UID)]
		if s.Node != "" {
			r.placed(j, s.Node)
		} else {
			r.pods[j].state = podWaiting
			r.enqueue(j)
		}
	}
}

func (r *elastic) enqueue(i int) {
	p := r.pods[i]
	p.state = podWaiting
	if p.queued {
		return
	}
	p.queued = true
	r.pending = append(r.pending, i)
	sort.SliceStable(r.pending, func(a, b int) bool { return r.pods[r.pending[a]].waitStart < r.pods[r.pending[b]].waitStart })
	r.armScan()
}

func (r *elastic) dropPending(i int) {
	if !r.pods[i].queued {
		return
	}
	r.pods[i].queued = false
	for k, j := range r.pending {
		if j == i {
			r.pending = append(r.pending[:k], r.pending[k+1:]...)
			return
		}
	}
}

func (r *elastic) placed(i int, node string) {
	p := r.pods[i]
	n := r.nodes[node]
	r.dropPending(i)
	p.delay += r.now - p.waitStart
	r.progress = r.now
	if p.downSince >= 0 && p.reclaimed > 0 && p.class.Work.Stateless {
		r.res.ServiceDowntimeHours += (r.now - p.downSince + p.overhead).Hours()
		p.downSince = -1
	}
	p.state, p.node, p.runStart, p.started, p.nominated = podRunning, node, r.now, true, ""
	p.gen++
	p.hourly = n.price.HourlyFor(p.usage)
	if pricing.NodeCapacity(n.node).IsSpot() {
		p.everSpot = true
	}
	if p.class.FallbackFrom(pricing.NodeCapacity(n.node)) && !p.fellBack {
		p.fellBack = true
		r.res.Fallbacks++
	}
	if len(n.pods) == 0 {
		n.emptyGen++
	}
	n.pods[i] = true
	r.push(elEvent{at: r.now + p.overhead + (p.work - p.saved), kind: elDeparture, pod: i, gen: p.gen})
}

// stop ends a pod's run at now; a reclaim keeps only kept of this run's
// progress.
func (r *elastic) stop(i int, reclaimed bool, kept time.Duration) {
	p := r.pods[i]
	n := r.nodes[p.node]
	ran := r.now - p.runStart
	r.res.AllocatedGPUHours += p.gpus * ran.Hours()
	r.res.AllocatedUSD += p.hourly * ran.Hours()
	if n != nil {
		r.res.AllocatedByPool[n.pool.spec.Name] += p.hourly * ran.Hours()
		addTo(r.res.GPUHoursByClass, string(p.class.Policy), string(n.pool.spec.capacity), p.gpus*ran.Hours())
	}
	if p.everSpot && p.class.Policy == spotrisk.Never && n != nil && pricing.NodeCapacity(n.node).IsSpot() {
		r.res.NeverOnSpotGPUHours += p.gpus * ran.Hours()
	}
	if n != nil {
		delete(n.pods, i)
	}
	p.node = ""
	if !reclaimed {
		// What penny-scheduler learns from the training pods that succeed
		// (spotrisk.WatchRuns).
		if p.class.Workload == spotrisk.Training {
			r.runLengths.Observe(p.gpus, ran, r.epoch.Add(r.now))
		}
		// The restart a reclaim forced is lost work too.
		restart := min(ran, p.overhead)
		r.res.UsefulGPUHours += p.gpus * (ran - restart).Hours()
		r.lose(p, n, p.gpus*restart.Hours())
		p.state = podDone
		return
	}
	kept = min(max(kept, 0), max(0, ran-p.overhead))
	p.saved += kept
	r.res.UsefulGPUHours += p.gpus * kept.Hours()
	r.lose(p, n, p.gpus*(ran-kept).Hours())
	p.overhead = r.sc.RestartOverhead.Duration
	p.reclaimed++
	p.gen++
}

// lose counts GPU-hours of a pod's work thrown away on node n.
func (r *elastic) lose(p *elPod, n *elNode, gpuHours float64) {
	r.res.LostGPUHours += gpuHours
	if gpuHours <= 0 {
		return
	}
	pool := "-"
	if n != nil {
		pool = n.pool.spec.Name
	}
	addTo(r.res.LostGPUHoursByClass, string(p.class.Policy), pool, gpuHours)
}

// addTo adds v to m[a][b].
func addTo(m map[string]map[string]float64, a, b string, v float64) {
	if m[a] == nil {
		m[a] = map[string]float64{}
	}
	m[a][b] += v
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
		progress := max(0, r.now-p.runStart-p.overhead)
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

func (r *elastic) departure(ev elEvent) error {
	p := r.pods[ev.pod]
	if p.state != podRunning || p.gen != ev.gen {
		return nil
	}
	node := p.node
	if err := r.e.Remove(p.pod); err != nil {
		return err
	}
	r.stop(ev.pod, false, 0)
	r.res.PodsCompleted++
	r.progress, r.done = r.now, r.now
	r.freed = append(r.freed, node)
	r.maybeIdle(r.nodes[node])
	return nil
}

// retryPending tries the waiting pods in queue order, each only when a node
// that gained capacity now passes its filters.
func (r *elastic) retryPending() error {
	freed := r.freed
	r.freed = nil
	room, err := r.roomOn(freed)
	if err != nil {
		return err
	}
	// Members of one gang with the same requests are the same pod to the
	// filters: once one does not fit, the others do not (placing other pods
	// only takes room).
	type member struct {
		gang string
		u    pricing.Usage
	}
	unfit := map[member]bool{}
	var ready nodeRoom // every ready node's free room; nil: to count
	for _, i := range append([]int(nil), r.pending...) {
		p := r.pods[i]
		if p.state != podWaiting || !room.mayTake(p.usage) || unfit[member{p.gang, p.usage}] {
			continue
		}
		if p.gang != "" && r.gangPlugin {
			// The gang plugin plans the whole gang over every node to
			// answer; a gang whose members cannot all find room on the
			// nodes up now cannot be placed.
			if ready == nil {
				if ready, err = r.readyRoom(); err != nil {
					return err
				}
			}
			if r.gangLacksRoom(i, ready) {
				unfit[member{p.gang, p.usage}] = true
				continue
			}
		}
		fits, err := r.e.FitsOn(p.pod, freed)
		if err != nil {
			return err
		}
		if !fits && p.gang != "" {
			unfit[member{p.gang, p.usage}] = true
		}
		if fits {
			if err := r.try(i); err != nil {
				return err
			}
			// What the pod took is gone: the pods after it need what is
			// left (with a long queue, most of them no longer pass).
			if room, err = r.roomOn(freed); err != nil {
				return err
			}
			ready = nil
		}
	}
	return nil
}

// freeRoom is the CPU, memory and whole GPUs a ready node has free.
type freeRoom struct {
	node           *elNode
	cpu, mem, gpus int64
}

// nodeRoom is the free room of some nodes.
type nodeRoom []freeRoom

// readyRoom is what every ready node has free now. A scan reuses it until
// it places a pod: launching nodes and nominating pods change no ready
// node.
func (r *elastic) readyRoom() (nodeRoom, error) {
	if r.scanRoom != nil {
		return r.scanRoom, nil
	}
	nis, err := r.e.NodeInfos()
	if err != nil {
		return nil, err
	}
	out := nodeRoom{}
	for _, ni := range nis {
		n := r.nodes[ni.Node().Name]
		if n == nil || !n.ready || n.removed {
			continue
		}
		alloc, req := ni.GetAllocatable(), ni.GetRequested()
		out = append(out, freeRoom{node: n, cpu: alloc.GetMilliCPU() - req.GetMilliCPU(), mem: alloc.GetMemory() - req.GetMemory(),
			gpus: alloc.GetScalarResources()[gpu.ResourceGPU] - req.GetScalarResources()[gpu.ResourceGPU]})
	}
	if r.scanning {
		r.scanRoom, r.scanSlots = out, map[pricing.Usage]map[*elPool]int{}
	}
	return out, nil
}

// roomOn is what the named nodes have free now. Pods placed afterwards make
// it an overestimate, which is all mayTake needs.
func (r *elastic) roomOn(names []string) (nodeRoom, error) {
	all, err := r.readyRoom()
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out nodeRoom
	for _, f := range all {
		if want[f.node.name] {
			out = append(out, f)
		}
	}
	return out, nil
}

// mayTake is false when no node has the CPU, memory or whole GPUs a pod
// asks for: NodeResourcesFit, a Filter of every profile, would reject it
// everywhere, so the filters need not run. Shares of a GPU are not counted
// in whole GPUs and are left to the filters.
func (room nodeRoom) mayTake(u pricing.Usage) bool {
	whole := int64(0)
	if u.GPUMilli%gpu.MilliPerGPU == 0 {
		whole = u.GPUMilli / gpu.MilliPerGPU
	}
	for _, n := range room {
		if n.cpu >= u.CPUMilli && n.mem >= u.MemoryBytes && n.gpus >= whole {
			return true
		}
	}
	return false
}

// scan is the autoscaler's periodic loop: it retries pods whose wait for
// Spot has ended and asks for nodes for pods nothing is coming for.
func (r *elastic) scan() error {
	// autoscale acts for a whole gang: once per gang and scan is enough,
	// and a large gang that waits for room does not cost a scan per member.
	r.scans++
	r.scanning, r.scanRoom = true, nil
	defer func() { r.scanning, r.scanRoom, r.scanSlots = false, nil, nil }()
	for _, i := range append([]int(nil), r.pending...) {
		p := r.pods[i]
		if p.state != podWaiting {
			continue
		}
		if p.deadline > 0 && r.now >= p.deadline && !p.retriedDue {
			p.retriedDue = true
			// try may place pods, and then ask the autoscaler: the room
			// is counted afresh for it and for the rest of the scan.
			r.scanRoom = nil
			if err := r.try(i); err != nil {
				return err
			}
			r.scanRoom = nil
			continue
		}
		if p.nominated == "" && (p.mates == nil || p.mates.scanned != r.scans) {
			if p.mates != nil {
				p.mates.scanned = r.scans
			}
			if err := r.autoscale(i); err != nil {
				return err
			}
		}
	}
	r.armScan()
	return nil
}

const scanEvery = 30 * time.Second

// armScan keeps the autoscaler scanning while a waiting pod could still be
// helped: something else will happen, or a pod's wait for Spot has not
// ended yet.
func (r *elastic) armScan() {
	if r.scanOn || len(r.pending) == 0 {
		return
	}
	others := false
	for _, ev := range r.q {
		if ev.kind != elScan && ev.kind != elSample {
			others = true
			break
		}
	}
	if !others {
		for _, i := range r.pending {
			if p := r.pods[i]; p.deadline > 0 && !p.retriedDue {
				others = true
				break
			}
		}
	}
	if others {
		r.scanOn = true
		r.push(elEvent{at: r.now + scanEvery, kind: elScan})
	}
}

// poolFits says which pools' template nodes pass the pod's PreFilter and
// Filter plugins, indexed by pool. A template is a fresh node, so the answer
// depends on the pod alone and on time only through SpotRisk's wait of a
// Spot-preferring pod and, for a pod whose answer follows the risk model (a
// risk limit, or training without checkpoints), the reclaim rates and run
// lengths SpotRisk has learned: it is remembered until the pod's wait ends
// or starts again, and for such a pod until the next reclaim or hourly
// exposure sample (an autoscaler's template checks are as old as its loop).
func (r *elastic) poolFits(i int) ([]bool, error) {
	p := r.pods[i]
	waited := p.deadline > 0 && r.now >= p.deadline
	if p.fits != nil && p.fitsFor == p.deadline && p.fitsWaited == waited && (!r.riskFilter || !p.class.FollowsRisk() || p.fitsGen == r.riskGen) {
		return p.fits, nil
	}
	tpls := make([]*v1.Node, len(r.pools))
	for k, pool := range r.pools {
		tpls[k] = pool.template
	}
	fits, err := r.e.FitsTemplates(asAlone(p.pod), tpls)
	if err != nil {
		return nil, err
	}
	p.fits, p.fitsFor, p.fitsWaited, p.fitsGen = fits, p.deadline, waited, r.riskGen
	return fits, nil
}

// autoscale finds or launches a node for a waiting pod. A gang member
// brings its whole gang: the gang's waiting members get one node each, all
// in one pool (one zone and capacity type, as the gang plugin keeps a gang),
// or none do.
func (r *elastic) autoscale(i int) error {
	p := r.pods[i]
	if p.nominated != "" {
		if n := r.nodes[p.nominated]; n != nil && !n.ready && !n.removed {
			return nil
		}
		p.nominated = ""
	}
	if len(r.inflight) == 0 {
		// No node on its way to take the pod and no pool it may use that
		// may grow: with a fleet at its limits this is most pods of most
		// scans. (A gang's members that fit on nodes already up are placed
		// when they are retried, not here.)
		full, err := r.poolsFullFor(i)
		if err != nil || full {
			return err
		}
	}
	if r.gangIncomplete(i) {
		return nil
	}
	members := r.gangWaiting(i)
	if len(members) == 1 {
		// A node already on its way may take it.
		cpu, mem, gpuMilli := requests(p)
		var inflight []*elNode
		for _, n := range r.inflight {
			if n.roomCPU >= cpu && n.roomMem >= mem && n.roomGPU >= gpuMilli {
				inflight = append(inflight, n)
			}
		}
		sort.Slice(inflight, func(a, b int) bool { return inflight[a].name < inflight[b].name })
		if len(inflight) > 0 {
			ok, err := r.poolFits(i)
			if err != nil {
				return err
			}
			for _, n := range inflight {
				if ok[n.pool.index] {
					r.nominate(p, n)
					return nil
				}
			}
		}
	}
	// A gang's members may also go on nodes already up in the pool: only
	// the rest need new ones.
	var room map[*elPool]int
	if p.gang != "" {
		var err error
		if room, err = r.roomByPool(p); err != nil {
			return err
		}
	}
	capacity, zone := r.gangPlacement(p)
	var open []*elPool
	var needs []int
	for _, pool := range r.pools {
		if capacity != "" && pool.spec.capacity != capacity || zone != "" && pool.spec.Zone != zone {
			continue
		}
		if !r.mayHoldAll(pool, members) {
			continue
		}
		need := len(members) - min(len(members), room[pool])
		if pool.spec.Max-pool.live >= need {
			open, needs = append(open, pool), append(needs, need)
		}
	}
	if len(open) == 0 {
		return nil
	}
	// Every member must pass the pool's filters.
	passes := make([]bool, len(r.pools))
	for k := range passes {
		passes[k] = true
	}
	for _, m := range members {
		ok, err := r.poolFits(m)
		if err != nil {
			return err
		}
		for k := range passes {
			passes[k] = passes[k] && ok[k]
		}
	}
	var fit []*elPool
	var fitT []*v1.Node
	var fitNeed []int
	for k, pool := range open {
		if passes[pool.index] {
			fit, fitT, fitNeed = append(fit, pool), append(fitT, pool.template), append(fitNeed, needs[k])
		}
	}
	if len(fit) == 0 {
		return nil
	}
	var order []int
	if r.rankOptions != nil && len(members) == 1 {
		opts, err := r.options(i, fit)
		if err != nil {
			return err
		}
		if order, err = r.rankOptions(p.pod, opts); err != nil {
			return err
		}
	} else {
		var err error
		if order, err = r.rank(p.pod, fitT); err != nil {
			return err
		}
	}
	pool := fit[order[0]]
	for _, m := range members[:fitNeed[order[0]]] {
		if err := r.launch(pool, false); err != nil {
			return err
		}
		r.nominate(r.pods[m], r.nodes[r.lastLaunched])
	}
	return nil
}

// mayHoldAll is false when a node of the pool lacks the CPU, memory or
// GPUs of one of the pods (elPool.mayHold).
func (r *elastic) mayHoldAll(pool *elPool, pods []int) bool {
	for _, m := range pods {
		if !pool.mayHold(r.pods[m].usage) {
			return false
		}
	}
	return true
}

// options pairs each template with the pod's peers there: the other pods,
// waiting or running, of the pod's Spot policy that pass their filters on
// the template (waiting ones first, then the most recently started), i.e.
// the workload that could fill a new node of that pool. Running pods count
// for services only, and only running services (spotrisk.Class.LongLived).
func (r *elastic) options(i int, pools []*elPool) ([]spotrisk.Option, error) {
	opts := make([]spotrisk.Option, len(pools))
	for k, pool := range pools {
		opts[k] = spotrisk.Option{Node: pool.template, Peers: []pricing.Usage{}}
	}
	self := r.pods[i]
	var cand []int
	for _, j := range r.pending {
		if q := r.pods[j]; j != i && q.state == podWaiting && q.class.Policy == self.class.Policy {
			cand = append(cand, j)
		}
	}
	var running []int
	for j, q := range r.pods {
		if self.class.LongLived() && q.class.LongLived() && q.state == podRunning && q.class.Policy == self.class.Policy {
			running = append(running, j)
		}
	}
	sort.SliceStable(running, func(a, b int) bool { return r.pods[running[a]].runStart > r.pods[running[b]].runStart })
	cand = append(cand, running...)
	if len(cand) > spotrisk.MaxPeers {
		cand = cand[:spotrisk.MaxPeers]
	}
	for _, j := range cand {
		ok, err := r.poolFits(j)
		if err != nil {
			return nil, err
		}
		for k, pool := range pools {
			if ok[pool.index] {
				opts[k].Peers = append(opts[k].Peers, r.pods[j].usage)
			}
		}
	}
	return opts, nil
}

// poolsFullFor reports whether every pool whose template the pod passes is
// at its max.
func (r *elastic) poolsFullFor(i int) (bool, error) {
	// With the fleet at its limits most pools are full and the rest too
	// small for the pod: no need to ask the filters.
	open := false
	for _, pool := range r.pools {
		if pool.live < pool.spec.Max && pool.mayHold(r.pods[i].usage) {
			open = true
			break
		}
	}
	if !open {
		return true, nil
	}
	ok, err := r.poolFits(i)
	if err != nil {
		return false, err
	}
	for _, pool := range r.pools {
		if ok[pool.index] && pool.live < pool.spec.Max {
			return false, nil
		}
	}
	return true, nil
}

// roomByPool counts, per pool, how many pods shaped like p the pool's ready
// nodes have room for now (GPUs, CPU and memory), for a gang whose members
// the gang plugin may spread over nodes already up and new ones.
func (r *elastic) roomByPool(p *elPod) (map[*elPool]int, error) {
	out := map[*elPool]int{}
	if p.usage.GPUMilli%gpu.MilliPerGPU != 0 {
		// Shares of a GPU: the node's counts do not say which GPU has room.
		return out, nil
	}
	room, err := r.readyRoom()
	if err != nil {
		return nil, err
	}
	if known, ok := r.scanSlots[p.usage]; ok && r.scanning {
		// A scan asks once per gang, and the gangs of a trace come in few
		// shapes.
		return known, nil
	}
	for _, f := range room {
		if k := spotrisk.SlotsIn(p.usage, f.cpu, f.mem, f.gpus); k > 0 {
			out[f.node.pool] += int(k)
		}
	}
	if r.scanning && r.scanSlots != nil {
		r.scanSlots[p.usage] = out
	}
	return out, nil
}

// gangLacksRoom reports whether pod i's gang needs more members placed than
// the ready nodes have room for: the whole GPUs free on them against the
// members it still needs, the smallest first, and the members that fit on
// them one node at a time, each member taking at least the CPU, memory and
// GPUs of the least any waiting member asks. Both are necessary for the
// gang plugin to place the gang, and cheap next to its plan. Members asking
// for part of a GPU make it answer false (the gang plugin decides).
func (r *elastic) gangLacksRoom(i int, ready nodeRoom) bool {
	spec := r.pods[i].gangSpec
	if !r.pods[i].inGang {
		return false
	}
	placed := 0
	var wants []int64
	var least pricing.Usage
	for _, j := range r.pods[i].mates.members {
		switch q := r.pods[j]; q.state {
		case podRunning, podHeld:
			placed++
		case podWaiting:
			u := q.usage
			if u.GPUMilli%gpu.MilliPerGPU != 0 {
				return false
			}
			if len(wants) == 0 {
				least = u
			}
			least.CPUMilli, least.MemoryBytes, least.GPUMilli = min(least.CPUMilli, u.CPUMilli), min(least.MemoryBytes, u.MemoryBytes), min(least.GPUMilli, u.GPUMilli)
			wants = append(wants, u.GPUMilli/gpu.MilliPerGPU)
		}
	}
	need := int(spec.MinMember) - placed
	if need <= 0 || need > len(wants) {
		return false
	}
	slices.Sort(wants)
	var sum, free, slots int64
	for _, w := range wants[:need] {
		sum += w
	}
	for _, f := range ready {
		free += max(0, f.gpus)
		slots += max(0, spotrisk.SlotsIn(least, f.cpu, f.mem, f.gpus))
	}
	return sum > free || slots < int64(need)
}

// gangIncomplete reports whether the pod is in a gang some of whose members
// have not arrived yet. The autoscaler waits for them: a job's controller
// creates its pods together and Cluster Autoscaler sizes for all the pods it
// sees pending, whereas launching a node per member as each arrives would
// scatter the gang over pools it cannot span.
func (r *elastic) gangIncomplete(i int) bool {
	spec := r.pods[i].gangSpec
	if !r.pods[i].inGang {
		return false
	}
	n := 0
	for _, j := range r.pods[i].mates.members {
		if q := r.pods[j]; q.state == podRunning || q.state == podHeld || (q.state == podWaiting && q.queued) {
			n++
		}
	}
	return n < int(spec.MinMember)
}

// gangPlacement is the capacity type and zone that the gang's members
// already held at Permit or running fix for the rest, as PennyGang keeps a
// gang on one of each unless the gang says otherwise; "" where nothing is
// fixed. A node of another kind could never take the members still waiting.
// Without PennyGang in the profile nothing keeps a gang together, so nothing
// is fixed: default's members place one by one.
func (r *elastic) gangPlacement(p *elPod) (pricing.CapacityType, string) {
	if p.gang == "" || !r.gangPlugin {
		return "", ""
	}
	spec := p.gangSpec
	if !p.inGang {
		return "", ""
	}
	for _, j := range p.mates.members {
		q := r.pods[j]
		node := ""
		switch q.state {
		case podRunning:
			node = q.node
		case podHeld:
			node = q.heldOn
		}
		if n := r.nodes[node]; n != nil {
			var capacity pricing.CapacityType
			var zone string
			if spec.SameCapacityType == nil || *spec.SameCapacityType {
				capacity = n.pool.spec.capacity
			}
			if spec.SameZone == nil || *spec.SameZone {
				zone = n.pool.spec.Zone
			}
			return capacity, zone
		}
	}
	return "", ""
}

// gangWaiting is the pod and, when it is in a gang, the gang's other
// waiting members that no node is coming for yet.
func (r *elastic) gangWaiting(i int) []int {
	out := []int{i}
	if r.pods[i].gang == "" {
		return out
	}
	var rest []int
	for _, j := range r.pods[i].mates.members {
		if q := r.pods[j]; j != i && q.queued && q.state == podWaiting && q.nominated == "" {
			rest = append(rest, j)
		}
	}
	// In the order they wait in (r.pending's).
	sort.SliceStable(rest, func(a, b int) bool { return r.pods[rest[a]].waitStart < r.pods[rest[b]].waitStart })
	return append(out, rest...)
}

// asAlone is the pod as the autoscaler weighs it: a gang member without its
// gang, since the gang plugin admits a gang only once room for every member
// exists, which is what the autoscaler is asked to create. Each member gets
// its node; the gang plugin places them together when the nodes are up.
func asAlone(pod *v1.Pod) *v1.Pod {
	if _, ok := pod.Labels[gang.LabelName]; !ok {
		return pod
	}
	p := pod.DeepCopy()
	delete(p.Labels, gang.LabelName)
	delete(p.Labels, gang.KeySize)
	return p
}

func (r *elastic) nominate(p *elPod, n *elNode) {
	cpu, mem, gpuMilli := requests(p)
	p.nominated = n.name
	n.nominees = append(n.nominees, p)
	n.roomCPU -= cpu
	n.roomMem -= mem
	n.roomGPU -= gpuMilli
}

func requests(p *elPod) (cpu, mem, gpuMilli int64) {
	return p.usage.CPUMilli, p.usage.MemoryBytes, p.usage.GPUMilli
}

// launch starts a node of the pool: at once for the pools' minimum at the
// start, after the provisioning delay otherwise.
func (r *elastic) launch(pool *elPool, now bool) error {
	name := fmt.Sprintf("%s-%d", pool.spec.Name, pool.seq)
	pool.seq++
	pool.live++
	n := &elNode{name: name, pool: pool, node: r.sc.node(pool.spec, name), price: pool.price, launched: r.now, pods: map[int]bool{}}
	alloc := n.node.Status.Allocatable
	n.roomCPU, n.roomMem = alloc.Cpu().MilliValue(), alloc.Memory().Value()
	g := alloc[gpu.ResourceGPU]
	n.roomGPU = g.Value() * 1000
	r.nodes[name] = n
	r.up[name] = n
	r.lastLaunched = name
	r.live++
	r.res.PeakNodes = max(r.res.PeakNodes, r.live)
	if now {
		return r.nodeReady(name)
	}
	r.res.ScaleUps++
	r.inflight[name] = n
	r.push(elEvent{at: r.now + pool.spec.ProvisioningDelay.Duration, kind: elNodeReady, node: name})
	return nil
}

func (r *elastic) nodeReady(name string) error {
	n := r.nodes[name]
	if n == nil || n.removed {
		return nil
	}
	if err := r.e.AddNode(n.node); err != nil {
		return err
	}
	n.ready, n.fedUntil = true, r.now
	delete(r.inflight, name)
	for _, p := range n.nominees {
		if p.nominated == name {
			p.nominated = ""
		}
	}
	n.nominees = nil
	if mttr := n.pool.spec.MeanTimeToReclaim.Duration; mttr > 0 {
		// A life past what a Duration holds (a mean of a million hours
		// draws some) is no reclaim in any replay.
		if life := n.pool.rng.ExpFloat64() * float64(mttr); life < float64(math.MaxInt64-r.now) {
			r.push(elEvent{at: r.now + time.Duration(life), kind: elReclaim, node: name})
		}
	}
	r.freed = append(r.freed, name)
	r.maybeIdle(n)
	return nil
}

// maybeIdle starts a node's scale-down countdown when it is empty.
func (r *elastic) maybeIdle(n *elNode) {
	if n == nil || n.removed || !n.ready || len(n.pods) > 0 {
		return
	}
	if n.pool.live <= n.pool.spec.Min {
		return
	}
	n.emptyGen++
	r.push(elEvent{at: r.now + n.pool.spec.ScaleDownAfter.Duration, kind: elScaleDown, node: n.name, gen: n.emptyGen})
}

func (r *elastic) scaleDown(ev elEvent) error {
	n := r.nodes[ev.node]
	if n == nil || n.removed || len(n.pods) > 0 || n.emptyGen != ev.gen || n.pool.live <= n.pool.spec.Min {
		return nil
	}
	if _, err := r.e.RemoveNode(n.name); err != nil {
		return err
	}
	r.retire(n)
	r.res.ScaleDowns++
	return nil
}

// retire bills a node up to now and takes it out of the fleet.
func (r *elastic) retire(n *elNode) {
	r.feedNode(n)
	hours := (r.now - n.launched).Hours()
	r.res.BillUSD += hours * n.price.NodeHourly
	r.res.BillByCapacity[string(n.pool.spec.capacity)] += hours * n.price.NodeHourly
	r.res.NodeHoursByPool[n.pool.spec.Name] += hours
	r.res.BillByPool[n.pool.spec.Name] += hours * n.price.NodeHourly
	n.removed = true
	delete(r.up, n.name)
	delete(r.inflight, n.name)
	n.pool.live--
	r.live--
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
	// says nothing about whether they can run.
	r.progress = r.now
	r.retire(n)
	sort.Ints(order)
	kept := r.keptOnReclaim(order, r.rule.notice(n.node))
	for _, i := range order {
		p := r.pods[i]
		if p.reclaimed == 0 {
			r.res.PodsReclaimed++
		}
		// As the reclaim coordinator does on a notice. The autoscaler asks
		// about a gang member as a pod alone (asAlone), so that pod's
		// workload learns it too. (Template verdicts it changes are those
		// of avoiding pods, which follow the risk model: riskGen.)
		r.interrupted.Observe(p.pod, r.now-p.runStart)
		if alone := asAlone(p.pod); alone != p.pod {
			r.interrupted.Observe(alone, r.now-p.runStart)
		}
		r.stop(i, true, kept[i])
		if p.class.Work.Stateless {
			r.res.InterruptedServices++
			p.downSince = r.now
		}
		p.waitStart = r.now
		r.setDeadline(p)
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

func (r *elastic) finish() {
	res := r.res
	res.HorizonHours = r.now.Hours()
	for i, p := range r.pods {
		if p.state == podRunning {
			r.stop(i, false, 0)
			p.state = podRunning
		}
	}
	for _, n := range r.upInOrder() {
		r.retire(n)
	}
	res.IdleUSD = res.BillUSD - res.AllocatedUSD
	var delays []float64
	for i, p := range r.pods {
		if p.started {
			delays = append(delays, p.delay.Seconds())
			if p.state != podDone {
				res.Unfinished++
			}
		} else if p.state == podWaiting {
			res.NeverScheduled++
			if fits, err := r.poolFits(i); err == nil && !slices.Contains(fits, true) {
				if res.FitsNoPool++; res.FitsNoPoolExample == "" {
					res.FitsNoPoolExample = fmt.Sprintf("%s (%s)", p.pod.Name, p.tp.Source)
				}
			}
		}
		if p.everSpot && p.class.Policy == spotrisk.Never {
			res.NeverOnSpot++
		}
	}
	res.QueueDelay = delayStats(delays)
	res.QueueDelayP50Seconds, res.QueueDelayP95Seconds = res.QueueDelay.P50, res.QueueDelay.P95
	res.BillUSD = round2(res.BillUSD)
	res.AllocatedUSD, res.IdleUSD = round2(res.AllocatedUSD), round2(res.IdleUSD)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
