package sim

import (
	"fmt"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pennysched/penny/pkg/gpu"
)

// The MIG experiment: the same trace on a fleet of MIG-capable GPUs
// partitioned on demand (penny.dev/mig-partitioning=on-demand), each share
// of a GPU asked for as the smallest MIG profile that covers it. Whole-GPU
// pods stay whole GPUs; CPU-only nodes and pods are unchanged. The GPU
// allocation ratio of a fill then is the share of the fleet's compute
// slices in use (an instance counts its slices as sevenths of a GPU,
// rounded down to the thousandth, as pkg/gpu counts requests).

// MIGFleet returns the nodes with every GPU node's model replaced by the
// given MIG-capable models, in turn, each node partitioned on demand. CPU,
// memory and GPU counts are kept, so the workload meets the same capacity.
func MIGFleet(nodes []*v1.Node, models []string) ([]*v1.Node, error) {
	if len(models) == 0 {
		return nil, fmt.Errorf("no MIG model given; MIG models: %s", strings.Join(migModelNames(), ", "))
	}
	var ms []*gpu.Model
	for _, name := range models {
		m, ok := gpu.LookupModel(strings.TrimSpace(name))
		if !ok || !m.SupportsMIG() {
			return nil, fmt.Errorf("%q is not a MIG-capable GPU model; MIG models: %s", name, strings.Join(migModelNames(), ", "))
		}
		ms = append(ms, m)
	}
	out := make([]*v1.Node, 0, len(nodes))
	k := 0
	for _, n := range nodes {
		gpus := len(gpu.NodeDevicesFor(n).GPUs)
		if gpus == 0 {
			out = append(out, n)
			continue
		}
		m := ms[k%len(ms)]
		k++
		alloc := n.Status.Allocatable
		c := NewNode(n.Name, alloc.Cpu().MilliValue(), alloc.Memory().Value()>>20, gpus, m.Product)
		c.Labels[gpu.LabelMIGStrategy] = "mixed"
		c.Labels[gpu.LabelMIGPartitioning] = gpu.MIGOnDemand
		// Each profile at the most the GPUs could hold: the device view
		// decides what still fits.
		for _, p := range m.MIG {
			q := *resource.NewQuantity(int64(p.Max*gpus), resource.DecimalSI)
			c.Status.Allocatable[gpu.MIGResourceName(p.Name)] = q
			c.Status.Capacity[gpu.MIGResourceName(p.Name)] = q.DeepCopy()
		}
		out = append(out, c)
	}
	if k == 0 {
		return nil, fmt.Errorf("the node list has no GPU nodes to turn into MIG nodes")
	}
	return out, nil
}

func migModelNames() []string {
	var out []string
	for _, name := range gpu.ModelNames() {
		if m, _ := gpu.LookupModel(name); m.SupportsMIG() {
			out = append(out, name)
		}
	}
	return out
}

// MIGTrace returns the trace with each share of a GPU asked for as the
// smallest MIG profile of model whose compute covers it (ceil(milli * 7 /
// 1000) slices, the profile with the fewest slices and then the least
// memory that has at least that many). GPU model constraints are dropped:
// the fleet has other models.
func MIGTrace(tr *Trace, model string) (*Trace, error) {
	m, ok := gpu.LookupModel(model)
	if !ok || !m.SupportsMIG() {
		return nil, fmt.Errorf("%q is not a MIG-capable GPU model; MIG models: %s", model, strings.Join(migModelNames(), ", "))
	}
	out := &Trace{Source: tr.Source}
	for _, tp := range tr.Pods {
		r, err := gpu.ParsePodRequest(tp.Pod)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		p := tp.Pod.DeepCopy()
		p.Spec.Affinity = nil
		if r.Milli > 0 {
			prof := SmallestProfile(m, r.Milli)
			for i := range p.Spec.Containers {
				for _, l := range []v1.ResourceList{p.Spec.Containers[i].Resources.Requests, p.Spec.Containers[i].Resources.Limits} {
					if _, ok := l[gpu.ResourceGPUMilli]; ok {
						delete(l, gpu.ResourceGPUMilli)
						l[gpu.MIGResourceName(prof.Name)] = resource.MustParse("1")
					}
				}
			}
		}
		tp.Pod = p
		out.Pods = append(out.Pods, tp)
	}
	return out, nil
}

// SmallestProfile is the smallest MIG profile of m whose compute covers a
// share of milli thousandths of a GPU.
func SmallestProfile(m *gpu.Model, milli int64) gpu.Profile {
	need := int((milli*gpu.ComputeSlices + gpu.MilliPerGPU - 1) / gpu.MilliPerGPU)
	ps := append([]gpu.Profile(nil), m.MIG...)
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Compute != ps[j].Compute {
			return ps[i].Compute < ps[j].Compute
		}
		return ps[i].MemoryGB < ps[j].MemoryGB
	})
	for _, p := range ps {
		if p.Compute >= need {
			return p
		}
	}
	return ps[len(ps)-1]
}
