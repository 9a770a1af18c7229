package nvml

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gpu"
)

func collect(t *testing.T, c *Collector) Result {
	t.Helper()
	return c.Collect(context.Background())
}

// asReport wraps a collection in a report so that the scheduler's validation
// can judge it.
func asReport(r Result) *telemetryv1.NodeReport {
	ok := &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED}
	return &telemetryv1.NodeReport{
		NodeName: "gpu-node-1", AgentId: "test", Sequence: 1, CollectedAt: timestamppb.Now(),
		Nvml: r.Status, DriverVersion: r.DriverVersion, CudaDriverVersion: r.CUDADriverVersion, Gpus: r.GPUs,
		PodResources: ok, Profiling: ok, Reclaim: ok,
	}
}

func TestCollectDGXA100WithMIG(t *testing.T) {
	m, err := NewMockFromFlag("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("status %v: %s", r.Status.State, r.Status.Message)
	}
	if r.DriverVersion != "550.54.15" || r.CUDADriverVersion != 12040 {
		t.Errorf("driver %q cuda %d", r.DriverVersion, r.CUDADriverVersion)
	}
	if len(r.GPUs) != 8 {
		t.Fatalf("got %d GPUs, want 8", len(r.GPUs))
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatalf("collected report does not validate: %v", err)
	}
	model, ok := gpu.LookupModel(r.GPUs[0].Product)
	if !ok || model.Name != "A100-40GB" {
		t.Fatalf("product %q is not pkg/gpu's A100-40GB", r.GPUs[0].Product)
	}
	for i, g := range r.GPUs[:6] {
		if g.MigMode != telemetryv1.MIGMode_MIG_MODE_DISABLED || len(g.MigInstances) != 0 {
			t.Errorf("GPU %d: mig %v with %d instances, want disabled and none", i, g.MigMode, len(g.MigInstances))
		}
		if g.GetUtilizationPercent() != uint32(10*i) || g.UtilizationPercent == nil {
			t.Errorf("GPU %d: utilisation %v, want %d", i, g.UtilizationPercent, 10*i)
		}
		if g.MemoryTotalBytes != 40960<<20 || g.MemoryUsedBytes == nil {
			t.Errorf("GPU %d: memory total %d used %v", i, g.MemoryTotalBytes, g.MemoryUsedBytes)
		}
		if !g.Health.Healthy || len(g.Health.ThrottleReasons) != 1 || g.Health.ThrottleReasons[0] != telemetryv1.ThrottleReason_THROTTLE_REASON_GPU_IDLE {
			t.Errorf("GPU %d: health %v", i, g.Health)
		}
		if g.Uuid != m.UUID(i) || g.Index != uint32(i) || g.PciBusId == "" {
			t.Errorf("GPU %d: uuid %q index %d pci %q", i, g.Uuid, g.Index, g.PciBusId)
		}
	}

	type inst struct {
		profile     string
		start, size uint32
	}
	want := map[int][]inst{
		6: {{"3g.20gb", 0, 4}, {"2g.10gb", 4, 2}, {"1g.5gb", 6, 1}},
		7: {{"1g.5gb", 0, 1}, {"1g.5gb", 1, 1}, {"1g.5gb", 2, 1}, {"1g.5gb", 3, 1}, {"1g.5gb", 4, 1}, {"1g.5gb", 5, 1}, {"1g.5gb", 6, 1}},
	}
	for idx, insts := range want {
		g := r.GPUs[idx]
		if g.MigMode != telemetryv1.MIGMode_MIG_MODE_ENABLED {
			t.Fatalf("GPU %d: mig mode %v", idx, g.MigMode)
		}
		if g.UtilizationPercent != nil {
			t.Errorf("GPU %d in MIG mode reports utilisation %d; NVML cannot measure it there", idx, *g.UtilizationPercent)
		}
		if len(g.MigInstances) != len(insts) {
			t.Fatalf("GPU %d: %d MIG instances, want %d", idx, len(g.MigInstances), len(insts))
		}
		var placements []gpu.Placement
		for j, w := range insts {
			got := g.MigInstances[j]
			if got.Profile != w.profile || got.PlacementStart != w.start || got.PlacementSize != w.size {
				t.Errorf("GPU %d instance %d: %s@%d+%d, want %s@%d+%d", idx, j, got.Profile, got.PlacementStart, got.PlacementSize, w.profile, w.start, w.size)
			}
			if !telemetryv1.IsMIGUUID(got.Uuid) {
				t.Errorf("GPU %d instance %d: uuid %q", idx, j, got.Uuid)
			}
			if _, ok := model.Profile(got.Profile); !ok {
				t.Errorf("profile %q is unknown to pkg/gpu's %s", got.Profile, model.Name)
			}
			placements = append(placements, gpu.Placement{Profile: got.Profile, Start: int(got.PlacementStart)})
		}
		// pkg/gpu agrees with NVML on where the instances sit: nothing else
		// of the smallest profile fits after a full 1g layout, and after the
		// mixed layout no 1g instance fits either.
		if starts, err := model.FreeStarts(placements, "1g.5gb"); err != nil || len(starts) != 0 {
			t.Errorf("GPU %d: pkg/gpu finds room for 1g.5gb at %v (err %v) in a full layout", idx, starts, err)
		}
	}

	// Collections are stable: the same machine gives the same UUIDs.
	m2, _ := NewMockFromFlag("dgxa100")
	r2 := collect(t, New(m2, testr.New(t), Options{}))
	if r2.GPUs[7].MigInstances[3].Uuid != r.GPUs[7].MigInstances[3].Uuid || r2.GPUs[2].Uuid != r.GPUs[2].Uuid {
		t.Error("mock UUIDs differ between two builds of the same machine")
	}
}

