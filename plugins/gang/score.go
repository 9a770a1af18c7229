package gang

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
)

const scoreStateKey fwk.StateKey = "penny.dev/" + Name + "-score"

type scoreState struct {
	// wholeGPUs is the member's whole-GPU request; a member asking for all
	// of a node's GPUs takes the whole node.
	wholeGPUs int64
	// siblings are nodes where members of the same gang run or are placed.
	siblings map[string]bool
}

func (s *scoreState) Clone() fwk.StateData { return s }

// PreScore prepares the gang-level preferences: members that take a whole
// node go to the emptiest such nodes, and members that share nodes go next to
// their siblings (fewer nodes, shorter paths between workers). Pods in no
// gang skip scoring.
func (pl *Gang) PreScore(_ context.Context, cs fwk.CycleState, pod *corev1.Pod, _ []fwk.NodeInfo) *fwk.Status {
	st := memberState(cs)
	if st == nil {
		return fwk.NewStatus(fwk.Skip)
	}
	ss := &scoreState{siblings: map[string]bool{}}
	if req, err := gpu.ParsePodRequest(pod); err == nil {
		ss.wholeGPUs = req.GPUs
	}
	pl.mu.Lock()
	if g := pl.gangs[st.spec.Ref.Key()]; g != nil {
		for _, node := range g.placed {
			ss.siblings[node] = true
		}
	}
	pl.mu.Unlock()
	if ss.wholeGPUs == 0 && len(ss.siblings) == 0 {
		return fwk.NewStatus(fwk.Skip)
	}
	cs.Write(scoreStateKey, ss)
	return nil
}

// Score is MaxScore times the share of the node's CPU left free for a
// member that takes all of a node's GPUs, MaxScore for a node that holds
// a sibling, and 0 otherwise.
func (pl *Gang) Score(_ context.Context, cs fwk.CycleState, _ *corev1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	data, err := cs.Read(scoreStateKey)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	ss := data.(*scoreState)
	alloc := ni.GetAllocatable()
	if ss.wholeGPUs > 0 && alloc.GetScalarResources()[gpu.ResourceGPU] == ss.wholeGPUs {
		if cpu := alloc.GetMilliCPU(); cpu > 0 {
			return fwk.MaxScore * max(cpu-ni.GetRequested().GetMilliCPU(), 0) / cpu, nil
		}
		return fwk.MaxScore, nil
	}
	if ss.siblings[ni.Node().Name] {
		return fwk.MaxScore, nil
	}
	return 0, nil
}

// ScoreExtensions is nil: scores are already in [0, MaxScore].
func (pl *Gang) ScoreExtensions() fwk.ScoreExtensions { return nil }
