package reclaim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
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
		recorded: map[string]noticeRecord{}, unsure: map[string]map[string]bool{}, wake: make(chan struct{}, 1)}
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
	c.started, c.opts = true, o
	c.recorder = o.Recorder
	c.mu.Unlock()
	if c.recorder == nil {
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: o.Client.CoreV1().Events("")})
		defer b.Shutdown()
		c.recorder = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "penny-scheduler"})
	}
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

// resume starts the handling of the notices a previous run recorded and did
// not finish, before any is acted on, so their gangs' members are still
// checkpointed and evicted; the agent reporting the same notice again is
// deduplicated. The cloud may have withdrawn a notice while no scheduler
// ran, which no earlier report here shows: each is unsure until its node's
// first report with its notices known, which calls it off, as a withdrawal,
// when it lacks the notice. An agent that does not report leaves it as it
// is.
func (c *Coordinator) resume(ctx context.Context) []handling {
	s := c.opts.Notices
	if s == nil {
		return nil
	}
	recs, err := s.load(ctx)
	if err != nil {
		c.opts.Log.Error(err, "Loading the reclaim notices being handled")
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var starts []handling
	for _, r := range recs {
		if !r.deadline().After(now) {
			continue // dropped at the next write
		}
		c.recorded[r.key()] = r
		if c.unsure[r.node] == nil {
			c.unsure[r.node] = map[string]bool{}
		}
		c.unsure[r.node][r.notice.ID] = true
		starts = append(starts, c.startLocked(ctx, r.nodeNotice))
		// 0 members: a record without UIDs, which acts on every live member.
		c.opts.Log.Info("resuming a reclaim notice from its record", "node", r.node, "notice", r.notice.ID,
			"kind", r.notice.Kind.String(), "deadline", r.deadline(), "gangs", len(r.gangs), "members", len(r.members))
	}
	c.unsureNodes.Store(int32(len(c.unsure)))
	return starts
}

// remember records a notice, its gangs and the members its fan-outs act on
// before any command is sent.
func (c *Coordinator) remember(ctx context.Context, nn nodeNotice, gangs []gang.Ref, fanouts []*fanout, round time.Time, log logr.Logger) {
	if c.opts.Notices == nil {
		return
	}
	rec := noticeRecord{nodeNotice: nn, gangs: gangs, round: round}
	for _, f := range fanouts {
		for _, p := range f.pods {
			rec.members = append(rec.members, p.UID)
		}
	}
	slices.Sort(rec.members)
	c.mu.Lock()
	c.recorded[nn.key()] = rec
	c.mu.Unlock()
	if err := c.put(ctx, rec, log); err != nil {
		log.Error(err, "cannot record the notice; a restart before its gangs are evicted would leave them running short a member")
	}
}

// put writes a notice's record. The commands wait for the first write:
// bound it so a slow API server does not eat the notice's deadline.
func (c *Coordinator) put(ctx context.Context, rec noticeRecord, log logr.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, noticeWriteTimeout)
	defer cancel()
	return c.opts.Notices.put(ctx, rec, log)
}

// forget removes a notice's record once its handling has ended.
func (c *Coordinator) forget(ctx context.Context, nn nodeNotice, log logr.Logger) {
	c.mu.Lock()
	_, ok := c.recordOfLocked(nn)
	if ok {
		delete(c.recorded, nn.key())
	}
	c.mu.Unlock()
	if !ok || c.opts.Notices == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, noticeWriteTimeout)
	defer cancel()
	if err := c.opts.Notices.remove(ctx, nn, log); err != nil {
		log.Error(err, "cannot remove the notice's record; it is dropped after its deadline")
	}
}

// recordOfLocked returns the record of nn's announcement. The record of an
// earlier announcement of the same notice id, whose handling a withdrawal
// called off and is still ending, is not nn's: nn's plan must not take its
// round, nor its end remove nn's record.
func (c *Coordinator) recordOfLocked(nn nodeNotice) (noticeRecord, bool) {
	rec, ok := c.recorded[nn.key()]
	if !ok || !rec.notice.Detected.Equal(nn.notice.Detected) {
		return noticeRecord{}, false
	}
	return rec, true
}

