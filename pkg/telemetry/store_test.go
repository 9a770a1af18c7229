package telemetry_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var t0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

func TestStoreFreshness(t *testing.T) {
	c := &clock{now: t0}
	s := telemetry.NewStore(telemetry.StoreOptions{MaxAge: 20 * time.Second, Now: c.Now})
	if _, ok := s.Node("n1"); ok {
		t.Fatal("unknown node reads as known")
	}
	if !s.Update(telemetrytest.Report("n1", 8, 1, t0), c.Now()) {
		t.Fatal("first report not applied")
	}
	st, ok := s.Node("n1")
	if !ok || len(st.GPUs) != 8 || !st.GPUsKnown || !st.PodDevicesKnown {
		t.Fatalf("fresh node: ok=%v state=%+v", ok, st)
	}
	c.Add(20 * time.Second)
	if _, ok := s.Node("n1"); !ok {
		t.Fatal("a report exactly max age old must still count")
	}
	c.Add(time.Millisecond)
	if _, ok := s.Node("n1"); ok {
		t.Fatal("a report older than max age must read as unknown")
	}
	if st, fresh := s.Lookup("n1"); st == nil || fresh {
		t.Fatalf("Lookup of a stale node: %v %v", st, fresh)
	}
	// Flags are parsed after the store exists.
	s.SetMaxAge(time.Minute)
	if _, ok := s.Node("n1"); !ok {
		t.Fatal("after raising max age the node is fresh again")
	}
}

func TestStoreOrdering(t *testing.T) {
	c := &clock{now: t0}
	s := telemetry.NewStore(telemetry.StoreOptions{Now: c.Now})
	s.Update(telemetrytest.Report("n1", 2, 5, t0), c.Now())
	if s.Update(telemetrytest.Report("n1", 2, 5, t0), c.Now()) || s.Update(telemetrytest.Report("n1", 2, 4, t0), c.Now()) {
		t.Fatal("a repeated or earlier sequence of the same agent was applied")
	}
	// A restarted agent starts again at 1 with a new id.
	r := telemetrytest.Report("n1", 2, 1, t0.Add(time.Second))
	r.AgentId = "restarted"
	if !s.Update(r, c.Now()) {
		t.Fatal("a restarted agent's first report was not applied")
	}
	// During a rolling update the old agent may still send a report it
	// collected earlier; it must not replace the newer one.
	old := telemetrytest.Report("n1", 2, 6, t0)
	if s.Update(old, c.Now()) {
		t.Fatal("an older report of another agent replaced a newer one")
	}
	if st, _ := s.Node("n1"); st.AgentID != "restarted" || st.Sequence != 1 {
		t.Fatalf("holds %s/%d", st.AgentID, st.Sequence)
	}
}

