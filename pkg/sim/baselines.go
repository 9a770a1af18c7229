package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gpu"
)

// The published baselines of the FGD paper (Weng et al., ATC'23), as score
// plugins for the simulator. Each follows the semantics of the paper's
// artifact (hkust-adsl/kubernetes-scheduler-simulator), re-implemented here:
// node scores on kube-scheduler's 0..100 scale with the same integer
// rounding, a CPU and GPU view of the node (memory is left to
// NodeResourcesFit), and the artifact's normalising constants (a node of at
// most 128 cores and 8 GPUs). They live with the simulator, not in
// penny-scheduler: they are yardsticks.
//
//   RandomScore         a uniformly random feasible node
//   DotProductScore     1 - <request, free>/2, both normalised by the largest node
//   GpuClusteringScore  nodes already holding pods of the same GPU kind first
//   GpuPackingScore     partly used GPUs, then partly used nodes, then idle nodes
//   BestFitScore        least weighted free CPU+GPU left after placement
//   FGDScore            least growth of the node's expected fragmentation

// Plugin names.
const (
	RandomScoreName        = "RandomScore"
	DotProductScoreName    = "DotProductScore"
	GpuClusteringScoreName = "GpuClusteringScore"
	GpuPackingScoreName    = "GpuPackingScore"
	BestFitScoreName       = "BestFitScore"
	FGDScoreName           = "FGDScore"
)

// The artifact's normalising node: 128 cores, 8 GPUs.
const (
	maxSpecMilliCPU = 128000
	maxSpecGPUMilli = 8000
)

// baseline is the shared part of the score plugins.
type baseline struct {
	name  string
	views *views
	score func(p *podRequest, n *nodeView) int64
	norm  bool
}

var _ fwk.ScorePlugin = &baseline{}

func (b *baseline) Name() string { return b.name }

// SignPod declines batching: the baselines score from cluster-wide state.
func (b *baseline) SignPod(context.Context, *v1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	return nil, fwk.NewStatus(fwk.Unschedulable, "baseline scores depend on each GPU's state")
}

func (b *baseline) Score(_ context.Context, state fwk.CycleState, pod *v1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	p, err := requestOf(state, pod)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	n, err := b.views.get(ni)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	return b.score(p, n), nil
}

func (b *baseline) ScoreExtensions() fwk.ScoreExtensions {
	if b.norm {
		return b
	}
	return nil
}

// NormalizeScore spreads the scores over 0..100 (min-max), as BestFit does.
func (b *baseline) NormalizeScore(_ context.Context, _ fwk.CycleState, _ *v1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	if len(scores) == 0 {
		return nil
	}
	lo, hi := scores[0].Score, scores[0].Score
	for _, s := range scores {
		lo, hi = min(lo, s.Score), max(hi, s.Score)
	}
	for i := range scores {
		if hi == lo {
			scores[i].Score = fwk.MinScore
		} else {
			scores[i].Score = (scores[i].Score-lo)*(fwk.MaxScore-fwk.MinScore)/(hi-lo) + fwk.MinScore
		}
	}
	return nil
}

func baselineFactory(name string, v *views, norm bool, score func(p *podRequest, n *nodeView) int64) frameworkruntime.PluginFactory {
	return func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) {
		return &baseline{name: name, views: v, score: score, norm: norm}, nil
	}
}

// dotProductScore: Tetris' alignment of the request with the node's free
// CPU and GPU, both normalised by the largest node; the artifact ranks the
// smaller dot product higher.
func dotProductScore(p *podRequest, n *nodeView) int64 {
	if n.cpuFree < p.milliCPU {
		return fwk.MinScore
	}
	dot := float64(n.cpuFree)/maxSpecMilliCPU*float64(p.milliCPU)/maxSpecMilliCPU +
		float64(n.freeSum)/maxSpecGPUMilli*float64(p.gpuMilli)/maxSpecGPUMilli
	return int64(float64(fwk.MaxScore) * (1 - dot/2))
}

