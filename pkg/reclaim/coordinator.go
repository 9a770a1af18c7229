package reclaim

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
)

// Commander sends checkpoint commands to the agent of a node
// (telemetry.Server).
type Commander interface {
	// SendCheckpoint returns how many of the node's agent streams took the
	// command; 0 means the agent is not connected to this replica.
	SendCheckpoint(node string, cmd *telemetryv1.CheckpointCommand) (int, error)
}

// CoordinatorOptions configure the coordinator.
type CoordinatorOptions struct {
	Client   kubernetes.Interface
	Commands Commander
	// Risk receives every Spot interruption observed, so the reclaim-risk
	// model SpotRisk reads accounts for it when the gang is placed again.
	// Optional.
	Risk pricing.ReclaimFeed
	// Interrupted receives, for every pod on a node with a Spot
	// interruption notice, how long it had run: SpotRisk keeps training
	// without checkpoints that a reclaim interrupted off Spot. Optional.
	Interrupted *pricing.Interrupted
	Policy      Policy
	// KeepGangsRunning turns off evicting the members of an affected gang on
	// the nodes that are not reclaimed (they are still asked to checkpoint).
	KeepGangsRunning bool
	// SafetyMargin is the agents' (DefaultSafetyMargin): members on other
	// nodes are evicted when their checkpoints are in, or at the deadline
	// less this margin.
	SafetyMargin time.Duration
	// Notices keeps the notices being handled and their gangs across
	// restarts; nil keeps them in memory only.
	Notices *NoticeStore
	// SaveObserved writes what Risk and Interrupted hold to their saved
	// copy (their Save). A notice's record is written only once its Spot
	// interruption is saved through it: a restarted scheduler takes a
	// recorded notice as observed and does not feed it again (that would
	// count the reclaim twice), so a record written first and a crash
	// before the next periodic save lost the reclaim and the runs it cut
	// short for good. Optional.
	SaveObserved func(context.Context) error
	// Recorder records events on pods; one writing to the API server when
	// nil.
	Recorder record.EventRecorder
	Log      logr.Logger
}

// DefaultSafetyMargin matches the agent's default.
const DefaultSafetyMargin = 5 * time.Second

// Coordinator is the scheduler's side of a reclaim. When an agent reports a
// notice, it finds the gangs with a member on that node, commands the agents
// of every other member's node to checkpoint those members by the notice's
// deadline, evicts those members once their checkpoints are in so the gang
// leaves together (the reclaimed node's agent evicts its own), and feeds the
// observed reclaim to the risk model.
//
// It acts on what authenticated agents report about their own node and on
// the API server's view of pods; a notice never makes it touch a pod that is
// not in a gang with a pod on the reporting node.
type Coordinator struct {
	mu      sync.Mutex
	queue   []nodeNotice
	seen    map[string]time.Time // node/notice id -> deadline
	fanouts map[string]*fanout   // by command id
	// waiting holds the notices whose handling has not started to act
	// (scheduled maintenance waits for its lead time), by node/notice id:
	// the agent dropping the notice calls their handling off.
	waiting map[string]*callOff
	// moves carries to each notice being handled, by node/notice id, the
	// latest deadline its agent reported when the cloud moved it.
	moves map[string]chan time.Time
	// recorded holds a notice's record, by node/notice id: a restarted
	// coordinator no longer finds its gangs on the reclaimed node, whose
	// agent has usually evicted its pods already, and must act only on the
	// members the record names.
	recorded map[string]noticeRecord
	// unsure holds, by node, the ids of notices that no report of the
	// node's with its notices known has shown since this coordinator took
	// them up from elsewhere than such a report: resumed from their records,
	// or left out of a report whose notice check failed. The node's next
	// report with its notices known settles them: a notice it lacks, the
	// cloud withdrew meanwhile. unsureNodes is len(unsure), so that the
	// reports of nodes without notices need no lock.
	unsure      map[string]map[string]bool
	unsureNodes atomic.Int32
	// reclaimed holds, by node, until when the node's Spot interruption fed
	// to the risk model stands for any other its agent reports (firstReclaim).
	reclaimed map[string]time.Time

	wake     chan struct{}
	started  bool
	opts     CoordinatorOptions
	recorder record.EventRecorder
}

type nodeNotice struct {
	node   string
	notice telemetry.ReclaimNotice
}

func (nn nodeNotice) key() string { return nn.node + "/" + nn.notice.ID }

// callOff cancels the handling of a notice the agent no longer reports.
type callOff struct {
	cancel context.CancelFunc
	// detected dates the announcement being handled: the same id reported
	// with a later date was withdrawn and announced again.
	detected time.Time
}

