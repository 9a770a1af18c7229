// Package nvml reads the node's GPUs through NVML (go-nvml): inventory, MIG
// instances with their placement, utilisation, memory and health (XID errors,
// ECC counts, clock throttling).
//
// A node without the NVIDIA driver is a normal case, not a failure: the
// collector reports the UNAVAILABLE state with no GPUs and keeps trying to
// load NVML on every collection, so a driver installed later (by the GPU
// operator, say) is picked up without restarting the agent. A driver
// unloaded or reloaded under a loaded NVML (the GPU operator upgrading it)
// makes NVML answer that it is not initialized: the collector then lets go
// of it and loads it again, as at start.
package nvml

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/go-logr/logr"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Options tune the collector.
type Options struct {
	// XIDWindow is how long a critical XID error keeps its GPU unhealthy.
	XIDWindow time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultXIDWindow keeps a GPU unhealthy for an hour after a critical XID:
// most need a GPU reset, and a GPU that threw one is likely to throw more.
const DefaultXIDWindow = time.Hour

// Result is what one collection found.
type Result struct {
	Status            *telemetryv1.CollectorStatus
	DriverVersion     string
	CUDADriverVersion int32
	GPUs              []*telemetryv1.GPU
	// Minors holds the device minor number of each GPU (its /dev/nvidia<minor>)
	// by UUID, for GPUs whose number NVML gives. GKE's device plugin names
	// GPUs by their device files, and the minor number need not be the NVML
	// index; the report does not carry it, so it stays with the agent.
	Minors map[string]uint32
}

// Collector reads GPUs through one NVML library handle. It is safe for
// concurrent use.
type Collector struct {
	lib  nvml.Interface
	log  logr.Logger
	opts Options

	mu          sync.Mutex
	initialized bool
	// loads counts NVML's successful loads: an XID event set registered
	// under an earlier one no longer hears the GPUs.
	loads int
	// memoryV2 says the driver has nvmlDeviceGetMemoryInfo_v2 (R510 and
	// later); go-nvml links NVML lazily, so calling a symbol the driver
	// lacks would crash the agent.
	memoryV2 bool
	// clockEvents says the driver has nvmlDeviceGetCurrentClocksEventReasons
	// (R535 and later); older drivers have only the throttle-reasons call
	// it replaced, and asking them for the new one would crash the agent
	// the same way.
	clockEvents bool
	// known holds what was last read of each GPU, by index, so that a GPU
	// NVML can no longer read (fallen off the bus) is still reported, as
	// unhealthy, instead of silently disappearing.
	known map[int]*telemetryv1.GPU
	// minors holds each GPU's device minor number by index, as last read, so
	// that a GPU NVML can no longer read keeps its number like its identity.
	minors map[int]uint32
	// filled is Result.Minors of the collection Fill last put in a report.
	filled map[string]uint32
	xids   map[string]*xidRecord // by GPU UUID
	// noMemory holds the UUIDs of the GPUs whose last read found no memory,
	// so that the log says when one starts and stops, not every collection.
	noMemory map[string]bool
	// migReasons holds, by GPU UUID, why the last read of a GPU's MIG
	// instances failed, so that the log says when that starts and stops.
	migReasons map[string]string
	// bogusTemperature holds the UUIDs of the GPUs whose last temperature
	// reading was left out as impossible, for the log likewise.
	bogusTemperature map[string]bool
}

type xidRecord struct {
	last     uint32
	lastTime time.Time
	count    uint64
	// critical is the time of the last XID that is not an application error.
	critical    time.Time
	criticalXID uint32
}

// New returns a collector over lib: nvml.New() for the real library, or a
// mock (see NewMock).
func New(lib nvml.Interface, log logr.Logger, opts Options) *Collector {
	if opts.XIDWindow == 0 {
		opts.XIDWindow = DefaultXIDWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Collector{lib: lib, log: log, opts: opts, known: map[int]*telemetryv1.GPU{}, minors: map[int]uint32{}, xids: map[string]*xidRecord{}, noMemory: map[string]bool{}, migReasons: map[string]string{}, bogusTemperature: map[string]bool{}}
}

// ErrNoDriver is the reason a node has no GPUs to report.
var ErrNoDriver = errors.New("NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this node, or it is not mounted into the agent's container")

// init loads NVML when it is not loaded yet. Callers hold c.mu.
func (c *Collector) initLocked() error {
	if c.initialized {
		return nil
	}
	switch ret := c.lib.Init(); ret {
	case nvml.SUCCESS:
		c.initialized = true
		c.loads++
		c.memoryV2 = c.lib.Extensions().LookupSymbol("nvmlDeviceGetMemoryInfo_v2") == nil
		c.clockEvents = c.lib.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil
		return nil
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return ErrNoDriver
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return fmt.Errorf("NVIDIA kernel driver not loaded (NVML: %v)", ret)
	default:
		return fmt.Errorf("NVML init: %v", ret)
	}
}

// Shutdown releases NVML.
func (c *Collector) Shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unloadLocked()
}

func (c *Collector) unloadLocked() {
	if c.initialized {
		c.lib.Shutdown()
		c.initialized = false
	}
}

// driverGone reports whether an NVML answer says the library lost its
// driver: unloaded (DRIVER_NOT_LOADED), or reloaded, which leaves the
// library's state behind (UNINITIALIZED). Loading NVML again is the way
// back; nothing read through the old load is still good.
func driverGone(ret nvml.Return) bool {
	return ret == nvml.ERROR_UNINITIALIZED || ret == nvml.ERROR_DRIVER_NOT_LOADED
}

// Collect reads every GPU. It never fails: problems end up in Result.Status.
func (c *Collector) Collect(ctx context.Context) Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.initLocked(); err != nil {
		state := telemetryv1.CollectorStatus_STATE_ERROR
		if errors.Is(err, ErrNoDriver) {
			state = telemetryv1.CollectorStatus_STATE_UNAVAILABLE
		}
		return Result{Status: &telemetryv1.CollectorStatus{State: state, Message: err.Error()}}
	}
	res := Result{Status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}}
	if v, ret := c.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		res.DriverVersion = v
	}
	if v, ret := c.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		res.CUDADriverVersion = int32(v)
	}
	count, ret := c.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		if driverGone(ret) {
			c.unloadLocked()
			return Result{Status: errorStatus("DeviceGetCount: %v; NVML is loaded again at the next collection", ret)}
		}
		return Result{Status: errorStatus("DeviceGetCount: %v", ret)}
	}
	if count == 0 {
		res.Status.Message = "NVML sees no GPUs"
	}
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return Result{Status: errorStatus("collection cancelled: %v", err)}
		}
		g, err := c.readGPU(i)
		if err != nil {
			return Result{Status: errorStatus("GPU %d: %v", i, err)}
		}
		res.GPUs = append(res.GPUs, g)
		if minor, ok := c.minors[i]; ok {
			if res.Minors == nil {
				res.Minors = map[string]uint32{}
			}
			res.Minors[g.Uuid] = minor
		}
	}
	return res
}

