package gpupack

import (
	"encoding/binary"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/telemetry"
)

// LayoutSource tells the plugin what a node itself reports of its GPUs (the
// node agent's telemetry): the static MIG layout of each, and which ones
// its agent found broken. It is the seam between gpupack and the telemetry
// store: the registry adapts the store to it, tests and the simulator hand
// in their own.
//
// Without a source, or for a node it does not know, the plugin derives the
// layout from what the device plugin advertises (gpu.NodeDevicesFor), which
// is enough to place pods but may number the instances differently from the
// node, and takes every GPU for healthy.
type LayoutSource interface {
	// Report returns what the node's agent reports of its GPUs; ok is
	// false when the node is unknown. The returned slices must not be
	// modified by either side.
	Report(node string) (r GPUReport, ok bool)
}

// GPUReport is a node's report as the device view reads it.
type GPUReport struct {
	// Layout has each GPU's MIG instances by device index: nil for a GPU
	// that is not partitioned, empty (not nil) for one in MIG mode without
	// instances. Its length is the number of GPUs the agent numbers; GPUs
	// past the end are not reported.
	Layout [][]gpu.Placement
	// Unhealthy lists, ascending, the device indices of the GPUs the agent
	// reports unhealthy.
	Unhealthy []int
	// Version changes whenever Layout or Unhealthy does, so that a node's
	// view is rebuilt then and not with every report; never 0, which means
	// "no report".
	Version uint64
}

// ReportNotifier is a LayoutSource that says when a node's report arrives.
// The view then asks again only the nodes that reported (and those whose
// entry a stale report would change), not every node in every cycle; and
// the plugin retries the pods it turned away when a GPU recovers, which no
// cluster event announces.
type ReportNotifier interface {
	LayoutSource
	// OnReport has fn see each report the source takes in, with the one
	// it replaces (the zero GPUReport for none), and each node it stops
	// holding a report for (next the zero GPUReport), until cancel is
	// called.
	// fn runs on the source's goroutine and must return quickly.
	OnReport(fn func(node string, prev, next GPUReport)) (cancel func())
}

// TelemetryLayouts reads the nodes' reports from the node agents'
// telemetry: for each GPU the agent reports in MIG mode, the GPU instances
// it found (free or held), and the GPUs it gave a verdict of unhealthy, with
// a reason. Nodes that never reported, or whose agent could not read NVML,
// are unknown. Over a telemetry.Notifier (the store) it is a
// ReportNotifier.
//
// Over the store (a LastReports) a node whose agent has gone silent keeps
// its last report until the store drops the node (deleted from the
// cluster, or silent for an hour): a GPU its agent found broken stays held
// off while a DaemonSet rollout or a crash loop silences the agent, rather
// than take the pods that waited for a healthy GPU the moment the report
// turns stale. The layout it reported stands as well: the node's MIG
// partitions do not change because its agent stopped.
func TelemetryLayouts(r telemetry.Reader) LayoutSource {
	t := &telemetryLayouts{latest: func(node string) *telemetry.NodeState {
		st, _ := r.Node(node)
		return st
	}}
	if l, ok := r.(LastReports); ok {
		t.latest = func(node string) *telemetry.NodeState {
			st, _ := l.Lookup(node)
			return st
		}
	}
	if n, ok := r.(telemetry.Notifier); ok {
		return notifyingLayouts{t, n}
	}
	return t
}

type telemetryLayouts struct {
	// latest is a node's latest state: however old over a LastReports,
	// else only a fresh one; nil for none.
	latest func(node string) *telemetry.NodeState
	// read holds each node's report as read from its latest state (a
	// readState), because the view asks for the reports of nodes that
	// can hold MIG layouts in every cycle: read afresh, a thousand of them
	// took half a millisecond of every pod's PreFilter.
	read sync.Map
}

type readState struct {
	st *telemetry.NodeState
	r  GPUReport
	ok bool
}

// LastReports is a telemetry.Reader that also has the reports it holds
// but no longer calls fresh (telemetry.Store).
type LastReports interface {
	telemetry.Reader
	// Lookup returns the node's latest state however old, nil when there
	// is none, and whether it is fresh.
	Lookup(name string) (*telemetry.NodeState, bool)
}

func (t *telemetryLayouts) Report(node string) (GPUReport, bool) {
	st := t.latest(node)
	if st == nil {
		t.read.Delete(node)
		return GPUReport{}, false
	}
	return t.reportOf(st)
}