// acting takes a notice's handling out of waiting, past which a withdrawal
// no longer calls it off; false when it was called off already.
func (c *Coordinator) acting(key string, w *callOff) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting[key] != w {
		return false
	}
	delete(c.waiting, key)
	return true
}

// handle acts on one notice. wctx ends when the agent stops reporting the
// notice before handle has started to act on it; moved brings the deadlines
// the cloud moved it to.
func (c *Coordinator) handle(ctx, wctx context.Context, nn nodeNotice, w *callOff, moved <-chan time.Time) {
	o := c.opts
	n := nn.notice
	log := o.Log.WithValues("node", nn.node, "notice", n.ID, "kind", n.Kind.String())
	// w changes when a postponement calls the plan off.
	defer func() { c.acting(nn.key(), w) }()
	// The risk model is updated alongside: the gang's checkpoints must not
	// wait for its API call.
	// A notice resumed from its record was observed before it was recorded.
	c.mu.Lock()
	rec, resumed := c.recordOfLocked(nn)
	c.mu.Unlock()
	var observed sync.WaitGroup
	if !resumed {
		observed.Add(1)
		go func(nn nodeNotice) { // a copy: handle moves nn's deadline
			defer observed.Done()
			c.observe(ctx, nn, log)
		}(nn)
	}
	defer observed.Wait()
	act := o.Policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline)
	if !act.Checkpoint {
		c.forget(ctx, nn, log)
		return
	}
	for round := rec.round; ; {
		nn = c.waitToAct(ctx, wctx, nn, moved, log)
		if ctx.Err() != nil {
			return
		}
		if !c.acting(nn.key(), w) {
			log.Info("the node's agent no longer reports the notice; its gangs' other members stay")
			// A plan a postponement called off left a record.
			c.forget(ctx, nn, log)
			return
		}
		var later bool
		nn, later = c.runPlan(ctx, nn, round, act.Evict && !o.KeepGangsRunning, moved, log)
		if !later {
			return
		}
		// Called off: wait for the new lead time, and a withdrawal
		// calls the notice off as it does before its first plan.
		round = nn.notice.Deadline
		var cancel context.CancelFunc
		wctx, cancel = context.WithCancel(ctx)
		defer cancel()
		w = &callOff{cancel: cancel, detected: nn.notice.Detected}
		c.mu.Lock()
		c.waiting[nn.key()] = w
		c.mu.Unlock()
	}
}

// runPlan plans a notice, sends its commands and evicts the gangs' members
// when evict is set, until its handling ends. postponed says the cloud
// postponed the notice past its lead time before any member was evicted:
// the members stay, and the notice, with its new deadline, is to be
// planned again at the new lead time.
func (c *Coordinator) runPlan(ctx context.Context, nn nodeNotice, round time.Time, evict bool, moved <-chan time.Time, log logr.Logger) (_ nodeNotice, postponed bool) {
	n := nn.notice
	deadline := Deadline(n.Kind, n.Detected, n.Deadline)
	fanouts, gangs, err := c.plan(ctx, nn, deadline, round)
	if err != nil {
		log.Error(err, "cannot find the gangs with a member on the reclaimed node")
		return nn, false
	}
	if len(fanouts) == 0 {
		c.forget(ctx, nn, log)
		return nn, false
	}
	c.remember(ctx, nn, gangs, fanouts, round, log)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	gate := &evictGate{}
	var wg sync.WaitGroup
	for _, f := range fanouts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(rctx, f, n, evict, gate, log)
		}()
	}
	ran := make(chan struct{})
	go func() {
		wg.Wait()
		close(ran)
	}()
	for running := true; running; {
		select {
		case <-ran:
			running = false
		case d := <-moved:
			if c.postpone(ctx, nn, d, gangs, gate, log) {
				stop()
				<-ran
				return c.calledOff(ctx, nn, d, log), true
			}
			nn = c.bringForward(ctx, nn, d, fanouts, log)
		}
	}
	if ctx.Err() == nil { // stopped midway, the next run takes it up
		c.forget(ctx, nn, log)
	}
	return nn, false
}

