package spotrisk

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

// Mover carries out a move the Returner picked: penny-scheduler's reclaim
// coordinator (reclaim.Coordinator.MoveToSpot) asks the pods' agents for
// checkpoints due within checkpointTimeout and evicts the pods once all are
// written. why says what the move saves, for the pods' events.
type Mover interface {
	MoveToSpot(ctx context.Context, workload string, pods []*corev1.Pod, checkpointTimeout time.Duration, why string) (moved bool)
	// FinishInterruptedMoves evicts what is left of the moves a scheduler
	// stopped in the middle of evicting (reclaim.Coordinator's), so that
	// no workload stays torn between Spot and on-demand; it returns how
	// many it finished, and an error when it could not look.
	FinishInterruptedMoves(ctx context.Context) (int, error)
}

// leaseCheckEvery is how often Run asks whether this replica took the
// lease: a new leader finishes the moves its predecessor left half done
// without waiting for returnToSpot.every.
const leaseCheckEvery = 30 * time.Second

// Returner is penny-scheduler's loop that moves Spot-preferring work that
// fell back to on-demand back to Spot (returnToSpot): every round it reads
// the scheduler's pods and nodes, finds room on Spot nodes for the
// workloads that may move (Movable, PlaceOnSpot), and has the Mover make
// the one PlanReturn picks.
type Returner struct {
	pl atomic.Pointer[SpotRisk]
	// used is closed once pl is set.
	used chan struct{}
	// leading reports whether this replica holds the scheduler's lease:
	// only the leader moves pods. Unset: not known yet, no moves.
	leading atomic.Pointer[func(ctx context.Context) bool]

	mu sync.Mutex
	// moved is when each workload last moved, for the cooldown; kept in
	// ReturnerOptions.Moves too, when set.
	moved map[string]time.Time
}

// MovesKey is the key of the ConfigMap (penny-scheduler's
// --reclaim-interrupted-configmap) that keeps when each workload last
// moved back to Spot, one line each: `<workload> <RFC 3339 time>`.
const MovesKey = "spot-returns"

// NewReturner returns a Returner; the first SpotRisk built hands itself to
// it (plugins.Deps.Returner).
func NewReturner() *Returner {
	return &Returner{moved: map[string]time.Time{}, used: make(chan struct{})}
}

// Use makes pl the plugin whose rules, prices and args the Returner
// follows; the first one given stays.
func (r *Returner) Use(pl *SpotRisk) {
	if r.pl.CompareAndSwap(nil, pl) {
		close(r.used)
	}
}

// SetLeading tells the Returner how to tell whether this replica leads,
// once the scheduler is set up.
func (r *Returner) SetLeading(leading func(ctx context.Context) bool) { r.leading.Store(&leading) }

// ReturnerOptions configure Run.
type ReturnerOptions struct {
	Mover Mover
	// Moves, when set, keeps when each workload last moved (MovesKey), so
	// that a restarted scheduler, or a new leader, keeps to the cooldown:
	// read before every round, written before every move. Nil: memory
	// only.
	Moves *configmaplines.Key
	// Clock ticks the rounds; nil: the wall clock.
	Clock clock.WithTicker
}

