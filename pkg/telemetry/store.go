// Package telemetry is penny-scheduler's side of the agent telemetry API: a
// gRPC server that authenticates each penny-agent by its ServiceAccount token
// and accepts reports only about the node that token is bound to, and an
// in-memory store of the latest report per node that plugins read.
//
// Plugins see the store through Reader. Reads take no lock: each node's state
// is an immutable snapshot behind an atomic pointer, replaced whole when a
// report arrives, in a copy-on-write map, so Filter and Score never wait for
// a writer. A node whose
// last report is older than the store's max age reads as unknown, and
// plugins then fall back to what the cluster snapshot says (capacity counts).
package telemetry

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gpu"
)

// Reader is what plugins use. Implementations never block.
type Reader interface {
	// Node returns the node's latest state if it is fresh (received within
	// the store's max age), and false when the node is unknown or stale.
	// The returned state is immutable and may be kept.
	Node(name string) (*NodeState, bool)
}

// Notifier is a Reader that says when a node's state changes, for a plugin
// whose verdict on a node a report can change with no cluster event to tell
// the scheduler (a reclaim notice withdrawn).
type Notifier interface {
	Reader
	// Subscribe has fn see every applied update, as StoreOptions.OnUpdate
	// does, and every node the store drops (next nil: deleted from the
	// cluster, or silent too long), until cancel is called.
	Subscribe(fn func(prev, next *NodeState)) (cancel func())
}

// NodeState is what the scheduler knows about one node from its agent.
// Nothing in it may be modified: the store replaces it whole.
type NodeState struct {
	Node string
	// ReceivedAt is the scheduler's clock when the report arrived; freshness
	// is judged by it, not by the agent's clock.
	ReceivedAt  time.Time
	CollectedAt time.Time
	AgentID     string
	Sequence    uint64

	// GPUsKnown is false when the agent could not read NVML (no driver, or
	// an error): GPUs is then empty and says nothing about the node.
	GPUsKnown bool
	// NoDriver is true when the agent found no NVIDIA driver: a node
	// without usable GPUs, whatever its capacity says.
	NoDriver bool
	GPUs     []GPU
	// PodDevicesKnown is true when the kubelet's PodResources answered, so
	// a GPU or MIG instance without a pod is really free.
	PodDevicesKnown bool
	// ReclaimNotices pending on the node.
	ReclaimNotices []ReclaimNotice
	// NoticesKnown is true when the agent's last check for reclaim notices
	// answered: only then does a notice missing from ReclaimNotices mean
	// the cloud no longer announces it.
	NoticesKnown bool
}

// The store keeps only this typed view, not the report it came from: a
// decoded report is several times larger and full of pointers, and at
// 5,000 nodes the garbage collector would scan all of it in every cycle.
// A field plugins need is lifted into the view here.

// GPU is one physical GPU of a node.
type GPU struct {
	UUID    string
	Index   int
	Product string
	// Model is pkg/gpu's model for Product; nil when Penny does not know it.
	Model       *gpu.Model
	MemoryBytes uint64
	MIGMode     telemetryv1.MIGMode
	// MIG lists the MIG instances, by placement; empty unless MIG is enabled.
	MIG []MIGInstance
	// Pods hold the whole GPU (several when time-sliced).
	Pods []PodRef
	// Healthy is the agent's verdict; UnhealthyReasons say why not.
	Healthy          bool
	UnhealthyReasons []string
	// UtilizationPercent is -1 when unknown (MIG mode, or not reported).
	UtilizationPercent int
}

// MIGEnabled reports whether the GPU is partitioned.
func (g *GPU) MIGEnabled() bool { return g.MIGMode == telemetryv1.MIGMode_MIG_MODE_ENABLED }

// FreeMIG counts the instances of profile that exist and no pod holds.
func (g *GPU) FreeMIG(profile string) int {
	n := 0
	for i := range g.MIG {
		if g.MIG[i].Profile == profile && g.MIG[i].Pod == nil {
			n++
		}
	}
	return n
}

// Placements returns the MIG layout as pkg/gpu reads it, one entry per GPU
// instance, with attribute suffixes dropped ("1g.5gb+me" takes the place of
// a 1g.5gb).
func (g *GPU) Placements() []gpu.Placement {
	out := make([]gpu.Placement, 0, len(g.MIG))
	for i, m := range g.MIG {
		// Compute instances of one GPU instance are adjacent (sorted by
		// placement) and share its placement.
		if i > 0 && g.MIG[i-1].GPUInstanceID == m.GPUInstanceID {
			continue
		}
		name := m.Profile
		if p, err := telemetryv1.ParseMIGProfile(name); err == nil {
			name = p.Name
		}
		out = append(out, gpu.Placement{Profile: name, Start: m.Start})
	}
	return out
}