// postpone says whether a deadline the cloud moved once the gang's members
// were asked to checkpoint calls their eviction off: moved so late that the
// new lead time is ahead, while the reclaimed node's agent, which then
// keeps its pods until that lead time, still runs every gang's member there
// (its evictions had not begun), and before any member elsewhere is
// evicted. Evicting the members then would leave each gang short of the
// member on the reclaimed node until the postponed maintenance, and stop
// it a second time then.
func (c *Coordinator) postpone(ctx context.Context, nn nodeNotice, deadline time.Time, gangs []gang.Ref, gate *evictGate, log logr.Logger) bool {
	n := nn.notice
	to := Deadline(n.Kind, n.Detected, deadline)
	if !to.After(Deadline(n.Kind, n.Detected, n.Deadline)) {
		return false
	}
	at := c.opts.Policy.Decide(n.Kind, n.Provider, n.Action, deadline).At
	if at.IsZero() || !time.Now().Before(at) {
		return false
	}
	kept, err := c.gangsStayOn(ctx, nn.node, gangs)
	if err != nil {
		log.Error(err, "cannot tell whether the reclaimed node still runs its gangs' members; they are evicted as planned")
		return false
	}
	if !kept {
		log.Info("the cloud postponed the notice, but the reclaimed node's agent has evicted its gangs' members already; the members elsewhere are evicted as planned",
			"oldDeadline", n.Deadline, "newDeadline", deadline)
		return false
	}
	return gate.callOff()
}

// calledOff records the notice postponed to deadline as waiting to be
// planned again, and says so.
func (c *Coordinator) calledOff(ctx context.Context, nn nodeNotice, deadline time.Time, log logr.Logger) nodeNotice {
	n := nn.notice
	log.Info("the cloud moved the notice's deadline", "oldDeadline", n.Deadline, "newDeadline", deadline)
	nn.notice.Deadline = deadline
	lead := c.opts.Policy.Decide(n.Kind, n.Provider, n.Action, deadline).At
	log.Info("the gangs' members elsewhere are not evicted: the cloud postponed the notice after they were asked to checkpoint, and the reclaimed node's agent keeps its pods until the new lead time; the gangs are planned again then",
		"newDeadline", deadline, "newLeadTime", lead)
	// The plan called off holds nothing for the next one: its gangs and
	// members are found again then.
	rec := noticeRecord{nodeNotice: nn, round: deadline}
	c.mu.Lock()
	c.recorded[nn.key()] = rec
	c.mu.Unlock()
	if c.opts.Notices == nil {
		return nn
	}
	if err := c.put(ctx, rec, log); err != nil {
		log.Error(err, "cannot record that the notice was postponed; a scheduler restarted before the new lead time would evict its gangs' members as first planned")
	}
	return nn
}

// gangsStayOn reports whether node runs a live member of every one of
// gangs and none is being deleted, as when its agent has not begun to
// evict them.
func (c *Coordinator) gangsStayOn(ctx context.Context, node string, gangs []gang.Ref) (bool, error) {
	pods, err := c.podsOn(ctx, node)
	if err != nil {
		return false, err
	}
	running := map[gang.Ref]bool{}
	for _, p := range pods {
		ref, ok := gang.RefOf(p)
		if !ok || !slices.Contains(gangs, ref) {
			continue
		}
		if p.DeletionTimestamp != nil {
			return false, nil
		}
		if live(p) {
			running[ref] = true
		}
	}
	return len(running) == len(gangs), nil
}

