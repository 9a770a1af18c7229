// Package podresources asks the kubelet which pod holds which device, through
// its PodResources gRPC API on a unix socket, and attaches the answer to the
// GPUs and MIG instances NVML found.
package podresources

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// DefaultSocket is where the kubelet serves PodResources.
const DefaultSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// DefaultResourcePrefixes select the device plugin resources that are GPUs.
var DefaultResourcePrefixes = []string{"nvidia.com/"}

// maxResponseBytes bounds a List answer; a node with hundreds of pods stays
// far below it.
const maxResponseBytes = 16 << 20

// Collector lists pod devices from the kubelet. It dials lazily and redials
// after a failure, so a kubelet restart costs one failed collection.
type Collector struct {
	socket   string
	prefixes []string
	minors   func() map[string]uint32
	timeout  time.Duration

	mu   sync.Mutex
	conn *grpc.ClientConn
}

// Result is what one collection found.
type Result struct {
	Status  *telemetryv1.CollectorStatus
	Devices []*telemetryv1.PodDevices
}

// New returns a collector for the kubelet socket at path. prefixes select
// resources by name (DefaultResourcePrefixes when empty). minors gives the
// device minor numbers of the report's GPUs by UUID (agent/nvml's
// Collector.Minors); with nil, the ids GKE's device plugin gives match
// nothing.
func New(socket string, prefixes []string, minors func() map[string]uint32) *Collector {
	if len(prefixes) == 0 {
		prefixes = DefaultResourcePrefixes
	}
	return &Collector{socket: socket, prefixes: prefixes, minors: minors, timeout: 5 * time.Second}
}

// Collect lists the devices of every running pod. It never fails: problems
// end up in Result.Status.
func (c *Collector) Collect(ctx context.Context) Result {
	if _, err := os.Stat(c.socket); errors.Is(err, fs.ErrNotExist) {
		return Result{Status: &telemetryv1.CollectorStatus{
			State:   telemetryv1.CollectorStatus_STATE_UNAVAILABLE,
			Message: fmt.Sprintf("kubelet PodResources socket %s not found; mount the host's /var/lib/kubelet/pod-resources into the agent", c.socket),
		}}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.list(ctx)
	if err != nil {
		// A restarted kubelet leaves the old connection broken: redial once.
		c.reset()
		resp, err = c.list(ctx)
	}
	if err != nil {
		c.reset()
		return Result{Status: errorStatus("kubelet PodResources List on %s: %v", c.socket, err)}
	}
	return Result{Status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}, Devices: c.convert(resp)}
}

func (c *Collector) list(ctx context.Context) (*podresourcesv1.ListPodResourcesResponse, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return podresourcesv1.NewPodResourcesListerClient(conn).List(ctx, &podresourcesv1.ListPodResourcesRequest{}, grpc.MaxCallRecvMsgSize(maxResponseBytes))
}

// Fill implements agent/report.Source: it lists pod devices and attaches
// them to the report's GPUs, which must already be there.
func (c *Collector) Fill(ctx context.Context, r *telemetryv1.NodeReport) {
	res := c.Collect(ctx)
	r.PodResources, r.PodDevices = res.Status, res.Devices
	var minors map[string]uint32
	if c.minors != nil {
		minors = c.minors()
	}
	unmatched := Attach(r.Gpus, minors, res.Devices)
	var notes []string
	if len(unmatched) > 0 && len(r.Gpus) > 0 {
		// Devices the kubelet assigned that NVML does not show: the two
		// views disagree, so say so next to the mapping.
		notes = append(notes, fmt.Sprintf("%d device ids match no GPU or MIG instance NVML reports (first: %s)", len(unmatched), unmatched[0]))
	}
	if note := clipHolders(r.Gpus); note != "" {
		notes = append(notes, note)
	}
	if n := len(r.PodDevices); n > telemetryv1.MaxPodDevices {
		// The scheduler refuses a whole report with more entries; the
		// GPUs' holders above were taken from all of them.
		r.PodDevices = r.PodDevices[:telemetryv1.MaxPodDevices]
		notes = append(notes, fmt.Sprintf("the containers' devices take %d pod_devices entries (one per container and resource, of at most %d ids), more than the %d a report lists: only the first %d are listed", n, telemetryv1.MaxDeviceIDsPerEntry, telemetryv1.MaxPodDevices, telemetryv1.MaxPodDevices))
	}
	if len(notes) > 0 && res.Status.GetState() == telemetryv1.CollectorStatus_STATE_OK {
		r.PodResources = &telemetryv1.CollectorStatus{
			State:   telemetryv1.CollectorStatus_STATE_OK,
			Message: strings.Join(notes, "; "),
		}
	}
}

// clipHolders keeps the first telemetryv1.MaxPodsPerGPU holders of each GPU:
// the scheduler refuses a whole report whose GPU lists more, and a GPU
// time-sliced into more replicas than that can have more pods. It returns
// what it left out, in words, or "".
func clipHolders(gpus []*telemetryv1.GPU) string {
	clipped, first, firstPods := 0, "", 0
	for _, g := range gpus {
		if n := len(g.Pods); n > telemetryv1.MaxPodsPerGPU {
			if clipped == 0 {
				first, firstPods = g.Uuid, n
			}
			clipped++
			g.Pods = g.Pods[:telemetryv1.MaxPodsPerGPU]
		}
	}
	if clipped == 0 {
		return ""
	}
	return fmt.Sprintf("%d GPUs are held by more than %d pods, the most a report lists: only the first %d of each are listed (first: %s, held by %d pods)",
		clipped, telemetryv1.MaxPodsPerGPU, telemetryv1.MaxPodsPerGPU, first, firstPods)
}

