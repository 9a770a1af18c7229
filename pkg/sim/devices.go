package sim

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gpu"
)

// GPUDevicesName is the simulator's device-feasibility plugin. kube-scheduler
// counts nvidia.com/gpu and penny.dev/gpu-milli as independent numbers, so on
// its own it would put a whole-GPU pod on a GPU that holds a share, or two
// 600-milli shares on two half-free GPUs. GPUDevices keeps every placement
// physically valid: Filter asks the node's device view (pkg/gpu) whether the
// request fits, Reserve picks the devices with the policy's Chooser, and
// PreBind records them on the pod (penny.dev/gpu-assignment) through the API.
//
// It is a simulator plugin: it rebuilds each node's view from the pods the
// scheduler cache holds, which is exact only because the simulator binds each
// pod before the next cycle starts. The production equivalent is gpupack,
// which also keeps its view exact while bindings are in flight.
const GPUDevicesName = "SimGPUDevices"

// Chooser picks the devices for a pod on a node that fits it.
type Chooser func(p *podRequest, n *nodeView) (gpu.Assignment, error)

// Chooser names for NewGPUDevices.
var choosers = map[string]Chooser{
	"first": func(p *podRequest, n *nodeView) (gpu.Assignment, error) { return n.dev.FirstFit(p.req) },
	"best":  func(p *podRequest, n *nodeView) (gpu.Assignment, error) { return n.dev.BestFit(p.req) },
}

// views holds each node's device view, rebuilt when the node's NodeInfo
// generation changes. PreFilter brings every entry up to date once per cycle
// (it runs alone); Filter and Score, which run in parallel over nodes, only
// read the map, and each fills lazily computed fields of its own node only.
type views struct {
	// m is keyed by the node object, which the scheduler cache shares across
	// snapshots until the node itself changes: cheaper to hash than names.
	m map[*v1.Node]*nodeView
	// synced is the highest NodeInfo generation seen by sync: generations
	// only grow, so a node at or below it has not changed since.
	synced int64
}

func newViews() *views { return &views{m: map[*v1.Node]*nodeView{}} }

// nodeView is a node's devices and the facts the baselines score with.
type nodeView struct {
	gen      int64
	dev      *gpu.NodeDevices
	cpuFree  int64
	cpuAlloc int64
	free     []int64 // free milli per GPU
	freeSum  int64
	// tags counts the GPU kinds of the node's pods ("share-gpu", "2-gpu"),
	// for GpuClustering.
	tags map[string]int
	// frag is the node's FGD fragmentation, filled by FGDScore.
	frag     float64
	fragDone bool
}

// get returns the node's current view. A view that was not synced this cycle
// is built but not stored, so concurrent readers never write the map.
func (v *views) get(ni fwk.NodeInfo) (*nodeView, error) {
	if n, ok := v.m[ni.Node()]; ok && n.gen == ni.GetGeneration() {
		return n, nil
	}
	return buildView(ni)
}

// sync brings the views of the given nodes up to date; it must not run
// concurrently with get.
func (v *views) sync(nodes []fwk.NodeInfo) error {
	high := v.synced
	for _, ni := range nodes {
		g := ni.GetGeneration()
		high = max(high, g)
		if g <= v.synced {
			continue
		}
		if n, ok := v.m[ni.Node()]; ok && n.gen == g {
			continue
		}
		n, err := buildView(ni)
		if err != nil {
			return err
		}
		v.m[ni.Node()] = n
	}
	v.synced = high
	return nil
}

func buildView(ni fwk.NodeInfo) (*nodeView, error) {
	name := ni.Node().Name
	n := &nodeView{gen: ni.GetGeneration(), dev: gpu.NodeDevicesFor(ni.Node()), tags: map[string]int{}}
	for _, pi := range ni.GetPods() {
		a, err := n.dev.AddPod(pi.GetPod())
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		if a != nil {
			n.tags[gpuTag(a)]++
		}
	}
	n.cpuAlloc = ni.GetAllocatable().GetMilliCPU()
	n.cpuFree = n.cpuAlloc - ni.GetRequested().GetMilliCPU()
	n.free = n.dev.FreeList(nil)
	for _, f := range n.free {
		n.freeSum += f
	}
	return n, nil
}

func gpuTag(a gpu.Assignment) string {
	if len(a) == 1 && a[0].Milli < gpu.MilliPerGPU && a[0].MIG.Profile == "" {
		return "share-gpu"
	}
	return fmt.Sprintf("%d-gpu", len(a))
}

// podRequest is what the baselines need to know about the pod in the cycle.
type podRequest struct {
	req      gpu.Request
	milliCPU int64 // non-zero CPU request, as kube-scheduler and FGD count it
	products []string
	tag      string // GpuClustering's kind: "share-gpu", "<n>-gpu", "" for none
	// gpuMilli is the whole request in milli; perGPU what it needs on each GPU.
	gpuMilli, perGPU, numGPU int64
	assigned                 gpu.Assignment
	node                     string
}

func (p *podRequest) Clone() fwk.StateData { return p }

const podRequestKey fwk.StateKey = "PreFilter" + GPUDevicesName

func newPodRequest(pod *v1.Pod) (*podRequest, error) {
	r, err := gpu.ParsePodRequest(pod)
	if err != nil {
		return nil, err
	}
	p := &podRequest{req: r, products: PodProducts(pod), milliCPU: nonZeroMilliCPU(pod)}
	switch {
	case r.GPUs > 0:
		p.numGPU, p.perGPU, p.tag = r.GPUs, gpu.MilliPerGPU, fmt.Sprintf("%d-gpu", r.GPUs)
	case r.Milli > 0:
		p.numGPU, p.perGPU, p.tag = 1, r.Milli, "share-gpu"
	}
	p.gpuMilli = p.numGPU * p.perGPU
	return p, nil
}

