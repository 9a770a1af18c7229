package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins"
)

// The fill protocol of the FGD paper ("fill until saturation"): the trace's
// pods, then pods drawn uniformly at random, with replacement, from the same
// list until the GPU they ask for in total reaches Inflate x the cluster's
// GPU capacity. Nothing departs; a pod that fits nowhere fails and the run
// goes on. The GPU allocation ratio is recorded each time arrivals cross
// another 1% of capacity (0..130%).
//
// Two details of the paper's artifact (hkust-adsl/kubernetes-scheduler-
// simulator) decide its published numbers and are the defaults here: the
// trace's pods are submitted in a seeded random order (its --shuffle-pod),
// not in creation order, and ties between equally scored nodes go to the
// first node of a seeded random node order (it renames the nodes with a
// seeded permutation and its scheduler takes the first best node). Random
// tie-breaking spreads pods and costs FGD about 4 points of allocation;
// creation order costs GpuPacking and GpuClustering about 1.5-2 points.

// FillOptions describes one fill experiment.
type FillOptions struct {
	Nodes  []*v1.Node
	Trace  *Trace
	Policy *Policy
	Seed   uint64
	// Inflate is the arrivals target as a multiple of GPU capacity (1.3).
	Inflate float64
	// SchedulerConfig overrides the deployed configuration for --policy penny.
	SchedulerConfig []byte
	// Creation submits the trace's pods in creation order; by default they go
	// in a seeded random order, as the paper's artifact does.
	Creation bool
	// TieBreak chooses between equally scored nodes (default: node order).
	TieBreak TieBreak
	// Parallelism bounds the engine's Filter/Score goroutines.
	Parallelism int
	// NoMemo runs every Filter plugin on every node for every pod, for
	// checking that memoized filtering changes nothing.
	NoMemo bool
}

// FillRecord is the result of one (policy, seed) fill.
type FillRecord struct {
	Policy string `json:"policy"`
	Seed   uint64 `json:"seed"`
	// UnallocatedGPUPct is 100 - the allocation ratio at the last point.
	UnallocatedGPUPct float64 `json:"unallocated_gpu_pct"`
	// AllocCurve[k] is the GPU allocation ratio (%) when arrivals reached k%
	// of GPU capacity, k = 0..100*Inflate.
	AllocCurve []float64 `json:"alloc_curve"`
	// FragRateAt80 is the share (%) of idle GPU capacity that no typical pod
	// could use, when arrivals reached 80% of capacity.
	FragRateAt80 float64 `json:"frag_rate_at_80"`
	// FragCurve[k] is the same rate at arrivals of 10*k % of capacity.
	FragCurve   []float64 `json:"frag_curve"`
	PodsTotal   int       `json:"pods_total"`
	PodsFailed  int       `json:"pods_failed"`
	GPUPodsFail int       `json:"gpu_pods_failed"`
	// PodsImpossible counts pods no node of the cluster could ever host.
	PodsImpossible int     `json:"pods_impossible"`
	WallSeconds    float64 `json:"wall_seconds"`
}