// NewCoordinator returns a coordinator that collects notices until Run
// starts acting on them; hand OnNodeUpdate to the telemetry store and
// OnCheckpointStatus to the telemetry server.
func NewCoordinator() *Coordinator {
	registerMetrics()
	return &Coordinator{seen: map[string]time.Time{}, fanouts: map[string]*fanout{}, waiting: map[string]*callOff{}, moves: map[string]chan time.Time{},
		recorded: map[string]noticeRecord{}, unsure: map[string]map[string]bool{}, reclaimed: map[string]time.Time{}, wake: make(chan struct{}, 1)}
}

// OnNodeUpdate is the telemetry store's OnUpdate hook: it picks out the
// notices next has that prev had not; those prev had that next has not: the
// cloud withdrew them (maintenance called off), and the agent, which then
// leaves its pods in place, drops them; and those whose deadline the cloud
// moved (it keeps a maintenance event's id), which the agent follows. It
// never blocks.
//
// A notice missing from a report whose notice check failed may still be
// pending (a restarted agent whose first check failed reports none), so
// such a report withdraws nothing: the node's next report with its notices
// known does (unsure).
func (c *Coordinator) OnNodeUpdate(prev, next *telemetry.NodeState) {
	if len(next.ReclaimNotices) == 0 && (prev == nil || len(prev.ReclaimNotices) == 0) && c.unsureNodes.Load() == 0 {
		return
	}
	known := map[string]telemetry.ReclaimNotice{}
	if prev != nil {
		for _, n := range prev.ReclaimNotices {
			known[n.ID] = n
		}
	}
	reported := map[string]bool{}
	var fresh, moved []nodeNotice
	for _, n := range next.ReclaimNotices {
		reported[n.ID] = true
		switch was, ok := known[n.ID]; {
		// Dated later: withdrawn and announced again between the two
		// reports, which Run tells from a move.
		case !ok, n.Detected.After(was.Detected):
			fresh = append(fresh, nodeNotice{node: next.Node, notice: n})
		case !n.Deadline.Equal(was.Deadline):
			moved = append(moved, nodeNotice{node: next.Node, notice: n})
		}
	}
	var gone []string
	for id := range known {
		if !reported[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Lock()
	withdrawn := c.settleLocked(next, gone, reported)
	if len(fresh) == 0 && len(withdrawn) == 0 && len(moved) == 0 {
		c.mu.Unlock()
		return
	}
	for _, key := range withdrawn {
		c.queue = slices.DeleteFunc(c.queue, func(nn nodeNotice) bool { return nn.key() == key })
		c.callOffLocked(key)
	}
	for _, nn := range moved {
		// Not started yet: it starts with the deadline last reported.
		for i := range c.queue {
			if c.queue[i].key() == nn.key() {
				c.queue[i].notice = nn.notice
			}
		}
		c.forwardLocked(nn)
	}
	c.queue = append(c.queue, fresh...)
	c.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// callOffLocked calls off the handling of a notice withdrawn, unless it
// acts already: gang members on other nodes are evicted only together with
// the member on the reclaimed node, which now stays.
func (c *Coordinator) callOffLocked(key string) {
	if w := c.waiting[key]; w != nil {
		w.cancel()
		delete(c.waiting, key)
		delete(c.seen, key) // announced again, it is handled again
	}
}

// settleLocked returns the keys of the notices next shows withdrawn: with
// its notices known, those gone (in the node's previous report, not in
// next) and the node's unsure ones next lacks; with them unknown, none,
// and those gone become unsure.
func (c *Coordinator) settleLocked(next *telemetry.NodeState, gone []string, reported map[string]bool) []string {
	defer func() { c.unsureNodes.Store(int32(len(c.unsure))) }()
	unsure := c.unsure[next.Node]
	if !next.NoticesKnown {
		if len(gone) > 0 && unsure == nil {
			unsure = map[string]bool{}
			c.unsure[next.Node] = unsure
		}
		for _, id := range gone {
			unsure[id] = true
		}
		return nil
	}
	delete(c.unsure, next.Node)
	for id := range unsure {
		if !reported[id] && !slices.Contains(gone, id) {
			gone = append(gone, id)
		}
	}
	keys := make([]string, len(gone))
	for i, id := range gone {
		keys[i] = next.Node + "/" + id
	}
	return keys
}

// forwardLocked hands the deadline of a notice reported again to its
// handling, if it is being handled; a deadline it already has changes
// nothing there.
func (c *Coordinator) forwardLocked(nn nodeNotice) {
	key := nn.key()
	ch := c.moves[key]
	if ch == nil {
		return
	}
	// Forgotten an hour past the deadline last reported.
	c.seen[key] = Deadline(nn.notice.Kind, nn.notice.Detected, nn.notice.Deadline)
	// Only the latest deadline matters; senders hold c.mu.
	select {
	case <-ch:
	default:
	}
	ch <- nn.notice.Deadline
}

// OnCheckpointStatus is the telemetry server's hook for agents' checkpoint
// progress; node is the node the reporting agent is authenticated for.
func (c *Coordinator) OnCheckpointStatus(node string, st *telemetryv1.CheckpointStatus) telemetry.StatusResult {
	c.mu.Lock()
	f := c.fanouts[st.GetCommandId()]
	c.mu.Unlock()
	switch {
	case f == nil:
		return telemetry.StatusUnknownCommand
	case f.node != node:
		return telemetry.StatusWrongNode
	}
	f.update(st)
	return telemetry.StatusAccepted
}

// Run acts on notices until ctx ends.
func (c *Coordinator) Run(ctx context.Context, o CoordinatorOptions) error {
	if o.Client == nil || o.Commands == nil {
		return fmt.Errorf("reclaim coordinator needs an API client and the telemetry server")
	}
	if o.SafetyMargin <= 0 {
		o.SafetyMargin = DefaultSafetyMargin
	}
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return fmt.Errorf("reclaim coordinator already runs")
	}
	// Set with started, under the lock: Return reads it from the mover's
	// goroutine.
	rec := o.Recorder
	if rec == nil {
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: o.Client.CoreV1().Events("")})
		defer b.Shutdown()
		rec = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "penny-scheduler"})
	}
	c.started, c.opts, c.recorder = true, o, rec
	c.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	launch := func(s handling) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.w.cancel()
			defer func() {
				c.mu.Lock()
				defer c.mu.Unlock()
				// Not the handling of the notice announced again.
				if c.moves[s.nn.key()] == s.moved {
					delete(c.moves, s.nn.key())
				}
			}()
			c.handle(ctx, s.wctx, s.nn, s.w, s.moved)
		}()
	}
	for _, s := range c.resume(ctx) {
		launch(s)
	}
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			c.forgetOld()
			continue
		case <-c.wake:
		}
		// A notice leaves the queue and becomes cancellable in one step, so
		// a withdrawal in between cannot be missed.
		var starts []handling
		c.mu.Lock()
		for _, nn := range c.queue {
			if _, dup := c.seen[nn.key()]; dup {
				w := c.waiting[nn.key()]
				if w == nil || !nn.notice.Detected.After(w.detected) {
					// The notice reported again by an agent whose first
					// report to this scheduler came after the notice was
					// resumed from its record: the cloud may have moved it
					// meanwhile. A handling that acts goes on as the agent's
					// does.
					c.forwardLocked(nn)
					continue
				}
				// Dated later: the cloud withdrew the notice handled and
				// announced it again, while no scheduler ran or between two
				// reports. Its plan's commands, which agents run once per
				// id, must be new.
				c.opts.Log.Info("the notice was announced again; handling it anew", "node", nn.node, "notice", nn.notice.ID,
					"detected", nn.notice.Detected, "earlierDetected", w.detected)
				c.callOffLocked(nn.key())
			}
			starts = append(starts, c.startLocked(ctx, nn))
		}
		c.queue = nil
		c.mu.Unlock()
		for _, s := range starts {
			launch(s)
		}
	}
}