// MIGInstance is one MIG device.
type MIGInstance struct {
	UUID          string
	Profile       string
	GPUInstanceID int
	Start, Size   int
	// Pod holds the instance; nil when it is free.
	Pod *PodRef
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name string
}

// ReclaimNotice is a pending reclaim of the node.
type ReclaimNotice struct {
	ID       string
	Kind     telemetryv1.ReclaimKind
	Provider telemetryv1.CloudProvider
	Action   string
	Detected time.Time
	// Deadline is zero when the provider promised none (rebalance advice).
	Deadline time.Time
}

// Reclaiming reports whether the node is being taken away: a pending spot
// interruption or termination (not mere advice or maintenance).
func (n *NodeState) Reclaiming() bool {
	for _, r := range n.ReclaimNotices {
		if r.Kind == telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION || r.Kind == telemetryv1.ReclaimKind_RECLAIM_KIND_TERMINATION {
			return true
		}
	}
	return false
}

// newNodeState builds the typed view of a validated report.
func newNodeState(r *telemetryv1.NodeReport, received time.Time) *NodeState {
	s := &NodeState{
		Node:            r.GetNodeName(),
		ReceivedAt:      received,
		CollectedAt:     r.GetCollectedAt().AsTime(),
		AgentID:         r.GetAgentId(),
		Sequence:        r.GetSequence(),
		GPUsKnown:       r.GetNvml().GetState() == telemetryv1.CollectorStatus_STATE_OK,
		NoDriver:        r.GetNvml().GetState() == telemetryv1.CollectorStatus_STATE_UNAVAILABLE,
		PodDevicesKnown: r.GetPodResources().GetState() == telemetryv1.CollectorStatus_STATE_OK,
		NoticesKnown:    r.GetReclaim().GetState() == telemetryv1.CollectorStatus_STATE_OK,
	}
	if s.GPUsKnown {
		s.GPUs = make([]GPU, len(r.GetGpus()))
		for i, g := range r.GetGpus() {
			model, _ := gpu.LookupModel(g.GetProduct())
			out := &s.GPUs[i]
			*out = GPU{
				UUID: g.GetUuid(), Index: int(g.GetIndex()), Product: g.GetProduct(), Model: model,
				MemoryBytes: g.GetMemoryTotalBytes(), MIGMode: g.GetMigMode(),
				Healthy: g.GetHealth().GetHealthy(), UnhealthyReasons: g.GetHealth().GetReasons(),
				UtilizationPercent: -1,
			}
			if g.UtilizationPercent != nil {
				out.UtilizationPercent = int(g.GetUtilizationPercent())
			}
			for _, p := range g.GetPods() {
				out.Pods = append(out.Pods, PodRef{Namespace: p.GetNamespace(), Name: p.GetName()})
			}
			if n := len(g.GetMigInstances()); n > 0 {
				out.MIG = make([]MIGInstance, n)
				for j, m := range g.GetMigInstances() {
					out.MIG[j] = MIGInstance{
						UUID: m.GetUuid(), Profile: m.GetProfile(), GPUInstanceID: int(m.GetGpuInstanceId()),
						Start: int(m.GetPlacementStart()), Size: int(m.GetPlacementSize()),
					}
					if p := m.GetPod(); p != nil {
						out.MIG[j].Pod = &PodRef{Namespace: p.GetNamespace(), Name: p.GetName()}
					}
				}
				// The view lists instances by placement, whatever order the
				// report has them in (validation does not require one): the
				// compute instances of a GPU instance share its placement, so
				// they end up adjacent, which Placements relies on. Distinct
				// GPU instances never share a start; the sort is stable, so
				// a GPU instance's compute instances keep the report's order.
				slices.SortStableFunc(out.MIG, func(a, b MIGInstance) int { return cmp.Compare(a.Start, b.Start) })
			}
		}
	}
	for _, n := range r.GetReclaimNotices() {
		rn := ReclaimNotice{ID: n.GetId(), Kind: n.GetKind(), Provider: n.GetProvider(), Action: n.GetAction(), Detected: n.GetDetectedAt().AsTime()}
		if n.GetDeadline() != nil {
			rn.Deadline = n.GetDeadline().AsTime()
		}
		s.ReclaimNotices = append(s.ReclaimNotices, rn)
	}
	return s
}

