package pricing

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
)

// DefaultInterruptedLimit bounds how many workloads Interrupted remembers.
const DefaultInterruptedLimit = 10000

// Interrupted remembers, per workload, the longest run a Spot reclaim cut
// short. A pod's declared class says nothing about how long a job without
// checkpoints runs, but a reclaim that cut a run short after 30 h shows it
// outlives a Spot node, and placed on Spot again it would likely lose the
// next run as well (in a replay, a 64-GPU, 20-day gang without checkpoints
// was reclaimed 52 times before it found on-demand capacity). SpotRisk reads
// it; the reclaim coordinator and the simulator record every reclaim.
//
// A workload is a gang (all its members and the pods that replace them),
// else the pod's controller (a Job's replacement pods), else the pod itself.
// Keys carry the namespace, so a tenant can only mark its own workloads. The
// oldest workloads are forgotten first past the limit. Persist keeps them in
// a ConfigMap, so that a restarted scheduler does not forget (a workload
// would otherwise lose one more run before it is kept off Spot again).
type Interrupted struct {
	mu    sync.Mutex
	limit int
	runs  map[string]time.Duration
	// order is the keys in the order they were first seen, for forgetting.
	order []string
	// changed is signalled, without blocking, whenever a run is recorded.
	changed chan struct{}
}

// NewInterrupted remembers at most limit workloads (DefaultInterruptedLimit
// when limit <= 0).
func NewInterrupted(limit int) *Interrupted {
	if limit <= 0 {
		limit = DefaultInterruptedLimit
	}
	return &Interrupted{limit: limit, runs: map[string]time.Duration{}, changed: make(chan struct{}, 1)}
}

// WorkloadKey is the workload a pod belongs to, for Interrupted.
func WorkloadKey(pod *corev1.Pod) string {
	if ref, ok := gang.RefOf(pod); ok {
		return "gang:" + ref.Key()
	}
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			return "owner:" + pod.Namespace + "/" + string(o.UID)
		}
	}
	return "pod:" + pod.Namespace + "/" + pod.Name
}

// Observe records that a reclaim ended a run of the pod that had lasted ran.
func (m *Interrupted) Observe(pod *corev1.Pod, ran time.Duration) {
	if m == nil || ran <= 0 {
		return
	}
	m.mu.Lock()
	m.record(WorkloadKey(pod), ran)
	m.mu.Unlock()
	metricInterruptedRuns.Inc()
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// record keeps the longer of the run and what is known of the workload.
// m.mu is held.
func (m *Interrupted) record(key string, ran time.Duration) {
	cur, seen := m.runs[key]
	if !seen {
		m.order = append(m.order, key)
		for len(m.order) > m.limit {
			delete(m.runs, m.order[0])
			m.order = m.order[1:]
		}
	}
	m.runs[key] = max(cur, ran)
	metricInterruptedWorkloads.Set(float64(len(m.runs)))
}

// Longest is the longest run of the pod's workload that a reclaim cut
// short; 0 when none did (or it was forgotten).
func (m *Interrupted) Longest(pod *corev1.Pod) time.Duration {
	if m == nil {
		return 0
	}
	key := WorkloadKey(pod)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runs[key]
}

// InterruptedRun is one workload's longest run a reclaim cut short.
type InterruptedRun struct {
	Key string
	Ran time.Duration
}

// Runs lists what is remembered, oldest workload first.
func (m *Interrupted) Runs() []InterruptedRun {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]InterruptedRun, len(m.order))
	for i, k := range m.order {
		out[i] = InterruptedRun{Key: k, Ran: m.runs[k]}
	}
	return out
}

// Merge adds runs recorded elsewhere (a saved copy, another replica): per
// workload the longer run is kept, and workloads new here count as the
// newest, in the order given.
func (m *Interrupted) Merge(runs []InterruptedRun) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range runs {
		if r.Ran > 0 {
			m.record(r.Key, r.Ran)
		}
	}
}
