// Package sim checks that penny sim and penny-scheduler are one code path:
// the same pods, on the same nodes, under the same profile, land the same way.
package sim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/sim"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// Nodes of different sizes, so that the default scorers rank them without
// ties: where kube-scheduler breaks a tie is not reproducible.
const fleet = `
pools:
- {name: a100, count: 1, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: on-demand, zone: z1, cpu: "96", memory: 1152Gi}
- {name: l4, count: 1, instanceType: g6.12xlarge, gpuModel: L4, gpusPerNode: 4, capacityType: spot, zone: z1, cpu: "48", memory: 192Gi}
- {name: t4, count: 1, instanceType: g4dn.2xlarge, gpuModel: T4, gpusPerNode: 1, capacityType: spot, zone: z2, cpu: "8", memory: 32Gi}
- {name: cpu, count: 1, instanceType: m6i.4xlarge, capacityType: on-demand, zone: z1, cpu: "16", memory: 64Gi}
`

func pod(name, cpu, mem string, gpus int64, milli int64) *corev1.Pod {
	l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
	switch {
	case milli > 0:
		l[gpu.ResourceGPUMilli] = *resource.NewQuantity(milli, resource.DecimalSI)
	case gpus > 0:
		l[gpu.ResourceGPU] = *resource.NewQuantity(gpus, resource.DecimalSI)
	}
	return harness.Pod(name, l)
}

// TestSimPlacesLikePennyScheduler submits pods one at a time to
// penny-scheduler on a real API server and, with the same pod and the same
// nodes, asks penny sim (policy penny: the deployed profile) where it would
// go. Every pod must land on the same node, or fail in both.
func TestSimPlacesLikePennyScheduler(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{})
	ctx := context.Background()

	nodes := readyNodes(t, c, 4)
	policy, err := sim.LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	prof, reg, err := policy.Build(sim.Run{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	e, err := sim.NewEngine(ctx, sim.EngineOptions{Profile: prof, Registry: reg, Nodes: nodes, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	running, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range running.Items {
		if p := &running.Items[i]; p.Spec.NodeName != "" {
			if err := e.AddBoundPod(p); err != nil {
				t.Fatalf("pod already in the cluster: %v", err)
			}
		}
	}

	pods := []*corev1.Pod{
		pod("train", "8", "64Gi", 4, 0),
		pod("notebook", "2", "8Gi", 0, 500),
		pod("etl", "6", "24Gi", 0, 0),
		pod("infer-a", "4", "16Gi", 1, 0),
		pod("infer-b", "12", "48Gi", 1, 0),
		pod("finetune", "16", "128Gi", 2, 0),
		pod("share-b", "1", "2Gi", 0, 250),
		pod("batch", "10", "40Gi", 0, 0),
		pod("infer-c", "2", "8Gi", 1, 0),
		pod("too-big", "4", "16Gi", 16, 0),
	}
	for _, want := range pods {
		created := harness.CreatePod(t, c, want)
		out, err := e.Schedule(created)
		if err != nil {
			t.Fatalf("sim, pod %s: %v", want.Name, err)
		}
		if len(out.Best) > 1 {
			t.Fatalf("pod %s: nodes %v tie for the best score in the sim; the scenario must rank nodes without ties", want.Name, out.Best)
		}
		if out.Node == "" {
			msg := harness.WaitForEvent(t, c, "default", want.Name, "FailedScheduling", 30*time.Second)
			if !strings.Contains(msg, fmt.Sprintf("0/%d nodes are available", len(nodes))) {
				t.Errorf("pod %s: the sim found no node (%s); penny-scheduler said %q", want.Name, out.Reason, msg)
			}
			continue
		}
		bound := harness.WaitForPod(t, c, "default", want.Name, 30*time.Second, "bound", harness.Bound)
		if bound.Spec.NodeName != out.Node {
			t.Errorf("pod %s: penny-scheduler chose %s, the sim chose %s", want.Name, bound.Spec.NodeName, out.Node)
		}
	}
}

// readyNodes waits for the cluster's n nodes to be ready and untainted.
func readyNodes(t *testing.T, c *localcluster.Cluster, n int) []*corev1.Node {
	t.Helper()
	var out []*corev1.Node
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) != n {
			return false, nil
		}
		out = out[:0]
		for i := range list.Items {
			node := &list.Items[i]
			ready := false
			for _, cond := range node.Status.Conditions {
				ready = ready || cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue
			}
			if !ready || len(node.Spec.Taints) > 0 {
				return false, nil
			}
			out = append(out, node)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%d ready nodes: %v", n, err)
	}
	return out
}
