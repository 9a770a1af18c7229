package nvml

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	nvmlmock "github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/uuid"
)

// Mock is one of go-nvml's mock machines (a DGX A100 or H100) completed with
// what the collector reads and go-nvml's mock leaves out: MIG device handles,
// utilisation, ECC counters, clock reasons, temperature and XID events. Its
// GPU and MIG UUIDs are derived from the machine name, so output is stable
// from run to run.
//
// Mock is for tests and `penny-agent --once --nvml=mock:<machine>`. go-nvml's
// mocks record every call they receive, so a long-running agent on a mock
// grows in memory; do not run one for days.
type Mock struct {
	*server.Server
	machine string

	mu     sync.Mutex
	gpus   []*mockGPU
	events chan nvml.EventData
}

type mockGPU struct {
	util, memUtil uint32
	memUsed       uint64
	eccUncorr     uint64
	clockReasons  uint64
	temperature   uint32
}

// MockMachines lists the machine names NewMock accepts.
var MockMachines = []string{"dgxa100", "dgxh100"}

// MockReservedBytes is what the driver keeps of each mock GPU's memory for
// itself, as an idle H200 showed with driver 580: NVML's first memory call
// counts it as used, the v2 call reports it apart.
const MockReservedBytes = 615 << 20

var mockNamespace = uuid.MustParse("6f1f9c8e-3b1a-4c55-9a43-7e2b1d0c5a10")

// NewMock returns an 8-GPU mock machine with MIG disabled on every GPU.
func NewMock(machine string) (*Mock, error) {
	var s *server.Server
	var name string
	switch machine {
	case "dgxa100":
		// go-nvml names the mock GPU "Mock NVIDIA A100-SXM4-40GB"; a real DGX
		// A100 says "NVIDIA A100-SXM4-40GB", which is what GPU feature
		// discovery labels and pkg/gpu know.
		s, name = dgxa100.New(), "NVIDIA A100-SXM4-40GB"
	case "dgxh100":
		s, name = dgxh100.New(), "NVIDIA H100 80GB HBM3"
	default:
		return nil, fmt.Errorf("unknown mock machine %q; known: %s", machine, strings.Join(MockMachines, ", "))
	}
	m := &Mock{Server: s, machine: machine, events: make(chan nvml.EventData, 64)}
	for i, d := range s.Devices {
		dev := d.(*server.Device)
		dev.Config.Name = name
		dev.UUID = "GPU-" + uuid.NewSHA1(mockNamespace, fmt.Appendf(nil, "%s/gpu/%d", machine, i)).String()
		dev.PciBusID = fmt.Sprintf("00000000:%02X:00.0", 0x07+i*0x08)
		g := &mockGPU{clockReasons: nvml.ClocksEventReasonGpuIdle, temperature: 30 + uint32(i)}
		m.gpus = append(m.gpus, g)
		m.completeDevice(dev, g)
	}
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &nvmlmock.EventSet{
			WaitFunc: func(timeoutMs uint32) (nvml.EventData, nvml.Return) {
				select {
				case e := <-m.events:
					return e, nvml.SUCCESS
				case <-time.After(time.Duration(timeoutMs) * time.Millisecond):
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	return m, nil
}

// NewMockFromFlag builds the mock for --nvml=mock:<machine>: the machine with
// MIG enabled on its last two GPUs (one mixed layout, one split into seven of
// the smallest instances), so the output shows both kinds of GPU.
func NewMockFromFlag(machine string) (*Mock, error) {
	m, err := NewMock(machine)
	if err != nil {
		return nil, err
	}
	n := len(m.Devices)
	mixed := []MockInstance{
		{Profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, Start: 0},
		{Profile: nvml.GPU_INSTANCE_PROFILE_2_SLICE, Start: 4},
		{Profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, Start: 6},
	}
	var small []MockInstance
	for s := uint32(0); s < 7; s++ {
		small = append(small, MockInstance{Profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, Start: s})
	}
	if err := m.EnableMIG(n-2, mixed...); err != nil {
		return nil, err
	}
	if err := m.EnableMIG(n-1, small...); err != nil {
		return nil, err
	}
	for i := 0; i < n-2; i++ {
		m.SetUtilization(i, uint32(10*i), uint32(5*i))
	}
	return m, nil
}

// MockInstance is one MIG device to create: a GPU instance of an NVML profile
// id (nvml.GPU_INSTANCE_PROFILE_*) at a memory-slice offset, with one compute
// instance spanning it.
type MockInstance struct {
	Profile int
	Start   uint32
}

// EnableMIG turns MIG on for GPU index and creates the given instances.
func (m *Mock) EnableMIG(index int, instances ...MockInstance) error {
	dev := m.Devices[index].(*server.Device)
	dev.SetMigMode(nvml.DEVICE_MIG_ENABLE)
	for _, in := range instances {
		info, ret := dev.GetGpuInstanceProfileInfo(in.Profile)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: profile %d: %v", index, in.Profile, ret)
		}
		var placement *nvml.GpuInstancePlacement
		for _, p := range dev.Config.MIGProfiles.GpuInstancePlacements[in.Profile] {
			if p.Start == in.Start {
				placement = &p
				break
			}
		}
		if placement == nil {
			return fmt.Errorf("GPU %d: profile %d cannot start at memory slice %d", index, in.Profile, in.Start)
		}
		gi, ret := dev.CreateGpuInstanceWithPlacement(&info, placement)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: create GPU instance: %v", index, ret)
		}
		ciProfile, ok := computeProfileForSlices[info.SliceCount]
		if !ok {
			return fmt.Errorf("GPU %d: no compute instance profile spans %d slices", index, info.SliceCount)
		}
		ciInfo, ret := gi.GetComputeInstanceProfileInfo(ciProfile, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: compute instance profile: %v", index, ret)
		}
		if _, ret := gi.CreateComputeInstance(&ciInfo); ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: create compute instance: %v", index, ret)
		}
	}
	return nil
}

