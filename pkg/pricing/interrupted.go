package pricing

import (
	"container/heap"
	"slices"
	"sort"
	"strings"
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
// Keys carry the namespace, so a tenant can only mark its own workloads.
// Past the limit, the namespace that holds the most workloads forgets the
// one a reclaim hit longest ago. A global "oldest first" let one tenant
// whose many small, uniquely named pods ran on reclaimed nodes (every live
// pod of one is recorded) push every other tenant's workloads out, and
// their long training without checkpoints back onto Spot; a fixed share per
// namespace would cap a cluster with one tenant far below the limit. This
// way a namespace that holds no more workloads than another never loses one
// to it. Persist keeps them in a ConfigMap, so that a restarted scheduler
// does not forget (a workload would otherwise lose one more run before it
// is kept off Spot again).
type Interrupted struct {
	mu    sync.Mutex
	limit int
	runs  map[string]InterruptedRun
	// order is the keys, the workload a reclaim hit longest ago first: the
	// first to forget past the limit.
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
	return &Interrupted{limit: limit, runs: map[string]InterruptedRun{}, changed: make(chan struct{}, 1)}
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

// Observe records that a reclaim at the given time ended a run of the pod
// that had lasted ran.
func (m *Interrupted) Observe(pod *corev1.Pod, ran time.Duration, at time.Time) {
	if m == nil || ran <= 0 {
		return
	}
	m.mu.Lock()
	m.record(InterruptedRun{Key: WorkloadKey(pod), Ran: ran, At: at})
	m.trim()
	m.mu.Unlock()
	metricInterruptedRuns.Inc()
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// record keeps the longer run and the later reclaim of r and what is known
// of its workload; trim then forgets past the limit. Order follows the
// reclaim times, not the order of the calls: a merged copy that still holds
// a workload forgotten here puts it back where it was, among the first to
// go, not among the newest. m.mu is held.
func (m *Interrupted) record(r InterruptedRun) {
	cur, seen := m.runs[r.Key]
	next := InterruptedRun{Key: r.Key, Ran: max(cur.Ran, r.Ran), At: cur.At}
	if r.At.After(cur.At) {
		next.At = r.At
	}
	m.runs[r.Key] = next
	if !seen || !next.At.Equal(cur.At) {
		if seen {
			m.order = slices.DeleteFunc(m.order, func(k string) bool { return k == r.Key })
		}
		// After every workload reclaimed at the same time or earlier: ties
		// keep the order they were recorded in.
		i := sort.Search(len(m.order), func(i int) bool { return m.runs[m.order[i]].At.After(next.At) })
		m.order = slices.Insert(m.order, i, r.Key)
	}
}

// trim forgets workloads past the limit, the fullest namespace's oldest
// first (shed). m.mu is held.
func (m *Interrupted) trim() {
	if len(m.order) > m.limit {
		namespaces := make([]string, len(m.order))
		for i, k := range m.order {
			namespaces[i] = workloadNamespace(k)
		}
		drop := shed(namespaces, func(int) int { return 1 }, m.limit)
		kept := m.order[:0]
		for i, k := range m.order {
			if drop[i] {
				delete(m.runs, k)
			} else {
				kept = append(kept, k)
			}
		}
		clear(m.order[len(kept):])
		m.order = kept
	}
	metricInterruptedWorkloads.Set(float64(len(m.runs)))
}

// workloadNamespace is the namespace in a WorkloadKey ("gang:label:ml/llm",
// "owner:ml/<uid>", "pod:ml/p").
func workloadNamespace(key string) string {
	ref, _, _ := strings.Cut(key, "/")
	return ref[strings.LastIndexByte(ref, ':')+1:]
}

// shed chooses what to leave out of a list, given oldest first as each
// entry's namespace and cost, so that the rest costs at most budget: each
// time the oldest entry of the namespace that holds the most entries (of
// two that hold as many, the one whose oldest entry is older). A namespace
// that floods the list loses its own entries; one that holds no more than
// another keeps its entries. drop[i] is whether entry i is left out.
func shed(namespaces []string, cost func(i int) int, budget int) (drop []bool) {
	total := 0
	byNamespace := map[string]*namespaceEntries{}
	for i, ns := range namespaces {
		total += cost(i)
		q := byNamespace[ns]
		if q == nil {
			q = &namespaceEntries{}
			byNamespace[ns] = q
		}
		q.entries = append(q.entries, i)
	}
	drop = make([]bool, len(namespaces))
	if total <= budget {
		return drop
	}
	h := make(fullest, 0, len(byNamespace))
	for _, q := range byNamespace {
		h = append(h, q)
	}
	heap.Init(&h)
	for total > budget && len(h) > 0 {
		q := h[0]
		i := q.entries[0]
		drop[i] = true
		total -= cost(i)
		if q.entries = q.entries[1:]; len(q.entries) == 0 {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return drop
}

// namespaceEntries is one namespace's entries in shed, oldest first.
type namespaceEntries struct{ entries []int }

// fullest is a heap of namespaces, the one shed leaves an entry of out next
// on top.
type fullest []*namespaceEntries

func (h fullest) Len() int { return len(h) }
func (h fullest) Less(i, j int) bool {
	a, b := h[i].entries, h[j].entries
	return len(a) > len(b) || len(a) == len(b) && a[0] < b[0]
}
func (h fullest) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *fullest) Push(x any)   { *h = append(*h, x.(*namespaceEntries)) }
func (h *fullest) Pop() any {
	old := *h
	q := old[len(old)-1]
	*h = old[:len(old)-1]
	return q
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
	return m.runs[key].Ran
}

// InterruptedRun is one workload's longest run a reclaim cut short.
type InterruptedRun struct {
	Key string
	Ran time.Duration
	// At is when a reclaim last cut one of the workload's runs short (zero
	// in a copy saved before Penny recorded it: the oldest).
	At time.Time
}

// Runs lists what is remembered, the workload reclaimed longest ago first.
func (m *Interrupted) Runs() []InterruptedRun {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]InterruptedRun, len(m.order))
	for i, k := range m.order {
		out[i] = m.runs[k]
	}
	return out
}

// Merge adds runs recorded elsewhere (a saved copy, another replica): per
// workload the longer run and the later reclaim are kept.
func (m *Interrupted) Merge(runs []InterruptedRun) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range runs {
		if r.Ran > 0 {
			m.record(r)
		}
	}
	m.trim()
}
