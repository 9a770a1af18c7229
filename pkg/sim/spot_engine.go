package sim

import (
	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/plugins/gpupack"
)

// FitsTemplates runs PreFilter and Filter for the pod on nodes that do not
// exist yet (an autoscaler's template nodes) and says which would take it,
// as Cluster Autoscaler asks the scheduler's filters before growing a pool.
func (e *Engine) FitsTemplates(pod *v1.Pod, templates []*v1.Node) ([]bool, error) {
	out := make([]bool, len(templates))
	if err := e.cache.UpdateSnapshot(e.logger, e.snapshot); err != nil {
		return nil, err
	}
	state := framework.NewCycleState()
	ctx := gpupack.WhatIf(e.ctx)
	_, s, _ := e.fw.RunPreFilterPlugins(ctx, state, pod)
	if !s.IsSuccess() {
		if s.IsRejected() {
			return out, nil
		}
		return nil, s.AsError()
	}
	for i, n := range templates {
		ni := e.templateInfos[n]
		if ni == nil {
			// A template never changes and Filter only reads a NodeInfo:
			// building one takes a third of the call.
			ni = framework.NewNodeInfo()
			ni.SetNode(n)
			if e.templateInfos == nil {
				e.templateInfos = map[*v1.Node]*framework.NodeInfo{}
			}
			e.templateInfos[n] = ni
		}
		st := e.fw.RunFilterPlugins(ctx, state, pod, ni)
		if st.Code() == fwk.Error {
			return nil, st.AsError()
		}
		out[i] = st.IsSuccess()
	}
	return out, nil
}
