package spotrisk

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/util"
)

// EventsToRegister names what can make a pod this plugin rejected
// schedulable: a node that appears or changes its capacity type, taints or
// labels, and a fix of the pod's own annotations. The fallback window's end
// is not an event; PostFilter arms a timer for it.
func (pl *SpotRisk) EventsToRegister(_ context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeLabel | fwk.UpdateNodeTaint}, QueueingHintFn: pl.isSchedulableAfterNodeChange},
		{Event: fwk.ClusterEvent{Resource: fwk.TargetPod, ActionType: fwk.Update}, QueueingHintFn: pl.isSchedulableAfterPodChange},
	}, nil
}

// isSchedulableAfterNodeChange queues the pod when the new or changed node
// passes the plugin's rules for it and did not before.
func (pl *SpotRisk) isSchedulableAfterNodeChange(logger klog.Logger, pod *corev1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	oldNode, newNode, err := util.As[*corev1.Node](oldObj, newObj)
	if err != nil {
		return fwk.Queue, err
	}
	class, err := pl.classify(pod)
	if err != nil {
		// Only a change of the pod's annotations can help.
		return fwk.QueueSkip, nil
	}
	s := pl.stateFor(pod, class)
	if pl.exclude(s, newNode) != "" {
		return fwk.QueueSkip, nil
	}
	if oldNode != nil && pl.exclude(s, oldNode) == "" {
		// It already passed; this change did not matter to this plugin.
		return fwk.QueueSkip, nil
	}
	logger.V(5).Info("Node now passes SpotRisk's rules for the pod", "pod", klog.KObj(pod), "node", klog.KObj(newNode))
	return fwk.Queue, nil
}

// isSchedulableAfterPodChange queues the pod when one of the annotations
// the plugin reads changed.
func (pl *SpotRisk) isSchedulableAfterPodChange(logger klog.Logger, pod *corev1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	oldPod, newPod, err := util.As[*corev1.Pod](oldObj, newObj)
	if err != nil {
		return fwk.Queue, err
	}
	for _, a := range Annotations {
		if oldPod.Annotations[a] != newPod.Annotations[a] {
			return fwk.Queue, nil
		}
	}
	return fwk.QueueSkip, nil
}
