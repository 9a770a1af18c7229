package podresources

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/go-logr/logr/testr"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/pennysched/penny/agent/nvml"
	"github.com/pennysched/penny/agent/report"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// fakeKubelet serves PodResources on a unix socket, as the kubelet does.
type fakeKubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	mu   sync.Mutex
	pods []*podresourcesv1.PodResources
}

func (f *fakeKubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &podresourcesv1.ListPodResourcesResponse{PodResources: f.pods}, nil
}

func startKubelet(t *testing.T, socket string, f *fakeKubelet) (stop func()) {
	t.Helper()
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(s, f)
	go s.Serve(lis)
	var once sync.Once
	stop = func() { once.Do(s.Stop) }
	t.Cleanup(stop)
	return stop
}

func pod(ns, name string, ctrs ...*podresourcesv1.ContainerResources) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: ctrs}
}

func ctr(name string, devs ...*podresourcesv1.ContainerDevices) *podresourcesv1.ContainerResources {
	return &podresourcesv1.ContainerResources{Name: name, Devices: devs}
}

func dev(resource string, ids ...string) *podresourcesv1.ContainerDevices {
	return &podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: ids}
}

const (
	gpu0 = "GPU-00000000-0000-0000-0000-000000000000"
	gpu1 = "GPU-11111111-1111-1111-1111-111111111111"
	gpu2 = "GPU-22222222-2222-2222-2222-222222222222"
	mig0 = "MIG-aaaaaaaa-0000-0000-0000-000000000000"
	mig1 = "MIG-aaaaaaaa-1111-1111-1111-111111111111"
)

func TestCollectAndAttach(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{
		pod("team-b", "infer", ctr("server", dev("nvidia.com/mig-1g.5gb", mig1))),
		pod("team-a", "trainer", ctr("main", dev("nvidia.com/gpu", gpu1, gpu0)), ctr("sidecar")),
		pod("team-c", "notebook", ctr("lab", dev("nvidia.com/gpu", gpu2+"::0"))),
		pod("team-d", "notebook", ctr("lab", dev("nvidia.com/gpu", gpu2+"::1"))),
		pod("kube-system", "sriov", ctr("c", dev("intel.com/sriov", "0000:3b:02.0"))),
		pod("team-e", "lost", ctr("c", dev("nvidia.com/gpu", "GPU-99999999-9999-9999-9999-999999999999"))),
	}}
	startKubelet(t, socket, k)

	c := New(socket, nil, nil)
	defer c.Close()
	r := c.Collect(context.Background())
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("status %v: %s", r.Status.State, r.Status.Message)
	}
	var got []string
	for _, d := range r.Devices {
		got = append(got, d.Pod.Namespace+"/"+d.Pod.Name+"/"+d.Container+" "+d.ResourceName+" "+strings.Join(d.DeviceIds, ","))
	}
	want := []string{
		"team-a/trainer/main nvidia.com/gpu " + gpu0 + "," + gpu1,
		"team-b/infer/server nvidia.com/mig-1g.5gb " + mig1,
		"team-c/notebook/lab nvidia.com/gpu " + gpu2 + "::0",
		"team-d/notebook/lab nvidia.com/gpu " + gpu2 + "::1",
		"team-e/lost/c nvidia.com/gpu GPU-99999999-9999-9999-9999-999999999999",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("devices:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	gpus := []*telemetryv1.GPU{
		{Uuid: gpu0, Index: 0},
		{Uuid: gpu1, Index: 1},
		{Uuid: gpu2, Index: 2},
		{Uuid: "GPU-33333333-3333-3333-3333-333333333333", Index: 3, MigMode: telemetryv1.MIGMode_MIG_MODE_ENABLED,
			MigInstances: []*telemetryv1.MIGInstance{{Uuid: mig0}, {Uuid: mig1}}},
	}
	unmatched := Attach(gpus, nil, r.Devices)
	if len(unmatched) != 1 || !strings.HasPrefix(unmatched[0], "GPU-9999") {
		t.Errorf("unmatched %v", unmatched)
	}
	if len(gpus[0].Pods) != 1 || gpus[0].Pods[0].Name != "trainer" || len(gpus[1].Pods) != 1 {
		t.Errorf("whole GPUs: %v %v", gpus[0].Pods, gpus[1].Pods)
	}
	if len(gpus[2].Pods) != 2 {
		t.Errorf("time-sliced GPU holders: %v", gpus[2].Pods)
	}
	if gpus[3].MigInstances[0].Pod != nil || gpus[3].MigInstances[1].Pod.GetName() != "infer" {
		t.Errorf("MIG owners: %v %v", gpus[3].MigInstances[0].Pod, gpus[3].MigInstances[1].Pod)
	}

	// A pod that ends frees its device on the next collection.
	k.mu.Lock()
	k.pods = k.pods[1:]
	k.mu.Unlock()
	r = c.Collect(context.Background())
	Attach(gpus, nil, r.Devices)
	if gpus[3].MigInstances[1].Pod != nil {
		t.Errorf("MIG instance still held after its pod left: %v", gpus[3].MigInstances[1].Pod)
	}
}

