package pricing

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gpu"
)

// The live bill: each priced node's price and its split, and each
// namespace's running pods priced by their requests on their nodes. Pods
// that hold nothing (finished, not yet bound) and nodes the catalog cannot
// price add nothing; the unpriced nodes are counted.
func TestCostMetricsPriceRunningPodsByNamespace(t *testing.T) {
	// Split ratios and prices chosen so every component price is exact in
	// binary: an 8-GPU, 64-vCPU, 512-GiB node weighs
	// 8*10 + 64*0.5 + 512*0.0625 = 144 units.
	// On-demand at 36 $/h: 0.25 $ a unit, so 2.5 $ a GPU-hour, 0.125 $ a
	// vCPU-hour, 0.015625 $ a GiB-hour.
	// Spot at 9 $/h: 0.0625 $ a unit, so 0.625, 0.03125 and 0.00390625.
	catalog, err := NewCatalog(SplitRatios{GPUHour: 10, CPUCoreHour: 0.5, RAMGiBHour: 0.0625},
		[]InstanceType{{Name: "gpu8", GPUs: 8, GPUModel: "A100-40GB", VCPUs: 64, MemoryGiB: 512}},
		[]Entry{
			{InstanceType: "gpu8", Capacity: OnDemand, Region: "us-east-1", Hourly: 36},
			{InstanceType: "gpu8", Capacity: Spot, Region: "us-east-1", Hourly: 9},
		}, BucketUnknown)
	if err != nil {
		t.Fatal(err)
	}
	node := func(name, instanceType, capacityType string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelInstanceTypeStable: instanceType, corev1.LabelTopologyRegion: "us-east-1",
			corev1.LabelTopologyZone: "us-east-1a", capacity.LabelKarpenter: capacityType}}}
	}
	pod := func(namespace, name, nodeName string, phase corev1.PodPhase, gpuResource corev1.ResourceName, gpus, cpu, memory string) *corev1.Pod {
		req := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)}
		limits := corev1.ResourceList{}
		if gpus != "" {
			req[gpuResource] = resource.MustParse(gpus)
			limits[gpuResource] = resource.MustParse(gpus)
		}
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main",
				Resources: corev1.ResourceRequirements{Requests: req, Limits: limits}}}},
			Status: corev1.PodStatus{Phase: phase},
		}
	}
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, n := range []*corev1.Node{
		node("od-1", "gpu8", "on-demand"),
		node("spot-1", "gpu8", "spot"),
		node("mystery-1", "h9.huge", "on-demand"),
	} {
		if err := nodes.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, p := range []*corev1.Pod{
		// 2*2.5 + 8*0.125 + 64*0.015625 = 5 + 1 + 1 = 7 $/h, 2 GPUs.
		pod("team-a", "train", "od-1", corev1.PodRunning, gpu.ResourceGPU, "2", "8", "64Gi"),
		// Half a GPU on Spot: 0.5*0.625 + 4*0.03125 + 16*0.00390625
		// = 0.3125 + 0.125 + 0.0625 = 0.5 $/h.
		pod("team-a", "notebook", "spot-1", corev1.PodRunning, gpu.ResourceGPUMilli, "500", "4", "16Gi"),
		// Finished: its containers hold nothing any more.
		pod("team-a", "done", "od-1", corev1.PodSucceeded, gpu.ResourceGPU, "4", "8", "64Gi"),
		// Not bound yet: on no node, so it costs nothing.
		pod("team-a", "waiting", "", corev1.PodPending, gpu.ResourceGPU, "8", "8", "64Gi"),
		// Bound, its image still pulling: the node is held for it already.
		// 2*0.125 + 4*0.015625 = 0.25 + 0.0625 = 0.3125 $/h, no GPU.
		pod("team-b", "api", "od-1", corev1.PodPending, "", "", "2", "4Gi"),
		// On a node the catalog has no price for: left out.
		pod("team-b", "elsewhere", "mystery-1", corev1.PodRunning, gpu.ResourceGPU, "1", "8", "64Gi"),
	} {
		if err := pods.Add(p); err != nil {
			t.Fatal(err)
		}
	}

	c := newCostCollector(NewStore(catalog), corelisters.NewPodLister(pods), corelisters.NewNodeLister(nodes))
	want := `
# HELP node_cpu_hourly_cost [ALPHA] The node's price per vCPU-hour, in USD: its share of the node's price split by OpenCost's component ratios.
# TYPE node_cpu_hourly_cost gauge
node_cpu_hourly_cost{capacity_type="on-demand",instance_type="gpu8",node="od-1",region="us-east-1"} 0.125
node_cpu_hourly_cost{capacity_type="spot",instance_type="gpu8",node="spot-1",region="us-east-1"} 0.03125
# HELP node_gpu_hourly_cost [ALPHA] The node's price per GPU-hour, in USD: its share of the node's price split by OpenCost's component ratios (0 on a node without GPUs).
# TYPE node_gpu_hourly_cost gauge
node_gpu_hourly_cost{capacity_type="on-demand",instance_type="gpu8",node="od-1",region="us-east-1"} 2.5
node_gpu_hourly_cost{capacity_type="spot",instance_type="gpu8",node="spot-1",region="us-east-1"} 0.625
# HELP node_ram_hourly_cost [ALPHA] The node's price per GiB-hour of memory, in USD: its share of the node's price split by OpenCost's component ratios.
# TYPE node_ram_hourly_cost gauge
node_ram_hourly_cost{capacity_type="on-demand",instance_type="gpu8",node="od-1",region="us-east-1"} 0.015625
node_ram_hourly_cost{capacity_type="spot",instance_type="gpu8",node="spot-1",region="us-east-1"} 0.00390625
# HELP node_total_hourly_cost [ALPHA] What the node costs per hour, in USD, from SpotRisk's price catalog (OpenCost's name and unit).
# TYPE node_total_hourly_cost gauge
node_total_hourly_cost{capacity_type="on-demand",instance_type="gpu8",node="od-1",region="us-east-1"} 36
node_total_hourly_cost{capacity_type="spot",instance_type="gpu8",node="spot-1",region="us-east-1"} 9
# HELP penny_cost_unpriced_nodes [ALPHA] Nodes the price catalog has no price for. They and their pods are left out of node_*_hourly_cost and penny_namespace_cost_usd_per_hour.
# TYPE penny_cost_unpriced_nodes gauge
penny_cost_unpriced_nodes 1
# HELP penny_namespace_cost_usd_per_hour [ALPHA] What the namespace's bound, unfinished pods cost per hour, in USD, by the capacity type of their nodes: each pod's requests (GPUs, vCPUs, memory) times its node's component prices. Reserved capacity is priced at its catalog rate although it is paid for already.
# TYPE penny_namespace_cost_usd_per_hour gauge
penny_namespace_cost_usd_per_hour{capacity_type="on-demand",namespace="team-a"} 7
penny_namespace_cost_usd_per_hour{capacity_type="spot",namespace="team-a"} 0.5
penny_namespace_cost_usd_per_hour{capacity_type="on-demand",namespace="team-b"} 0.3125
# HELP penny_namespace_gpus [ALPHA] GPUs the namespace's bound, unfinished pods on priced nodes hold, by capacity type; a share counts as its fraction of a GPU and a MIG slice as a seventh.
# TYPE penny_namespace_gpus gauge
penny_namespace_gpus{capacity_type="on-demand",namespace="team-a"} 2
penny_namespace_gpus{capacity_type="spot",namespace="team-a"} 0.5
penny_namespace_gpus{capacity_type="on-demand",namespace="team-b"} 0
`
	if err := testutil.CustomCollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
