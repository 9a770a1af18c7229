package sim

import (
	"container/heap"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"

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
	// Progress, when set, gets a line about every ProgressEvery of wall
	// time: a replay of a long, overloaded trace runs for minutes.
	Progress io.Writer
}

// ProgressEvery is how often a replay with ElasticOptions.Progress reports.
var ProgressEvery = 10 * time.Second

// elastic event kinds, in the order they happen at one instant: capacity
// frees and arrives before it is taken away, arrivals see the result, the
// autoscaler scans last. A reclaim's notice, its evictions and the node's
// removal come in that order, also when a node is reclaimed within its
// notice of joining.
type elKind int

const (
	elDeparture elKind = iota
	elNodeReady
	elNotice
	elEvict
	elReclaim
	elScaleDown
	elWithdraw
	elTimer
	elArrival
	elScan
	elReturn
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
	// idx is the pod's place in elastic.pods.
	idx int
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
	queued   bool
	node     string
	gen      int
	runStart time.Duration
	// workFrom is when this run's progress began: when the pod started,
	// or for a gang's member when its gang's rendezvous did; -1 while it
	// waits for it, or does not run.
	workFrom  time.Duration
	waitStart time.Duration
	delay     time.Duration
	// firstDelay is delay when the pod's work first started (-1 until
	// then): its wait before it first ran, without the waits after reclaims.
	firstDelay time.Duration
	started    bool
	// nominated is the in-flight node the autoscaler launched for the pod.
	nominated string
	hourly    float64
	everSpot  bool
	fellBack  bool
	// movedBack: the pod was moved back to Spot once (returnToSpot).
	movedBack bool
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
	// running counts the members running; working is set once enough of
	// them have run together for the job's work to start (rendezvous), and
	// cleared when none runs.
	running int
	working bool
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
	// reclaimAt is when the cloud takes the node back (0: never drawn);
	// noticed is set from its notice on, when the node has left the
	// scheduler's cluster (the agent's taint) but is still billed.
	reclaimAt time.Duration
	noticed   bool
	// room is what nominated pods leave of an in-flight node.
	roomCPU, roomMem, roomGPU int64
	// nominees are the pods nominated to the node while it is in flight.
	nominees []*elPod
	// held counts the pods held at Permit on the node: they have reserved
	// room there, so the node is not empty. Cluster Autoscaler and
	// Karpenter count pods nominated or reserved on a node as using it;
	// removing it would leave a gang being placed without a member's node.
	held int
}

type elPool struct {
	// index is the pool's place in elastic.pools.
	index    int
	spec     *ElasticPool
	template *v1.Node
	live     int
	seq      int
	// atMaxSince is when live last reached the pool's max.
	atMaxSince time.Duration
	rng        *rand.Rand
	price      pricing.Price
	// size is what a node of the pool, empty, can give pods: CPU, memory
	// and GPUs (in thousandths), read once from the template.
	size pricing.Usage
}

// shapeOf numbers a pod's usage among the replay's pod shapes, working out
// elPool.mayHold of every pool for it the first time.
func (r *elastic) shapeOf(u pricing.Usage) int32 {
	if s, ok := r.shapes[u]; ok {
		return s
	}
	h := make([]bool, len(r.pools))
	for _, pool := range r.pools {
		h[pool.index] = pool.mayHold(u)
	}
	if r.shapes == nil {
		r.shapes = map[pricing.Usage]int32{}
	}
	s := int32(len(r.shapeUsage))
	r.shapes[u] = s
	r.shapeUsage, r.shapeHolds = append(r.shapeUsage, u), append(r.shapeHolds, h)
	return s
}

// podHot is what scans and retries read of every waiting pod, kept apart
// from elPod in one dense slice: with a queue of thousands they are bound
// by loading it, and most pods need no more than this.
type podHot struct {
	// due is when a scan must retry the pod because its wait for its
	// preferred capacity ends (its deadline, until retried); 0: never.
	due   time.Duration
	shape int32
	// mates is the pod's gang (elPod.mates); nominated, whether the pod is
	// nominated to a node (elPod.nominated).
	mates     *elGang
	nominated bool
	// verdict numbers the pod's pool verdict (poolFits, internFits), -1
	// before it has one; it is good until verdictUntil and, when
	// verdictRisk, while the risk model's generation is verdictGen.
	verdict      int32
	verdictRisk  bool
	verdictUntil time.Duration
	verdictGen   int
}

