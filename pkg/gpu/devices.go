package gpu

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// The device view: one node's GPUs, one entry per physical GPU (the index is
// the device index). Aggregate counters cannot place shares: two pods asking
// for 600 milli each do not fit on a node with 500 free on each of two GPUs,
// although the node has 1000 free in total. Whole GPUs, shares and MIG
// instances all draw on the same devices, and only this view sees that.
//
// A NodeDevices is a plain value with no locks: callers that share one across
// goroutines clone it (Clone is one allocation per GPU with MIG instances and
// one for the GPU list). Queries (Fits, FreeMilli, WholeFree) do not allocate,
// so Filter and Score can call them for every node of every pod.

// Device is one GPU as the scheduler accounts for it.
type Device struct {
	// MIGMode says the GPU is partitioned: it takes MIG instances only.
	// Otherwise it takes whole-GPU pods and shares only.
	MIGMode bool
	// UsedMilli is what whole-GPU pods (1000) and shares (1..999) hold.
	UsedMilli int64
	// MIG lists the GPU instances pods hold on a MIG-mode GPU, at their
	// memory-slice offsets.
	MIG []Placement
	// Layout, when not nil, is the MIG-mode GPU's fixed partition as the
	// node reports it (see static.go): instances come from it only, and
	// from none when it is empty. Never changed in place.
	Layout []Placement
	// Unhealthy: the node's agent reports the GPU broken (a critical XID,
	// uncorrectable ECC, lost from the bus). It takes no new pod, but the
	// pods it holds stay accounted on it (Apply, Release), since nobody
	// evicts them and their devices must not be offered twice once it
	// recovers.
	Unhealthy bool
}

// NodeDevices is one node's GPUs.
type NodeDevices struct {
	// Product is the node's nvidia.com/gpu.product label.
	Product string
	// Model is the known model for Product, nil when pkg/gpu does not know it
	// (such a node has no MIG geometry, so it takes no MIG requests).
	Model *Model
	// GPUs are the devices, indexed by device index.
	GPUs []Device
	// OnDemand says the node partitions its GPUs as pods ask (see
	// static.go): a GPU nobody holds can take a MIG instance, which puts it
	// in MIG mode until its last instance is released.
	OnDemand bool
}

// NewNodeDevices returns idle GPUs of the given product: whole ones first,
// then migGPUs in MIG mode (none when the model has no MIG geometry).
func NewNodeDevices(product string, whole, migGPUs int) *NodeDevices {
	m, _ := LookupModel(product)
	if m == nil || !m.SupportsMIG() {
		whole, migGPUs = whole+migGPUs, 0
	}
	n := &NodeDevices{Product: product, Model: m, GPUs: make([]Device, whole+migGPUs)}
	for i := whole; i < len(n.GPUs); i++ {
		n.GPUs[i].MIGMode = true
	}
	return n
}

// MaxGPUsPerNode bounds the GPUs the view believes a node has: far more
// than any server holds, so that a label or resource no node could have
// sizes no memory.
const MaxGPUsPerNode = 1 << 10

// NodeDevicesFor reads a node's GPUs from the labels GPU feature discovery
// sets and from its allocatable resources. The GPU count is
// nvidia.com/gpu.count, else allocatable nvidia.com/gpu, else allocatable
// penny.dev/gpu-milli / 1000. On a node with MIG strategy "mixed" the device
// plugin advertises only the non-MIG GPUs as nvidia.com/gpu: those come
// first, the rest are in MIG mode and take instances wherever the geometry
// allows (the view does not hold a node to a fixed layout). All GPUs start
// idle; add the pods with AddPod. A source that is not a GPU count is
// skipped (ReadNodeDevices says which).
func NodeDevicesFor(node *corev1.Node) *NodeDevices {
	n, _ := ReadNodeDevices(node)
	return n
}

