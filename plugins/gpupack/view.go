package gpupack

import (
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// view is the plugin's per-node device view. The scheduler's snapshot says
// which pods are on a node (bound, or assumed while their binding is in
// flight) but not which devices they hold: that comes from the
// penny.dev/gpu-assignment annotation of bound pods and, for pods this
// scheduler placed whose annotation it has not seen back yet, from its own
// reservations. A restarted scheduler has no reservations, but every pod it
// bound carries its annotation (written before the binding), so the view is
// rebuilt exactly from the pods.
//
// Concurrency: entries are rebuilt only in PreFilter, at the start of a
// scheduling cycle, under mu; Filter, PreScore and Score of the same cycle
// read them without a lock (the cycle is the only writer's goroutine, and
// the next cycle cannot start before they return), and so does Reserve once
// it has looked for a mark under mu. Reserve, and Filter in a pod-group
// cycle, build an entry they do not keep, under mu, where the node is
// marked. The binding goroutines (Unreserve, Bind) touch only reservations
// and marks, under mu.
type view struct {
	layouts   LayoutSource
	poolLabel string
	// notified: layouts says which nodes reported (a ReportNotifier), so
	// sync asks only those, and the nodes it polls, for their report.
	notified bool
	// reported are the nodes that reported since the last sync. They have
	// a lock of their own: the source adds them on its goroutine, which
	// must not wait for a cycle's sync.
	reportMu sync.Mutex
	reported map[string]struct{}
	// pods says which pods exist (the scheduler's pod informer): a node's
	// snapshot without a reserved pod settles its reservation only once the
	// pod is gone (see gone). Nil where the handle has no informers.
	pods corelisters.PodLister

	mu sync.Mutex
	// nodes are keyed by the snapshot's NodeInfo: the scheduler keeps one
	// per node for its lifetime and updates it in place (its generation
	// says when), so the key hashes a pointer rather than a name.
	nodes map[*framework.NodeInfo]*slot
	// byName holds the same slots by node name, for the marks (dirty),
	// which name their nodes: sync looks each mark up once, where looking
	// every node's name up in the marks hashed a thousand names per cycle
	// for the one node the last pod's Reserve marked.
	byName   map[string]*slot
	reserved map[types.UID]reservation
	dirty    map[string]struct{}
	epoch    uint64
}

// slot is a node's place in the view: its entry, and what sync reads and
// writes of every node in every cycle. It is apart from the entry, which a
// rebuild replaces, and allocated once per node, so that sync walks a
// thousand small slots rather than a thousand entries scattered over the
// heap: a cache miss per entry was most of sync's time, for entries most
// of which the cycle reads no further (Filter stops at enough feasible
// nodes).
type slot struct {
	*entry
	// gen is the NodeInfo's generation the entry was built from.
	gen   int64
	epoch uint64
	// marked: the node was marked (dirty) since the entry was built, so
	// sync builds it again.
	marked bool
	// polled: sync asks for the node's report in every cycle (see polls).
	polled bool
	// node is the entry's, for Filter, which reads nothing else of it on
	// a node the pod fits.
	node *packing.Node
}

// entry is one node's view.
type entry struct {
	// staticMIG: the node's GPUs can hold static MIG layouts, so a layout
	// reported for it is read; reportVer is the version of the report read
	// (0 for none).
	staticMIG bool
	reportVer uint64
	node      *packing.Node
	// unhealthy counts the GPUs held off because the node's agent reports
	// them unhealthy; asIfHealthy is node with them taken for healthy (nil
	// when none), for Filter to say when they are what keeps a pod off.
	unhealthy   int
	asIfHealthy *packing.Node
	pool        string
	// guessed counts GPU pods whose devices the view could not read (no
	// valid annotation and no reservation: placed by another scheduler) and
	// accounted first-fit, so that their capacity is never handed out twice.
	guessed int

	// What PreScore measured on the node for the cycle scoredFor, so that
	// Score, called once per node right after, only composes: measuring
	// in PreScore's pass reads the node while that pass has it in cache.
	scoredFor *cycleState
	parts     packing.Parts
	fits      bool
	// The node's GPU facts Score needs, copied so that it reads no more
	// than the entry.
	hasGPU      bool
	gpuMemoryGB int
}

type reservation struct {
	node      string
	namespace string
	name      string
	a         gpu.Assignment
	s         string
}

func newView(layouts LayoutSource, poolLabel string) *view {
	return &view{layouts: layouts, poolLabel: poolLabel, nodes: map[*framework.NodeInfo]*slot{}, byName: map[string]*slot{},
		reserved: map[types.UID]reservation{}, dirty: map[string]struct{}{}}
}

// sync brings every node's entry up to date with the cycle's snapshot, and
// forgets what it holds for nodes the snapshot no longer has.
func (v *view) sync(logger klog.Logger, nodes []fwk.NodeInfo) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.epoch++
	for name := range v.dirty {
		if sl := v.byName[name]; sl != nil {
			sl.marked = true
		}
	}
	if v.notified {
		v.reportMu.Lock()
		reported := v.reported
		v.reported = nil
		v.reportMu.Unlock()
		for name := range reported {
			if sl := v.byName[name]; sl != nil && !sl.marked && sl.hasGPU && v.reportVersion(name) != sl.reportVer {
				sl.marked = true
			}
		}
	}
	synced := 0
	for _, ni := range nodes {
		k, ok := ni.(*framework.NodeInfo)
		if !ok {
			continue // not the scheduler's own snapshot: entryFor builds it each time
		}
		sl := v.nodes[k]
		if sl == nil || sl.marked || sl.gen != ni.GetGeneration() || v.reportChanged(ni, sl) {
			gen := ni.GetGeneration()
			e := v.build(logger, ni, forSync, "")
			if sl == nil {
				sl = &slot{}
				v.nodes[k] = sl
			}
			*sl = slot{entry: e, gen: gen, epoch: sl.epoch, polled: v.polls(e), node: e.node}
			v.byName[e.node.Name] = sl
		}
		if sl.epoch != v.epoch {
			synced++
		}
		sl.epoch = v.epoch
	}
	// Every node of the snapshot was rebuilt above if it was marked, so a
	// mark left is for a node that is gone (a binding to it failed after
	// it left): it would never be read, or dropped.
	clear(v.dirty)
	if synced < len(v.nodes) {
		v.forgetGone()
	}
}