// The NVIDIA device plugin hands the kubelet UUIDs whatever its
// deviceIDStrategy: "index" changes only the ids it passes into the
// container (rm.Device.ID is the UUID, rm.Device.Index the "<gpu>:<n>"
// form), so on a mixed-strategy MIG node the kubelet lists MIG UUIDs, with
// "::<n>" for time-sliced replicas, and those must reach the MIG instances.
// An id that names nothing NVML reports is counted in the status message.
func TestMIGIDsUnderEitherDeviceIDStrategy(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	const gone = "GPU-99999999-9999-9999-9999-999999999999"
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{
		pod("team-a", "trainer", ctr("main", dev("nvidia.com/gpu", gpu0))),
		pod("team-b", "infer", ctr("server", dev("nvidia.com/mig-1g.10gb", mig0))),
		pod("team-c", "lab", ctr("nb", dev("nvidia.com/mig-3g.40gb.shared", mig1+"::2"))),
		pod("team-d", "stray", ctr("c", dev("nvidia.com/mig-1g.10gb", "1:0"), dev("nvidia.com/gpu", gone))),
	}}
	startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()

	r := &telemetryv1.NodeReport{Gpus: []*telemetryv1.GPU{
		{Uuid: gpu0, Index: 0},
		{Uuid: gpu1, Index: 1, MigMode: telemetryv1.MIGMode_MIG_MODE_ENABLED,
			MigInstances: []*telemetryv1.MIGInstance{{Uuid: mig0}, {Uuid: mig1}}},
	}}
	c.Fill(context.Background(), r)
	if got := r.Gpus[0].Pods; len(got) != 1 || got[0].GetName() != "trainer" {
		t.Errorf("GPU 0 holders %v, want team-a/trainer", got)
	}
	if got := r.Gpus[1].Pods; len(got) != 0 {
		t.Errorf("the MIG-mode GPU itself lists holders %v", got)
	}
	migs := r.Gpus[1].MigInstances
	if migs[0].Pod.GetName() != "infer" || migs[1].Pod.GetName() != "lab" {
		t.Errorf("MIG holders %v, %v: want team-b/infer and team-c/lab", migs[0].Pod, migs[1].Pod)
	}
	st := r.PodResources
	if st.GetState() != telemetryv1.CollectorStatus_STATE_OK || !strings.HasPrefix(st.GetMessage(), "2 device ids match no GPU or MIG instance") {
		t.Errorf("status %v %q: want OK, counting the 2 ids that match nothing", st.GetState(), st.GetMessage())
	}
}

