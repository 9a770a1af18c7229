package reclaim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// runNotice does a notice's work; it reports whether the cloud withdrew the
// notice before it was time to act.
func (f *Flow) runNotice(ctx context.Context, j *Job, resumed bool) bool {
	js := &jobState{f: f, j: j}
	n := j.Notice
	log := f.log.WithValues("notice", n.ID, "kind", n.Kind.String())
	act := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline)
	kind := reclaim.TaintValue(n.Kind)
	js.save()

	// The taint, the report and the checkpoint requests go out together:
	// none waits for another's round trip.
	var tainting sync.WaitGroup
	if act.Taint && !j.Tainted {
		tainting.Add(1)
		go func() {
			defer tainting.Done()
			if err := f.taint(ctx, n.Kind); err != nil {
				log.Error(err, "cannot taint the node; new pods may still land on it")
				f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimTaintFailed", "could not taint the node %s=%s:NoSchedule: %v", reclaim.TaintKey, kind, err)
				return
			}
			f.metrics.step(stepTaint, n.Detected)
			js.mu.Lock()
			j.Tainted = true
			js.saveLocked()
			js.mu.Unlock()
		}()
	}
	defer tainting.Wait()
	f.report()
	var what []string
	if act.Checkpoint {
		what = append(what, "checkpointing its pods")
	}
	if act.Evict {
		what = append(what, "evicting them")
	}
	if len(what) == 0 {
		what = []string{"no action needed (the pods keep running)"}
	}
	deadline := func() string {
		if n.Deadline.IsZero() {
			return "no deadline"
		}
		return fmt.Sprintf("deadline %s (%v after detection)", n.Deadline.UTC().Format(time.RFC3339), n.Deadline.Sub(n.Detected).Round(time.Second))
	}
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimNotice", "%s notice %s (%s %s), %s; %s",
		providerName(n.Provider), n.ID, kind, n.Action, deadline(), strings.Join(what, ", "))
	if most, capped := reclaim.MaxNotice(n.Kind); capped && j.Deadline.Before(n.Deadline) {
		log.Info("the notice's deadline is further off than such a notice can be; acting by the longest one instead", "deadline", n.Deadline, "capped", j.Deadline)
		f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimDeadlineCapped", "%s notice %s says deadline %s, %v after detection; a %s notice gives at most %v, so the pods checkpoint and are evicted by %s",
			providerName(n.Provider), n.ID, n.Deadline.UTC().Format(time.RFC3339), n.Deadline.Sub(n.Detected).Round(time.Second), kind, most, j.Deadline.UTC().Format(time.RFC3339))
	}

	statusID := j.ID
	for {
		if proceed, withdrawn := f.waitToAct(ctx, js, log, resumed); !proceed {
			return withdrawn
		}
		if act.Checkpoint {
			by := f.checkpointBy(j.Deadline)
			pods, err := f.podsOnNodeNow(ctx, by)
			if err != nil {
				log.Error(err, "cannot list the node's pods")
			}
			hooks, cut := context.WithCancelCause(ctx)
			go f.cutWhenBroughtForward(hooks, func() { cut(errHooksCut) }, js, by, log)
			f.checkpointAll(hooks, js, pods, checkpoint.Request{
				Deadline: by,
				Reason:   fmt.Sprintf("node %s is being reclaimed (%s, %s)", f.node, kind, deadline()),
				Notice:   n.ID, Node: f.node,
			}, statusID, n.Detected, string(originNotice))
			cut(nil)
		}
		if ctx.Err() != nil {
			return false
		}
		// The cloud may have postponed the maintenance while the pods
		// checkpointed: the pods stay until the new time to act, and the
		// checkpoints written are kept (those pods are not asked again).
		if cur, found, _ := f.pendingNotice(n.ID); found {
			f.follow(js, cur, log)
		}
		if at := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).At; !time.Now().Before(at) {
			break
		}
	}
	if act.Evict {
		f.evictAll(ctx, js, n.Detected)
		if ctx.Err() != nil {
			return false
		}
		f.acknowledge(ctx, js)
		if ctx.Err() != nil {
			// The agent is stopping, not the cloud refusing: recorded
			// done, the restarted agent would never tell the cloud the
			// node is ready, and it would wait out the notice.
			return false
		}
	}
	js.mu.Lock()
	j.Done = true
	js.saveLocked()
	js.mu.Unlock()
	log.Info("reclaim work done")
	return false
}

func providerName(p telemetryv1.CloudProvider) string {
	return strings.ToUpper(strings.TrimPrefix(p.String(), "CLOUD_PROVIDER_"))
}