// Store holds the latest state of every node that reported.
type Store struct {
	maxAge atomic.Int64 // time.Duration
	now    func() time.Time
	// nodes maps node names to entries, copy-on-write: readers load the
	// map with one atomic load and never lock; a node's reports replace the
	// state inside its entry without touching the map, so the map is only
	// copied when a node joins or is dropped. (A copy-on-write Go map reads
	// about four times faster than sync.Map here, and twice as fast as a
	// map behind a read lock.)
	nodes atomic.Pointer[map[string]*entry]
	// membership serialises joins and drops.
	membership sync.Mutex
	// onUpdate, when set, sees every applied update (writer side).
	onUpdate func(prev, next *NodeState)
	// subscribers see every applied update after onUpdate (Subscribe):
	// copy-on-write, so that a report does not wait for a subscriber that
	// joins or leaves; subscribing serialises the writers of the list.
	subscribers atomic.Pointer[[]*subscriber]
	subscribing sync.Mutex
}

// subscriber is a pointer so that cancel removes this subscription, not
// another with the same func.
type subscriber struct{ fn func(prev, next *NodeState) }

type entry struct {
	state atomic.Pointer[NodeState]
	// mu orders writers of one node; readers never take it.
	mu sync.Mutex
	// dropped is set, under mu, once drop has taken the entry out of the
	// map: a writer that found the entry just before must not store into it.
	dropped bool
}

// StoreOptions configure a Store.
type StoreOptions struct {
	// MaxAge is how long a report counts as fresh (DefaultMaxAge when 0).
	MaxAge time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// OnUpdate is called after each applied update, on the writer's
	// goroutine, with the previous state (nil for a new node). It is how a
	// component reacts to a change (a new reclaim notice) without polling.
	// It must return quickly: the node's next report waits for it. Others
	// join through Store.Subscribe.
	OnUpdate func(prev, next *NodeState)
}

// DefaultMaxAge is four of the agent's default resend intervals: a node
// turns unknown after it missed three reports in a row.
const DefaultMaxAge = 20 * time.Second

// NewStore returns an empty store.
func NewStore(o StoreOptions) *Store {
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{now: o.Now, onUpdate: o.OnUpdate}
	s.maxAge.Store(int64(o.MaxAge))
	s.nodes.Store(&map[string]*entry{})
	return s
}

// MaxAge returns how long a report counts as fresh.
func (s *Store) MaxAge() time.Duration { return time.Duration(s.maxAge.Load()) }

// SetMaxAge changes how long a report counts as fresh (flags are parsed
// after the store is handed to the plugins).
func (s *Store) SetMaxAge(d time.Duration) {
	if d > 0 {
		s.maxAge.Store(int64(d))
	}
}

var _ Notifier = &Store{}

// Subscribe implements Notifier: fn is called after each applied update, on
// the writer's goroutine, after StoreOptions.OnUpdate and under the same
// rules (it must return quickly), and after each drop, on the goroutine
// that pruned or forgot the node, with next nil. A store outlives the
// plugins built on it (a scheduler's profiles, a restart in tests), and
// each cancels its own subscription when it stops.
func (s *Store) Subscribe(fn func(prev, next *NodeState)) (cancel func()) {
	sub := &subscriber{fn: fn}
	s.subscribing.Lock()
	defer s.subscribing.Unlock()
	var subs []*subscriber
	if old := s.subscribers.Load(); old != nil {
		subs = slices.Clone(*old)
	}
	subs = append(subs, sub)
	s.subscribers.Store(&subs)
	return func() {
		s.subscribing.Lock()
		defer s.subscribing.Unlock()
		subs := slices.DeleteFunc(slices.Clone(*s.subscribers.Load()), func(o *subscriber) bool { return o == sub })
		s.subscribers.Store(&subs)
	}
}

// Node implements Reader.
func (s *Store) Node(name string) (*NodeState, bool) {
	st, fresh := s.Lookup(name)
	if !fresh {
		return nil, false
	}
	return st, true
}

// Lookup returns the node's latest state however old, and whether it is
// fresh; nil when the node never reported.
func (s *Store) Lookup(name string) (*NodeState, bool) {
	e := (*s.nodes.Load())[name]
	if e == nil {
		return nil, false
	}
	st := e.state.Load()
	if st == nil {
		return nil, false
	}
	return st, s.now().Sub(st.ReceivedAt) <= s.MaxAge()
}