// GKE's device plugin names devices by their device files: "nvidia<minor>"
// a whole GPU, "nvidia<minor>/gi<id>" a MIG partition, and "/vgpu<n>" a
// share of either (container-engine-accelerators pkg/gpu/nvidia/manager.go,
// mig/mig.go, gpusharing/gpusharing.go), all as nvidia.com/gpu. The minor
// number need not be the NVML index, nor the GPU instance id the MIG
// device's place, so the mock makes each differ from the other. A bare
// index is no id a plugin gives the kubelet: it attaches nothing and is
// counted with the ids that match nothing.
func TestGKEDeviceIDs(t *testing.T) {
	m, err := nvml.NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range m.Devices {
		d.(*server.Device).Minor = len(m.Devices) - 1 - i
	}
	// GPU 7 (/dev/nvidia0): GPU instances created from the last memory
	// slice back, so their ids run against their placement.
	if err := m.EnableMIG(7,
		nvml.MockInstance{Profile: gonvml.GPU_INSTANCE_PROFILE_1_SLICE, Start: 6},
		nvml.MockInstance{Profile: gonvml.GPU_INSTANCE_PROFILE_2_SLICE, Start: 4},
		nvml.MockInstance{Profile: gonvml.GPU_INSTANCE_PROFILE_3_SLICE, Start: 0}); err != nil {
		t.Fatal(err)
	}
	gpus := nvml.New(m, testr.New(t), nvml.Options{})
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{
		pod("team-a", "trainer", ctr("main", dev("nvidia.com/gpu", "nvidia7"))),
		pod("team-b", "infer", ctr("server", dev("nvidia.com/gpu", "nvidia0/gi0"))),
		pod("team-c", "nb-1", ctr("lab", dev("nvidia.com/gpu", "nvidia6/vgpu0"))),
		pod("team-d", "nb-2", ctr("lab", dev("nvidia.com/gpu", "nvidia6/vgpu1"))),
		pod("team-e", "mps", ctr("lab", dev("nvidia.com/gpu", "nvidia0/gi2/vgpu3"))),
		pod("team-f", "stray", ctr("c", dev("nvidia.com/gpu", "1", "nvidia8"))),
	}}
	startKubelet(t, socket, k)
	pr := New(socket, nil, gpus.Minors)
	defer pr.Close()

	b := &report.Builder{Node: "gpu-node-1", AgentID: "test", Version: "test", Sources: report.Sources{GPUs: gpus, PodDevices: pr}}
	r := b.Build(context.Background())
	r.Sequence = 1
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatalf("report does not validate: %v", err)
	}
	holders := func(g *telemetryv1.GPU) string {
		var names []string
		for _, p := range g.Pods {
			names = append(names, p.Namespace+"/"+p.Name)
		}
		return strings.Join(names, ",")
	}
	want := map[int]string{0: "team-a/trainer", 1: "team-c/nb-1,team-d/nb-2"}
	for i, g := range r.Gpus {
		if got := holders(g); got != want[i] {
			t.Errorf("GPU %d (/dev/nvidia%d) holders %q, want %q", i, 7-i, got, want[i])
		}
	}
	migs := r.Gpus[7].MigInstances
	if len(migs) != 3 {
		t.Fatalf("GPU 7 has %d MIG instances, want 3", len(migs))
	}
	// By placement: 3g.20gb (GPU instance 2), 2g.10gb (1), 1g.5gb (0).
	if migs[0].Pod.GetName() != "mps" || migs[1].Pod != nil || migs[2].Pod.GetName() != "infer" {
		t.Errorf("MIG holders %v, %v, %v: want team-e/mps on GPU instance 2, none, team-b/infer on GPU instance 0",
			migs[0].Pod, migs[1].Pod, migs[2].Pod)
	}
	st := r.PodResources
	if st.GetState() != telemetryv1.CollectorStatus_STATE_OK || !strings.HasPrefix(st.GetMessage(), "2 device ids match no GPU or MIG instance NVML reports (first: 1)") {
		t.Errorf("status %v %q: want OK, counting the bare index and the GPU no device file names", st.GetState(), st.GetMessage())
	}
}

func TestNoSocket(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "missing.sock"), nil, nil)
	r := c.Collect(context.Background())
	if r.Status.State != telemetryv1.CollectorStatus_STATE_UNAVAILABLE || !strings.Contains(r.Status.Message, "pod-resources") {
		t.Fatalf("got %v %q", r.Status.State, r.Status.Message)
	}
}

func TestKubeletRestart(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{pod("a", "p", ctr("c", dev("nvidia.com/gpu", gpu0)))}}
	stop := startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()
	if r := c.Collect(context.Background()); r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("first: %v", r.Status)
	}
	stop()
	// Stopping removes the socket, as a stopped kubelet's does.
	if r := c.Collect(context.Background()); r.Status.State == telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("collection succeeded with the kubelet down")
	}
	startKubelet(t, socket, k)
	if r := c.Collect(context.Background()); r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.Devices) != 1 {
		t.Fatalf("after the kubelet came back: %v", r.Status)
	}
}

// validReport wraps a GPU and the kubelet's answer in a report the
// scheduler's validation can judge.
func validReport(gpus []*telemetryv1.GPU) *telemetryv1.NodeReport {
	off := &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED}
	return &telemetryv1.NodeReport{
		NodeName: "gpu-node-1", AgentId: "test", Sequence: 1, CollectedAt: timestamppb.Now(),
		Nvml: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}, Gpus: gpus,
		PodResources: off, Profiling: off, Reclaim: off,
	}
}

