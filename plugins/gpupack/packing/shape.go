package packing

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"

	"github.com/pennysched/penny/pkg/gpu"
)

// Req is one pod's request as the packer reads it, once per scheduling cycle.
type Req struct {
	// GPU is the pod's GPU request (pkg/gpu's reading of its limits).
	GPU gpu.Request
	// MIG lists the requested MIG instances one by one, largest first: the
	// order they are placed in.
	MIG []string
	// CPU (millicores) and Mem (bytes) are the pod's requests.
	CPU, Mem int64
	// Products are the GPU products the pod accepts; nil accepts any.
	Products []string
	// Shape is the pod's typical shape, for the demand.
	Shape Shape
}

// HasGPU reports whether the pod asks for any GPU.
func (r *Req) HasGPU() bool { return !r.GPU.IsZero() }

// Milli is the pod's GPU request in thousandths of a GPU.
func (r *Req) Milli() int64 { return r.GPU.TotalMilli() }

// ReqFor reads a pod's request.
func ReqFor(pod *corev1.Pod) (*Req, error) {
	g, err := gpu.ParsePodRequest(pod)
	if err != nil {
		return nil, err
	}
	r := &Req{GPU: g, Products: gpu.PodProducts(pod)}
	r.CPU, r.Mem = podRequests(pod)
	if len(g.MIG) > 0 {
		var total int64
		for _, n := range g.MIG {
			total += n
		}
		if total > maxTouched {
			return nil, fmt.Errorf("pod %s/%s asks for %d MIG instances (%s): the GPU packer places at most %d in one pod; ask for fewer, larger instances, or split the work across pods",
				pod.Namespace, pod.Name, total, g, maxTouched)
		}
		for name, n := range g.MIG {
			for i := int64(0); i < n; i++ {
				r.MIG = append(r.MIG, name)
			}
		}
		slices.SortStableFunc(r.MIG, compareProfilesLargestFirst)
	}
	r.Shape = shapeOf(r)
	return r, nil
}

// compareProfilesLargestFirst orders MIG profile names by compute slices,
// then memory, largest first, then by name so the order is total.
func compareProfilesLargestFirst(a, b string) int {
	pa, ea := gpu.ParseProfileName(a)
	pb, eb := gpu.ParseProfileName(b)
	if ea == nil && eb == nil {
		if pa.Compute != pb.Compute {
			return pb.Compute - pa.Compute
		}
		if pa.MemoryGB != pb.MemoryGB {
			return pb.MemoryGB - pa.MemoryGB
		}
	}
	return strings.Compare(a, b)
}

// podRequests is the pod's CPU and memory request as NodeResourcesFit and
// the kubelet count it: app containers and sidecars (restartable init
// containers, which run alongside them) add up, an init container needs its
// own next to the sidecars started before it, the pod the larger of the two;
// pod-level requests, where set, replace them. Pod overhead is left out; it
// is small and equal on every node.
func podRequests(pod *corev1.Pod) (cpu, mem int64) {
	rl := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{ExcludeOverhead: true})
	return rl.Cpu().MilliValue(), rl.Memory().Value()
}

// Shape is a kind of pod, as the demand counts them: what it needs of one
// node. It extends pkg/gpu's shape (CPU, whole GPUs or a share, accepted
// products) with MIG instances and memory. Pods of one shape differ at most
// in memory, which the demand averages: memory requests vary more than
// anything else and rarely decide alone what fits.
type Shape struct {
	gpu.Shape
	// MIG is the largest MIG profile the shape asks for and MIGCount how many
	// of it; smaller instances of a mixed request are left out of the
	// measure (rare, and they fit wherever the largest does most of the time).
	MIG      string
	MIGCount int64
	// Mem in bytes, averaged over the shape's arrivals.
	Mem int64
}

// defaultMilliCPU is kube-scheduler's DefaultMilliCPURequest for scoring.
const defaultMilliCPU = 100

func shapeOf(r *Req) Shape {
	cpu := r.CPU
	if cpu == 0 {
		cpu = defaultMilliCPU
	}
	s := Shape{Shape: gpu.ShapeOf(r.GPU, cpu, r.Products), Mem: r.Mem}
	if len(r.MIG) > 0 {
		s.MIG = r.MIG[0]
		for _, p := range r.MIG {
			if p == s.MIG {
				s.MIGCount++
			}
		}
	}
	return s
}

// Key identifies the shape without its memory, for counting.
func (s *Shape) Key() string {
	if s.MIG == "" {
		return s.Shape.Key()
	}
	return s.Shape.Key() + "/" + strconv.FormatInt(s.MIGCount, 10) + "x" + s.MIG
}

// HasGPU reports whether the shape needs any GPU.
func (s *Shape) HasGPU() bool { return s.GPUs > 0 || s.MIG != "" }

// Milli is the shape's GPU need in thousandths of a GPU, MIG compute slices
// counted as sevenths.
func (s *Shape) Milli() int64 {
	if s.MIG != "" {
		p, err := gpu.ParseProfileName(s.MIG)
		if err != nil {
			return 0
		}
		return s.MIGCount * int64(p.Compute) * gpu.MilliPerGPU / gpu.ComputeSlices
	}
	return s.GPUs * s.MilliPerGPU
}
