package spotrisk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

type mover struct {
	mu sync.Mutex
	// moved are the workloads moved; timeouts and whys, what each move
	// was given.
	moved    []string
	timeouts []time.Duration
	whys     []string
	// finishes counts the calls of FinishInterruptedMoves, and finishErr
	// is what they return.
	finishes  int
	finishErr error
}

func (m *mover) MoveToSpot(_ context.Context, workload string, _ []*corev1.Pod, timeout time.Duration, why string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.moved, m.timeouts, m.whys = append(m.moved, workload), append(m.timeouts, timeout), append(m.whys, why)
	return true
}

func (m *mover) FinishInterruptedMoves(context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finishes++
	return 0, m.finishErr
}

// failFinishing makes FinishInterruptedMoves return err from now on.
func (m *mover) failFinishing(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finishErr = err
}

func (m *mover) finished() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.finishes
}

func (m *mover) workloads() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.moved...)
}

// returnWorld is SpotRisk over an informer factory whose stores a test
// fills, with a Returner using it: the state the scheduler's informers
// hold.
type returnWorld struct {
	e       *env
	factory informers.SharedInformerFactory
	r       *Returner
	m       *mover
	// moves, when set, is where the Returner keeps its moves.
	moves *configmaplines.Key
}

func newReturnWorld(t *testing.T, args *Args) *returnWorld {
	t.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	factory.Core().V1().Nodes().Informer()
	w := &returnWorld{factory: factory, r: NewReturner(), m: &mover{}}
	w.e = newEnvWith(t, args, Deps{Prices: catalog(t)}, []frameworkruntime.Option{frameworkruntime.WithInformerFactory(factory)})
	w.r.Use(w.e.plugin)
	return w
}

// sync starts the informers (of an empty API) and waits for them to list.
// testLease is the scheduler's lease as the Returner sees it, switched by
// the test; it counts the Returner's questions.
type testLease struct {
	mu    sync.Mutex
	leads bool
	asks  int
}

// lease hands the Returner a lease this replica does not hold yet.
func (w *returnWorld) lease() *testLease {
	l := &testLease{}
	w.r.SetLeading(func(context.Context) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.asks++
		return l.leads
	})
	return l
}

func (l *testLease) set(leads bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leads = leads
}

func (l *testLease) asked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.asks
}

// step moves the clock on by a lease check once Run waits for it, and
// waits until Run has asked about the lease.
func (l *testLease) step(t *testing.T, w *returnWorld) {
	t.Helper()
	waitUntil(t, func() bool { return l.asked() > 0 && w.e.clock.HasWaiters() })
	before := l.asked()
	w.e.clock.Step(leaseCheckEvery)
	waitUntil(t, func() bool { return l.asked() > before })
}

// run starts the Returner until the test ends; done closes when Run
// returns.
func (w *returnWorld) run(t *testing.T) (done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		w.r.Run(ctx, ReturnerOptions{Mover: w.m, Clock: w.e.clock})
	}()
	t.Cleanup(func() { cancel(); <-ended })
	return ended
}

func (w *returnWorld) sync(t *testing.T) *returnWorld {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); w.factory.Shutdown() })
	w.factory.Start(ctx.Done())
	for typ, ok := range w.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer of %v did not sync", typ)
		}
	}
	return w
}

