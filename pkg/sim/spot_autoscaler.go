package sim

// The elastic fleet's autoscaler: free room, the periodic scan, scale-up
// for pods and gangs, node readiness and scale-down.

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

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
	r.scannedChanges = r.roomChanges
	r.scanning, r.scanRoom = true, nil
	defer func() { r.scanning, r.scanRoom, r.scanSlots = false, nil, nil }()
	// The autoscaler turns a pod away at once when every pool that may
	// still grow is too small for its shape or fails its verdict (still
	// good) from the filters, and no node in flight has room for it (for a
	// gang's member: no node is in flight at all, and the member counts as
	// the gang's look this scan). Unless it is due, the scan need not load
	// such a pod. (Pools only fill during a scan.)
	shapeOpen := make([]bool, len(r.shapeHolds))
	for s, holds := range r.shapeHolds {
		shapeOpen[s] = r.mayGrow(holds)
	}
	verdictOpen := r.openVerdicts()
	turnedAway := func(h *podHot) bool {
		if h.due > 0 && r.now >= h.due {
			return false
		}
		if shapeOpen[h.shape] && (h.verdict < 0 || r.now >= h.verdictUntil || h.verdictRisk && h.verdictGen != r.riskGen || verdictOpen.open(h.verdict)) {
			return false
		}
		if h.mates != nil {
			if len(r.inflight) > 0 {
				return false
			}
			if !h.nominated {
				h.mates.scanned = r.scans
			}
			return true
		}
		u := r.shapeUsage[h.shape]
		for _, n := range r.inflight {
			if n.roomCPU >= u.CPUMilli && n.roomMem >= u.MemoryBytes && n.roomGPU >= u.GPUMilli {
				return false
			}
		}
		return true
	}
	for _, i := range append([]int(nil), r.pending...) {
		if fastScan && turnedAway(&r.hot[i]) {
			continue
		}
		p := r.pods[i]
		if p.state != podWaiting {
			continue
		}
		if p.deadline > 0 && r.now >= p.deadline && !p.retriedDue {
			p.retriedDue = true
			r.setDue(i)
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

// mayGrow says whether a pool marked in pools is below its max.
func (r *elastic) mayGrow(pools []bool) bool {
	for _, pool := range r.pools {
		if pools[pool.index] && pool.live < pool.spec.Max {
			return true
		}
	}
	return false
}

// openVerdicts says, for a scan, which pool verdicts leave a pool that may
// grow. Verdicts are read as the scan began, except those first seen during
// it: the first member of a gang that a scan asks the autoscaler for gets
// its mates' verdicts too (autoscale), and a risk model that learned since
// they were last worked out may give one no pod had before.
type openVerdicts struct {
	r    *elastic
	seen []bool
}

func (r *elastic) openVerdicts() *openVerdicts {
	o := &openVerdicts{r: r, seen: make([]bool, 0, len(r.verdictList))}
	for _, fits := range r.verdictList {
		o.seen = append(o.seen, r.mayGrow(fits))
	}
	return o
}

func (o *openVerdicts) open(v int32) bool {
	for int(v) >= len(o.seen) {
		o.seen = append(o.seen, o.r.mayGrow(o.r.verdictList[len(o.seen)]))
	}
	return o.seen[v]
}

const scanEvery = 30 * time.Second

// fastScan lets a scan pass over pods it would turn away at once (scan);
// tests turn it off to check that it changes nothing.
var fastScan = true

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
			if r.hot[i].due > 0 {
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
	alone := asAlone(p.pod)
	fits, err := r.e.FitsTemplates(alone, tpls)
	if err != nil {
		return nil, err
	}
	if alone != p.pod && r.riskFilter && r.spotRisk != nil {
		// SpotRisk weighs a gang member's Spot risk for the whole gang (a
		// reclaim of any member's node restarts them all), in its Filter
		// and in the gang plugin's admission (Excludes): a member alone
		// would count Spot pools usable that the gang is kept off.
		excludes := r.spotRisk.Excludes(p.pod)
		for k := range fits {
			fits[k] = fits[k] && excludes != nil && excludes(tpls[k]) == ""
		}
	}
	var id int32
	p.fits, id = r.internFits(fits)
	p.fitsFor, p.fitsWaited, p.fitsGen = p.deadline, waited, r.riskGen
	// The same, for a scan's look at the pod (podHot): the verdict holds
	// until the pod's wait ends, if it had not, and for a pod that follows
	// the risk model, until the risk model learns more.
	h := &r.hot[i]
	h.verdict, h.verdictUntil, h.verdictGen = id, time.Duration(math.MaxInt64), r.riskGen
	if p.deadline > 0 && !waited {
		h.verdictUntil = p.deadline
	}
	h.verdictRisk = r.riskFilter && p.class.FollowsRisk()
	return fits, nil
}

// internFits returns the one copy of a pool verdict that every pod with the
// same verdict shares: a scan reads the verdicts of thousands of waiting
// pods, and a few shared slices stay in cache where one per pod did not.
// The copy's number indexes r.verdictList.
func (r *elastic) internFits(fits []bool) ([]bool, int32) {
	key := make([]byte, len(fits))
	for k, ok := range fits {
		if ok {
			key[k] = 1
		}
	}
	if id, ok := r.verdicts[string(key)]; ok {
		return r.verdictList[id], id
	}
	if r.verdicts == nil {
		r.verdicts = map[string]int32{}
	}
	id := int32(len(r.verdictList))
	r.verdicts[string(key)] = id
	r.verdictList = append(r.verdictList, fits)
	return fits, id
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
		r.nominateOn(p, "")
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
		if !r.shapeHolds[r.hot[m].shape][pool.index] {
			return false
		}
	}
	return true
}

// options pairs each template with the pod's peers there: the other pods
// that pass their filters on the template, i.e. the workload that could fill
// a new node of that pool. Waiting pods count whatever their Spot policy,
// as Cluster Autoscaler hands penny-scheduler's expander every pending pod
// an option helps and BestOptions takes all of them as each one's peers
// (until 2026-12-02 only those of the pod's own policy counted, and a burst
// of services and batch jobs got a node sized for each policy's part).
// Running pods count for services only, and only running services of the
// pod's Spot policy (spotrisk.Class.LongLived), as BestOptions adds them;
// waiting ones first, then the most recently started.
func (r *elastic) options(i int, pools []*elPool) ([]spotrisk.Option, error) {
	opts := make([]spotrisk.Option, len(pools))
	for k, pool := range pools {
		opts[k] = spotrisk.Option{Node: pool.template, Peers: []pricing.Usage{}}
	}
	self := r.pods[i]
	var cand []int
	for _, j := range r.pending {
		if q := r.pods[j]; j != i && q.state == podWaiting {
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
		if pool.live < pool.spec.Max && r.shapeHolds[r.hot[i].shape][pool.index] {
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

// leastOf is the least of two usages, resource by resource: a member shaped
// like it fits wherever any member of the gang does.
func leastOf(a, b pricing.Usage) pricing.Usage {
	return pricing.Usage{CPUMilli: min(a.CPUMilli, b.CPUMilli), MemoryBytes: min(a.MemoryBytes, b.MemoryBytes), GPUMilli: min(a.GPUMilli, b.GPUMilli)}
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
			least = leastOf(least, u)
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
// What else the gang changes, SpotRisk's verdict (the gang's size in its
// expected loss, its workload's reclaims), poolFits asks of the pod itself.
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
	r.nominateOn(p, n.name)
	n.nominees = append(n.nominees, p)
	n.roomCPU -= cpu
	n.roomMem -= mem
	n.roomGPU -= gpuMilli
}

// nominateOn sets the node a pod is nominated to ("" for none), here and in
// podHot.
func (r *elastic) nominateOn(p *elPod, node string) {
	p.nominated = node
	r.hot[p.idx].nominated = node != ""
}

// unnominate takes back a pod's nomination: the pod runs elsewhere, or its
// owner deleted it. A node still on its way has the room again for the next
// pod, as Cluster Autoscaler counts an upcoming node without the pods the
// scheduler placed elsewhere.
func (r *elastic) unnominate(p *elPod) {
	if n := r.nodes[p.nominated]; n != nil && !n.ready && !n.removed {
		cpu, mem, gpuMilli := requests(p)
		n.roomCPU += cpu
		n.roomMem += mem
		n.roomGPU += gpuMilli
		n.nominees = slices.DeleteFunc(n.nominees, func(q *elPod) bool { return q == p })
	}
	r.nominateOn(p, "")
}

func requests(p *elPod) (cpu, mem, gpuMilli int64) {
	return p.usage.CPUMilli, p.usage.MemoryBytes, p.usage.GPUMilli
}

// launch starts a node of the pool: at once for the pools' minimum at the
// start, after the provisioning delay otherwise.
func (r *elastic) launch(pool *elPool, now bool) error {
	name := fmt.Sprintf("%s-%d", pool.spec.Name, pool.seq)
	pool.seq++
	r.setLive(pool, pool.live+1)
	n := &elNode{name: name, pool: pool, node: r.sc.node(pool.spec, name), price: pool.price, launched: r.now, pods: map[int]bool{}}
	n.roomCPU, n.roomMem, n.roomGPU = pool.size.CPUMilli, pool.size.MemoryBytes, pool.size.GPUMilli
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
			r.nominateOn(p, "")
		}
	}
	n.nominees = nil
	if mttr := n.pool.spec.MeanTimeToReclaim.Duration; mttr > 0 {
		// A life past what a Duration holds (a mean of a million hours
		// draws some) is no reclaim in any replay.
		if life := n.pool.rng.ExpFloat64() * float64(mttr); life < float64(math.MaxInt64-r.now) {
			// The cloud warns the node's notice before it takes the node
			// (at once, for a node it takes back sooner).
			n.reclaimAt = r.now + time.Duration(life)
			r.push(elEvent{at: n.reclaimAt, kind: elReclaim, node: name})
			if at := n.reclaimAt - r.rule.notice(n.node); at > r.now {
				r.push(elEvent{at: at, kind: elNotice, node: name})
			} else {
				// The cloud takes it back within its notice of joining: the
				// agent taints it as it starts, before any pod is placed.
				return r.notice(name)
			}
		}
	}
	r.freed = append(r.freed, name)
	r.maybeIdle(n)
	return nil
}

// maybeIdle starts a node's scale-down countdown when it is empty: no pod
// runs on it and none is held at Permit there.
func (r *elastic) maybeIdle(n *elNode) {
	// A node under a reclaim notice goes with the reclaim.
	if n == nil || n.removed || n.noticed || !n.ready || len(n.pods) > 0 || n.held > 0 {
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
	if n == nil || n.removed || n.noticed || len(n.pods) > 0 || n.held > 0 || n.emptyGen != ev.gen || n.pool.live <= n.pool.spec.Min {
		return nil
	}
	if _, err := r.e.RemoveNode(n.name); err != nil {
		return err
	}
	r.retire(n)
	r.res.ScaleDowns++
	return nil
}

// setLive changes how many nodes of the pool are up or on their way, and
// counts the time the pool spends at its max.
func (r *elastic) setLive(pool *elPool, live int) {
	switch limit := pool.spec.Max; {
	case pool.live < limit && live >= limit:
		pool.atMaxSince = r.now
	case pool.live >= limit && live < limit:
		r.res.HoursAtMaxByPool[pool.spec.Name] += (r.now - pool.atMaxSince).Hours()
	}
	if live < pool.live {
		r.roomChanges++
	}
	pool.live = live
}

// retire bills a node up to now and takes it out of the fleet.
func (r *elastic) retire(n *elNode) {
	r.feedNode(n)
	hours := (r.now - n.launched).Hours()
	r.res.BillUSD += hours * n.price.NodeHourly
	r.res.BillByCapacity[string(n.pool.spec.capacity)] += hours * n.price.NodeHourly
	r.res.NodeHoursByPool[n.pool.spec.Name] += hours
	r.res.GPUHoursByPool[n.pool.spec.Name] += hours * float64(n.pool.size.GPUMilli) / gpu.MilliPerGPU
	r.res.BillByPool[n.pool.spec.Name] += hours * n.price.NodeHourly
	n.removed = true
	if n.noticed {
		r.noticedUp--
	}
	delete(r.up, n.name)
	delete(r.inflight, n.name)
	r.setLive(n.pool, n.pool.live-1)
	r.live--
}
