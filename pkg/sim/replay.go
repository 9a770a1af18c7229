package sim

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// Replay plays a trace in trace time on a virtual clock: pods arrive at
// their creation time, run for their duration once placed, and leave. A pod
// that does not fit waits; like kube-scheduler's queue, it is tried again
// when a departure frees capacity, in arrival order. The plugins' timers (a
// gang's permit wait and backoff) run on the same clock, so a run does not
// depend on how fast the machine replays it. The replay reports the
// GPU-hours allocated, utilisation over time, each pod's queueing delay and
// the pods never scheduled.
//
// Seams for what comes next: a Fleet adds and removes nodes in trace time
// (an elastic fleet, Spot reclaims — the pods of a removed node are evicted
// and wait again), and a Pricer prices node-hours so the replay can report
// what the cluster cost.

// Fleet changes the cluster during a replay.
type Fleet interface {
	// Changes lists the node additions and removals, in any order.
	Changes() []FleetChange
}

// FleetChange adds a node or removes one at a point in trace time.
type FleetChange struct {
	At time.Duration
	// Add is the node to add; nil for a removal.
	Add *v1.Node
	// Remove names the node to remove.
	Remove string
	// Reason says why, for the report ("spot-reclaim", "scale-down").
	Reason string
}

// Pricer prices a node's time.
type Pricer interface {
	// HourlyPrice is what the node costs per hour at the given trace time.
	HourlyPrice(node *v1.Node, at time.Duration) float64
}

// ReplayOptions describes one replay.
type ReplayOptions struct {
	Nodes           []*v1.Node
	Trace           *Trace
	Policy          *Policy
	Seed            uint64
	SchedulerConfig []byte
	// SampleEvery is the step of the utilisation series (default 1h).
	SampleEvery time.Duration
	Parallelism int
	TieBreak    TieBreak
	NoMemo      bool
	Fleet       Fleet
	Pricer      Pricer
	// Reclaim decides what the pods of a reclaimed node keep of their work
	// (reclaim.go); nil: they start over, and gangs are not stopped.
	Reclaim *ReclaimRule
}

// ReplayResult is the JSON output of `penny sim replay`.
type ReplayResult struct {
	Kind    string  `json:"kind"`
	Command string  `json:"command,omitempty"`
	Nodes   string  `json:"nodes_file,omitempty"`
	Pods    string  `json:"pods_file,omitempty"`
	Policy  string  `json:"policy"`
	Seed    uint64  `json:"seed"`
	Machine Machine `json:"machine"`
	// HorizonHours is the trace time replayed.
	HorizonHours      float64 `json:"horizon_hours"`
	GPUCapacityMilli  int64   `json:"gpu_capacity_milli"`
	CapacityGPUHours  float64 `json:"capacity_gpu_hours"`
	AllocatedGPUHours float64 `json:"allocated_gpu_hours"`
	// MeanUtilisationPct is allocated over capacity GPU-hours.
	MeanUtilisationPct float64         `json:"mean_utilisation_pct"`
	Utilisation        []Sample        `json:"utilisation"`
	QueueDelay         DelayStats      `json:"queue_delay_seconds"`
	PodsTotal          int             `json:"pods_total"`
	PodsScheduled      int             `json:"pods_scheduled"`
	NeverScheduled     []string        `json:"never_scheduled"`
	Withdrawn          int             `json:"withdrawn"`
	Evictions          int             `json:"evictions"`
	Impossible         []ImpossiblePod `json:"impossible_pods"`
	// Cost is set when the replay had a Pricer.
	Cost *Cost `json:"cost,omitempty"`
	// Reclaim is set when the replay had a ReclaimRule.
	Reclaim     *ReclaimOutcome `json:"reclaim,omitempty"`
	PodOutcomes []PodOutcome    `json:"pods"`
	WallSeconds float64         `json:"wall_seconds"`
}

// Sample is the cluster at one point of trace time.
type Sample struct {
	Hours          float64 `json:"hours"`
	AllocatedPct   float64 `json:"allocated_gpu_pct"`
	Running        int     `json:"running"`
	Pending        int     `json:"pending"`
	CapacityMilli  int64   `json:"capacity_milli"`
	AllocatedMilli int64   `json:"allocated_milli"`
}

// DelayStats summarises queueing delays of the scheduled pods.
type DelayStats struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	// Delayed counts pods that waited at all.
	Delayed int `json:"delayed"`
}