// Fill implements agent/report.Source.
func (c *Collector) Fill(ctx context.Context, r *telemetryv1.NodeReport) {
	res := c.Collect(ctx)
	r.Nvml, r.DriverVersion, r.CudaDriverVersion, r.Gpus = res.Status, res.DriverVersion, res.CUDADriverVersion, res.GPUs
	c.mu.Lock()
	c.filled = res.Minors
	c.mu.Unlock()
}

// Minors returns the device minor numbers (Result.Minors) of the GPUs the
// last Fill put in a report. agent/podresources reads them after this
// collector filled the same report, to match the ids GKE's device plugin
// gives.
func (c *Collector) Minors() map[string]uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.filled)
}

func errorStatus(format string, args ...any) *telemetryv1.CollectorStatus {
	return &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: fmt.Sprintf(format, args...)}
}

// readGPU reads one GPU. A GPU that NVML stopped answering for is reported
// from what was read before, marked unhealthy; only a GPU never read at all
// is an error.
func (c *Collector) readGPU(index int) (*telemetryv1.GPU, error) {
	dev, ret := c.lib.DeviceGetHandleByIndex(index)
	var g *telemetryv1.GPU
	var lost error
	if ret != nvml.SUCCESS {
		lost = fmt.Errorf("DeviceGetHandleByIndex: %v", ret)
	} else if g, lost = readIdentity(dev, index); lost == nil {
		c.known[index] = proto.Clone(g).(*telemetryv1.GPU)
		// Without its minor number a GPU is still reported; only the
		// device ids that name it by its device file cannot be matched.
		if minor, ret := dev.GetMinorNumber(); ret == nvml.SUCCESS && minor >= 0 {
			c.minors[index] = uint32(minor)
		} else {
			delete(c.minors, index)
		}
	}
	if lost != nil {
		return c.lostGPU(index, lost)
	}

	// A GPU NVML reads no memory of is faulty (a driver or hardware fault):
	// it is reported unhealthy, saying why, rather than with a total the
	// scheduler refuses the node's whole report for. What NVML says of its
	// memory in use, and of its MIG instances (sized and named against its
	// memory), is no good either.
	noMemory := g.MemoryTotalBytes == 0
	c.noteNoMemory(g, noMemory)
	if used, ok := c.memoryUsed(dev); ok && !noMemory && g.MigMode != telemetryv1.MIGMode_MIG_MODE_ENABLED {
		g.MemoryUsedBytes = proto.Uint64(used)
	}
	if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
		g.UtilizationPercent = proto.Uint32(min(u.Gpu, 100))
		g.MemoryUtilizationPercent = proto.Uint32(min(u.Memory, 100))
	}
	var migReason string
	if g.MigMode == telemetryv1.MIGMode_MIG_MODE_ENABLED && !noMemory {
		instances, err := c.readMIG(dev)
		switch {
		case errors.Is(err, nvml.ERROR_GPU_IS_LOST):
			// Fallen off the bus between two reads: the node's other GPUs
			// are still reported.
			return c.lostGPU(index, fmt.Errorf("MIG instances: %w", err))
		case errors.As(err, &ret) && driverGone(ret):
			// The driver went under the read: nothing read through this
			// load is good, and the next collection loads NVML again.
			return nil, fmt.Errorf("MIG instances: %w", err)
		case err != nil:
			// Most often mig-parted repartitioning the GPU under the read
			// (an instance gone between its handle and its lookup). The
			// GPU is reported without instances, unhealthy so that nothing
			// is placed on a layout the agent could not read, rather than
			// failing the node's collection and every other GPU with it;
			// the next collection reads the new layout.
			migReason = migReadReason(err)
		default:
			g.MigInstances = instances
		}
	}
	c.noteMIGReason(g, migReason)
	g.Health = c.readHealth(dev, g)
	if noMemory {
		g.Health.Reasons = append(g.Health.Reasons, NoMemoryReason)
		g.Health.Healthy = false
	}
	if migReason != "" {
		g.Health.Reasons = append(g.Health.Reasons, migReason)
		g.Health.Healthy = false
	}
	return g, nil
}

