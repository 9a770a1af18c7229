package sim

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/pkg/gpu"
)

// The openb trace format (Alibaba cluster-trace-gpu-v2023, as published with
// the FGD paper). Nodes: sn,cpu_milli,memory_mib,gpu,model. Pods:
// name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
// creation_time,deletion_time,scheduled_time.
//
// How a row becomes a Kubernetes object (docs/sim.md):
//   - node model -> label nvidia.com/gpu.product, with the trace's short names
//     spelled as GPU feature discovery does where the model is public (T4 ->
//     Tesla-T4, ...); G2 and G3 are undisclosed and kept as they are;
//   - node gpu -> allocatable nvidia.com/gpu and penny.dev/gpu-milli
//     (gpu x 1000), label nvidia.com/gpu.count;
//   - pod gpu_milli < 1000 with num_gpu 1 -> penny.dev/gpu-milli (a share);
//     gpu_milli 1000 -> nvidia.com/gpu: num_gpu (whole GPUs);
//   - pod gpu_spec "A|B" -> required node affinity nvidia.com/gpu.product In
//     (A, B), with the same spelling as the node labels;
//   - cpu_milli, memory_mib -> CPU and memory requests (and limits).

// openbProducts spells the trace's public GPU models as nvidia.com/gpu.product.
var openbProducts = map[string]string{
	"T4":      "Tesla-T4",
	"P100":    "Tesla-P100-PCIE-16GB",
	"V100M16": "Tesla-V100-SXM2-16GB",
	"V100M32": "Tesla-V100-SXM2-32GB",
	"A10":     "NVIDIA-A10",
	"A100":    "NVIDIA-A100-SXM4-80GB",
}

func openbProduct(model string) string {
	if p, ok := openbProducts[model]; ok {
		return p
	}
	return model
}

// maxPodsPerNode is the pods allocatable of simulated nodes: high enough that
// the pod count never binds before CPU, memory or GPUs do.
const maxPodsPerNode = 1000

// LoadOpenbNodes reads an openb node list.
func LoadOpenbNodes(path string) ([]*v1.Node, error) {
	t, closeFn, err := openTable(path, "sn", "cpu_milli", "memory_mib", "gpu", "model")
	if err != nil {
		return nil, err
	}
	defer closeFn()
	var nodes []*v1.Node
	seen := map[string]int{}
	for t.next() {
		name, ok := t.name("sn", "node", seen)
		if !ok {
			break
		}
		cpu := t.int64("cpu_milli", 1, math.MaxInt32, 0)
		mem := t.int64("memory_mib", 1, math.MaxInt32, 0)
		gpus := t.int64("gpu", 0, 64, 0)
		model := t.str("model")
		if gpus > 0 && model == "" {
			t.fail("model", "node has %d GPUs but no model", gpus)
		}
		if t.err != nil {
			break
		}
		nodes = append(nodes, NewNode(name, cpu, mem, int(gpus), openbProduct(model)))
	}
	if t.err != nil {
		return nil, t.err
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%s: no nodes", path)
	}
	return nodes, nil
}

// NewNode builds a ready node with the given CPU (millicores), memory (MiB)
// and GPUs of one product. GPU nodes advertise both nvidia.com/gpu and
// penny.dev/gpu-milli; the device view decides what fits on which GPU.
func NewNode(name string, milliCPU, memMiB int64, gpus int, product string) *v1.Node {
	alloc := v1.ResourceList{
		v1.ResourceCPU:    *resource.NewMilliQuantity(milliCPU, resource.DecimalSI),
		v1.ResourceMemory: *resource.NewQuantity(memMiB*1024*1024, resource.BinarySI),
		v1.ResourcePods:   *resource.NewQuantity(maxPodsPerNode, resource.DecimalSI),
	}
	labels := map[string]string{v1.LabelHostname: name, v1.LabelOSStable: "linux"}
	if gpus > 0 {
		alloc[gpu.ResourceGPU] = *resource.NewQuantity(int64(gpus), resource.DecimalSI)
		alloc[gpu.ResourceGPUMilli] = *resource.NewQuantity(int64(gpus)*gpu.MilliPerGPU, resource.DecimalSI)
		labels[gpu.LabelProduct] = product
		labels[gpu.LabelCount] = strconv.Itoa(gpus)
		if m, ok := gpu.LookupModel(product); ok {
			labels[gpu.LabelMemory] = strconv.Itoa(m.MemoryGB * 1024)
		}
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("node-" + name), Labels: labels},
		Status: v1.NodeStatus{
			Capacity:    alloc.DeepCopy(),
			Allocatable: alloc,
			Conditions:  []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}},
		},
	}
}

