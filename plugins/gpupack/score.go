package gpupack

import (
	"context"
	"math"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// Scores. Score returns minus the placement's cost in millionths of a GPU
// (so more is better); NormalizeScore turns that into 0..100 relative to
// the best node of the cycle: 100 for the cheapest placement, 50 for one
// that costs ScoreScale thousandths of a GPU more, falling towards 0. This
// is the clean, normalised score other plugins' weights combine with: it
// says how much worse than the best a node is for packing, in GPU terms.
const (
	costUnit = 1000
	// gpuNodeCost is added to GPU nodes for a pod without GPUs when a node
	// without GPUs can take it (KeepGPUNodesForGPUPods): such nodes score 0.
	gpuNodeCost = 1e9
	// infeasible is the raw score of a node the packer cannot place the pod
	// on (Filter let it through on a snapshot that changed underneath).
	infeasible = math.MinInt64 / 4
)

// PreScore fixes what every node's score shares: the demand to measure
// against, the span of GPU models for avoid-overkill, and whether a node
// without GPUs can take a pod that asks for none. It measures the pod on
// each node against the demand, in parallel, so that Score only reads.
func (p *GPUPack) PreScore(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, nodes []fwk.NodeInfo) *fwk.Status {
	s, err := getState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	logger := klog.FromContext(ctx)
	p.startCycle(s)
	// One parallel pass: measure the pod's placement on each node (the
	// node's memo, or one of another node in the same state, answers most)
	// and note what the cycle needs of it.
	facts := p.factsBuffer(len(nodes))
	chunks := (len(nodes) + measureChunk - 1) / measureChunk
	p.h.Parallelizer().Until(ctx, chunks, func(k int) {
		var w packing.Scratch
		for i := k * measureChunk; i < min(len(nodes), (k+1)*measureChunk); i++ {
			e := p.view.entryFor(logger, nodes[i])
			e.parts, e.fits = e.node.Measure(&s.cycle, &w)
			e.scoredFor = s
			facts[i] = nodeFacts{hasGPU: e.hasGPU, memGB: e.gpuMemoryGB}
		}
	}, Name)
	for _, f := range facts {
		if !f.hasGPU {
			s.cpuNodeFeasible = true
			continue
		}
		if f.memGB > 0 && s.req.HasGPU() {
			if s.cycle.MinGPUMemoryGB == 0 || f.memGB < s.cycle.MinGPUMemoryGB {
				s.cycle.MinGPUMemoryGB = f.memGB
			}
			s.cycle.MaxGPUMemoryGB = max(s.cycle.MaxGPUMemoryGB, f.memGB)
		}
	}
	return nil
}

// measureChunk is how many nodes one piece of PreScore's parallel pass
// measures with one packing.Scratch.
const measureChunk = 64

// nodeFacts is what PreScore gathers of each node.
type nodeFacts struct {
	hasGPU bool
	memGB  int
}

// factsBuffer returns the plugin's PreScore scratch, grown to n. Scheduling
// cycles of a profile run one at a time, so one buffer serves them all.
func (p *GPUPack) factsBuffer(n int) []nodeFacts {
	if cap(p.facts) < n {
		p.facts = make([]nodeFacts, n)
	}
	return p.facts[:n]
}

// scoreState is getState for Score, which runs once per feasible node:
// CycleState's map is read once per cycle, not once per node.
func (p *GPUPack) scoreState(state fwk.CycleState) (*cycleState, error) {
	if c := p.scoring.Load(); c != nil && c.state == state {
		return c.s, nil
	}
	s, err := getState(state)
	if err != nil {
		return nil, err
	}
	p.scoring.Store(&scoringState{state: state, s: s})
	return s, nil
}

// scoringState is the cycle whose state Score last read.
type scoringState struct {
	state fwk.CycleState
	s     *cycleState
}

// startCycle fixes the demand and weights for the pod's cycle.
func (p *GPUPack) startCycle(s *cycleState) {
	s.cycle.Req = s.req
	s.cycle.Demand = p.learner.Demand()
	s.cycle.Slot = s.cycle.Demand.Slot(&s.req.Shape)
	s.cycle.W = p.weights
	s.cycle.Shared = &p.measures
}

// Score is minus the cost of the best placement of the pod on the node.
// PreScore has measured it unless the node is not the snapshot's own (see
// entryFor).
func (p *GPUPack) Score(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	s, err := p.scoreState(state)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	e := p.view.entryFor(klog.FromContext(ctx), ni)
	parts, ok := e.parts, e.fits
	if e.scoredFor != s {
		var w packing.Scratch
		parts, ok = e.node.Measure(&s.cycle, &w)
	}
	if !ok {
		return infeasible, nil
	}
	cost := s.cycle.Compose(parts, e.gpuMemoryGB)
	if s.cpuNodeFeasible && !s.req.HasGPU() && e.hasGPU && *p.args.KeepGPUNodesForGPUPods {
		cost += gpuNodeCost
	}
	return -int64(math.Round(cost * costUnit)), nil
}

// ScoreExtensions returns the normaliser.
func (p *GPUPack) ScoreExtensions() fwk.ScoreExtensions { return p }

// NormalizeScore maps costs onto 0..100 relative to the cheapest node.
func (p *GPUPack) NormalizeScore(_ context.Context, _ fwk.CycleState, _ *corev1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	if len(scores) == 0 {
		return nil
	}
	best := scores[0].Score
	for _, s := range scores {
		best = max(best, s.Score)
	}
	scale := *p.args.ScoreScale
	for i := range scores {
		if scores[i].Score <= infeasible {
			scores[i].Score = fwk.MinScore
			continue
		}
		worse := float64(best-scores[i].Score) / costUnit
		scores[i].Score = int64(math.Round(float64(fwk.MaxScore) * scale / (scale + worse)))
	}
	return nil
}