// migReadReason is the health reason of a GPU whose MIG instances NVML did
// not read. NVML answers ERROR_NO_PERMISSION to a container without the MIG
// monitor capability ("Insufficient Permissions"); any other answer says
// nothing of the agent's setup.
func migReadReason(err error) string {
	reason := "NVML could not read the GPU's MIG instances: " + err.Error()
	if errors.Is(err, nvml.ERROR_NO_PERMISSION) {
		reason += " (the agent needs the MIG monitor capability: NVIDIA_MIG_MONITOR_DEVICES=all)"
	}
	return reason
}

// noteMIGReason logs when GPU g's MIG instances start or stop failing to
// read, or fail otherwise, not every collection. Callers hold c.mu.
func (c *Collector) noteMIGReason(g *telemetryv1.GPU, reason string) {
	if reason == c.migReasons[g.Uuid] {
		return
	}
	if reason != "" {
		c.migReasons[g.Uuid] = reason
		c.log.Info("GPU reported unhealthy without its MIG instances; the node's other GPUs are reported as usual",
			"gpu", g.Uuid, "index", g.Index, "reason", reason)
		return
	}
	delete(c.migReasons, g.Uuid)
	c.log.Info("NVML reads the GPU's MIG instances again", "gpu", g.Uuid, "index", g.Index)
}