func TestNodeStateView(t *testing.T) {
	s := telemetry.NewStore(telemetry.StoreOptions{})
	r := telemetrytest.Report("n1", 4, 1, time.Now())
	r.Gpus[3].MigInstances[6].Profile = "1g.10gb+me"
	r.Gpus[2].Health = &telemetryv1.Health{Healthy: false, Reasons: []string{"XID 79 (GPU has fallen off the bus)"}}
	r.ReclaimNotices = []*telemetryv1.ReclaimNotice{{Id: "x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, DetectedAt: timestamppb.Now()}}
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatal(err)
	}
	s.Update(r, time.Now())
	st, _ := s.Node("n1")
	g0, g1, g2 := st.GPUs[0], st.GPUs[1], st.GPUs[2]
	if g0.MIGEnabled() || len(g0.Pods) != 1 || g0.Model == nil || g0.Model.Name != "A100-80GB" || g0.UtilizationPercent < 0 {
		t.Errorf("GPU 0: %+v", g0)
	}
	if !g1.MIGEnabled() || g1.FreeMIG("1g.10gb") != 5 || g1.UtilizationPercent != -1 {
		t.Errorf("GPU 1: free 1g.10gb %d, util %d", g1.FreeMIG("1g.10gb"), g1.UtilizationPercent)
	}
	if g2.Healthy || len(g2.UnhealthyReasons) != 1 {
		t.Errorf("GPU 2: %+v", g2)
	}
	// pkg/gpu reads the layout: GPU 3 is full (7 x 1g, one with media
	// extensions), so no 1g.10gb fits anywhere.
	g3 := st.GPUs[3]
	if starts, err := g3.Model.FreeStarts(g3.Placements(), "1g.10gb"); err != nil || len(starts) != 0 {
		t.Errorf("GPU 3 placements %v: free starts %v err %v", g3.Placements(), starts, err)
	}
	if st.Reclaiming() || len(st.ReclaimNotices) != 1 || !st.ReclaimNotices[0].Deadline.IsZero() {
		t.Errorf("rebalance advice is not a reclaim: %+v", st.ReclaimNotices)
	}
	if !st.NoticesKnown {
		t.Error("notices unknown after a report whose notice check answered")
	}
	r2 := telemetrytest.Report("n1", 4, 2, time.Now())
	r2.ReclaimNotices = []*telemetryv1.ReclaimNotice{{Id: "y", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, DetectedAt: timestamppb.Now(), Deadline: timestamppb.Now()}}
	s.Update(r2, time.Now())
	if st, _ := s.Node("n1"); !st.Reclaiming() {
		t.Error("spot interruption not seen")
	}
	r3 := telemetrytest.Report("n1", 4, 3, time.Now())
	r3.Reclaim = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: "metadata server unreachable"}
	s.Update(r3, time.Now())
	if st, _ := s.Node("n1"); st.NoticesKnown {
		t.Error("notices known after a report whose notice check failed")
	}

	noGPU := telemetrytest.Report("n2", 0, 1, time.Now())
	noGPU.Nvml = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_UNAVAILABLE, Message: "no driver"}
	s.Update(noGPU, time.Now())
	if st, _ := s.Node("n2"); st.GPUsKnown || !st.NoDriver {
		t.Errorf("no-driver node: %+v", st)
	}
}

func TestOnUpdateAndPrune(t *testing.T) {
	c := &clock{now: t0}
	var mu sync.Mutex
	var seen []string
	s := telemetry.NewStore(telemetry.StoreOptions{Now: c.Now, MaxAge: 10 * time.Second, OnUpdate: func(prev, next *telemetry.NodeState) {
		mu.Lock()
		defer mu.Unlock()
		if prev == nil {
			seen = append(seen, "new "+next.Node)
		} else {
			seen = append(seen, "update "+next.Node)
		}
	}})
	s.Update(telemetrytest.Report("a", 1, 1, t0), c.Now())
	s.Update(telemetrytest.Report("a", 1, 2, t0), c.Now())
	c.Add(time.Minute)
	s.Update(telemetrytest.Report("b", 1, 1, c.Now()), c.Now())
	if len(seen) != 3 || seen[0] != "new a" || seen[1] != "update a" || seen[2] != "new b" {
		t.Fatalf("OnUpdate saw %v", seen)
	}
	if total, fresh := s.Prune(time.Hour); total != 2 || fresh != 1 {
		t.Fatalf("before forgetting: total %d fresh %d", total, fresh)
	}
	if total, _ := s.Prune(30 * time.Second); total != 1 {
		t.Fatalf("node silent for a minute not pruned: %d left", total)
	}
	if st, _ := s.Lookup("a"); st != nil {
		t.Fatal("pruned node still readable")
	}
}

