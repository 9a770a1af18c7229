package gpu

import (
	"sort"
	"strconv"
	"strings"
)

// Fragmentation, as defined by the FGD paper (Weng et al., ATC'23): free GPU
// capacity on a node is a fragment for a pod shape when that shape cannot
// use it — the node cannot host the shape at all (too few GPUs with enough
// free, too little CPU, wrong GPU model), or the capacity sits on GPUs with
// less free than the shape needs per GPU. A node's fragmentation is the
// expectation of that amount over the workload's typical shapes, weighted by
// how often each arrives. CPU-only shapes can use no GPU capacity, so for
// them all free GPU capacity counts, as in the paper's measure.

// Shape is one typical pod of a workload.
type Shape struct {
	// MilliCPU is the CPU request in millicores.
	MilliCPU int64
	// GPUs is how many GPUs the shape needs MilliPerGPU of: the count of
	// whole GPUs, 1 for a share, 0 for a CPU-only pod.
	GPUs int64
	// MilliPerGPU is 1000 for whole GPUs, 1..999 for a share, 0 for none.
	MilliPerGPU int64
	// Products are the GPU products the shape accepts; empty accepts any.
	Products []string
	// Weight is the shape's share of arrivals; a Workload's weights sum to 1.
	Weight float64
}

// ShapeOf reads a pod's shape from its request, CPU and accepted products.
func ShapeOf(r Request, milliCPU int64, products []string) Shape {
	s := Shape{MilliCPU: milliCPU, Products: products}
	switch {
	case r.GPUs > 0:
		s.GPUs, s.MilliPerGPU = r.GPUs, MilliPerGPU
	case r.Milli > 0:
		s.GPUs, s.MilliPerGPU = 1, r.Milli
	}
	return s
}

// Key identifies the shape without its weight, for counting.
func (s Shape) Key() string {
	return strings.Join([]string{
		itoa(s.MilliCPU), itoa(s.GPUs), itoa(s.MilliPerGPU), strings.Join(s.Products, "|"),
	}, "/")
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// Accepts reports whether the shape may run on the given product.
func (s Shape) Accepts(product string) bool {
	if len(s.Products) == 0 {
		return true
	}
	for _, p := range s.Products {
		if p == product {
			return true
		}
	}
	return false
}

// Workload is a distribution of typical shapes.
type Workload []Shape

// ShapeCount is a shape seen Count times.
type ShapeCount struct {
	Shape Shape
	Count float64
}

// TypicalWorkload keeps the most frequent shapes until they cover at least
// coverage (0..1] of all counted pods, and renormalises their weights, as the
// FGD paper does with its "typical pods" (coverage 0.95 there). Ties in count
// are broken by the larger shape first so the result does not depend on the
// input order.
func TypicalWorkload(counts []ShapeCount, coverage float64) Workload {
	cs := append([]ShapeCount(nil), counts...)
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].Count != cs[j].Count {
			return cs[i].Count > cs[j].Count
		}
		return shapeLess(cs[j].Shape, cs[i].Shape)
	})
	var total float64
	for _, c := range cs {
		total += c.Count
	}
	if total == 0 {
		return nil
	}
	var w Workload
	var cum float64
	for _, c := range cs {
		if cum >= coverage*total {
			break
		}
		cum += c.Count
		s := c.Shape
		s.Weight = c.Count
		w = append(w, s)
	}
	for i := range w {
		w[i].Weight /= cum
	}
	return w
}

func shapeLess(a, b Shape) bool {
	switch {
	case a.MilliCPU != b.MilliCPU:
		return a.MilliCPU < b.MilliCPU
	case a.MilliPerGPU != b.MilliPerGPU:
		return a.MilliPerGPU < b.MilliPerGPU
	case a.GPUs != b.GPUs:
		return a.GPUs < b.GPUs
	}
	return strings.Join(a.Products, "|") < strings.Join(b.Products, "|")
}

// FragMilli is the node's expected fragmented GPU capacity in milli, given
// its free CPU and the free milli of each of its GPUs. free is only read, so
// callers can score hypothetical placements on a scratch copy without
// building a NodeDevices.
func (w Workload) FragMilli(cpuFree int64, free []int64, product string) float64 {
	var total int64
	for _, f := range free {
		total += f
	}
	if total == 0 {
		return 0
	}
	var frag float64
	for i := range w {
		s := &w[i]
		if s.MilliPerGPU == 0 || !s.Accepts(product) {
			frag += s.Weight * float64(total)
			continue
		}
		var fit int64
		var small int64
		for _, f := range free {
			if f >= s.MilliPerGPU {
				fit++
			} else {
				small += f
			}
		}
		if fit >= s.GPUs && cpuFree >= s.MilliCPU {
			frag += s.Weight * float64(small)
		} else {
			frag += s.Weight * float64(total)
		}
	}
	return frag
}

// FreeList writes the free milli of each GPU into dst (reusing its storage)
// and returns it, for FragMilli.
func (n *NodeDevices) FreeList(dst []int64) []int64 {
	dst = dst[:0]
	for i := range n.GPUs {
		dst = append(dst, n.FreeMilli(i))
	}
	return dst
}
