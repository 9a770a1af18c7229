package sim

import (
	"fmt"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// ReclaimRule is what a Spot reclaim costs the pods of the removed node in a
// replay, by the rules Penny's reclaim pipeline follows (docs/reclaim.md),
// so that the savings a replay reports are the ones the pipeline delivers:
//
//   - With NoticeCheckpoints (Penny), the cloud's notice makes every pod that
//     declares a checkpoint hook (penny.dev/checkpoint) write a checkpoint,
//     and the other members of its gang with it. A pod keeps its work up to
//     the notice if the checkpoint fits in the notice less the safety margin;
//     otherwise, or without a hook, the notice does not help it.
//   - Otherwise a pod keeps its work up to its last periodic checkpoint
//     (penny.dev/checkpoint-interval) before it stopped, or nothing.
//   - A gang restarts as a whole: when one member loses work, every member
//     is stopped and goes back to the least any member kept (a distributed
//     job cannot continue without one of its ranks).
//
// When the pods stop is Answered's: the elastic replay (ElasticReplay)
// stops them when the agent evicts them, during the notice; the replay of
// a trace's fleet changes (ReplayOptions.Reclaim) stops them when the node
// goes.
//
// The work a pod loses is GPU time the fleet paid for that produced
// nothing; the replay reports it.
type ReclaimRule struct {
	// NoticeCheckpoints turns on Penny's notice-triggered checkpoints; off
	// models a handler that only cordons and drains.
	NoticeCheckpoints bool
	// Notice is how long before the removal each cloud warns, keyed by the
	// node's providerID scheme (aws, gce, azure); "" is the default for
	// nodes without one. Zero values take DefaultNotices.
	Notice map[string]time.Duration
	// SafetyMargin is left before the removal for the pods to stop: the
	// agents' and the coordinator's (reclaim.DefaultSafetyMargin, 5s).
	SafetyMargin time.Duration
	// CheckpointTakes is how long writing a checkpoint takes (20s).
	CheckpointTakes time.Duration
	// Reasons are the fleet-change reasons that are reclaims ("spot-reclaim"
	// when empty); other removals (a scale-down) drain without loss.
	Reasons []string
}

// DefaultNotices are the clouds' warnings: AWS two minutes, GCP and Azure
// about thirty seconds; nodes of no known cloud get AWS's.
var DefaultNotices = map[string]time.Duration{"aws": 2 * time.Minute, "gce": 30 * time.Second, "azure": 30 * time.Second, "": 2 * time.Minute}

func (r *ReclaimRule) notice(node *v1.Node) time.Duration {
	scheme := ""
	if node != nil {
		scheme, _, _ = strings.Cut(node.Spec.ProviderID, "://")
		if node.Spec.ProviderID == "" || !strings.Contains(node.Spec.ProviderID, "://") {
			scheme = ""
		}
	}
	if d, ok := r.Notice[scheme]; ok && d > 0 {
		return d
	}
	if d, ok := DefaultNotices[scheme]; ok {
		return d
	}
	return DefaultNotices[""]
}

func (r *ReclaimRule) isReclaim(reason string) bool {
	if len(r.Reasons) == 0 {
		return reason == "spot-reclaim"
	}
	for _, s := range r.Reasons {
		if s == reason {
			return true
		}
	}
	return false
}

// gangKey names the pod's gang as pkg/gang reads it (penny.dev/gang labels
// or a native PodGroup, per namespace); "" when the pod has none.
func gangKey(pod *v1.Pod) string {
	if ref, ok := gang.RefOf(pod); ok {
		return ref.Key()
	}
	return ""
}

// How a pod's work survived a reclaim.
const (
	KeptNoticeCheckpoint   = "notice-checkpoint"
	KeptPeriodicCheckpoint = "periodic-checkpoint"
	KeptNothing            = "nothing"
)

// margins are the safety margin and the time a checkpoint takes, defaulted.
func (r *ReclaimRule) margins() (margin, takes time.Duration) {
	margin, takes = r.SafetyMargin, r.CheckpointTakes
	if margin <= 0 {
		margin = reclaim.DefaultSafetyMargin
	}
	if takes <= 0 {
		takes = 20 * time.Second
	}
	return margin, takes
}

// noticeCheckpoints: the pod writes a checkpoint at its node's notice that
// is done in time (it declares a hook, and the checkpoint fits in the
// notice less the safety margin).
func (r *ReclaimRule) noticeCheckpoints(pod *v1.Pod, notice time.Duration) bool {
	margin, takes := r.margins()
	_, hook := pod.Annotations[spotrisk.AnnotationCheckpointHook]
	return hook && r.NoticeCheckpoints && takes <= notice-margin
}

// Answered is how long after its node's notice a pod has answered the
// agent's checkpoint request (docs/reclaim.md, the agent's steps 3 and 4):
// the agent evicts a node's pods once all of them answered, and the
// coordinator a gang's members on another node once they did. A pod
// without a hook answers at once (it can only be told its work since its
// last checkpoint will be lost), one whose checkpoint fits once it is
// written, and one whose checkpoint does not fit never: it is waited for
// until the deadline less the margin. Without NoticeCheckpoints there is
// no agent: a handler that cordons and drains evicts at the notice.
func (r *ReclaimRule) Answered(pod *v1.Pod, notice time.Duration) time.Duration {
	margin, takes := r.margins()
	_, hook := pod.Annotations[spotrisk.AnnotationCheckpointHook]
	switch {
	case !r.NoticeCheckpoints || !hook:
		return 0
	case r.noticeCheckpoints(pod, notice):
		return takes
	}
	return max(notice-margin, 0)
}

// Kept is how much of its work a pod keeps when its node is reclaimed with
// the given notice, and how: atNotice is the work it had done when the
// notice came, atStop when it stopped (its eviction, or the node's removal
// where the replay does not model the notice). A notice checkpoint holds
// the state reached at the notice: the pod loses the time it ran after it.
// A periodic checkpoint holds the state at the last interval before it
// stopped.
func (r *ReclaimRule) Kept(pod *v1.Pod, atNotice, atStop, notice time.Duration) (time.Duration, string) {
	if r.noticeCheckpoints(pod, notice) {
		return max(min(atNotice, atStop), 0), KeptNoticeCheckpoint
	}
	if s, ok := pod.Annotations[spotrisk.AnnotationCheckpointInterval]; ok {
		if every, err := time.ParseDuration(s); err == nil && every > 0 {
			return atStop / every * every, KeptPeriodicCheckpoint
		}
	}
	return 0, KeptNothing
}

// ReclaimOutcome sums up what reclaims cost in a replay.
type ReclaimOutcome struct {
	NoticeCheckpoints bool `json:"notice_checkpoints"`
	// Reclaims is how many nodes were reclaimed.
	Reclaims int `json:"reclaims"`
	// PodsHit counts pods stopped by a reclaim, their gang peers included.
	PodsHit int `json:"pods_hit"`
	// Kept counts the pods by how their work survived.
	Kept map[string]int `json:"kept"`
	// LostGPUHours is GPU time spent on work the reclaims threw away.
	LostGPUHours float64 `json:"lost_gpu_hours"`
}

// progress is the work a bound pod has done, counting what it kept from
// earlier placements.
func (r *replayer) progress(p *replayPod) time.Duration {
	return p.kept + (r.now - p.start)
}

// reclaimed applies the rule to the pods a reclaim took off node n: each
// keeps what the rule allows, the other members of their gangs are stopped
// and go back to what the gang kept, and all wait to be placed again.
func (r *replayer) reclaimed(fc *FleetChange, n *v1.Node, evicted []*v1.Pod) error {
	rule := r.o.Reclaim
	out := r.res.Reclaim
	notice := rule.notice(n)
	if rule.isReclaim(fc.Reason) {
		out.Reclaims++
	}
	type hit struct {
		i    int
		kept time.Duration
		how  string
	}
	type gangState struct {
		kept time.Duration
		how  string
	}
	var hits []hit
	hitIdx := map[int]bool{}
	gangs := map[string]*gangState{}
	for _, bp := range evicted {
		i := r.byUID[bp.UID]
		p := r.pods[i]
		progress := r.progress(p)
		kept, how := progress, "drained"
		if rule.isReclaim(fc.Reason) {
			// This replay stops the pods when the node goes, a notice
			// after it came.
			kept, how = rule.Kept(p.tp.Pod, max(progress-notice, 0), progress, notice)
		}
		hits = append(hits, hit{i: i, kept: kept, how: how})
		hitIdx[i] = true
		if k := gangKey(p.tp.Pod); k != "" {
			if g := gangs[k]; g == nil || kept < g.kept {
				gangs[k] = &gangState{kept: kept, how: how}
			}
		}
	}
	// The other members of a hit gang stop too, and every member restarts
	// from what the gang as a whole kept, for the reason that member kept
	// it.
	if len(gangs) > 0 {
		for i, p := range r.pods {
			if p.bound == nil || hitIdx[i] {
				continue
			}
			if k := gangKey(p.tp.Pod); k != "" && gangs[k] != nil {
				if err := r.e.Remove(p.bound); err != nil {
					return err
				}
				r.freed = append(r.freed, p.bound.Spec.NodeName)
				hits = append(hits, hit{i: i})
			}
		}
		for k := range hits {
			if g := gangs[gangKey(r.pods[hits[k].i].tp.Pod)]; g != nil {
				hits[k].kept, hits[k].how = g.kept, g.how
			}
		}
	}
	for _, h := range hits {
		p := r.pods[h.i]
		lost := r.progress(p) - h.kept
		if rule.isReclaim(fc.Reason) {
			out.PodsHit++
			out.Kept[h.how]++
			out.LostGPUHours += lost.Hours() * float64(p.milli) / 1000
		}
		r.evict(p)
		p.kept = h.kept
	}
	for _, h := range hits {
		if err := r.try(h.i); err != nil {
			return err
		}
	}
	return nil
}

// reclaimSummary is the replay summary's line about reclaims.
func (o *ReclaimOutcome) summary() string {
	if o == nil {
		return ""
	}
	mode := "without notice checkpoints"
	if o.NoticeCheckpoints {
		mode = "with Penny's notice checkpoints"
	}
	var kinds []string
	for k, n := range o.Kept {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	return fmt.Sprintf("reclaims %s: %d nodes, %d pods stopped (%s), %.1f GPU-hours of work lost\n",
		mode, o.Reclaims, o.PodsHit, strings.Join(kinds, ", "), o.LostGPUHours)
}