var computeProfileForSlices = map[uint32]int{
	1: nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE,
	2: nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE,
	3: nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE,
	4: nvml.COMPUTE_INSTANCE_PROFILE_4_SLICE,
	7: nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE,
}

// SetUtilization sets what GPU index reports as busy, in percent.
func (m *Mock) SetUtilization(index int, gpu, memory uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gpus[index].util, m.gpus[index].memUtil = gpu, memory
}

// SetMemoryUsed sets the memory processes hold on GPU index.
func (m *Mock) SetMemoryUsed(index int, bytes uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gpus[index].memUsed = bytes
}

// SetMemoryTotal sets the memory total NVML reports for GPU index (0, as a
// faulty GPU or driver may report it).
func (m *Mock) SetMemoryTotal(index int, bytes uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Devices[index].(*server.Device).MemoryInfo.Total = bytes
}

// SetECCUncorrected sets GPU index's volatile uncorrected ECC error count.
func (m *Mock) SetECCUncorrected(index int, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gpus[index].eccUncorr = n
}

// SetClockReasons sets GPU index's clock event reasons (nvml.ClocksEventReason* bits).
func (m *Mock) SetClockReasons(index int, bits uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gpus[index].clockReasons = bits
}

// InjectXID raises an XID error on GPU index, as the driver would.
func (m *Mock) InjectXID(index int, xid uint64) {
	m.events <- nvml.EventData{Device: m.Devices[index], EventType: nvml.EventTypeXidCriticalError, EventData: xid}
}

// UUID returns GPU index's UUID.
func (m *Mock) UUID(index int) string { return m.Devices[index].(*server.Device).UUID }