// reportOf is reportOf, read once per state.
func (t *telemetryLayouts) reportOf(st *telemetry.NodeState) (GPUReport, bool) {
	if r, ok, found := t.cached(st); found {
		return r, ok
	}
	r, ok := reportOf(st)
	t.read.Store(st.Node, &readState{st: st, r: r, ok: ok})
	return r, ok
}

// cached is the report read of st, if it is the one held.
func (t *telemetryLayouts) cached(st *telemetry.NodeState) (r GPUReport, ok, found bool) {
	if v, held := t.read.Load(st.Node); held {
		if rs := v.(*readState); rs.st == st {
			return rs.r, rs.ok, true
		}
	}
	return GPUReport{}, false, false
}

// forget drops what was read of a node the view no longer has: the view
// asks for it no more, so Report would never find it gone.
func (t *telemetryLayouts) forget(node string) { t.read.Delete(node) }

// peek is reportOf without keeping what it read: the reports of every node
// pass through OnReport, also of nodes the view does not have or has
// forgotten, and only the view's own are held.
func (t *telemetryLayouts) peek(st *telemetry.NodeState) GPUReport {
	if r, _, found := t.cached(st); found {
		return r
	}
	r, _ := reportOf(st)
	return r
}

type notifyingLayouts struct {
	*telemetryLayouts
	n telemetry.Notifier
}

func (t notifyingLayouts) OnReport(fn func(node string, prev, next GPUReport)) func() {
	return t.n.Subscribe(func(prev, next *telemetry.NodeState) {
		var p GPUReport
		if prev != nil {
			p = t.peek(prev)
		}
		if next == nil {
			// Dropped: no report from now on.
			fn(prev.Node, p, GPUReport{})
			return
		}
		fn(next.Node, p, t.peek(next))
	})
}

// reportOf reads a node's state; false when it says nothing of the GPUs.
func reportOf(st *telemetry.NodeState) (GPUReport, bool) {
	if st == nil || !st.GPUsKnown {
		return GPUReport{}, false
	}
	var r GPUReport
	for i := range st.GPUs {
		g := &st.GPUs[i]
		if g.Index < 0 {
			continue
		}
		for len(r.Layout) <= g.Index {
			r.Layout = append(r.Layout, nil)
		}
		if g.MIGEnabled() {
			r.Layout[g.Index] = g.Placements()
		}
		// A GPU without a verdict (no health in the report, which says
		// healthy false with no reason) is not held to be broken.
		if !g.Healthy && len(g.UnhealthyReasons) > 0 {
			r.Unhealthy = append(r.Unhealthy, g.Index)
		}
	}
	slices.Sort(r.Unhealthy)
	r.Unhealthy = slices.Compact(r.Unhealthy)
	r.Version = reportVersion(r.Layout, r.Unhealthy)
	return r, true
}

// reportVersion hashes a layout and the unhealthy GPUs, so that a node's
// view is rebuilt when either changes, not with every report.
func reportVersion(layout [][]gpu.Placement, unhealthy []int) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i, l := range layout {
		// Which GPUs are in MIG mode is part of the layout, instances or not.
		binary.LittleEndian.PutUint64(b[:], uint64(i)<<1)
		if l != nil {
			b[0] |= 1
		}
		h.Write(b[:])
		for _, p := range l {
			binary.LittleEndian.PutUint64(b[:], uint64(i)<<32|uint64(p.Start))
			h.Write(b[:])
			h.Write([]byte(p.Profile))
		}
	}
	for _, i := range unhealthy {
		binary.LittleEndian.PutUint64(b[:], ^uint64(i))
		h.Write(b[:])
	}
	return h.Sum64() | 1 // never 0, which means "no report"
}

// relaidOut reports whether a node that reported before reports its GPUs
// partitioned otherwise: on a node with static MIG partitioning the
// instances a pod may take are those reported, and the device plugin's
// allocatable update, which retries the pods, may come before the report
// (mig-parted reconfigures the GPU, the device plugin and the agent each
// see it in their own time). A retry then found the old layout, and the
// report that brought the new one retried nobody. A node's first report
// and the store dropping it are not a new layout.
func relaidOut(prev, next GPUReport) bool {
	if prev.Version == 0 || next.Version == 0 {
		return false
	}
	return !slices.EqualFunc(prev.Layout, next.Layout, func(a, b []gpu.Placement) bool {
		return (a == nil) == (b == nil) && slices.Equal(a, b)
	})
}

// recovered reports whether a GPU next reports healthy, or no longer
// reports at all, was unhealthy in prev.
func recovered(prev, next GPUReport) bool {
	for _, i := range prev.Unhealthy {
		if _, found := slices.BinarySearch(next.Unhealthy, i); !found {
			return true
		}
	}
	return false
}
