package telemetryv1

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/pennysched/penny/pkg/gpu"
)

// Limits on what one report may hold. They are far above any real node (a
// DGX has 8 GPUs, a kubelet at most a few hundred pods) and exist so that a
// broken or hostile agent cannot make the scheduler hold arbitrary data.
const (
	MaxGPUs                      = 64
	MaxMIGInstancesPerGPU        = 7 * 4 // 7 GPU instances, a few compute instances each
	MaxPodsPerGPU                = 64    // time-sliced replicas
	MaxPodDevices                = 2048
	MaxDeviceIDsPerEntry         = 64
	MaxReclaimNotices            = 16
	MaxCheckpointPods            = 256
	MaxHealthReasons             = 32
	MaxGPUMemoryBytes     uint64 = 4 << 40 // 4 TiB; the largest GPU today has 288 GB
	MaxTemperatureCelsius        = 200
	// MaxCommandDeadline bounds how far off a CheckpointCommand's deadline
	// may be: the longest notice a reclaim acts on at once (Azure's
	// Terminate, 15 min), the maintenance lead and SpotRisk's
	// returnToSpot.checkpointTimeout (10 min each by default) are well
	// within it.
	MaxCommandDeadline = time.Hour
	// CommandClockSkew is how far the clocks of the scheduler, which sets
	// a command's deadline, and of the agent, which checks it again, may
	// disagree: a command due in exactly MaxCommandDeadline (a lead or
	// timeout set to the limit) must not be refused by an agent whose clock
	// is a moment behind.
	CommandClockSkew = 5 * time.Minute
	// MaxActionLen bounds a reclaim notice's action: the cloud's own word
	// for it (terminate, TERMINATE, an AWS event code).
	MaxActionLen = 64
	maxIDLen     = 256
	maxNameLen   = 256
	maxTextLen   = 1024
	// MaxErrors is how many problems a validation error lists; it counts
	// the rest. A report within the message limit can have a hundred
	// thousand, and the answer to an agent must stay far below its own
	// message limit.
	MaxErrors = 32
	// maxShownValue bounds how much of a bad value an error quotes.
	maxShownValue = 128
)

// at names a field for error messages without allocating. Validation runs
// on every report (a thousand a second at 5,000 nodes), and a field's path
// is only needed when something is wrong with it.
type at struct {
	n   int
	seg [6]segment
}

type segment struct {
	name  string
	index int // -1: not a list element
}

var root at

// Child names field name under a.
func (a at) Child(name string) at {
	a.seg[a.n] = segment{name: name, index: -1}
	a.n++
	return a
}

// Index names element i of the list a names.
func (a at) Index(i int) at {
	a.seg[a.n-1].index = i
	return a
}

func (a at) path() *field.Path {
	var p *field.Path
	for _, s := range a.seg[:a.n] {
		if p == nil {
			p = field.NewPath(s.name)
		} else {
			p = p.Child(s.name)
		}
		if s.index >= 0 {
			p = p.Index(s.index)
		}
	}
	return p
}

// ValidateNodeReport checks every field of a report. The error lists the
// problems found, each naming its field ("gpus[2].mig_instances[0].profile"),
// up to MaxErrors of them.
func ValidateNodeReport(r *NodeReport) error {
	return aggregate(validateNodeReport(r, root))
}

// aggregate makes the error of a validation: the first MaxErrors problems,
// each quoting at most maxShownValue bytes of its bad value, and how many
// more there are. (Joining a whole list costs time quadratic in its length.)
func aggregate(errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	more := 0
	if len(errs) > MaxErrors {
		errs, more = errs[:MaxErrors], len(errs)-MaxErrors
	}
	for _, e := range errs {
		if v, ok := e.BadValue.(string); ok {
			e.BadValue = cutText(v, maxShownValue)
		}
	}
	if more == 0 {
		return errs.ToAggregate()
	}
	return utilerrors.NewAggregate(append(errs.ToAggregate().Errors(), fmt.Errorf("and %d more problems", more)))
}