// forgetGone drops the entries of nodes the cycle's snapshot does not have,
// and the reservations on them: a node deleted while a pod was being bound
// to it is never rebuilt, which is where a reservation is otherwise
// dropped. The source forgets the reports it read for them too: Spot
// nodes come and go under new names, for the scheduler's lifetime. A node
// that comes back is built afresh from its pods. Callers hold mu.
func (v *view) forgetGone() {
	gone := map[string]bool{}
	for ni, sl := range v.nodes {
		if sl.epoch != v.epoch {
			gone[sl.node.Name] = true
			delete(v.nodes, ni)
			if v.byName[sl.node.Name] == sl {
				delete(v.byName, sl.node.Name)
			}
		}
	}
	// A node deleted and created again under its name has a new NodeInfo.
	for _, sl := range v.nodes {
		delete(gone, sl.node.Name)
	}
	if f, ok := v.layouts.(interface{ forget(node string) }); ok {
		for name := range gone {
			f.forget(name)
		}
	}
	if len(v.reserved) == 0 {
		return
	}
	for uid, r := range v.reserved {
		if gone[r.node] {
			delete(v.reserved, uid)
		}
	}
}

// reportChanged reports whether the report for a polled node is not the one
// its entry was built with. It reads the node's name only for a polled
// node: sync asks it of every node in every cycle, and the name is on the
// node object, which a cycle need not touch otherwise (a cache miss per
// node, most of sync's time on a thousand nodes).
func (v *view) reportChanged(ni fwk.NodeInfo, sl *slot) bool {
	return sl.polled && v.reportVersion(ni.Node().Name) != sl.reportVer
}

// polls says whether sync asks for the node's report in every cycle rather
// than only when the source says the node reported: every node with GPUs
// when the source does not say so, else the nodes whose report can be
// dropped under them (no report says so) and change their entry — those
// holding a reported MIG layout or unhealthy GPUs, which a node that is no
// longer known takes for healthy.
func (v *view) polls(e *entry) bool {
	return v.layouts != nil && e.hasGPU && (!v.notified || e.staticMIG || e.unhealthy > 0)
}

// reportVersion is the version of the node's report, 0 for none.
func (v *view) reportVersion(node string) uint64 {
	r, ok := v.layouts.Report(node)
	if !ok {
		return 0
	}
	return r.Version
}

// noteReport records that the node reported, for the next sync.
func (v *view) noteReport(node string) {
	v.reportMu.Lock()
	defer v.reportMu.Unlock()
	if v.reported == nil {
		v.reported = map[string]struct{}{}
	}
	v.reported[node] = struct{}{}
}

