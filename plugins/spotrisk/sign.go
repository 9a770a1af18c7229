package spotrisk

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/pricing"
)

var _ fwk.SignPlugin = &SpotRisk{}

// SignPod lets the scheduler reuse one pod's results for the next identical
// pod (opportunistic batching): pods with the same class and requests get the
// same filtering and scores. A pod still waiting for the capacity it prefers
// (Class.Waits) is not signed, since
// its feasible nodes change when its wait ends; nor is a pod with a malformed
// annotation. What reclaims cut short of the pod's workload is part of the
// signature: it keeps an avoiding pod off Spot.
func (pl *SpotRisk) SignPod(_ context.Context, pod *corev1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	class, err := pl.classify(pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.Unschedulable, err.Error())
	}
	s := pl.stateFor(pod, class)
	if s.waiting {
		return nil, fwk.NewStatus(fwk.Unschedulable, "the pod is waiting for the capacity it prefers")
	}
	return []fwk.SignFragment{
		{Key: "penny.dev/SpotRisk.Class()", Value: class},
		{Key: "penny.dev/SpotRisk.Usage()", Value: pricing.PodUsage(pod)},
		{Key: "penny.dev/SpotRisk.Interrupted()", Value: s.interrupted},
	}, nil
}