// ReadNodeDevices is NodeDevicesFor, and an error naming each label or
// resource it skipped because it is not a GPU count in 0..MaxGPUsPerNode.
func ReadNodeDevices(node *corev1.Node) (*NodeDevices, error) {
	var errs []error
	bad := func(what string, v any) {
		errs = append(errs, fmt.Errorf("node %s: %s %v is not a GPU count in 0..%d; it is ignored, so correct or remove it", node.Name, what, v, MaxGPUsPerNode))
	}
	count := 0
	if s, ok := node.Labels[LabelCount]; ok {
		if n, err := strconv.Atoi(s); err != nil || n < 0 || n > MaxGPUsPerNode {
			bad("label "+LabelCount, strconv.Quote(s))
		} else {
			count = n
		}
	}
	whole := -1
	if q, ok := node.Status.Allocatable[ResourceGPU]; ok {
		if q.Sign() < 0 || q.CmpInt64(MaxGPUsPerNode) > 0 { // Value wraps past an int64
			bad("allocatable "+string(ResourceGPU), q.String())
		} else {
			whole = int(q.Value())
		}
	}
	if count == 0 {
		count = max(whole, 0)
	}
	if count == 0 {
		if q, ok := node.Status.Allocatable[ResourceGPUMilli]; ok {
			if q.Sign() < 0 || q.CmpInt64((MaxGPUsPerNode+1)*MilliPerGPU) >= 0 {
				bad("allocatable "+string(ResourceGPUMilli), q.String())
			} else {
				count = int(q.Value() / MilliPerGPU)
			}
		}
	}
	err := errors.Join(errs...)
	if node.Labels[LabelMIGPartitioning] == MIGOnDemand {
		n := NewNodeDevices(node.Labels[LabelProduct], count, 0)
		n.OnDemand = n.Model != nil && n.Model.SupportsMIG()
		return n, err
	}
	if node.Labels[LabelMIGStrategy] != "mixed" {
		return NewNodeDevices(node.Labels[LabelProduct], count, 0), err
	}
	whole = min(max(whole, 0), count)
	return NewNodeDevices(node.Labels[LabelProduct], whole, count-whole), err
}

// Clone returns a deep copy that shares nothing with n.
func (n *NodeDevices) Clone() *NodeDevices {
	c := *n
	c.GPUs = make([]Device, len(n.GPUs))
	copy(c.GPUs, n.GPUs)
	for i := range c.GPUs {
		if len(c.GPUs[i].MIG) > 0 {
			c.GPUs[i].MIG = append([]Placement(nil), c.GPUs[i].MIG...)
		}
	}
	return &c
}

// FreeMilli is what a share or whole-GPU pod could still get on GPU i: 0 on
// a GPU in MIG mode or unhealthy.
func (n *NodeDevices) FreeMilli(i int) int64 {
	d := &n.GPUs[i]
	if d.MIGMode || d.Unhealthy {
		return 0
	}
	return MilliPerGPU - d.UsedMilli
}

// TotalFreeMilli sums FreeMilli over the node's GPUs.
func (n *NodeDevices) TotalFreeMilli() int64 {
	var t int64
	for i := range n.GPUs {
		t += n.FreeMilli(i)
	}
	return t
}

// TotalUsedMilli is what pods hold on the node, MIG instances counted by
// their compute slices (sevenths of a GPU).
func (n *NodeDevices) TotalUsedMilli() int64 {
	var t int64
	for i := range n.GPUs {
		t += n.usedMilli(i)
	}
	return t
}

func (n *NodeDevices) usedMilli(i int) int64 {
	d := &n.GPUs[i]
	if !d.MIGMode {
		return d.UsedMilli
	}
	return int64(n.migCompute(i)) * MilliPerGPU / ComputeSlices
}

// WholeFree counts the GPUs a whole-GPU pod could take: healthy, not in MIG
// mode and held by nobody.
func (n *NodeDevices) WholeFree() int {
	c := 0
	for i := range n.GPUs {
		if !n.GPUs[i].MIGMode && n.GPUs[i].UsedMilli == 0 && !n.GPUs[i].Unhealthy {
			c++
		}
	}
	return c
}