func (w *returnWorld) add(t *testing.T, objs ...any) {
	t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Pod:
			err = w.factory.Core().V1().Pods().Informer().GetStore().Add(o)
		case *corev1.Node:
			err = w.factory.Core().V1().Nodes().Informer().GetStore().Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func (w *returnWorld) round(t *testing.T) (ReturnMove, bool) {
	t.Helper()
	move, moved, err := w.r.Round(context.Background(), ReturnerOptions{Mover: w.m, Moves: w.moves})
	if err != nil {
		t.Fatal(err)
	}
	return move, moved
}

func readyNode(n *corev1.Node) *corev1.Node {
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	return n
}

// running makes p a pod of the scheduler's profile running on node since
// started.
func running(p *corev1.Pod, node string, started time.Time) *corev1.Pod {
	p.Spec.SchedulerName, p.Spec.NodeName = "penny-scheduler", node
	p.Status.Phase, p.Status.StartTime = corev1.PodRunning, &metav1.Time{Time: started}
	return p
}

func gpus(p *corev1.Pod, n string) *corev1.Pod {
	p.Spec.Containers[0].Resources.Limits[gpu.ResourceGPU] = resource.MustParse(n)
	return p
}

func TestReturnerMovesFallenBackWorkToRoomOnSpot(t *testing.T) {
	w := newReturnWorld(t, nil).sync(t)
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	od, spot := readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a"))
	train := running(movable("train", "24h"), "od", t0)
	w.add(t, od, spot, train)
	move, moved := w.round(t)
	if !moved || move.Workload != "default/train" || len(move.Pods) != 1 || move.Pods[0].Name != "train" || move.Remaining != 22*time.Hour {
		t.Fatalf("Round = %+v, %v; want default/train moved with 22h left", move, moved)
	}
	if w.m.timeouts[0] != 10*time.Minute {
		t.Fatalf("checkpoint timeout %v, want the default 10m", w.m.timeouts[0])
	}
	// On-demand p4d $32/h for 1 of 8 GPUs against Spot's $8/h at the 5-10%
	// bucket.
	if want := "workload default/train fell back to on-demand capacity and Spot has room for it again: an expected $1.00 an hour on Spot instead of $4.00, for the 22h0m0s it is expected to run on, saves $66"; w.m.whys[0] != want {
		t.Fatalf("why %q, want %q", w.m.whys[0], want)
	}
	// The same workload again within the cooldown: left alone.
	if move, moved := w.round(t); moved {
		t.Fatalf("moved %+v again within the cooldown", move)
	}
	w.e.clock.Step(6 * time.Hour)
	if _, moved := w.round(t); !moved {
		t.Fatal("not moved once the cooldown was over")
	}
}

// The moves are kept in the ConfigMap: a restarted scheduler (a new
// Returner) reads them and keeps to the cooldown, where one that kept them
// in memory only would move the workload again at once. A line it cannot
// read is skipped, the others kept.
func TestReturnerKeepsItsMovesAcrossARestart(t *testing.T) {
	w := newReturnWorld(t, nil).sync(t)
	client := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "penny-system", Name: "penny-interrupted-runs"},
		Data: map[string]string{MovesKey: "not a move\ndefault/other 2026-01-01T00:00:00Z\n"}})
	w.moves = &configmaplines.Key{Client: client, Namespace: "penny-system", Name: "penny-interrupted-runs", Key: MovesKey}
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	w.add(t, readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
		running(movable("train", "24h"), "od", t0))
	if _, moved := w.round(t); !moved {
		t.Fatal("not moved")
	}
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-interrupted-runs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// default/other moved long before the cooldown: forgotten.
	if got, want := cm.Data[MovesKey], "default/train "+t0.Add(2*time.Hour).UTC().Format(time.RFC3339)+"\n"; got != want {
		t.Fatalf("saved %q, want %q", got, want)
	}

	w.r = NewReturner()
	w.r.Use(w.e.plugin)
	w.e.clock.Step(time.Hour)
	if move, moved := w.round(t); moved {
		t.Fatalf("a restarted Returner moved %+v again within the cooldown", move)
	}
	w.e.clock.Step(5 * time.Hour)
	if _, moved := w.round(t); !moved {
		t.Fatal("not moved once the cooldown was over")
	}
}