// Every GPU instance profile go-nvml's mocks know gets the name the device
// plugin uses; the base names are in pkg/gpu's tables (except A100-40GB's
// 1g.10gb, which pkg/gpu does not list).
func TestProfileNames(t *testing.T) {
	cases := []struct {
		machine string
		want    map[int]string
	}{
		{"dgxa100", map[int]string{
			nvml.GPU_INSTANCE_PROFILE_1_SLICE:      "1g.5gb",
			nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: "1g.5gb+me",
			nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: "1g.10gb",
			nvml.GPU_INSTANCE_PROFILE_2_SLICE:      "2g.10gb",
			nvml.GPU_INSTANCE_PROFILE_3_SLICE:      "3g.20gb",
			nvml.GPU_INSTANCE_PROFILE_4_SLICE:      "4g.20gb",
			nvml.GPU_INSTANCE_PROFILE_7_SLICE:      "7g.40gb",
		}},
		{"dgxh100", map[int]string{
			nvml.GPU_INSTANCE_PROFILE_1_SLICE:      "1g.10gb",
			nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: "1g.10gb+me",
			nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: "1g.20gb",
			nvml.GPU_INSTANCE_PROFILE_2_SLICE:      "2g.20gb",
			nvml.GPU_INSTANCE_PROFILE_3_SLICE:      "3g.40gb",
			nvml.GPU_INSTANCE_PROFILE_4_SLICE:      "4g.40gb",
			nvml.GPU_INSTANCE_PROFILE_7_SLICE:      "7g.80gb",
		}},
	}
	for _, tc := range cases {
		m, err := NewMock(tc.machine)
		if err != nil {
			t.Fatal(err)
		}
		dev := m.Devices[0].(*server.Device)
		got := map[int]string{}
		for id, info := range dev.Config.MIGProfiles.GpuInstanceProfiles {
			got[id] = ProfileName(id, info, dev.MemoryInfo.Total)
		}
		for id, name := range tc.want {
			if got[id] != name {
				t.Errorf("%s profile %d: named %q, want %q", tc.machine, id, got[id], name)
			}
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: mock has profiles %v, test expects %v", tc.machine, got, tc.want)
		}
	}
}

// The media-extension and graphics variants of a profile carry go-nvlib's
// attribute, which the scheduler's validation reads. Named like their base
// profile, a 1g+me.all instance was counted as a free plain 1g slice.
func TestProfileNameVariants(t *testing.T) {
	m, err := NewMock("dgxh100")
	if err != nil {
		t.Fatal(err)
	}
	dev := m.Devices[0].(*server.Device)
	base := dev.Config.MIGProfiles.GpuInstanceProfiles
	for _, tc := range []struct {
		variant, base int
		want          string
	}{
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.10gb+me"},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.20gb+me"},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.10gb+me.all"},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.20gb+me.all"},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.10gb-me"},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.20gb-me"},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.10gb+gfx"},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.20gb+gfx"},
		{nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_3_SLICE, "3g.40gb+gfx"},
		{nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE, "4g.40gb+gfx"},
	} {
		got := ProfileName(tc.variant, base[tc.base], dev.MemoryInfo.Total)
		if got != tc.want {
			t.Errorf("profile %d: named %q, want %q", tc.variant, got, tc.want)
			continue
		}
		p, err := telemetryv1.ParseMIGProfile(got)
		if err != nil || p.Name != ProfileName(tc.base, base[tc.base], dev.MemoryInfo.Total) {
			t.Errorf("the scheduler reads %q as %q (%v), want its base profile", got, p.Name, err)
		}
	}
}

