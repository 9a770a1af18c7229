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
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/telemetry"
)

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

// heard reports whether the agent has answered for any of the pods: it has
// the command.
func (f *fanout) heard() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.states {
		if s != telemetryv1.CheckpointStatus_STATE_UNSPECIFIED {
			return true
		}
	}
	return false
}

// finished reports whether every pod's checkpoint is over (done is closed).
func (f *fanout) finished() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// resendEvery is how long a command's agent has to answer before the
// command goes again: an agent answers as soon as it has a command
// (REQUESTED, or what it made of it), so one silent this long most likely
// never got it, and a copy of one it did get changes nothing. A variable
// so that tests need not wait as long.
var resendEvery = 5 * time.Second

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
	delivered := false
	for {
		sent, err := c.opts.Commands.SendCheckpoint(f.node, cmd)
		if err == nil && sent > 0 {
			delivered = true
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
	// A stream that took the command can still break before its agent read
	// it (the agent restarted, the connection dropped), and the agent's next
	// stream carries no trace of it: the members would be evicted without a
	// checkpoint, and no event would say why. Until the agent answers, the
	// command goes again, under the same id (the agent runs it once), every
	// resendEvery until giveUp.
	resendAt := time.Now().Add(resendEvery)
	for {
		if evict && (f.finished() || !time.Now().Before(evictBy)) {
			break
		}
		resend := delivered && resendAt.Before(giveUp) && !f.heard()
		if !evict && !resend {
			return
		}
		wake := evictBy
		if resend && (!evict || resendAt.Before(wake)) {
			wake = resendAt
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.moved:
			by(f.due())
		case <-f.done:
		case <-t.C:
		}
		t.Stop()
		if resend && !time.Now().Before(resendAt) && !f.heard() {
			if sent, err := c.opts.Commands.SendCheckpoint(f.node, cmd); err == nil && sent > 0 {
				log.V(1).Info("the agent has not answered the command; sent it again")
			}
			resendAt = time.Now().Add(resendEvery)
		}
	}
	if !gate.evict() {
		return
	}
	c.evictMembers(ctx, f, log)
}