func validateNodeReport(r *NodeReport, p at) field.ErrorList {
	var errs field.ErrorList
	if r == nil {
		return append(errs, field.Required(p.path(), "report is empty"))
	}
	errs = append(errs, validateNodeName(r.GetNodeName(), p.Child("node_name"))...)
	errs = append(errs, validateID(r.GetAgentId(), p.Child("agent_id"))...)
	if r.GetSequence() == 0 {
		errs = append(errs, field.Required(p.Child("sequence").path(), "starts at 1 and grows by 1 per report"))
	}
	errs = append(errs, validateTimestamp(r.GetCollectedAt(), true, p.Child("collected_at"))...)
	errs = append(errs, validateText(r.GetAgentVersion(), maxNameLen, p.Child("agent_version"))...)
	errs = append(errs, validateText(r.GetDriverVersion(), maxNameLen, p.Child("driver_version"))...)
	if r.GetCudaDriverVersion() < 0 {
		errs = append(errs, field.Invalid(p.Child("cuda_driver_version").path(), r.GetCudaDriverVersion(), "must not be negative"))
	}

	errs = append(errs, validateCollectorStatus(r.GetNvml(), p.Child("nvml"))...)
	if r.GetNvml().GetState() != CollectorStatus_STATE_OK && len(r.GetGpus()) > 0 {
		errs = append(errs, field.Invalid(p.Child("gpus").path(), len(r.GetGpus()), "must be empty unless nvml.state is STATE_OK"))
	}
	if n := len(r.GetGpus()); n > MaxGPUs {
		errs = append(errs, field.TooMany(p.Child("gpus").path(), n, MaxGPUs))
	} else {
		seen := newUniqueness(r.GetGpus())
		for i, g := range r.GetGpus() {
			errs = append(errs, validateGPU(g, seen, p.Child("gpus").Index(i))...)
		}
	}

	errs = append(errs, validateCollectorStatus(r.GetPodResources(), p.Child("pod_resources"))...)
	if n := len(r.GetPodDevices()); n > MaxPodDevices {
		errs = append(errs, field.TooMany(p.Child("pod_devices").path(), n, MaxPodDevices))
	} else {
		for i, d := range r.GetPodDevices() {
			errs = append(errs, validatePodDevices(d, p.Child("pod_devices").Index(i))...)
		}
	}

	errs = append(errs, validateCollectorStatus(r.GetProfiling(), p.Child("profiling"))...)

	errs = append(errs, validateCollectorStatus(r.GetReclaim(), p.Child("reclaim"))...)
	if n := len(r.GetReclaimNotices()); n > MaxReclaimNotices {
		errs = append(errs, field.TooMany(p.Child("reclaim_notices").path(), n, MaxReclaimNotices))
	} else {
		ids := map[string]bool{}
		for i, n := range r.GetReclaimNotices() {
			fp := p.Child("reclaim_notices").Index(i)
			errs = append(errs, validateReclaimNotice(n, fp)...)
			if ids[n.GetId()] {
				errs = append(errs, field.Duplicate(fp.Child("id").path(), n.GetId()))
			}
			ids[n.GetId()] = true
		}
	}
	return errs
}

// uniqueness tracks ids that must be unique across one report.
type uniqueness struct {
	uuids   map[string]bool
	indices [MaxGPUs]bool
}

// newUniqueness sizes the UUID set for the report's GPUs and MIG instances
// up front: growing it would cost more than the lookups. A GPU counts for
// no more MIG instances than it may hold: a report listing two million
// (empty ones are two bytes each on the wire) had the set sized for all of
// them, 100 MiB, before validateGPU refused the list.
func newUniqueness(gpus []*GPU) *uniqueness {
	n := len(gpus)
	for _, g := range gpus {
		n += min(len(g.GetMigInstances()), MaxMIGInstancesPerGPU)
	}
	return &uniqueness{uuids: make(map[string]bool, n)}
}

