package reclaim

// A move back to Spot evicts its pods one after another. A scheduler that
// stops between two of them (a crash, a rollout, a lost lease) would leave
// the workload torn: some members evicted, to come back on Spot, and the
// rest running on on-demand without them. So before its first eviction a
// move is recorded, with every pod's UID, and the record is removed once
// the evictions are over. The replica that leads next finishes a recorded
// move that evicted some of its pods and not all (FinishInterruptedMoves).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pennysched/penny/pkg/configmaplines"
)

// ReturnsKey is the key of the notices' ConfigMap (NoticeStore) that holds
// the moves back to Spot whose evictions have begun: one line per move,
// "<workload> <evict until> <namespace>/<name>/<uid>,...", e.g.
// "label:ml/llm 2026-12-03T10:10:00Z ml/llm-0/3f0c2b1e-...,ml/llm-1/9a1e0d2c-..."
// (the workload written as a notice's free-form fields are, the time in
// RFC 3339).
const ReturnsKey = "returns"

// returnFinishGrace is how long after its evictions' window a move
// interrupted by a restart is still finished. Later, the workload has most
// likely been restarted whole by its owner, and the checkpoints written for
// the move are old: the record is dropped.
const returnFinishGrace = 10 * time.Minute

// returnRecord is a move whose evictions have begun.
type returnRecord struct {
	workload string
	// until is when the move stops asking again for evictions a
	// PodDisruptionBudget refused.
	until time.Time
	pods  []returnPod
}

type returnPod struct {
	namespace, name string
	uid             types.UID
}

func (p returnPod) key() string { return p.namespace + "/" + p.name }

func returnRecordOf(req ReturnRequest, until time.Time) returnRecord {
	r := returnRecord{workload: req.Workload, until: until}
	for _, p := range req.Pods {
		r.pods = append(r.pods, returnPod{namespace: p.Namespace, name: p.Name, uid: p.UID})
	}
	return r
}

func (r returnRecord) String() string {
	pods := make([]string, len(r.pods))
	for i, p := range r.pods {
		pods[i] = p.key() + "/" + string(p.uid)
	}
	// To the nanosecond: the record read back is the one removed.
	return field(r.workload) + " " + r.until.UTC().Format(time.RFC3339Nano) + " " + strings.Join(pods, ",")
}

func parseReturnLine(line string) (returnRecord, error) {
	const want = "<workload> <evict until, RFC 3339> <namespace>/<name>/<uid>,..."
	f := strings.Fields(line)
	if len(f) != 3 {
		return returnRecord{}, fmt.Errorf("want %s, not %d fields", want, len(f))
	}
	var r returnRecord
	var err error
	if r.workload, err = unfield(f[0]); err != nil || r.workload == "" {
		return returnRecord{}, fmt.Errorf("workload %q: not a name escaped as a URL path is; want %s", f[0], want)
	}
	if r.until, err = configmaplines.ParseTime(f[1]); err != nil {
		return returnRecord{}, fmt.Errorf("evict until %q: %v; want %s", f[1], err, want)
	}
	for _, s := range strings.Split(f[2], ",") {
		parts := strings.Split(s, "/")
		if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			return returnRecord{}, fmt.Errorf("pod %q: want <namespace>/<name>/<uid>, pods separated by commas", s)
		}
		r.pods = append(r.pods, returnPod{namespace: parts[0], name: parts[1], uid: types.UID(parts[2])})
	}
	return r, nil
}

func (s *NoticeStore) returnsKey() configmaplines.Key {
	return configmaplines.Key{Client: s.Client, Namespace: s.Namespace, Name: s.Name, Key: ReturnsKey}
}

