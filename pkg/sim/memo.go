package sim

import (
	"encoding/json"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	internalcache "k8s.io/kubernetes/pkg/scheduler/backend/cache"
)

// filterMemo remembers Filter results per pod signature and node. In a
// simulation most pods share a handful of shapes, and between two pods of
// one shape only the nodes that got or lost pods change, so the real Filter
// plugins only need to run on those. This is the idea behind kube-scheduler's
// own pod signatures (OpportunisticBatching), applied to filtering only.
//
// A result is reused only while the node's NodeInfo generation is the same,
// and only for pods whose Filter outcome depends on nothing but the pod and
// that node: no volumes, no resource claims, no inter-pod (anti-)affinity,
// no topology spread constraints, and no pod in the cluster with affinity
// terms. The profile's Filter plugins must be of that kind too, which the
// caller vouches for (EngineOptions.MemoizeFilters).
type filterMemo struct {
	bySignature map[string]map[string]memoized
}

type memoized struct {
	generation int64
	status     *fwk.Status
}

// forPod returns the node results for pods like this one, or nil when the
// pod's results may not be reused.
func (m *filterMemo) forPod(pod *v1.Pod, snap *internalcache.Snapshot) map[string]memoized {
	if !nodeLocal(pod) {
		return nil
	}
	if l, err := snap.NodeInfos().HavePodsWithAffinityList(); err != nil || len(l) > 0 {
		return nil
	}
	if l, err := snap.NodeInfos().HavePodsWithRequiredAntiAffinityList(); err != nil || len(l) > 0 {
		return nil
	}
	sig, err := signature(pod)
	if err != nil {
		return nil
	}
	r, ok := m.bySignature[sig]
	if !ok {
		r = map[string]memoized{}
		m.bySignature[sig] = r
	}
	return r
}

// nodeLocal reports whether a pod's feasibility on a node depends only on
// the pod and that node.
func nodeLocal(pod *v1.Pod) bool {
	s := &pod.Spec
	if len(s.Volumes) > 0 || len(s.ResourceClaims) > 0 || len(s.TopologySpreadConstraints) > 0 {
		return false
	}
	if a := s.Affinity; a != nil && (a.PodAffinity != nil || a.PodAntiAffinity != nil) {
		return false
	}
	return true
}

// signature identifies what the Filter plugins read of a pod: its spec, its
// namespace and labels (other pods' anti-affinity could match them).
func signature(pod *v1.Pod) (string, error) {
	b, err := json.Marshal(struct {
		Namespace string
		Labels    map[string]string
		Spec      *v1.PodSpec
	}{pod.Namespace, pod.Labels, &pod.Spec})
	return string(b), err
}