// FillWorkload is the protocol's arrival sequence: the trace pods (cut short
// once they ask for inflate x capacity), then seeded draws until the next
// one would take the GPU asked for past inflate x capacity.
// Each pod is a copy with its own name and UID.
func FillWorkload(ctx context.Context, tr *Trace, capacityMilli int64, inflate float64, seed uint64, shuffle bool) ([]*v1.Pod, error) {
	if err := CheckInflate(inflate); err != nil {
		return nil, err
	}
	// Draws of pods that ask for no GPU never reach the target.
	var demand int64
	for _, tp := range tr.Pods {
		demand += podGPUMilli(tp.Pod)
	}
	if demand == 0 {
		return nil, fmt.Errorf("%s: no pod asks for a GPU, so a fill, which adds pods until they ask for %v x the cluster's GPUs, would never end; fill a trace with GPU pods, or replay this one (penny sim replay)", tr.Source, inflate)
	}
	rng := rand.New(rand.NewPCG(seed, 0xda3e39cb94b95bdb))
	target := int64(inflate * float64(capacityMilli))
	var out []*v1.Pod
	var asked int64
	order := make([]TracePod, len(tr.Pods))
	copy(order, tr.Pods)
	if shuffle {
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	for _, tp := range order {
		if asked >= target {
			return out, nil
		}
		out = append(out, tp.Pod.DeepCopy())
		asked += podGPUMilli(tp.Pod)
	}
	for i := 0; ; i++ {
		// Pods of a thousandth of a GPU take millions of draws to fill a
		// large cluster.
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		src := tr.Pods[rng.IntN(len(tr.Pods))].Pod
		m := podGPUMilli(src)
		if asked+m > target {
			break
		}
		asked += m
		p := src.DeepCopy()
		p.Name = fmt.Sprintf("%s-fill-%d", src.Name, i)
		p.UID = types.UID(p.Namespace + "/" + p.Name)
		out = append(out, p)
	}
	return out, nil
}

// MaxInflate bounds the fill's target, as a multiple of the cluster's GPU
// capacity. The protocol fills to 1.3x; every arrival is held in memory and
// the curve has a point per 1% of capacity, and well before 10x every
// policy has long been saturated, so that a larger target only adds pods
// that fail.
const MaxInflate = 10

// CheckInflate refuses a fill target that is not a number from 0.01 (the
// curve's first point, 1% of capacity) to MaxInflate.
func CheckInflate(inflate float64) error {
	if !(inflate >= 0.01 && inflate <= MaxInflate) {
		return fmt.Errorf("--inflate %v: the fill's target must be a number from 0.01 to %d times the cluster's GPU capacity (the FGD protocol uses 1.3; every arriving pod is held in memory, and well before %dx every policy is saturated, so a larger target only adds pods that fail)", inflate, MaxInflate, MaxInflate)
	}
	return nil
}

// podGPUMilli is the GPU a pod asks for, in milli.
func podGPUMilli(p *v1.Pod) int64 {
	r, err := gpu.ParsePodRequest(p)
	if err != nil {
		return 0
	}
	return r.TotalMilli()
}

// GPUCapacityMilli sums the nodes' GPUs, in milli.
func GPUCapacityMilli(nodes []*v1.Node) int64 {
	var t int64
	for _, n := range nodes {
		t += int64(len(gpu.NodeDevicesFor(n).GPUs)) * gpu.MilliPerGPU
	}
	return t
}

// TypicalWorkload is the trace's distribution of pod shapes, cut to the
// shapes that make up 95% of its pods, as the FGD paper measures
// fragmentation against.
func TypicalWorkload(tr *Trace) gpu.Workload {
	counts := map[string]*gpu.ShapeCount{}
	var keys []string
	for _, tp := range tr.Pods {
		r, err := gpu.ParsePodRequest(tp.Pod)
		if err != nil {
			continue
		}
		s := gpu.ShapeOf(r, nonZeroMilliCPU(tp.Pod), PodProducts(tp.Pod))
		k := s.Key()
		if c, ok := counts[k]; ok {
			c.Count++
			continue
		}
		counts[k] = &gpu.ShapeCount{Shape: s, Count: 1}
		keys = append(keys, k)
	}
	list := make([]gpu.ShapeCount, 0, len(keys))
	for _, k := range keys {
		list = append(list, *counts[k])
	}
	return gpu.TypicalWorkload(list, 0.95)
}

// Fill runs one fill experiment.
func Fill(ctx context.Context, o FillOptions) (*FillRecord, error) {
	if o.Inflate == 0 {
		o.Inflate = 1.3
	}
	if err := CheckInflate(o.Inflate); err != nil {
		return nil, err
	}
	capacity := GPUCapacityMilli(o.Nodes)
	if capacity == 0 {
		return nil, fmt.Errorf("the cluster has no GPUs")
	}
	workload := TypicalWorkload(o.Trace)
	// A fill has no time: every pod arrives at one instant, and Penny's
	// plugins read a clock that stands at simEpoch throughout. No gang's
	// permit wait or backoff, nor any pod's wait for Spot, ends during a
	// fill, which on the wall clock would happen at points that depend on
	// the machine's speed.
	deps := plugins.Deps{Clock: newSimClock(simEpoch)}
	prof, reg, err := o.Policy.Build(Run{Seed: o.Seed, Workload: workload, SchedulerConfig: o.SchedulerConfig, Deps: deps})
	if err != nil {
		return nil, err
	}
	pods, err := FillWorkload(ctx, o.Trace, capacity, o.Inflate, o.Seed, !o.Creation)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		p.Spec.SchedulerName = prof.SchedulerName
	}
	impossible := Impossible(o.Nodes, pods)

	start := time.Now()
	e, err := NewEngine(ctx, EngineOptions{Profile: prof, Registry: reg, Nodes: o.Nodes, Seed: o.Seed, Parallelism: o.Parallelism, TieBreak: o.TieBreak, MemoizeFilters: o.Policy.NodeLocalFilters() && !o.NoMemo})
	if err != nil {
		return nil, err
	}
	defer e.Close()

	points := int(o.Inflate*100 + 1e-9)
	rec := &FillRecord{Policy: o.Policy.Name, Seed: o.Seed, PodsTotal: len(pods), PodsImpossible: len(impossible),
		AllocCurve: make([]float64, points+1), FragCurve: make([]float64, points/10+1)}
	if rec.FragCurve[0], err = ClusterFragRate(e, workload); err != nil {
		return nil, err
	}
	var arrived, allocated int64
	next, nextFrag := 1, 1
	for _, p := range pods {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := podGPUMilli(p)
		arrived += m
		out, err := e.Schedule(p)
		if err != nil {
			return nil, fmt.Errorf("%s seed %d, pod %s: %w", o.Policy.Name, o.Seed, p.Name, err)
		}
		settled, err := e.SettleWaiting()
		if err != nil {
			return nil, err
		}
		switch {
		case out.Node != "" && !out.Waiting:
			allocated += m
		case out.Waiting:
		default:
			rec.PodsFailed++
			if m > 0 {
				rec.GPUPodsFail++
			}
		}
		for _, s := range settled {
			if s.Node != "" {
				allocated += podGPUMilli(s.Pod)
			} else {
				rec.PodsFailed++
			}
		}
		for next <= points && arrived*100 >= int64(next)*capacity {
			rec.AllocCurve[next] = 100 * float64(allocated) / float64(capacity)
			if next%10 == 0 {
				f, err := ClusterFragRate(e, workload)
				if err != nil {
					return nil, err
				}
				rec.FragCurve[nextFrag] = f
				nextFrag++
				if next == 80 {
					rec.FragRateAt80 = f
				}
			}
			next++
		}
	}
	rejected, err := e.RejectWaiting("the fill ended before the pod's group was complete")
	if err != nil {
		return nil, err
	}
	rec.PodsFailed += len(rejected)
	// Arrivals stop just short of the target: the last points carry the
	// final state.
	final := 100 * float64(allocated) / float64(capacity)
	for ; next <= points; next++ {
		rec.AllocCurve[next] = final
	}
	if nextFrag < len(rec.FragCurve) {
		f, err := ClusterFragRate(e, workload)
		if err != nil {
			return nil, err
		}
		for ; nextFrag < len(rec.FragCurve); nextFrag++ {
			rec.FragCurve[nextFrag] = f
		}
	}
	rec.UnallocatedGPUPct = 100 - final
	rec.WallSeconds = time.Since(start).Seconds()
	return rec, nil
}