// Fits reports whether the request can be placed on the node's devices now.
func (n *NodeDevices) Fits(r Request) bool {
	switch {
	case r.GPUs > 0:
		return int64(n.WholeFree()) >= r.GPUs
	case r.Milli > 0:
		for i := range n.GPUs {
			if n.FreeMilli(i) >= r.Milli {
				return true
			}
		}
		return false
	case len(r.MIG) > 0:
		_, err := n.FirstFit(r)
		return err == nil
	}
	return true
}

// Slot is one device a pod holds: a whole GPU (Milli 1000), a share of one
// (Milli 1..999) or a MIG instance (MIG set, Milli 0).
type Slot struct {
	GPU   int
	Milli int64
	MIG   Placement
}

// Assignment is the devices chosen for one pod. Its String form is the value
// of the pod annotation penny.dev/gpu-assignment (see ParseAssignment).
type Assignment []Slot

// FirstFit assigns the request to the lowest-indexed devices that fit, which
// is what a device plugin without Penny's advice would do. MIG instances go
// to the lowest free offset of the lowest-indexed GPU.
func (n *NodeDevices) FirstFit(r Request) (Assignment, error) {
	switch {
	case r.IsZero():
		return nil, nil
	case r.GPUs > 0:
		return n.wholeGPUs(r.GPUs)
	case r.Milli > 0:
		for i := range n.GPUs {
			if n.FreeMilli(i) >= r.Milli {
				return Assignment{{GPU: i, Milli: r.Milli}}, nil
			}
		}
		return nil, n.noFit(r)
	}
	return n.placeMIG(r, func(cands []migCandidate) int { return 0 })
}

// BestFit assigns a share to the GPU with the least free capacity that still
// fits it (lowest index on ties), whole GPUs to the lowest-indexed idle GPUs,
// and MIG instances to the GPU with the most compute slices already in use.
func (n *NodeDevices) BestFit(r Request) (Assignment, error) {
	if r.Milli > 0 {
		best := -1
		for i := range n.GPUs {
			if f := n.FreeMilli(i); f >= r.Milli && (best < 0 || f < n.FreeMilli(best)) {
				best = i
			}
		}
		if best < 0 {
			return nil, n.noFit(r)
		}
		return Assignment{{GPU: best, Milli: r.Milli}}, nil
	}
	if len(r.MIG) > 0 {
		return n.placeMIG(r, func(cands []migCandidate) int {
			best := 0
			for i, c := range cands {
				if n.migCompute(c.gpu) > n.migCompute(cands[best].gpu) {
					best = i
				}
			}
			return best
		})
	}
	return n.FirstFit(r)
}

// ShareCandidates appends to dst the GPUs that could take a share of milli
// and returns it; pass dst[:0] of a reused slice to avoid allocating.
func (n *NodeDevices) ShareCandidates(milli int64, dst []int) []int {
	for i := range n.GPUs {
		if n.FreeMilli(i) >= milli {
			dst = append(dst, i)
		}
	}
	return dst
}

func (n *NodeDevices) wholeGPUs(count int64) (Assignment, error) {
	a := make(Assignment, 0, count)
	for i := range n.GPUs {
		if int64(len(a)) == count {
			break
		}
		if !n.GPUs[i].MIGMode && n.GPUs[i].UsedMilli == 0 && !n.GPUs[i].Unhealthy {
			a = append(a, Slot{GPU: i, Milli: MilliPerGPU})
		}
	}
	if int64(len(a)) < count {
		return nil, n.noFit(Request{GPUs: count})
	}
	return a, nil
}

type migCandidate struct {
	gpu   int
	start int
}