func TestNoDriver(t *testing.T) {
	// A library path that exists nowhere: the same outcome as a node without
	// the NVIDIA driver, on any machine.
	lib := nvml.New(nvml.WithLibraryPath("/nonexistent/penny-test/libnvidia-ml.so.1"))
	c := New(lib, testr.New(t), Options{})
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_UNAVAILABLE {
		t.Fatalf("state %v, want UNAVAILABLE", r.Status.State)
	}
	if !strings.Contains(r.Status.Message, "no NVIDIA driver") || len(r.GPUs) != 0 {
		t.Fatalf("message %q, %d GPUs", r.Status.Message, len(r.GPUs))
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatalf("a no-GPU report must validate: %v", err)
	}
	// Watching XIDs without a driver waits instead of failing or spinning.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c.WatchXIDs(ctx, nil)
}

func TestDriverInstalledLater(t *testing.T) {
	m, _ := NewMock("dgxa100")
	var mu sync.Mutex
	present := false
	m.InitFunc = func() nvml.Return {
		mu.Lock()
		defer mu.Unlock()
		if !present {
			return nvml.ERROR_LIBRARY_NOT_FOUND
		}
		return nvml.SUCCESS
	}
	c := New(m, testr.New(t), Options{})
	if r := collect(t, c); r.Status.State != telemetryv1.CollectorStatus_STATE_UNAVAILABLE {
		t.Fatalf("before the driver: %v", r.Status.State)
	}
	mu.Lock()
	present = true
	mu.Unlock()
	if r := collect(t, c); r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("after the driver: %v with %d GPUs", r.Status.State, len(r.GPUs))
	}
}

func TestInitFailureIsAnError(t *testing.T) {
	m, _ := NewMock("dgxa100")
	m.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
	r := collect(t, New(m, testr.New(t), Options{}))
	if r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || !strings.Contains(r.Status.Message, "driver not loaded") {
		t.Fatalf("got %v %q", r.Status.State, r.Status.Message)
	}
}

func TestHealth(t *testing.T) {
	m, _ := NewMock("dgxa100")
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	c := New(m, testr.New(t), Options{XIDWindow: time.Hour, Now: clock})
	if r := collect(t, c); !r.GPUs[1].Health.Healthy {
		t.Fatalf("fresh GPU unhealthy: %v", r.GPUs[1].Health)
	}

	m.SetECCUncorrected(1, 2)
	m.SetClockReasons(2, nvml.ClocksThrottleReasonHwThermalSlowdown|nvml.ClocksEventReasonSwPowerCap)
	m.SetClockReasons(3, nvml.ClocksEventReasonSwPowerCap)
	r := collect(t, c)
	if h := r.GPUs[1].Health; h.Healthy || h.GetEccUncorrected() != 2 || !strings.Contains(h.Reasons[0], "2 uncorrected ECC") {
		t.Errorf("ECC: %v", h)
	}
	if h := r.GPUs[2].Health; h.Healthy || !strings.Contains(strings.Join(h.Reasons, ";"), "thermal") {
		t.Errorf("HW thermal slowdown: %v", h)
	}
	if h := r.GPUs[3].Health; !h.Healthy {
		t.Errorf("a software power cap is normal, not unhealthy: %v", h)
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan struct{}, 4)
	done := make(chan struct{})
	go func() { c.WatchXIDs(ctx, func() { seen <- struct{}{} }); close(done) }()
	m.InjectXID(4, 13) // an application error: recorded, GPU stays healthy
	m.InjectXID(5, 79) // fallen off the bus
	for i := 0; i < 2; i++ {
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
			t.Fatal("XID not seen")
		}
	}
	r = collect(t, c)
	if h := r.GPUs[4].Health; !h.Healthy || h.LastXid != 13 || h.XidCount != 1 {
		t.Errorf("after XID 13: %v", h)
	}
	if h := r.GPUs[5].Health; h.Healthy || h.LastXid != 79 || !strings.Contains(h.Reasons[0], "fallen off the bus") {
		t.Errorf("after XID 79: %v", h)
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatal(err)
	}

	clockMu.Lock()
	now = now.Add(61 * time.Minute)
	clockMu.Unlock()
	r = collect(t, c)
	if h := r.GPUs[5].Health; !h.Healthy || h.LastXid != 79 {
		t.Errorf("XID 79 an hour and a minute ago still counts: %v", h)
	}
	cancel()
	<-done
}

