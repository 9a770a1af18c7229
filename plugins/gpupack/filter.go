package gpupack

import (
	"context"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	schedutil "k8s.io/kubernetes/pkg/scheduler/util"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// PreFilter reads the pod's request once, counts the pod as an arrival for
// the learned demand (a retry is not counted again, nor a what-if) and
// brings the device view up to date with the cycle's snapshot. Pods without
// GPUs skip Filter.
func (p *GPUPack) PreFilter(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	req, err := packing.ReqFor(pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	if !isWhatIf(ctx) {
		p.learner.Observe(string(pod.UID), req.Shape)
	}
	if p.pending != nil {
		p.pending.serve(pod.Spec.SchedulerName)
	}
	p.view.sync(klog.FromContext(ctx), nodes)
	state.Write(stateKey, &cycleState{req: req})
	if !req.HasGPU() {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return nil, nil
}

// PreFilterExtensions: the view is rebuilt from the NodeInfo that
// preemption and nominated pods change, so nothing needs updating.
func (p *GPUPack) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// Filter admits the node when the pod's GPUs fit on its devices as they are
// now, counting the devices of pods still being bound.
func (p *GPUPack) Filter(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) *fwk.Status {
	s, err := getState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	var e *entry
	var sl *slot
	var n *packing.Node
	if state.IsPodGroupSchedulingCycle() {
		e = p.view.entryInGroupCycle(klog.FromContext(ctx), ni)
		n = e.node
	} else if sl = p.view.synced(ni); sl != nil {
		// Only the slot: a node the pod fits reads nothing of its entry.
		n = sl.node
	} else {
		e = p.view.entryFor(klog.FromContext(ctx), ni)
		n = e.node
	}
	f := n.Fits(s.req)
	if f == packing.Fits {
		return nil
	}
	if e == nil {
		e = sl.entry
	}
	if e.asIfHealthy != nil {
		// Where the verdict on the node as if its GPUs were healthy is
		// better, they are what keeps the pod off.
		if g := e.asIfHealthy.Fits(s.req); g == packing.Fits || g == packing.NoRoom && f != packing.NoRoom {
			code := fwk.UnschedulableAndUnresolvable
			if f == packing.NoRoom {
				// Evicting pods from its healthy GPUs may still make room.
				code = fwk.Unschedulable
			}
			return fwk.NewStatus(code, unhealthyReason(s.req, f, g, e.unhealthy))
		}
	}
	switch f {
	case packing.NoRoom:
		return fwk.NewStatus(fwk.Unschedulable, noRoom(s.req))
	default:
		// Preemption skips the node: no pod it could evict makes room.
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, unresolvable(s.req, f))
	}
}

// unhealthyReason: f is the verdict on the node, g the one as if its GPUs
// were all healthy. The count is part of the reason, so nodes with as many
// GPUs unhealthy are counted together.
func unhealthyReason(r *packing.Req, f, g packing.Fit, unhealthy int) string {
	var why string
	switch {
	case r.GPU.GPUs > 0 && f == packing.NoRoom:
		why = "node(s) had fewer idle healthy GPUs than " + r.GPU.String()
	case r.GPU.GPUs > 0:
		why = "node(s) had fewer healthy GPUs than " + r.GPU.String()
	case g == packing.Fits:
		why = "node(s) had only unhealthy GPUs free for " + r.GPU.String()
	default:
		why = "node(s) had no healthy GPU that can hold " + r.GPU.String()
	}
	if unhealthy == 1 {
		return why + " (1 GPU reported unhealthy by its agent)"
	}
	return why + " (" + strconv.Itoa(unhealthy) + " GPUs reported unhealthy by its agent)"
}

// The reasons are the same for every node that fails the same way, so the
// scheduler's event counts them ("3 node(s) had ...").
func unresolvable(r *packing.Req, f packing.Fit) string {
	switch {
	case f == packing.Partitioned && r.GPU.GPUs > 0:
		return "node(s) had fewer GPUs outside static MIG partitions (which take MIG instances only) than " + r.GPU.String()
	case f == packing.Partitioned:
		return "node(s) had only GPUs in static MIG partitions (which take MIG instances only), none for " + r.GPU.String()
	case f == packing.TooManyInstances:
		return "node(s) could never hold " + r.GPU.String() + ": more instances or slices than their GPUs' MIG geometry and layouts have with every GPU free"
	case r.GPU.GPUs > 0:
		return "node(s) had fewer GPUs than " + r.GPU.String()
	case len(r.MIG) > 0:
		return "node(s) had no GPU that can hold " + r.GPU.String()
	}
	return "node(s) had no GPUs"
}

func noRoom(r *packing.Req) string {
	switch {
	case r.GPU.GPUs > 0:
		return "node(s) had fewer idle GPUs than " + r.GPU.String()
	case r.GPU.Milli > 0:
		return "node(s) had no GPU with " + r.GPU.String() + " free"
	}
	return "node(s) had no room on their GPUs' MIG geometry for " + r.GPU.String()
}

// EventsToRegister: a pod the devices could not take may fit once a pod
// holding GPUs leaves, or a node gains GPUs (added, new allocatable, a new
// MIG layout or partitioning label).
func (p *GPUPack) EventsToRegister(context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		{Event: fwk.ClusterEvent{Resource: fwk.AssignedPod, ActionType: fwk.Delete}, QueueingHintFn: isSchedulableAfterPodDelete},
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeAllocatable | fwk.UpdateNodeLabel}, QueueingHintFn: isSchedulableAfterNodeChange},
	}, nil
}

