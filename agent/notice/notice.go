// Package notice watches the cloud's instance metadata service for reclaim
// notices: AWS IMDSv2 (agent/notice/aws), the GCE metadata server
// (agent/notice/gcp) and Azure Scheduled Events (agent/notice/azure). The
// node's providerID chooses the cloud (agent/notice/cloud).
//
// A Watcher turns one cloud's checks into the set of notices pending on the
// node, which the agent reports to the scheduler (it is the report loop's
// Reclaim source) and hands to the reclaim flow (agent/reclaim) once per
// notice.
//
// Two rules hold whatever the metadata service answers. A notice is only ever
// produced from a well-formed answer that says so: garbage, a truncated body,
// a wrong type, a body over MaxBodyBytes or a server that does not answer in
// time is an error, never a notice. A list of events is judged event by
// event: one that cannot be read is an error naming it, and the others are
// still notices (an Azure event whose Resources read and do not name this VM
// is another VM's, read or not, and no error). And a failed check never drops
// a notice already seen: the set only shrinks when the service answers,
// every event of its answer that may be this node's reads, and it no longer
// lists the notice.
//
// The clients are written here rather than taken from the clouds' SDKs: the
// three protocols are a few plain HTTP requests, and the SDK clients neither
// bound what they read nor take an endpoint per client (the GCE one reads it
// from the process environment), both of which the agent needs.
package notice

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// Notice is one pending reclaim of the node.
type Notice struct {
	// ID is stable for one event and differs between events: the
	// provider's event id, or one derived from what the provider says (AWS's
	// notice time; on GCE the ETag, the boot and how many events with that
	// ETag ended before), so that an agent that restarts recognises a notice
	// it already acted on and a later event is not taken for it.
	ID       string
	Kind     telemetryv1.ReclaimKind
	Provider telemetryv1.CloudProvider
	// Action is the provider's own word ("terminate", "TRUE", "Preempt").
	Action string
	// Detected is when this agent first saw the notice.
	Detected time.Time
	// Deadline is when the node goes away (or the maintenance starts); zero
	// when the provider promises none (a rebalance recommendation).
	Deadline time.Time
	// Estimated is set when the provider names no time and Deadline is the
	// detection plus the usual notice (GCE, an Azure event without
	// NotBefore): a later check's estimate, made from its own detection, is
	// not the cloud moving the event.
	Estimated bool
}

// NextDeadline is the deadline of a notice seen again, whose deadline was
// prev. The cloud's own time replaces it, later or earlier: clouds move
// maintenance they announced (Azure updates an event's NotBefore and keeps
// its EventId; an AWS scheduled event keeps its EventId when its start is
// rescheduled). An estimate only ever brings it earlier.
func NextDeadline(prev time.Time, n Notice) time.Time {
	if n.Deadline.IsZero() || (n.Estimated && !prev.IsZero() && prev.Before(n.Deadline)) {
		return prev
	}
	return n.Deadline
}

// Proto is the notice as the telemetry API carries it.
func (n Notice) Proto() *telemetryv1.ReclaimNotice {
	p := &telemetryv1.ReclaimNotice{
		Id: n.ID, Kind: n.Kind, Provider: n.Provider, Action: n.Action,
		DetectedAt: timestamppb.New(n.Detected),
	}
	if !n.Deadline.IsZero() {
		p.Deadline = timestamppb.New(n.Deadline)
	}
	return p
}

