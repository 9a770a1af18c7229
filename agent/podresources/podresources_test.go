package podresources

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

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

	c := New(socket, nil)
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
	unmatched := Attach(gpus, r.Devices)
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
	Attach(gpus, r.Devices)
	if gpus[3].MigInstances[1].Pod != nil {
		t.Errorf("MIG instance still held after its pod left: %v", gpus[3].MigInstances[1].Pod)
	}
}

func TestDeviceIndexStrategy(t *testing.T) {
	gpus := []*telemetryv1.GPU{{Uuid: gpu0, Index: 0}, {Uuid: gpu1, Index: 1}}
	Attach(gpus, []*telemetryv1.PodDevices{{Pod: &telemetryv1.PodRef{Namespace: "a", Name: "p"}, ResourceName: "nvidia.com/gpu", DeviceIds: []string{"1"}}})
	if len(gpus[0].Pods) != 0 || len(gpus[1].Pods) != 1 {
		t.Fatalf("index ids: %v %v", gpus[0].Pods, gpus[1].Pods)
	}
}

func TestNoSocket(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "missing.sock"), nil)
	r := c.Collect(context.Background())
	if r.Status.State != telemetryv1.CollectorStatus_STATE_UNAVAILABLE || !strings.Contains(r.Status.Message, "pod-resources") {
		t.Fatalf("got %v %q", r.Status.State, r.Status.Message)
	}
}

func TestKubeletRestart(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	k := &fakeKubelet{pods: []*podresourcesv1.PodResources{pod("a", "p", ctr("c", dev("nvidia.com/gpu", gpu0)))}}
	stop := startKubelet(t, socket, k)
	c := New(socket, nil)
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