func validateGPU(g *GPU, seen *uniqueness, p at) field.ErrorList {
	var errs field.ErrorList
	if g == nil {
		return append(errs, field.Required(p.path(), "GPU entry is empty"))
	}
	if !IsGPUUUID(g.GetUuid()) {
		errs = append(errs, field.Invalid(p.Child("uuid").path(), g.GetUuid(), "must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits), as NVML reports it"))
	} else if seen.uuids[g.GetUuid()] {
		errs = append(errs, field.Duplicate(p.Child("uuid").path(), g.GetUuid()))
	}
	seen.uuids[g.GetUuid()] = true
	if g.GetIndex() >= MaxGPUs {
		errs = append(errs, field.Invalid(p.Child("index").path(), g.GetIndex(), fmt.Sprintf("must be below %d", MaxGPUs)))
	} else if seen.indices[g.GetIndex()] {
		errs = append(errs, field.Duplicate(p.Child("index").path(), g.GetIndex()))
	} else {
		seen.indices[g.GetIndex()] = true
	}
	if g.GetName() == "" {
		errs = append(errs, field.Required(p.Child("name").path(), "NVML device name, e.g. \"NVIDIA A100-SXM4-40GB\""))
	}
	errs = append(errs, validateText(g.GetName(), maxNameLen, p.Child("name"))...)
	if g.GetProduct() == "" {
		errs = append(errs, field.Required(p.Child("product").path(), "the name with spaces as dashes, e.g. \"NVIDIA-A100-SXM4-40GB\""))
	} else if msgs := labelValueErrors(g.GetProduct()); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("product").path(), g.GetProduct(), "must be usable as the nvidia.com/gpu.product label value: "+strings.Join(msgs, "; ")))
	}
	errs = append(errs, validateText(g.GetPciBusId(), 64, p.Child("pci_bus_id"))...)
	total := g.GetMemoryTotalBytes()
	switch {
	case total > MaxGPUMemoryBytes:
		errs = append(errs, field.Invalid(p.Child("memory_total_bytes").path(), total, fmt.Sprintf("must be 1..%d", MaxGPUMemoryBytes)))
	case total == 0 && g.GetHealth().GetHealthy():
		// A GPU whose NVML reads no memory is a fault on that GPU, not a
		// malformed report: an agent reports it unhealthy, saying so, and
		// the node's other GPUs stay in the scheduler's view. (A missing
		// health verdict is refused below.)
		errs = append(errs, field.Invalid(p.Child("memory_total_bytes").path(), total, fmt.Sprintf("must be 1..%d; 0 only on a GPU reported unhealthy", MaxGPUMemoryBytes)))
	}
	if g.MemoryUsedBytes != nil && g.GetMemoryUsedBytes() > total {
		errs = append(errs, field.Invalid(p.Child("memory_used_bytes").path(), g.GetMemoryUsedBytes(), fmt.Sprintf("must not exceed memory_total_bytes (%d)", total)))
	}
	errs = append(errs, validatePercent(g.UtilizationPercent, p.Child("utilization_percent"))...)
	errs = append(errs, validatePercent(g.MemoryUtilizationPercent, p.Child("memory_utilization_percent"))...)
	if _, ok := MIGMode_name[int32(g.GetMigMode())]; !ok || g.GetMigMode() == MIGMode_MIG_MODE_UNSPECIFIED {
		errs = append(errs, field.Invalid(p.Child("mig_mode").path(), g.GetMigMode().String(), "must be one of UNSUPPORTED, DISABLED, ENABLED, PENDING_ENABLE, PENDING_DISABLE"))
	}
	if n := len(g.GetMigInstances()); n > 0 && g.GetMigMode() != MIGMode_MIG_MODE_ENABLED {
		errs = append(errs, field.Forbidden(p.Child("mig_instances").path(), fmt.Sprintf("%d instances on a GPU whose mig_mode is %s", n, g.GetMigMode())))
	} else if n > MaxMIGInstancesPerGPU {
		errs = append(errs, field.TooMany(p.Child("mig_instances").path(), n, MaxMIGInstancesPerGPU))
	} else {
		errs = append(errs, validateMIGInstances(g, seen, p)...)
	}
	if n := len(g.GetPods()); n > MaxPodsPerGPU {
		errs = append(errs, field.TooMany(p.Child("pods").path(), n, MaxPodsPerGPU))
	} else {
		for i, pod := range g.GetPods() {
			errs = append(errs, validatePodRef(pod, true, p.Child("pods").Index(i))...)
		}
	}
	errs = append(errs, validateHealth(g.GetHealth(), p.Child("health"))...)
	errs = append(errs, validateProfiling(g.GetProfiling(), p.Child("profiling"))...)
	return errs
}