// placeMIG places each requested instance, largest first, choosing among the
// free (GPU, offset) pairs with pick. Largest first keeps small instances from
// taking the only offsets a large one could use.
func (n *NodeDevices) placeMIG(r Request, pick func([]migCandidate) int) (Assignment, error) {
	if n.Model == nil || !n.hasMIGMode() && !n.OnDemand {
		return nil, fmt.Errorf("no GPU of %s is in MIG mode: cannot place %s", n.describe(), r)
	}
	profiles, err := n.expandMIG(r)
	if err != nil {
		return nil, err
	}
	work := n.Clone()
	var a Assignment
	var cands []migCandidate
	for _, p := range profiles {
		cands = cands[:0]
		for g := range work.GPUs {
			if !work.takesMIG(g) || work.GPUs[g].Unhealthy {
				continue
			}
			starts, err := work.freeStarts(g, p)
			if err != nil {
				return nil, err
			}
			for _, s := range starts {
				cands = append(cands, migCandidate{g, s})
			}
		}
		if len(cands) == 0 {
			return nil, n.noFit(r)
		}
		c := cands[pick(cands)]
		s := Slot{GPU: c.gpu, MIG: Placement{Profile: p, Start: c.start}}
		work.GPUs[c.gpu].MIG = append(work.GPUs[c.gpu].MIG, s.MIG)
		a = append(a, s)
	}
	return a, nil
}

