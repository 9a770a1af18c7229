package gang

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	resourcehelper "k8s.io/component-helpers/resource"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
)

// demand is what one pod takes from a node: CPU, memory, ephemeral storage,
// one pod slot, and any extended resources (GPUs, MIG slices, shares).
type demand struct {
	// pods is the pod slots taken: 1 for a pod, n for a claim of n
	// members, so that a claim holds the slots its members need.
	pods      int64
	milliCPU  int64
	memory    int64
	ephemeral int64
	scalar    map[corev1.ResourceName]int64
}

func podDemand(pod *corev1.Pod) demand {
	return demandOf(resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{}))
}

// heldDemand is what a pod on a node holds there as the scheduler's cache
// counts it: the most of what its spec asks and what the kubelet allocated
// and actuated. A resize down gives back nothing until the kubelet has
// actuated it, which is when the scheduler reports it (UpdatePodScaleDown),
// the spec having come down before.
func heldDemand(pod *corev1.Pod) demand {
	return demandOf(resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{
		UseStatusResources: utilfeature.DefaultFeatureGate.Enabled(features.InPlacePodVerticalScaling),
		InPlacePodLevelResourcesVerticalScalingEnabled: utilfeature.DefaultFeatureGate.Enabled(features.InPlacePodLevelResourcesVerticalScaling),
	}))
}

func demandOf(reqs corev1.ResourceList) demand {
	d := demand{pods: 1}
	for name, q := range reqs {
		switch name {
		case corev1.ResourceCPU:
			d.milliCPU = q.MilliValue()
		case corev1.ResourceMemory:
			d.memory = q.Value()
		case corev1.ResourceEphemeralStorage:
			d.ephemeral = q.Value()
		case corev1.ResourcePods:
		default:
			if v := q.Value(); v > 0 {
				if d.scalar == nil {
					d.scalar = map[corev1.ResourceName]int64{}
				}
				d.scalar[name] = v
			}
		}
	}
	return d
}

func (d *demand) add(o demand, times int64) {
	d.pods += o.pods * times
	d.milliCPU += o.milliCPU * times
	d.memory += o.memory * times
	d.ephemeral += o.ephemeral * times
	for name, v := range o.scalar {
		if d.scalar == nil {
			d.scalar = map[corev1.ResourceName]int64{}
		}
		d.scalar[name] += v * times
	}
}

// key is the demand as a stable string, part of a member's shape.
func (d demand) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cpu=%d,mem=%d,eph=%d", d.milliCPU, d.memory, d.ephemeral)
	names := make([]string, 0, len(d.scalar))
	for n := range d.scalar {
		names = append(names, string(n))
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, ",%s=%d", n, d.scalar[corev1.ResourceName(n)])
	}
	return b.String()
}

// fitsOn reports whether d fits next to what a node already holds plus what
// other gangs have claimed on it, and names the first resource that does not.
func (d demand) fitsOn(info fwk.NodeInfo, claimed *demand) (bool, corev1.ResourceName) {
	alloc, req := info.GetAllocatable(), info.GetRequested()
	var c demand
	if claimed != nil {
		c = *claimed
	}
	if int64(len(info.GetPods()))+c.pods+1 > int64(alloc.GetAllowedPodNumber()) {
		return false, corev1.ResourcePods
	}
	if d.milliCPU > 0 && req.GetMilliCPU()+c.milliCPU+d.milliCPU > alloc.GetMilliCPU() {
		return false, corev1.ResourceCPU
	}
	if d.memory > 0 && req.GetMemory()+c.memory+d.memory > alloc.GetMemory() {
		return false, corev1.ResourceMemory
	}
	if d.ephemeral > 0 && req.GetEphemeralStorage()+c.ephemeral+d.ephemeral > alloc.GetEphemeralStorage() {
		return false, corev1.ResourceEphemeralStorage
	}
	for name, v := range d.scalar {
		if req.GetScalarResources()[name]+c.scalar[name]+v > alloc.GetScalarResources()[name] {
			return false, name
		}
	}
	return true, ""
}

// dims lists the resources a set of demands uses, so that a scan over all
// nodes touches only those.
type dims struct {
	scalars []corev1.ResourceName
}

func dimsOf(ds []demand) dims {
	seen := map[corev1.ResourceName]bool{}
	var out dims
	for _, d := range ds {
		for n := range d.scalar {
			if !seen[n] {
				seen[n] = true
				out.scalars = append(out.scalars, n)
			}
		}
	}
	sort.Slice(out.scalars, func(i, j int) bool { return out.scalars[i] < out.scalars[j] })
	return out
}