func (m *Mock) completeDevice(dev *server.Device, g *mockGPU) {
	dev.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: dev.Config.PciDeviceId}
		for i := 0; i < len(dev.PciBusID) && i < len(p.BusId)-1; i++ {
			p.BusId[i] = int8(dev.PciBusID[i])
		}
		return p, nvml.SUCCESS
	}
	dev.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		used := MockReservedBytes + g.memUsed
		total := dev.MemoryInfo.Total
		return nvml.Memory{Total: total, Used: used, Free: total - min(total, used)}, nvml.SUCCESS
	}
	dev.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		total := dev.MemoryInfo.Total
		return nvml.Memory_v2{Total: total, Reserved: MockReservedBytes, Used: g.memUsed, Free: total - min(total, MockReservedBytes+g.memUsed)}, nvml.SUCCESS
	}
	dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		if mode, _, _ := dev.GetMigMode(); mode == nvml.DEVICE_MIG_ENABLE {
			return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED // as on real GPUs in MIG mode
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return nvml.Utilization{Gpu: g.util, Memory: g.memUtil}, nvml.SUCCESS
	}
	dev.GetEccModeFunc = func() (nvml.EnableState, nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_ENABLED, nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	dev.GetTotalEccErrorsFunc = func(t nvml.MemoryErrorType, _ nvml.EccCounterType) (uint64, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if t == nvml.MEMORY_ERROR_TYPE_UNCORRECTED {
			return g.eccUncorr, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	dev.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return g.clockReasons, nvml.SUCCESS
	}
	// The call R535 renamed: the same bits, and all that older drivers have.
	dev.GetCurrentClocksThrottleReasonsFunc = dev.GetCurrentClocksEventReasonsFunc
	dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return g.temperature, nvml.SUCCESS
	}
	dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
		return nvml.EventTypeXidCriticalError | nvml.EventTypeSingleBitEccError | nvml.EventTypeDoubleBitEccError, nvml.SUCCESS
	}
	dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	dev.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	dev.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
		dev.RLock()
		defer dev.RUnlock()
		for gi := range dev.GpuInstances {
			if int(gi.Info.Id) == id {
				return gi, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	dev.GetMigDeviceHandleByIndexFunc = func(n int) (nvml.Device, nvml.Return) {
		migs := migDevices(dev)
		if n < 0 || n >= len(migs) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return migs[n], nvml.SUCCESS
	}
}

// migDevices builds the MIG device handles of dev: one per compute instance,
// ordered by GPU instance placement, as the driver numbers them.
func migDevices(dev *server.Device) []nvml.Device {
	dev.RLock()
	gis := make([]*server.GpuInstance, 0, len(dev.GpuInstances))
	for gi := range dev.GpuInstances {
		gis = append(gis, gi)
	}
	dev.RUnlock()
	sort.Slice(gis, func(i, j int) bool { return gis[i].Info.Placement.Start < gis[j].Info.Placement.Start })
	var out []nvml.Device
	for _, gi := range gis {
		gi.RLock()
		cis := make([]*server.ComputeInstance, 0, len(gi.ComputeInstances))
		for ci := range gi.ComputeInstances {
			cis = append(cis, ci)
		}
		gi.RUnlock()
		sort.Slice(cis, func(i, j int) bool { return cis[i].Info.Id < cis[j].Info.Id })
		memory := dev.Config.MIGProfiles.GpuInstanceProfiles[int(gi.Info.ProfileId)].MemorySizeMB << 20
		for _, ci := range cis {
			giID, ciID := int(gi.Info.Id), int(ci.Info.Id)
			id := "MIG-" + uuid.NewSHA1(mockNamespace, fmt.Appendf(nil, "%s/%d/%d", dev.UUID, giID, ciID)).String()
			out = append(out, &nvmlmock.Device{
				GetUUIDFunc:              func() (string, nvml.Return) { return id, nvml.SUCCESS },
				GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return giID, nvml.SUCCESS },
				GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ciID, nvml.SUCCESS },
				GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
					return nvml.Memory{Total: memory, Free: memory}, nvml.SUCCESS
				},
				GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
					return nvml.Memory_v2{Total: memory, Free: memory}, nvml.SUCCESS
				},
				IsMigDeviceHandleFunc:                  func() (bool, nvml.Return) { return true, nvml.SUCCESS },
				GetDeviceHandleFromMigDeviceHandleFunc: func() (nvml.Device, nvml.Return) { return dev, nvml.SUCCESS },
			})
		}
	}
	return out
}