// requestOf returns the pod's request as GPUDevices read it at PreFilter, or
// reads it now when the profile has no GPUDevices.
func requestOf(state fwk.CycleState, pod *v1.Pod) (*podRequest, error) {
	if d, err := state.Read(podRequestKey); err == nil {
		return d.(*podRequest), nil
	}
	p, err := newPodRequest(pod)
	if err != nil {
		return nil, err
	}
	state.Write(podRequestKey, p)
	return p, nil
}

func nonZeroMilliCPU(pod *v1.Pod) int64 {
	var t int64
	for _, c := range pod.Spec.Containers {
		q, ok := c.Resources.Requests[v1.ResourceCPU]
		if !ok || q.IsZero() {
			t += 100 // kube-scheduler's DefaultMilliCPURequest for scoring
			continue
		}
		t += q.MilliValue()
	}
	return t
}

// GPUDevices is the device-feasibility plugin (see GPUDevicesName).
type GPUDevices struct {
	h      fwk.Handle
	views  *views
	choose Chooser
}

var (
	_ fwk.PreFilterPlugin = &GPUDevices{}
	_ fwk.FilterPlugin    = &GPUDevices{}
	_ fwk.ReservePlugin   = &GPUDevices{}
	_ fwk.PreBindPlugin   = &GPUDevices{}
)

// newGPUDevices returns the plugin factory for one run; all plugins of the
// run share the views.
func newGPUDevices(v *views, choose Chooser) frameworkruntime.PluginFactory {
	return func(_ context.Context, _ runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
		return &GPUDevices{h: h, views: v, choose: choose}, nil
	}
}

func (d *GPUDevices) Name() string { return GPUDevicesName }

// SignPod declines kube-scheduler's batching of look-alike pods: a share's
// fit depends on each GPU, not on anything a signature of the pod captures.
func (d *GPUDevices) SignPod(context.Context, *v1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	return nil, fwk.NewStatus(fwk.Unschedulable, "device fit depends on each GPU's state")
}

// PreFilter reads the pod's GPU request once and brings the device views up
// to date; pods without GPUs skip Filter.
func (d *GPUDevices) PreFilter(_ context.Context, state fwk.CycleState, pod *v1.Pod, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	p, err := newPodRequest(pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	state.Write(podRequestKey, p)
	if err := d.views.sync(nodes); err != nil {
		return nil, fwk.AsStatus(err)
	}
	if p.req.IsZero() {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return nil, nil
}

func (d *GPUDevices) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// Filter admits the node when the pod's GPUs fit on its devices.
func (d *GPUDevices) Filter(_ context.Context, state fwk.CycleState, pod *v1.Pod, ni fwk.NodeInfo) *fwk.Status {
	p, err := requestOf(state, pod)
	if err != nil {
		return fwk.AsStatus(err)
	}
	n, err := d.views.get(ni)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if len(n.dev.GPUs) == 0 {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node(s) have no GPUs")
	}
	if !n.dev.Fits(p.req) {
		return fwk.NewStatus(fwk.Unschedulable, fmt.Sprintf("node(s) had no GPU with room for %s", p.req))
	}
	return nil
}

// Reserve picks the devices on the chosen node.
func (d *GPUDevices) Reserve(_ context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	p, err := requestOf(state, pod)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if p.req.IsZero() {
		return nil
	}
	ni, err := d.h.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return fwk.AsStatus(err)
	}
	n, err := d.views.get(ni)
	if err != nil {
		return fwk.AsStatus(err)
	}
	a, err := d.choose(p, n)
	if err != nil {
		return fwk.NewStatus(fwk.Unschedulable, err.Error())
	}
	p.assigned, p.node = a, nodeName
	return nil
}

// Unreserve forgets the choice; the view never saw it.
func (d *GPUDevices) Unreserve(_ context.Context, state fwk.CycleState, pod *v1.Pod, _ string) {
	if p, err := requestOf(state, pod); err == nil {
		p.assigned, p.node = nil, ""
	}
}

// PreBindPreFlight says whether PreBind has anything to write.
func (d *GPUDevices) PreBindPreFlight(_ context.Context, state fwk.CycleState, pod *v1.Pod, _ string) (*fwk.PreBindPreFlightResult, *fwk.Status) {
	if p, err := requestOf(state, pod); err != nil || p.assigned == nil {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return nil, nil
}

// PreBind writes the assignment on the pod, as a patch through the API.
func (d *GPUDevices) PreBind(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	p, err := requestOf(state, pod)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if p.assigned == nil {
		return nil
	}
	if p.node != nodeName {
		return fwk.AsStatus(fmt.Errorf("devices were reserved on %s, binding to %s", p.node, nodeName))
	}
	// A production plugin earlier in PreBind may have written its own
	// choice: keep it. Only a value written during this binding cycle
	// counts; one the pod arrived with was set by its owner and is replaced.
	// (PennyGPUPack records its choice in the Binding, after this: the
	// bound pod then carries its choice, which the views read.)
	cur, err := d.h.ClientSet().CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("reading pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	if v, ok := cur.Annotations[gpu.AnnotationAssignment]; ok && v != pod.Annotations[gpu.AnnotationAssignment] {
		a, err := gpu.PodAssignment(cur)
		if err != nil {
			return fwk.AsStatus(err)
		}
		p.assigned = a
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{gpu.AnnotationAssignment: p.assigned.String()}}})
	if err != nil {
		return fwk.AsStatus(err)
	}
	if _, err := d.h.ClientSet().CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fwk.AsStatus(fmt.Errorf("recording %s on pod %s/%s: %w", gpu.AnnotationAssignment, pod.Namespace, pod.Name, err))
	}
	return nil
}