// NoMemoryReason is the health reason of a GPU whose NVML memory total is 0.
const NoMemoryReason = "NVML reports 0 bytes of memory (a driver or hardware fault)"

// noteNoMemory logs when GPU g starts or stops reading no memory. Callers
// hold c.mu.
func (c *Collector) noteNoMemory(g *telemetryv1.GPU, noMemory bool) {
	if noMemory == c.noMemory[g.Uuid] {
		return
	}
	if noMemory {
		c.noMemory[g.Uuid] = true
		c.log.Info("GPU reported unhealthy: NVML reports 0 bytes of memory (a driver or hardware fault); the node's other GPUs are reported as usual",
			"gpu", g.Uuid, "index", g.Index)
		return
	}
	delete(c.noMemory, g.Uuid)
	c.log.Info("NVML reads the GPU's memory again", "gpu", g.Uuid, "index", g.Index, "memoryTotalBytes", g.MemoryTotalBytes)
}

// lostGPU reports a GPU NVML stopped answering for from what was read of it
// before, marked unhealthy; a GPU never read is an error.
func (c *Collector) lostGPU(index int, lost error) (*telemetryv1.GPU, error) {
	prev, ok := c.known[index]
	if !ok {
		return nil, lost
	}
	g := proto.Clone(prev).(*telemetryv1.GPU)
	g.MemoryUsedBytes, g.UtilizationPercent, g.MemoryUtilizationPercent = nil, nil, nil
	g.Health = &telemetryv1.Health{}
	c.fillXID(g)
	g.Health.Reasons = append(g.Health.Reasons, "NVML cannot read this GPU any more: "+lost.Error())
	g.Health.Healthy = false
	return g, nil
}

// readIdentity reads what a GPU is: the fields without which it cannot be
// reported at all.
func readIdentity(dev nvml.Device, index int) (*telemetryv1.GPU, error) {
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetUUID: %v", ret)
	}
	name, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetName: %v", ret)
	}
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetMemoryInfo: %v", ret)
	}
	g := &telemetryv1.GPU{
		Uuid:             uuid,
		Index:            uint32(index),
		Name:             name,
		Product:          ProductLabel(name),
		MemoryTotalBytes: mem.Total,
		MigMode:          telemetryv1.MIGMode_MIG_MODE_UNSUPPORTED,
	}
	if pci, ret := dev.GetPciInfo(); ret == nvml.SUCCESS {
		g.PciBusId = cString(pci.BusId[:])
	}
	current, pending, ret := dev.GetMigMode()
	switch {
	case ret == nvml.ERROR_NOT_SUPPORTED:
	case ret != nvml.SUCCESS:
		return nil, fmt.Errorf("GetMigMode: %v", ret)
	case current == nvml.DEVICE_MIG_ENABLE && pending == nvml.DEVICE_MIG_DISABLE:
		g.MigMode = telemetryv1.MIGMode_MIG_MODE_PENDING_DISABLE
	case current == nvml.DEVICE_MIG_ENABLE:
		g.MigMode = telemetryv1.MIGMode_MIG_MODE_ENABLED
	case pending == nvml.DEVICE_MIG_ENABLE:
		g.MigMode = telemetryv1.MIGMode_MIG_MODE_PENDING_ENABLE
	default:
		g.MigMode = telemetryv1.MIGMode_MIG_MODE_DISABLED
	}
	return g, nil
}

// readMIG lists the MIG devices of a GPU in MIG mode, the way the NVIDIA
// device plugin enumerates them, so the UUIDs match the ids it hands to pods.
func (c *Collector) readMIG(dev nvml.Device) ([]*telemetryv1.MIGInstance, error) {
	max, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetMaxMigDeviceCount: %w", ret)
	}
	total, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetMemoryInfo: %w", ret)
	}
	var out []*telemetryv1.MIGInstance
	for i := 0; i < max; i++ {
		mig, ret := dev.GetMigDeviceHandleByIndex(i)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue // no MIG device at this index
		}
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("GetMigDeviceHandleByIndex(%d): %w", i, ret)
		}
		m, err := c.readMIGDevice(dev, mig, total.Total)
		if err != nil {
			return nil, fmt.Errorf("MIG device %d: %w", i, err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PlacementStart != out[j].PlacementStart {
			return out[i].PlacementStart < out[j].PlacementStart
		}
		return out[i].ComputeInstanceId < out[j].ComputeInstanceId
	})
	return out, nil
}