func TestLostGPUStaysReported(t *testing.T) {
	m, _ := NewMock("dgxa100")
	c := New(m, testr.New(t), Options{})
	before := collect(t, c)
	dev := m.Devices[3].(*server.Device)
	dev.GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("%v, %d GPUs", r.Status, len(r.GPUs))
	}
	g := r.GPUs[3]
	if g.Uuid != before.GPUs[3].Uuid || g.Health.Healthy || !strings.Contains(g.Health.Reasons[0], "ERROR_GPU_IS_LOST") {
		t.Fatalf("lost GPU reported as %v", g)
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatal(err)
	}

	// A GPU never read before cannot be reported: the whole collection is an
	// error then, so the scheduler treats the node's GPUs as unknown.
	m2, _ := NewMock("dgxa100")
	m2.Devices[0].(*server.Device).GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	r = collect(t, New(m2, testr.New(t), Options{}))
	if r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || len(r.GPUs) != 0 || !strings.Contains(r.Status.Message, "GPU 0") {
		t.Fatalf("got %v %q with %d GPUs", r.Status.State, r.Status.Message, len(r.GPUs))
	}
}

// Minor numbers name GPUs by device file (/dev/nvidia<minor>), which GKE's
// device plugin uses as device ids; they need not follow the NVML index. A
// GPU whose number NVML cannot give is left out, and a GPU NVML lost keeps
// the number it had, as it keeps its identity.
func TestMinorNumbers(t *testing.T) {
	m, _ := NewMock("dgxa100")
	for i, d := range m.Devices {
		d.(*server.Device).Minor = 10 + len(m.Devices) - 1 - i
	}
	m.Devices[5].(*server.Device).GetMinorNumberFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	c := New(m, testr.New(t), Options{})
	var r telemetryv1.NodeReport
	c.Fill(context.Background(), &r)
	got := c.Minors()
	if len(got) != 7 {
		t.Errorf("%d minor numbers, want one for each GPU but GPU 5: %v", len(got), got)
	}
	for i, g := range r.Gpus {
		minor, ok := got[g.Uuid]
		switch {
		case i == 5 && ok:
			t.Errorf("GPU 5, whose minor number NVML cannot give, has %d", minor)
		case i != 5 && (!ok || minor != uint32(17-i)):
			t.Errorf("GPU %d has minor number %d (%v), want %d", i, minor, ok, 17-i)
		}
	}

	m.Devices[3].(*server.Device).GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	c.Fill(context.Background(), &r)
	if minor, ok := c.Minors()[r.Gpus[3].Uuid]; !ok || minor != 14 {
		t.Errorf("lost GPU 3 has minor number %d (%v), want the 14 it had", minor, ok)
	}
}

func TestMIGLayoutChangeIsSeen(t *testing.T) {
	m, _ := NewMock("dgxh100")
	c := New(m, testr.New(t), Options{})
	if err := m.EnableMIG(0, MockInstance{Profile: nvml.GPU_INSTANCE_PROFILE_4_SLICE, Start: 0}); err != nil {
		t.Fatal(err)
	}
	r := collect(t, c)
	if got := r.GPUs[0].MigInstances; len(got) != 1 || got[0].Profile != "4g.40gb" {
		t.Fatalf("after 4g: %v", got)
	}
	if err := m.EnableMIG(0, MockInstance{Profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, Start: 4}); err != nil {
		t.Fatal(err)
	}
	r = collect(t, c)
	got := r.GPUs[0].MigInstances
	if len(got) != 2 || got[1].Profile != "3g.40gb" || got[1].PlacementStart != 4 {
		t.Fatalf("after adding 3g: %v", got)
	}
	if r.GPUs[0].Product != "NVIDIA-H100-80GB-HBM3" {
		t.Errorf("product %q", r.GPUs[0].Product)
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatal(err)
	}
	if err := m.EnableMIG(0, MockInstance{Profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, Start: 2}); err == nil {
		t.Fatal("a 3g instance at slice 2 is not a valid placement; the mock must refuse it")
	}
}

func TestProductLabel(t *testing.T) {
	for in, want := range map[string]string{
		"NVIDIA A100-SXM4-40GB":        "NVIDIA-A100-SXM4-40GB",
		"NVIDIA H100 80GB HBM3":        "NVIDIA-H100-80GB-HBM3",
		"NVIDIA H200":                  "NVIDIA-H200", // as a real H200 names itself (benchmarks/results/agent-gpu-check.json)
		"Tesla T4":                     "Tesla-T4",
		"  NVIDIA  GeForce RTX(4090) ": "NVIDIA-GeForce-RTX-4090",
	} {
		if got := ProductLabel(in); got != want {
			t.Errorf("ProductLabel(%q) = %q, want %q", in, got, want)
		}
	}
	if m, ok := gpu.LookupModel(ProductLabel("NVIDIA H200")); !ok || m.Name != "H200-141GB" {
		t.Errorf("a real H200's product label is not pkg/gpu's H200-141GB (got %v, %v)", m, ok)
	}
}