// entryFor returns the node's entry for this cycle. A NodeInfo the snapshot
// does not hold as is (preemption removing victims, nominated pods added)
// gets a view of its own, built now and not kept.
func (v *view) entryFor(logger klog.Logger, ni fwk.NodeInfo) *entry {
	if sl := v.synced(ni); sl != nil {
		return sl.entry
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.build(logger, ni, forCopy, "")
}

// synced is the node's slot when its entry is the one for this cycle, else
// nil.
func (v *view) synced(ni fwk.NodeInfo) *slot {
	if k, ok := ni.(*framework.NodeInfo); ok {
		// Synced this cycle: within one pod's cycle the snapshot does not
		// change, so the generation need not be read again (a pod-group
		// cycle changes it; Filter and Reserve read marked nodes afresh
		// there).
		if sl := v.nodes[k]; sl != nil && (sl.epoch == v.epoch || sl.gen == ni.GetGeneration()) {
			return sl
		}
	}
	return nil
}

// entryInGroupCycle returns the node's entry for Filter in kube-scheduler's
// pod-group cycle, where the snapshot and the reservations change between
// one PreFilter and the next Filter: the cycle reverts the members it
// reserved, and preemption then adds victims back to the snapshot and
// filters each member on its node again (asking which victims can stay).
// An entry kept from before would count the reverted members and miss the
// victims. Every node a member was reserved on is marked by the revert
// until the next PreFilter, so a marked node is read afresh and not kept.
func (v *view) entryInGroupCycle(logger klog.Logger, ni fwk.NodeInfo) *entry {
	return v.entryUnlessMarked(logger, ni, forCopy, "")
}

// entryToReserve returns the node's entry for Reserve. A node marked since
// the cycle's sync, by a reservation made or given back with no PreFilter
// since, is read afresh and not kept. That is how kube-scheduler's
// pod-group cycle (native PodGroups) runs: it reserves a group's members
// one after another on one snapshot, whose nodes keep their generation as
// members are assumed into it and forgotten, and reserves them all again
// for binding with no PreFilter between them, assumed in the cache where
// the snapshot does not show them yet.
//
// The entry leaves out the pod being reserved: the pod-group cycle assumes
// it into the snapshot before Reserve (when it reserves the members of the
// placement it chose, and when preemption asks which victims can stay), and
// counted there, with no devices known, it would be held on devices of its
// own guess and its requests taken from the node's free CPU and memory.
func (v *view) entryToReserve(logger klog.Logger, ni fwk.NodeInfo, pod types.UID) *entry {
	return v.entryUnlessMarked(logger, ni, forReserve, pod)
}

// entryUnlessMarked returns the node's entry, or, where the node is marked,
// one built for purpose without self and not kept.
func (v *view) entryUnlessMarked(logger klog.Logger, ni fwk.NodeInfo, purpose buildFor, self types.UID) *entry {
	v.mu.Lock()
	if _, marked := v.dirty[ni.Node().Name]; marked {
		defer v.mu.Unlock()
		return v.build(logger, ni, purpose, self)
	}
	v.mu.Unlock()
	return v.entryFor(logger, ni)
}

// buildFor says what an entry is built for.
type buildFor int

const (
	// forSync: the entry is kept, and the reservations it settles (their
	// pods have come back with the annotation, or are gone) are dropped.
	forSync buildFor = iota
	// forCopy: a NodeInfo the snapshot does not hold as is (preemption's
	// dry runs, nominated pods); only the reservations of the pods it
	// holds count.
	forCopy
	// forReserve: the node's reservations count whether or not the
	// snapshot shows their pods (see entryToReserve).
	forReserve
)

// build reads the node's devices from its pods, leaving out the pod self
// ("" for none) and what it requests. Callers hold mu.
func (v *view) build(logger klog.Logger, ni fwk.NodeInfo, purpose buildFor, self types.UID) *entry {
	keep := purpose == forSync
	node := ni.Node()
	e := &entry{pool: node.Labels[v.poolLabel]}
	if e.pool == "" {
		e.pool = node.Labels[gpu.LabelProduct]
	}
	dev, err := gpu.ReadNodeDevices(node)
	if err != nil {
		logger.Info("Node advertises GPUs the scheduler cannot use", "node", node.Name, "err", err)
	}
	e.staticMIG = !dev.OnDemand && dev.Model != nil && dev.Model.SupportsMIG()
	if v.layouts != nil && len(dev.GPUs) > 0 {
		if r, ok := v.layouts.Report(node.Name); ok {
			e.reportVer = r.Version
			numberAsReported(dev, r)
			if e.staticMIG {
				// The report says which GPUs are partitioned; the
				// advertised resources only say how many, and
				// NodeDevicesFor guessed the last ones.
				layout := r.Layout
				for i := range min(len(dev.GPUs), len(layout)) {
					// A GPU in MIG mode without instances (empty, not
					// nil) gives none: it was filled by geometry, with
					// instances that do not exist.
					var err error
					if layout[i] != nil {
						err = dev.SetLayout(i, layout[i])
					} else {
						err = dev.SetMIGMode(i, false)
					}
					if err != nil {
						logger.Info("Ignoring reported MIG layout", "node", node.Name, "gpu", i, "err", err)
					}
				}
			}
			e.unhealthy = holdUnhealthy(logger, node.Name, dev, r)
		}
	}
	present := map[types.UID]bool{}
	// Pods whose devices are unknown are held only once every known
	// assignment is in: a guess taken first could push a pod whose devices
	// are known off them, and the view would offer what it really holds.
	var unknown []*corev1.Pod
	var why []error
	var selfCPU, selfMem int64
	for _, pi := range ni.GetPods() {
		pod := pi.GetPod()
		if self != "" && pod.UID == self {
			r := pi.CalculateResource().Resource
			selfCPU, selfMem = r.GetMilliCPU(), r.GetMemory()
			continue
		}
		present[pod.UID] = true
		if r, ok := v.reserved[pod.UID]; ok && r.node == node.Name {
			if err := dev.Apply(r.a); err != nil {
				logger.Error(err, "Reserved devices no longer fit", "pod", klog.KObj(pod), "node", node.Name)
			}
			if keep && pod.Annotations[gpu.AnnotationAssignment] == r.s {
				delete(v.reserved, pod.UID)
			}
			continue
		}
		if _, err := dev.AddPod(pod); err != nil {
			unknown = append(unknown, pod)
			why = append(why, err)
		}
	}
	if purpose == forReserve {
		for uid, r := range v.reserved {
			if r.node == node.Name && !present[uid] && uid != self {
				if err := dev.Apply(r.a); err != nil {
					logger.Error(err, "Reserved devices no longer fit", "podUID", uid, "node", node.Name)
				}
			}
		}
	}
	for i, pod := range unknown {
		v.guess(logger, dev, pod, why[i])
		e.guessed++
	}
	if keep {
		for uid, r := range v.reserved {
			if r.node == node.Name && !present[uid] && v.gone(uid, r) {
				delete(v.reserved, uid)
			}
		}
	}
	alloc, req := ni.GetAllocatable(), ni.GetRequested()
	cpuFree, memFree := alloc.GetMilliCPU()-req.GetMilliCPU()+selfCPU, alloc.GetMemory()-req.GetMemory()+selfMem
	if e.unhealthy > 0 {
		healthy := dev.Clone()
		for i := range healthy.GPUs {
			healthy.GPUs[i].Unhealthy = false
		}
		e.asIfHealthy = packing.NewNode(node.Name, healthy, cpuFree, memFree, gpuMemoryGB(node))
	}
	e.node = packing.NewNode(node.Name, dev, cpuFree, memFree, gpuMemoryGB(node))
	e.hasGPU, e.gpuMemoryGB = e.node.HasGPU(), e.node.GPUMemoryGB
	return e
}

// numberAsReported gives a view that counted fewer GPUs than the node's
// agent numbers the agent's GPUs, where the GPUs it reports unhealthy are
// as many as the missing ones. Such a view took its count from allocatable
// nvidia.com/gpu (no nvidia.com/gpu.count label), from which the NVIDIA
// device plugin leaves out the GPUs it finds broken; numbered 0..k-1, it
// handed out a broken GPU's index (the annotation names NVML's) and never
// the last GPU's, and a pod on that one was held on a guess. Numbered as
// the agent does, the broken GPUs are held off instead (holdUnhealthy), so
// the healthy ones are still the count allocatable says. A shortfall the
// reported health does not explain (the partitioned GPUs of a MIG "mixed"
// node, a GPU the device plugin dropped and the agent finds healthy) says
// nothing of which GPUs are missing, and is left as it is.
func numberAsReported(dev *gpu.NodeDevices, r GPUReport) {
	missing := len(r.Layout) - len(dev.GPUs)
	if missing <= 0 || len(r.Layout) > gpu.MaxGPUsPerNode {
		return
	}
	for _, i := range r.Unhealthy {
		if i >= 0 && i < len(r.Layout) {
			missing--
		}
	}
	if missing == 0 {
		dev.GPUs = append(dev.GPUs, make([]gpu.Device, len(r.Layout)-len(dev.GPUs))...)
	}
}

// holdUnhealthy marks the GPUs the node's agent reports unhealthy, so that
// no new pod goes on them, and returns how many it marked. The pods on them
// stay: the scheduler evicts nobody.
//
// A view still with fewer GPUs than the agent numbers (see
// numberAsReported) took its count from allocatable nvidia.com/gpu, from
// which the device plugin may already have left the broken GPUs out: held
// off again, they could count twice, and the view's indices are not the
// agent's anyway.
func holdUnhealthy(logger klog.Logger, node string, dev *gpu.NodeDevices, r GPUReport) int {
	if len(r.Unhealthy) == 0 {
		return 0
	}
	if len(dev.GPUs) < len(r.Layout) {
		logger.V(4).Info("Node advertises fewer GPUs than its agent reports; leaving the unhealthy ones to the device plugin", "node", node, "gpus", len(dev.GPUs), "reported", len(r.Layout), "unhealthy", r.Unhealthy)
		return 0
	}
	n := 0
	for _, i := range r.Unhealthy {
		if i >= 0 && i < len(dev.GPUs) && !dev.GPUs[i].Unhealthy {
			dev.GPUs[i].Unhealthy = true
			n++
		}
	}
	if n > 0 {
		logger.V(4).Info("Keeping new pods off GPUs their agent reports unhealthy", "node", node, "gpus", r.Unhealthy)
	}
	return n
}

// gone reports whether the pod of a reservation its node's snapshot does
// not show is gone (deleted, or finished: the scheduler's informer leaves
// out terminated pods), so that the reservation is settled. Absence from
// the snapshot alone does not say so: kube-scheduler's pod-group preemption
// removes every pod of lower priority from the snapshot, the members' pods
// reserved but not yet bound among them, and runs PreFilter on it. Dropped
// there, a victim's reservation was lost for good: added back to ask which
// victims can stay, and in every cycle after, the pod was counted on
// devices of a first-fit guess, so a member fitted next to it on the GPU it
// holds (it was not evicted) and the next pods were offered that GPU. Its
// pod existing, a reservation goes only by Unreserve or its node going.
// The informer's store changes before the scheduler's cache is told, so a
// snapshot without a deleted pod never meets a lister that still has it.
// Without a lister (a handle without informers) absence is all there is.
// Callers hold mu.
func (v *view) gone(uid types.UID, r reservation) bool {
	if v.pods == nil {
		return true
	}
	pod, err := v.pods.Pods(r.namespace).Get(r.name)
	return err != nil || pod.UID != uid
}

// guess accounts a GPU pod whose devices are unknown on the first devices
// that fit, so that the capacity it holds is not offered again.
func (v *view) guess(logger klog.Logger, dev *gpu.NodeDevices, pod *corev1.Pod, why error) {
	r, err := gpu.ParsePodRequest(pod)
	if err != nil || r.IsZero() {
		return
	}
	a, err := dev.FirstFit(r)
	if err == nil {
		err = dev.Apply(a)
	}
	logger.V(2).Info("GPU pod without a usable device assignment; holding devices for it first-fit", "pod", klog.KObj(pod), "node", pod.Spec.NodeName, "reason", why, "assumed", a, "err", err)
}

// reserve holds a for the pod. The node is marked, so that it is read
// again before its next Reserve or cycle: the entry Reserve chose from does
// not hold a.
func (v *view) reserve(pod *corev1.Pod, node string, a gpu.Assignment) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reserved[pod.UID] = reservation{node: node, namespace: pod.Namespace, name: pod.Name, a: a, s: a.String()}
	v.dirty[node] = struct{}{}
}

func (v *view) unreserve(uid types.UID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if r, ok := v.reserved[uid]; ok {
		delete(v.reserved, uid)
		v.dirty[r.node] = struct{}{}
	}
}

// each calls fn for every node's entry, under the lock (for metrics).
func (v *view) each(fn func(*entry)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, sl := range v.nodes {
		fn(sl.entry)
	}
}

// gpuMemoryGB reads GPU feature discovery's nvidia.com/gpu.memory (MiB).
func gpuMemoryGB(node *corev1.Node) int {
	if s, ok := node.Labels[gpu.LabelMemory]; ok {
		if mib, err := strconv.Atoi(s); err == nil && mib > 0 {
			return mib / 1024
		}
	}
	return 0
}