func (c *Collector) readMIGDevice(parent, mig nvml.Device, parentMemory uint64) (*telemetryv1.MIGInstance, error) {
	uuid, ret := mig.GetUUID()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetUUID: %w", ret)
	}
	giID, ret := mig.GetGpuInstanceId()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetGpuInstanceId: %w", ret)
	}
	ciID, ret := mig.GetComputeInstanceId()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetComputeInstanceId: %w", ret)
	}
	gi, ret := parent.GetGpuInstanceById(giID)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GetGpuInstanceById(%d): %w", giID, ret)
	}
	info, ret := gi.GetInfo()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU instance %d GetInfo: %w", giID, ret)
	}
	profile, prof, err := instanceProfile(parent, info.ProfileId)
	if err != nil {
		return nil, fmt.Errorf("GPU instance %d: %w", giID, err)
	}
	m := &telemetryv1.MIGInstance{
		Uuid:              uuid,
		Profile:           ProfileName(profile, prof, parentMemory),
		GpuInstanceId:     uint32(giID),
		ComputeInstanceId: uint32(ciID),
		PlacementStart:    info.Placement.Start,
		PlacementSize:     info.Placement.Size,
		MemoryTotalBytes:  prof.MemorySizeMB << 20,
	}
	if mem, ret := mig.GetMemoryInfo(); ret == nvml.SUCCESS {
		m.MemoryTotalBytes = mem.Total
	}
	if used, ok := c.memoryUsed(mig); ok {
		m.MemoryUsedBytes = proto.Uint64(used)
	}
	return m, nil
}

// instanceProfile finds the profile of a GPU instance: GetInfo gives the
// profile's id, unique on the device (19 for an A100's 1g.5gb, 9 for its
// 3g.20gb), while GetGpuInstanceProfileInfo takes one of the
// NVML_GPU_INSTANCE_PROFILE_* values (0 for one slice), as the device plugin
// and go-nvlib match them. The id read as such a value named a 3g.20gb
// instance 1g.10gb, and failed the node's collection for a 1g.5gb one.
func instanceProfile(parent nvml.Device, id uint32) (int, nvml.GpuInstanceProfileInfo, error) {
	for p := range nvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := parent.GetGpuInstanceProfileInfo(p)
		if ret == nvml.SUCCESS && info.Id == id {
			return p, info, nil
		}
	}
	return 0, nvml.GpuInstanceProfileInfo{}, fmt.Errorf("no GPU instance profile of the device has id %d", id)
}

// memoryUsed is the memory that processes hold on a GPU or MIG device.
// NVML's first memory call counts the driver's own reservation as used (615
// MiB of an idle H200 with driver 580), so an idle GPU would look busy and
// disagree with nvidia-smi; the v2 call reports that reservation apart.
// Drivers before R510 have only the first.
func (c *Collector) memoryUsed(dev nvml.Device) (uint64, bool) {
	if c.memoryV2 {
		if mem, ret := dev.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
			return mem.Used, true
		}
	}
	if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		return mem.Used, true
	}
	return 0, false
}

