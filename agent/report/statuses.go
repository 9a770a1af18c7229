package report

import (
	"sort"
	"sync"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// MaxQueuedStatuses bounds the checkpoint statuses waiting for one scheduler
// endpoint; beyond it the oldest are dropped (and counted). A checkpoint
// command yields a status or two per pod, so this holds the statuses of
// every pod on a node several times over.
const MaxQueuedStatuses = 256

// queuedStatus is a checkpoint status on its way to a scheduler endpoint.
type queuedStatus struct {
	// seq orders the statuses the agent produced (client-wide, from 1), so
	// that statuses handed from one endpoint to another keep their order
	// and an endpoint is handed only those it never had.
	seq uint64
	st  *telemetryv1.CheckpointStatus
}

// statusQueue holds an endpoint's statuses, oldest first, across its
// streams: one taken off and not sent goes back to the front.
type statusQueue struct {
	mu    sync.Mutex
	items []queuedStatus
	// ready holds a token when statuses were queued since it was last
	// drained.
	ready chan struct{}
}

func newStatusQueue() *statusQueue {
	return &statusQueue{ready: make(chan struct{}, 1)}
}

// push adds q at the back and returns how many of the oldest statuses were
// dropped to make room.
func (q *statusQueue) push(s queuedStatus) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = append(q.items, s)
	return q.settle()
}

// putBack returns a status that was taken and could not be sent to the
// front, where it was.
func (q *statusQueue) putBack(s queuedStatus) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = append([]queuedStatus{s}, q.items...)
	return q.settle()
}

// merge adds statuses of another queue in the order the agent produced
// them, skipping any the queue holds already.
func (q *statusQueue) merge(in []queuedStatus) int {
	if len(in) == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	have := make(map[uint64]bool, len(q.items))
	for _, s := range q.items {
		have[s.seq] = true
	}
	for _, s := range in {
		if !have[s.seq] {
			have[s.seq] = true
			q.items = append(q.items, s)
		}
	}
	sort.SliceStable(q.items, func(i, j int) bool { return q.items[i].seq < q.items[j].seq })
	return q.settle()
}

// settle drops the oldest statuses beyond the bound, signals ready when
// something is queued, and returns how many it dropped. q.mu is held.
func (q *statusQueue) settle() int {
	dropped := 0
	if n := len(q.items) - MaxQueuedStatuses; n > 0 {
		dropped = n
		q.items = append([]queuedStatus(nil), q.items[n:]...)
	}
	if len(q.items) > 0 {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return dropped
}

// pop takes the oldest status.
func (q *statusQueue) pop() (queuedStatus, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return queuedStatus{}, false
	}
	s := q.items[0]
	q.items[0] = queuedStatus{}
	q.items = q.items[1:]
	return s, true
}

// take empties the queue and returns what it held.
func (q *statusQueue) take() []queuedStatus {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}
