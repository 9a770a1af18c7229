package reclaim

import (
	"context"
	"slices"
	"time"

	"github.com/go-logr/logr"

	"github.com/pennysched/penny/pkg/gang"
)

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