// waitToAct waits until the policy's time to act on the job's notice (at
// once for a reclaim, shortly before scheduled maintenance), following the
// cloud's moves of the deadline: later, the wait goes on; earlier, it ends
// sooner. It returns proceed false when ctx ended or when the cloud called
// the notice off during the wait (withdrawn true; the job is done). A job
// an earlier agent left unfinished (resumed) is called off by the cloud's
// answer from the start: the notice was seen before, so one the cloud no
// longer lists was withdrawn (or done with) while no agent ran, and acting
// on it would evict pods for nothing. A notice just seen is not, as the
// check that saw it may not be the one the watcher's answer comes from.
func (f *Flow) waitToAct(ctx context.Context, js *jobState, log logr.Logger, resumed bool) (proceed, withdrawn bool) {
	n := js.j.Notice
	// Maintenance announced weeks ahead may be called off or moved any
	// day in between; the taint must not stay until the day it was due.
	var check <-chan time.Time
	if f.notices != nil {
		tick := time.NewTicker(f.reconcile)
		defer tick.Stop()
		check = tick.C
	}
	for waited := false; ; waited = true {
		// Taken before the look, so that a move meanwhile is not missed.
		moved := f.movedSignal()
		cur, found, known := f.pendingNotice(n.ID)
		if found {
			f.follow(js, cur, log)
		}
		at := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).At
		if (waited || resumed) && known && !found {
			log.Info("the cloud called the maintenance off before it was time to act")
			f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimWithdrawn", "%s notice %s was called off; the pods stay", providerName(n.Provider), n.ID)
			js.mu.Lock()
			js.j.Done, js.j.Withdrawn = true, true
			js.saveLocked()
			js.mu.Unlock()
			return false, true
		}
		if !time.Now().Before(at) {
			return true, false
		}
		if !waited {
			log.Info("waiting to act until shortly before the maintenance", "at", at)
		}
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, false
		case <-check:
		case <-moved:
		case <-t.C:
		}
		t.Stop()
	}
}

// errHooksCut is the cause of a hooks context cutWhenBroughtForward ended:
// the hooks failed to checkpoint in time, and the agent is not stopping.
var errHooksCut = errors.New("the cloud brought the notice forward")

// cutWhenBroughtForward ends the hook calls of hooks (cut) at the time the
// checkpoints of a deadline the cloud brings forward while they run must be
// written by, sooner than by: the job then follows the new deadline and
// evicts by it. The hooks were waited for until the old deadline's time,
// and a slow one kept every pod on a node the cloud took first.
func (f *Flow) cutWhenBroughtForward(hooks context.Context, cut context.CancelFunc, js *jobState, by time.Time, log logr.Logger) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		moved := f.movedSignal()
		js.mu.Lock()
		n := *js.j.Notice
		js.mu.Unlock()
		if cur, found, _ := f.pendingNotice(n.ID); found {
			d, job := n.deadlines(cur)
			if sooner := f.checkpointBy(job); sooner.Before(by) {
				by = sooner
				log.Info("the cloud brought the notice forward while pods checkpoint; their hooks end sooner", "deadline", d, "checkpointBy", by)
				if timer != nil {
					timer.Stop()
				}
				timer = time.AfterFunc(time.Until(by), cut)
			}
		}
		select {
		case <-hooks.Done():
			return
		case <-moved:
		}
	}
}

// deadlines are the notice's deadline as the cloud announces it now
// (notice.NextDeadline) and the job's that follows from it.
func (n NoticeRecord) deadlines(cur notice.Notice) (noticeDeadline, jobDeadline time.Time) {
	d := notice.NextDeadline(n.Deadline, cur)
	return d, reclaim.Deadline(n.Kind, n.Detected, d)
}

// follow takes the deadline of the notice as the cloud announces it now
// (notice.NextDeadline) into the job, and records a move.
func (f *Flow) follow(js *jobState, cur notice.Notice, log logr.Logger) {
	js.mu.Lock()
	n := js.j.Notice
	was := n.Deadline
	d, job := n.deadlines(cur)
	if d.Equal(was) {
		js.mu.Unlock()
		return
	}
	n.Deadline, js.j.Deadline = d, job
	js.saveLocked()
	js.mu.Unlock()
	log.Info("the cloud moved the notice's deadline", "deadline", d, "was", was)
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimRescheduled", "%s notice %s moved from %s to %s",
		providerName(n.Provider), n.ID, was.UTC().Format(time.RFC3339), d.UTC().Format(time.RFC3339))
}

// pendingNotice returns the notice as the cloud announces it now; known is
// false when that cannot be known (no watcher, or its last check failed),
// and found is false when it is not announced.
func (f *Flow) pendingNotice(id string) (n notice.Notice, found, known bool) {
	if f.notices == nil {
		return notice.Notice{}, false, false
	}
	pending, ok := f.notices()
	if !ok {
		return notice.Notice{}, false, false
	}
	for _, p := range pending {
		if p.ID == id {
			return p, true, true
		}
	}
	return notice.Notice{}, false, true
}

// withdrawn removes the reclaim taint when no notice that calls for one is
// pending and no work is running: the cloud took the notice back (an Azure
// event canceled, a rebalance recommendation gone) and the node stays.
func (f *Flow) withdrawn(ctx context.Context, pending []notice.Notice) {
	for _, n := range pending {
		if f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).Taint {
			return
		}
	}
	if f.Running() > 0 {
		return
	}
	removed, err := f.untaint(ctx)
	if err != nil {
		f.log.Error(err, "cannot remove the reclaim taint")
		return
	}
	if removed {
		f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimWithdrawn", "no reclaim notice is pending any more; removed the %s taint", reclaim.TaintKey)
	}
}