// ProfileName names a GPU instance profile the way the NVIDIA device plugin
// and mig-parted do (go-nvlib's MigProfile): "<slices>g.<memory>gb", where
// memory is the profile's share of the GPU rounded up to eighths of the GPU's
// memory in whole GB, plus the variant's attribute: "+me" (one media
// extension), "+me.all" (all of them), "-me" (none), "+gfx" (graphics). A
// variant named like its base profile would be counted as a free instance of
// it, and a pod asking for the base profile sent to the variant.
func ProfileName(profileID int, info nvml.GpuInstanceProfileInfo, deviceMemoryBytes uint64) string {
	const gib = 1 << 30
	totalGB := (deviceMemoryBytes + gib - 1) / gib
	frac := float64(info.MemorySizeMB<<20) / float64(deviceMemoryBytes)
	eighths := uint64(frac * 8)
	if float64(eighths) < frac*8 {
		eighths++
	}
	memGB := (eighths*totalGB + 4) / 8 // rounded to the nearest GB
	name := fmt.Sprintf("%dg.%dgb", info.SliceCount, memGB)
	switch profileID {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		name += "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		name += "+me.all"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		name += "+gfx"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		name += "-me"
	}
	return name
}

// ProductLabel turns an NVML device name into the value GPU feature discovery
// puts in nvidia.com/gpu.product: words joined by dashes, limited to the
// characters and length a label value allows.
func ProductLabel(name string) string {
	s := strings.Join(strings.Fields(name), "-")
	b := []byte(s)
	for i, ch := range b {
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_' || ch == '.') {
			b[i] = '-'
		}
	}
	s = strings.Trim(string(b), "-_.")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-_.")
	}
	return s
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// applicationXIDs are XIDs a user's program causes (a bad kernel, a page
// fault); they say nothing about the GPU. The NVIDIA device plugin ignores
// the same list.
var applicationXIDs = map[uint32]bool{13: true, 31: true, 43: true, 45: true, 68: true, 109: true}

var xidMeaning = map[uint32]string{
	48:  "double-bit ECC error",
	63:  "ECC page retirement or row remapping recorded",
	64:  "ECC page retirement or row remapping failed",
	74:  "NVLink error",
	79:  "GPU has fallen off the bus",
	92:  "high single-bit ECC error rate",
	94:  "contained ECC error",
	95:  "uncontained ECC error",
	119: "GSP RPC timeout",
	120: "GSP error",
}

func describeXID(x uint32) string {
	if m, ok := xidMeaning[x]; ok {
		return fmt.Sprintf("XID %d (%s)", x, m)
	}
	return fmt.Sprintf("XID %d", x)
}

// readHealth gathers the health signals of a GPU and the verdict on them.
func (c *Collector) readHealth(dev nvml.Device, g *telemetryv1.GPU) *telemetryv1.Health {
	h := &telemetryv1.Health{}
	g.Health = h
	c.fillXID(g)
	if mode, _, ret := dev.GetEccMode(); ret == nvml.SUCCESS && mode == nvml.FEATURE_ENABLED {
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); ret == nvml.SUCCESS {
			h.EccUncorrected = proto.Uint64(n)
			if n > 0 {
				h.Reasons = append(h.Reasons, fmt.Sprintf("%d uncorrected ECC errors since the driver loaded", n))
			}
		}
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); ret == nvml.SUCCESS {
			h.EccCorrected = proto.Uint64(n)
		}
	}
	reasons, ret := uint64(0), nvml.ERROR_FUNCTION_NOT_FOUND
	if c.clockEvents {
		reasons, ret = dev.GetCurrentClocksEventReasons()
	}
	if ret == nvml.ERROR_FUNCTION_NOT_FOUND || ret == nvml.ERROR_NOT_SUPPORTED {
		reasons, ret = dev.GetCurrentClocksThrottleReasons()
	}
	if ret == nvml.SUCCESS {
		for _, t := range throttleReasons {
			if reasons&t.bit != 0 {
				h.ThrottleReasons = append(h.ThrottleReasons, t.reason)
				if t.hardware {
					h.Reasons = append(h.Reasons, "clocks held down by "+t.words)
				}
			}
		}
	}
	t, tret := dev.GetTemperature(nvml.TEMPERATURE_GPU)
	if tret == nvml.SUCCESS {
		// A reading beyond what the scheduler accepts (255, say) is no
		// temperature a working GPU reaches but a sensor fault. Copied, it
		// made the scheduler refuse the node's whole report; it is left
		// out instead, and the GPU is not made unhealthy for it: one that
		// really overheats has its clocks held down by the hardware, which
		// the clock reasons above make unhealthy.
		bogus := t > telemetryv1.MaxTemperatureCelsius
		c.noteBogusTemperature(g, t, bogus)
		if !bogus {
			h.TemperatureCelsius = proto.Uint32(t)
		}
	}
	// A GPU that fell off the bus answers every call so; the reads above
	// skip calls that fail, and it was reported healthy.
	if ret == nvml.ERROR_GPU_IS_LOST || tret == nvml.ERROR_GPU_IS_LOST {
		h.Reasons = append(h.Reasons, "NVML reports the GPU lost (ERROR_GPU_IS_LOST): it fell off the bus or stopped answering")
	}
	h.Healthy = len(h.Reasons) == 0
	return h
}