// validateMIGInstances checks each instance and the physical facts of the
// layout: placements within the 8 memory slices, distinct GPU instances not
// overlapping, at most 7 compute slices in use. It does not hold placements
// to pkg/gpu's per-model tables: NVML is the authority on where an instance
// sits, and refusing a whole report over a table that lags a driver would
// blind the scheduler to the node.
func validateMIGInstances(g *GPU, seen *uniqueness, gp at) field.ErrorList {
	var errs field.ErrorList
	type gi struct {
		start, size uint32
		compute     int
	}
	gis := map[uint32]gi{}
	var used [gpu.MemorySlices]bool
	compute := 0
	for i, m := range g.GetMigInstances() {
		p := gp.Child("mig_instances").Index(i)
		if m == nil {
			errs = append(errs, field.Required(p.path(), "MIG instance entry is empty"))
			continue
		}
		if !IsMIGUUID(m.GetUuid()) {
			errs = append(errs, field.Invalid(p.Child("uuid").path(), m.GetUuid(), "must look like MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx or MIG-GPU-<uuid>/<gi>/<ci>"))
		} else if seen.uuids[m.GetUuid()] {
			errs = append(errs, field.Duplicate(p.Child("uuid").path(), m.GetUuid()))
		}
		seen.uuids[m.GetUuid()] = true
		prof, err := ParseMIGProfile(m.GetProfile())
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("profile").path(), m.GetProfile(), err.Error()))
		}
		start, size := m.GetPlacementStart(), m.GetPlacementSize()
		if size == 0 || start >= gpu.MemorySlices || size > gpu.MemorySlices || start+size > gpu.MemorySlices {
			errs = append(errs, field.Invalid(p.Child("placement_start").path(), fmt.Sprintf("start %d size %d", start, size), fmt.Sprintf("placement must lie within the GPU's %d memory slices", gpu.MemorySlices)))
			continue
		}
		if m.MemoryUsedBytes != nil && m.GetMemoryUsedBytes() > m.GetMemoryTotalBytes() {
			errs = append(errs, field.Invalid(p.Child("memory_used_bytes").path(), m.GetMemoryUsedBytes(), fmt.Sprintf("must not exceed memory_total_bytes (%d)", m.GetMemoryTotalBytes())))
		}
		if m.GetMemoryTotalBytes() > g.GetMemoryTotalBytes() {
			errs = append(errs, field.Invalid(p.Child("memory_total_bytes").path(), m.GetMemoryTotalBytes(), "must not exceed the GPU's memory_total_bytes"))
		}
		if m.GetPod() != nil {
			errs = append(errs, validatePodRef(m.GetPod(), true, p.Child("pod"))...)
		}
		errs = append(errs, validateProfiling(m.GetProfiling(), p.Child("profiling"))...)

		// Compute instances of one GPU instance share its placement; distinct
		// GPU instances must not overlap.
		if prev, ok := gis[m.GetGpuInstanceId()]; ok {
			if prev.start != start || prev.size != size {
				errs = append(errs, field.Invalid(p.Child("placement_start").path(), start, fmt.Sprintf("GPU instance %d is reported with two placements", m.GetGpuInstanceId())))
			}
			continue
		}
		for s := start; s < start+size; s++ {
			if used[s] {
				errs = append(errs, field.Invalid(p.Child("placement_start").path(), start, fmt.Sprintf("memory slice %d is already taken by another GPU instance", s)))
				break
			}
			used[s] = true
		}
		gis[m.GetGpuInstanceId()] = gi{start: start, size: size, compute: prof.Compute}
		compute += prof.Compute
	}
	if compute > gpu.ComputeSlices {
		errs = append(errs, field.Invalid(gp.Child("mig_instances").path(), compute, fmt.Sprintf("GPU instances use %d compute slices, a GPU has %d", compute, gpu.ComputeSlices)))
	}
	return errs
}

