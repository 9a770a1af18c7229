package reclaim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/agent/checkpoint"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// resendStatuses sends again the statuses of a scheduler command an
// earlier agent finished before its deadline: they may have been lost with
// its streams (a status sent just before the agent stopped sat in a buffer),
// and the scheduler waits for them to evict the gang's other members before
// the deadline. The scheduler takes a repeated status as where the pod
// stands, so one it has already changes nothing.
func (f *Flow) resendStatuses(j *Job) {
	for _, key := range j.Command.Pods {
		ns, name, _ := strings.Cut(key, "/")
		st := &telemetryv1.CheckpointStatus{
			CommandId: j.Command.ID, Pod: &telemetryv1.PodRef{Namespace: ns, Name: name},
			State: telemetryv1.CheckpointStatus_STATE_FAILED, UpdatedAt: timestamppb.New(j.Updated),
			Message: fmt.Sprintf("pod %s is not on node %s", key, f.node),
		}
		if r := j.Pods[key]; r != nil {
			state, ok := telemetryv1.CheckpointStatus_State_value[r.Checkpoint]
			if !ok {
				continue // not asked: nothing was said about it
			}
			st.State, st.Message = telemetryv1.CheckpointStatus_State(state), telemetryv1.StatusText(r.Message)
		}
		f.status(st, j.Deadline)
	}
}

// checkpointBy is when checkpoints must be written: the deadline less the
// safety margin, or half the time left when less than the margin remains.
func (f *Flow) checkpointBy(deadline time.Time) time.Time {
	by := deadline.Add(-f.margin)
	if now := time.Now(); !by.After(now) {
		by = now.Add(deadline.Sub(now) / 2)
	}
	return by
}

func (f *Flow) runCommand(ctx context.Context, j *Job) {
	js := &jobState{f: f, j: j}
	c := j.Command
	js.save()
	var pods []*corev1.Pod
	for _, key := range c.Pods {
		ns, name, _ := strings.Cut(key, "/")
		pod, why := f.podOnNode(ctx, ns, name, f.checkpointBy(j.Deadline))
		if pod == nil {
			state, msg := telemetryv1.CheckpointStatus_STATE_FAILED, why
			js.mu.Lock()
			if j.Pods == nil {
				j.Pods = map[string]*PodRecord{}
			}
			if r := j.Pods[key]; r != nil && r.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String() {
				// Written before a restart, and gone since: its checkpoint
				// stands.
				state, msg = telemetryv1.CheckpointStatus_STATE_DONE, r.Message
			} else {
				// Kept, so that a restarted agent sends the same reason
				// again (resendStatuses), not "not on node" for a pod
				// that finished.
				j.Pods[key] = &PodRecord{Checkpoint: state.String(), Message: why}
				js.saveLocked()
			}
			js.mu.Unlock()
			f.status(&telemetryv1.CheckpointStatus{
				CommandId: c.ID, Pod: &telemetryv1.PodRef{Namespace: ns, Name: name},
				State: state, UpdatedAt: timestamppb.Now(), Message: telemetryv1.StatusText(msg),
			}, j.Deadline)
			continue
		}
		pods = append(pods, pod)
	}
	reason := c.Reason
	if reason == "" {
		reason = "the scheduler asked for a checkpoint"
	}
	f.checkpointAll(ctx, js, pods, checkpoint.Request{
		Deadline: f.checkpointBy(j.Deadline), Reason: reason, Notice: c.OriginNotice, Node: c.OriginNode,
	}, c.ID, c.Received, string(originCommand))
	if ctx.Err() != nil {
		return
	}
	js.mu.Lock()
	j.Done = true
	js.saveLocked()
	js.mu.Unlock()
}

// checkpoint asks pod's hook for a checkpoint, one request at a time per pod:
// a node reclaimed with others of its pool runs its own notice and the
// scheduler's commands for the same gang members at once, and each job
// asked every pod, two requests at a time that a trainer may refuse or run
// twice. A job that asks while another's request is in flight takes that
// request's answer (and its end if that job's hooks are cut), but waits no
// longer than its own deadline: a Spot notice due in 30 s must not wait
// for a command's checkpoint due in ten minutes before it evicts.
func (f *Flow) checkpoint(ctx context.Context, pod *corev1.Pod, req checkpoint.Request) checkpoint.Result {
	asked := time.Now()
	ch := f.asking.DoChan(string(pod.UID), func() (any, error) {
		return f.checkpoints.Checkpoint(ctx, pod, req), nil
	})
	due := time.NewTimer(time.Until(req.Deadline))
	defer due.Stop()
	select {
	case r := <-ch:
		return r.Val.(checkpoint.Result)
	case <-ctx.Done():
		return checkpoint.Result{} // the caller stops: ctx.Err says why
	case <-due.C:
	}
	// The request this job made ends at its deadline too: its answer may
	// be on its way.
	select {
	case r := <-ch:
		return r.Val.(checkpoint.Result)
	default:
	}
	return checkpoint.Result{
		State:     telemetryv1.CheckpointStatus_STATE_FAILED,
		Message:   fmt.Sprintf("the checkpoint hook did not answer by the deadline %s", req.Deadline.UTC().Format(time.RFC3339)),
		Requested: asked, Finished: time.Now(),
	}
}