func TestReturnerLeavesWorkWhereItIs(t *testing.T) {
	for name, tc := range map[string]func(w *returnWorld) []any{
		"a pod of the profile waits": func(w *returnWorld) []any {
			p := movable("waiting", "1h")
			p.Spec.SchedulerName = "penny-scheduler"
			return []any{p}
		},
		"the Spot node is full": func(w *returnWorld) []any {
			return []any{gpus(running(pod("big", nil), "spot", t0), "8")}
		},
		// Half of each GPU taken: half of the node's GPU milli, and no
		// GPU a whole-GPU pod could have.
		"shares hold every Spot GPU": func(w *returnWorld) []any {
			var out []any
			for i := range 8 {
				p := running(pod(fmt.Sprintf("share-%d", i), nil), "spot", t0)
				p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")}
				delete(p.Spec.Containers[0].Resources.Limits, gpu.ResourceGPU)
				p.Spec.Containers[0].Resources.Limits[gpu.ResourceGPUMilli] = resource.MustParse("500")
				p.Annotations = map[string]string{gpu.AnnotationAssignment: fmt.Sprintf("%d:500m", i)}
				out = append(out, p)
			}
			return out
		},
		"the Spot node is being reclaimed": func(w *returnWorld) []any {
			n := readyNode(node("spot", pricing.Spot, "us-east-1a"))
			n.Spec.Taints = []corev1.Taint{{Key: "penny.dev/reclaim", Value: "spot-interruption", Effect: corev1.TaintEffectNoSchedule}}
			return []any{n}
		},
		"the Spot node is cordoned": func(w *returnWorld) []any {
			n := readyNode(node("spot", pricing.Spot, "us-east-1a"))
			n.Spec.Unschedulable = true
			return []any{n}
		},
		"the Spot node is not ready": func(w *returnWorld) []any {
			return []any{node("spot", pricing.Spot, "us-east-1a")}
		},
		"the pod's affinity keeps it off the Spot node": func(w *returnWorld) []any {
			p := running(movable("train", "24h"), "od", t0)
			p.Spec.NodeSelector = map[string]string{"pool": "od"}
			return []any{p}
		},
		"the pod belongs to another scheduler": func(w *returnWorld) []any {
			p := running(movable("train", "24h"), "od", t0)
			p.Spec.SchedulerName = "default-scheduler"
			return []any{p}
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := newReturnWorld(t, nil).sync(t)
			w.e.clock.SetTime(t0.Add(2 * time.Hour))
			w.add(t, readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
				running(movable("train", "24h"), "od", t0))
			w.add(t, tc(w)...)
			if move, moved := w.round(t); moved {
				t.Fatalf("moved %+v", move)
			}
		})
	}
}

func TestReturnerMovesAGangOnlyWhenAllItsMembersFit(t *testing.T) {
	member := func(name string) *corev1.Pod {
		p := gpus(running(movable(name, "24h"), "od", t0), "4")
		p.Labels = map[string]string{gang.LabelName: "g", gang.KeySize: "2"}
		return p
	}
	w := newReturnWorld(t, nil).sync(t)
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	// The Spot node has 8 GPUs; 2 are taken: one member fits, not both.
	w.add(t, readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
		member("g-0"), member("g-1"), gpus(running(pod("other", nil), "spot", t0), "2"))
	if move, moved := w.round(t); moved {
		t.Fatalf("moved %+v with room for one member", move)
	}
	w.add(t, readyNode(node("spot-2", pricing.Spot, "us-east-1a")))
	move, moved := w.round(t)
	if !moved || move.Workload != "label:default/g" || len(move.Pods) != 2 {
		t.Fatalf("Round = %+v, %v; want the gang moved whole", move, moved)
	}
}

func TestReturnerRunsOnlyOnTheLeader(t *testing.T) {
	w := newReturnWorld(t, nil).sync(t)
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	w.add(t, readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
		running(movable("train", "24h"), "od", t0))
	l := w.lease()
	w.run(t)
	tick := func() {
		waitUntil(t, func() bool { return w.e.clock.HasWaiters() })
		w.e.clock.Step(10 * time.Minute)
	}
	tick()
	tick()
	if got := w.m.workloads(); len(got) != 0 {
		t.Fatalf("a replica that does not lead moved %v", got)
	}
	l.set(true)
	tick()
	waitUntil(t, func() bool { return len(w.m.workloads()) == 1 })
}

