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
// oldest workloads are forgotten first past the limit. Nothing is persisted:
// a restarted scheduler forgets, and a workload may then lose one more run
// before it is kept off Spot again.
type Interrupted struct {
	mu    sync.Mutex
	limit int
	runs  map[string]time.Duration
	// order is the keys in the order they were first seen, for forgetting.
	order []string
}

// NewInterrupted remembers at most limit workloads (DefaultInterruptedLimit
// when limit <= 0).
func NewInterrupted(limit int) *Interrupted {
	if limit <= 0 {
		limit = DefaultInterruptedLimit
	}
	return &Interrupted{limit: limit, runs: map[string]time.Duration{}}
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
	key := WorkloadKey(pod)
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, seen := m.runs[key]
	if !seen {
		m.order = append(m.order, key)
		for len(m.order) > m.limit {
			delete(m.runs, m.order[0])
			m.order = m.order[1:]
		}
	}
	m.runs[key] = max(cur, ran)
	metricInterruptedRuns.Inc()
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
