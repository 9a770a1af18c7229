package gpupack

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// Four nodes, each able to take only some kinds of pods, so that where a
// pod lands and which devices it gets are the plugin's decision and can be
// checked exactly: whole GPUs, on-demand MIG, static MIG (three 2g.20gb
// instances per GPU) and CPU only.
const fleet = `
pools:
- {name: whole, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 2, capacityType: on-demand, zone: z1, cpu: "64", memory: 512Gi}
- {name: ondemand, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 2, mig: {onDemand: true}, capacityType: on-demand, zone: z1, cpu: "64", memory: 512Gi}
- {name: static, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 2, mig: {layout: [2g.20gb, 2g.20gb, 2g.20gb]}, capacityType: on-demand, zone: z1, cpu: "64", memory: 512Gi}
- {name: cpu, count: 1, instanceType: x, capacityType: on-demand, zone: z1, cpu: "16", memory: 64Gi}
`

func limits(kv ...string) corev1.ResourceList {
	l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")}
	for i := 0; i < len(kv); i += 2 {
		l[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return l
}

// placed is what a bound pod got.
type placed struct {
	node, assignment string
}

// bind creates the pods one at a time (so each decision sees the previous
// ones) and returns where each landed.
func bind(t *testing.T, c *localcluster.Cluster, pods ...*corev1.Pod) map[string]placed {
	t.Helper()
	out := map[string]placed{}
	for _, p := range pods {
		harness.CreatePod(t, c, p)
		got := harness.WaitForPod(t, c, p.Namespace, p.Name, 30*time.Second, "bound", harness.Bound)
		out[p.Name] = placed{got.Spec.NodeName, got.Annotations[gpu.AnnotationAssignment]}
		r, err := gpu.ParsePodRequest(got)
		if err != nil {
			t.Fatal(err)
		}
		if r.IsZero() {
			continue
		}
		if _, err := gpu.PodAssignment(got); err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
	}
	return out
}

func expect(t *testing.T, got map[string]placed, name, node, assignment string) {
	t.Helper()
	p := got[name]
	if p.node != node || p.assignment != assignment {
		t.Errorf("%s landed on %s with %s=%q; want %s with %q", name, p.node, gpu.AnnotationAssignment, p.assignment, node, assignment)
	}
}

// noDoubleBooking applies every bound pod's assignment to its node's device
// view: a device handed out twice fails to apply.
func noDoubleBooking(t *testing.T, c *localcluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes.Items {
		dev := gpu.NodeDevicesFor(&nodes.Items[i])
		for j := range pods.Items {
			p := &pods.Items[j]
			if p.Spec.NodeName != nodes.Items[i].Name {
				continue
			}
			if _, err := dev.AddPod(p); err != nil {
				t.Errorf("node %s: %v", p.Spec.NodeName, err)
			}
		}
	}
}

func waitUnschedulable(t *testing.T, c *localcluster.Cluster, pod *corev1.Pod, reason string) {
	t.Helper()
	harness.CreatePod(t, c, pod)
	msg := harness.WaitForEvent(t, c, pod.Namespace, pod.Name, "FailedScheduling", 30*time.Second)
	if !strings.Contains(msg, reason) {
		t.Errorf("%s: FailedScheduling %q does not say %q", pod.Name, msg, reason)
	}
	p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "" {
		t.Errorf("%s was bound to %s; no device is free for it", pod.Name, p.Spec.NodeName)
	}
}

// TestPlacementAndRestart checks on a real API server that GPU pods land on
// the node and devices the plugin decides, that each carries its device
// assignment, and that a restarted scheduler rebuilds its device view from
// those annotations: it fills exactly the capacity left and hands out no
// device twice.
func TestPlacementAndRestart(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	// The static node's agent reports its layouts: three 2g.20gb instances
	// per GPU, and nothing else (the geometry alone would also leave room
	// for a 1g.10gb on each).
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	if !store.Update(staticLayoutReport("static-0"), time.Now()) {
		t.Fatal("the telemetry store refused the static node's report")
	}
	deps := plugins.Deps{Telemetry: store}
	s := harness.StartScheduler(t, c, deps)

	got := bind(t, c,
		// Only the on-demand node can create a 4g; GPU 0 first.
		harness.Pod("mig-4g", limits("nvidia.com/mig-4g.40gb", "1")),
		// The 3g goes next to the 4g (offset 4), not onto GPU 1, which stays
		// whole for what needs a whole GPU.
		harness.Pod("mig-3g", limits("nvidia.com/mig-3g.40gb", "1")),
		// Two whole GPUs: only the whole node still has two idle.
		harness.Pod("whole-2", limits("nvidia.com/gpu", "2")),
		// A share: the one GPU not yet used is on-demand GPU 1.
		harness.Pod("share-a", limits(string(gpu.ResourceGPUMilli), "500")),
		// 2g instances: the on-demand node has no GPU left that can be
		// partitioned (GPU 1 holds a share), so the static layouts serve them.
		harness.Pod("mig-2g-a", limits("nvidia.com/mig-2g.20gb", "1")),
		harness.Pod("mig-2g-b", limits("nvidia.com/mig-2g.20gb", "1")),
		harness.Pod("mig-2g-c", limits("nvidia.com/mig-2g.20gb", "1")),
		// A CPU-only pod stays off the GPU nodes while the CPU node has room.
		harness.Pod("cpu-only", limits(corev1.ResourceCPU.String(), "4")),
	)
	expect(t, got, "mig-4g", "ondemand-0", "0:4g.40gb@0")
	expect(t, got, "mig-3g", "ondemand-0", "0:3g.40gb@4")
	expect(t, got, "whole-2", "whole-0", "0,1")
	expect(t, got, "share-a", "ondemand-0", "1:500m")
	expect(t, got, "cpu-only", "cpu-0", "")
	for _, name := range []string{"mig-2g-a", "mig-2g-b", "mig-2g-c"} {
		if got[name].node != "static-0" || !strings.Contains(got[name].assignment, ":2g.20gb@") {
			t.Errorf("%s landed on %s with %q; want a 2g.20gb instance of static-0", name, got[name].node, got[name].assignment)
		}
	}
	noDoubleBooking(t, c)

	// A new scheduler process starts from the pods alone.
	s.Stop()
	harness.StartScheduler(t, c, deps)

	got = bind(t, c,
		// The rest of on-demand GPU 1.
		harness.Pod("share-b", limits(string(gpu.ResourceGPUMilli), "500")),
		// The three 2g instances still free on the static node.
		harness.Pod("mig-2g-d", limits("nvidia.com/mig-2g.20gb", "1")),
		harness.Pod("mig-2g-e", limits("nvidia.com/mig-2g.20gb", "1")),
		harness.Pod("mig-2g-f", limits("nvidia.com/mig-2g.20gb", "1")),
	)
	expect(t, got, "share-b", "ondemand-0", "1:500m")
	noDoubleBooking(t, c)

	// Every device is taken now. The aggregate counters still show room
	// (the on-demand node advertises 14 1g.10gb, the whole node's shares
	// and whole GPUs are counted apart), so only the device view can say no.
	waitUnschedulable(t, c, harness.Pod("mig-1g", limits("nvidia.com/mig-1g.10gb", "1")), "node(s) had no room on their GPUs' MIG geometry")
	waitUnschedulable(t, c, harness.Pod("share-c", limits(string(gpu.ResourceGPUMilli), "100")), "node(s) had no GPU with 100 penny.dev/gpu-milli free")
	noDoubleBooking(t, c)

	checkMetrics(t)
}

// staticLayoutReport is the node agent's report of a node whose two
// A100-80GB are partitioned into three 2g.20gb instances each.
func staticLayoutReport(node string) *telemetryv1.NodeReport {
	r := telemetrytest.Report(node, 2, 1, time.Now())
	r.PodDevices = nil
	for i, g := range r.Gpus {
		g.MigMode = telemetryv1.MIGMode_MIG_MODE_ENABLED
		g.Pods, g.MigInstances = nil, nil
		g.UtilizationPercent, g.MemoryUtilizationPercent, g.MemoryUsedBytes = nil, nil, nil
		for k, start := range []uint32{0, 2, 4} {
			g.MigInstances = append(g.MigInstances, &telemetryv1.MIGInstance{
				Uuid: "MIG-" + telemetrytest.UUID(node, i, k), Profile: "2g.20gb", GpuInstanceId: uint32(3 + k),
				PlacementStart: start, PlacementSize: 2, MemoryTotalBytes: 19 << 30, MemoryUsedBytes: proto.Uint64(0),
			})
		}
	}
	return r
}

// checkMetrics reads the plugin's fragmentation metrics from the registry
// penny-scheduler serves on /metrics.
func checkMetrics(t *testing.T) {
	t.Helper()
	values := harness.Gauges(t, "penny_gpu_free_milli", "penny_gpu_largest_placeable", "penny_gpu_stranded_milli")
	for key, want := range map[string]float64{
		"penny_gpu_free_milli,pool=ondemand":                      0,
		"penny_gpu_free_milli,pool=static":                        0,
		"penny_gpu_free_milli,pool=whole":                         0,
		"penny_gpu_largest_placeable,pool=ondemand,resource=gpus": 0,
	} {
		if got, ok := values[key]; !ok || got != want {
			t.Errorf("%s = %v (reported: %v), want %v", key, got, ok, want)
		}
	}
}