// waitToAct waits until it is time to act on a notice (scheduled maintenance
// waits for its lead time), or until wctx ends. A deadline the cloud moves
// meanwhile moves the wait, as it does the agent's: postponed, the gang's
// members keep running until the new lead time; brought forward, they are
// asked sooner. It returns the notice with the deadline it is handled by.
func (c *Coordinator) waitToAct(ctx, wctx context.Context, nn nodeNotice, moved <-chan time.Time, log logr.Logger) nodeNotice {
	for {
		n := nn.notice
		at := c.opts.Policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).At
		if at.IsZero() || !time.Now().Before(at) {
			return nn
		}
		t := time.NewTimer(time.Until(at))
		select {
		case <-wctx.Done():
			t.Stop()
			return nn
		case <-t.C:
			return nn
		case d := <-moved:
			t.Stop()
			if !d.Equal(nn.notice.Deadline) {
				nn = c.move(ctx, nn, d, log)
			}
		}
	}
}

// bringForward takes a deadline the cloud moved once the gang's members were
// asked to checkpoint. Brought forward, they are evicted by the new one less
// the margin. Postponed where postpone did not call their eviction off,
// nothing changes: their checkpoints are being written by the deadline in
// the commands, which the agents run once per command id, and the members
// are evicted once these are in, as they would have been.
func (c *Coordinator) bringForward(ctx context.Context, nn nodeNotice, deadline time.Time, fanouts []*fanout, log logr.Logger) nodeNotice {
	n := nn.notice
	if deadline.Equal(n.Deadline) {
		return nn
	}
	to := Deadline(n.Kind, n.Detected, deadline)
	if !to.Before(Deadline(n.Kind, n.Detected, n.Deadline)) {
		log.Info("the cloud moved the notice's deadline later after its gangs' members were asked to checkpoint; they are evicted as planned",
			"oldDeadline", n.Deadline, "newDeadline", deadline)
		return nn
	}
	for _, f := range fanouts {
		f.bringForward(to)
	}
	return c.move(ctx, nn, deadline, log)
}

// move takes the deadline the cloud moved a notice to, and records it in the
// notice's record, where it has one, so that a restarted scheduler resumes
// the notice by it.
func (c *Coordinator) move(ctx context.Context, nn nodeNotice, deadline time.Time, log logr.Logger) nodeNotice {
	log.Info("the cloud moved the notice's deadline", "oldDeadline", nn.notice.Deadline, "newDeadline", deadline)
	nn.notice.Deadline = deadline
	c.mu.Lock()
	rec, ok := c.recordOfLocked(nn)
	if ok {
		rec.notice.Deadline = deadline
		c.recorded[nn.key()] = rec
	}
	c.mu.Unlock()
	if !ok || c.opts.Notices == nil {
		return nn
	}
	if err := c.put(ctx, rec, log); err != nil {
		log.Error(err, "cannot record the notice's new deadline; a scheduler restarted before its handling ends would act by the old one")
	}
	return nn
}

// observe feeds a Spot interruption to the risk model, and the runs it is
// about to cut short to what SpotRisk knows of each workload.
func (c *Coordinator) observe(ctx context.Context, nn nodeNotice, log logr.Logger) {
	o, n := c.opts, nn.notice
	if n.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION {
		return
	}
	if o.Interrupted != nil {
		c.observeRuns(ctx, nn, log)
	}
	if o.Risk == nil {
		return
	}
	node, err := o.Client.CoreV1().Nodes().Get(ctx, nn.node, metav1.GetOptions{})
	if err != nil {
		log.Error(err, "cannot read the reclaimed node; its pool's reclaim risk is not updated")
		return
	}
	pool := pricing.PoolOf(node, pricing.NodeCapacity(node))
	o.Risk.ObserveReclaim(pool, nn.node, n.Detected)
	log.Info("observed a Spot reclaim", "pool", pool.String())
}

// observeRuns records how long each running pod on a reclaimed node had run
// when the notice came.
func (c *Coordinator) observeRuns(ctx context.Context, nn nodeNotice, log logr.Logger) {
	onNode, err := c.livePodsOn(ctx, nn.node)
	if err != nil {
		log.Error(err, "cannot list the reclaimed node's pods; the runs it cuts short are not recorded")
		return
	}
	// The agent's clock dates the notice. One dated ahead would lengthen
	// every run it cut short and keep its workloads the newest, never
	// forgotten, until that date.
	at := nn.notice.Detected
	if now := time.Now(); at.After(now) {
		at = now
	}
	for _, p := range onNode {
		if p.Status.StartTime != nil {
			c.opts.Interrupted.Observe(p, at.Sub(p.Status.StartTime.Time), at)
		}
	}
}

