package gpupack

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/gpu"
)

// The members of a native PodGroup, placed by kube-scheduler's pod-group
// cycle on one node, bind with devices of their own (see
// TestPodGroupMembersGetDevicesOfTheirOwn for the cycle's steps).
func TestNativePodGroupMembersBindWithDevicesOfTheirOwn(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	n := gpuNode("t4", "Tesla-T4", 2, "64")
	n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
	s := startScheduler(t, []*corev1.Node{n})
	createPodGroup(s, "pair", 2, 0)
	for _, name := range []string{"m0", "m1"} {
		s.Create(podGroupMember(podOf(name, "1", string(gpu.ResourceGPU), "1"), "pair"))
	}
	s.WaitBound(30*time.Second, "m0", "m1")
	dev := gpu.NodeDevicesFor(n)
	var got []string
	for _, name := range []string{"m0", "m1"} {
		p, err := s.Client.CoreV1().Pods("default").Get(s.Ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p.Annotations[gpu.AnnotationAssignment])
		a, err := gpu.ParseAssignment(got[len(got)-1])
		if err == nil {
			err = dev.Apply(a)
		}
		if err != nil {
			t.Fatalf("the members bound with %q: %v", got, err)
		}
	}
}

// createPodGroup creates a native gang PodGroup that binds minCount
// members or none, with the priority preemption reads off it.
func createPodGroup(s *realScheduler, name string, minCount, priority int32) {
	s.t.Helper()
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: schedulingv1beta1.PodGroupSpec{
			SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
				Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: minCount},
			},
			Priority: &priority,
		},
	}
	if _, err := s.Client.SchedulingV1beta1().PodGroups("default").Create(s.Ctx, pg, metav1.CreateOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

func podGroupMember(p *corev1.Pod, group string) *corev1.Pod {
	p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To(group)}
	return p
}
