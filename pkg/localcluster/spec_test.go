package localcluster

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gpu"
)

func TestExampleSpecIsValid(t *testing.T) {
	spec, err := ParseSpec("cluster.yaml", deploy.ExampleCluster)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	mig := false
	for _, p := range spec.Pools {
		kinds[p.CapacityType] = true
		mig = mig || p.MIG != nil
	}
	if !kinds[CapacityOnDemand] || !kinds[CapacitySpot] || !kinds[CapacityReserved] || !mig {
		t.Fatalf("example fleet must mix on-demand, spot, reserved and MIG pools; got %v, mig=%v", kinds, mig)
	}
}

// refusedSpec is a spec ParseSpec must refuse, with the strings its error
// must contain.
type refusedSpec struct {
	name, yaml string
	want       []string
}

// refusedSpecs parses each case as bad.yaml and checks it is refused with
// every string it wants.
func refusedSpecs(t *testing.T, cases []refusedSpec) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSpec("bad.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestMalformedSpecNamesFileLineAndField(t *testing.T) {
	cases := []refusedSpec{
		{"empty", "", []string{"bad.yaml: the cluster spec is empty; give at least pools:"}},
		{"unknown field", "pools:\n- name: a\n  gpuz: 8\n", []string{`bad.yaml:3: pools[0].gpuz: unknown field "gpuz" in Pool`}},
		{"wrong type", "pools:\n- name: a\n  count: many\n", []string{`bad.yaml:3: pools[0].count: want a whole number, not "many"`}},
		{"a list for a number", "pools:\n- name: a\n  count: [1, 2]\n", []string{"bad.yaml:3: pools[0].count: want a whole number, not a list"}},
		{"bad capacity type", `pools:
- name: a
  count: 1
  instanceType: p5.48xlarge
  gpuModel: H100-80GB
  gpusPerNode: 8
  capacityType: preemptible
  zone: z
  cpu: "192"
  memory: 2Ti
`, []string{"bad.yaml:7", "pools[0].capacityType", "on-demand, spot, reserved"}},
		{"unknown GPU model", `pools:
- {name: a, count: 1, instanceType: x, gpuModel: B300, gpusPerNode: 8, capacityType: spot, zone: z, cpu: "1", memory: 1Gi}
`, []string{"bad.yaml:2", "pools[0].gpuModel", "A100-80GB"}},
		{"MIG layout that does not fit", `pools:
- name: a
  count: 1
  instanceType: x
  gpuModel: A100-80GB
  gpusPerNode: 8
  mig:
    layout: [4g.40gb, 4g.40gb]
  capacityType: spot
  zone: z
  cpu: "1"
  memory: 1Gi
`, []string{"bad.yaml:8", "pools[0].mig.layout", "do not fit"}},
		{"on-demand MIG with a layout", `pools:
- {name: a, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 8, mig: {onDemand: true, layout: [7g.80gb]}, capacityType: spot, zone: z, cpu: "1", memory: 1Gi}
`, []string{"bad.yaml:2", "pools[0].mig.layout", "onDemand"}},
		{"on-demand MIG on some GPUs only", `pools:
- {name: a, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 8, mig: {onDemand: true, gpus: 2}, capacityType: spot, zone: z, cpu: "1", memory: 1Gi}
`, []string{"pools[0].mig.gpus", "all GPUs"}},
		{"bad quantity and missing zone", `pools:
- {name: a, count: 1, instanceType: x, capacityType: spot, cpu: lots, memory: 1Gi}
`, []string{"pools[0].cpu", `"lots"`, "pools[0].zone", "required"}},
		{"no pools", "name: empty\n", []string{"bad.yaml:1", "pools", "at least one pool"}},
		// A second document was dropped without a word: its pools never came up.
		{"two documents", "pools:\n- {name: a, count: 1, instanceType: x, capacityType: spot, zone: z, cpu: \"1\", memory: 1Gi}\n---\npools:\n- {name: b, count: 1, instanceType: x, capacityType: spot, zone: z, cpu: \"1\", memory: 1Gi}\n",
			[]string{"bad.yaml:4", "one YAML document"}},
	}
	refusedSpecs(t, cases)
}