// TracePod is one pod of a trace and its times, relative to the trace start.
type TracePod struct {
	Pod *v1.Pod
	// Arrival is when the pod is created.
	Arrival time.Duration
	// Duration is how long it runs once placed.
	Duration time.Duration
	// Withdraw, when Withdraws is set, is when a pod the trace never started
	// was deleted; a replay withdraws it then if it is still pending. (A
	// flag, not Withdraw > 0: openb's times are absolute, and a pod deleted
	// at the trace's first second is deleted too.)
	Withdraw  time.Duration
	Withdraws bool
	// Source is the file and line it came from, for messages.
	Source string
}

// DepartsBy is when a pod placed at now leaves: after its run time, but no
// later than when the trace deleted a pod it never started (its user deleted
// it then, whenever it got to run).
func (tp *TracePod) DepartsBy(now, runFor time.Duration) time.Duration {
	at := now + runFor
	if tp.Withdraws {
		at = min(at, max(tp.Withdraw, now))
	}
	return at
}

// Trace is a workload in arrival order.
type Trace struct {
	Pods []TracePod
	// Source names the file.
	Source string
}

// SimNamespace is where trace pods live when the trace names no tenant.
const SimNamespace = "default"

// LoadOpenbPods reads an openb pod list, in creation order (ties by file
// order). The scheduler name is set by the run.
func LoadOpenbPods(path string) (*Trace, error) {
	t, closeFn, err := openTable(path, openbPodColumns...)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	tr := &Trace{Source: path}
	seen := map[string]int{}
	// Pods still waiting when the trace was taken (neither started nor
	// deleted) wait, or run, until the last time the trace records.
	var open []int
	var end float64
	for t.next() {
		name, ok := t.name("name", "pod", seen)
		if !ok {
			break
		}
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.fail("name", "%q cannot name a Kubernetes pod: %s", name, strings.Join(errs, "; "))
			break
		}
		cpu := t.int64("cpu_milli", 0, math.MaxInt32, 0)
		mem := t.int64("memory_mib", 0, math.MaxInt32, 0)
		numGPU := t.int64("num_gpu", 0, 64, 0)
		milli := t.int64("gpu_milli", 0, gpu.MilliPerGPU, 0)
		switch {
		case numGPU == 0 && milli > 0:
			t.fail("gpu_milli", "%d milli of a GPU with num_gpu 0: set num_gpu to 1 for a share", milli)
		case numGPU > 0 && milli == 0:
			t.fail("gpu_milli", "num_gpu is %d but gpu_milli is 0: use 1000 for whole GPUs or 1..999 for a share", numGPU)
		case numGPU > 1 && milli < gpu.MilliPerGPU:
			t.fail("gpu_milli", "%d milli on each of %d GPUs: a share is a part of one GPU; use num_gpu 1, or gpu_milli 1000 for whole GPUs", milli, numGPU)
		}
		t.required("creation_time")
		created := t.seconds("creation_time", 0)
		deleted := t.seconds("deletion_time", -1)
		started := t.seconds("scheduled_time", -1)
		if deleted >= 0 && deleted < created {
			t.fail("deletion_time", "%v is before creation_time %v", deleted, created)
		}
		if started >= 0 && started < created {
			t.fail("scheduled_time", "%v is before creation_time %v", started, created)
		}
		end = max(end, created, deleted, started)
		// A started pod's run time is deletion_time - scheduled_time; without
		// a deletion after the start it would run for no time at all, or be
		// read as never started. The published trace has neither shape.
		switch {
		case started >= 0 && deleted < 0:
			t.fail("deletion_time", "is empty, but scheduled_time is %v: a pod the trace started needs the time it was deleted (its run time is deletion_time - scheduled_time); leave scheduled_time empty for a pod that never ran", started)
		case started >= 0 && deleted < started:
			t.fail("deletion_time", "%v is before scheduled_time %v", deleted, started)
		}
		var products []string
		if spec := t.str("gpu_spec"); spec != "" {
			for _, m := range strings.Split(spec, "|") {
				if m = strings.TrimSpace(m); m != "" {
					products = append(products, openbProduct(m))
				}
			}
		}
		if t.err != nil {
			break
		}
		pod := NewPod(SimNamespace, name, cpu, mem, numGPU, milli, products)
		if q := t.str("qos"); q != "" {
			pod.Labels["openb/qos"] = q
		}
		tp := TracePod{Pod: pod, Arrival: seconds(created), Source: fmt.Sprintf("%s:%d", path, t.line())}
		switch {
		case started >= 0 && deleted >= started:
			tp.Duration = seconds(deleted - started)
		case deleted >= 0:
			// Never started in the trace: if the replay places it, it runs
			// until the user deleted it; if not, it is withdrawn then.
			tp.Duration = seconds(deleted - created)
			tp.Withdraw, tp.Withdraws = seconds(deleted), true
		default:
			open = append(open, len(tr.Pods))
		}
		tr.Pods = append(tr.Pods, tp)
	}
	if t.err != nil {
		return nil, t.err
	}
	for _, i := range open {
		tp := &tr.Pods[i]
		tp.Duration = seconds(end) - tp.Arrival
		tp.Withdraw, tp.Withdraws = seconds(end), true
	}
	if len(tr.Pods) == 0 {
		return nil, fmt.Errorf("%s: no pods", path)
	}
	sortByArrival(tr.Pods)
	return tr, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// NewPod builds a pod asking for CPU (millicores), memory (MiB) and GPUs:
