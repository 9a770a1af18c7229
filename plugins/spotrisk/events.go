package spotrisk

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/util"

	"github.com/pennysched/penny/pkg/pricing"
)

// EventsToRegister names what can make a pod this plugin rejected
// schedulable: a node that appears or changes its capacity type, taints or
// labels, and a change of what the plugin reads of the pod itself. The
// fallback window's end is not an event; PostFilter (PreEnqueue for a native
// PodGroup's pods) arms a timer for it. Nor is a catalog reload; New has the
// store retry the pods it may help. Nor is a Spot pool's reclaim risk
// falling under a pod's limit as its reclaims age or node-hours come in;
// PostFilter (PodGroupPostFilter for a native PodGroup) has the pod wait for
// that pool (waitForRisk), whose timer the risk model's changes move. Nor is
// an agent's report that no longer carries a reclaim notice; New has the
// telemetry store retry the pods the node now lets in
// (retryReclaimWithdrawn).
func (pl *SpotRisk) EventsToRegister(_ context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeLabel | fwk.UpdateNodeTaint}, QueueingHintFn: pl.isSchedulableAfterNodeChange},
		{Event: fwk.ClusterEvent{Resource: fwk.TargetPod, ActionType: fwk.Update}, QueueingHintFn: pl.isSchedulableAfterPodChange},
	}, nil
}

// isSchedulableAfterNodeChange queues the pod when the new or changed node
// passes the plugin's rules for it and did not before. It reads the node's
// reclaim notice as its agent reports it now, not as it was when the node
// changed: a reclaim taint lifted before the report that drops its notice
// arrives leaves the pod skipped here, and that report retries it
// (retryReclaimWithdrawn).
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

// isSchedulableAfterPodChange queues the pod when what the plugin reads of
// it changed. Its annotations are not all of that: spec.activeDeadlineSeconds
// is a runtime (short training may use Spot at once), its gang how many nodes
// a reclaim can stop and the workload a reclaim is recorded under (once
// bitten), its owner its workload. Comparing the classes, not the fields,
// skips an edit that says the same (10% for 0.1).
func (pl *SpotRisk) isSchedulableAfterPodChange(logger klog.Logger, pod *corev1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	oldPod, newPod, err := util.As[*corev1.Pod](oldObj, newObj)
	if err != nil {
		return fwk.Queue, err
	}
	oldClass, oldErr := pl.classify(oldPod)
	newClass, newErr := pl.classify(newPod)
	if oldClass != newClass || fmt.Sprint(oldErr) != fmt.Sprint(newErr) || pricing.WorkloadKey(oldPod) != pricing.WorkloadKey(newPod) {
		logger.V(5).Info("Pod's Spot class or workload changed", "pod", klog.KObj(newPod))
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}