// migProfileSuffixes are the attribute suffixes NVML profile names carry
// (media extensions, graphics).
var migProfileSuffixes = []string{"+me.all", "+me", "-me", "+gfx"}

// ParseMIGProfile reads a MIG profile name as the device plugin writes it,
// "<g>g.<mem>gb" with an optional attribute suffix ("1g.5gb+me"). The
// returned profile's Name is the base name without the suffix.
func ParseMIGProfile(name string) (gpu.Profile, error) {
	base := name
	for _, s := range migProfileSuffixes {
		if strings.HasSuffix(base, s) {
			base = strings.TrimSuffix(base, s)
			break
		}
	}
	// ParseProfileName also refuses signs and leading zeros, naming the
	// plain spelling.
	p, err := gpu.ParseProfileName(base)
	if err != nil {
		return gpu.Profile{}, fmt.Errorf("%w (optionally followed by one of %s)", err, strings.Join(migProfileSuffixes, ", "))
	}
	return p, nil
}

func validateHealth(h *Health, p at) field.ErrorList {
	var errs field.ErrorList
	if h == nil {
		return append(errs, field.Required(p.path(), "every GPU carries a health verdict"))
	}
	// A list over its limit is refused as such, like every list of a
	// report, without checking each element: a 4 MiB report holds a
	// million one-byte reasons, and checking them all took seconds of a
	// scheduler core per report.
	if n := len(h.GetReasons()); n > MaxHealthReasons {
		errs = append(errs, field.TooMany(p.Child("reasons").path(), n, MaxHealthReasons))
	} else {
		for i, r := range h.GetReasons() {
			if r == "" {
				errs = append(errs, field.Required(p.Child("reasons").Index(i).path(), "a reason in words"))
			}
			errs = append(errs, validateText(r, maxTextLen, p.Child("reasons").Index(i))...)
		}
	}
	if h.GetHealthy() && len(h.GetReasons()) > 0 {
		errs = append(errs, field.Invalid(p.Child("healthy").path(), true, "a healthy GPU has no reasons"))
	}
	if !h.GetHealthy() && len(h.GetReasons()) == 0 {
		errs = append(errs, field.Required(p.Child("reasons").path(), "an unhealthy GPU says why"))
	}
	if h.GetLastXid() != 0 {
		errs = append(errs, validateTimestamp(h.GetLastXidTime(), true, p.Child("last_xid_time"))...)
		if h.GetXidCount() == 0 {
			errs = append(errs, field.Invalid(p.Child("xid_count").path(), 0, "must be at least 1 when last_xid is set"))
		}
	}
	seen := map[ThrottleReason]bool{}
	if n := len(h.GetThrottleReasons()); n > len(ThrottleReason_name)-1 {
		errs = append(errs, field.TooMany(p.Child("throttle_reasons").path(), n, len(ThrottleReason_name)-1))
	} else {
		for i, t := range h.GetThrottleReasons() {
			fp := p.Child("throttle_reasons").Index(i)
			if _, ok := ThrottleReason_name[int32(t)]; !ok || t == ThrottleReason_THROTTLE_REASON_UNSPECIFIED {
				errs = append(errs, field.Invalid(fp.path(), int32(t), "not a known throttle reason"))
			} else if seen[t] {
				errs = append(errs, field.Duplicate(fp.path(), t.String()))
			}
			seen[t] = true
		}
	}
	if h.TemperatureCelsius != nil && h.GetTemperatureCelsius() > MaxTemperatureCelsius {
		errs = append(errs, field.Invalid(p.Child("temperature_celsius").path(), h.GetTemperatureCelsius(), fmt.Sprintf("must be 0..%d", MaxTemperatureCelsius)))
	}
	return errs
}