// Memory used is what processes hold: an idle GPU reports none, although
// NVML's first memory call counts the driver's reservation as used. A driver
// without the v2 call (before R510) is not asked for it: calling a symbol the
// library lacks would crash the agent.
func TestMemoryUsedLeavesOutDriverReservation(t *testing.T) {
	m, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	m.SetMemoryUsed(1, 3<<30)
	r := collect(t, New(m, testr.New(t), Options{}))
	if got := r.GPUs[0].GetMemoryUsedBytes(); got != 0 {
		t.Errorf("idle GPU 0 reports %d bytes used, want 0 (the driver's %d reserved bytes are not used)", got, MockReservedBytes)
	}
	if got := r.GPUs[1].GetMemoryUsedBytes(); got != 3<<30 {
		t.Errorf("GPU 1 reports %d bytes used, want %d", got, 3<<30)
	}

	old, _ := NewMock("dgxa100")
	old.SetMemoryUsed(1, 3<<30)
	old.LookupSymbolFunc = func(symbol string) error {
		if symbol == "nvmlDeviceGetMemoryInfo_v2" {
			return errors.New("undefined symbol")
		}
		return nil
	}
	r = collect(t, New(old, testr.New(t), Options{}))
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("status %v: %s", r.Status.State, r.Status.Message)
	}
	if got := r.GPUs[1].GetMemoryUsedBytes(); got != MockReservedBytes+3<<30 {
		t.Errorf("old driver: GPU 1 reports %d bytes used, want %d (all the first call gives)", got, MockReservedBytes+3<<30)
	}
	for i, d := range old.Devices {
		if n := len(d.(*server.Device).GetMemoryInfo_v2Calls()); n != 0 {
			t.Errorf("old driver: GPU %d was asked GetMemoryInfo_v2 %d times", i, n)
		}
	}
}

// Drivers before R535 have no nvmlDeviceGetCurrentClocksEventReasons, only
// the throttle-reasons call it replaced. go-nvml binds NVML lazily, so
// calling the missing symbol would end the agent ("symbol lookup error")
// on every such node; the collector must use the old call there and still
// judge the clocks.
func TestClockReasonsOnDriversBeforeR535(t *testing.T) {
	old, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	old.LookupSymbolFunc = func(symbol string) error {
		if symbol == "nvmlDeviceGetCurrentClocksEventReasons" {
			return errors.New("undefined symbol")
		}
		return nil
	}
	old.SetClockReasons(2, nvml.ClocksThrottleReasonHwThermalSlowdown)
	r := collect(t, New(old, testr.New(t), Options{}))
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("status %v: %s", r.Status.State, r.Status.Message)
	}
	for i, d := range old.Devices {
		if n := len(d.(*server.Device).GetCurrentClocksEventReasonsCalls()); n != 0 {
			t.Errorf("driver without the symbol: GPU %d was asked GetCurrentClocksEventReasons %d times", i, n)
		}
	}
	if h := r.GPUs[2].Health; h.Healthy || !strings.Contains(strings.Join(h.Reasons, ";"), "thermal") {
		t.Errorf("HW thermal slowdown through the old call: %v", h)
	}
	if got := r.GPUs[0].Health.ThrottleReasons; len(got) != 1 || got[0] != telemetryv1.ThrottleReason_THROTTLE_REASON_GPU_IDLE {
		t.Errorf("idle GPU's clock reasons through the old call: %v", got)
	}

	// A current driver is asked the current call, not the deprecated one.
	cur, _ := NewMock("dgxa100")
	collect(t, New(cur, testr.New(t), Options{}))
	for i, d := range cur.Devices {
		dev := d.(*server.Device)
		if len(dev.GetCurrentClocksEventReasonsCalls()) != 1 || len(dev.GetCurrentClocksThrottleReasonsCalls()) != 0 {
			t.Errorf("current driver: GPU %d asked %d times for clock events, %d for throttle reasons", i,
				len(dev.GetCurrentClocksEventReasonsCalls()), len(dev.GetCurrentClocksThrottleReasonsCalls()))
		}
	}
}