// Run makes a round every returnToSpot.every until ctx ends, once a
// SpotRisk is built (Use), and has the Mover finish the moves left half
// done whenever this replica takes the lease (asked every leaseCheckEvery).
// When moves are off it makes no round, and returns once it has finished
// the moves left half done while leading: a scheduler restarted with
// returnToSpot.enabled false may find one its predecessor started, and no
// replica starts any more.
func (r *Returner) Run(ctx context.Context, o ReturnerOptions) {
	logger := klog.FromContext(ctx).WithName("spot-return")
	select {
	case <-ctx.Done():
		return
	case <-r.used:
	}
	pl := r.pl.Load()
	rs := pl.args.ReturnToSpot
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	var rounds <-chan time.Time
	if *rs.Enabled {
		t := clk.NewTicker(rs.Every.Duration)
		defer t.Stop()
		rounds = t.C()
	} else {
		logger.Info("Not moving work back to Spot: SpotRisk's returnToSpot.enabled is false; moves a restart left half done are finished")
	}
	lease := clk.NewTicker(leaseCheckEvery)
	defer lease.Stop()
	leading := func() bool {
		l := r.leading.Load()
		return l != nil && (*l)(ctx)
	}
	// finished: this replica has led since it last looked for the moves
	// left half done. One that has just taken the lease (at start too)
	// looks at once, and until it could.
	finished := false
	look := func() {
		if !leading() {
			finished = false
			return
		}
		if !finished {
			_, err := o.Mover.FinishInterruptedMoves(ctx)
			if err != nil {
				logger.Error(err, "Looking for moves back to Spot left half done; trying again", "in", leaseCheckEvery)
			}
			finished = err == nil
		}
	}
	look()
	for {
		if finished && rounds == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-lease.C():
			look()
			continue
		case <-rounds:
		}
		if !leading() {
			finished = false
			continue
		}
		if _, _, err := r.Round(ctx, o); err != nil {
			logger.Error(err, "Looking for work to move back to Spot")
		}
	}
}

// Round makes at most one move: none while a pod of the plugin's profile
// waits to be scheduled (room that appears on Spot is for it first), else
// the one PlanReturn picks. It says which move it made, and whether the
// Mover made it.
func (r *Returner) Round(ctx context.Context, o ReturnerOptions) (ReturnMove, bool, error) {
	pl := r.pl.Load()
	if pl == nil || pl.handle == nil || pl.handle.SharedInformerFactory() == nil {
		return ReturnMove{}, false, fmt.Errorf("%s: no informers to read pods and nodes from", Name)
	}
	informers := pl.handle.SharedInformerFactory().Core().V1()
	// A cache still filling could show a gang short of members, and the
	// ones shown would move without the others.
	if !informers.Pods().Informer().HasSynced() || !informers.Nodes().Informer().HasSynced() {
		return ReturnMove{}, false, nil
	}
	pods, err := informers.Pods().Lister().List(labels.Everything())
	if err != nil {
		return ReturnMove{}, false, err
	}
	nodes, err := informers.Nodes().Lister().List(labels.Everything())
	if err != nil {
		return ReturnMove{}, false, err
	}
	profile := ""
	if p, ok := pl.handle.(interface{ ProfileName() string }); ok {
		profile = p.ProfileName()
	}
	// Before the waiting pods are looked at: a torn workload's evicted
	// members wait, for the rest of it.
	if _, err := o.Mover.FinishInterruptedMoves(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Looking for moves back to Spot left half done")
	}
	if waiting(pods, profile) {
		return ReturnMove{}, false, nil
	}
	now := pl.clock.Now()
	logger := klog.FromContext(ctx)
	cooldown := pl.args.ReturnToSpot.Cooldown.Duration
	if o.Moves != nil {
		// Another replica may have led, and moved work, since this one
		// last did.
		text, err := o.Moves.Read(ctx)
		if err != nil {
			return ReturnMove{}, false, fmt.Errorf("reading the moves made within the cooldown: %w", err)
		}
		r.mu.Lock()
		err = r.mergeMoves(text, o.Moves.String())
		r.mu.Unlock()
		if err != nil {
			logger.Error(err, "Skipping lines of the moves made within the cooldown", "want", "<workload> <RFC 3339 time>")
		}
	}
	move, ok := pl.PlanReturn(now, pl.returnCandidates(pods, nodes, profile), r.movedAt)
	if !ok {
		return ReturnMove{}, false, nil
	}
	// Before the move, whatever becomes of it: a pod that could not
	// checkpoint this time is not asked again every round.
	r.mu.Lock()
	r.moved[move.Workload] = now
	for w, at := range r.moved {
		if now.Sub(at) >= cooldown {
			delete(r.moved, w)
		}
	}
	r.mu.Unlock()
	if o.Moves != nil {
		err := o.Moves.Update(ctx, func(text string) string {
			r.mu.Lock()
			defer r.mu.Unlock()
			_ = r.mergeMoves(text, o.Moves.String()) // reported on the read
			return r.movesText(now, cooldown)
		})
		if err != nil {
			// A move not worth making is one that loses work, not one
			// that might be made twice.
			logger.Error(err, "Saving the move; a restarted scheduler may move the workload again within the cooldown", "workload", move.Workload)
		}
	}
	logger.Info("Moving work back to Spot", "workload", move.Workload, "pods", len(move.Pods),
		"remaining", move.Remaining, "onDemandPerHour", move.From, "spotPerHour", move.To, "saving", move.Saving)
	why := fmt.Sprintf("workload %s fell back to on-demand capacity and Spot has room for it again: an expected $%.2f an hour on Spot instead of $%.2f, for the %v it is expected to run on, saves $%.0f",
		move.Workload, move.To, move.From, move.Remaining.Round(time.Minute), move.Saving)
	return move, o.Mover.MoveToSpot(ctx, move.Workload, move.Pods, pl.args.ReturnToSpot.CheckpointTimeout.Duration, why), nil
}