// livePodsOn lists the pods on a node that have not finished or started to
// go.
func (c *Coordinator) livePodsOn(ctx context.Context, node string) ([]*corev1.Pod, error) {
	pods, err := c.podsOn(ctx, node)
	return slices.DeleteFunc(pods, func(p *corev1.Pod) bool { return !live(p) }), err
}

// podsOn lists the pods bound to node, those being deleted included.
func (c *Coordinator) podsOn(ctx context.Context, node string) ([]*corev1.Pod, error) {
	list, err := c.opts.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for i := range list.Items {
		// The field selector already says so; a cache may not.
		if p := &list.Items[i]; p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out, nil
}

// fanout is the checkpoint command to one node for the members of affected
// gangs on it.
type fanout struct {
	id     string
	node   string
	origin string
	notice string
	gangs  []string
	pods   []*corev1.Pod

	mu sync.Mutex
	// deadline moves only earlier (bringForward), which moved tells run.
	deadline time.Time
	moved    chan struct{}
	states   map[string]telemetryv1.CheckpointStatus_State // by namespace/name
	// updated is when the agent produced the status states holds.
	updated map[string]time.Time
	done    chan struct{}
	closed  bool
}

func (f *fanout) due() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deadline
}

// bringForward moves the deadline to d when d is earlier.
func (f *fanout) bringForward(d time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !d.Before(f.deadline) {
		return
	}
	f.deadline = d
	select {
	case f.moved <- struct{}{}:
	default:
	}
}

func final(s telemetryv1.CheckpointStatus_State) bool {
	return s != telemetryv1.CheckpointStatus_STATE_UNSPECIFIED && s != telemetryv1.CheckpointStatus_STATE_REQUESTED
}

// update takes st as where its pod's checkpoint stands. Agents send a
// pod's latest status again on every new stream (the protocol acknowledges
// none), so a status may come more than once, and one an old stream still
// carried may come after a newer one: a status older than the one held is
// ignored, and a repeat changes nothing.
func (f *fanout) update(st *telemetryv1.CheckpointStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := st.GetPod().GetNamespace() + "/" + st.GetPod().GetName()
	if _, ok := f.states[key]; !ok {
		return
	}
	at := st.GetUpdatedAt().AsTime()
	if held, ok := f.updated[key]; ok && at.Before(held) {
		return
	}
	if f.updated == nil {
		f.updated = map[string]time.Time{}
	}
	f.states[key], f.updated[key] = st.GetState(), at
	for _, s := range f.states {
		if !final(s) {
			return
		}
	}
	if !f.closed {
		f.closed = true
		close(f.done)
	}
}

// commandID names the command of one plan of a notice to one node. A plan
// is one announcement of the notice, which its node's agent dates by when
// it detected it, and one round of it (noticeRecord.round). Every replica
// hears the announcement from the agent, and a restarted scheduler reads it
// from the notice's record, so they name a plan's commands alike and the
// agent runs each once. A plan made again after a postponement has a new
// round, and a notice the cloud withdrew and announced again under the same
// id is detected anew (the agent forgets a notice withdrawn), so their
// commands are never named as an earlier plan's, which the agents have run
// already.
func commandID(nn nodeNotice, node string, round time.Time) string {
	key := nn.node + "\x00" + nn.notice.ID + "\x00" + nn.notice.Detected.UTC().Format(time.RFC3339Nano) + "\x00" + node
	if !round.IsZero() {
		key += "\x00" + round.UTC().Format(time.RFC3339Nano)
	}
	h := sha256.Sum256([]byte(key))
	return "gang-" + hex.EncodeToString(h[:12])
}