func errorStatus(format string, args ...any) *telemetryv1.CollectorStatus {
	return &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: fmt.Sprintf(format, args...)}
}

func (c *Collector) dial() (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, nil
	}
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	c.conn = conn
	return conn, nil
}

func (c *Collector) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// Close releases the connection.
func (c *Collector) Close() { c.reset() }

func (c *Collector) wanted(resource string) bool {
	for _, p := range c.prefixes {
		if strings.HasPrefix(resource, p) {
			return true
		}
	}
	return false
}

// convert keeps the GPU resources, one entry per container and resource
// (split when it would hold more ids than an entry may), in a stable order
// so that an unchanged node gives an identical report. The kubelet lists a
// container's devices one id at a time, once per NUMA node of the device,
// in Go map order: merged, sorted and deduplicated, the same devices read
// the same whatever order the kubelet answered in, and a node's pods
// holding thousands of time-sliced replicas stay within the entries a
// report may have.
func (c *Collector) convert(resp *podresourcesv1.ListPodResourcesResponse) []*telemetryv1.PodDevices {
	type key struct{ namespace, name, container, resource string }
	byKey := map[key][]string{}
	for _, pod := range resp.GetPodResources() {
		for _, ctr := range pod.GetContainers() {
			for _, dev := range ctr.GetDevices() {
				if !c.wanted(dev.GetResourceName()) || len(dev.GetDeviceIds()) == 0 {
					continue
				}
				k := key{pod.GetNamespace(), pod.GetName(), ctr.GetName(), dev.GetResourceName()}
				byKey[k] = append(byKey[k], dev.GetDeviceIds()...)
			}
		}
	}
	keys := make([]key, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name),
			cmp.Compare(a.container, b.container), cmp.Compare(a.resource, b.resource))
	})
	var out []*telemetryv1.PodDevices
	for _, k := range keys {
		ids := byKey[k]
		sort.Strings(ids)
		ids = slices.Compact(ids)
		// An entry holds at most telemetryv1.MaxDeviceIDsPerEntry ids (the
		// scheduler refuses the whole report otherwise): a container with
		// more (many time-sliced replicas) gets several.
		for len(ids) > 0 {
			n := min(len(ids), telemetryv1.MaxDeviceIDsPerEntry)
			out = append(out, &telemetryv1.PodDevices{
				Pod:          &telemetryv1.PodRef{Namespace: k.namespace, Name: k.name},
				Container:    k.container,
				ResourceName: k.resource,
				DeviceIds:    ids[:n:n],
			})
			ids = ids[n:]
		}
	}
	return out
}

// Attach records on gpus which pod holds each device, by the ids the two
// device plugins that advertise nvidia.com resources give the kubelet:
//
//   - NVIDIA's k8s-device-plugin: GPU UUIDs name whole GPUs, MIG UUIDs MIG
//     instances, and a "::<n>" suffix marks a time-sliced replica of the
//     device before it. It gives the kubelet these UUIDs whatever its
//     deviceIDStrategy: that setting changes only the ids it passes into the
//     container, so its index form ("<gpu>:<n>" for MIG) never reaches
//     PodResources.
//   - GKE's plugin names devices by their device files: "nvidia<minor>" a
//     whole GPU (/dev/nvidia<minor>; the minor number, from minors by GPU
//     UUID, need not be the NVML index), "nvidia<minor>/gi<id>" the MIG
//     instance of that GPU instance id, and a "/vgpu<n>" suffix a share of
//     the device before it (time-sharing or MPS).
//
// A shared GPU lists every pod holding a share of it; a shared MIG instance
// names the last one listed, as it has room for one. A bare index is no id
// either plugin gives, so it matches nothing rather than guessing which GPU
// another vendor's plugin meant.
// Attach returns the device ids that matched nothing NVML reported, which
// usually means the two sources disagree on the node's GPUs.
func Attach(gpus []*telemetryv1.GPU, minors map[string]uint32, devices []*telemetryv1.PodDevices) (unmatched []string) {
	byID := map[string]*telemetryv1.GPU{}
	migs := map[string]*telemetryv1.MIGInstance{}
	for _, g := range gpus {
		g.Pods = nil
		byID[g.Uuid] = g
		minor, named := minors[g.Uuid]
		if named {
			byID[fmt.Sprintf("nvidia%d", minor)] = g
		}
		for _, m := range g.MigInstances {
			m.Pod = nil
			migs[m.Uuid] = m
			if named {
				migs[fmt.Sprintf("nvidia%d/gi%d", minor, m.GpuInstanceId)] = m
			}
		}
	}
	for _, d := range devices {
		for _, id := range d.DeviceIds {
			base := sharedDevice(id)
			if g, ok := byID[base]; ok {
				if !holds(g.Pods, d.Pod) {
					g.Pods = append(g.Pods, d.Pod)
				}
				continue
			}
			if m, ok := migs[base]; ok {
				m.Pod = d.Pod
				continue
			}
			unmatched = append(unmatched, id)
		}
	}
	return unmatched
}

// sharedDevice returns the id of the device a share's id names: id without
// NVIDIA's "::<n>" or GKE's "/vgpu<n>" suffix.
func sharedDevice(id string) string {
	if base, _, ok := strings.Cut(id, "::"); ok {
		return base
	}
	if i := strings.LastIndex(id, "/vgpu"); i >= 0 {
		if _, err := strconv.ParseUint(id[i+len("/vgpu"):], 10, 32); err == nil {
			return id[:i]
		}
	}
	return id
}

func holds(pods []*telemetryv1.PodRef, p *telemetryv1.PodRef) bool {
	for _, q := range pods {
		if q.Namespace == p.Namespace && q.Name == p.Name {
			return true
		}
	}
	return false
}