// A replica that takes the lease finishes the moves its predecessor left
// half done within leaseCheckEvery, not at its first round
// (returnToSpot.every, 10 minutes), and again before every round.
func TestReturnerFinishesInterruptedMovesWhenItTakesTheLease(t *testing.T) {
	w := newReturnWorld(t, nil).sync(t)
	l := w.lease()
	w.run(t)
	step := func() { l.step(t, w) }
	step()
	step()
	if n := w.m.finished(); n != 0 {
		t.Fatalf("a replica that does not lead looked for moves left half done %d times", n)
	}
	// It takes the lease while the coordinator cannot look yet: it
	// tries again at the next check, and then no more while it leads.
	w.m.failFinishing(errors.New("the reclaim coordinator does not run yet"))
	l.set(true)
	step()
	if n := w.m.finished(); n != 1 {
		t.Fatalf("looked %d times on taking the lease, want once", n)
	}
	w.m.failFinishing(nil)
	step()
	step()
	step()
	if n := w.m.finished(); n != 2 {
		t.Fatalf("looked for moves left half done %d times, want twice: once when it took the lease, once more after it could not", n)
	}
	// Every round looks too.
	before := l.asked()
	w.e.clock.Step(10*time.Minute - 5*leaseCheckEvery)
	waitUntil(t, func() bool { return w.m.finished() == 3 && l.asked() > before })
	// Lost and taken again: it looks again.
	l.set(false)
	step()
	l.set(true)
	step()
	if n := w.m.finished(); n != 4 {
		t.Fatalf("looked %d times in all, want 4: once more on taking the lease again", n)
	}
}

// With moves off a replica moves nothing, but finishes, once it leads, a
// move its predecessor left half done before the change; then it stops.
func TestReturnerWhenDisabledOnlyFinishesInterruptedMoves(t *testing.T) {
	off := false
	w := newReturnWorld(t, &Args{ReturnToSpot: ReturnToSpot{Enabled: &off}}).sync(t)
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	w.add(t, readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
		running(movable("train", "24h"), "od", t0))
	l := w.lease()
	done := w.run(t)
	l.step(t, w)
	if n := w.m.finished(); n != 0 {
		t.Fatalf("a replica that does not lead looked for moves left half done %d times", n)
	}
	w.m.failFinishing(errors.New("the reclaim coordinator does not run yet"))
	// It leads for returnToSpot.every (the default, 10 minutes), where it
	// would make a round, while the coordinator cannot look: it tries at
	// every lease check.
	l.set(true)
	for i := 1; i <= 20; i++ {
		l.step(t, w)
		waitUntil(t, func() bool { return w.m.finished() == i })
	}
	w.m.failFinishing(nil)
	l.step(t, w)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run with returnToSpot.enabled false did not return once it had looked")
	}
	if n, got := w.m.finished(), w.m.workloads(); n != 21 || len(got) != 0 {
		t.Fatalf("looked %d times and moved %v; want 21 looks (20 failed) and no move", n, got)
	}
}

// Until the scheduler's informers have listed the cluster, a gang could be
// seen short of members: nothing moves.
func TestReturnerWaitsForTheInformers(t *testing.T) {
	w := newReturnWorld(t, nil)
	w.e.clock.SetTime(t0.Add(2 * time.Hour))
	world := []any{readyNode(node("od", pricing.OnDemand, "us-east-1a")), readyNode(node("spot", pricing.Spot, "us-east-1a")),
		running(movable("train", "24h"), "od", t0)}
	w.add(t, world...)
	if move, moved := w.round(t); moved {
		t.Fatalf("moved %+v before the informers synced", move)
	}
	// Their first list replaces what the stores held.
	w.sync(t)
	w.add(t, world...)
	if _, moved := w.round(t); !moved {
		t.Fatal("not moved once the informers synced")
	}
}