// A GPU instance's GetInfo gives its profile's id, unique on the device
// (on an A100, 1g.5gb is 19, 3g.20gb 9), which is not the
// NVML_GPU_INSTANCE_PROFILE_* value GetGpuInstanceProfileInfo takes (1g.5gb
// is 0). go-nvml's mock gives both the same number; here the device gives
// the A100's ids, as real NVML does. Read as a profile value, the id named a
// 3g.20gb instance 1g.10gb and failed the node's collection for a 1g.5gb one.
func TestMIGProfileIsFoundByItsID(t *testing.T) {
	a100IDs := map[int]uint32{nvml.GPU_INSTANCE_PROFILE_1_SLICE: 19, nvml.GPU_INSTANCE_PROFILE_2_SLICE: 14, nvml.GPU_INSTANCE_PROFILE_3_SLICE: 9,
		nvml.GPU_INSTANCE_PROFILE_4_SLICE: 5, nvml.GPU_INSTANCE_PROFILE_7_SLICE: 0, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: 20, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: 15}
	for _, tc := range []struct {
		profile int
		want    string
	}{{nvml.GPU_INSTANCE_PROFILE_3_SLICE, "3g.20gb"}, {nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.5gb"}, {nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, "1g.5gb+me"}} {
		m, err := NewMock("dgxa100")
		if err != nil {
			t.Fatal(err)
		}
		if err := m.EnableMIG(0, MockInstance{Profile: tc.profile, Start: 0}); err != nil {
			t.Fatal(err)
		}
		dev := m.Devices[0].(*server.Device)
		profileInfo := dev.GetGpuInstanceProfileInfoFunc
		dev.GetGpuInstanceProfileInfoFunc = func(p int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
			info, ret := profileInfo(p)
			if id, ok := a100IDs[p]; ok {
				info.Id = id
			} else {
				info.Id = uint32(100 + p) // an id no instance has
			}
			return info, ret
		}
		byID := dev.GetGpuInstanceByIdFunc
		dev.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
			gi, ret := byID(id)
			if ret != nvml.SUCCESS {
				return gi, ret
			}
			sgi := gi.(*server.GpuInstance)
			info := sgi.Info
			info.ProfileId = a100IDs[int(sgi.Info.ProfileId)]
			sgi.GetInfoFunc = func() (nvml.GpuInstanceInfo, nvml.Return) { return info, nvml.SUCCESS }
			return sgi, nvml.SUCCESS
		}
		r := collect(t, New(m, testr.New(t), Options{}))
		if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
			t.Errorf("%s: collection %v: %s", tc.want, r.Status.State, r.Status.Message)
			continue
		}
		if got := r.GPUs[0].MigInstances[0].Profile; got != tc.want {
			t.Errorf("instance of profile %s named %q", tc.want, got)
		}
	}
}

// A MIG GPU that falls off the bus after its identity was read is reported,
// from what was read before, as unhealthy; the node's other GPUs still are.
// Its MIG read failing failed the whole node's collection: 0 GPUs.
func TestMIGGPULostMidReadLeavesTheOthersReported(t *testing.T) {
	m, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.EnableMIG(7, MockInstance{Profile: nvml.GPU_INSTANCE_PROFILE_7_SLICE, Start: 0}); err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	collect(t, c)
	m.Devices[7].(*server.Device).GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("collection %v %q with %d GPUs, want OK with 8", r.Status.State, r.Status.Message, len(r.GPUs))
	}
	if h := r.GPUs[7].Health; h.Healthy || !strings.Contains(strings.Join(h.Reasons, "; "), "ERROR_GPU_IS_LOST") {
		t.Errorf("the lost GPU's health: %v", h)
	}
}

// A GPU whose health calls answer ERROR_GPU_IS_LOST is not healthy: the
// reads skipped the calls that failed, and it was reported healthy.
func TestGPUAnsweringLostIsUnhealthy(t *testing.T) {
	m, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	dev := m.Devices[2].(*server.Device)
	lost := func() (uint64, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	dev.GetEccModeFunc = func() (nvml.EnableState, nvml.EnableState, nvml.Return) { return 0, 0, nvml.ERROR_GPU_IS_LOST }
	dev.GetCurrentClocksEventReasonsFunc, dev.GetCurrentClocksThrottleReasonsFunc = lost, lost
	dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	if h := collect(t, c).GPUs[2].Health; h.Healthy {
		t.Errorf("a GPU answering ERROR_GPU_IS_LOST reported healthy: %v", h)
	}
}

// reloadableDriver makes a mock answer as NVML does when the driver under it
// is reloaded: what was loaded before (the library's state, its event sets)
// answers ERROR_UNINITIALIZED until NVML is loaded again.
type reloadableDriver struct {
	mu            sync.Mutex
	driver, lib   int // the driver's generation, and the one NVML loaded
	inits, shut   int
	waitsUnloaded int
}

func (d *reloadableDriver) reload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.driver++
}

func (d *reloadableDriver) stale() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lib != d.driver
}

