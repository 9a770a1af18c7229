package gpu

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func corev1ResourceName(s string) corev1.ResourceName { return corev1.ResourceName(s) }

func podWith(limits ...corev1.ResourceList) *corev1.Pod {
	pod := &corev1.Pod{}
	pod.Name, pod.Namespace = "p", "ns"
	for _, l := range limits {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Limits: l}})
	}
	return pod
}

func TestParsePodRequest(t *testing.T) {
	r, err := ParsePodRequest(podWith(
		corev1.ResourceList{ResourceGPU: resource.MustParse("2")},
		corev1.ResourceList{ResourceGPU: resource.MustParse("1")},
	))
	if err != nil || r.GPUs != 3 || r.TotalMilli() != 3000 {
		t.Fatalf("whole GPUs: %+v %v", r, err)
	}
	r, err = ParsePodRequest(podWith(corev1.ResourceList{ResourceGPUMilli: resource.MustParse("460")}))
	if err != nil || r.Milli != 460 {
		t.Fatalf("share: %+v %v", r, err)
	}
	r, err = ParsePodRequest(podWith(corev1.ResourceList{MIGResourceName("3g.40gb"): resource.MustParse("1")}))
	if err != nil || r.MIG["3g.40gb"] != 1 || r.TotalMilli() != 3*1000/7 {
		t.Fatalf("MIG: %+v %v", r, err)
	}
	if r, err := ParsePodRequest(podWith(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")})); err != nil || !r.IsZero() {
		t.Fatalf("CPU pod: %+v %v", r, err)
	}
}

func TestParsePodRequestRejectsMixedKinds(t *testing.T) {
	_, err := ParsePodRequest(podWith(corev1.ResourceList{
		ResourceGPU:      resource.MustParse("1"),
		ResourceGPUMilli: resource.MustParse("500"),
	}))
	if err == nil || !strings.Contains(err.Error(), "ask for one of") {
		t.Fatalf("want mixed-kind error, got %v", err)
	}
	_, err = ParsePodRequest(podWith(corev1.ResourceList{ResourceGPUMilli: resource.MustParse("1000")}))
	if err == nil || !strings.Contains(err.Error(), string(ResourceGPU)) {
		t.Fatalf("want share-too-large error, got %v", err)
	}
}
