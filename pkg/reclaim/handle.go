package reclaim

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
)

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
	fed := make(chan struct{})
	if !resumed {
		observed.Add(1)
		go func(nn nodeNotice) { // a copy: handle moves nn's deadline
			defer observed.Done()
			defer close(fed)
			c.observe(ctx, nn, log)
		}(nn)
	} else {
		close(fed)
	}
	defer observed.Wait()
	var saveOnce sync.Once
	saved := func() { saveOnce.Do(func() { c.saveObserved(ctx, nn, fed, log) }) }
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
		nn, later = c.runPlan(ctx, nn, round, act.Evict && !o.KeepGangsRunning, moved, saved, log)
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
func (c *Coordinator) runPlan(ctx context.Context, nn nodeNotice, round time.Time, evict bool, moved <-chan time.Time, saved func(), log logr.Logger) (_ nodeNotice, postponed bool) {
	n := nn.notice
	deadline := Deadline(n.Kind, n.Detected, n.Deadline)
	fanouts, gangs, err := c.planUntil(ctx, nn, deadline, round, log)
	if err != nil {
		log.Error(err, "cannot find the gangs with a member on the reclaimed node; their other members stay", "deadline", deadline)
		return nn, false
	}
	if len(fanouts) == 0 {
		c.forget(ctx, nn, log)
		return nn, false
	}
	saved()
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

// planUntil is plan, asked again while the API server fails it (a blip, a
// throttled list) until the checkpoints' deadline: one failed list when the
// notice came ended its handling, and the gangs' members elsewhere were
// neither asked to checkpoint nor evicted.
func (c *Coordinator) planUntil(ctx context.Context, nn nodeNotice, deadline, round time.Time, log logr.Logger) ([]*fanout, []gang.Ref, error) {
	backoff := planRetry
	for {
		fanouts, gangs, err := c.plan(ctx, nn, deadline, round)
		if err == nil || ctx.Err() != nil {
			return fanouts, gangs, err
		}
		pause := backoff.Step()
		if !time.Now().Add(pause).Before(deadline) {
			return nil, nil, err
		}
		log.Info("Cannot find the gangs with a member on the reclaimed node; asking again", "err", err.Error(), "in", pause)
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// planRetry spaces planUntil's attempts: quick at first, as a notice leaves
// seconds to minutes, then every few seconds.
var planRetry = wait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Steps: 5, Cap: 4 * time.Second}

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

// saveObserved waits until observe has fed nn (fed closes) and saves what
// it fed, before nn's record says it was observed. The wait and the save are
// bounded together by noticeWriteTimeout: the gang's commands wait for the
// record, and past the bound the record goes first, as it did, with the
// periodic save to follow.
func (c *Coordinator) saveObserved(ctx context.Context, nn nodeNotice, fed <-chan struct{}, log logr.Logger) {
	o := c.opts
	if o.SaveObserved == nil || o.Notices == nil || nn.notice.Kind != telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, noticeWriteTimeout)
	defer cancel()
	select {
	case <-fed:
	case <-ctx.Done():
		log.Info("the reclaim is not fed to the risk model yet; recording the notice first, so a scheduler restarted before the next save does not count it")
		return
	}
	if err := o.SaveObserved(ctx); err != nil {
		log.Error(err, "cannot save the reclaim and the runs it cuts short before recording the notice; a scheduler restarted before the next save would not count them")
	}
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
	if o.Risk == nil || !c.firstReclaim(nn) {
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

// firstReclaim reports whether nn is the first Spot interruption of its node
// to reach the risk model, and marks the node reclaimed. A node is reclaimed
// once, but its agent may report any number of notices under new ids (up to
// 16 a report, and a compromised agent makes them up): each counted would
// raise the estimate of the whole pool, which every tenant's pods on its
// other nodes follow. The mark lasts an hour past the later of the deadline
// and now, as seen does, so a deadline dated in the past frees it no sooner,
// and a node recreated under the same name (a GKE Spot VM) counts again.
// The risk model keeps its own list of the nodes it counted, saved with its
// evidence, for a restarted scheduler that hears the notice again; this mark
// spares the node reads of the notices made up in between.
func (c *Coordinator) firstReclaim(nn nodeNotice) bool {
	until := Deadline(nn.notice.Kind, nn.notice.Detected, nn.notice.Deadline)
	if now := time.Now(); until.Before(now) {
		until = now
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.reclaimed[nn.node]; ok {
		return false
	}
	c.reclaimed[nn.node] = until
	return true
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