// mergeMoves takes from text (MovesKey's lines) every move later than the
// one r knows of the workload; the error names the lines it could not read.
// r.mu must be held.
func (r *Returner) mergeMoves(text, source string) error {
	type move struct {
		workload string
		at       time.Time
	}
	moves, err := configmaplines.Parse(text, source, func(line string) (move, error) {
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			return move{}, fmt.Errorf("want <workload> <RFC 3339 time>")
		}
		at, err := configmaplines.ParseTime(line[i+1:])
		if err != nil {
			return move{}, fmt.Errorf("the time: %w", err)
		}
		return move{workload: strings.TrimSpace(line[:i]), at: at}, nil
	})
	for _, m := range moves {
		if m.at.After(r.moved[m.workload]) {
			r.moved[m.workload] = m.at
		}
	}
	return err
}

// movesText is MovesKey's text for the moves r knows of that are still
// within cooldown at now, the oldest first. r.mu must be held.
func (r *Returner) movesText(now time.Time, cooldown time.Duration) string {
	var kept []string
	for w, at := range r.moved {
		if now.Sub(at) < cooldown {
			kept = append(kept, w)
		}
	}
	sort.Slice(kept, func(i, j int) bool {
		a, b := r.moved[kept[i]], r.moved[kept[j]]
		return a.Before(b) || a.Equal(b) && kept[i] < kept[j]
	})
	var b strings.Builder
	for _, w := range kept {
		b.WriteString(w + " " + r.moved[w].UTC().Format(time.RFC3339) + "\n")
	}
	return b.String()
}

func (r *Returner) movedAt(workload string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.moved[workload]
	return at, ok
}

// waiting reports whether a pod of the profile waits to be scheduled: not
// bound, not finished or going, and not held by a scheduling gate.
func waiting(pods []*corev1.Pod, profile string) bool {
	for _, p := range pods {
		if p.Spec.NodeName == "" && p.Spec.SchedulerName == profile && p.DeletionTimestamp == nil && len(p.Spec.SchedulingGates) == 0 &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return true
		}
	}
	return false
}

