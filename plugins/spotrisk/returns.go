package spotrisk

import (
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
)

// AnnotationCheckpointHook is the agent's checkpoint hook annotation: only
// a pod that declares one the agent calls (reclaim.ParseHook) can be asked
// for a checkpoint before it is moved.
const AnnotationCheckpointHook = reclaim.HookAnnotation

// ReturnMember is one pod of a workload running on capacity it fell back
// to, and the Spot node the caller found room for it on.
type ReturnMember struct {
	Pod *corev1.Pod
	// Node is where the pod runs now.
	Node *corev1.Node
	// Usage is what the pod asks for.
	Usage pricing.Usage
	// Started is when this run began.
	Started time.Time
	// Spot is a Spot node, or a Spot pool's template node where the
	// autoscaler may add one, with room for the pod after the members
	// before it; nil when there is none.
	Spot *corev1.Node
}

// ReturnCandidate is a workload (a gang, or a pod alone) that could move
// back to Spot: all its members or none of them move, as a gang restarts
// as a whole.
type ReturnCandidate struct {
	// Workload names it: its gang key, else namespace/name of the pod.
	Workload string
	Members  []ReturnMember
}

// ReturnMove is the move a round picked.
type ReturnMove struct {
	Workload string
	Pods     []*corev1.Pod
	// Remaining is the workload's expected remaining runtime.
	Remaining time.Duration
	// Saving is what the move is expected to save over Remaining, in USD,
	// the restart on Spot paid for.
	Saving float64
	// From and To are the hourly expected costs of useful work of all
	// members, where they run and on Spot.
	From, To float64
}

// ReturnArgs is the plugin's returnToSpot configuration, defaulted.
func (pl *SpotRisk) ReturnArgs() ReturnToSpot { return pl.args.ReturnToSpot }

// Movable reports whether a running pod may be moved back to Spot: it
// prefers Spot, runs on the on-demand capacity it fell back to, saves its
// progress (penny.dev/checkpoint-interval), can be asked for a checkpoint
// (penny.dev/checkpoint, one the agent calls) so that the move loses only
// the restart, and has a controller to replace it once evicted: a bare pod
// evicted is gone.
func (pl *SpotRisk) Movable(pod *corev1.Pod, node *corev1.Node) (Class, bool) {
	class, err := pl.classify(pod)
	if err != nil || class.Policy != Prefer || class.Work.CheckpointInterval <= 0 || metav1.GetControllerOf(pod) == nil {
		return class, false
	}
	// A hook the agent refuses fails the checkpoint at once: the move would
	// be tried, and given up, every round, in the way of moves that work.
	v, hook := pod.Annotations[AnnotationCheckpointHook]
	if _, err := reclaim.ParseHook(v); !hook || err != nil {
		return class, false
	}
	return class, node != nil && class.FallbackFrom(pricing.NodeCapacity(node))
}

// PlanReturn picks the one move of a round: of the candidates whose members
// all may move, have run at least minRunning, have room on Spot, and whose
// workload was not moved within the cooldown (movedAt), the one expected to
// save the most over its remaining runtime, less what the restart on Spot
// costs. A workload expected to end within minRemaining is left where it
// is. The remaining runtime is the declared one, else what training runs
// here typically last, else unknownRuntime, less the run so far and the
// longest run of the workload a reclaim cut short: a move that only pays
// off over a long run is not made for a run that ends soon.
func (pl *SpotRisk) PlanReturn(now time.Time, cands []ReturnCandidate, movedAt func(workload string) (time.Time, bool)) (ReturnMove, bool) {
	rs := pl.args.ReturnToSpot
	var best ReturnMove
	found := false
	for _, c := range cands {
		if len(c.Members) == 0 {
			continue
		}
		if at, ok := movedAt(c.Workload); ok && now.Sub(at) < rs.Cooldown.Duration {
			continue
		}
		move, ok := pl.planOne(now, c)
		if ok && (!found || move.Saving > best.Saving || (move.Saving == best.Saving && move.Workload < best.Workload)) {
			best, found = move, true
		}
	}
	return best, found
}