// gpuClusteringScore puts pods of one GPU kind together: nodes holding only
// that kind (75..100), nodes holding it among others (50..75), idle nodes
// (25..50), nodes holding other kinds (0..25); fuller nodes first within a
// band. Pods without GPUs score 0 everywhere.
func gpuClusteringScore(p *podRequest, n *nodeView) int64 {
	if p.tag == "" {
		return fwk.MinScore
	}
	fill := fwk.MaxScore / 4 * (maxSpecGPUMilli - n.freeSum) / maxSpecGPUMilli
	switch {
	case n.tags[p.tag] > 0 && len(n.tags) == 1:
		return fill + fwk.MaxScore*3/4
	case n.tags[p.tag] > 0:
		return fill + fwk.MaxScore*2/4
	case len(n.tags) == 0:
		return fill + fwk.MaxScore/4
	}
	return fill
}

// gpuPackingScore: using partly used GPUs scores 50..100 (less free on them
// is better), idle GPUs of a partly used node 33..50 (fewer is better), an
// idle node below 33. Pods without GPUs score 0 everywhere.
func gpuPackingScore(p *podRequest, n *nodeView) int64 {
	if p.numGPU == 0 {
		return fwk.MinScore
	}
	idle := int64(0)
	for _, f := range n.free {
		if f == gpu.MilliPerGPU {
			idle++
		}
	}
	if idle == int64(len(n.free)) {
		return max(fwk.MaxScore/3-idle, idle)
	}
	// Take GPUs least free first, as the device choice would.
	order := ascendingFree(n.free)
	need, idleUsed, freeRatio := p.numGPU, int64(0), int64(0)
	for _, i := range order {
		if need == 0 {
			break
		}
		if n.free[i] >= p.perGPU {
			need--
			if n.free[i] == gpu.MilliPerGPU {
				idleUsed++
			}
			freeRatio += n.free[i] * 100 / gpu.MilliPerGPU
		}
	}
	if need > 0 {
		return fwk.MinScore
	}
	if idleUsed > 0 {
		return max(fwk.MaxScore/2-idleUsed, fwk.MaxScore/3)
	}
	return max(fwk.MaxScore-freeRatio/10, fwk.MaxScore/2)
}

func ascendingFree(free []int64) []int {
	order := make([]int, len(free))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return free[order[a]] < free[order[b]] })
	return order
}

// bestFitScore: the weighted free CPU and GPU left after placement,
// normalised by the largest node, less is better (then min-max normalised).
func bestFitScore(p *podRequest, n *nodeView) int64 {
	cpuLeft, gpuLeft := n.cpuFree-p.milliCPU, n.freeSum-p.gpuMilli
	if cpuLeft < 0 || gpuLeft < 0 {
		return fwk.MinScore
	}
	left := 0.5*float64(cpuLeft)/maxSpecMilliCPU + 0.5*float64(gpuLeft)/maxSpecGPUMilli
	return int64((1 - left) * float64(fwk.MaxScore))
}

