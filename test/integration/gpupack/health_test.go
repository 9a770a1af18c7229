package gpupack

import (
	"testing"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// TestUnhealthyGPU checks on a real API server that a GPU its node's agent
// reports unhealthy takes no new pod while the node's other GPU does, and
// that a pod waiting for it binds once the agent reports it healthy again,
// with no change to any Kubernetes object to wake the scheduler.
func TestUnhealthyGPU(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, `
pools:
- {name: whole, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 2, capacityType: on-demand, zone: z1, cpu: "64", memory: 512Gi}
`)})
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	if !store.Update(wholeReport("whole-0", 1, 0), time.Now()) {
		t.Fatal("the telemetry store refused the node's report")
	}
	harness.StartScheduler(t, c, plugins.Deps{Telemetry: store})

	got := bind(t, c, harness.Pod("first", limits("nvidia.com/gpu", "1")))
	expect(t, got, "first", "whole-0", "1")
	waitUnschedulable(t, c, harness.Pod("second", limits("nvidia.com/gpu", "1")),
		"node(s) had fewer idle healthy GPUs than 1 nvidia.com/gpu (1 GPU reported unhealthy by its agent)")

	if !store.Update(wholeReport("whole-0", 2), time.Now()) {
		t.Fatal("the telemetry store refused the node's report")
	}
	p := harness.WaitForPod(t, c, "default", "second", 20*time.Second, "bound once its GPU recovered", harness.Bound)
	expect(t, map[string]placed{"second": {p.Spec.NodeName, p.Annotations["penny.dev/gpu-assignment"]}}, "second", "whole-0", "0")
	noDoubleBooking(t, c)
}

// wholeReport is the agent's report of a node with two whole A100-80GB,
// those listed unhealthy.
func wholeReport(node string, seq uint64, unhealthy ...int) *telemetryv1.NodeReport {
	r := telemetrytest.Report(node, 2, seq, time.Now())
	r.PodDevices = nil
	for _, g := range r.Gpus {
		g.MigMode, g.MigInstances, g.Pods = telemetryv1.MIGMode_MIG_MODE_DISABLED, nil, nil
	}
	for _, i := range unhealthy {
		r.Gpus[i].Health = &telemetryv1.Health{Reasons: []string{"XID 79 (GPU has fallen off the bus)"}}
	}
	return r
}