func healthyGPU(uuid string, index uint32) *telemetryv1.GPU {
	return &telemetryv1.GPU{Uuid: uuid, Index: index, Name: "NVIDIA H200", Product: "NVIDIA-H200",
		MemoryTotalBytes: 141 << 30, MigMode: telemetryv1.MIGMode_MIG_MODE_DISABLED,
		Health: &telemetryv1.Health{Healthy: true}}
}

// A GPU time-sliced into more replicas than the report may list holders for
// (telemetryv1.MaxPodsPerGPU), with a pod on each, must not cost the node its
// whole report: the scheduler refuses a GPU with more holders than that.
func TestManyTimeSlicedHoldersKeepTheReportValid(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{}
	n := telemetryv1.MaxPodsPerGPU + 6
	for i := 0; i < n; i++ {
		k.pods = append(k.pods, pod("infer", fmt.Sprintf("server-%03d", i), ctr("main", dev("nvidia.com/gpu", fmt.Sprintf("%s::%d", gpu0, i)))))
	}
	k.pods = append(k.pods, pod("train", "job", ctr("main", dev("nvidia.com/gpu", gpu1))))
	startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()

	r := validReport([]*telemetryv1.GPU{healthyGPU(gpu0, 0), healthyGPU(gpu1, 1)})
	c.Fill(context.Background(), r)
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatalf("report with %d pods on one GPU does not validate: %v", n, err)
	}
	if got := len(r.Gpus[0].Pods); got != telemetryv1.MaxPodsPerGPU {
		t.Errorf("GPU 0 lists %d holders, want the first %d", got, telemetryv1.MaxPodsPerGPU)
	} else if r.Gpus[0].Pods[0].Name != "server-000" || r.Gpus[0].Pods[telemetryv1.MaxPodsPerGPU-1].Name != fmt.Sprintf("server-%03d", telemetryv1.MaxPodsPerGPU-1) {
		t.Errorf("GPU 0 holders are not the first ones in order: %v ... %v", r.Gpus[0].Pods[0], r.Gpus[0].Pods[telemetryv1.MaxPodsPerGPU-1])
	}
	if len(r.Gpus[1].Pods) != 1 {
		t.Errorf("GPU 1 holders %v", r.Gpus[1].Pods)
	}
	if st := r.PodResources; st.GetState() != telemetryv1.CollectorStatus_STATE_OK || !strings.Contains(st.GetMessage(), gpu0) || !strings.Contains(st.GetMessage(), fmt.Sprint(n)) {
		t.Errorf("status %v %q: want OK, naming the GPU and its %d holders", st.GetState(), st.GetMessage(), n)
	}
	if len(r.PodDevices) != n+1 {
		t.Errorf("pod_devices has %d entries, want all %d", len(r.PodDevices), n+1)
	}
}

// kubeletDevices is how the kubelet lists a container's devices: one entry
// per device id and NUMA node, in the order of a Go map.
func kubeletDevices(resource string, ids ...string) []*podresourcesv1.ContainerDevices {
	var out []*podresourcesv1.ContainerDevices
	for _, id := range ids {
		out = append(out, dev(resource, id))
	}
	return out
}

// The kubelet lists a container's devices one id at a time in map order, so
// two answers about an unchanged node differ in order. The report must not:
// the agent sends a report at once whenever it changes, and an unstable
// order would send one every collection instead of every resend interval.
func TestPodDevicesIgnoreTheKubeletsOrder(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	devs := kubeletDevices("nvidia.com/gpu", gpu0, gpu1, gpu2, mig0)
	// A device on two NUMA nodes is listed once per node.
	devs = append(devs, dev("nvidia.com/gpu", gpu1))
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{pod("train", "job", ctr("main", devs...))}}
	startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()

	first := c.Collect(context.Background())
	k.mu.Lock()
	slices.Reverse(devs)
	k.mu.Unlock()
	second := c.Collect(context.Background())
	if len(first.Devices) != 1 || strings.Join(first.Devices[0].DeviceIds, ",") != strings.Join([]string{gpu0, gpu1, gpu2, mig0}, ",") {
		t.Errorf("want one entry with the container's ids sorted, once each; got %v", first.Devices)
	}
	a := &telemetryv1.NodeReport{PodDevices: first.Devices}
	b := &telemetryv1.NodeReport{PodDevices: second.Devices}
	if !proto.Equal(a, b) {
		t.Errorf("the same devices in another order give another report:\n%v\n%v", first.Devices, second.Devices)
	}
}