// Cost is what the fleet cost over the replay.
type Cost struct {
	Fleet float64 `json:"fleet"`
	// PerAllocatedGPUHour is Fleet / AllocatedGPUHours.
	PerAllocatedGPUHour float64 `json:"per_allocated_gpu_hour"`
}

// PodOutcome is one pod's story.
type PodOutcome struct {
	Pod     string  `json:"pod"`
	Arrival float64 `json:"arrival_s"`
	// Start is when it was (last) placed, -1 if never.
	Start float64 `json:"start_s"`
	Delay float64 `json:"delay_s"`
	Node  string  `json:"node,omitempty"`
	// State: completed, running (at the end), pending (never scheduled),
	// withdrawn (deleted while pending, as in the trace).
	State   string `json:"state"`
	Evicted int    `json:"evicted,omitempty"`
}

type eventKind int

// Order of events at the same instant: capacity leaves and returns first,
// then arrivals, then samples see the result. The plugins' timers due at an
// instant run before its first event (replayer.timers); an evTimer only
// stops the replay at an instant that has nothing else.
const (
	evDeparture eventKind = iota
	evFleet
	evArrival
	evWithdraw
	evSample
	evTimer
	evWaitEnd
)

// live: the event changes the workload or the fleet (samples and timers do
// not).
func (k eventKind) live() bool { return k < evSample }

