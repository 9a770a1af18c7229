package reclaim

// Moves back to Spot: SpotRisk's mover (returnToSpot, docs/spot.md) picks a
// workload that fell back to on-demand capacity; the coordinator asks the
// agents of its pods' nodes for a checkpoint, over the same command stream a
// reclaim uses, and evicts the pods once every checkpoint is written. The
// pods' owner (a Job, a JobSet, the gang's controller) creates replacements,
// which SpotRisk places on Spot.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// ReturnRequest is one move back to Spot.
type ReturnRequest struct {
	// Workload names what moves (a gang key, or namespace/name of a pod
	// alone), for logs.
	Workload string
	// Pods are all its pods: they move together or not at all.
	Pods []*corev1.Pod
	// Timeout is how long the pods have to write their checkpoints.
	Timeout time.Duration
	// Why says in words what the move is expected to save, for the pods'
	// events.
	Why string
}

// ReturnResult is how a move ended: a result label value of
// penny_spot_returns_total.
type ReturnResult string

const (
	// ReturnMoved: every checkpoint was written and every pod evicted.
	ReturnMoved ReturnResult = "moved"
	// ReturnNoCheckpoint: a pod's checkpoint was not written in time (or
	// its agent could not be asked); nothing was evicted.
	ReturnNoCheckpoint ReturnResult = "no_checkpoint"
	// ReturnNotEvicted: after the checkpoints, an eviction was refused (a
	// PodDisruptionBudget, until the timeout) or failed.
	ReturnNotEvicted ReturnResult = "not_evicted"
	// ReturnRefused: before any checkpoint, the API server would not evict
	// a pod (a dry run: a PodDisruptionBudget that allows no disruption, a
	// pod gone); nothing was asked for or evicted.
	ReturnRefused ReturnResult = "refused"
)

var returnResults = []ReturnResult{ReturnMoved, ReturnNoCheckpoint, ReturnNotEvicted, ReturnRefused}

// dryRunTimeout bounds each dry-run eviction of a move.
var dryRunTimeout = 15 * time.Second

// pollEvery is how often Return looks at how the checkpoints stand.
var pollEvery = 250 * time.Millisecond

