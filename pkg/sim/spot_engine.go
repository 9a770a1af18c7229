package sim

import (
	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
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
	_, s, _ := e.fw.RunPreFilterPlugins(e.ctx, state, pod)
	if !s.IsSuccess() {
		if s.IsRejected() {
			return out, nil
		}
		return nil, s.AsError()
	}
	for i, n := range templates {
		ni := framework.NewNodeInfo()
		ni.SetNode(n)
		st := e.fw.RunFilterPlugins(e.ctx, state, pod, ni)
		if st.Code() == fwk.Error {
			return nil, st.AsError()
		}
		out[i] = st.IsSuccess()
	}
	return out, nil
}