// plan finds the gangs with a member on the reclaimed node, adds those
// recorded for the notice, and groups their other members by node: of a
// resumed notice, only the members its record names.
func (c *Coordinator) plan(ctx context.Context, nn nodeNotice, deadline, round time.Time) ([]*fanout, []gang.Ref, error) {
	onNode, err := c.livePodsOn(ctx, nn.node)
	if err != nil {
		return nil, nil, err
	}
	var found []gang.Ref
	for _, p := range onNode {
		if ref, ok := gang.RefOf(p); ok {
			found = append(found, ref)
		}
	}
	c.mu.Lock()
	rec, _ := c.recordOfLocked(nn)
	c.mu.Unlock()
	gangs := unionGangs(rec.gangs, found)
	// Between the first plan's evictions and a restart, the gangs' owners
	// have usually created replacements, running elsewhere: evicting them
	// would cost the gang a second restart. A record without UIDs (saved
	// before Penny kept them, or too large to keep them) leaves chosen nil:
	// every live member, as before.
	var chosen map[types.UID]bool
	if len(rec.members) > 0 {
		chosen = make(map[types.UID]bool, len(rec.members))
		for _, uid := range rec.members {
			chosen[uid] = true
		}
	}
	byNode := map[string]*fanout{}
	for _, ref := range gangs {
		members, err := c.members(ctx, ref)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range members {
			if p.Spec.NodeName == "" || p.Spec.NodeName == nn.node || chosen != nil && !chosen[p.UID] {
				continue
			}
			f := byNode[p.Spec.NodeName]
			if f == nil {
				f = &fanout{
					id: commandID(nn, p.Spec.NodeName, round), node: p.Spec.NodeName,
					origin: nn.node, notice: nn.notice.ID, deadline: deadline, moved: make(chan struct{}, 1),
					states: map[string]telemetryv1.CheckpointStatus_State{}, done: make(chan struct{}),
				}
				byNode[p.Spec.NodeName] = f
			}
			if !slices.Contains(f.gangs, ref.String()) {
				f.gangs = append(f.gangs, ref.String())
			}
			f.pods = append(f.pods, p)
			f.states[p.Namespace+"/"+p.Name] = telemetryv1.CheckpointStatus_STATE_UNSPECIFIED
		}
	}
	out := make([]*fanout, 0, len(byNode))
	for _, f := range byNode {
		sort.Strings(f.gangs)
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].node < out[j].node })
	return out, gangs, nil
}

