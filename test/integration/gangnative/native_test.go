// Package gangnative tests how Penny's gang plugin and the in-tree
// GangScheduling plugin share the work when the GenericWorkload feature gate
// is on: a native PodGroup is gated and admitted by the in-tree machinery,
// and PennyGang keeps the whole group in one zone. It is its own package
// because the feature gate is process-wide.
package gangnative

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// Three whole-GPU nodes in each of two zones.
const fleet = `
pools:
- {name: east, count: 3, instanceType: p5.48xlarge, gpuModel: H100-80GB, gpusPerNode: 8, capacityType: on-demand, zone: z1, cpu: "192", memory: 2048Gi}
- {name: west, count: 3, instanceType: p5.48xlarge, gpuModel: H100-80GB, gpusPerNode: 8, capacityType: on-demand, zone: z2, cpu: "192", memory: 2048Gi}
`

func podGroup(t *testing.T, c *localcluster.Cluster, name string, minCount int32) {
	t.Helper()
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
			Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: minCount},
		}},
	}
	if _, err := c.Client.SchedulingV1beta1().PodGroups("default").Create(context.Background(), pg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func member(group string, i int) *corev1.Pod {
	p := harness.Pod(fmt.Sprintf("%s-%d", group, i), corev1.ResourceList{
		gpu.ResourceGPU:    resource.MustParse("8"),
		corev1.ResourceCPU: resource.MustParse("8"),
	})
	p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To(group)}
	return p
}

func TestNativePodGroupStaysInOneZone(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{
		Spec:          harness.ParseSpec(t, fleet),
		FeatureGates:  map[string]bool{"GenericWorkload": true},
		RuntimeConfig: map[string]string{"scheduling.k8s.io/v1beta1": "true"},
	})
	harness.StartScheduler(t, c, plugins.Deps{})

	// Four whole-node members fit the cluster (six nodes) but no one zone.
	podGroup(t, c, "wide", 4)
	for i := range 4 {
		harness.CreatePod(t, c, member("wide", i))
	}
	msg := harness.WaitForEvent(t, c, "default", "wide-0", "FailedScheduling", 60*time.Second)
	if !strings.Contains(msg, "gang default/wide: 3/4 members placeable, the other 1 need 8 nvidia.com/gpu in one zone") {
		t.Errorf("FailedScheduling %q does not say the group fits no one zone", msg)
	}

	// Three fit one zone: all bind, in the same zone.
	podGroup(t, c, "narrow", 3)
	for i := range 3 {
		harness.CreatePod(t, c, member("narrow", i))
	}
	zones := map[string]bool{}
	for i := range 3 {
		p := harness.WaitForPod(t, c, "default", fmt.Sprintf("narrow-%d", i), 60*time.Second, "bound", harness.Bound)
		node, err := c.Client.CoreV1().Nodes().Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		zones[node.Labels[corev1.LabelTopologyZone]] = true
	}
	if len(zones) != 1 {
		t.Errorf("the group spans zones %v; it must stay in one", zones)
	}
	// The wide group never got a partial placement.
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		for i := range 4 {
			p, err := c.Client.CoreV1().Pods("default").Get(ctx, fmt.Sprintf("wide-%d", i), metav1.GetOptions{})
			if err == nil && p.Spec.NodeName != "" {
				return true, nil
			}
		}
		return false, nil
	})
	if err == nil {
		t.Error("a member of the group that fits no zone was bound")
	}
}

// A native PodGroup that waits for Spot, on a cluster with none, falls back
// to on-demand when its wait ends. PennyGang, first in the deployed profile,
// turns the group away before SpotRisk's PreFilter runs (no room for it on
// Spot, and on-demand is not for it yet), and the pod-group cycle runs no
// PostFilter, so SpotRisk arms the group's retry when the group is queued.
// The scheduler here backs a failed group off for ten minutes: only that
// retry can bring the group back within the test.
func TestNativePodGroupWaitingForSpotFallsBackWhenItsWaitEnds(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{
		Spec:          harness.ParseSpec(t, fleet),
		FeatureGates:  map[string]bool{"GenericWorkload": true},
		RuntimeConfig: map[string]string{"scheduling.k8s.io/v1beta1": "true"},
	})
	config := append(append([]byte{}, deploy.SchedulerConfig...), "podInitialBackoffSeconds: 600\npodMaxBackoffSeconds: 600\n"...)
	harness.StartScheduler(t, c, plugins.Deps{}, config)

	podGroup(t, c, "trainers", 2)
	for i := range 2 {
		p := member("trainers", i)
		p.Annotations = map[string]string{
			spotrisk.AnnotationWorkload:           "training",
			spotrisk.AnnotationCheckpointInterval: "15m",
			spotrisk.AnnotationFallbackAfter:      "5s",
		}
		harness.CreatePod(t, c, p)
	}
	msg := harness.WaitForEvent(t, c, "default", "trainers-0", "FailedScheduling", 60*time.Second)
	if !strings.Contains(msg, "gang default/trainers") {
		t.Errorf("FailedScheduling %q does not come from PennyGang", msg)
	}
	for i := range 2 {
		harness.WaitForPod(t, c, "default", fmt.Sprintf("trainers-%d", i), 60*time.Second, "bound", harness.Bound)
	}
	harness.WaitForEvent(t, c, "default", "trainers-0", spotrisk.EventFallback, 30*time.Second)
}
