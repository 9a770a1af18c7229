package pricing

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gpu"
)

func TestNodeCapacity(t *testing.T) {
	for labels, want := range map[string]CapacityType{
		"":                      OnDemand, // no label: a cluster without Spot pools
		capacity.LabelKarpenter: Spot,
		capacity.LabelGKESpot:   Spot,
		capacity.LabelOverride:  Reserved,
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{}}}
		switch labels {
		case capacity.LabelKarpenter:
			n.Labels[labels] = "spot"
		case capacity.LabelGKESpot:
			n.Labels[labels] = "true"
		case capacity.LabelOverride:
			n.Labels[labels] = "reserved"
		}
		if got := NodeCapacity(n).Type; got != want {
			t.Errorf("%q: %s, want %s", labels, got, want)
		}
	}
	if NodeCapacity(nil).Type != OnDemand {
		t.Error("nil node")
	}
}

func TestParseCapacityType(t *testing.T) {
	for _, ok := range []string{"spot", "on-demand", "reserved"} {
		if _, err := ParseCapacityType(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if _, err := ParseCapacityType("ondemand"); err == nil {
		t.Error("ondemand: a catalog spells on-demand one way")
	}
}

// A pod Penny's GPU reading refuses but another scheduler placed holds its
// devices: they count, as asked, in what it reserves. They counted as none,
// and its GPUs cost its namespace nothing.
func TestPodUsageCountsTheGPUsOfAPodPennyWouldNotPlace(t *testing.T) {
	container := func(name string, res corev1.ResourceName, n int64) corev1.Container {
		q := *resource.NewQuantity(n, resource.DecimalSI)
		return corev1.Container{Name: name, Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{res: q}, Limits: corev1.ResourceList{res: q}}}
	}
	for _, tc := range []struct {
		name       string
		containers []corev1.Container
		want       int64
	}{
		{"whole GPUs beside a MIG slice", []corev1.Container{container("a", gpu.ResourceGPU, 8), container("b", "nvidia.com/mig-1g.10gb", 1)}, 8000 + 1000/7},
		{"shares adding up to more than a GPU", []corev1.Container{container("a", gpu.ResourceGPUMilli, 600), container("b", gpu.ResourceGPUMilli, 600)}, 1200},
		{"a share of one GPU", []corev1.Container{container("a", gpu.ResourceGPUMilli, 600)}, 600},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "t"}, Spec: corev1.PodSpec{Containers: tc.containers}}
		if got := PodUsage(pod).GPUMilli; got != tc.want {
			t.Errorf("%s: %d thousandths of a GPU, want %d", tc.name, got, tc.want)
		}
	}
}