// Update stores a validated report received at received. It returns false
// when the report is older than what the store holds: an earlier sequence
// of the same agent, or another agent's report collected before the current
// one while the current one is fresh (two agents overlap briefly during a
// rolling update).
func (s *Store) Update(r *telemetryv1.NodeReport, received time.Time) bool {
	e := s.join(r.GetNodeName())
	e.mu.Lock()
	for e.dropped {
		// Pruned between join and the lock: a report stored here would be
		// lost until the agent's next one. joinLocked waits for the drop
		// to publish its map.
		e.mu.Unlock()
		e = s.joinLocked(r.GetNodeName())
		e.mu.Lock()
	}
	defer e.mu.Unlock()
	prev := e.state.Load()
	if prev != nil {
		if prev.AgentID == r.GetAgentId() && r.GetSequence() <= prev.Sequence {
			return false
		}
		// Agent clocks settle only an overlap of two live agents: once the
		// held report is stale its agent is gone, and whatever the next
		// one's clock says, it is the node's only voice.
		if prev.AgentID != r.GetAgentId() && r.GetCollectedAt().AsTime().Before(prev.CollectedAt) && received.Sub(prev.ReceivedAt) <= s.MaxAge() {
			return false
		}
	}
	next := newNodeState(r, received)
	e.state.Store(next)
	if s.onUpdate != nil {
		s.onUpdate(prev, next)
	}
	if subs := s.subscribers.Load(); subs != nil {
		for _, sub := range *subs {
			sub.fn(prev, next)
		}
	}
	return true
}

// join returns the node's entry, adding one if the node is new.
func (s *Store) join(name string) *entry {
	if e := (*s.nodes.Load())[name]; e != nil {
		return e
	}
	return s.joinLocked(name)
}

// joinLocked is join under the membership lock.
func (s *Store) joinLocked(name string) *entry {
	s.membership.Lock()
	defer s.membership.Unlock()
	old := *s.nodes.Load()
	if e := old[name]; e != nil {
		return e
	}
	m := make(map[string]*entry, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	e := &entry{}
	m[name] = e
	s.nodes.Store(&m)
	return e
}

// Forget drops a node (deleted from the cluster).
func (s *Store) Forget(name string) {
	s.drop(func(n string, _ *NodeState) bool { return n == name })
}

// ForgetStaleIf drops the nodes whose last report is stale and for which
// gone says so.
func (s *Store) ForgetStaleIf(gone func(name string) bool) {
	now := s.now()
	s.drop(func(n string, st *NodeState) bool {
		return st != nil && now.Sub(st.ReceivedAt) > s.MaxAge() && gone(n)
	})
}

// drop removes the nodes for which gone says so. gone runs without the
// node's lock (it may be slow, e.g. a lister lookup); a report stored while
// it ran keeps the node. Subscribers then see each node dropped with a
// report, as (its last state, nil): a GPU its last report held broken is
// free again, which no cluster event says when the node stays.
func (s *Store) drop(gone func(name string, st *NodeState) bool) {
	var dropped []*NodeState
	defer func() {
		if subs := s.subscribers.Load(); subs != nil {
			for _, st := range dropped {
				for _, sub := range *subs {
					sub.fn(st, nil)
				}
			}
		}
	}()
	s.membership.Lock()
	defer s.membership.Unlock()
	old := *s.nodes.Load()
	m := make(map[string]*entry, len(old))
	for k, e := range old {
		st := e.state.Load()
		if !gone(k, st) {
			m[k] = e
			continue
		}
		e.mu.Lock()
		if e.state.Load() == st {
			e.dropped = true
			if st != nil {
				dropped = append(dropped, st)
			}
		} else {
			m[k] = e
		}
		e.mu.Unlock()
	}
	if len(m) != len(old) {
		s.nodes.Store(&m)
	}
}

// Prune drops nodes that have not reported for longer than olderThan, so
// that nodes removed from the cluster do not stay in memory. It returns how
// many nodes remain, and how many of those are fresh.
func (s *Store) Prune(olderThan time.Duration) (total, fresh int) {
	now := s.now()
	s.drop(func(_ string, st *NodeState) bool { return st != nil && now.Sub(st.ReceivedAt) > olderThan })
	for _, e := range *s.nodes.Load() {
		if st := e.state.Load(); st != nil {
			total++
			if now.Sub(st.ReceivedAt) <= s.MaxAge() {
				fresh++
			}
		}
	}
	return total, fresh
}