// Return moves a workload back to Spot: it asks every pod's node for a
// checkpoint due within req.Timeout, and only once all of them are written
// evicts the pods, each with its own grace period. A checkpoint that fails,
// or is not written in time, leaves every pod running where it is: a move
// is worth making only without losing work, unlike a reclaim, which takes
// the node whatever the pods have saved. So does an eviction the API server
// would refuse, asked as a dry run before the checkpoints and again before
// the evictions: a PodDisruptionBudget that lets one member of a gang go
// and not another would leave the gang torn, and no move is worth that.
// The coordinator must be running (Run): it carries the agents' answers.
func (c *Coordinator) Return(ctx context.Context, req ReturnRequest) ReturnResult {
	c.mu.Lock()
	started, opts, recorder := c.started, c.opts, c.recorder
	c.mu.Unlock()
	log := opts.Log.WithValues("workload", req.Workload)
	if !started || len(req.Pods) == 0 {
		log.Info("not moving back to Spot: the reclaim coordinator does not run yet", "pods", len(req.Pods))
		return c.returned(ReturnNoCheckpoint)
	}
	// skipped tells every pod why the move was not made.
	skipped := func(format string, args ...any) {
		for _, p := range req.Pods {
			recorder.Eventf(p, corev1.EventTypeWarning, "SpotReturnSkipped", "not moved back to Spot: "+format, args...)
		}
	}
	if refused, err := c.refusedEvictions(ctx, req.Pods, time.Time{}, log); err != nil {
		return c.returned(ReturnNoCheckpoint)
	} else if len(refused) > 0 {
		log.Info("not moving back to Spot: the API server would not evict every pod now", "pods", refused)
		skipped("the API server would not evict %s now; nothing was checkpointed or evicted", strings.Join(refused, ", "))
		return c.returned(ReturnRefused)
	}
	deadline := time.Now().Add(req.Timeout)
	fanouts := returnFanouts(req, deadline)
	c.mu.Lock()
	for _, f := range fanouts {
		c.fanouts[f.id] = f
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, f := range fanouts {
			delete(c.fanouts, f.id)
		}
		c.mu.Unlock()
	}()
	reason := "moving back to Spot: " + req.Why
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	commands := make(map[string]*telemetryv1.CheckpointCommand, len(fanouts))
	for _, f := range fanouts {
		refs := make([]*telemetryv1.PodRef, len(f.pods))
		for i, p := range f.pods {
			refs[i] = &telemetryv1.PodRef{Namespace: p.Namespace, Name: p.Name}
		}
		commands[f.id] = &telemetryv1.CheckpointCommand{Id: f.id, Pods: refs, Deadline: timestamppb.New(deadline), Reason: reason}
	}
	// Sent until each node's agent took its command, and again to an
	// agent that has not answered resendEvery later (its stream may have
	// broken before it read the command); waited for until every
	// checkpoint is over or the deadline.
	sentAt := map[string]time.Time{}
	for {
		over := true
		for _, f := range fanouts {
			if f.finished() {
				continue
			}
			over = false
			if at, ok := sentAt[f.id]; ok && (f.heard() || time.Since(at) < resendEvery) {
				continue
			}
			if n, err := opts.Commands.SendCheckpoint(f.node, commands[f.id]); err == nil && n > 0 {
				sentAt[f.id] = time.Now()
			}
		}
		if over || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return c.returned(ReturnNoCheckpoint)
		case <-time.After(min(pollEvery, time.Until(deadline))):
		}
	}
	var missing []string
	for _, f := range fanouts {
		f.mu.Lock()
		for _, p := range f.pods {
			key := p.Namespace + "/" + p.Name
			if s := f.states[key]; s != telemetryv1.CheckpointStatus_STATE_DONE {
				what := strings.TrimPrefix(s.String(), "STATE_")
				if _, asked := sentAt[f.id]; !asked {
					what = "its node's agent could not be asked"
				}
				missing = append(missing, key+" ("+what+")")
			}
		}
		f.mu.Unlock()
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		log.Info("not moving back to Spot: checkpoints not written in time", "timeout", req.Timeout, "pods", missing)
		skipped("the checkpoints of %s were not written within %v; nothing was evicted", strings.Join(missing, ", "), req.Timeout)
		return c.returned(ReturnNoCheckpoint)
	}
	// A PodDisruptionBudget's refusal is asked again until the timeout runs
	// out once more: the checkpoints are written, and a pod that cannot go
	// now may go in a minute. Asked as a dry run for every pod first, so
	// that none goes unless all may.
	evictUntil := time.Now().Add(req.Timeout)
	if refused, err := c.refusedEvictions(ctx, req.Pods, evictUntil, log); err != nil {
		return c.returned(ReturnNotEvicted)
	} else if len(refused) > 0 {
		log.Info("not moving back to Spot: the API server would not evict every pod", "timeout", req.Timeout, "pods", refused)
		skipped("the checkpoints are written, but the API server would not evict %s within %v; nothing was evicted", strings.Join(refused, ", "), req.Timeout)
		return c.returned(ReturnNotEvicted)
	}
	if opts.Notices != nil {
		rec := returnRecordOf(req, evictUntil)
		if err := c.recordReturn(ctx, rec, log); err != nil {
			log.Error(err, "not moving back to Spot: cannot record the move, which a restart between its evictions would leave torn")
			skipped("the checkpoints are written, but the move could not be recorded (%v), and a scheduler restart between its evictions would leave the workload torn; nothing was evicted", err)
			return c.returned(ReturnNotEvicted)
		}
		defer func() {
			// A scheduler on its way out leaves the record: the next
			// leader finishes what it did not (FinishInterruptedMoves).
			if ctx.Err() == nil {
				c.dropReturn(ctx, rec, log)
			}
		}()
	}
	result := c.evictReturn(ctx, req.Pods, evictUntil, "evicted to move back to Spot, its checkpoint written: "+req.Why, log)
	if result == ReturnMoved {
		log.Info("moved back to Spot", "pods", len(req.Pods), "why", req.Why)
	}
	return c.returned(result)
}

