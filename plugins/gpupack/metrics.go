package gpupack

import (
	"sort"
	"sync"
	"sync/atomic"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Fragmentation as it happens, per node pool (the pool label, else the GPU
// product), computed when /metrics is scraped from the plugin's device view
// and learned demand:
//
//	penny_gpu_free_milli{pool}                  free GPU capacity, thousandths of a GPU
//	penny_gpu_stranded_milli{pool}              free capacity no typical pod can use
//	penny_gpu_largest_placeable{pool,resource}  the largest pod one node can still take:
//	                                            resource=gpus (whole GPUs), gpu_milli (a share),
//	                                            mig_compute_slices (one MIG instance)
//	penny_gpu_unhealthy{pool}                   GPUs kept off new pods because their agent
//	                                            reports them unhealthy (none of the others
//	                                            counts their capacity)
var (
	freeDesc = metrics.NewDesc("penny_gpu_free_milli",
		"Free GPU capacity per node pool, in thousandths of a GPU (MIG compute slices count as sevenths).",
		[]string{"pool"}, nil, metrics.ALPHA, "")
	strandedDesc = metrics.NewDesc("penny_gpu_stranded_milli",
		"Free GPU capacity per node pool that none of the workload's typical pods could use (too small a piece, or the node's CPU or memory is gone), in thousandths of a GPU.",
		[]string{"pool"}, nil, metrics.ALPHA, "")
	largestDesc = metrics.NewDesc("penny_gpu_largest_placeable",
		"The largest pod a single node of the pool can still take, by resource: gpus (whole GPUs), gpu_milli (a share of one GPU), mig_compute_slices (one MIG instance).",
		[]string{"pool", "resource"}, nil, metrics.ALPHA, "")
	unhealthyDesc = metrics.NewDesc("penny_gpu_unhealthy",
		"GPUs per node pool that the scheduler keeps new pods off because their node's agent reports them unhealthy; their capacity counts in none of the other penny_gpu_ metrics.",
		[]string{"pool"}, nil, metrics.ALPHA, "")

	registerOnce sync.Once
	// current is the plugin the collector reads: the latest built, so a
	// scheduler restarted in the same process reports its new view.
	current atomic.Pointer[GPUPack]
)

func registerMetrics(p *GPUPack) {
	current.Store(p)
	registerOnce.Do(func() {
		legacyregistry.CustomMustRegister(&collector{})
	})
}

type collector struct {
	metrics.BaseStableCollector
}

func (c *collector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- freeDesc
	ch <- strandedDesc
	ch <- largestDesc
	ch <- unhealthyDesc
}

type poolStats struct {
	free, stranded              int64
	gpus, shareMilli, migSlices int64
	unhealthy                   int64
}

func (c *collector) CollectWithStability(ch chan<- metrics.Metric) {
	p := current.Load()
	if p == nil {
		return
	}
	for _, s := range p.poolStats() {
		ch <- metrics.NewLazyConstMetric(freeDesc, metrics.GaugeValue, float64(s.free), s.pool)
		ch <- metrics.NewLazyConstMetric(strandedDesc, metrics.GaugeValue, float64(s.stranded), s.pool)
		ch <- metrics.NewLazyConstMetric(largestDesc, metrics.GaugeValue, float64(s.gpus), s.pool, "gpus")
		ch <- metrics.NewLazyConstMetric(largestDesc, metrics.GaugeValue, float64(s.shareMilli), s.pool, "gpu_milli")
		ch <- metrics.NewLazyConstMetric(largestDesc, metrics.GaugeValue, float64(s.migSlices), s.pool, "mig_compute_slices")
		ch <- metrics.NewLazyConstMetric(unhealthyDesc, metrics.GaugeValue, float64(s.unhealthy), s.pool)
	}
}

type namedPoolStats struct {
	pool string
	poolStats
}

// poolStats sums the view's nodes with GPUs by pool, in pool order.
func (p *GPUPack) poolStats() []namedPoolStats {
	d := p.learner.Current()
	by := map[string]*poolStats{}
	p.view.each(func(e *entry) {
		if !e.node.HasGPU() {
			return
		}
		s := by[e.pool]
		if s == nil {
			s = &poolStats{}
			by[e.pool] = s
		}
		s.free += e.node.FreeMilli()
		s.stranded += e.node.Stranded(d)
		l := e.node.Largest()
		s.gpus = max(s.gpus, l.GPUs)
		s.shareMilli = max(s.shareMilli, l.ShareMilli)
		s.migSlices = max(s.migSlices, int64(l.MIGSlices))
		s.unhealthy += int64(e.unhealthy)
	})
	out := make([]namedPoolStats, 0, len(by))
	for name, s := range by {
		out = append(out, namedPoolStats{name, *s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pool < out[j].pool })
	return out
}