// expandMIG lists the requested instances one by one, largest first.
func (n *NodeDevices) expandMIG(r Request) ([]string, error) {
	var out []string
	for _, p := range n.Model.MIG {
		for i := int64(0); i < r.MIG[p.Name]; i++ {
			out = append(out, p.Name)
		}
	}
	if int64(len(out)) != countMIG(r) {
		for name := range r.MIG {
			if _, ok := n.Model.Profile(name); !ok {
				return nil, fmt.Errorf("MIG profile %q does not exist on %s; valid profiles: %v", name, n.Model.Name, n.Model.ProfileNames())
			}
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

func countMIG(r Request) int64 {
	var c int64
	for _, v := range r.MIG {
		c += v
	}
	return c
}

func (n *NodeDevices) migCompute(i int) int {
	c := 0
	for _, p := range n.GPUs[i].MIG {
		if prof, ok := n.Model.Profile(p.Profile); ok {
			c += prof.Compute
		}
	}
	return c
}

func (n *NodeDevices) hasMIGMode() bool {
	for i := range n.GPUs {
		if n.GPUs[i].MIGMode {
			return true
		}
	}
	return false
}

func (n *NodeDevices) describe() string {
	if n.Product == "" {
		return fmt.Sprintf("%d GPUs", len(n.GPUs))
	}
	return fmt.Sprintf("%d x %s", len(n.GPUs), n.Product)
}

func (n *NodeDevices) noFit(r Request) error {
	return fmt.Errorf("%s does not fit on %s (%d whole GPUs idle, %d milli free in total)", r, n.describe(), n.WholeFree(), n.TotalFreeMilli())
}

func (n *NodeDevices) device(i int) (*Device, error) {
	if i < 0 || i >= len(n.GPUs) {
		return nil, fmt.Errorf("GPU %d does not exist on %s", i, n.describe())
	}
	return &n.GPUs[i], nil
}

// Apply records that a pod holds the assignment's devices. It checks every
// slot first and changes nothing when one does not fit.
func (n *NodeDevices) Apply(a Assignment) error {
	work := n.Clone()
	for _, s := range a {
		d, err := work.device(s.GPU)
		if err != nil {
			return err
		}
		if s.MIG.Profile != "" {
			if work.Model == nil || !work.takesMIG(s.GPU) {
				return fmt.Errorf("GPU %d of %s is not in MIG mode: cannot hold %s", s.GPU, n.describe(), s.MIG)
			}
			starts, err := work.freeStarts(s.GPU, s.MIG.Profile)
			if err != nil {
				return err
			}
			if !slices.Contains(starts, s.MIG.Start) {
				return fmt.Errorf("MIG instance %s does not fit on GPU %d of %s next to %v", s.MIG, s.GPU, n.describe(), d.MIG)
			}
			d.MIG = append(d.MIG, s.MIG)
			d.MIGMode = true
			continue
		}
		if s.Milli < 1 || s.Milli > MilliPerGPU {
			return fmt.Errorf("slot on GPU %d holds %d milli: must be 1..%d", s.GPU, s.Milli, MilliPerGPU)
		}
		if d.MIGMode {
			return fmt.Errorf("GPU %d of %s is in MIG mode: cannot hold %d milli of a whole-GPU or share pod", s.GPU, n.describe(), s.Milli)
		}
		// Not FreeMilli: a pod already on an unhealthy GPU still holds it.
		if free := MilliPerGPU - d.UsedMilli; free < s.Milli {
			return fmt.Errorf("GPU %d of %s has %d milli free, cannot hold %d more", s.GPU, n.describe(), free, s.Milli)
		}
		d.UsedMilli += s.Milli
	}
	n.GPUs = work.GPUs
	return nil
}

// Release gives back the assignment's devices. It checks every slot first
// and changes nothing when one is not held.
func (n *NodeDevices) Release(a Assignment) error {
	work := n.Clone()
	for _, s := range a {
		d, err := work.device(s.GPU)
		if err != nil {
			return err
		}
		if s.MIG.Profile != "" {
			k := -1
			for i, p := range d.MIG {
				if p == s.MIG {
					k = i
					break
				}
			}
			if k < 0 {
				return fmt.Errorf("MIG instance %s is not on GPU %d of %s", s.MIG, s.GPU, n.describe())
			}
			d.MIG = append(d.MIG[:k], d.MIG[k+1:]...)
			if work.OnDemand && len(d.MIG) == 0 && len(d.Layout) == 0 {
				d.MIGMode = false // the node side tears the last instance down
			}
			continue
		}
		if d.UsedMilli < s.Milli {
			return fmt.Errorf("GPU %d of %s holds %d milli, cannot release %d", s.GPU, n.describe(), d.UsedMilli, s.Milli)
		}
		d.UsedMilli -= s.Milli
	}
	n.GPUs = work.GPUs
	return nil
}

// AddPod applies the assignment recorded on a pod placed on this node, after
// checking that it matches the pod's GPU request. A pod that asks for no GPU
// is a no-op; a GPU pod without the annotation is an error, because the view
// cannot know which devices it holds.
func (n *NodeDevices) AddPod(pod *corev1.Pod) (Assignment, error) {
	a, err := PodAssignment(pod)
	if err != nil || a == nil {
		return nil, err
	}
	if err := n.Apply(a); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return a, nil
}

// PodAssignment reads and checks the pod's penny.dev/gpu-assignment
// annotation against its request: nil for a pod that asks for no GPU.
func PodAssignment(pod *corev1.Pod) (Assignment, error) {
	r, err := ParsePodRequest(pod)
	if err != nil {
		return nil, err
	}
	if r.IsZero() {
		return nil, nil
	}
	v, ok := pod.Annotations[AnnotationAssignment]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s asks for %s but has no %s annotation, so its devices are unknown", pod.Namespace, pod.Name, r, AnnotationAssignment)
	}
	a, err := ParseAssignment(v)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if err := a.Matches(r); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return a, nil
}

// Matches checks that the assignment holds exactly what the request asks.
// A tenant can write the annotation on its own pod, so nothing that rebuilds
// the view from pods should take an assignment that claims more, or other,
// devices than the pod's (quota-checked) request.
func (a Assignment) Matches(r Request) error {
	var whole, milli int64
	mig := map[string]int64{}
	gpus := map[int]bool{}
	instances := map[Slot]bool{}
	for _, s := range a {
		if s.MIG.Profile != "" {
			if instances[s] {
				return fmt.Errorf("assignment %q names MIG instance %s on GPU %d twice", a, s.MIG, s.GPU)
			}
			instances[s] = true
			mig[s.MIG.Profile]++
			continue
		}
		if gpus[s.GPU] {
			return fmt.Errorf("assignment %q names GPU %d twice", a, s.GPU)
		}
		gpus[s.GPU] = true
		switch {
		case s.Milli == MilliPerGPU:
			whole++
		default:
			milli += s.Milli
		}
	}
	ok := whole == r.GPUs && (r.Milli == 0 && milli == 0 || r.Milli == milli && len(a) == 1) && len(mig) == len(r.MIG)
	for p, c := range r.MIG {
		ok = ok && mig[p] == c
	}
	if !ok {
		return fmt.Errorf("assignment %q does not match the request for %s", a, r)
	}
	return nil
}