// ClusterFragRate is the share (%) of the cluster's idle GPU capacity that is
// fragmented for the workload's typical pods (FGD's fragmentation rate).
func ClusterFragRate(e *Engine, w gpu.Workload) (float64, error) {
	nis, err := e.NodeInfos()
	if err != nil {
		return 0, err
	}
	v := newViews()
	var frag, idle float64
	for _, ni := range nis {
		n, err := v.get(ni)
		if err != nil {
			return 0, err
		}
		frag += w.FragMilli(n.cpuFree, n.free, n.dev.Product)
		idle += float64(n.freeSum)
	}
	if idle == 0 {
		return 0, nil
	}
	return 100 * frag / idle, nil
}

// ImpossiblePod is a pod no node of the cluster could host even when empty.
type ImpossiblePod struct {
	Pod    string `json:"pod"`
	Reason string `json:"reason"`
}

// Impossible finds the pods that ask for more than any single node has (CPU,
// memory, GPUs of an accepted model), so a run reports them instead of
// counting them silently among the failures. Pods of one shape are checked
// once.
func Impossible(nodes []*v1.Node, pods []*v1.Pod) []ImpossiblePod {
	type nodeCap struct {
		cpu, mem int64
		gpus     int
		product  string
	}
	caps := make([]nodeCap, 0, len(nodes))
	for _, n := range nodes {
		a := n.Status.Allocatable
		caps = append(caps, nodeCap{a.Cpu().MilliValue(), a.Memory().Value(), len(gpu.NodeDevicesFor(n).GPUs), n.Labels[gpu.LabelProduct]})
	}
	verdict := map[string]string{}
	var out []ImpossiblePod
	for _, p := range pods {
		r, err := gpu.ParsePodRequest(p)
		if err != nil {
			out = append(out, ImpossiblePod{p.Namespace + "/" + p.Name, err.Error()})
			continue
		}
		var cpu, mem int64
		for _, c := range p.Spec.Containers {
			cpu += c.Resources.Requests.Cpu().MilliValue()
			mem += c.Resources.Requests.Memory().Value()
		}
		products := PodProducts(p)
		key := fmt.Sprintf("%d/%d/%s/%v", cpu, mem, r, products)
		reason, done := verdict[key]
		if !done {
			reason = impossibleReason(cpu, mem, r, products, func(yield func(cpu, mem int64, gpus int, product string) bool) {
				for _, c := range caps {
					if !yield(c.cpu, c.mem, c.gpus, c.product) {
						return
					}
				}
			})
			verdict[key] = reason
		}
		if reason != "" {
			out = append(out, ImpossiblePod{p.Namespace + "/" + p.Name, reason})
		}
	}
	return out
}