func validateProfiling(pr *Profiling, p at) field.ErrorList {
	var errs field.ErrorList
	if pr == nil {
		return nil
	}
	ratio := func(v *float64, name string) {
		if v != nil && (math.IsNaN(*v) || *v < 0 || *v > 1) {
			errs = append(errs, field.Invalid(p.Child(name).path(), *v, "must be a ratio 0..1"))
		}
	}
	ratio(pr.GraphicsEngineActive, "graphics_engine_active")
	ratio(pr.TensorActive, "tensor_active")
	ratio(pr.DramActive, "dram_active")
	return errs
}

func validatePodDevices(d *PodDevices, p at) field.ErrorList {
	var errs field.ErrorList
	if d == nil {
		return append(errs, field.Required(p.path(), "entry is empty"))
	}
	errs = append(errs, validatePodRef(d.GetPod(), true, p.Child("pod"))...)
	if msgs := dns1123LabelErrors(d.GetContainer()); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("container").path(), d.GetContainer(), strings.Join(msgs, "; ")))
	}
	if msgs := labelKeyErrors(d.GetResourceName()); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("resource_name").path(), d.GetResourceName(), "must be an extended resource name like nvidia.com/gpu: "+strings.Join(msgs, "; ")))
	}
	if n := len(d.GetDeviceIds()); n > MaxDeviceIDsPerEntry {
		errs = append(errs, field.TooMany(p.Child("device_ids").path(), n, MaxDeviceIDsPerEntry))
	} else {
		for i, id := range d.GetDeviceIds() {
			if !isDeviceID(id) {
				errs = append(errs, field.Invalid(p.Child("device_ids").Index(i).path(), id, fmt.Sprintf("must be 1..%d printable characters without spaces", maxIDLen)))
			}
		}
	}
	return errs
}

func validatePodRef(r *PodRef, required bool, p at) field.ErrorList {
	var errs field.ErrorList
	if r == nil {
		if required {
			errs = append(errs, field.Required(p.path(), "namespace and name of the pod"))
		}
		return errs
	}
	if msgs := dns1123LabelErrors(r.GetNamespace()); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("namespace").path(), r.GetNamespace(), strings.Join(msgs, "; ")))
	}
	if msgs := dns1123SubdomainErrors(r.GetName()); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("name").path(), r.GetName(), strings.Join(msgs, "; ")))
	}
	return errs
}

func validateReclaimNotice(n *ReclaimNotice, p at) field.ErrorList {
	var errs field.ErrorList
	if n == nil {
		return append(errs, field.Required(p.path(), "notice is empty"))
	}
	if n.GetId() == "" {
		errs = append(errs, field.Required(p.Child("id").path(), "the provider's event id"))
	}
	errs = append(errs, validateText(n.GetId(), maxIDLen, p.Child("id"))...)
	if _, ok := ReclaimKind_name[int32(n.GetKind())]; !ok || n.GetKind() == ReclaimKind_RECLAIM_KIND_UNSPECIFIED {
		errs = append(errs, field.Invalid(p.Child("kind").path(), int32(n.GetKind()), "must be SPOT_INTERRUPTION, REBALANCE_RECOMMENDATION, MAINTENANCE or TERMINATION"))
	}
	if _, ok := CloudProvider_name[int32(n.GetProvider())]; !ok || n.GetProvider() == CloudProvider_CLOUD_PROVIDER_UNSPECIFIED {
		errs = append(errs, field.Invalid(p.Child("provider").path(), int32(n.GetProvider()), "must be AWS, GCP or AZURE"))
	}
	errs = append(errs, validateText(n.GetAction(), MaxActionLen, p.Child("action"))...)
	errs = append(errs, validateTimestamp(n.GetDetectedAt(), true, p.Child("detected_at"))...)
	// A rebalance recommendation promises no deadline; everything else has one.
	errs = append(errs, validateTimestamp(n.GetDeadline(), n.GetKind() != ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, p.Child("deadline"))...)
	return errs
}