// returnCandidates are the workloads of the profile's pods whose every
// live pod runs on capacity it may move from (Movable), each member given
// its room on Spot (PlaceOnSpot) where there is some.
func (pl *SpotRisk) returnCandidates(pods []*corev1.Pod, nodes []*corev1.Node, profile string) []ReturnCandidate {
	byName := make(map[string]*corev1.Node, len(nodes))
	for _, n := range nodes {
		byName[n.Name] = n
	}
	type workload struct {
		pods    []*corev1.Pod
		movable bool
	}
	workloads := map[string]*workload{}
	var order []string
	onNode := map[string][]*corev1.Pod{}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if p.Spec.NodeName != "" {
			onNode[p.Spec.NodeName] = append(onNode[p.Spec.NodeName], p)
		}
		if p.Spec.SchedulerName != profile || p.DeletionTimestamp != nil {
			continue
		}
		key := p.Namespace + "/" + p.Name
		if ref, ok := gang.RefOf(p); ok {
			key = ref.Key()
		}
		w := workloads[key]
		if w == nil {
			w = &workload{movable: true}
			workloads[key] = w
			order = append(order, key)
		}
		w.pods = append(w.pods, p)
		if _, ok := pl.Movable(p, byName[p.Spec.NodeName]); !ok || p.Status.Phase != corev1.PodRunning {
			w.movable = false
		}
	}
	var rooms [][]SpotRoom
	sort.Strings(order)
	var out []ReturnCandidate
	for _, key := range order {
		w := workloads[key]
		if !w.movable {
			continue
		}
		if rooms == nil {
			rooms = pl.spotRooms(nodes, onNode)
		}
		sort.Slice(w.pods, func(i, j int) bool { return w.pods[i].Name < w.pods[j].Name })
		spot := pl.PlaceOnSpot(w.pods, rooms)
		c := ReturnCandidate{Workload: key}
		for k, p := range w.pods {
			started := p.CreationTimestamp.Time
			if p.Status.StartTime != nil {
				started = p.Status.StartTime.Time
			}
			m := ReturnMember{Pod: p, Node: byName[p.Spec.NodeName], Usage: pricing.PodUsage(p), Started: started}
			if spot != nil {
				m.Spot = spot[k]
			}
			c.Members = append(c.Members, m)
		}
		out = append(out, c)
	}
	return out
}

// GPUsHeld counts the GPUs of one node that its pods hold, whole or in
// part: the devices of their penny.dev/gpu-assignment, and for a pod
// without one (another scheduler placed it) as many GPUs as it asks for, a
// share counting one. Two shares of half a GPU may sit on two GPUs and
// leave neither to a whole-GPU pod, so shares count by the devices they
// hold, not by their sum.
func GPUsHeld(pods []*corev1.Pod) int64 {
	devices := map[int]bool{}
	var unknown int64
	for _, p := range pods {
		a, err := gpu.PodAssignment(p)
		if err != nil {
			unknown += (pricing.PodUsage(p).GPUMilli + gpu.MilliPerGPU - 1) / gpu.MilliPerGPU
			continue
		}
		for _, slot := range a {
			devices[slot.GPU] = true
		}
	}
	return int64(len(devices)) + unknown
}

// spotRooms is the free room of the Spot nodes pods may be placed on
// (ready, schedulable, no reclaim pending), by pool, given the live pods on
// each node.
func (pl *SpotRisk) spotRooms(nodes []*corev1.Node, onNode map[string][]*corev1.Pod) [][]SpotRoom {
	byPool := map[pricing.Pool][]SpotRoom{}
	var pools []pricing.Pool
	sorted := append([]*corev1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, n := range sorted {
		capacity := pricing.NodeCapacity(n)
		if !capacity.IsSpot() || n.Spec.Unschedulable || !ready(n) || pl.reclaimPending(n) {
			continue
		}
		a := n.Status.Allocatable
		room := SpotRoom{Node: n, CPUMilli: a.Cpu().MilliValue(), MemoryBytes: a.Memory().Value()}
		for _, p := range onNode[n.Name] {
			u := pricing.PodUsage(p)
			room.CPUMilli, room.MemoryBytes = room.CPUMilli-u.CPUMilli, room.MemoryBytes-u.MemoryBytes
		}
		if g, ok := a[gpu.ResourceGPU]; ok {
			room.GPUs = g.Value() - GPUsHeld(onNode[n.Name])
		}
		k := pricing.PoolOf(n, capacity)
		if _, ok := byPool[k]; !ok {
			pools = append(pools, k)
		}
		byPool[k] = append(byPool[k], room)
	}
	out := make([][]SpotRoom, len(pools))
	for i, k := range pools {
		out[i] = byPool[k]
	}
	return out
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