// setDue keeps podHot.due in step with the pod's deadline.
func (r *elastic) setDue(i int) {
	p := r.pods[i]
	r.hot[i].due = 0
	if p.deadline > 0 && !p.retriedDue {
		r.hot[i].due = p.deadline
	}
}

// mayHold is false when a node of the pool, empty, has no slot for the pod
// (spotrisk.SlotsIn: CPU, memory, whole GPUs or a GPU for a share):
// NodeResourcesFit would reject it there, so the filters need not run.
func (pool *elPool) mayHold(u pricing.Usage) bool {
	return spotrisk.SlotsIn(u, pool.size.CPUMilli, pool.size.MemoryBytes, pool.size.GPUMilli/gpu.MilliPerGPU) > 0
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
	// spotRisk is the profile's SpotRisk, which poolFits asks about a gang
	// member as the member of its gang that the scheduler places (asAlone).
	spotRisk *spotrisk.SpotRisk
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
	// verdicts numbers the distinct pool verdicts, verdictList holds them
	// (internFits).
	verdicts    map[string]int32
	verdictList [][]bool
	// shapes numbers the distinct pod usages (shapeOf); shapeUsage and
	// shapeHolds are each shape's usage and elPool.mayHold per pool.
	shapes     map[pricing.Usage]int32
	shapeUsage []pricing.Usage
	shapeHolds [][]bool
	// hot is podHot per pod, indexed like pods.
	hot []podHot
	// scanSlots is roomByPool's answer per pod shape, for scanRoom.
	scanSlots map[pricing.Usage]map[*elPool]int
	pools     []*elPool
	freed     []string
	// evictions are the victims of reclaim notices still running, by the
	// id their elEvict event carries in gen.
	evictions map[int][]evictee
	evictSeq  int
	// noticedUp counts the nodes under a reclaim notice, not yet removed.
	noticedUp int
	scanOn    bool
	arrived   int

	// roomChanges counts the runs that ended and the nodes that left a
	// pool (so that it may grow again); scannedChanges is roomChanges when
	// the last scan began.
	roomChanges, scannedChanges int

	// timerAt is when the earliest elTimer event in the queue is due; -1
	// when there is none.
	timerAt time.Duration
	// progress is when a pod last started, finished or was reclaimed.
	progress time.Duration
	// done is when a pod last finished or arrived; livelock is how long
	// after it the replay gives up on the pods still running (stalled).
	done, livelock time.Duration
	// movedAt is when each workload last moved back to Spot
	// (returnToSpot's cooldown).
	movedAt map[string]time.Duration
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
// lifetime, with their cloud's notice before it: from the notice the node
// takes no pods, its pods and their gang mates are evicted as Penny's agent
// or a drain handler would (ReclaimRule.Answered), lose the work since
// their last checkpoint and are resubmitted; the node is billed until it
// goes.
func ElasticReplay(ctx context.Context, o ElasticOptions) (*ElasticResult, error) {
	start := time.Now()
	sc := o.Scenario
	clk := newSimClock(simEpoch)
	r := &elastic{o: o, sc: sc, clock: clk, timerAt: -1, epoch: simEpoch,
		risk: pricing.NewRiskModel(pricing.RiskConfig{Clock: clk}), interrupted: pricing.NewInterrupted(0), runLengths: pricing.NewRunLengths(0), rule: sc.reclaimRule(o.Policy.Name),
		byUID: map[string]int{}, gangs: map[string]*elGang{}, nodes: map[string]*elNode{}, inflight: map[string]*elNode{}, up: map[string]*elNode{},
		res: &ElasticResult{Policy: o.Policy.Name, Seed: o.Seed, BillByCapacity: map[string]float64{}, NodeHoursByPool: map[string]float64{},
			BillByPool: map[string]float64{}, AllocatedByPool: map[string]float64{}, GPUHoursByPool: map[string]float64{}, HeldGPUHoursByPool: map[string]float64{}, HoursAtMaxByPool: map[string]float64{}, ByNamespace: map[string]*NamespaceCost{}, GPUHoursByClass: map[string]map[string]float64{}, LostGPUHoursByClass: map[string]map[string]float64{}}}
	deps := plugins.Deps{Prices: sc.catalog, Risk: r.risk, Clock: r.clock, Interrupted: r.interrupted, RunLengths: r.runLengths}
	prof, reg, err := o.Policy.Build(Run{Seed: o.Seed, Workload: TypicalWorkload(o.Trace), SchedulerConfig: o.SchedulerConfig, Deps: deps})
	if err != nil {
		return nil, err
	}
	classArgs, err := pennyClassArgs(o.SchedulerConfig)
	if err != nil {
		return nil, err
	}
	if err := r.setRanker(ctx, classArgs, deps); err != nil {
		return nil, err
	}
	for i := range sc.Pools {
		p := &sc.Pools[i]
		tpl, price, size, err := sc.poolShape(p)
		if err != nil {
			return nil, err
		}
		pool := &elPool{index: len(r.pools), spec: p, template: tpl, price: price, size: size,
			rng: rand.New(rand.NewPCG(o.Seed, uint64(i)+0x51ed))}
		r.pools = append(r.pools, pool)
		if p.capacity == pricing.Spot {
			r.risk.SetPrior(poolKey(p), price.Interruption)
		}
	}
	if build, ok := reg[spotrisk.Name]; ok {
		reg[spotrisk.Name] = func(ctx context.Context, obj k8sruntime.Object, h fwk.Handle) (fwk.Plugin, error) {
			pl, err := build(ctx, obj, h)
			if sr, ok := pl.(*spotrisk.SpotRisk); ok {
				r.spotRisk = sr
			}
			return pl, err
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
		ownedByJob(p)
		// GPU-hours count what the trace asked for, whatever the policy
		// has to ask for.
		gpus := podGPUs(p)
		sc.admit(p, o.Policy.Name)
		class, err := spotrisk.ClassOf(p, classArgs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		ep := &elPod{idx: i, tp: tp, pod: p, gang: gangKey(p), class: class, gpus: gpus, usage: pricing.PodUsage(p), work: tp.Duration, state: podWaiting, downSince: -1, workFrom: -1, firstDelay: -1}
		r.hot = append(r.hot, podHot{shape: r.shapeOf(ep.usage), verdict: -1})
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
			r.hot[i].mates = g
		}
		r.byUID[string(p.UID)] = i
		r.push(elEvent{at: tp.Arrival, kind: elArrival, pod: i})
		if tp.Withdraws {
			r.push(elEvent{at: tp.Withdraw, kind: elWithdraw, pod: i})
		}
	}
	r.res.PodsTotal = len(r.pods)
	r.livelock = StallLimit
	for _, p := range r.pods {
		r.livelock = max(r.livelock, LivelockRuns*p.work)
	}
	r.push(elEvent{at: time.Hour, kind: elSample})
	r.armReturns()
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
func (r *elastic) setRanker(ctx context.Context, spotArgs *spotrisk.Args, deps plugins.Deps) error {
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
		// penny-scheduler's expander ranks with its profile's SpotRisk: the
		// same args (restartOverhead, fallbackAfter, ...; pennyClassArgs)
		// and the run lengths it learns, which price an avoiding pod's
		// reclaims here too.
		x, err := spotrisk.NewExpander(ctx, spotArgs, spotrisk.Deps{Prices: deps.Prices, Risk: deps.Risk, Clock: deps.Clock, RunLengths: deps.RunLengths})
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
	return nil
}

// armTimer queues an elTimer event for the plugins' next timer. It runs
// before each event, after the last one's handling, which is when the
// plugins arm timers (a gang's backoff starts in a scheduling attempt):
// armed only as the next event began, a timer armed during an event fired
// as late as the event after it (the autoscaler's next scan, 30 s, while
// pods wait; the hourly sample when none does).
func (r *elastic) armTimer() {
	if at, ok := r.clock.nextEvent(r.epoch, r.now, r.timerAt); ok {
		r.timerAt = at
		r.push(elEvent{at: at, kind: elTimer})
	}
}

func (r *elastic) run(ctx context.Context) error {
	start, reported := time.Now(), time.Now()
	var last time.Duration
	for _, tp := range r.o.Trace.Pods {
		last = max(last, tp.Arrival)
	}
	for n := 0; ; n++ {
		r.armTimer()
		if r.q.Len() == 0 || r.over() {
			break
		}
		if r.o.Progress != nil && n%1024 == 0 && time.Since(reported) >= ProgressEvery {
			reported = time.Now()
			fmt.Fprintf(r.o.Progress, "policy %s: %.0f h of trace time (last arrival at %.0f h), %d of %d pods finished, %d waiting, %d nodes up, %.0f s\n",
				r.o.Policy.Name, r.now.Hours(), last.Hours(), r.res.PodsCompleted, len(r.pods), len(r.pending), r.live, time.Since(start).Seconds())
		}
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
			if p.state == podWithdrawn {
				// Deleted as it was created: its withdrawal came first at
				// this instant, and it never runs.
				break
			}
			p.waitStart = r.now
			r.setDeadline(ev.pod)
			err = r.try(ev.pod)
		case elDeparture:
			err = r.departure(ev)
		case elNodeReady:
			err = r.nodeReady(ev.node)
		case elNotice:
			err = r.notice(ev.node)
		case elEvict:
			err = r.evictBatch(ev)
		case elReclaim:
			err = r.reclaim(ev.node)
		case elScaleDown:
			err = r.scaleDown(ev)
		case elTimer:
			// The plugins' timers ran above.
		case elWithdraw:
			p := r.pods[ev.pod]
			// The trace deleted it, also one waiting to run again after a
			// reclaim: left pending, that one queued past its deletion and
			// then ran for no time, on a node that may have joined for it.
			if p.state == podWaiting {
				if p.started {
					p.delay += r.now - p.waitStart
					if p.downSince >= 0 && p.class.Work.Stateless {
						r.res.ServiceDowntimeHours += (r.now - p.downSince).Hours()
						p.downSince = -1
					}
				}
				p.state = podWithdrawn
				r.dropPending(ev.pod)
				r.unnominate(p)
				r.res.Withdrawn++
				err = r.e.Withdraw(p.pod)
				// Its gang no longer waits for it.
				if g := p.mates; g != nil && g.running > 0 {
					r.rendezvous(g)
				}
			}
		case elScan:
			r.scanOn = false
			err = r.scan()
		case elReturn:
			err = r.returnToSpot()
		case elSample:
			r.feedExposure()
			r.riskGen++
			// Samples go on while anything else may happen, and while
			// gang members hold nodes waiting for the rest of their gang,
			// which nothing may ever bring: stalled ends that replay.
			if r.q.Len() > 0 || !r.over() {
				r.push(elEvent{at: r.now + time.Hour, kind: elSample})
			}
		}
		if err != nil {
			return err
		}
		// Once the instant's capacity changes are done, retry waiting pods,
		// before an empty node's scale-down at the same instant: with a
		// scaleDownAfter of 0s a node that joined for a waiting pod was
		// removed before the pod was tried on it, and the replay ended
		// with the pod never scheduled.
		if len(r.freed) > 0 && (r.q.Len() == 0 || r.q[0].at > r.now || r.q[0].kind >= elScaleDown) {
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
	// Runs ended or nodes left since the autoscaler last looked at the pods
	// still waiting: its next scan (queued) may launch what they need. A
	// gang held back by a pool at its max for the last job running would
	// otherwise never run.
	if len(r.pending) > 0 && r.scanOn && r.scannedChanges < r.roomChanges {
		return false
	}
	// A node under a reclaim notice still counts in its pool until the
	// cloud takes it: then the pool may grow again, or replaces it.
	if len(r.pending) > 0 && r.noticedUp > 0 {
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

func (r *elastic) setDeadline(i int) {
	p := r.pods[i]
	p.pod.CreationTimestamp = metav1.NewTime(r.epoch.Add(r.now))
	p.deadline, p.retriedDue = 0, false
	if p.class.Waits() {
		p.deadline = r.now + p.class.FallbackAfter
	}
	r.setDue(i)
	// poolFits checks its verdict against the new deadline.
	r.hot[i].verdict = -1
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
		r.nodes[out.Node].held++
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

// settleAll settles held pods until none is left to settle: a member
// rejected releases its gang, which rejects the other members held.
func (r *elastic) settleAll() error {
	for {
		settled, err := r.e.SettleWaiting()
		if err != nil || len(settled) == 0 {
			return err
		}
		r.settle(settled)
	}
}

// settle records what became of pods held at Permit: bound, or back to
// waiting.
func (r *elastic) settle(settled []Settled) {
	for _, s := range settled {
		j := r.byUID[string(s.Pod.UID)]
		var heldOn *elNode
		if p := r.pods[j]; p.state == podHeld {
			heldOn = r.nodes[p.heldOn]
			heldOn.held--
		}
		if s.Node != "" {
			r.placed(j, s.Node)
		} else {
			r.pods[j].state = podWaiting
			r.enqueue(j)
			if s.Released != "" {
				r.freed = append(r.freed, s.Released)
			}
			r.maybeIdle(heldOn)
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
	p.state, p.node, p.runStart, p.started = podRunning, node, r.now, true
	r.unnominate(p)
	p.gen++
	p.hourly = n.price.HourlyFor(p.usage)
	if pricing.NodeCapacity(n.node).IsSpot() {
		p.everSpot = true
	}
	// Only SpotRisk makes a pod wait: under a policy without it nothing
	// falls back.
	if r.riskFilter && p.class.FellBack(pricing.NodeCapacity(n.node)) && !p.fellBack {
		p.fellBack = true
		r.res.Fallbacks++
	}
	if len(n.pods) == 0 {
		n.emptyGen++
	}
	n.pods[i] = true
	if g := p.mates; g != nil {
		g.running++
		r.rendezvous(g)
		return
	}
	r.work(i)
}

// rendezvous starts a gang's work once enough of its members run (its
// quorum): a distributed job's workers make no progress until all of them
// are up, so a member that starts early holds its node and waits, and that
// wait is queueing delay. Under PennyGang the members start together; under
// a scheduler that places them one by one (default, spot-first) the first
// hold their GPUs while the last wait for room.
func (r *elastic) rendezvous(g *elGang) {
	if !g.working {
		if g.running < r.quorum(g) {
			return
		}
		g.working = true
	}
	for _, j := range g.members {
		if q := r.pods[j]; q.state == podRunning && q.workFrom < 0 {
			q.delay += r.now - q.runStart
			r.work(j)
		}
	}
}

// quorum is how many of a gang's members must run for its work to start:
// its min member count (gang.Spec) where its labels give one, else all of
// them, less those withdrawn before they ran.
func (r *elastic) quorum(g *elGang) int {
	n := 0
	for _, j := range g.members {
		if r.pods[j].state != podWithdrawn {
			n++
		}
	}
	if p := r.pods[g.members[0]]; p.inGang && p.gangSpec.MinMember > 0 {
		n = min(n, int(p.gangSpec.MinMember))
	}
	return n
}

// work starts a pod's progress now; it departs when its work is done.
func (r *elastic) work(i int) {
	p := r.pods[i]
	p.workFrom = r.now
	if p.firstDelay < 0 {
		p.firstDelay = p.delay
	}
	r.push(elEvent{at: p.tp.DepartsBy(r.now, p.overhead+(p.work-p.saved)), kind: elDeparture, pod: i, gen: p.gen})
}

// progressOf is how long the pod's work has advanced in this run, restart
// included: 0 while it waits for its gang.
func (r *elastic) progressOf(p *elPod) time.Duration { return progressAt(p, r.now) }

// progressAt is progressOf at time at.
func progressAt(p *elPod, at time.Duration) time.Duration {
	if p.workFrom < 0 {
		return 0
	}
	return at - p.workFrom
}

// runEnd is why a run stops.
type runEnd int

const (
	// runDone: the pod finished (or the replay ended).
	runDone runEnd = iota
	// runReclaimed: a reclaim evicted it.
	runReclaimed
	// runMoved: it was moved back to Spot after a checkpoint (returnToSpot).
	runMoved
)

// stop ends a pod's run at now; a reclaim or a move keeps only kept of this
// run's progress.
func (r *elastic) stop(i int, end runEnd, kept time.Duration) {
	p := r.pods[i]
	n := r.nodes[p.node]
	ran := r.now - p.runStart
	cost := p.hourly * ran.Hours()
	r.res.AllocatedGPUHours += p.gpus * ran.Hours()
	r.res.AllocatedUSD += cost
	r.namespace(p).AllocatedUSD += cost
	if n != nil {
		r.res.AllocatedByPool[n.pool.spec.Name] += cost
		r.res.HeldGPUHoursByPool[n.pool.spec.Name] += float64(p.usage.GPUMilli) / gpu.MilliPerGPU * ran.Hours()
		addTo(r.res.GPUHoursByClass, string(p.class.Policy), string(n.pool.spec.capacity), p.gpus*ran.Hours())
	}
	if p.everSpot && p.class.Policy == spotrisk.Never && n != nil && pricing.NodeCapacity(n.node).IsSpot() {
		r.res.NeverOnSpotGPUHours += p.gpus * ran.Hours()
	}
	if p.movedBack && n != nil && pricing.NodeCapacity(n.node).IsSpot() {
		r.res.ReturnedGPUHours += p.gpus * ran.Hours()
	}
	if n != nil {
		delete(n.pods, i)
	}
	p.node = ""
	if p.workFrom < 0 {
		// It held its node waiting for its gang's work to start: queueing,
		// whether the replay's end or a reclaim (of its node or a peer's)
		// stops it.
		p.delay += ran
	}
	worked := r.progressOf(p)
	r.res.GangWaitGPUHours += p.gpus * (ran - worked).Hours()
	p.workFrom = -1
	if g := p.mates; g != nil {
		if g.running--; g.running == 0 {
			g.working = false
		}
	}
	if end == runDone {
		// What penny-scheduler learns from the training pods that succeed
		// (spotrisk.WatchRuns).
		if p.class.Workload == spotrisk.Training {
			r.runLengths.Observe(p.gpus, ran, r.epoch.Add(r.now))
		}
		// The restart a reclaim forced is lost work too.
		restart := min(worked, p.overhead)
		r.useful(p, p.gpus*(worked-restart).Hours())
		r.lose(p, n, p.gpus*restart.Hours())
		p.state = podDone
		return
	}
	kept = min(max(kept, 0), max(0, worked-p.overhead))
	p.saved += kept
	r.useful(p, p.gpus*kept.Hours())
	r.lose(p, n, p.gpus*(worked-kept).Hours())
	p.overhead = r.sc.RestartOverhead.Duration
	if end == runReclaimed {
		p.reclaimed++
	}
	p.gen++
}

func (r *elastic) departure(ev elEvent) error {
	p := r.pods[ev.pod]
	if p.state != podRunning || p.gen != ev.gen {
		return nil
	}
	node := p.node
	// A pod that finishes during its node's notice has left the scheduler's
	// cluster with the node.
	if n := r.nodes[node]; n == nil || !n.noticed {
		if err := r.e.Remove(p.pod); err != nil {
			return err
		}
	}
	r.stop(ev.pod, runDone, 0)
	r.res.PodsCompleted++
	r.progress, r.done = r.now, r.now
	r.roomChanges++
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
	// Whether the room may take a pod depends on its shape alone: asked once
	// per shape (0: not yet, 1: yes, 2: no) until the room changes.
	takes := make([]uint8, len(r.shapeUsage))
	for _, i := range append([]int(nil), r.pending...) {
		shape := r.hot[i].shape
		if takes[shape] == 0 {
			takes[shape] = 2
			if room.mayTake(r.shapeUsage[shape]) {
				takes[shape] = 1
			}
		}
		if takes[shape] == 2 {
			continue
		}
		p := r.pods[i]
		if p.state != podWaiting || unfit[member{p.gang, p.usage}] {
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
			clear(takes)
			ready = nil
		}
	}
	return nil
}

// gangFitsNoPool says whether pod i's gang needs more members placed at
// once than any pool its members pass the filters of (fits) could hold
// with all its max nodes up, and the most such a pool holds. Each node is
// counted with room for as many members as fit the least of their
// requests, so a gang it turns away is too large for certain.
func (r *elastic) gangFitsNoPool(i int, fits []bool) (int64, bool) {
	p := r.pods[i]
	least := r.pods[p.mates.members[0]].usage
	for _, j := range p.mates.members[1:] {
		least = leastOf(least, r.pods[j].usage)
	}
	most := int64(0)
	for _, pool := range r.pools {
		if fits[pool.index] {
			most = max(most, int64(pool.spec.Max)*spotrisk.SlotsIn(least, pool.size.CPUMilli, pool.size.MemoryBytes, pool.size.GPUMilli/gpu.MilliPerGPU))
		}
	}
	return most, most < int64(p.gangSpec.MinMember)
}