// handling is a notice's handling about to begin.
type handling struct {
	nn    nodeNotice
	w     *callOff
	wctx  context.Context
	moved chan time.Time
}

// startLocked makes nn's handling: seen, called off by a withdrawal while it
// waits, and told of the deadline's moves.
func (c *Coordinator) startLocked(ctx context.Context, nn nodeNotice) handling {
	key := nn.key()
	c.seen[key] = Deadline(nn.notice.Kind, nn.notice.Detected, nn.notice.Deadline)
	wctx, cancel := context.WithCancel(ctx)
	w := &callOff{cancel: cancel, detected: nn.notice.Detected}
	c.waiting[key] = w
	moved := make(chan time.Time, 1)
	c.moves[key] = moved
	return handling{nn, w, wctx, moved}
}

// forgetOld drops notices and fan-outs an hour past their deadline.
func (c *Coordinator) forgetOld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	cutoff := time.Now().Add(-time.Hour)
	for k, d := range c.seen {
		if d.Before(cutoff) {
			delete(c.seen, k)
			delete(c.recorded, k)
		}
	}
	for node, until := range c.reclaimed {
		if until.Before(cutoff) {
			delete(c.reclaimed, node)
		}
	}
	for id, f := range c.fanouts {
		if f.due().Before(cutoff) {
			delete(c.fanouts, id)
		}
	}
	// A node whose agent never reports again (the node is gone) would
	// otherwise keep its notices unsure for good.
	for node, ids := range c.unsure {
		for id := range ids {
			if _, ok := c.seen[node+"/"+id]; !ok {
				delete(ids, id)
			}
		}
		if len(ids) == 0 {
			delete(c.unsure, node)
		}
	}
	c.unsureNodes.Store(int32(len(c.unsure)))
}