func TestNodesCarryRealClusterLabelsAndCapacity(t *testing.T) {
	spec, err := ParseSpec("s.yaml", []byte(`region: us-east-1
pools:
- name: h100
  count: 2
  cloud: aws
  instanceType: p5.48xlarge
  gpuModel: H100-80GB
  gpusPerNode: 8
  mig: {gpus: 2, layout: [3g.40gb, 3g.40gb]}
  capacityType: spot
  zone: us-east-1b
  hourlyPrice: 43.16
  cpu: "192"
  memory: 2Ti
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := spec.Nodes()
	if len(nodes) != 2 || nodes[1].Name != "h100-1" {
		t.Fatalf("nodes: %d, second %q", len(nodes), nodes[1].Name)
	}
	n := nodes[0]
	for k, v := range map[string]string{
		gpu.LabelProduct: "NVIDIA-H100-80GB-HBM3", gpu.LabelCount: "8", LabelCapacityType: "spot",
		"node.kubernetes.io/instance-type": "p5.48xlarge", "topology.kubernetes.io/zone": "us-east-1b",
		"topology.kubernetes.io/region": "us-east-1", gpu.LabelMIGStrategy: "mixed",
	} {
		if n.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, n.Labels[k], v)
		}
	}
	alloc := n.Status.Allocatable
	if q := alloc[gpu.ResourceGPU]; q.Value() != 6 {
		t.Errorf("whole GPUs %v, want 6 (2 of 8 in MIG mode)", q.String())
	}
	if q := alloc[gpu.MIGResourceName("3g.40gb")]; q.Value() != 4 {
		t.Errorf("3g.40gb %v, want 4", q.String())
	}
	if q := alloc[gpu.ResourceGPUMilli]; q.Value() != 6000 {
		t.Errorf("gpu-milli %v, want 6000", q.String())
	}
	if !strings.HasPrefix(n.Spec.ProviderID, "aws:///us-east-1b/i-") {
		t.Errorf("providerID %q is not an AWS one", n.Spec.ProviderID)
	}
}

func TestOnDemandMIGNodes(t *testing.T) {
	spec, err := ParseSpec("s.yaml", []byte(`pools:
- {name: a100, count: 1, instanceType: x, gpuModel: A100-80GB, gpusPerNode: 8, mig: {onDemand: true}, capacityType: spot, zone: z, cpu: "96", memory: 1Ti}
`))
	if err != nil {
		t.Fatal(err)
	}
	n := spec.Nodes()[0]
	if n.Labels[gpu.LabelMIGPartitioning] != gpu.MIGOnDemand {
		t.Errorf("label %s = %q", gpu.LabelMIGPartitioning, n.Labels[gpu.LabelMIGPartitioning])
	}
	alloc := n.Status.Allocatable
	for name, want := range map[string]int64{string(gpu.ResourceGPU): 8, string(gpu.ResourceGPUMilli): 8000,
		string(gpu.MIGResourceName("1g.10gb")): 56, string(gpu.MIGResourceName("7g.80gb")): 8} {
		if q := alloc[corev1.ResourceName(name)]; q.Value() != want {
			t.Errorf("%s = %v, want %d", name, q.String(), want)
		}
	}
	if dev := gpu.NodeDevicesFor(n); !dev.OnDemand || len(dev.GPUs) != 8 || dev.HasLayout() {
		t.Errorf("device view: on demand %v, %d GPUs, layout %v", dev.OnDemand, len(dev.GPUs), dev.HasLayout())
	}
}

// What the spec puts in a node's labels must be a valid label there, and
// extra labels may not contradict the fields Penny derives labels from: a
// spec the API server would reject, or one whose capacityType says
// on-demand while its nodes say spot, is refused at the file's line, before
// anything starts.
func TestSpecLabelsAndPricesAreCheckedUpFront(t *testing.T) {
	pool := func(extra string) string {
		return "pools:\n- {name: a, count: 1, instanceType: x, capacityType: on-demand, zone: z, cpu: \"1\", memory: 1Gi" + extra + "}\n"
	}
	cases := []refusedSpec{
		{"zone not a label value", "pools:\n- {name: a, count: 1, instanceType: x, capacityType: spot, zone: \"us east 1a\", cpu: \"1\", memory: 1Gi}\n",
			[]string{"bad.yaml:2", "pools[0].zone", `"us east 1a"`}},
		{"instance type not a label value", "pools:\n- {name: a, count: 1, instanceType: \"p5 48xlarge\", capacityType: spot, zone: z, cpu: \"1\", memory: 1Gi}\n",
			[]string{"bad.yaml:2", "pools[0].instanceType", `"p5 48xlarge"`}},
		{"region not a label value", "region: us east\n" + pool(""),
			[]string{"bad.yaml:1", "region", `"us east"`}},
		{"label key", pool(`, labels: {"bad key!": x}`),
			[]string{"bad.yaml:2", "pools[0].labels", `"bad key!"`}},
		{"label value", pool(`, labels: {team: "r&d"}`),
			[]string{"bad.yaml:2", "pools[0].labels", `"r&d"`}},
		{"label that contradicts capacityType", pool(`, labels: {karpenter.sh/capacity-type: spot}`),
			[]string{"pools[0].labels", "karpenter.sh/capacity-type", "capacityType"}},
		{"label that contradicts the pool", pool(`, labels: {penny.dev/pool: b}`),
			[]string{"pools[0].labels", "penny.dev/pool", "name"}},
		{"label that contradicts the GPU model", pool(`, labels: {nvidia.com/gpu.product: NVIDIA-H100}`),
			[]string{"pools[0].labels", "nvidia.com/gpu.product", "gpuModel"}},
		{"price NaN", pool(`, hourlyPrice: .nan`), []string{"pools[0].hourlyPrice", "NaN"}},
		{"price infinite", pool(`, hourlyPrice: .inf`), []string{"pools[0].hourlyPrice", "+Inf"}},
		{"price past any instance's", pool(`, hourlyPrice: 1e306`), []string{"pools[0].hourlyPrice", "1e+306 is more than 10000"}},
	}
	refusedSpecs(t, cases)
	// Extra labels that add to what Penny sets stay allowed, including
	// overriding the architecture (an arm64 Grace Hopper pool, say).
	if _, err := ParseSpec("ok.yaml", []byte(pool(`, labels: {team: research, kubernetes.io/arch: arm64, example.com/tier: "1"}`))); err != nil {
		t.Errorf("extra labels: %v", err)
	}
}