func newReloadable(t *testing.T) (*Mock, *reloadableDriver) {
	m, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	d := &reloadableDriver{}
	m.InitFunc = func() nvml.Return {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.inits++
		d.lib = d.driver
		return nvml.SUCCESS
	}
	m.ShutdownFunc = func() nvml.Return {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.shut++
		return nvml.SUCCESS
	}
	count := m.DeviceGetCountFunc
	m.DeviceGetCountFunc = func() (int, nvml.Return) {
		if d.stale() {
			return 0, nvml.ERROR_UNINITIALIZED
		}
		return count()
	}
	create := m.EventSetCreateFunc
	m.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		d.mu.Lock()
		gen := d.driver
		d.mu.Unlock()
		set, ret := create()
		wait := set.(interface {
			Wait(uint32) (nvml.EventData, nvml.Return)
		}).Wait
		return &eventSetOf{wait: func(ms uint32) (nvml.EventData, nvml.Return) {
			d.mu.Lock()
			gone := d.driver != gen
			if gone {
				d.waitsUnloaded++
			}
			d.mu.Unlock()
			if gone {
				time.Sleep(10 * time.Millisecond)
				return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
			}
			return wait(ms)
		}}, ret
	}
	return m, d
}

type eventSetOf struct {
	nvml.EventSet
	wait func(uint32) (nvml.EventData, nvml.Return)
}

func (s *eventSetOf) Wait(ms uint32) (nvml.EventData, nvml.Return) { return s.wait(ms) }
func (s *eventSetOf) Free() nvml.Return                            { return nvml.SUCCESS }

func TestDriverReloadedIsLoadedAgain(t *testing.T) {
	m, d := newReloadable(t)
	c := New(m, testr.New(t), Options{})
	if r := collect(t, c); r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("before the reload: %v %q with %d GPUs", r.Status.State, r.Status.Message, len(r.GPUs))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan struct{}, 4)
	done := make(chan struct{})
	go func() { c.WatchXIDs(ctx, func() { seen <- struct{}{} }); close(done) }()

	d.reload()
	// The collection that finds the driver gone says so; the next one is
	// whole again, without restarting the agent.
	if r := collect(t, c); r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || !strings.Contains(r.Status.Message, "loaded again") {
		t.Errorf("collection as the driver went: %v %q", r.Status.State, r.Status.Message)
	}
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("after the reload: %v %q with %d GPUs", r.Status.State, r.Status.Message, len(r.GPUs))
	}
	d.mu.Lock()
	inits, shut := d.inits, d.shut
	d.mu.Unlock()
	if inits != 2 || shut != 1 {
		t.Errorf("NVML loaded %d times and released %d times, want 2 and 1", inits, shut)
	}

	// The XID watch registers again under the new load: an XID raised
	// after the reload still makes its GPU unhealthy.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.InjectXID(2, 79)
		select {
		case <-seen:
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no XID seen after the driver was reloaded")
			}
			continue
		}
		break
	}
	if h := collect(t, c).GPUs[2].Health; h.Healthy || h.LastXid != 79 {
		t.Errorf("after an XID under the reloaded driver: %v", h)
	}
	cancel()
	<-done
}

// A GPU whose NVML memory total reads 0 is reported unhealthy, saying so,
// and the report still validates: the scheduler keeps the node and its
// other GPUs. In MIG mode its instances, sized against its memory, are left
// out. When NVML reads its memory again it is healthy again.
func TestGPUWithNoMemoryIsUnhealthyAndTheReportValidates(t *testing.T) {
	m, err := NewMockFromFlag("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	collect(t, c)
	total := m.Devices[2].(*server.Device).MemoryInfo.Total
	m.SetMemoryTotal(2, 0)
	m.SetMemoryTotal(7, 0) // in MIG mode
	r := collect(t, c)
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
		t.Fatalf("%v %q, %d GPUs", r.Status.State, r.Status.Message, len(r.GPUs))
	}
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatalf("the scheduler would refuse the node's report: %v", err)
	}
	for _, i := range []int{2, 7} {
		g := r.GPUs[i]
		if g.Uuid != m.UUID(i) || g.Health.Healthy || !slices.Contains(g.Health.Reasons, NoMemoryReason) {
			t.Errorf("GPU %d: %s health %v, want unhealthy for %q", i, g.Uuid, g.Health, NoMemoryReason)
		}
		if g.MemoryTotalBytes != 0 || g.MemoryUsedBytes != nil || len(g.MigInstances) != 0 {
			t.Errorf("GPU %d: memory %d used %v, %d MIG instances; want 0, unset, none", i, g.MemoryTotalBytes, g.MemoryUsedBytes, len(g.MigInstances))
		}
	}
	if len(r.GPUs[6].MigInstances) == 0 {
		t.Error("the other MIG GPU lost its instances")
	}
	for _, i := range []int{0, 1, 3, 4, 5, 6} {
		if g := r.GPUs[i]; !g.Health.Healthy || g.MemoryTotalBytes == 0 {
			t.Errorf("GPU %d: health %v memory %d, want healthy as before", i, g.Health, g.MemoryTotalBytes)
		}
	}

	m.SetMemoryTotal(2, total)
	r = collect(t, c)
	if g := r.GPUs[2]; !g.Health.Healthy || g.MemoryTotalBytes != total {
		t.Errorf("GPU 2 reading its memory again: health %v memory %d", g.Health, g.MemoryTotalBytes)
	}
}