// numGPU whole GPUs when milliPerGPU is 1000, a share of one GPU when it is
// less, on one of the given GPU products (any when empty).
func NewPod(namespace, name string, milliCPU, memMiB, numGPU, milliPerGPU int64, products []string) *v1.Pod {
	res := v1.ResourceList{}
	if milliCPU > 0 {
		res[v1.ResourceCPU] = *resource.NewMilliQuantity(milliCPU, resource.DecimalSI)
	}
	if memMiB > 0 {
		res[v1.ResourceMemory] = *resource.NewQuantity(memMiB*1024*1024, resource.BinarySI)
	}
	switch {
	case numGPU > 0 && milliPerGPU >= gpu.MilliPerGPU:
		res[gpu.ResourceGPU] = *resource.NewQuantity(numGPU, resource.DecimalSI)
	case numGPU > 0 && milliPerGPU > 0:
		res[gpu.ResourceGPUMilli] = *resource.NewQuantity(milliPerGPU, resource.DecimalSI)
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      name,
			UID:       types.UID(namespace + "/" + name),
			Labels:    map[string]string{},
		},
		Spec: v1.PodSpec{
			Containers: []v1.Container{{
				Name:      "main",
				Image:     "trace",
				Resources: v1.ResourceRequirements{Requests: res, Limits: res.DeepCopy()},
			}},
		},
	}
	if len(products) > 0 {
		pod.Spec.Affinity = &v1.Affinity{NodeAffinity: &v1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: gpu.LabelProduct, Operator: v1.NodeSelectorOpIn, Values: products}},
			}}},
		}}
	}
	return pod
}

// PodProducts reads the GPU products a pod accepts (nil: any), as
// gpu.PodProducts does for every Penny component.
func PodProducts(pod *v1.Pod) []string { return gpu.PodProducts(pod) }