func validateCollectorStatus(s *CollectorStatus, p at) field.ErrorList {
	var errs field.ErrorList
	if _, ok := CollectorStatus_State_name[int32(s.GetState())]; !ok || s.GetState() == CollectorStatus_STATE_UNSPECIFIED {
		errs = append(errs, field.Invalid(p.Child("state").path(), int32(s.GetState()), "must be OK, DISABLED, UNAVAILABLE or ERROR"))
	}
	errs = append(errs, validateText(s.GetMessage(), maxTextLen, p.Child("message"))...)
	if s.GetState() == CollectorStatus_STATE_ERROR && s.GetMessage() == "" {
		errs = append(errs, field.Required(p.Child("message").path(), "an error says what failed"))
	}
	return errs
}

// noticeStatusPrefix starts the command_id of the statuses an agent sends of
// the checkpoints it takes for its own node's notice; the scheduler's
// commands are named otherwise ("gang-…").
const noticeStatusPrefix = "notice-"

// NoticeStatusID is the command_id of the statuses an agent sends of the
// checkpoints it takes for its node's notice id: no scheduler command, so a
// scheduler tells them from the statuses of its own commands
// (IsNoticeStatus) rather than count them as statuses of a command it does
// not know.
func NoticeStatusID(noticeID string) string { return noticeStatusPrefix + noticeID }

// IsNoticeStatus reports whether a status's command_id names an agent's own
// notice (NoticeStatusID) rather than a scheduler command.
func IsNoticeStatus(commandID string) bool { return strings.HasPrefix(commandID, noticeStatusPrefix) }

// ValidateCheckpointStatus checks a CheckpointStatus from an agent.
func ValidateCheckpointStatus(s *CheckpointStatus) error {
	var errs field.ErrorList
	if s == nil {
		return aggregate(field.ErrorList{field.Required(nil, "status is empty")})
	}
	errs = append(errs, validateID(s.GetCommandId(), root.Child("command_id"))...)
	errs = append(errs, validatePodRef(s.GetPod(), true, root.Child("pod"))...)
	if _, ok := CheckpointStatus_State_name[int32(s.GetState())]; !ok || s.GetState() == CheckpointStatus_STATE_UNSPECIFIED {
		errs = append(errs, field.Invalid(root.Child("state").path(), int32(s.GetState()), "must be REQUESTED, DONE, FAILED, NO_HOOK or UNSUPPORTED"))
	}
	errs = append(errs, validateText(s.GetMessage(), maxTextLen, root.Child("message"))...)
	errs = append(errs, validateTimestamp(s.GetUpdatedAt(), true, root.Child("updated_at"))...)
	return aggregate(errs)
}

// ValidateCheckpointCommand checks a CheckpointCommand before an agent acts
// on it.
func ValidateCheckpointCommand(c *CheckpointCommand) error {
	var errs field.ErrorList
	if c == nil {
		return aggregate(field.ErrorList{field.Required(nil, "command is empty")})
	}
	errs = append(errs, validateID(c.GetId(), root.Child("id"))...)
	if n := len(c.GetPods()); n == 0 || n > MaxCheckpointPods {
		errs = append(errs, field.Invalid(root.Child("pods").path(), n, fmt.Sprintf("must name 1..%d pods", MaxCheckpointPods)))
	}
	for i, pod := range c.GetPods() {
		errs = append(errs, validatePodRef(pod, true, root.Child("pods").Index(i))...)
	}
	if dl := validateTimestamp(c.GetDeadline(), true, root.Child("deadline")); len(dl) > 0 {
		errs = append(errs, dl...)
	} else if d := c.GetDeadline().AsTime(); d.After(time.Now().Add(MaxCommandDeadline + CommandClockSkew)) {
		errs = append(errs, field.Invalid(root.Child("deadline").path(), d.UTC().Format(time.RFC3339),
			fmt.Sprintf("is more than %v away: an agent would hold the pods' checkpoints that long; a command's deadline is its notice's, or now plus SpotRisk's returnToSpot.checkpointTimeout, both within %v", MaxCommandDeadline, MaxCommandDeadline)))
	}
	errs = append(errs, validateText(c.GetReason(), maxTextLen, root.Child("reason"))...)
	if c.GetOriginNode() != "" {
		errs = append(errs, validateNodeName(c.GetOriginNode(), root.Child("origin_node"))...)
	}
	errs = append(errs, validateText(c.GetOriginNoticeId(), maxIDLen, root.Child("origin_notice_id"))...)
	return aggregate(errs)
}