type event struct {
	at   time.Duration
	kind eventKind
	seq  int
	pod  int // trace index
	gen  int // placement generation, to drop stale departures
	fc   *FleetChange
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	if q[i].kind != q[j].kind {
		return q[i].kind < q[j].kind
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type replayPod struct {
	tp      *TracePod
	milli   int64
	bound   *v1.Pod
	start   time.Duration
	gen     int
	state   string
	evicted int
	// kept is the work an earlier placement left (a checkpoint); the pod
	// runs for the rest of its duration.
	kept time.Duration
	// freedSeen is how many capacity-freeing events the pod has seen since
	// it last failed; it only needs another try after one on a new node.
	freedSeen int
	// waitSeen: queueWaitEnd has looked at the pod since it was last
	// created (arrived, or was evicted).
	waitSeen bool
}

// Replay runs the trace.
func Replay(ctx context.Context, o ReplayOptions) (*ReplayResult, error) {
	if o.SampleEvery <= 0 {
		o.SampleEvery = time.Hour
	}
	clk := newSimClock(simEpoch)
	prof, reg, err := o.Policy.Build(Run{Seed: o.Seed, Workload: TypicalWorkload(o.Trace), SchedulerConfig: o.SchedulerConfig, Deps: plugins.Deps{Clock: clk}})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	e, err := NewEngine(ctx, EngineOptions{Profile: prof, Registry: reg, Nodes: o.Nodes, Seed: o.Seed, Parallelism: o.Parallelism, TieBreak: o.TieBreak,
		MemoizeFilters: o.Policy.NodeLocalFilters() && !o.NoMemo, KeepUnschedulable: true})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	r := &replayer{e: e, o: o, clock: clk, timerAt: -1, res: &ReplayResult{Kind: "replay", Policy: o.Policy.Name, Seed: o.Seed}}
	for _, pl := range e.Framework().ListPlugins().Filter.Enabled {
		r.spotWaits = r.spotWaits || pl.Name == spotrisk.Name
	}
	if r.spotWaits {
		if r.classArgs, err = spotRiskArgs(prof); err != nil {
			return nil, err
		}
	}
	if o.Reclaim != nil {
		r.res.Reclaim = &ReclaimOutcome{NoticeCheckpoints: o.Reclaim.NoticeCheckpoints, Kept: map[string]int{}}
	}
	r.capacity = GPUCapacityMilli(o.Nodes)
	r.nodeObjs = map[string]*v1.Node{}
	for _, n := range o.Nodes {
		r.nodeObjs[n.Name] = n
	}
	r.byUID = map[types.UID]int{}
	var all []*v1.Pod
	for i := range o.Trace.Pods {
		tp := &o.Trace.Pods[i]
		p := tp.Pod.DeepCopy()
		p.Spec.SchedulerName = prof.SchedulerName
		// SpotRisk dates a pod's wait for on-demand from its creation; one
		// without it waits afresh at each attempt and never falls back.
		p.CreationTimestamp = metav1.NewTime(simEpoch.Add(tp.Arrival))
		tp2 := *tp
		tp2.Pod = p
		r.pods = append(r.pods, &replayPod{tp: &tp2, milli: podGPUMilli(p), state: "pending", start: -1})
		r.byUID[p.UID] = i
		all = append(all, p)
		r.push(event{at: tp.Arrival, kind: evArrival, pod: i})
		if tp.Withdraws {
			r.push(event{at: tp.Withdraw, kind: evWithdraw, pod: i})
		}
	}
	r.res.Impossible = Impossible(o.Nodes, all)
	if o.Fleet != nil {
		for _, fc := range o.Fleet.Changes() {
			fc := fc
			r.push(event{at: fc.At, kind: evFleet, fc: &fc})
		}
	}
	r.push(event{at: 0, kind: evSample})
	if err := r.run(ctx); err != nil {
		return nil, err
	}
	r.finish()
	r.res.WallSeconds = time.Since(start).Seconds()
	return r.res, nil
}

type replayer struct {
	e        *Engine
	o        ReplayOptions
	res      *ReplayResult
	q        eventQueue
	seq      int
	now      time.Duration
	pods     []*replayPod
	byUID    map[types.UID]int
	pending  []int
	capacity int64
	alloc    int64
	nodeObjs map[string]*v1.Node

	// freed logs the nodes capacity returned to, in order; a pending pod
	// that failed after entry k only needs trying on freed[k:].
	freed []string

	// clock is trace time for the plugins, simEpoch at trace time zero.
	clock *simClock
	// timerAt is when the evTimer event in the queue is due; -1 when there
	// is none.
	timerAt time.Duration
	// live counts the queued events that are live(); lastChange is when the
	// last of them happened or a pod was last placed.
	live       int
	lastChange time.Duration
	// spotWaits: SpotRisk filters, and a pod it keeps waiting is retried
	// when its wait ends (queueWaitEnd).
	spotWaits bool
	// classArgs are the profile's SpotRisk args, which time those waits.
	classArgs *spotrisk.Args

	gpuMilliSeconds      float64
	capacityMilliSeconds float64
	cost                 float64
	lastAdvance          time.Duration
}

func (r *replayer) push(ev event) {
	ev.seq = r.seq
	r.seq++
	if ev.kind.live() {
		r.live++
	}
	heap.Push(&r.q, ev)
}

// advance integrates allocation, capacity and cost up to t.
func (r *replayer) advance(t time.Duration) {
	if t <= r.lastAdvance {
		return
	}
	dt := (t - r.lastAdvance).Seconds()
	r.gpuMilliSeconds += float64(r.alloc) * dt
	r.capacityMilliSeconds += float64(r.capacity) * dt
	if r.o.Pricer != nil {
		for _, n := range r.nodeObjs {
			r.cost += r.o.Pricer.HourlyPrice(n, r.lastAdvance) * dt / 3600
		}
	}
	r.lastAdvance = t
}

func (r *replayer) run(ctx context.Context) error {
	for {
		r.armTimer()
		if r.q.Len() == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ev := heap.Pop(&r.q).(event)
		if ev.kind == evSample && r.q.Len() == 0 {
			// Nothing left to happen: the replay ends at the last event.
			break
		}
		if ev.kind == evTimer && ev.at == r.timerAt {
			r.timerAt = -1
		}
		// Once no arrival, departure, withdrawal or fleet change is left,
		// only the plugins' timers may still let a pod in (a gang's backoff
		// ends); a gang admitted but never completed is released and
		// admitted again without end, so the replay gives up StallLimit
		// after anything last happened. Until a pod is placed, nothing
		// allocated or the fleet changed: the horizon stays where it was.
		idle := !ev.kind.live() && r.live == 0
		if idle && ev.at-r.lastChange > StallLimit {
			break
		}
		if ev.kind.live() {
			r.live--
			r.lastChange = ev.at
		}
		if !idle {
			r.advance(ev.at)
		}
		r.now = ev.at
		// A gang a timer releases gives its members' room back.
		freedBefore := len(r.freed)
		if err := r.timers(); err != nil {
			return err
		}
		switch ev.kind {
		case evArrival:
			if err := r.try(ev.pod); err != nil {
				return err
			}
		case evDeparture:
			p := r.pods[ev.pod]
			if p.bound == nil || p.gen != ev.gen {
				continue
			}
			if err := r.e.Remove(p.bound); err != nil {
				return err
			}
			r.freed = append(r.freed, p.bound.Spec.NodeName)
			r.alloc -= p.milli
			p.bound, p.state = nil, "completed"
		case evWithdraw:
			p := r.pods[ev.pod]
			if p.state == "pending" {
				p.state = "withdrawn"
				r.dropPending(ev.pod)
				if err := r.e.Withdraw(p.tp.Pod); err != nil {
					return err
				}
			}
		case evFleet:
			if err := r.fleet(ev.fc); err != nil {
				return err
			}
		case evSample:
			r.sample()
			r.push(event{at: ev.at + r.o.SampleEvery, kind: evSample})
		case evTimer:
			// The plugins' timers ran above.
		case evWaitEnd:
			if p := r.pods[ev.pod]; p.state == "pending" && p.gen == ev.gen {
				if err := r.try(ev.pod); err != nil {
					return err
				}
			}
		}
		// Once the instant's departures are done, retry the waiting pods.
		if len(r.freed) > freedBefore && (r.q.Len() == 0 || r.q[0].at > r.now || r.q[0].kind > evFleet) {
			if err := r.retryPending(); err != nil {
				return err
			}
		}
	}
	return nil
}

// timers runs the plugins' timers due by now: a gang's permit wait that runs
// out releases its members held at Permit, and a gang's backoff that ends
// asks for its members to be retried, which they are.
func (r *replayer) timers() error {
	if r.clock.advance(simEpoch.Add(r.now)) == 0 {
		return nil
	}
	return r.settle()
}

// armTimer queues an evTimer event for the plugins' next timer, so that the
// replay stops at that instant even when nothing else happens then.
func (r *replayer) armTimer() {
	if at, ok := r.clock.nextEvent(simEpoch, r.now, r.timerAt); ok {
		r.timerAt = at
		r.push(event{at: at, kind: evTimer})
	}
}

// try schedules a pod now; a pod that does not fit joins the queue.
func (r *replayer) try(i int) error {
	p := r.pods[i]
	out, err := r.e.Schedule(p.tp.Pod)
	if err != nil {
		return fmt.Errorf("pod %s (%s): %w", p.tp.Pod.Name, p.tp.Source, err)
	}
	switch {
	case out.Waiting:
		// Held at Permit (a gang waiting for its members): the framework
		// has it now, and another attempt would find it assumed already.
		r.dropPending(i)
	case out.Node != "":
		r.placed(i, out.Pod)
	default:
		r.enqueue(i)
		r.queueWaitEnd(i)
	}
	return r.settle()
}

// queueWaitEnd queues a retry of a pod that failed for when its wait under
// SpotRisk ends (for Spot capacity, or for on-demand capacity): the plugin
// arms that retry in PostFilter, which the engine does not run. The
// deadline is the plugin's (ClassOf with the profile's args), from the
// pod's creation; it is looked at once per creation.
func (r *replayer) queueWaitEnd(i int) {
	p := r.pods[i]
	if !r.spotWaits || p.waitSeen {
		return
	}
	p.waitSeen = true
	class, err := spotrisk.ClassOf(p.tp.Pod, r.classArgs)
	if err != nil || !class.Waits() {
		return
	}
	if end := p.tp.Pod.CreationTimestamp.Sub(simEpoch) + class.FallbackAfter; end > r.now {
		r.push(event{at: end, kind: evWaitEnd, pod: i, gen: p.gen})
	}
}

// settle binds the pods held at Permit that every plugin has allowed, sends
// the ones a plugin rejected back to the queue, and retries the pods a plugin
// asked to.
func (r *replayer) settle() error {
	settled, err := r.e.SettleWaiting()
	if err != nil {
		return err
	}
	for _, s := range settled {
		j := r.byUID[s.Pod.UID]
		if s.Node != "" {
			r.placed(j, s.Pod)
			continue
		}
		if s.Released != "" {
			r.freed = append(r.freed, s.Released)
		}
		r.enqueue(j)
	}
	// Pods a plugin asked to retry (Handle.Activate: the gang plugin lets
	// a gang's members in once the last has arrived) are retried now, as
	// kube-scheduler moves them to its active queue; waiting for capacity
	// to free would hold a complete gang on an idle fleet.
	for _, pod := range r.e.Activated() {
		if j, ok := r.byUID[pod.UID]; ok && slices.Contains(r.pending, j) {
			if err := r.try(j); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *replayer) enqueue(i int) {
	p := r.pods[i]
	p.freedSeen = len(r.freed)
	for _, j := range r.pending {
		if j == i {
			return
		}
	}
	r.pending = append(r.pending, i)
	sort.SliceStable(r.pending, func(a, b int) bool { return r.pods[r.pending[a]].tp.Arrival < r.pods[r.pending[b]].tp.Arrival })
}

func (r *replayer) dropPending(i int) {
	for k, j := range r.pending {
		if j == i {
			r.pending = append(r.pending[:k], r.pending[k+1:]...)
			return
		}
	}
}

func (r *replayer) placed(i int, bound *v1.Pod) {
	// Placed by a plugin's timer after the last event: the allocation
	// changes from now.
	r.advance(r.now)
	r.lastChange = r.now
	p := r.pods[i]
	r.dropPending(i)
	p.bound, p.state, p.start = bound, "running", r.now
	p.gen++
	r.alloc += p.milli
	r.push(event{at: p.tp.DepartsBy(r.now, p.tp.Duration-p.kept), kind: evDeparture, pod: i, gen: p.gen})
}

// retryPending tries the waiting pods in arrival order, each only if a node
// that gained capacity since its last try now passes its filters.
func (r *replayer) retryPending() error {
	queue := append([]int(nil), r.pending...)
	for _, i := range queue {
		p := r.pods[i]
		if p.state != "pending" || p.freedSeen >= len(r.freed) {
			continue
		}
		fits, err := r.e.FitsOn(p.tp.Pod, r.freed[p.freedSeen:])
		if err != nil {
			return err
		}
		if !fits {
			p.freedSeen = len(r.freed)
			continue
		}
		if err := r.try(i); err != nil {
			return err
		}
	}
	return nil
}

func (r *replayer) fleet(fc *FleetChange) error {
	if fc.Add != nil {
		if err := r.e.AddNode(fc.Add); err != nil {
			return err
		}
		r.nodeObjs[fc.Add.Name] = fc.Add
		r.capacity += GPUCapacityMilli([]*v1.Node{fc.Add})
		r.freed = append(r.freed, fc.Add.Name)
		return nil
	}
	n, ok := r.nodeObjs[fc.Remove]
	if !ok {
		return fmt.Errorf("fleet change at %v removes node %q, which is not in the cluster", fc.At, fc.Remove)
	}
	evicted, err := r.e.RemoveNode(fc.Remove)
	if err != nil {
		return err
	}
	delete(r.nodeObjs, fc.Remove)
	r.capacity -= GPUCapacityMilli([]*v1.Node{n})
	if r.o.Reclaim != nil {
		return r.reclaimed(fc, n, evicted)
	}
	for _, bp := range evicted {
		i := r.byUID[bp.UID]
		r.evict(r.pods[i])
		if err := r.try(i); err != nil {
			return err
		}
	}
	return nil
}

// evict takes a running pod off its node to wait again, as the pod its
// controller creates in its place: created now.
func (r *replayer) evict(p *replayPod) {
	r.alloc -= p.milli
	p.bound, p.state = nil, "pending"
	p.gen++
	p.evicted++
	r.res.Evictions++
	p.tp.Pod.CreationTimestamp = metav1.NewTime(simEpoch.Add(r.now))
	p.waitSeen = false
}

func (r *replayer) sample() {
	running := 0
	for _, p := range r.pods {
		if p.bound != nil {
			running++
		}
	}
	s := Sample{Hours: r.now.Hours(), Running: running, Pending: len(r.pending), CapacityMilli: r.capacity, AllocatedMilli: r.alloc}
	if r.capacity > 0 {
		s.AllocatedPct = 100 * float64(r.alloc) / float64(r.capacity)
	}
	r.res.Utilisation = append(r.res.Utilisation, s)
}

func (r *replayer) finish() {
	res := r.res
	// The replay ends at its last event or placement (advance); samples
	// taken while only the plugins' timers ran after it are dropped.
	r.now = r.lastAdvance
	for n := len(res.Utilisation); n > 0 && res.Utilisation[n-1].Hours > r.now.Hours(); n-- {
		res.Utilisation = res.Utilisation[:n-1]
	}
	if n := len(res.Utilisation); n == 0 || res.Utilisation[n-1].Hours < r.now.Hours() {
		r.sample()
	}
	rejected, _ := r.e.RejectWaiting("the replay ended before the pod's group was complete")
	for _, s := range rejected {
		r.enqueue(r.byUID[s.Pod.UID])
	}
	res.HorizonHours = r.now.Hours()
	res.GPUCapacityMilli = GPUCapacityMilli(r.o.Nodes)
	res.AllocatedGPUHours = r.gpuMilliSeconds / 1000 / 3600
	res.CapacityGPUHours = r.capacityMilliSeconds / 1000 / 3600
	if res.CapacityGPUHours > 0 {
		res.MeanUtilisationPct = 100 * res.AllocatedGPUHours / res.CapacityGPUHours
	}
	if r.o.Pricer != nil {
		res.Cost = &Cost{Fleet: r.cost}
		if res.AllocatedGPUHours > 0 {
			res.Cost.PerAllocatedGPUHour = r.cost / res.AllocatedGPUHours
		}
	}
	res.PodsTotal = len(r.pods)
	res.NeverScheduled = []string{}
	var delays []float64
	for _, p := range r.pods {
		o := PodOutcome{Pod: p.tp.Pod.Namespace + "/" + p.tp.Pod.Name, Arrival: p.tp.Arrival.Seconds(), Start: -1, State: p.state, Evicted: p.evicted}
		if p.start >= 0 {
			o.Start = p.start.Seconds()
			o.Delay = (p.start - p.tp.Arrival).Seconds()
			res.PodsScheduled++
			delays = append(delays, o.Delay)
			if p.bound != nil {
				o.Node = p.bound.Spec.NodeName
			}
		}
		switch p.state {
		case "pending":
			res.NeverScheduled = append(res.NeverScheduled, o.Pod)
		case "withdrawn":
			res.Withdrawn++
		}
		res.PodOutcomes = append(res.PodOutcomes, o)
	}
	res.QueueDelay = delayStats(delays)
}

func delayStats(d []float64) DelayStats {
	if len(d) == 0 {
		return DelayStats{}
	}
	sort.Float64s(d)
	var s DelayStats
	for _, v := range d {
		s.Mean += v / float64(len(d))
		if v > 0 {
			s.Delayed++
		}
	}
	// Nearest rank: the smallest delay that at least pct percent of the
	// pods did not exceed (rank ceil(pct x n / 100), in integers).
	q := func(pct int) float64 { return d[max(1, (pct*len(d)+99)/100)-1] }
	s.P50, s.P95, s.P99, s.Max = q(50), q(95), q(99), d[len(d)-1]
	return s
}

// Summary is the replay's result in a few lines.
func (res *ReplayResult) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s, seed %d: %d pods over %.0f hours of trace in %.1fs\n", res.Policy, res.Seed, res.PodsTotal, res.HorizonHours, res.WallSeconds)
	fmt.Fprintf(&b, "allocated %.0f of %.0f GPU-hours (%.1f%% mean utilisation)\n", res.AllocatedGPUHours, res.CapacityGPUHours, res.MeanUtilisationPct)
	fmt.Fprintf(&b, "queueing delay: %d of %d scheduled pods waited; mean %.0fs, p95 %.0fs, p99 %.0fs, max %.0fs\n",
		res.QueueDelay.Delayed, res.PodsScheduled, res.QueueDelay.Mean, res.QueueDelay.P95, res.QueueDelay.P99, res.QueueDelay.Max)
	fmt.Fprintf(&b, "never scheduled: %d; withdrawn while pending: %d; evictions: %d\n", len(res.NeverScheduled), res.Withdrawn, res.Evictions)
	b.WriteString(res.Reclaim.summary())
	if res.Cost != nil {
		fmt.Fprintf(&b, "fleet cost %.2f (%.3f per allocated GPU-hour)\n", res.Cost.Fleet, res.Cost.PerAllocatedGPUHour)
	}
	return b.String()
}

// Plot draws GPU allocation over trace time.
func (res *ReplayResult) Plot(path string) error {
	l := Line{Name: fmt.Sprintf("%s: allocated GPU (%.1f%% mean)", res.Policy, res.MeanUtilisationPct)}
	for _, s := range res.Utilisation {
		l.X = append(l.X, s.Hours/24)
		l.Y = append(l.Y, s.AllocatedPct)
	}
	top := 0.0
	for _, y := range l.Y {
		top = max(top, y)
	}
	// Scale to the data: a sparse trace would be a flat line on 0..100.
	return PlotLines(path, "GPU allocation during the replay", "trace time (days)", "allocated GPU (% of capacity)", []Line{l}, Axes{YMax: min(100, 1.1*top+0.1)})
}
