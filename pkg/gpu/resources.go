package gpu

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Resource names. Whole GPUs and MIG instances use the names of the NVIDIA
// device plugin (MIG strategy "mixed"); shares of one GPU use Penny's own
// extended resource so that ResourceQuota can cap them like any request.
const (
	// ResourceGPU is a whole GPU.
	ResourceGPU corev1.ResourceName = "nvidia.com/gpu"
	// ResourceGPUMilli is a share of one GPU in thousandths (1..999). A pod
	// asking for it is placed on exactly one GPU, which it may share.
	ResourceGPUMilli corev1.ResourceName = "penny.dev/gpu-milli"
	// MIGResourcePrefix starts every MIG resource: nvidia.com/mig-<g>g.<mem>gb.
	MIGResourcePrefix = "nvidia.com/mig-"

	// MilliPerGPU is how many ResourceGPUMilli make one whole GPU.
	MilliPerGPU = 1000

	// MaxDevicesPerPod bounds the whole GPUs, and the MIG instances, one
	// pod may ask for: far more than any node has, so no pod that could run
	// is refused, while a request no node could take is refused before
	// anything sizes memory or loops by it.
	MaxDevicesPerPod = 1 << 12
)

// Node labels set by GPU feature discovery and by the clouds.
const (
	LabelProduct      = "nvidia.com/gpu.product"
	LabelCount        = "nvidia.com/gpu.count"
	LabelMemory       = "nvidia.com/gpu.memory"
	LabelMIGStrategy  = "nvidia.com/mig.strategy"
	LabelInstanceType = corev1.LabelInstanceTypeStable
	LabelZone         = corev1.LabelTopologyZone
)

// AnnotationAssignment records on a pod which devices the scheduler chose
// for it, so that the node side can honour the choice and a restarted
// scheduler can rebuild its view. Its format is owned by the Assignment type.
const AnnotationAssignment = "penny.dev/gpu-assignment"

// Request is what a pod asks of GPUs. At most one of its kinds is set; a pod
// mixing kinds is rejected by ParsePodRequest because no node could honour it
// on one device set.
type Request struct {
	// GPUs is the number of whole GPUs.
	GPUs int64
	// Milli is a share of one GPU, 1..999.
	Milli int64
	// MIG counts MIG instances by profile name ("1g.10gb").
	MIG map[string]int64
}

// IsZero reports whether the pod asks for no GPU at all.
func (r Request) IsZero() bool { return r.GPUs == 0 && r.Milli == 0 && len(r.MIG) == 0 }

// TotalMilli is the request in thousandths of a GPU. A MIG request counts its
// compute slices as sevenths of a GPU, which is how much of the device it takes.
func (r Request) TotalMilli() int64 {
	t := r.GPUs*MilliPerGPU + r.Milli
	for name, n := range r.MIG {
		if p, err := ParseProfileName(name); err == nil {
			t += n * int64(p.Compute) * MilliPerGPU / ComputeSlices
		}
	}
	return t
}

// String is the request in words a user can read in an event.
func (r Request) String() string {
	switch {
	case r.GPUs > 0:
		return fmt.Sprintf("%d %s", r.GPUs, ResourceGPU)
	case r.Milli > 0:
		return fmt.Sprintf("%d %s", r.Milli, ResourceGPUMilli)
	case len(r.MIG) > 0:
		names := make([]string, 0, len(r.MIG))
		for n := range r.MIG {
			names = append(names, n)
		}
		sort.Strings(names)
		parts := make([]string, 0, len(names))
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%d %s%s", r.MIG[n], MIGResourcePrefix, n))
		}
		return strings.Join(parts, ", ")
	}
	return "no GPU"
}

