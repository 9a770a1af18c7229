package gpupack

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// Reserve chooses the pod's devices on the node the scheduler picked and
// holds them in the view, so that the next cycles see them taken although
// the pod's annotation is not written yet.
func (p *GPUPack) Reserve(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	s, err := getState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if !s.req.HasGPU() {
		return nil
	}
	ni, err := p.h.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if s.cycle.Demand == nil {
		// Only one node was feasible, so the scheduler did not score.
		p.startCycle(s)
	}
	n := p.view.entryToReserve(klog.FromContext(ctx), ni, pod.UID).node
	n.Prepare(s.cycle.Demand)
	a, _, err := n.Choose(&s.cycle)
	if err != nil {
		return fwk.NewStatus(fwk.Unschedulable, err.Error())
	}
	p.view.reserve(pod, nodeName, a)
	s.assigned, s.node = a, nodeName
	return nil
}

// Unreserve gives the devices back when the pod does not bind after all.
// Where kube-scheduler then forgets the pod from its cache, the node's next
// snapshot would drop the reservation anyway; its pod-group cycle forgets
// members from the cycle's snapshot, which leaves the node's generation as
// it was, and reserves them again at once: only the mark unreserve leaves
// makes the view read the node again.
func (p *GPUPack) Unreserve(_ context.Context, state fwk.CycleState, pod *corev1.Pod, _ string) {
	p.view.unreserve(pod.UID)
	if s, err := getState(state); err == nil {
		s.assigned, s.node = nil, ""
	}
}