// The store's OnUpdate hook belongs to the reclaim coordinator; a plugin
// that must hear of a withdrawn notice or a dropped node subscribes beside
// it, and stops hearing when it cancels (its scheduler stopped) while the
// others go on.
func TestSubscribersSeeUpdatesBesideOnUpdate(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	saw := func(who string) func(prev, next *telemetry.NodeState) {
		return func(prev, next *telemetry.NodeState) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case next == nil:
				seen = append(seen, fmt.Sprintf("%s: dropped %s at %d", who, prev.Node, prev.Sequence))
			case prev == nil:
				seen = append(seen, fmt.Sprintf("%s: new %s", who, next.Node))
			default:
				seen = append(seen, fmt.Sprintf("%s: %s %d->%d", who, next.Node, prev.Sequence, next.Sequence))
			}
		}
	}
	s := telemetry.NewStore(telemetry.StoreOptions{OnUpdate: saw("hook")})
	var n telemetry.Notifier = s
	cancelA := n.Subscribe(saw("a"))
	n.Subscribe(saw("b"))
	s.Update(telemetrytest.Report("n1", 1, 1, t0), time.Now())
	cancelA()
	s.Update(telemetrytest.Report("n1", 1, 2, t0), time.Now())
	s.Update(telemetrytest.Report("n1", 1, 2, t0), time.Now()) // not applied: seen by nobody
	// Drops reach the subscribers (a GPU held broken is free again), not
	// the hook, which reads reports only.
	s.Update(telemetrytest.Report("n2", 1, 1, t0), time.Now().Add(-2*time.Hour))
	s.Prune(time.Hour)
	s.Forget("n1")
	s.Forget("n1")      // already gone: seen by nobody
	s.Forget("unknown") // never reported
	want := []string{"hook: new n1", "a: new n1", "b: new n1", "hook: n1 1->2", "b: n1 1->2",
		"hook: new n2", "b: new n2", "b: dropped n2 at 1", "b: dropped n1 at 2"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Fatalf("saw %q, want %q", seen, want)
	}
}

// Reads must not wait for writers: Score runs for every node of every pod.
// A writer is parked inside OnUpdate, holding the node's write lock, while
// readers of that same node and of others must return at once.
func TestReadsDoNotWaitForWriters(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	s := telemetry.NewStore(telemetry.StoreOptions{OnUpdate: func(prev, next *telemetry.NodeState) {
		if next.Sequence == 2 {
			close(entered)
			<-release
		}
	}})
	s.Update(telemetrytest.Report("n1", 8, 1, time.Now()), time.Now())
	s.Update(telemetrytest.Report("n2", 8, 1, time.Now()), time.Now())
	go s.Update(telemetrytest.Report("n1", 8, 2, time.Now()), time.Now())
	<-entered
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			if _, ok := s.Node("n1"); !ok {
				t.Error("n1 unreadable during its update")
			}
			s.Node("n2")
			s.Node("unknown")
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reads blocked behind a writer")
	}
	close(release)
}

func TestConcurrentUpdatesAndReads(t *testing.T) {
	s := telemetry.NewStore(telemetry.StoreOptions{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for seq := uint64(1); seq <= 200; seq++ {
				s.Update(telemetrytest.Report("n"+string(rune('a'+w%2)), 8, seq, time.Now()), time.Now())
			}
		}(w)
	}
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for i := 0; i < 2000; i++ {
				if st, ok := s.Node("na"); ok {
					if st.Sequence < last {
						t.Errorf("sequence went back from %d to %d", last, st.Sequence)
						return
					}
					last = st.Sequence
				}
			}
		}()
	}
	wg.Wait()
	if st, _ := s.Node("na"); st.Sequence != 200 {
		t.Fatalf("final sequence %d, want 200", st.Sequence)
	}
}

// The collected-at comparison between two agents only settles a brief
// overlap (a rolling update). Once the held report is stale its agent has
// gone, and a new agent whose clock reads earlier (the node's clock was
// stepped back, or the old agent's ran ahead) must still be heard; the
// node would otherwise read as unknown until the store drops it an hour
// later.
func TestNewAgentIsHeardAfterTheOldOneWentStale(t *testing.T) {
	c := &clock{now: t0}
	s := telemetry.NewStore(telemetry.StoreOptions{MaxAge: 20 * time.Second, Now: c.Now})
	ahead := telemetrytest.Report("n1", 2, 7, t0.Add(10*time.Minute))
	ahead.AgentId = "old"
	if !s.Update(ahead, c.Now()) {
		t.Fatal("first report not applied")
	}
	c.Add(30 * time.Second)
	next := telemetrytest.Report("n1", 2, 1, c.Now())
	next.AgentId = "new"
	if !s.Update(next, c.Now()) {
		t.Fatal("the only agent still reporting was ignored because the stale report's clock read later")
	}
	if st, ok := s.Node("n1"); !ok || st.AgentID != "new" {
		t.Fatalf("node reads %v (fresh %v), want the new agent's report", st, ok)
	}
	// While it is fresh, the new report still wins over an overlapping
	// older agent that collected earlier.
	late := telemetrytest.Report("n1", 2, 8, c.Now().Add(-time.Second))
	late.AgentId = "old"
	if s.Update(late, c.Now()) {
		t.Fatal("an earlier-collected report of another agent replaced a fresh one")
	}
}