func validateNodeName(name string, p at) field.ErrorList {
	if name == "" {
		return field.ErrorList{field.Required(p.path(), "the Kubernetes node name")}
	}
	if msgs := dns1123SubdomainErrors(name); len(msgs) > 0 {
		return field.ErrorList{field.Invalid(p.path(), name, strings.Join(msgs, "; "))}
	}
	return nil
}

// validateID accepts the characters ids are made of in practice (uuids,
// cloud event ids) and nothing that could garble a log line.
func validateID(id string, p at) field.ErrorList {
	if id == "" {
		return field.ErrorList{field.Required(p.path(), "")}
	}
	if !isDeviceID(id) {
		return field.ErrorList{field.Invalid(p.path(), id, fmt.Sprintf("must be 1..%d printable characters without spaces", maxIDLen))}
	}
	return nil
}

func validateText(s string, max int, p at) field.ErrorList {
	if len(s) > max {
		return field.ErrorList{field.TooLong(p.path(), s, max)}
	}
	if !utf8.ValidString(s) {
		return field.ErrorList{field.Invalid(p.path(), s, "must be UTF-8 (protobuf strings are)")}
	}
	for _, r := range s {
		if isControl(r) {
			return field.ErrorList{field.Invalid(p.path(), s, "must not contain control characters")}
		}
	}
	return nil
}

// isControl is what free text in a report must not contain.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func validatePercent(v *uint32, p at) field.ErrorList {
	if v != nil && *v > 100 {
		return field.ErrorList{field.Invalid(p.path(), *v, "must be a percentage 0..100")}
	}
	return nil
}

func validateTimestamp(ts *timestamppb.Timestamp, required bool, p at) field.ErrorList {
	if ts == nil {
		if required {
			return field.ErrorList{field.Required(p.path(), "a timestamp")}
		}
		return nil
	}
	if err := ts.CheckValid(); err != nil {
		return field.ErrorList{field.Invalid(p.path(), ts.String(), err.Error())}
	}
	if ts.GetSeconds() <= 0 {
		return field.ErrorList{field.Invalid(p.path(), ts.AsTime().String(), "must be after 1970")}
	}
	return nil
}

// IsGPUUUID reports whether s is an NVML GPU UUID, GPU-<uuid>.
func IsGPUUUID(s string) bool {
	return strings.HasPrefix(s, "GPU-") && isUUID(s[4:])
}

// IsMIGUUID reports whether s is an NVML MIG device UUID: MIG-<uuid> (R470
// and later) or MIG-GPU-<uuid>/<gi>/<ci> (older drivers).
func IsMIGUUID(s string) bool {
	rest, ok := strings.CutPrefix(s, "MIG-")
	if !ok {
		return false
	}
	if isUUID(rest) {
		return true
	}
	parts := strings.Split(rest, "/")
	return len(parts) == 3 && IsGPUUUID(parts[0]) && isSmallNumber(parts[1]) && isSmallNumber(parts[2])
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func isSmallNumber(s string) bool {
	if len(s) == 0 || len(s) > 3 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isDeviceID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// StatusText makes free text, typically an error's message, fit a
// CollectorStatus or CheckpointStatus message: control characters
// (errors.Join puts newlines between errors) become "; ", bytes that are not
// UTF-8 (which proto.Marshal refuses) become U+FFFD, and the text is cut to
// the limit on a rune boundary. Agents pass collector messages and what pods
// answer through it so that one odd error does not get their whole report
// refused.
func StatusText(s string) string {
	return cutText(strings.Join(strings.FieldsFunc(strings.ToValidUTF8(s, "\uFFFD"), isControl), "; "), maxTextLen)
}

// cutText cuts s to at most max bytes, on a rune boundary, marking the cut.
func cutText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	const ellipsis = "..."
	cut := max - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