// evictReturn evicts a move's pods, each with its own grace period, every
// pod once before any again; a refusal that may pass (a budget's, a
// conflict, a server that could not decide) is asked again until until.
// message is each evicted pod's SpotReturn event.
func (c *Coordinator) evictReturn(ctx context.Context, pods []*corev1.Pod, until time.Time, message string, log logr.Logger) ReturnResult {
	c.mu.Lock()
	recorder := c.recorder
	c.mu.Unlock()
	failed := false
	if !EvictInPasses(ctx, pods, func(p *corev1.Pod) bool {
		grace := EvictionGrace(p, until.Add(time.Hour))
		gone, err := c.evictMember(ctx, p, grace, false, log)
		switch {
		case ctx.Err() != nil:
			return false
		case (apierrors.IsTooManyRequests(err) || apierrors.IsConflict(err) || Undecided(err)) && time.Now().Before(until):
			return true
		case gone || apierrors.IsNotFound(err):
		case err == nil:
			recorder.Event(p, corev1.EventTypeNormal, "SpotReturn", message)
		default:
			failed = true
			log.Error(err, "cannot evict a pod moving back to Spot", "pod", p.Namespace+"/"+p.Name)
			recorder.Eventf(p, corev1.EventTypeWarning, "SpotReturnEvictionFailed", "could not evict this pod to move it back to Spot: %v", err)
		}
		return false
	}) || failed {
		return ReturnNotEvicted
	}
	return ReturnMoved
}

// refusedEvictions asks the API server, as dry runs, to evict each pod,
// and names those it would not evict, each with why ("ns/name (why)",
// sorted). A refusal that may pass (a PodDisruptionBudget's, a conflict, a
// server that could not decide) is asked again, every pod once before any
// again, until until; a zero until asks once. Each ask has dryRunTimeout:
// client-go waits out and repeats a refusal that names a time to come back
// (a budget the disruption controller has not yet processed says 10s), up
// to ten times. The error is ctx's.
//
// Each dry run is judged alone, so a budget that covers two members and
// allows one disruption passes both, and then refuses the second real
// eviction, after the first member is gone. Once every dry run passes, the
// budgets are read and one that covers more of the pods than it allows
// disruptions (shortBudgets) refuses them all, asked again as a refusal is.
func (c *Coordinator) refusedEvictions(ctx context.Context, pods []*corev1.Pod, until time.Time, log logr.Logger) ([]string, error) {
	for {
		refused := c.dryRunEvictions(ctx, pods, until, log)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(refused) == 0 {
			refused = c.shortBudgets(ctx, pods)
			if len(refused) > 0 && time.Now().Before(until) {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(min(pollEvery, time.Until(until))):
				}
				continue
			}
		}
		out := make([]string, 0, len(refused))
		for key, why := range refused {
			out = append(out, key+" ("+why+")")
		}
		sort.Strings(out)
		return out, nil
	}
}

// dryRunEvictions is refusedEvictions' dry runs: why each pod refused was,
// by "namespace/name".
func (c *Coordinator) dryRunEvictions(ctx context.Context, pods []*corev1.Pod, until time.Time, log logr.Logger) map[string]string {
	refused := map[string]string{}
	EvictInPasses(ctx, pods, func(p *corev1.Pod) bool {
		key := p.Namespace + "/" + p.Name
		askCtx, cancel := context.WithTimeout(ctx, dryRunTimeout)
		gone, err := c.evictMember(askCtx, p, EvictionGrace(p, time.Now().Add(time.Hour)), true, log)
		timedOut := askCtx.Err() != nil
		cancel()
		if err != nil && ctx.Err() == nil && timedOut {
			refused[key] = fmt.Sprintf("no answer within %v: %v", dryRunTimeout, err)
			return time.Now().Before(until)
		}
		switch {
		case ctx.Err() != nil:
			return false
		case gone || apierrors.IsNotFound(err):
			refused[key] = "gone, finished or being deleted"
			return false
		case err == nil:
			delete(refused, key)
			return false
		}
		refused[key] = err.Error()
		return (apierrors.IsTooManyRequests(err) || apierrors.IsConflict(err) || Undecided(err)) && time.Now().Before(until)
	})
	return refused
}

