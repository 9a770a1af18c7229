package reclaim

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

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
		grace := EvictionGrace(p, deadline)
		gone, err := c.evictMember(ctx, p, grace, false, log)
		if ctx.Err() != nil {
			return false
		}
		// A conflict left over is a member that kept changing under every
		// try, and a server that could not decide may next time: like a
		// budget's refusal, no reason to give up on the member.
		if (apierrors.IsTooManyRequests(err) || apierrors.IsConflict(err) || Undecided(err)) && time.Now().Add(time.Second).Before(deadline) {
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
// Job's replacement) from being evicted in its place. A dry run asks the API
// server whether it would evict the member now (its PodDisruptionBudget
// included) and evicts nothing.
func (c *Coordinator) evictMember(ctx context.Context, p *corev1.Pod, grace int64, dryRun bool, log logr.Logger) (gone bool, err error) {
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
			DeleteOptions: &metav1.DeleteOptions{GracePeriodSeconds: &grace, Preconditions: pre, DryRun: dryRunAll(dryRun)},
		})
		if !apierrors.IsConflict(err) || try == evictTries || ctx.Err() != nil {
			return false, err
		}
	}
}

func dryRunAll(dryRun bool) []string {
	if dryRun {
		return []string{metav1.DryRunAll}
	}
	return nil
}