func impossibleReason(cpu, mem int64, r gpu.Request, products []string, nodes func(func(cpu, mem int64, gpus int, product string) bool)) string {
	need := int(r.GPUs)
	if r.Milli > 0 || len(r.MIG) > 0 {
		need = 1
	}
	accepts := gpu.Shape{Products: products}
	var maxCPU, maxMem int64
	maxGPUs, fits := 0, false
	nodes(func(c, m int64, g int, product string) bool {
		if need > 0 && !accepts.Accepts(product) {
			return true
		}
		maxCPU, maxMem, maxGPUs = max(maxCPU, c), max(maxMem, m), max(maxGPUs, g)
		if c >= cpu && m >= mem && g >= need {
			fits = true
			return false
		}
		return true
	})
	if fits {
		return ""
	}
	where := "any node"
	if need > 0 && len(products) > 0 {
		where = "any node with GPU model " + strings.Join(products, " or ")
	}
	switch {
	case maxCPU == 0 && maxGPUs == 0:
		return fmt.Sprintf("asks for %s but no node has that GPU model", r)
	case maxGPUs < need:
		return fmt.Sprintf("asks for %s but %s has at most %d GPUs", r, where, maxGPUs)
	}
	return fmt.Sprintf("asks for %dm CPU, %dMi memory and %s, more than %s has (at most %dm CPU, %dMi memory)", cpu, mem>>20, r, where, maxCPU, maxMem>>20)
}

// FillJob is one (policy, seed) experiment of a fill sweep.
type FillJob struct {
	Policy *Policy
	Seed   uint64
}

// FillAll runs the jobs, parallel at a time, and returns their records in
// job order. Each job builds its own engine, so jobs share nothing.
func FillAll(ctx context.Context, base FillOptions, jobs []FillJob, parallel int, progress func(*FillRecord)) ([]*FillRecord, error) {
	parallel = max(parallel, 1)
	if base.Parallelism == 0 {
		base.Parallelism = cpusEach(parallel)
	}
	var mu sync.Mutex
	return runAll(ctx, len(jobs), parallel, func(ctx context.Context, i int) (*FillRecord, error) {
		o := base
		o.Policy, o.Seed = jobs[i].Policy, jobs[i].Seed
		rec, err := Fill(ctx, o)
		if err == nil && progress != nil {
			mu.Lock()
			progress(rec)
			mu.Unlock()
		}
		return rec, err
	})
}