func (n Notice) String() string {
	d := "no deadline"
	if !n.Deadline.IsZero() {
		d = "deadline " + n.Deadline.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("%s %s (%s %q, %s)", n.Kind, n.ID, n.Provider, n.Action, d)
}

// Source is one cloud's metadata service.
type Source interface {
	// Provider names the cloud.
	Provider() telemetryv1.CloudProvider
	// Watch checks for notices until ctx ends. After every check it calls
	// observe with every notice pending now, and with the error that made
	// part of the check fail; with an error the list holds what the parts
	// that worked found. Detected is the time of the check that found a
	// notice. Watch must not call observe concurrently.
	Watch(ctx context.Context, observe func(notices []Notice, err error))
}

// Acknowledger is a Source whose cloud can be told that the node is ready to
// go (Azure's StartRequests), so that the cloud need not wait out the notice.
type Acknowledger interface {
	Acknowledge(ctx context.Context, noticeID string) error
}

// ErrNotOurs is what an Acknowledger's error wraps when it does not tell the
// cloud by design, not by failure: the event is not this node's alone to
// start (Azure starts an acknowledged event for every VM it names), or the
// cloud no longer lists it. The cloud then goes ahead at its deadline.
var ErrNotOurs = errors.New("the event is not this node's alone to acknowledge")

// Watcher keeps the set of pending notices from a Source.
type Watcher struct {
	src     Source
	log     logr.Logger
	metrics *Metrics

	mu       sync.Mutex
	pending  map[string]Notice
	status   *telemetryv1.CollectorStatus
	settled  bool // the last check succeeded
	handlers []func(Notice)
	movers   []func(Notice)
	// resumed holds when an earlier agent detected the notices whose work
	// it left unfinished (Resume), until each is seen again.
	resumed map[string]time.Time
}

// NewWatcher returns a watcher of src; Run starts it. metrics may be nil.
func NewWatcher(src Source, log logr.Logger, metrics *Metrics) *Watcher {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	// The series exist at 0 from the start: a node mostly sees one notice
	// in its life, and a series born at 1 shows no increase().
	provider := src.Provider().String()
	metrics.errors.WithLabelValues(provider)
	for k := range telemetryv1.ReclaimKind_name {
		if kind := telemetryv1.ReclaimKind(k); kind != telemetryv1.ReclaimKind_RECLAIM_KIND_UNSPECIFIED {
			metrics.notices.WithLabelValues(provider, reclaim.TaintValue(kind))
		}
	}
	return &Watcher{
		src: src, log: log, metrics: metrics,
		pending: map[string]Notice{},
		// Until a check finishes the notices are unknown, not none: the
		// reclaim coordinator takes a notice missing from a report whose
		// check is OK as withdrawn, and a restarted agent's first report
		// would call off the notice it is still acting on.
		status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: "no check finished yet"},
	}
}

// Source returns the watched source.
func (w *Watcher) Source() Source { return w.src }

// OnNotice registers f to be called once for each notice the first time it is
// seen. f runs on the watcher's goroutine and must return quickly.
func (w *Watcher) OnNotice(f func(Notice)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlers = append(w.handlers, f)
}

// OnMove registers f to be called with a pending notice each time its
// deadline moves. f runs on the watcher's goroutine and must return quickly.
func (w *Watcher) OnMove(f func(Notice)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.movers = append(w.movers, f)
}

// Resume tells the watcher when an earlier agent on this node detected the
// notices it left work unfinished for, by notice id; call it before Run.
// Such a notice, seen again, keeps that detection time rather than take the
// time of this agent's first check: the scheduler tells one announcement of
// a notice from a later one (withdrawn and announced again under the same
// id) by it, and would otherwise plan the gangs' checkpoints over again.
// Each time is used once, so a notice withdrawn since is detected anew.
func (w *Watcher) Resume(detected map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.resumed = maps.Clone(detected)
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	w.src.Watch(ctx, w.observe)
}