// fgd scores and places with Fragmentation Gradient Descent: the node, and
// for a share the GPU, where the node's expected fragmentation grows least.
type fgd struct {
	workload gpu.Workload
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// nodeFrag is the node's fragmentation before the pod, computed once per
// node generation.
func (f *fgd) nodeFrag(n *nodeView) float64 {
	if !n.fragDone {
		n.frag = f.workload.FragMilli(n.cpuFree, n.free, n.dev.Product)
		n.fragDone = true
	}
	return n.frag
}

// best returns the score of placing p on n and, for a share, the GPU that
// earns it (-1 otherwise). The score maps the fragmentation decrease through
// a sigmoid onto 0..100, as the artifact does.
func (f *fgd) best(p *podRequest, n *nodeView) (int64, int) {
	if p.req.IsZero() && p.milliCPU == 0 {
		return fwk.MaxScore, -1
	}
	if p.numGPU > 0 && !(gpu.Shape{Products: p.products}).Accepts(n.dev.Product) {
		return fwk.MinScore, -1
	}
	before := f.nodeFrag(n)
	var buf [16]int64
	free := append(buf[:0], n.free...)
	cpu := n.cpuFree - p.milliCPU
	score := func() int64 {
		after := f.workload.FragMilli(cpu, free, n.dev.Product)
		return int64(sigmoid((before-after)/1000) * float64(fwk.MaxScore))
	}
	if p.numGPU == 1 && p.perGPU < gpu.MilliPerGPU {
		bestScore, bestGPU := int64(0), -1
		for i, fr := range n.free {
			if fr < p.perGPU {
				continue
			}
			free[i] -= p.perGPU
			if s := score(); bestGPU < 0 || s > bestScore {
				bestScore, bestGPU = s, i
			}
			free[i] += p.perGPU
		}
		return bestScore, bestGPU
	}
	// Whole GPUs: the idle GPUs taken are interchangeable.
	need := p.numGPU
	for _, i := range ascendingFree(n.free) {
		if need == 0 {
			break
		}
		if free[i] >= p.perGPU {
			free[i] -= p.perGPU
			need--
		}
	}
	return score(), -1
}

func (f *fgd) score(p *podRequest, n *nodeView) int64 {
	s, _ := f.best(p, n)
	return s
}

// choose puts a share on the GPU FGD prefers; whole GPUs on the first idle.
func (f *fgd) choose(p *podRequest, n *nodeView) (gpu.Assignment, error) {
	if p.numGPU == 1 && p.perGPU < gpu.MilliPerGPU {
		if _, g := f.best(p, n); g >= 0 {
			return gpu.Assignment{{GPU: g, Milli: p.perGPU}}, nil
		}
	}
	return n.dev.FirstFit(p.req)
}

// randomScore gives 100 to one feasible node drawn at PreScore, 0 to the rest.
type randomScore struct {
	rng *rand.Rand
}

type randomPick string

func (r randomPick) Clone() fwk.StateData { return r }

const randomPickKey fwk.StateKey = "PreScore" + RandomScoreName

var (
	_ fwk.PreScorePlugin = &randomScore{}
	_ fwk.ScorePlugin    = &randomScore{}
)

func (r *randomScore) Name() string { return RandomScoreName }

// SignPod declines batching: each pod gets its own draw.
func (r *randomScore) SignPod(context.Context, *v1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	return nil, fwk.NewStatus(fwk.Unschedulable, "each pod gets its own random draw")
}

func (r *randomScore) PreScore(_ context.Context, state fwk.CycleState, _ *v1.Pod, nodes []fwk.NodeInfo) *fwk.Status {
	if len(nodes) == 0 {
		return fwk.NewStatus(fwk.Skip)
	}
	state.Write(randomPickKey, randomPick(nodes[r.rng.IntN(len(nodes))].Node().Name))
	return nil
}

func (r *randomScore) Score(_ context.Context, state fwk.CycleState, _ *v1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	d, err := state.Read(randomPickKey)
	if err != nil {
		return 0, fwk.AsStatus(fmt.Errorf("reading %s: %w", randomPickKey, err))
	}
	if string(d.(randomPick)) == ni.Node().Name {
		return fwk.MaxScore, nil
	}
	return fwk.MinScore, nil
}

func (r *randomScore) ScoreExtensions() fwk.ScoreExtensions { return nil }

// randomChooser puts a share on a uniformly random GPU with room for it.
func randomChooser(rng *rand.Rand) Chooser {
	return func(p *podRequest, n *nodeView) (gpu.Assignment, error) {
		if p.numGPU == 1 && p.perGPU < gpu.MilliPerGPU {
			c := n.dev.ShareCandidates(p.perGPU, nil)
			if len(c) == 0 {
				return nil, fmt.Errorf("no GPU on the node has %d milli free", p.perGPU)
			}
			return gpu.Assignment{{GPU: c[rng.IntN(len(c))], Milli: p.perGPU}}, nil
		}
		return n.dev.FirstFit(p.req)
	}
}

func randomFactory(rng *rand.Rand) frameworkruntime.PluginFactory {
	return func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) {
		return &randomScore{rng: rng}, nil
	}
}
