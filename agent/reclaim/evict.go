package reclaim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// evictAll evicts the node's movable pods, checkpointed ones first, each with
// its grace period cut to the time left before the deadline.
func (f *Flow) evictAll(ctx context.Context, js *jobState, detected time.Time) {
	pods, err := f.podsOnNodeNow(ctx, js.j.Deadline)
	if err != nil {
		f.log.Error(err, "cannot list the node's pods to evict them")
		return
	}
	done := func(p *corev1.Pod) bool {
		js.mu.Lock()
		defer js.mu.Unlock()
		r := js.j.Pods[p.Namespace+"/"+p.Name]
		return r != nil && r.UID == string(p.UID) && r.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
	}
	// Checkpointed pods lose nothing by going now, and their gangs can be
	// placed again sooner; the others get whatever time remains.
	sort.SliceStable(pods, func(a, b int) bool { return done(pods[a]) && !done(pods[b]) })
	deadline := js.j.Deadline
	var nEvicted, nCheckpointed int
	// Every pod is asked once before any is asked again
	// (reclaim.EvictInPasses).
	if !reclaim.EvictInPasses(ctx, pods, func(pod *corev1.Pod) bool {
		rec := js.pod(pod)
		js.mu.Lock()
		skip := rec.Evicted
		js.mu.Unlock()
		if skip {
			return false
		}
		grace := reclaim.EvictionGrace(pod, deadline)
		result, err := f.evict(ctx, pod, grace)
		if ctx.Err() != nil {
			return false
		}
		if result == blocked || result == unavailable {
			if time.Now().Add(time.Second).Before(deadline) {
				return true
			}
			if result == blocked {
				err = fmt.Errorf("a PodDisruptionBudget still refuses the eviction at the deadline: %v", err)
			} else {
				err = fmt.Errorf("the API server still cannot decide the eviction at the deadline: %v", err)
			}
		}
		f.metrics.evictions.WithLabelValues(string(result)).Inc()
		checkpointed := done(pod)
		switch result {
		case evicted, gone:
			nEvicted++
			if checkpointed {
				nCheckpointed++
			}
			js.mu.Lock()
			rec.Evicted = true
			js.saveLocked()
			js.mu.Unlock()
			if result == evicted {
				what := "its checkpoint is written"
				if !checkpointed {
					what = "without a checkpoint"
				}
				f.recorder.Eventf(pod, corev1.EventTypeWarning, "ReclaimEvicted", "evicted because node %s is being reclaimed (%s); %s; grace period %ds", f.node, reclaim.TaintValue(kindOf(js.j)), what, grace)
			}
		default:
			f.log.Error(err, "eviction failed", "pod", pod.Namespace+"/"+pod.Name)
			f.recorder.Eventf(pod, corev1.EventTypeWarning, "ReclaimEvictionFailed", "could not evict the pod before node %s is reclaimed: %v", f.node, err)
		}
		return false
	}) {
		return // the agent is stopping; the state says what is left to evict
	}
	f.metrics.step(stepEvicted, detected)
	slack := time.Until(deadline)
	f.metrics.slack.Observe(slack.Seconds())
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimDrained", "evicted %d of %d pods (%d with a checkpoint written), %v before the deadline", nEvicted, len(pods), nCheckpointed, slack.Round(time.Millisecond))
}

func kindOf(j *Job) telemetryv1.ReclaimKind {
	if j.Notice != nil {
		return j.Notice.Kind
	}
	return telemetryv1.ReclaimKind_RECLAIM_KIND_UNSPECIFIED
}

// acknowledge tells the cloud the node is ready once every pod whose work
// runs there has either written its checkpoint or left the node: then
// nothing is lost by the VM going now rather than at the deadline. A pod
// being deleted has not left until it is gone: an evicted pod without a
// checkpoint still uses its grace period.
func (f *Flow) acknowledge(ctx context.Context, js *jobState) {
	if f.ack == nil || js.j.Acknowledged {
		return
	}
	ready := func() bool {
		pods, err := f.podsOnNodeThat(running)
		if err != nil {
			return false
		}
		for _, p := range pods {
			js.mu.Lock()
			r := js.j.Pods[p.Namespace+"/"+p.Name]
			ok := r != nil && r.UID == string(p.UID) && r.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
			js.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	}
	for !ready() {
		if !time.Now().Add(time.Second).Before(js.j.Deadline) {
			f.log.Info("not acknowledging the notice early: some pods have neither a checkpoint nor left the node", "notice", js.j.Notice.ID)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := f.ack.Acknowledge(ctx, js.j.Notice.ID); err != nil {
		if ctx.Err() != nil {
			return // the agent is stopping; the restarted one asks again
		}
		if errors.Is(err, notice.ErrNotOurs) {
			f.log.Info("Not acknowledging the notice; the cloud goes ahead at its deadline", "reason", err.Error())
			f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimNotAcknowledged", "%v", err)
			return
		}
		f.log.Error(err, "cannot acknowledge the notice; the cloud will wait out its deadline")
		f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimAcknowledgeFailed", "could not tell the cloud the node is ready, so it waits out the deadline: %v", err)
		return
	}
	f.metrics.step(stepAcknowledged, js.j.Notice.Detected)
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimAcknowledged", "told the cloud the node is ready: every pod's checkpoint is written or the pod has left (%v before the deadline)", time.Until(js.j.Deadline).Round(time.Millisecond))
	js.mu.Lock()
	js.j.Acknowledged = true
	js.saveLocked()
	js.mu.Unlock()
}