// vec is a demand or a node's free capacity laid out along dims:
// [pods, milliCPU, memory, ephemeral, scalars...].
type vec []int64

const fixedDims = 4

func (dm dims) vecOf(d demand) vec {
	v := make(vec, fixedDims+len(dm.scalars))
	v[0], v[1], v[2], v[3] = 1, d.milliCPU, d.memory, d.ephemeral
	for i, n := range dm.scalars {
		v[fixedDims+i] = d.scalar[n]
	}
	return v
}

// freeOf is a node's free capacity along dims, less what others claimed.
func (dm dims) freeOf(info fwk.NodeInfo, claimed *demand, into vec) vec {
	if cap(into) < fixedDims+len(dm.scalars) {
		into = make(vec, fixedDims+len(dm.scalars))
	}
	into = into[:fixedDims+len(dm.scalars)]
	alloc, req := info.GetAllocatable(), info.GetRequested()
	into[0] = int64(alloc.GetAllowedPodNumber() - len(info.GetPods()))
	into[1] = alloc.GetMilliCPU() - req.GetMilliCPU()
	into[2] = alloc.GetMemory() - req.GetMemory()
	into[3] = alloc.GetEphemeralStorage() - req.GetEphemeralStorage()
	as, rs := alloc.GetScalarResources(), req.GetScalarResources()
	for i, n := range dm.scalars {
		into[fixedDims+i] = as[n] - rs[n]
	}
	if claimed != nil {
		into[0] -= claimed.pods
		into[1] -= claimed.milliCPU
		into[2] -= claimed.memory
		into[3] -= claimed.ephemeral
		for i, n := range dm.scalars {
			into[fixedDims+i] -= claimed.scalar[n]
		}
	}
	return into
}

// times is how many copies of d fit in free.
func (free vec) times(d vec) int64 {
	best := int64(-1)
	for i, need := range d {
		if need <= 0 {
			continue
		}
		n := free[i] / need
		if free[i] < 0 {
			n = 0
		}
		if best < 0 || n < best {
			best = n
		}
	}
	if best < 0 {
		// A pod that asks for nothing still takes a pod slot (d[0] == 1),
		// so this only happens for an empty vec.
		return 0
	}
	return best
}

// short marks, in lack, the dimensions in which free holds less than d.
func (free vec) short(d vec, lack []bool) {
	for i, need := range d {
		if need > 0 && free[i] < need {
			lack[i] = true
		}
	}
}

// names lists the resources of the marked dimensions (empty, not nil, when
// none is marked).
func (dm dims) names(marked []bool) []corev1.ResourceName {
	out := []corev1.ResourceName{}
	for i, m := range marked {
		if !m {
			continue
		}
		switch i {
		case 0:
			out = append(out, corev1.ResourcePods)
		case 1:
			out = append(out, corev1.ResourceCPU)
		case 2:
			out = append(out, corev1.ResourceMemory)
		case 3:
			out = append(out, corev1.ResourceEphemeralStorage)
		default:
			out = append(out, dm.scalars[i-fixedDims])
		}
	}
	return out
}

// frees reports whether a pod with demand d gives back any of the resources
// (a pod slot always).
func (d demand) frees(names []corev1.ResourceName) bool {
	for _, n := range names {
		switch n {
		case corev1.ResourcePods:
			// A pod resized in place keeps its slot.
			if d.pods > 0 {
				return true
			}
		case corev1.ResourceCPU:
			if d.milliCPU > 0 {
				return true
			}
		case corev1.ResourceMemory:
			if d.memory > 0 {
				return true
			}
		case corev1.ResourceEphemeralStorage:
			if d.ephemeral > 0 {
				return true
			}
		default:
			if d.scalar[n] > 0 {
				return true
			}
		}
	}
	return false
}

func (free vec) take(d vec, n int64) {
	for i := range d {
		free[i] -= d[i] * n
	}
}

// describe names a demand the way kubectl shows resources, for messages:
// "24 nvidia.com/gpu", "12 cpu".
func describe(name corev1.ResourceName, amount int64) string {
	switch name {
	case corev1.ResourceCPU:
		return resource.NewMilliQuantity(amount, resource.DecimalSI).String() + " cpu"
	case corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
		return resource.NewQuantity(amount, resource.BinarySI).String() + " " + string(name)
	}
	return fmt.Sprintf("%d %s", amount, name)
}
