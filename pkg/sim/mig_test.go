package sim

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gpu"
)

func TestSmallestProfile(t *testing.T) {
	m, _ := gpu.LookupModel("A100-80GB")
	for milli, want := range map[int64]string{
		50: "1g.10gb", 142: "1g.10gb", 143: "2g.20gb", 230: "2g.20gb", 320: "3g.40gb",
		460: "4g.40gb", 470: "4g.40gb", 590: "7g.80gb", 810: "7g.80gb", 999: "7g.80gb",
	} {
		if got := SmallestProfile(m, milli).Name; got != want {
			t.Errorf("%d milli: %s, want %s", milli, got, want)
		}
	}
}

func TestMIGFleetAndTrace(t *testing.T) {
	nodes := []*v1.Node{
		NewNode("cpu", 32000, 65536, 0, ""),
		NewNode("g0", 96000, 262144, 8, "G2"),
		NewNode("g1", 96000, 262144, 8, "G2"),
	}
	fleet, err := MIGFleet(nodes, []string{"A100-80GB", "H100-80GB"})
	if err != nil {
		t.Fatal(err)
	}
	if fleet[0] != nodes[0] {
		t.Error("the CPU node changed")
	}
	for i, want := range []string{"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"} {
		n := fleet[i+1]
		dev := gpu.NodeDevicesFor(n)
		if n.Labels[gpu.LabelProduct] != want || !dev.OnDemand || len(dev.GPUs) != 8 {
			t.Errorf("node %d: product %q, on-demand %v, %d GPUs", i+1, n.Labels[gpu.LabelProduct], dev.OnDemand, len(dev.GPUs))
		}
		if q := n.Status.Allocatable[gpu.MIGResourceName("1g.10gb")]; q.Value() != 56 {
			t.Errorf("node %d advertises %v 1g.10gb, want 56", i+1, q.String())
		}
	}
	if _, err := MIGFleet(nodes, []string{"T4"}); err == nil || !strings.Contains(err.Error(), "A100-80GB") {
		t.Errorf("T4 as a MIG model: %v", err)
	}

	tr := &Trace{Pods: []TracePod{
		{Pod: NewPod("default", "share", 4000, 1024, 1, 460, []string{"G2"})},
		{Pod: NewPod("default", "whole", 8000, 1024, 2, 1000, nil)},
	}}
	mt, err := MIGTrace(tr, "A100-80GB")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := gpu.ParsePodRequest(mt.Pods[0].Pod)
	if r.MIG["4g.40gb"] != 1 || r.Milli != 0 || mt.Pods[0].Pod.Spec.Affinity != nil {
		t.Errorf("share of 460: %v, affinity %v", r, mt.Pods[0].Pod.Spec.Affinity)
	}
	if r, _ := gpu.ParsePodRequest(mt.Pods[1].Pod); r.GPUs != 2 {
		t.Errorf("whole GPUs: %v", r)
	}
	if r, _ := gpu.ParsePodRequest(tr.Pods[0].Pod); r.Milli != 460 {
		t.Error("MIGTrace changed the original trace")
	}
}