func live(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// members lists a gang's live pods.
func (c *Coordinator) members(ctx context.Context, ref gang.Ref) ([]*corev1.Pod, error) {
	opts := metav1.ListOptions{}
	if ref.Source == gang.SourceLabel {
		opts.LabelSelector = labels.SelectorFromSet(labels.Set{gang.LabelName: ref.Name}).String()
	}
	list, err := c.opts.Client.CoreV1().Pods(ref.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing members of gang %s: %w", ref, err)
	}
	var out []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if ref.IsMember(p) && live(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// maxReason is what a command's reason may hold (the agent refuses longer).
const maxReason = 1024

// commandReason says why a node is asked to checkpoint. It names as many of
// the gangs as fit: a node may hold members of many gangs with long names,
// and a reason over maxReason would make every command to it invalid, so its
// members would be evicted without a checkpoint.
func commandReason(gangs []string, origin, kind string, deadline time.Time) string {
	tail := fmt.Sprintf(" a member on node %s, which is being reclaimed (%s, deadline %s)", origin, kind, deadline.UTC().Format(time.RFC3339))
	what, verb := "gang ", " has"
	if len(gangs) > 1 {
		what, verb = "gangs ", " have"
	}
	for k := len(gangs); k > 0; k-- {
		names := strings.Join(gangs[:k], ", ")
		if k < len(gangs) {
			names += fmt.Sprintf(" and %d more", len(gangs)-k)
		}
		if r := what + names + verb + tail; len(r) <= maxReason {
			return r
		}
	}
	return fmt.Sprintf("%d gangs%s%s", len(gangs), verb, tail)
}

// evictGate lets the fan-outs of a plan begin to evict only while a
// postponement has not called the plan off, and a postponement call it off
// only while none has begun: a gang is evicted whole or kept whole.
type evictGate struct {
	mu       sync.Mutex
	evicting bool
	off      bool
}

func (g *evictGate) evict() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.evicting = g.evicting || !g.off
	return !g.off
}

func (g *evictGate) callOff() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.off = g.off || !g.evicting
	return g.off
}

// run sends one node's command, waits for its checkpoints and evicts the
// members when evict is set and gate lets it.
func (c *Coordinator) run(ctx context.Context, f *fanout, n telemetry.ReclaimNotice, evict bool, gate *evictGate, log logr.Logger) {
	log = log.WithValues("target", f.node, "command", f.id)
	c.mu.Lock()
	c.fanouts[f.id] = f
	c.mu.Unlock()
	refs := make([]*telemetryv1.PodRef, len(f.pods))
	for i, p := range f.pods {
		refs[i] = &telemetryv1.PodRef{Namespace: p.Namespace, Name: p.Name}
	}
	var reason string
	var cmd *telemetryv1.CheckpointCommand
	var evictBy, giveUp time.Time
	// by sets the command and its times by the deadline; again when the
	// cloud brings it forward.
	by := func(deadline time.Time) {
		reason = commandReason(f.gangs, f.origin, TaintValue(n.Kind), deadline)
		cmd = &telemetryv1.CheckpointCommand{
			Id: f.id, Pods: refs, Deadline: timestamppb.New(deadline), Reason: reason,
			OriginNode: f.origin, OriginNoticeId: f.notice,
		}
		// When the members must go: once their checkpoints are in, or at
		// the deadline less the margin (half the time left if less is
		// left).
		evictBy = deadline.Add(-c.opts.SafetyMargin)
		if now := time.Now(); !evictBy.After(now) {
			evictBy = now.Add(deadline.Sub(now) / 2)
		}
		// The agent may be reconnecting; keep trying while there is time:
		// until the members must go, past which a command is no use (they
		// are evicted then whether it came or not, and trying on would only
		// evict them later, with less of a grace period).
		giveUp = deadline.Add(-500 * time.Millisecond)
		if evict && evictBy.Before(giveUp) {
			giveUp = evictBy
		}
	}
	by(f.due())
	for {
		sent, err := c.opts.Commands.SendCheckpoint(f.node, cmd)
		if err == nil && sent > 0 {
			fanoutSeconds.Observe(time.Since(n.Detected).Seconds())
			commandsTotal.WithLabelValues(string(commandSent)).Inc()
			// No event here: every replica sends the command, the agent runs
			// it once and records CheckpointRequested, with this reason, on
			// each pod. An event per replica would say it twice.
			log.Info("asked a gang member's node to checkpoint", "pods", len(refs), "gangs", f.gangs, "sinceDetection", time.Since(n.Detected))
			break
		}
		left := time.Until(giveUp)
		if left <= 0 {
			commandsTotal.WithLabelValues(string(commandUndelivered)).Inc()
			why := "its agent is not connected"
			if err != nil {
				why = err.Error()
			}
			for _, p := range f.pods {
				c.recorder.Eventf(p, corev1.EventTypeWarning, "GangCheckpointUndelivered", "could not ask node %s to checkpoint this pod in time (%s): %s", f.node, why, reason)
			}
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-f.moved:
			by(f.due())
		case <-time.After(min(500*time.Millisecond, left)):
		}
	}
	if !evict {
		return
	}
	for waiting := true; waiting; {
		t := time.NewTimer(time.Until(evictBy))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.moved:
			by(f.due())
		case <-f.done:
			waiting = false
		case <-t.C:
			waiting = false
		}
		t.Stop()
	}
	if !gate.evict() {
		return
	}
	c.evictMembers(ctx, f, log)
}