// A MIG read that fails otherwise than by losing the GPU (mig-parted
// destroying an instance between its handle and its lookup) leaves the
// node's other GPUs reported: the GPU is reported without instances,
// unhealthy so that nothing is placed on it, until a read succeeds again.
// It failed the node's whole collection (0 GPUs), and every lookup failure
// was blamed on a missing MIG monitor capability, which NVML reports as
// ERROR_NO_PERMISSION.
func TestMIGReadFailureLeavesTheOthersReported(t *testing.T) {
	m, err := NewMockFromFlag("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	dev := m.Devices[7].(*server.Device)
	byID := dev.GetGpuInstanceByIdFunc
	for _, tc := range []struct {
		ret  nvml.Return
		hint bool
	}{{nvml.ERROR_NOT_FOUND, false}, {nvml.ERROR_NO_PERMISSION, true}} {
		dev.GetGpuInstanceByIdFunc = func(int) (nvml.GpuInstance, nvml.Return) { return nil, tc.ret }
		r := collect(t, c)
		if r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.GPUs) != 8 {
			t.Fatalf("%v: collection %v %q with %d GPUs, want OK with 8", tc.ret, r.Status.State, r.Status.Message, len(r.GPUs))
		}
		if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
			t.Fatalf("%v: the scheduler would refuse the node's report: %v", tc.ret, err)
		}
		g := r.GPUs[7]
		reasons := strings.Join(g.Health.Reasons, "; ")
		if g.Uuid != m.UUID(7) || g.Health.Healthy || len(g.MigInstances) != 0 || !strings.Contains(reasons, tc.ret.Error()) {
			t.Errorf("%v: GPU 7 %s reported with %d MIG instances, health %v", tc.ret, g.Uuid, len(g.MigInstances), g.Health)
		}
		if got := strings.Contains(reasons, "NVIDIA_MIG_MONITOR_DEVICES"); got != tc.hint {
			t.Errorf("%v: reasons %q name the MIG monitor capability: %v, want %v", tc.ret, reasons, got, tc.hint)
		}
		if g := r.GPUs[6]; !g.Health.Healthy || len(g.MigInstances) != 3 {
			t.Errorf("%v: the other MIG GPU: health %v, %d instances", tc.ret, g.Health, len(g.MigInstances))
		}
	}

	dev.GetGpuInstanceByIdFunc = byID
	if g := collect(t, c).GPUs[7]; !g.Health.Healthy || len(g.MigInstances) != 7 {
		t.Errorf("GPU 7 read again: health %v, %d MIG instances", g.Health, len(g.MigInstances))
	}

	// A driver gone under the read is not the GPU's fault: the collection
	// fails as when it goes before, and nothing is reported unhealthy.
	dev.GetGpuInstanceByIdFunc = func(int) (nvml.GpuInstance, nvml.Return) { return nil, nvml.ERROR_UNINITIALIZED }
	if r := collect(t, c); r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || len(r.GPUs) != 0 {
		t.Errorf("driver gone under the MIG read: %v %q with %d GPUs, want ERROR with none", r.Status.State, r.Status.Message, len(r.GPUs))
	}
}

// A temperature beyond what the scheduler accepts is a sensor fault: the
// reading is left out and the GPU stays healthy and in service, so the
// report validates. Copied as read (255), it made the scheduler refuse the
// node's whole report.
func TestBogusTemperatureIsLeftOut(t *testing.T) {
	m, err := NewMock("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	c := New(m, testr.New(t), Options{})
	celsius := uint32(255)
	m.Devices[3].(*server.Device).GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return celsius, nvml.SUCCESS }
	r := collect(t, c)
	if err := telemetryv1.ValidateNodeReport(asReport(r)); err != nil {
		t.Fatalf("the scheduler would refuse the node's report: %v", err)
	}
	if h := r.GPUs[3].Health; h.TemperatureCelsius != nil || !h.Healthy {
		t.Errorf("GPU 3 reading %d °C: temperature %v, healthy %v; want left out, healthy", celsius, h.TemperatureCelsius, h.Healthy)
	}
	if h := r.GPUs[2].Health; h.GetTemperatureCelsius() != 32 {
		t.Errorf("GPU 2's temperature %v, want its 32", h.TemperatureCelsius)
	}

	celsius = telemetryv1.MaxTemperatureCelsius
	if h := collect(t, c).GPUs[3].Health; h.GetTemperatureCelsius() != celsius {
		t.Errorf("GPU 3 reading %d °C, the most the scheduler accepts: temperature %v", celsius, h.TemperatureCelsius)
	}
}