func (w *Watcher) observe(notices []Notice, err error) {
	provider := w.src.Provider().String()
	w.mu.Lock()
	var fresh, moved []Notice
	seen := make(map[string]bool, len(notices))
	for _, n := range notices {
		seen[n.ID] = true
		if old, ok := w.pending[n.ID]; ok {
			n.Detected = old.Detected
			if d := NextDeadline(old.Deadline, n); !d.Equal(n.Deadline) {
				n.Deadline, n.Estimated = d, old.Estimated
			}
			if !n.Deadline.Equal(old.Deadline) {
				w.log.Info("reclaim notice's deadline moved", "notice", n.ID, "deadline", n.Deadline, "was", old.Deadline)
				moved = append(moved, n)
			}
			w.pending[n.ID] = n
			continue
		}
		if at, ok := w.resumed[n.ID]; ok && !at.IsZero() {
			// An estimate counts from the detection: from the earlier
			// agent's, the time the work resumed keeps to (the reclaim
			// flow keeps the earlier deadline), not a later one.
			if n.Estimated && !n.Deadline.IsZero() && at.Before(n.Detected) {
				n.Deadline = n.Deadline.Add(at.Sub(n.Detected))
			}
			n.Detected = at
		}
		delete(w.resumed, n.ID)
		w.pending[n.ID] = n
		fresh = append(fresh, n)
	}
	if err == nil {
		for id := range w.pending {
			if !seen[id] {
				w.log.Info("reclaim notice withdrawn by the cloud", "notice", id)
				delete(w.pending, id)
			}
		}
		w.status = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}
		w.settled = true
	} else {
		w.settled = false
		w.metrics.errors.WithLabelValues(provider).Inc()
		msg := err.Error()
		if len(msg) > 900 {
			msg = msg[:900] + "..."
		}
		w.status = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: msg}
		w.log.V(1).Info("reclaim notice check failed", "error", msg)
	}
	w.metrics.pending.WithLabelValues(provider).Set(float64(len(w.pending)))
	handlers, movers := slices.Clone(w.handlers), slices.Clone(w.movers)
	w.mu.Unlock()

	for _, n := range fresh {
		w.metrics.notices.WithLabelValues(provider, reclaim.TaintValue(n.Kind)).Inc()
		w.log.Info("reclaim notice", "notice", n.ID, "kind", n.Kind.String(), "action", n.Action, "deadline", n.Deadline, "detected", n.Detected)
		for _, h := range handlers {
			h(n)
		}
	}
	for _, n := range moved {
		for _, h := range movers {
			h(n)
		}
	}
}

// Notices returns the pending notices, earliest deadline first.
func (w *Watcher) Notices() []Notice {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.noticesLocked()
}

func (w *Watcher) noticesLocked() []Notice {
	out := make([]Notice, 0, len(w.pending))
	for _, n := range w.pending {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Deadline.IsZero() != b.Deadline.IsZero() {
			return b.Deadline.IsZero()
		}
		if !a.Deadline.Equal(b.Deadline) {
			return a.Deadline.Before(b.Deadline)
		}
		return a.ID < b.ID
	})
	return out
}

// Settled returns the pending notices and whether the last check succeeded:
// only then does the absence of a notice mean the cloud announced none.
func (w *Watcher) Settled() ([]Notice, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.noticesLocked(), w.settled
}

// Fill implements the report loop's Source: the report's reclaim status and
// notices are Pending's.
func (w *Watcher) Fill(_ context.Context, r *telemetryv1.NodeReport) {
	r.Reclaim, r.ReclaimNotices = w.Pending()
}

// Pending returns the check's state and the pending notices (at most
// telemetryv1.MaxReclaimNotices, the most urgent), both as one check left
// them: a state that says OK with the notices of the moment before would
// withdraw those the check found.
func (w *Watcher) Pending() (*telemetryv1.CollectorStatus, []*telemetryv1.ReclaimNotice) {
	w.mu.Lock()
	notices, st := w.noticesLocked(), w.status
	w.mu.Unlock()
	if len(notices) > telemetryv1.MaxReclaimNotices {
		notices = notices[:telemetryv1.MaxReclaimNotices]
	}
	out := make([]*telemetryv1.ReclaimNotice, len(notices))
	for i, n := range notices {
		out[i] = n.Proto()
	}
	return st, out
}

// Relist folds n, an event the cloud lists again under kept's id, into
// kept: one id must be one notice, or the watcher would move the deadline
// between the two on every check. A copy says nothing new. Listings that
// differ leave which is meant unknown: the earlier deadline is taken, so
// that the checkpoints are not late, and Relist reports the difference for
// the caller to name as an error.
func Relist(kept *Notice, n Notice) (differ bool) {
	if n.Action == kept.Action && n.Deadline.Equal(kept.Deadline) && n.Estimated == kept.Estimated {
		return false
	}
	if n.Deadline.Before(kept.Deadline) {
		*kept = n
	}
	return true
}