// ParsePodRequest reads a pod's GPU request from its containers' limits
// (extended resources must have request == limit, so limits are enough) the
// way the kubelet and NodeResourcesFit count them: the sum over app
// containers and sidecars (restartable init containers, which keep their
// devices while the app runs), or, per resource, what an init container
// needs next to the sidecars started before it if that is more. A pod that
// asks for two kinds of GPU, in one container or across them, is rejected:
// the devices it would hold cannot be recorded as one assignment.
func ParsePodRequest(pod *corev1.Pod) (Request, error) {
	// kinds collects every kind any container asks for.
	var app, sidecars, init, kinds Request
	for i := range pod.Spec.Containers {
		c, err := containerRequest(&pod.Spec.Containers[i])
		if err != nil {
			return Request{}, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		app = add(app, c)
		kinds = maxOf(kinds, c)
	}
	for i := range pod.Spec.InitContainers {
		ic := &pod.Spec.InitContainers[i]
		c, err := containerRequest(ic)
		if err != nil {
			return Request{}, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		kinds = maxOf(kinds, c)
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars = add(sidecars, c)
			init = maxOf(init, sidecars)
			continue
		}
		init = maxOf(init, add(sidecars, c))
	}
	if k := requestKinds(kinds); len(k) > 1 {
		return Request{}, fmt.Errorf("pod %s/%s asks for %s together: ask for one of whole GPUs (%s), a share of one GPU (%s) or MIG instances (%s*)",
			pod.Namespace, pod.Name, strings.Join(k, " and "), ResourceGPU, ResourceGPUMilli, MIGResourcePrefix)
	}
	sum := maxOf(add(app, sidecars), init)
	if n := sum.GPUs + countMIG(sum); n > MaxDevicesPerPod {
		return Request{}, fmt.Errorf("pod %s/%s asks for %s: no node has that many; ask for at most %d devices", pod.Namespace, pod.Name, sum, MaxDevicesPerPod)
	}
	if sum.Milli >= MilliPerGPU {
		return Request{}, fmt.Errorf("pod %s/%s asks for %d %s: a share must be 1..%d; ask for whole GPUs with %s instead",
			pod.Namespace, pod.Name, sum.Milli, ResourceGPUMilli, MilliPerGPU-1, ResourceGPU)
	}
	return sum, nil
}

func requestKinds(r Request) []string {
	var k []string
	if r.GPUs > 0 {
		k = append(k, string(ResourceGPU))
	}
	if r.Milli > 0 {
		k = append(k, string(ResourceGPUMilli))
	}
	if len(r.MIG) > 0 {
		k = append(k, "MIG instances")
	}
	return k
}

func containerRequest(c *corev1.Container) (Request, error) {
	var r Request
	list := c.Resources.Limits
	if len(list) == 0 {
		list = c.Resources.Requests
	}
	for name, q := range list {
		if !IsGPUResource(name) {
			continue
		}
		// The bounds are checked on the quantity itself: Value wraps one
		// past an int64 silently (1e19 reads as 0, a pod that asks for no
		// GPU).
		if q.Sign() < 0 {
			return Request{}, fmt.Errorf("container %q asks for %s of %s: must not be negative", c.Name, q.String(), name)
		}
		if name != ResourceGPUMilli && q.CmpInt64(MaxDevicesPerPod) > 0 {
			return Request{}, fmt.Errorf("container %q asks for %s of %s: no node has that many; ask for at most %d", c.Name, q.String(), name, MaxDevicesPerPod)
		}
		if name == ResourceGPUMilli && q.CmpInt64(MilliPerGPU) >= 0 {
			return Request{}, fmt.Errorf("container %q asks for %s of %s: a share must be 1..%d; ask for whole GPUs with %s instead", c.Name, q.String(), name, MilliPerGPU-1, ResourceGPU)
		}
		v := q.Value()
		// A zero limit asks for nothing; counting it would make a pod that
		// writes "nvidia.com/mig-1g.10gb: 0" next to its GPUs ask for two
		// kinds.
		if v == 0 {
			continue
		}
		if err := r.count(name, v); err != nil {
			return Request{}, fmt.Errorf("container %q: %w", c.Name, err)
		}
	}
	return r, nil
}

// count adds v of the GPU resource name to r.
func (r *Request) count(name corev1.ResourceName, v int64) error {
	switch name {
	case ResourceGPU:
		r.GPUs += v
	case ResourceGPUMilli:
		r.Milli += v
	default:
		p, err := ParseMIGResource(name)
		if err != nil {
			return err
		}
		if r.MIG == nil {
			r.MIG = map[string]int64{}
		}
		r.MIG[p.Name] += v
	}
	return nil
}

// RequestOf is what a list of resources (a pod's requests, as the kubelet
// counts them) asks of GPUs, read as it stands, without the rules
// ParsePodRequest holds a pod to: what a pod another scheduler placed holds.
// A MIG resource that names no profile counts as none.
func RequestOf(list corev1.ResourceList) Request {
	var r Request
	for name, q := range list {
		if v := q.Value(); v > 0 && IsGPUResource(name) {
			_ = r.count(name, v)
		}
	}
	return r
}

func add(a, b Request) Request {
	a.GPUs += b.GPUs
	a.Milli += b.Milli
	if len(b.MIG) > 0 {
		m := make(map[string]int64, len(a.MIG)+len(b.MIG))
		for n, v := range a.MIG {
			m[n] = v
		}
		for n, v := range b.MIG {
			m[n] += v
		}
		a.MIG = m
	}
	return a
}

// maxOf is the larger of each resource, as the kubelet sizes a pod by its
// init containers: each device resource is allocated on its own.
func maxOf(a, b Request) Request {
	out := Request{GPUs: max(a.GPUs, b.GPUs), Milli: max(a.Milli, b.Milli)}
	if len(a.MIG)+len(b.MIG) > 0 {
		out.MIG = make(map[string]int64, len(a.MIG)+len(b.MIG))
		for n, v := range a.MIG {
			out.MIG[n] = v
		}
		for n, v := range b.MIG {
			out.MIG[n] = max(out.MIG[n], v)
		}
	}
	return out
}

// IsGPUResource reports whether name is one of the resources a pod asks for
// GPUs with, and a node advertises them with: whole GPUs, shares of one, MIG
// instances.
func IsGPUResource(name corev1.ResourceName) bool {
	return name == ResourceGPU || name == ResourceGPUMilli || strings.HasPrefix(string(name), MIGResourcePrefix)
}

// MIGResourceName is the extended resource for a MIG profile.
func MIGResourceName(profile string) corev1.ResourceName {
	return corev1.ResourceName(MIGResourcePrefix + profile)
}

// ParseMIGResource reads the profile out of nvidia.com/mig-<g>g.<mem>gb.
func ParseMIGResource(name corev1.ResourceName) (Profile, error) {
	s := string(name)
	if !strings.HasPrefix(s, MIGResourcePrefix) {
		return Profile{}, fmt.Errorf("resource %q is not a MIG resource: expected %s<g>g.<mem>gb", s, MIGResourcePrefix)
	}
	p, err := ParseProfileName(strings.TrimPrefix(s, MIGResourcePrefix))
	if err != nil {
		return Profile{}, fmt.Errorf("resource %q: %w", s, err)
	}
	return p, nil
}
