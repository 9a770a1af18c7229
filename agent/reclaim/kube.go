package reclaim

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// severity orders taint values: a node marked for a Spot interruption keeps
// that mark when a later, milder notice arrives.
var severity = map[string]int{
	reclaim.TaintValue(telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION): 1,
	reclaim.TaintValue(telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE):              2,
	reclaim.TaintValue(telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION):              3,
	reclaim.TaintValue(telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION):        4,
}

// taint puts penny.dev/reclaim=<kind>:NoSchedule on the node, keeping a more
// severe value already there.
func (f *Flow) taint(ctx context.Context, kind telemetryv1.ReclaimKind) error {
	want := reclaim.Taint(kind)
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		node, err := f.client.CoreV1().Nodes().Get(ctx, f.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for i, t := range node.Spec.Taints {
			if t.Key != reclaim.TaintKey {
				continue
			}
			if t.Effect == want.Effect && severity[t.Value] >= severity[want.Value] {
				return nil
			}
			node.Spec.Taints = append(node.Spec.Taints[:i:i], node.Spec.Taints[i+1:]...)
			break
		}
		now := metav1.Now()
		want.TimeAdded = &now
		node.Spec.Taints = append(node.Spec.Taints, want)
		_, err = f.client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// untaint removes penny.dev/reclaim (the notice was withdrawn and the node
// stays).
func (f *Flow) untaint(ctx context.Context) (bool, error) {
	removed := false
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		node, err := f.client.CoreV1().Nodes().Get(ctx, f.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		kept := node.Spec.Taints[:0:0]
		for _, t := range node.Spec.Taints {
			if t.Key != reclaim.TaintKey {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(node.Spec.Taints) {
			return nil
		}
		node.Spec.Taints = kept
		_, err = f.client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
		removed = err == nil
		return err
	})
	return removed, err
}

// movable reports whether a pod is the reclaim flow's to checkpoint and
// evict: not a DaemonSet's (it belongs to the node and goes with it), not a
// static pod, not finished, not already being deleted.
func movable(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp == nil && running(pod)
}

// running reports whether a pod's work still runs on the node, as the
// reclaim flow counts it: not finished, not a DaemonSet's or a static pod
// (they go with the node), being deleted or not (its grace period runs).
func running(pod *corev1.Pod) bool {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	if _, mirror := pod.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
		return false
	}
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller && o.Kind == "DaemonSet" {
			return false
		}
	}
	return true
}

// podsOnNodeNow lists the node's movable pods from the API server, for the
// checkpoint requests and the evictions: the informer may not show yet a pod
// bound just before the notice (a reclaim whose pods checkpoint fast is done
// in milliseconds), and a pod missed there would go down with the node,
// neither asked nor evicted. The informer's copy serves when the API server
// cannot answer.
// An API server that does not answer at all (a partitioned node, an
// overloaded control plane) is given a quarter of the time left before by,
// within [minAPIWait, maxAPIWait], before the informer's copy serves: the
// list had no bound, and the checkpoints of a 30-second notice waited on it.
func (f *Flow) podsOnNodeNow(ctx context.Context, by time.Time) ([]*corev1.Pod, error) {
	lctx, cancel := context.WithTimeout(ctx, apiWait(by))
	defer cancel()
	list, err := f.client.CoreV1().Pods("").List(lctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", f.node).String(),
	})
	if err != nil {
		f.log.Error(err, "cannot list the node's pods from the API server; using the agent's copy")
		return f.podsOnNode()
	}
	var out []*corev1.Pod
	for i := range list.Items {
		if p := &list.Items[i]; p.Spec.NodeName == f.node && movable(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// Bounds of apiWait.
const (
	minAPIWait = 500 * time.Millisecond
	maxAPIWait = 5 * time.Second
)

// apiWait is how long a read the reclaim flow can do without (the informer
// has a copy) waits for the API server when the work is due by by.
func apiWait(by time.Time) time.Duration {
	return min(max(time.Until(by)/4, minAPIWait), maxAPIWait)
}

// podOnNode is a pod of the node by its key whose work still runs here: the
// informer's copy, else the API server's, for a pod bound just before the
// scheduler's command whose watch event has not come yet (the scheduler read
// it bound here from the API server). The agent acts for its own node only.
// A pod that is not, or no longer, the flow's to checkpoint (finished: a
// member that completed before its gang was reclaimed) gets why in words:
// its hook would be called on an address no container serves, and the
// scheduler told it failed for want of an answer by the deadline.
func (f *Flow) podOnNode(ctx context.Context, ns, name string, by time.Time) (*corev1.Pod, string) {
	pod, err := f.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		gctx, cancel := context.WithTimeout(ctx, apiWait(by))
		defer cancel()
		pod, err = f.client.CoreV1().Pods(ns).Get(gctx, name, metav1.GetOptions{})
	}
	switch {
	case err != nil || pod.Spec.NodeName != f.node:
		return nil, fmt.Sprintf("pod %s/%s is not on node %s", ns, name, f.node)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return nil, fmt.Sprintf("pod %s/%s has finished (%s) on node %s: nothing runs to checkpoint", ns, name, pod.Status.Phase, f.node)
	}
	return pod, ""
}

// podsOnNode lists the node's movable pods from the informer.
func (f *Flow) podsOnNode() ([]*corev1.Pod, error) {
	return f.podsOnNodeThat(movable)
}

// podsOnNodeThat lists the node's pods from the informer that keep says to.
func (f *Flow) podsOnNodeThat(keep func(*corev1.Pod) bool) ([]*corev1.Pod, error) {
	all, err := f.pods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for _, p := range all {
		if p.Spec.NodeName == f.node && keep(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// evictResult is how one eviction ended.
type evictResult string

const (
	evicted evictResult = "evicted"
	gone    evictResult = "gone"
	blocked evictResult = "blocked"
	// unavailable: the API server, or the agent evictions webhook it asks
	// (deploy/agent/reclaim.yaml; it fails closed while no penny-scheduler
	// replica answers), could not decide now. Asked again, as blocked.
	unavailable evictResult = "unavailable"
	failed      evictResult = "failed"
)

// evict asks the Eviction API once to evict pod with grace seconds. A
// PodDisruptionBudget's refusal is blocked, and a server that could not
// decide is unavailable: evictAll asks again, after the node's other pods
// have gone, until the deadline. A refusal (Forbidden: RBAC, or the webhook
// holding the agent to its node) is failed: asking again would not change it.
func (f *Flow) evict(ctx context.Context, pod *corev1.Pod, grace int64) (evictResult, error) {
	ev := &policyv1.Eviction{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{
			GracePeriodSeconds: &grace,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		},
	}
	err := f.client.PolicyV1().Evictions(pod.Namespace).Evict(ctx, ev)
	switch {
	case err == nil:
		return evicted, nil
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		// Gone, or replaced by a pod of the same name (the UID
		// precondition failed): nothing of this pod is left to move.
		return gone, nil
	case apierrors.IsTooManyRequests(err):
		return blocked, err
	case reclaim.Undecided(err):
		return unavailable, err
	default:
		return failed, err
	}
}
