package localcluster

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/pennysched/penny/pkg/gpu"
)

func TestClusterRunsPodsOnSimulatedGPUNodes(t *testing.T) {
	ctx := context.Background()
	spec, err := LoadSpec("../../deploy/examples/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, Options{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("startup took %v", c.StartupDuration)

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 8 {
		t.Fatalf("got %d nodes, want 8", len(nodes.Items))
	}
	mig, err := c.Client.CoreV1().Nodes().Get(ctx, "a100-mig-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if q := mig.Status.Allocatable[gpu.MIGResourceName("1g.10gb")]; q.Value() != 8 {
		t.Errorf("a100-mig-0 has %v nvidia.com/mig-1g.10gb, want 8 (2 per GPU x 4 MIG GPUs)", q.String())
	}
	if q := mig.Status.Allocatable[gpu.ResourceGPU]; q.Value() != 4 {
		t.Errorf("a100-mig-0 has %v whole GPUs, want 4", q.String())
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "trainer", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName: "h100-spot-0",
			Containers: []corev1.Container{{Name: "c", Image: "trainer", Resources: corev1.ResourceRequirements{
				Limits: corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("8")},
			}}},
		},
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, nil // the default ServiceAccount appears shortly after start
	})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := c.Client.CoreV1().Pods("default").Get(ctx, "trainer", metav1.GetOptions{})
		return err == nil && got.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod never ran on the KWOK node: %v", err)
	}
}