// ready is whether the pod's Ready condition is true, as the API server's
// eviction reads it (k8s.io/kubernetes's IsPodReady; the agent, which
// shares this package, does not carry that module).
func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// shortBudgets reads the PodDisruptionBudgets of the pods' namespaces and,
// for each that covers more of the pods than its status allows disruptions,
// says so of every pod it covers, by "namespace/name". Only ready pods
// count: the API server evicts a pod that is not ready without spending a
// disruption where its budget's healthy pods allow (the dry run of that pod
// says when they do not). A namespace whose budgets cannot be read refuses
// its pods: a move that cannot be told whole must not start.
func (c *Coordinator) shortBudgets(ctx context.Context, pods []*corev1.Pod) map[string]string {
	refused := map[string]string{}
	byNS := map[string][]*corev1.Pod{}
	for _, p := range pods {
		byNS[p.Namespace] = append(byNS[p.Namespace], p)
	}
	for ns, nsPods := range byNS {
		askCtx, cancel := context.WithTimeout(ctx, dryRunTimeout)
		list, err := c.opts.Client.PolicyV1().PodDisruptionBudgets(ns).List(askCtx, metav1.ListOptions{})
		cancel()
		if err != nil {
			for _, p := range nsPods {
				refused[p.Namespace+"/"+p.Name] = fmt.Sprintf("cannot read the PodDisruptionBudgets of namespace %s: %v", ns, err)
			}
			continue
		}
		for i := range list.Items {
			pdb := &list.Items[i]
			// A budget without a selector covers no pod (policy/v1).
			if pdb.Spec.Selector == nil {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil {
				continue
			}
			var covered []*corev1.Pod
			for _, p := range nsPods {
				if sel.Matches(labels.Set(p.Labels)) && ready(p) {
					covered = append(covered, p)
				}
			}
			if allowed := int(pdb.Status.DisruptionsAllowed); len(covered) > allowed {
				for _, p := range covered {
					refused[p.Namespace+"/"+p.Name] = fmt.Sprintf("PodDisruptionBudget %s/%s allows %d disruptions, and the move would evict %d of the ready pods it covers",
						pdb.Namespace, pdb.Name, allowed, len(covered))
				}
			}
		}
	}
	return refused
}

func (c *Coordinator) returned(r ReturnResult) ReturnResult {
	returnsTotal.WithLabelValues(string(r)).Inc()
	return r
}

// returnFanouts groups a move's pods by node, one command each, named by
// the pods' UIDs and the move's deadline: an agent runs a command id once
// (and keeps a finished job for a day), so a move tried again after one
// that evicted nothing, on the same pods, must ask for checkpoints anew.
func returnFanouts(req ReturnRequest, deadline time.Time) []*fanout {
	byNode := map[string]*fanout{}
	var out []*fanout
	for _, p := range req.Pods {
		f := byNode[p.Spec.NodeName]
		if f == nil {
			f = &fanout{node: p.Spec.NodeName, deadline: deadline, moved: make(chan struct{}, 1),
				states: map[string]telemetryv1.CheckpointStatus_State{}, done: make(chan struct{})}
			byNode[p.Spec.NodeName] = f
			out = append(out, f)
		}
		f.pods = append(f.pods, p)
		f.states[p.Namespace+"/"+p.Name] = telemetryv1.CheckpointStatus_STATE_UNSPECIFIED
	}
	for _, f := range out {
		h := sha256.New()
		fmt.Fprintf(h, "return\x00%s\x00%d", f.node, deadline.UnixNano())
		for _, p := range f.pods {
			fmt.Fprintf(h, "\x00%s", p.UID)
		}
		f.id = "return-" + hex.EncodeToString(h.Sum(nil)[:12])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].node < out[j].node })
	return out
}

// MoveToSpot is Return as SpotRisk's mover asks for it (spotrisk.Mover).
func (c *Coordinator) MoveToSpot(ctx context.Context, workload string, pods []*corev1.Pod, timeout time.Duration, why string) bool {
	return c.Return(ctx, ReturnRequest{Workload: workload, Pods: pods, Timeout: timeout, Why: why}) == ReturnMoved
}