func isSchedulableAfterPodDelete(logger klog.Logger, pod *corev1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	deleted, _, err := schedutil.As[*corev1.Pod](oldObj, newObj)
	if err != nil {
		return fwk.Queue, err
	}
	// A pod nominated to a node holds its GPUs there for the pods of lower
	// or equal priority (Filter runs them with it on the node), so its
	// deletion, which the scheduler reports as this event, frees them too.
	r, err := gpu.ParsePodRequest(deleted)
	if err != nil || r.IsZero() || deleted.Spec.NodeName == "" && deleted.Status.NominatedNodeName == "" {
		logger.V(5).Info("deleted pod held no GPUs", "pod", klog.KObj(pod), "deletedPod", klog.KObj(deleted))
		return fwk.QueueSkip, nil
	}
	return fwk.Queue, nil
}

// isSchedulableAfterNodeChange: a new node with GPUs may take the pod; an
// updated one only if what it says of its GPUs changed: the GPU labels or
// the GPU, share and MIG resources it advertises (the device plugin
// advertises MIG resources anew when a GPU's geometry changes, and the
// retry reads the agent's report of the new layout). A node's CPU, memory
// and other labels are other plugins' to watch.
func isSchedulableAfterNodeChange(logger klog.Logger, pod *corev1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	old, node, err := schedutil.As[*corev1.Node](oldObj, newObj)
	if err != nil {
		return fwk.Queue, err
	}
	if len(gpu.NodeDevicesFor(node).GPUs) == 0 {
		logger.V(5).Info("node has no GPUs", "pod", klog.KObj(pod), "node", klog.KObj(node))
		return fwk.QueueSkip, nil
	}
	if old != nil && !gpusChanged(old, node) {
		logger.V(5).Info("node's GPUs did not change", "pod", klog.KObj(pod), "node", klog.KObj(node))
		return fwk.QueueSkip, nil
	}
	return fwk.Queue, nil
}

// gpuLabels are the node labels the plugin reads its devices from.
var gpuLabels = []string{gpu.LabelProduct, gpu.LabelCount, gpu.LabelMemory, gpu.LabelMIGStrategy, gpu.LabelMIGPartitioning}

func gpusChanged(old, node *corev1.Node) bool {
	for _, l := range gpuLabels {
		if old.Labels[l] != node.Labels[l] {
			return true
		}
	}
	a, b := old.Status.Allocatable, node.Status.Allocatable
	for _, pair := range [][2]corev1.ResourceList{{a, b}, {b, a}} {
		for name, q := range pair[0] {
			if !gpu.IsGPUResource(name) {
				continue
			}
			if other, ok := pair[1][name]; !ok || !q.Equal(other) {
				return true
			}
		}
	}
	return false
}

type whatIfKey struct{}

// WhatIf marks a context in which the filters are asked whether a pod would
// fit (an autoscaler trying its template nodes) rather than to schedule it:
// the pod is not counted as an arrival then. Cluster Autoscaler asks its own
// copy of the filters, so such questions never teach the scheduler's demand
// anything; a simulator that asks the scheduler's own plugins must say so.
func WhatIf(ctx context.Context) context.Context {
	return context.WithValue(ctx, whatIfKey{}, true)
}

func isWhatIf(ctx context.Context) bool {
	v, _ := ctx.Value(whatIfKey{}).(bool)
	return v
}