// noteBogusTemperature logs when GPU g's temperature reading starts or
// stops being left out of reports, not every collection. Callers hold c.mu.
func (c *Collector) noteBogusTemperature(g *telemetryv1.GPU, celsius uint32, bogus bool) {
	if bogus == c.bogusTemperature[g.Uuid] {
		return
	}
	if bogus {
		c.bogusTemperature[g.Uuid] = true
		c.log.Info("GPU temperature left out of reports: NVML reads more than any working GPU reaches (a sensor fault); the GPU is reported otherwise as usual",
			"gpu", g.Uuid, "index", g.Index, "celsius", celsius, "max", telemetryv1.MaxTemperatureCelsius)
		return
	}
	delete(c.bogusTemperature, g.Uuid)
	c.log.Info("NVML reads the GPU's temperature again", "gpu", g.Uuid, "index", g.Index, "celsius", celsius)
}

// fillXID copies what the XID watcher saw into g.Health.
func (c *Collector) fillXID(g *telemetryv1.GPU) {
	rec, ok := c.xids[g.Uuid]
	if !ok {
		return
	}
	h := g.Health
	h.LastXid = rec.last
	h.LastXidTime = timestamppb.New(rec.lastTime)
	h.XidCount = rec.count
	if !rec.critical.IsZero() && c.opts.Now().Sub(rec.critical) < c.opts.XIDWindow {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%s at %s", describeXID(rec.criticalXID), rec.critical.UTC().Format(time.RFC3339)))
	}
	h.Healthy = len(h.Reasons) == 0
}

var throttleReasons = []struct {
	bit      uint64
	reason   telemetryv1.ThrottleReason
	hardware bool // a sign of trouble rather than normal power management
	words    string
}{
	{nvml.ClocksEventReasonGpuIdle, telemetryv1.ThrottleReason_THROTTLE_REASON_GPU_IDLE, false, ""},
	{nvml.ClocksEventReasonApplicationsClocksSetting, telemetryv1.ThrottleReason_THROTTLE_REASON_APPLICATIONS_CLOCKS_SETTING, false, ""},
	{nvml.ClocksEventReasonSwPowerCap, telemetryv1.ThrottleReason_THROTTLE_REASON_SW_POWER_CAP, false, ""},
	{nvml.ClocksThrottleReasonHwSlowdown, telemetryv1.ThrottleReason_THROTTLE_REASON_HW_SLOWDOWN, true, "hardware slowdown (overheating or power brake)"},
	{nvml.ClocksEventReasonSyncBoost, telemetryv1.ThrottleReason_THROTTLE_REASON_SYNC_BOOST, false, ""},
	{nvml.ClocksEventReasonSwThermalSlowdown, telemetryv1.ThrottleReason_THROTTLE_REASON_SW_THERMAL_SLOWDOWN, false, ""},
	{nvml.ClocksThrottleReasonHwThermalSlowdown, telemetryv1.ThrottleReason_THROTTLE_REASON_HW_THERMAL_SLOWDOWN, true, "hardware thermal slowdown"},
	{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, telemetryv1.ThrottleReason_THROTTLE_REASON_HW_POWER_BRAKE_SLOWDOWN, true, "hardware power brake"},
	{nvml.ClocksEventReasonDisplayClockSetting, telemetryv1.ThrottleReason_THROTTLE_REASON_DISPLAY_CLOCK_SETTING, false, ""},
}

