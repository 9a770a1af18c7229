package sim

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

func newTestEngine(t *testing.T, policy string, nodes []*v1.Node, tr *Trace) *Engine {
	t.Helper()
	p, err := LookupPolicy(policy)
	if err != nil {
		t.Fatal(err)
	}
	run := Run{Seed: 42}
	if tr != nil {
		run.Workload = TypicalWorkload(tr)
	}
	prof, reg, err := p.Build(run)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(context.Background(), EngineOptions{Profile: prof, Registry: reg, Nodes: nodes, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// kube-scheduler alone would take the whole-GPU pod: nvidia.com/gpu shows 2
// free. The device view knows both GPUs hold a share.
func TestDefaultPolicyPlacesOnRealDevices(t *testing.T) {
	e := newTestEngine(t, "default", []*v1.Node{NewNode("n", 32000, 65536, 2, "Tesla-T4")}, nil)
	schedule := func(p *v1.Pod) Outcome {
		t.Helper()
		out, err := e.Schedule(p)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, name := range []string{"a", "b"} {
		out := schedule(NewPod("ns", name, 1000, 1024, 1, 600, nil))
		if out.Node != "n" {
			t.Fatalf("share %s: not placed: %s", name, out.Reason)
		}
	}
	out := schedule(NewPod("ns", "whole", 1000, 1024, 1, 1000, nil))
	if out.Node != "" || !strings.Contains(out.Reason, "no GPU with room for 1 nvidia.com/gpu") {
		t.Fatalf("whole GPU on two shared GPUs: node %q, reason %q", out.Node, out.Reason)
	}
	out = schedule(NewPod("ns", "c", 1000, 1024, 1, 600, nil))
	if out.Node != "" {
		t.Fatal("a third 600m share fit on two GPUs with 400m free each")
	}
	out = schedule(NewPod("ns", "d", 1000, 1024, 1, 400, nil))
	if out.Node != "n" {
		t.Fatalf("400m share: %s", out.Reason)
	}
	a, err := gpu.PodAssignment(out.Pod)
	if err != nil || len(a) != 1 || a[0].Milli != 400 {
		t.Fatalf("assignment of the 400m share: %v %v", a, err)
	}
	// The cache holds the bound pods: CPU and the extended resources too.
	nis, _ := e.NodeInfos()
	if got := nis[0].GetRequested().GetScalarResources()[gpu.ResourceGPUMilli]; got != 1600 {
		t.Fatalf("requested gpu-milli %d, want 1600", got)
	}
	if err := e.Remove(out.Pod); err != nil {
		t.Fatal(err)
	}
	if out := schedule(NewPod("ns", "e", 1000, 1024, 1, 400, nil)); out.Node != "n" {
		t.Fatalf("after a departure: %s", out.Reason)
	}
}

func TestUnknownPolicyListsValidOnes(t *testing.T) {
	_, err := LookupPolicy("binpack")
	if err == nil || !strings.Contains(err.Error(), "fgd") || !strings.Contains(err.Error(), "default") {
		t.Fatalf("want the valid policies listed, got %v", err)
	}
	if _, err := ParsePolicies("fgd, bestfit,nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("list with an unknown policy: %v", err)
	}
	ps, err := ParsePolicies("FGD,fgd,random")
	if err != nil || len(ps) != 2 {
		t.Fatalf("duplicates: %v %v", ps, err)
	}
}

// The penny policy runs the deployed penny-scheduler profile.
func TestPennyPolicyRunsDeployedProfile(t *testing.T) {
	e := newTestEngine(t, "penny", []*v1.Node{NewNode("n", 8000, 8192, 1, "Tesla-T4")}, nil)
	if got := e.Framework().ProfileName(); got != "penny-scheduler" {
		t.Fatalf("profile %q", got)
	}
	out, err := e.Schedule(NewPod("ns", "p", 1000, 1024, 1, 1000, nil))
	if err != nil || out.Node != "n" {
		t.Fatalf("%+v %v", out, err)
	}
	if _, err := ProfileFromConfig([]byte("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: other\n"), "penny-scheduler"); err == nil || !strings.Contains(err.Error(), "it has other") {
		t.Fatalf("missing profile: %v", err)
	}
}

// A short fill on a slice of the openb cluster: every placement is
// physically valid and the curve is well formed.
func TestShortFillInvariants(t *testing.T) {
	dir := openbDir(t)
	all, err := LoadOpenbNodes(filepath.Join(dir, "openb_node_list_all_node.csv"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := all[300:360] // 10 CPU nodes and 50 GPU nodes
	tr, err := LoadOpenbPods(filepath.Join(dir, "openb_pod_list_default.csv"))
	if err != nil {
		t.Fatal(err)
	}
	capacity := GPUCapacityMilli(nodes)
	pods, err := FillWorkload(context.Background(), tr, capacity, 1.3, 7, true)
	if err != nil {
		t.Fatal(err)
	}
	var asked, biggest int64
	for _, p := range pods {
		asked += podGPUMilli(p)
		biggest = max(biggest, podGPUMilli(p))
	}
	if target := capacity * 13 / 10; asked < target || asked > target+biggest {
		t.Fatalf("workload asks %d milli for capacity %d, want 1.3x", asked, capacity)
	}

	for _, policy := range []string{"fgd", "default"} {
		t.Run(policy, func(t *testing.T) {
			e := newTestEngine(t, policy, nodes, tr)
			placed, failed := 0, 0
			for _, p := range pods {
				out, err := e.Schedule(p)
				if err != nil {
					t.Fatal(err)
				}
				if out.Node != "" {
					placed++
				} else {
					failed++
				}
			}
			if placed != len(e.Bound()) || placed+failed != len(pods) || failed == 0 {
				t.Fatalf("placed %d, failed %d, bound %d, pods %d", placed, failed, len(e.Bound()), len(pods))
			}
			checkPlacementsValid(t, e)
		})
	}

	p, _ := LookupPolicy("fgd")
	rec, err := Fill(context.Background(), FillOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 7, Inflate: 1.3})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.AllocCurve) != 131 || rec.AllocCurve[0] != 0 {
		t.Fatalf("curve has %d points, starts at %v", len(rec.AllocCurve), rec.AllocCurve[0])
	}
	// Point k is taken when arrivals first reach k%, so they are below k% plus
	// one pod: allocation cannot exceed that.
	slack := 100 * float64(biggest) / float64(capacity)
	for k := 1; k < len(rec.AllocCurve); k++ {
		if rec.AllocCurve[k] < rec.AllocCurve[k-1] || rec.AllocCurve[k] > 100 || rec.AllocCurve[k] > float64(k)+slack {
			t.Fatalf("curve point %d = %v after %v: must grow, stay <= 100 and <= arrivals", k, rec.AllocCurve[k], rec.AllocCurve[k-1])
		}
	}
	if got := 100 - rec.AllocCurve[130]; got != rec.UnallocatedGPUPct {
		t.Fatalf("unallocated %v, curve end says %v", rec.UnallocatedGPUPct, got)
	}
	if rec.PodsTotal != len(pods) || rec.PodsFailed == 0 || rec.FragRateAt80 <= 0 || rec.FragRateAt80 > 100 {
		t.Fatalf("record %+v", rec)
	}
	again, err := Fill(context.Background(), FillOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 7, Inflate: 1.3})
	if err != nil {
		t.Fatal(err)
	}
	again.WallSeconds = rec.WallSeconds
	if !reflect.DeepEqual(rec, again) {
		t.Fatalf("the same seed gave different results:\n%+v\n%+v", rec, again)
	}
	// Memoized filtering is an optimisation only: running every Filter
	// plugin on every node gives the same run.
	plain, err := Fill(context.Background(), FillOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 7, Inflate: 1.3, NoMemo: true})
	if err != nil {
		t.Fatal(err)
	}
	plain.WallSeconds = rec.WallSeconds
	if !reflect.DeepEqual(rec, plain) {
		t.Fatalf("memoized filtering changed the run:\n%+v\n%+v", rec, plain)
	}
}

// checkPlacementsValid rebuilds every node's devices from its bound pods and
// checks CPU and memory: nothing may be overcommitted.
func checkPlacementsValid(t *testing.T, e *Engine) {
	t.Helper()
	nis, err := e.NodeInfos()
	if err != nil {
		t.Fatal(err)
	}
	bound := 0
	for _, ni := range nis {
		dev := gpu.NodeDevicesFor(ni.Node())
		for _, pi := range ni.GetPods() {
			if _, err := dev.AddPod(pi.GetPod()); err != nil {
				t.Fatalf("node %s: %v", ni.Node().Name, err)
			}
			bound++
		}
		if r, a := ni.GetRequested(), ni.GetAllocatable(); r.GetMilliCPU() > a.GetMilliCPU() || r.GetMemory() > a.GetMemory() {
			t.Fatalf("node %s overcommitted: requested %d m CPU / %d B, allocatable %d / %d", ni.Node().Name, r.GetMilliCPU(), r.GetMemory(), a.GetMilliCPU(), a.GetMemory())
		}
	}
	if bound != len(e.Bound()) {
		t.Fatalf("cache holds %d pods, engine bound %d", bound, len(e.Bound()))
	}
}

// gangPermit is a stand-in for a gang plugin: it holds pods labelled with a
// gang until gang-size of them are reserved, then allows them all.
type gangPermit struct{ h fwk.Handle }

func (g *gangPermit) Name() string { return "TestGang" }

func (g *gangPermit) Permit(_ context.Context, _ fwk.CycleState, p *v1.Pod, _ string) (*fwk.Status, time.Duration) {
	name := p.Labels[gang.LabelName]
	if name == "" {
		return nil, 0
	}
	var members []fwk.WaitingPod
	g.h.IterateOverWaitingPods(func(wp fwk.WaitingPod) {
		if wp.GetPod().Labels[gang.LabelName] == name {
			members = append(members, wp)
		}
	})
	if fmt.Sprint(len(members)+1) != p.Labels[gang.KeySize] {
		return fwk.NewStatus(fwk.Wait), time.Hour
	}
	for _, wp := range members {
		wp.Allow(g.Name())
	}
	return nil, 0
}

// gangPermitEngine is the default profile with gangPermit, on 8-GPU nodes
// of the given names; it is closed when the test ends.
func gangPermitEngine(t *testing.T, nodes ...string) *Engine {
	t.Helper()
	prof, err := DefaultProfile()
	if err != nil {
		t.Fatal(err)
	}
	prof.Plugins.Permit.Enabled = append(prof.Plugins.Permit.Enabled, config.Plugin{Name: "TestGang"})
	reg := frameworkruntime.Registry{"TestGang": func(_ context.Context, _ runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
		return &gangPermit{h: h}, nil
	}}
	var ns []*v1.Node
	for _, n := range nodes {
		ns = append(ns, NewNode(n, 8000, 8192, 8, "Tesla-T4"))
	}
	e, err := NewEngine(context.Background(), EngineOptions{Profile: prof, Registry: reg, Seed: 1, Nodes: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// gangMember is member i of gang g of two, on a whole 8-GPU node.
func gangMember(i int) *v1.Pod {
	p := NewPod("ns", fmt.Sprintf("g-%d", i), 1000, 1024, 8, 1000, nil)
	p.Labels[gang.LabelName], p.Labels[gang.KeySize] = "g", "2"
	return p
}

func TestPermitWaitingPodsSettle(t *testing.T) {
	e := gangPermitEngine(t, "a", "b", "c")
	out, err := e.Schedule(gangMember(0))
	if err != nil || !out.Waiting || e.Waiting() != 1 {
		t.Fatalf("first member: %+v %v, waiting %d", out, err, e.Waiting())
	}
	if s, _ := e.SettleWaiting(); len(s) != 0 {
		t.Fatalf("settled before the gang was complete: %+v", s)
	}
	out, err = e.Schedule(gangMember(1))
	if err != nil || out.Node == "" || out.Waiting {
		t.Fatalf("last member: %+v %v", out, err)
	}
	settled, err := e.SettleWaiting()
	if err != nil || len(settled) != 1 || settled[0].Node == "" || settled[0].Node == out.Node {
		t.Fatalf("settled %+v %v: the first member binds on the other node", settled, err)
	}
	if len(e.Bound()) != 2 || e.Waiting() != 0 {
		t.Fatalf("bound %d, waiting %d", len(e.Bound()), e.Waiting())
	}
	// A gang that never completes is rejected at the end and frees its node.
	lone := gangMember(2)
	lone.Labels[gang.LabelName] = "h"
	if out, _ := e.Schedule(lone); !out.Waiting {
		t.Fatalf("lone member: %+v", out)
	}
	rejected, err := e.RejectWaiting("run over")
	if err != nil || len(rejected) != 1 || rejected[0].Node != "" || !strings.Contains(rejected[0].Reason, "run over") {
		t.Fatalf("rejected %+v %v", rejected, err)
	}
	if len(e.Bound()) != 2 {
		t.Fatalf("a rejected pod stayed bound")
	}
}

// A node removed (a Spot reclaim) under a pod held at Permit took nothing
// with it: the pod stayed held and bound there once its gang completed, on a
// node no replay bills or reclaims again. It is rejected and waits again.
func TestRemovingANodeRejectsThePodsHeldAtPermitThere(t *testing.T) {
	e := gangPermitEngine(t, "a", "b")
	held, err := e.Schedule(gangMember(0))
	if err != nil || !held.Waiting {
		t.Fatalf("first member: %+v %v", held, err)
	}
	if _, err := e.RemoveNode(held.Node); err != nil {
		t.Fatal(err)
	}
	settled, err := e.SettleWaiting()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("node %s was removed", held.Node)
	if len(settled) != 1 || settled[0].Node != "" || !strings.Contains(settled[0].Reason, want) || e.Waiting() != 0 {
		t.Fatalf("settled %+v, %d still waiting; want g-0 rejected with %q and none waiting", settled, e.Waiting(), want)
	}
	// The gang forms again on the node that is left, without binding to the
	// one removed.
	if out, err := e.Schedule(gangMember(1)); err != nil || !out.Waiting {
		t.Fatalf("second member: %+v %v; want it held for g-0", out, err)
	}
	if s, err := e.SettleWaiting(); err != nil || len(s) != 0 || len(e.Bound()) != 0 {
		t.Fatalf("settled %+v %v, %d bound; want g-1 held and nothing bound", s, err, len(e.Bound()))
	}
}

// A MIG request lands on a GPU in MIG mode, at an offset its geometry
// allows, and the assignment is recorded on the pod.
func TestMIGPodGetsAnInstance(t *testing.T) {
	node := NewNode("mig", 64000, 262144, 2, "NVIDIA-A100-SXM4-80GB")
	node.Labels[gpu.LabelMIGStrategy] = "mixed"
	// The device plugin advertises the one non-MIG GPU as nvidia.com/gpu and
	// instances on the other.
	node.Status.Allocatable[gpu.ResourceGPU] = *resource.NewQuantity(1, resource.DecimalSI)
	node.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = *resource.NewQuantity(2, resource.DecimalSI)
	e := newTestEngine(t, "default", []*v1.Node{node}, nil)
	mig := func(name string) *v1.Pod {
		p := NewPod("ns", name, 1000, 1024, 0, 0, nil)
		l := v1.ResourceList{gpu.MIGResourceName("3g.40gb"): *resource.NewQuantity(1, resource.DecimalSI)}
		p.Spec.Containers[0].Resources.Limits, p.Spec.Containers[0].Resources.Requests = l, l
		return p
	}
	for i, want := range []string{"1:3g.40gb@0", "1:3g.40gb@4"} {
		out, err := e.Schedule(mig(fmt.Sprint("m", i)))
		if err != nil || out.Node != "mig" {
			t.Fatalf("instance %d: %+v %v", i, out, err)
		}
		if got := out.Pod.Annotations[gpu.AnnotationAssignment]; got != want {
			t.Fatalf("instance %d: assignment %q, want %q", i, got, want)
		}
	}
	// GPU 0 is not in MIG mode and still takes a whole-GPU pod.
	if out, err := e.Schedule(NewPod("ns", "whole", 1000, 1024, 1, 1000, nil)); err != nil || out.Pod.Annotations[gpu.AnnotationAssignment] != "0" {
		t.Fatalf("whole GPU: %+v %v", out, err)
	}
	checkPlacementsValid(t, e)
}