// checkpointAll asks every pod at once and waits for every answer (each
// bounded by req.Deadline). Pods whose checkpoint this job already has are
// not asked again.
func (f *Flow) checkpointAll(ctx context.Context, js *jobState, pods []*corev1.Pod, req checkpoint.Request, statusID string, since time.Time, origin string) {
	var wg sync.WaitGroup
	sendStatus := func(pod *corev1.Pod, state telemetryv1.CheckpointStatus_State, msg string) {
		// Hooks answer what they like: a status the scheduler refuses is
		// lost, and one that does not encode ends the agent's stream.
		f.status(&telemetryv1.CheckpointStatus{
			CommandId: statusID, Pod: &telemetryv1.PodRef{Namespace: pod.Namespace, Name: pod.Name},
			State: state, Message: telemetryv1.StatusText(msg), UpdatedAt: timestamppb.Now(),
		}, js.j.Deadline)
	}
	for _, pod := range pods {
		rec := js.pod(pod)
		js.mu.Lock()
		already := rec.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
		js.mu.Unlock()
		if already {
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_DONE, rec.Message)
			continue
		}
		if _, ok := pod.Annotations[checkpoint.Annotation]; !ok {
			js.mu.Lock()
			rec.Checkpoint, rec.Message = telemetryv1.CheckpointStatus_STATE_NO_HOOK.String(), "no checkpoint hook"
			js.saveLocked()
			js.mu.Unlock()
			f.metrics.checkpoints.WithLabelValues(origin, string(checkpointNoHook)).Inc()
			f.recorder.Eventf(pod, corev1.EventTypeWarning, "NoCheckpointHook", "%s; the pod declares no %s hook, so its work since its last checkpoint will be lost", req.Reason, checkpoint.Annotation)
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_NO_HOOK, "no checkpoint hook")
			continue
		}
		js.mu.Lock()
		rec.Checkpoint = telemetryv1.CheckpointStatus_STATE_REQUESTED.String()
		js.saveLocked()
		js.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.metrics.step(stepCheckpointRequest, since)
			f.recorder.Eventf(pod, corev1.EventTypeNormal, "CheckpointRequested", "%s: asked the pod to checkpoint by %s", req.Reason, req.Deadline.UTC().Format(time.RFC3339))
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_REQUESTED, "")
			asked := time.Now()
			res := f.checkpoint(ctx, pod, req)
			if ctx.Err() != nil {
				if !errors.Is(context.Cause(ctx), errHooksCut) {
					return // the agent is stopping; the state says to ask again
				}
				if !res.Done() {
					// Cut short, the hook did not checkpoint by the new
					// deadline: a failure to report like any other, not
					// a request left open.
					res = checkpoint.Result{
						State:     telemetryv1.CheckpointStatus_STATE_FAILED,
						Message:   fmt.Sprintf("the hook did not answer by %s: %v", time.Now().UTC().Format(time.RFC3339), errHooksCut),
						Requested: asked, Finished: time.Now(),
					}
				}
			}
			f.metrics.checkpointSeconds.Observe(res.Finished.Sub(res.Requested).Seconds())
			js.mu.Lock()
			rec.Checkpoint, rec.Message = res.State.String(), res.Message
			js.saveLocked()
			js.mu.Unlock()
			if res.Done() {
				f.metrics.checkpoints.WithLabelValues(origin, string(checkpointDone)).Inc()
				f.metrics.step(stepCheckpointDone, since)
				f.recorder.Eventf(pod, corev1.EventTypeNormal, "CheckpointWritten", "%s", res.Message)
			} else {
				f.metrics.checkpoints.WithLabelValues(origin, string(checkpointFailed)).Inc()
				f.recorder.Eventf(pod, corev1.EventTypeWarning, "CheckpointFailed", "%s", res.Message)
			}
			sendStatus(pod, res.State, res.Message)
		}()
	}
	wg.Wait()
}