// recordXID notes an XID error raised for the GPU with this UUID.
func (c *Collector) recordXID(uuid string, xid uint32, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.xids[uuid]
	if !ok {
		rec = &xidRecord{}
		c.xids[uuid] = rec
	}
	rec.last, rec.lastTime = xid, at
	rec.count++
	if !applicationXIDs[xid] {
		rec.critical, rec.criticalXID = at, xid
	}
}

// WatchXIDs listens for XID errors until ctx ends. It waits for NVML to load
// (a collection loads it) and returns early, logging why, when the driver
// cannot deliver events. When a collection loads NVML again (the driver was
// reloaded), the events are registered again under the new load. Run it in
// its own goroutine.
func (c *Collector) WatchXIDs(ctx context.Context, onXID func()) {
	for ctx.Err() == nil {
		set, load, err := c.awaitEvents(ctx)
		if err != nil {
			c.log.Info("XID errors will not be watched", "reason", err.Error())
			return
		}
		if set == nil {
			return
		}
		c.log.V(1).Info("watching XID errors")
		c.watch(ctx, set, load, onXID)
		set.Free()
	}
}

// awaitEvents registers for XID events once NVML is loaded; nil once ctx
// ends first.
func (c *Collector) awaitEvents(ctx context.Context) (nvml.EventSet, int, error) {
	for {
		set, load, err := c.registerEvents()
		if err != nil || set != nil {
			return set, load, err
		}
		select {
		case <-ctx.Done():
			return nil, 0, nil
		case <-time.After(5 * time.Second):
		}
	}
}

// watch reads set's events until ctx ends or NVML is no longer the load
// set was registered under.
func (c *Collector) watch(ctx context.Context, set nvml.EventSet, load int, onXID func()) {
	for ctx.Err() == nil {
		e, ret := set.Wait(1000)
		switch {
		case ret == nvml.ERROR_TIMEOUT:
			continue
		case ret != nvml.SUCCESS:
			if !c.loaded(load) {
				c.log.Info("NVML was loaded again; registering for XID events again", "error", ret.Error())
				return
			}
			c.log.Info("waiting for NVML events failed; retrying", "error", ret.Error())
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if e.EventType&nvml.EventTypeXidCriticalError == 0 || e.Device == nil {
			continue
		}
		uuid, ret := e.Device.GetUUID()
		if ret != nvml.SUCCESS {
			c.log.Info("XID event for a GPU whose UUID cannot be read", "xid", e.EventData, "error", ret.Error())
			continue
		}
		c.log.Info("GPU raised an XID error", "gpu", uuid, "xid", e.EventData, "meaning", describeXID(uint32(e.EventData)))
		c.recordXID(uuid, uint32(e.EventData), c.opts.Now())
		if onXID != nil {
			onXID()
		}
	}
}

// loaded reports whether NVML is loaded, and by the given load.
func (c *Collector) loaded(load int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.initialized && c.loads == load
}

// registerEvents creates an event set for XID errors on every GPU, and
// says under which of NVML's loads. It returns nil while NVML is not
// loaded.
func (c *Collector) registerEvents() (nvml.EventSet, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.initialized {
		return nil, 0, nil
	}
	set, ret := c.lib.EventSetCreate()
	if driverGone(ret) {
		// The next collection loads NVML again.
		return nil, 0, nil
	}
	if ret != nvml.SUCCESS {
		return nil, 0, fmt.Errorf("EventSetCreate: %v", ret)
	}
	count, ret := c.lib.DeviceGetCount()
	if driverGone(ret) {
		set.Free()
		return nil, 0, nil
	}
	if ret != nvml.SUCCESS {
		set.Free()
		return nil, 0, fmt.Errorf("DeviceGetCount: %v", ret)
	}
	registered := 0
	for i := 0; i < count; i++ {
		dev, ret := c.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		supported, ret := dev.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || supported&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		if ret := dev.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret == nvml.SUCCESS {
			registered++
		}
	}
	if registered == 0 && count > 0 {
		set.Free()
		return nil, 0, errors.New("no GPU supports XID events")
	}
	return set, c.loads, nil
}