// evictMembers evicts the members on f's node so the gang leaves together
// and is placed again as a whole.
func (c *Coordinator) evictMembers(ctx context.Context, f *fanout, log logr.Logger) {
	f.mu.Lock()
	states := make(map[string]telemetryv1.CheckpointStatus_State, len(f.states))
	for k, v := range f.states {
		states[k] = v
	}
	// Once eviction has begun, a move changes nothing, as on the agent.
	deadline := f.deadline
	f.mu.Unlock()
	// As the agent does on the reclaimed node: every member is asked once
	// before any is asked again (EvictInPasses).
	if !EvictInPasses(ctx, f.pods, func(p *corev1.Pod) bool {
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if p.Spec.TerminationGracePeriodSeconds != nil {
			grace = *p.Spec.TerminationGracePeriodSeconds
		}
		if left := int64(time.Until(deadline) / time.Second); left < grace {
			grace = max(left, 0)
		}
		gone, err := c.evictMember(ctx, p, grace, log)
		if ctx.Err() != nil {
			return false
		}
		// A conflict left over is a member that kept changing under every
		// try: like a budget's refusal, it is no reason to give up on it.
		if (apierrors.IsTooManyRequests(err) || apierrors.IsConflict(err)) && time.Now().Add(time.Second).Before(deadline) {
			return true
		}
		switch {
		case gone:
			evictionsTotal.WithLabelValues(string(memberGone)).Inc()
		case err == nil:
			evictionsTotal.WithLabelValues(string(memberEvicted)).Inc()
			what := "its checkpoint is written"
			if s := states[p.Namespace+"/"+p.Name]; s != telemetryv1.CheckpointStatus_STATE_DONE {
				what = "without a checkpoint (" + strings.TrimPrefix(s.String(), "STATE_") + ")"
			}
			c.recorder.Eventf(p, corev1.EventTypeWarning, "GangEvicted", "evicted with its gang, which lost a member to the reclaim of node %s; %s; grace period %ds", f.origin, what, grace)
		case apierrors.IsNotFound(err):
			evictionsTotal.WithLabelValues(string(memberGone)).Inc()
		default:
			evictionsTotal.WithLabelValues(string(memberEvictionFailed)).Inc()
			log.Error(err, "cannot evict a gang member", "pod", p.Namespace+"/"+p.Name)
			c.recorder.Eventf(p, corev1.EventTypeWarning, "GangEvictionFailed", "could not evict this member of a gang that lost a member to the reclaim of node %s: %v", f.origin, err)
		}
		return false
	}) {
		return
	}
	log.Info("evicted the gang's members on the node", "pods", len(f.pods))
}

// evictTries bounds the evictions of one member, in one pass, that find it
// changed since it was read.
const evictTries = 3

// evictMember evicts p unless, read live from the API server, it is gone,
// finished or already being deleted: every replica runs a coordinator and
// evicts the same members, and the Eviction API answers success for a pod
// already being deleted, so without the read each replica would record the
// member evicted (a GangEvicted event and an "evicted" count apiece). The
// resourceVersion read is a precondition of the eviction, so that of two
// replicas that read the member at once only one evicts it; the other's
// conflict reads it again and finds it being deleted. gone says the member
// was left alone. fanout.pods is a snapshot taken at notice time, hence the
// read; the UID precondition keeps a pod recreated under the same name (a
// Job's replacement) from being evicted in its place.
func (c *Coordinator) evictMember(ctx context.Context, p *corev1.Pod, grace int64, log logr.Logger) (gone bool, err error) {
	uid := p.UID
	for try := 1; ; try++ {
		pre := &metav1.Preconditions{UID: &uid}
		cur, err := c.opts.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return true, nil
		case err == nil && (cur.UID != uid || !live(cur)):
			return true, nil
		case err == nil && cur.ResourceVersion != "":
			rv := cur.ResourceVersion
			pre.ResourceVersion = &rv
		case err != nil:
			// Evicting the member matters more than a doubled event.
			log.Error(err, "cannot read a gang member before evicting it; evicting it all the same", "pod", p.Namespace+"/"+p.Name)
		}
		err = c.opts.Client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			DeleteOptions: &metav1.DeleteOptions{GracePeriodSeconds: &grace, Preconditions: pre},
		})
		if !apierrors.IsConflict(err) || try == evictTries || ctx.Err() != nil {
			return false, err
		}
	}
}