// updateReturns applies change to the recorded moves, by workload, and
// writes them back, dropping those too old to finish. Moves that would
// grow past configmaplines.MaxBytes are not written.
func (s *NoticeStore) updateReturns(ctx context.Context, log logr.Logger, change func(map[string]returnRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.returnsKey()
	var tooLarge error
	err := k.Update(ctx, func(text string) string {
		tooLarge = nil
		list, err := configmaplines.Parse(text, k.String(), parseReturnLine)
		if err != nil {
			log.Error(err, "Recorded moves back to Spot: lines skipped")
		}
		recs := make(map[string]returnRecord, len(list))
		for _, r := range list {
			recs[r.workload] = r
		}
		change(recs)
		cutoff := time.Now().Add(-returnFinishGrace)
		var lines []string
		for _, r := range recs {
			if r.until.After(cutoff) {
				lines = append(lines, r.String())
			}
		}
		slices.Sort(lines)
		out := strings.Join(lines, "\n")
		if len(out) > configmaplines.MaxBytes && len(out) > len(text) {
			tooLarge = fmt.Errorf("%s: %d moves would take %d bytes, more than the %d a ConfigMap key may hold", k, len(lines), len(out), configmaplines.MaxBytes)
			return text
		}
		return out
	})
	if err != nil {
		return err
	}
	return tooLarge
}

// FinishInterruptedMoves finishes the moves back to Spot that a scheduler
// stopped in the middle of evicting: a recorded move of which some pods are
// gone (evicted, or replaced under the same name) has the rest evicted,
// each still checkpointed from the move, with the pod's own grace period
// and a PodDisruptionBudget's refusal asked again until the move's window
// ends (or for a minute, when it has). A recorded move that evicted none of
// its pods is only dropped: no workload is torn, and a later round may plan
// it afresh. It is for the replica that leads (SpotRisk's Returner calls it
// when it takes the lease and before each round), with the coordinator
// running. It returns how many moves it finished; the error says it could
// not look (the coordinator does not run yet, the records could not be
// read), and a recorded move it could not tell the state of is looked at
// again next time.
func (c *Coordinator) FinishInterruptedMoves(ctx context.Context) (int, error) {
	c.mu.Lock()
	started, opts := c.started, c.opts
	c.mu.Unlock()
	if !started {
		return 0, errors.New("the reclaim coordinator does not run yet")
	}
	if opts.Notices == nil {
		return 0, nil
	}
	log := opts.Log.WithName("spot-return")
	k := opts.Notices.returnsKey()
	text, err := k.Read(ctx)
	if err != nil {
		return 0, err
	}
	recs, err := configmaplines.Parse(text, k.String(), parseReturnLine)
	if err != nil {
		// Written again without them, so that they are reported once.
		log.Error(err, "Recorded moves back to Spot: lines skipped and dropped")
		if err := opts.Notices.updateReturns(ctx, logr.Discard(), func(map[string]returnRecord) {}); err != nil {
			log.Error(err, "Cannot drop the lines")
		}
	}
	finished := 0
	for _, r := range recs {
		if ctx.Err() != nil {
			break
		}
		rlog := log.WithValues("workload", r.workload)
		if time.Since(r.until) > returnFinishGrace {
			rlog.Info("Not finishing a move back to Spot that a restart interrupted: its window ended long ago", "until", r.until)
			c.dropReturn(ctx, r, rlog)
			continue
		}
		left, err := c.leftRunning(ctx, r)
		switch {
		case err != nil:
			// Not known to be gone: looked at again next time.
			rlog.Error(err, "Cannot tell which pods of a move back to Spot a restart interrupted are left")
			continue
		case len(left) == len(r.pods):
			rlog.Info("Dropping a move back to Spot that a restart interrupted before its first eviction", "pods", len(r.pods))
		case len(left) > 0:
			rlog.Info("Finishing a move back to Spot that a restart interrupted", "evicted", len(r.pods)-len(left), "left", len(left))
			until := r.until
			if time.Until(until) < time.Minute {
				until = time.Now().Add(time.Minute)
			}
			c.returned(c.evictReturn(ctx, left, until, fmt.Sprintf(
				"evicted to finish a move back to Spot that a scheduler restart interrupted after evicting %d of its %d pods (workload %s); its checkpoint was written for the move",
				len(r.pods)-len(left), len(r.pods), r.workload), rlog))
			finished++
		}
		if ctx.Err() == nil {
			c.dropReturn(ctx, r, rlog)
		}
	}
	return finished, nil
}

// leftRunning reads the pods of a recorded move and returns those still
// running under the UID recorded.
func (c *Coordinator) leftRunning(ctx context.Context, r returnRecord) ([]*corev1.Pod, error) {
	var left []*corev1.Pod
	for _, p := range r.pods {
		cur, err := c.opts.Client.CoreV1().Pods(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("pod %s: %w", p.key(), err)
		case cur.UID == p.uid && live(cur):
			left = append(left, cur)
		}
	}
	return left, nil
}

// recordReturn records a move before its first eviction.
func (c *Coordinator) recordReturn(ctx context.Context, r returnRecord, log logr.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, noticeWriteTimeout)
	defer cancel()
	return c.opts.Notices.updateReturns(ctx, log, func(recs map[string]returnRecord) { recs[r.workload] = r })
}

// dropReturn removes a move's record once its evictions are over.
func (c *Coordinator) dropReturn(ctx context.Context, r returnRecord, log logr.Logger) {
	ctx, cancel := context.WithTimeout(ctx, noticeWriteTimeout)
	defer cancel()
	err := c.opts.Notices.updateReturns(ctx, log, func(recs map[string]returnRecord) {
		if cur, ok := recs[r.workload]; ok && cur.until.Equal(r.until) {
			delete(recs, r.workload)
		}
	})
	if err != nil {
		log.Error(err, "Cannot remove the record of a move back to Spot; the next round finds its pods gone or running and drops it")
	}
}
