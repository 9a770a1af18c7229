package gpu

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// PodProducts reads the GPU products a pod accepts from its node selector and
// its required node affinity on nvidia.com/gpu.product (operator In), the
// ways GPU model constraints are written; nil means any product. With several
// node selector terms (ORed) the union is returned, and a term without a
// product requirement accepts any product. Scoring reads this; filtering
// stays with the NodeAffinity plugin.
func PodProducts(pod *corev1.Pod) []string {
	out := affinityProducts(pod)
	sel, ok := pod.Spec.NodeSelector[LabelProduct]
	switch {
	case !ok:
		return out
	case out == nil || slices.Contains(out, sel):
		return []string{sel}
	}
	// Selector and affinity disagree: no product is accepted.
	return []string{}
}

func affinityProducts(pod *corev1.Pod) []string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return nil
	}
	var out []string
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		found := false
		for _, r := range term.MatchExpressions {
			if r.Key == LabelProduct && r.Operator == corev1.NodeSelectorOpIn {
				out = append(out, r.Values...)
				found = true
			}
		}
		if !found {
			return nil
		}
	}
	return out
}