func (pl *SpotRisk) planOne(now time.Time, c ReturnCandidate) (ReturnMove, bool) {
	rs := pl.args.ReturnToSpot
	move := ReturnMove{Workload: c.Workload}
	// started is when the workload's run began, its first member's start;
	// last is its last member's: one that started since (a replacement,
	// resumed from the gang's checkpoint) has yet to run minRunning too, or
	// the move throws away what it just loaded.
	var started, last time.Time
	var class Class
	for k, m := range c.Members {
		cl, ok := pl.Movable(m.Pod, m.Node)
		if !ok || m.Spot == nil || !pricing.NodeCapacity(m.Spot).IsSpot() {
			return move, false
		}
		if k == 0 || m.Started.Before(started) {
			started = m.Started
		}
		if k == 0 || m.Started.After(last) {
			last = m.Started
		}
		class = cl
		from, ok := pl.Cost(m.Pod, cl, m.Usage, m.Node)
		if !ok {
			return move, false
		}
		to, ok := pl.Cost(m.Pod, cl, m.Usage, m.Spot)
		if !ok {
			return move, false
		}
		move.From += from
		move.To += to
		move.Pods = append(move.Pods, m.Pod)
	}
	ran := now.Sub(started)
	if now.Sub(last) < rs.MinRunning.Duration {
		return move, false
	}
	run, _ := pl.runtime(class)
	// The workload checkpoints (Movable), so a run a reclaim cut short kept
	// its work: the longest such run is done too, at least. Counted from
	// this run alone, a job reclaimed near its end looked to have a whole
	// run left, and was moved for a saving it would not live to make.
	done := ran
	if pl.interrupted != nil {
		done += pl.interrupted.Longest(c.Members[0].Pod)
	}
	move.Remaining = run - done
	if move.Remaining < rs.MinRemaining.Duration || move.Remaining <= 0 {
		return move, false
	}
	move.Saving = (move.From-move.To)*move.Remaining.Hours() - move.To*class.Work.RestartOverhead.Hours()
	sort.Slice(move.Pods, func(i, j int) bool { return move.Pods[i].Name < move.Pods[j].Name })
	return move, move.Saving > 0
}

// SpotRoom is what a Spot node has free.
type SpotRoom struct {
	Node                  *corev1.Node
	CPUMilli, MemoryBytes int64
	GPUs                  int64
}

// PlaceOnSpot finds room for all of a workload's pods in one Spot pool
// (PennyGang places a gang's members in one pool): of the pools, each given
// as its nodes' free room, the one that costs the pods least. It returns
// each pod's node, nil when no pool has room for all of them. Room is
// checked for what decides a move here: CPU, memory and whole GPUs (a share
// of a GPU takes one), taints, required node affinity and the plugin's own
// rules; the scheduler's filters judge the replacements in full.
func (pl *SpotRisk) PlaceOnSpot(pods []*corev1.Pod, pools [][]SpotRoom) []*corev1.Node {
	wants := make([]placing, len(pods))
	for k, p := range pods {
		class, err := pl.classify(p)
		admits := pl.Admits(p)
		if err != nil || admits == nil {
			return nil
		}
		wants[k] = placing{pod: p, class: class, usage: pricing.PodUsage(p), admits: admits}
	}
	var best []*corev1.Node
	bestCost := 0.0
	for _, rooms := range pools {
		if len(rooms) == 0 || !pricing.NodeCapacity(rooms[0].Node).IsSpot() {
			continue
		}
		left := slices.Clone(rooms)
		nodes := make([]*corev1.Node, 0, len(pods))
		cost := 0.0
		for _, w := range wants {
			// A pool's nodes all cost alike.
			c, ok := pl.Cost(w.pod, w.class, w.usage, rooms[0].Node)
			at := takeRoom(left, w)
			if !ok || at < 0 {
				nodes = nil
				break
			}
			nodes = append(nodes, left[at].Node)
			cost += c
		}
		if nodes != nil && (best == nil || cost < bestCost) {
			best, bestCost = nodes, cost
		}
	}
	return best
}

// placing is a pod PlaceOnSpot finds room for.
type placing struct {
	pod    *corev1.Pod
	class  Class
	usage  pricing.Usage
	admits func(*corev1.Node) bool
}

// takeRoom takes a pod's usage from the first room that may hold it and
// says which; -1 when none may.
func takeRoom(rooms []SpotRoom, w placing) int {
	u := w.usage
	gpus := (u.GPUMilli + gpu.MilliPerGPU - 1) / gpu.MilliPerGPU
	for k := range rooms {
		r := &rooms[k]
		if r.CPUMilli < u.CPUMilli || r.MemoryBytes < u.MemoryBytes || r.GPUs < gpus || !w.admits(r.Node) || !mayRunOn(w.pod, r.Node) {
			continue
		}
		r.CPUMilli, r.MemoryBytes, r.GPUs = r.CPUMilli-u.CPUMilli, r.MemoryBytes-u.MemoryBytes, r.GPUs-gpus
		return k
	}
	return -1
}

// mayRunOn: the pod tolerates the node's NoSchedule and NoExecute taints
// and its required node affinity (and nodeSelector) match the node.
func mayRunOn(pod *corev1.Pod, node *corev1.Node) bool {
	if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), node.Spec.Taints, pod.Spec.Tolerations, blocksScheduling, true); untolerated {
		return false
	}
	ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)
	return err == nil && ok
}