// However many devices a node's pods hold, pod_devices stays within what the
// scheduler accepts (telemetryv1.MaxPodDevices entries of at most
// telemetryv1.MaxDeviceIDsPerEntry ids): the kubelet's one entry per id
// would pass the limit on a node whose pods hold a few thousand time-sliced
// replicas, and the scheduler would refuse the node's whole report.
func TestManyDeviceIDsKeepTheReportValid(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{}
	pods, replicas := 40, 60 // 2,400 ids, more than MaxPodDevices
	for p := 0; p < pods; p++ {
		var ids []string
		for r := 0; r < replicas; r++ {
			ids = append(ids, fmt.Sprintf("%s::%03d", gpu0, p*replicas+r))
		}
		k.pods = append(k.pods, pod("infer", fmt.Sprintf("server-%02d", p), ctr("main", kubeletDevices("nvidia.com/gpu", ids...)...)))
	}
	// One container with more ids than an entry may carry.
	var big []string
	n := 2*telemetryv1.MaxDeviceIDsPerEntry + 5
	for i := 0; i < n; i++ {
		g := gpu1
		if i == n-1 {
			g = gpu2 // sorts last: only the last entry names GPU 2
		}
		big = append(big, fmt.Sprintf("%s::%03d", g, i))
	}
	k.pods = append(k.pods, pod("train", "big", ctr("main", kubeletDevices("nvidia.com/gpu", big...)...)))
	startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()

	r := validReport([]*telemetryv1.GPU{healthyGPU(gpu0, 0), healthyGPU(gpu1, 1), healthyGPU(gpu2, 2)})
	c.Fill(context.Background(), r)
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatalf("report does not validate: %v", err)
	}
	if len(r.PodDevices) != pods+3 {
		t.Fatalf("%d pod_devices entries, want one per container and %d for the big one", len(r.PodDevices), 3)
	}
	var got []string
	for _, d := range r.PodDevices[pods:] {
		if d.Pod.GetName() != "big" || d.Container != "main" || d.ResourceName != "nvidia.com/gpu" {
			t.Errorf("entry %v", d)
		}
		got = append(got, d.DeviceIds...)
	}
	if strings.Join(got, ",") != strings.Join(big, ",") {
		t.Errorf("the big container's entries hold %d ids, want all %d in order", len(got), n)
	}
	if len(r.Gpus[0].Pods) != pods || len(r.Gpus[1].Pods) != 1 || len(r.Gpus[2].Pods) != 1 {
		t.Errorf("holders: %d %v %v", len(r.Gpus[0].Pods), r.Gpus[1].Pods, r.Gpus[2].Pods)
	}
	if r.PodResources.GetMessage() != "" {
		t.Errorf("message %q", r.PodResources.GetMessage())
	}
}

// A node whose containers hold devices in more entries than a report may
// list (telemetryv1.MaxPodDevices) keeps its report: the scheduler refuses
// a whole report over the limit, which would leave the node unreported.
func TestMoreContainersThanAReportListsKeepTheReportValid(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{}
	n := telemetryv1.MaxPodDevices + 10
	for i := 0; i < n; i++ {
		k.pods = append(k.pods, pod("infer", fmt.Sprintf("server-%04d", i), ctr("main", dev("nvidia.com/gpu", fmt.Sprintf("%s::%04d", gpu0, i)))))
	}
	startKubelet(t, socket, k)
	c := New(socket, nil, nil)
	defer c.Close()

	r := validReport([]*telemetryv1.GPU{healthyGPU(gpu0, 0)})
	c.Fill(context.Background(), r)
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatalf("report with %d containers holding devices does not validate: %v", n, err)
	}
	if got := len(r.PodDevices); got != telemetryv1.MaxPodDevices || r.PodDevices[0].Pod.GetName() != "server-0000" {
		t.Errorf("pod_devices has %d entries starting with %v, want the first %d", got, r.PodDevices[0].Pod, telemetryv1.MaxPodDevices)
	}
	if st := r.PodResources; st.GetState() != telemetryv1.CollectorStatus_STATE_OK || !strings.Contains(st.GetMessage(), fmt.Sprint(n)) {
		t.Errorf("status %v %q: want OK, saying there were %d entries", st.GetState(), st.GetMessage(), n)
	}
}