// The view lists a GPU's MIG instances by placement whatever order the
// report has them in, which validation leaves free: Placements takes
// adjacent entries of one GPU instance (its compute instances) as one, and
// a GPU instance whose compute instances were listed apart came out twice,
// so gpupack saw an instance that does not exist.
func TestMIGInstancesAreListedByPlacement(t *testing.T) {
	s := telemetry.NewStore(telemetry.StoreOptions{})
	r := telemetrytest.Report("n1", 2, 1, time.Now())
	mig := func(n, gi, ci, start uint32) *telemetryv1.MIGInstance {
		return &telemetryv1.MIGInstance{
			Uuid: "MIG-" + telemetrytest.UUID("n1", 1, int(n)), Profile: "3g.40gb", GpuInstanceId: gi, ComputeInstanceId: ci,
			PlacementStart: start, PlacementSize: 4, MemoryTotalBytes: 40 << 30,
		}
	}
	// GPU instance 1 (slices 0-3) has two compute instances, listed apart;
	// GPU instance 2 holds slices 4-7.
	r.Gpus[1].MigInstances = []*telemetryv1.MIGInstance{mig(0, 2, 0, 4), mig(1, 1, 0, 0), mig(2, 2, 1, 4), mig(3, 1, 1, 0)}
	r.PodDevices = nil
	r.Gpus[0].Pods = nil
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		t.Fatal(err)
	}
	s.Update(r, time.Now())
	st, _ := s.Node("n1")
	g := st.GPUs[1]
	want := []gpu.Placement{{Profile: "3g.40gb", Start: 0}, {Profile: "3g.40gb", Start: 4}}
	if got := g.Placements(); !slices.Equal(got, want) {
		t.Errorf("placements %v, want %v", got, want)
	}
	var order []string
	for _, m := range g.MIG {
		order = append(order, fmt.Sprintf("%d@%d", m.GPUInstanceID, m.Start))
	}
	if got, want := strings.Join(order, " "), "1@0 1@0 2@4 2@4"; got != want {
		t.Errorf("MIG instances in the order %s, want %s", got, want)
	}
	// The report the store was given is not reordered.
	if r.Gpus[1].MigInstances[0].GetGpuInstanceId() != 2 {
		t.Error("the report was modified")
	}
}

// A report that arrives while the pruner decides a node is gone keeps the
// node: the pruner saw the old, stale report, and dropping the node then
// would lose the new one until the agent's next report.
func TestReportDuringDropKeepsTheNode(t *testing.T) {
	c := &clock{now: t0}
	s := telemetry.NewStore(telemetry.StoreOptions{Now: c.Now, MaxAge: 10 * time.Second})
	s.Update(telemetrytest.Report("a", 1, 1, t0), c.Now())
	c.Add(time.Minute)
	s.ForgetStaleIf(func(name string) bool {
		if !s.Update(telemetrytest.Report(name, 1, 2, c.Now()), c.Now()) {
			t.Fatal("the new report was refused")
		}
		return true
	})
	st, fresh := s.Lookup("a")
	if st == nil || !fresh || st.Sequence != 2 {
		t.Fatalf("node after a report during its drop: %+v fresh=%v, want sequence 2, fresh", st, fresh)
	}
	// A node still silent is dropped as before.
	c.Add(time.Minute)
	s.ForgetStaleIf(func(string) bool { return true })
	if st, _ := s.Lookup("a"); st != nil {
		t.Fatal("silent node not dropped")
	}
	// A report after the drop adds the node again.
	s.Update(telemetrytest.Report("a", 1, 3, c.Now()), c.Now())
	if st, fresh := s.Lookup("a"); st == nil || !fresh {
		t.Fatal("report after a drop not stored")
	}
}
