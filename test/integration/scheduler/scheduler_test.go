package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

const fleet = `
pools:
- {name: a100, count: 2, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: on-demand, zone: z1, cpu: "96", memory: 1152Gi}
- {name: cpu, count: 1, instanceType: m6i.4xlarge, capacityType: on-demand, zone: z1, cpu: "16", memory: 64Gi}
`

// TestPennySchedulerBindsOnlyItsPods checks the base contract of a secondary
// scheduler: it binds GPU pods that name it to nodes with room, leaves pods
// for other schedulers alone, and says why when a pod fits nowhere.
func TestPennySchedulerBindsOnlyItsPods(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{})

	gpus := func(n string) corev1.ResourceList {
		return corev1.ResourceList{gpu.ResourceGPU: resource.MustParse(n), corev1.ResourceCPU: resource.MustParse("4")}
	}
	for _, name := range []string{"train-a", "train-b", "train-c"} {
		harness.CreatePod(t, c, harness.Pod(name, gpus("4")))
	}
	other := harness.Pod("for-someone-else", gpus("1"))
	other.Spec.SchedulerName = "default-scheduler-elsewhere"
	harness.CreatePod(t, c, other)
	harness.CreatePod(t, c, harness.Pod("too-big", gpus("16")))

	used := map[string]int64{}
	for _, name := range []string{"train-a", "train-b", "train-c"} {
		p := harness.WaitForPod(t, c, "default", name, 30*time.Second, "bound", harness.Bound)
		node, err := c.Client.CoreV1().Nodes().Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Labels[localcluster.LabelPool] != "a100" {
			t.Errorf("%s bound to %s in pool %q, want a GPU node of pool a100", name, node.Name, node.Labels[localcluster.LabelPool])
		}
		used[node.Name] += 4
		capacity := node.Status.Allocatable[gpu.ResourceGPU]
		if used[node.Name] > capacity.Value() {
			t.Errorf("node %s holds %d GPUs of pods but has %d", node.Name, used[node.Name], capacity.Value())
		}
		harness.WaitForPod(t, c, "default", name, 20*time.Second, "running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	}

	msg := harness.WaitForEvent(t, c, "default", "too-big", "FailedScheduling", 30*time.Second)
	if !strings.Contains(msg, "Insufficient nvidia.com/gpu") || !strings.Contains(msg, "0/3 nodes are available") {
		t.Errorf("FailedScheduling message %q does not say that no node has 16 GPUs", msg)
	}

	p, err := c.Client.CoreV1().Pods("default").Get(context.Background(), "for-someone-else", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "" {
		t.Errorf("pod for another scheduler was bound to %s by penny-scheduler", p.Spec.NodeName)
	}
}
