package spotrisk

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingapi "k8s.io/api/scheduling/v1beta1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/backend/queue"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	capacitylabels "github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// fleet: one node of each capacity type, a riskier Spot pool in zone c, and
// a Spot node about to be reclaimed.
func fleet() []*corev1.Node {
	doomed := node("spot-doomed", pricing.Spot, "us-east-1a")
	doomed.Spec.Taints = []corev1.Taint{{Key: "aws-node-termination-handler/spot-itn", Effect: corev1.TaintEffectNoSchedule}}
	return []*corev1.Node{
		node("od", pricing.OnDemand, "us-east-1a"),
		node("reserved", pricing.Reserved, "us-east-1a"),
		node("spot-a", pricing.Spot, "us-east-1a"),
		node("spot-c", pricing.Spot, "us-east-1c"),
		doomed,
	}
}

func TestFilterRulesAndCounts(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	cases := []struct {
		name     string
		ann      map[string]string
		feasible []string
		fitError []string
	}{
		{"inference stays off spot", map[string]string{AnnotationWorkload: "inference"}, []string{"od", "reserved"}, nil},
		{"batch may go anywhere but the doomed node", map[string]string{AnnotationWorkload: "batch"}, []string{"od", "reserved", "spot-a", "spot-c"}, nil},
		{"only spot", map[string]string{AnnotationSpot: "only"}, []string{"spot-a", "spot-c"}, nil},
		// 5-10% a month passes a 10% limit; >20% does not.
		{"risk limit", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"}, []string{"spot-a"}, nil},
		{"checkpointing training waits for spot, reserved is fine", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "1h"}, []string{"reserved", "spot-a", "spot-c"}, nil},
	}
	for _, c := range cases {
		r := e.schedule(t, pod("p", c.ann))
		if strings.Join(r.feasible, ",") != strings.Join(c.feasible, ",") {
			t.Errorf("%s: feasible %v, want %v (%s)", c.name, r.feasible, c.feasible, r.fitError)
		}
	}

	// With no fitting node the message counts nodes per rule.
	e = newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[2:]...)
	r := e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "inference"}))
	expectContains(t, "FitError", r.fitError,
		"0/3 nodes are available:",
		"1 node(s) have a pending reclaim notice",
		"2 node(s) are Spot and the pod stays off Spot (inference workload)")
	// 100 x 0.14 is 14.000000000000002 in floating point; the message says 14.
	r = newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[3:]...).schedule(t, pod("p", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "0.14"}))
	expectContains(t, "FitError", r.fitError,
		"1 node(s) are in Spot pools reclaimed more often than penny.dev/max-reclaim-risk=14 percent a month allows")
	r = e.schedule(t, pod("p", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "1%"}))
	expectContains(t, "FitError", r.fitError,
		"2 node(s) are in Spot pools reclaimed more often than penny.dev/max-reclaim-risk=1 percent a month allows")
	e = newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[:1]...)
	r = e.schedule(t, pod("p", map[string]string{AnnotationSpot: "only"}))
	expectContains(t, "FitError", r.fitError, "1 node(s) are not Spot and the pod runs only on Spot (penny.dev/spot=only)")
}

// A catalog reload that moves a pool to another interruption bucket moves
// the risk filter with it: the pool's prior follows the catalog (it used to
// keep the first bucket it saw until the scheduler restarted).
func TestCatalogReloadMovesThePoolsRisk(t *testing.T) {
	store := pricing.NewStore(catalog(t))
	e := newEnv(t, nil, Deps{Prices: store}, fleet()...)
	limited := map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"}
	if r := e.schedule(t, pod("p", limited)); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("before the reload: feasible %v, want spot-a (%s)", r.feasible, r.fitError)
	}
	if err := store.Load([]byte(strings.Replace(testCatalog, `interruption: ">20%"`, `interruption: "<5%"`, 1)), "reloaded"); err != nil {
		t.Fatal(err)
	}
	if r := e.schedule(t, pod("p", limited)); strings.Join(r.feasible, ",") != "spot-a,spot-c" {
		t.Fatalf("after the catalog moved us-east-1c to <5%%: feasible %v, want spot-a,spot-c (%s)", r.feasible, r.fitError)
	}
}

// No cluster event says that a reload moved a pool's risk: the pending pods
// whose Spot pools it decides (a risk limit; training without checkpoints)
// are retried at once rather than at the next unrelated event or the
// scheduler's five-minute flush. Pods it cannot help are left alone.
func TestCatalogReloadRetriesPodsKeptOffSpotByRisk(t *testing.T) {
	store := pricing.NewStore(catalog(t))
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	pods := factory.Core().V1().Pods().Informer().GetIndexer()
	e := newEnvWith(t, nil, Deps{Prices: store}, []frameworkruntime.Option{frameworkruntime.WithInformerFactory(factory)}, fleet()...)
	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "1%"})
	training := pod("training", map[string]string{AnnotationWorkload: "training"})
	batch := pod("batch", map[string]string{AnnotationWorkload: "batch"})
	bound := pod("bound", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "1%"})
	bound.Spec.NodeName = "spot-a"
	for _, p := range []*corev1.Pod{limited, training, batch, bound} {
		if err := pods.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("before the reload no pool is under 1%%: feasible %v", r.feasible)
	}
	if err := store.Load([]byte(strings.Replace(testCatalog, `interruption: ">20%"`, `interruption: "<5%"`, 1)), "reloaded"); err != nil {
		t.Fatal(err)
	}
	if got, want := e.act.list(), []string{"default/limited", "default/training"}; !reflect.DeepEqual(slices.Sorted(slices.Values(got)), want) {
		t.Fatalf("retried %v after the reload, want %v", got, want)
	}
	if err := store.Load([]byte("not: a catalog"), "broken"); err == nil {
		t.Fatal("a broken catalog loaded")
	}
	if got := e.act.list(); len(got) != 2 {
		t.Fatalf("a rejected catalog changes nothing, yet retried %v", got)
	}
}

// swappedBook is a price book a test swaps for another, as a platform's
// own PriceBook (Deps.Prices) may change under the scheduler.
type swappedBook struct {
	mu  sync.Mutex
	cat *pricing.Catalog
}

func (b *swappedBook) NodePrice(n *corev1.Node) (pricing.Price, bool) {
	b.mu.Lock()
	c := b.cat
	b.mu.Unlock()
	return c.NodePrice(n)
}

func (b *swappedBook) swap(c *pricing.Catalog) {
	b.mu.Lock()
	b.cat = c
	b.mu.Unlock()
}

// queueActivator takes its queue's lock to activate pods, as kube-scheduler's
// PriorityQueue does, which also holds that lock while it runs queueing hints.
type queueActivator struct {
	mu sync.Mutex
	activator
}

func (q *queueActivator) Activate(logger klog.Logger, pods map[string]*corev1.Pod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.activator.Activate(logger, pods)
}

// A queueing hint that reads a pool whose bucket the catalog moved updates
// the pool's prior, and the pods kept off the pool by its risk are retried.
// kube-scheduler runs hints holding its queue's lock, which Activate takes:
// a retry made from within the hint hung the scheduler for good.
func TestHintThatMovesAPoolsPriorDoesNotActivateUnderTheQueueLock(t *testing.T) {
	book := &swappedBook{cat: catalog(t)}
	q := &queueActivator{}
	e := newEnvWith(t, nil, Deps{Prices: book}, []frameworkruntime.Option{frameworkruntime.WithPodActivator(q)}, fleet()...)
	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "5%"})
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("no Spot pool is under 5%%: feasible %v", r.feasible)
	}
	book.swap(catalogOf(t, strings.Replace(testCatalog, `interruption: ">20%"`, `interruption: "<5%"`, 1)))

	q.mu.Lock() // the queue runs the hint
	done := make(chan fwk.QueueingHint)
	go func() {
		h, err := e.plugin.isSchedulableAfterNodeChange(klogLogger(), limited, nil, node("spot-c2", pricing.Spot, "us-east-1c"))
		if err != nil {
			t.Error(err)
		}
		done <- h
	}()
	select {
	case h := <-done:
		if h != fwk.Queue {
			t.Errorf("a node of a pool now under the pod's limit: hint %v, want Queue", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hint is blocked on the queue's lock: it activated pods from within the queue")
	}
	q.mu.Unlock()
	waitUntil(t, func() bool { return slices.Contains(q.list(), "default/limited") })
}

// riskRetryEnv is a Spot node of the 5-10% pool and a risk model whose
// evidence halves every ten minutes, both on one fake clock.
func riskRetryEnv(t *testing.T) (*env, *clocktesting.FakeClock, *pricing.RiskModel, pricing.Pool) {
	t.Helper()
	clk := clocktesting.NewFakeClock(t0)
	model := pricing.NewRiskModel(pricing.RiskConfig{HalfLife: 10 * time.Minute, Clock: clk})
	e := newEnv(t, nil, Deps{Prices: catalog(t), Risk: model, Clock: clk}, node("spot-a", pricing.Spot, "us-east-1a"))
	return e, clk, model, pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
}

// riskTimer is when the pool's risk retry timer fires (zero: none armed).
func (e *env) riskTimer(pool pricing.Pool) time.Time {
	e.plugin.riskWaits.mu.Lock()
	defer e.plugin.riskWaits.mu.Unlock()
	if p := e.plugin.riskWaits.pools[pool]; p != nil {
		return p.at
	}
	return time.Time{}
}

// No cluster event says that a pool's reclaim risk fell back under a pod's
// limit as its reclaims aged: a pod kept off the pool by its risk is retried
// when the estimate gets there, to the second, and not before; pods kept off
// for other reasons are not.
func TestPodKeptOffSpotByRiskIsRetriedWhenThePoolsRiskFalls(t *testing.T) {
	e, clk, model, pool := riskRetryEnv(t)
	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	if r := e.schedule(t, limited); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("the 5-10%% pool passes a 10%% limit; feasible %v (%s)", r.feasible, r.fitError)
	}
	// One reclaim takes the pool to 66% a month.
	model.ObserveReclaim(pool, "spot-a", t0)
	r := e.schedule(t, limited)
	if len(r.feasible) != 0 {
		t.Fatalf("after a reclaim the pool is above 10%%; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "1 node(s) are in Spot pools reclaimed more often than penny.dev/max-reclaim-risk=10 percent a month allows")
	never := pod("never", map[string]string{AnnotationWorkload: "inference"})
	if r := e.schedule(t, never); len(r.feasible) != 0 {
		t.Fatalf("inference stays off Spot; feasible %v", r.feasible)
	}
	// Kept off for its risk, then for good: no longer waiting for the pool.
	moved := pod("moved", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	e.schedule(t, moved)
	moved.Annotations = map[string]string{AnnotationSpot: "never"}
	if r := e.schedule(t, moved); len(r.feasible) != 0 {
		t.Fatalf("a never pod stays off Spot; feasible %v", r.feasible)
	}

	// The estimate is (alpha + f) / beta, the reclaim weighing f =
	// 2^(-t/10m): it reaches the limit where f = limit x beta - alpha.
	beta := 730.0
	alpha := pricing.RateFromMonthly(0.075) * beta
	cross := time.Duration(-math.Log2(pricing.RateFromMonthly(0.10)*beta-alpha) * float64(10*time.Minute))
	at := t0.Add(cross).Truncate(time.Second).Add(time.Second)
	if got := e.riskTimer(pool); !got.Equal(at) {
		t.Fatalf("the pool's retry is armed for %v, want %v: the estimate reaches 10%% at %v", got, at, t0.Add(cross))
	}
	clk.SetTime(at.Add(-time.Second))
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("a second before the retry the pool is still above 10%%; feasible %v", r.feasible)
	}
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("retried %v before the pool's estimate fell under the limit", got)
	}
	clk.SetTime(at)
	waitUntil(t, func() bool { return len(e.act.list()) > 0 })
	if got := e.act.list(); !reflect.DeepEqual(got, []string{"default/limited"}) {
		t.Fatalf("retried %v, want only default/limited", got)
	}
	if r := e.schedule(t, limited); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("retried, the pod fits the pool again; feasible %v (%s)", r.feasible, r.fitError)
	}
	if got := e.riskTimer(pool); !got.IsZero() {
		t.Errorf("no pod is kept off the pool, yet a retry is armed for %v", got)
	}
}

// A pool's retry timer, or a risk model that outlives the scheduler, does
// not retry pods into the queue of a scheduler that stopped.
func TestRiskRetryEndsWithTheScheduler(t *testing.T) {
	e, clk, model, pool := riskRetryEnv(t)
	model.ObserveReclaim(pool, "spot-a", t0)
	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("after a reclaim the pool is above 10%%; feasible %v", r.feasible)
	}
	e.stop()
	clk.SetTime(t0.Add(24 * time.Hour))
	e.plugin.retryKeptOff(klogLogger(), pool)
	model.ObserveExposure(pool, 1, clk.Now())
	if got := e.act.list(); len(got) != 0 {
		t.Errorf("retried %v after the scheduler stopped", got)
	}
}

// Training without checkpoints is kept off a pool by what a reclaim would
// cost it (maxExpectedLoss), a limit on the rate too: it is retried when the
// pool's estimate falls under 2 x 2% / 100 h.
func TestTrainingKeptOffSpotByExpectedLossIsRetriedWhenThePoolsRiskFalls(t *testing.T) {
	e, clk, model, pool := riskRetryEnv(t)
	p := waited(pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "100h"}))
	model.ObserveReclaim(pool, "spot-a", t0)
	r := e.schedule(t, p)
	if len(r.feasible) != 0 {
		t.Fatalf("after a reclaim the pool would cost 100 h of training more than 2%%; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "would expect to lose more than 2 percent of its work to reclaims")
	beta := 730.0
	alpha := pricing.RateFromMonthly(0.075) * beta
	cross := time.Duration(-math.Log2(2*0.02/100*beta-alpha) * float64(10*time.Minute))
	at := t0.Add(cross).Truncate(time.Second).Add(time.Second)
	if got := e.riskTimer(pool); !got.Equal(at) {
		t.Fatalf("the pool's retry is armed for %v, want %v: the loss reaches 2%% at %v", got, at, t0.Add(cross))
	}
	clk.SetTime(at)
	waitUntil(t, func() bool { return len(e.act.list()) > 0 })
	if r := e.schedule(t, p); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("retried, the pod fits the pool again; feasible %v (%s)", r.feasible, r.fitError)
	}
}

// A reclaim raises the estimate: nobody is retried and the retry is put off.
// Exposure lowers it: a pod it now admits is retried at once, not at the
// time decay alone would take. A pod held past maxWakeupDelay since its
// last attempt is forgotten, unretried.
func TestRiskRetryFollowsNewEvidence(t *testing.T) {
	e, clk, model, pool := riskRetryEnv(t)
	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	model.ObserveReclaim(pool, "spot-a", t0)
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("after a reclaim the pool is above 10%%; feasible %v", r.feasible)
	}
	first := e.riskTimer(pool)
	if first.IsZero() || !first.Before(t0.Add(maxWakeupDelay)) {
		t.Fatalf("retry armed for %v, want before %v", first, t0.Add(maxWakeupDelay))
	}
	clk.SetTime(t0.Add(10 * time.Minute))
	// The model's hooks run off its caller's goroutine (a queueing hint's,
	// for one): the retry follows the evidence, not within the call.
	model.ObserveReclaim(pool, "spot-b", clk.Now())
	if !eventually(func() bool { return e.riskTimer(pool).After(first) }) {
		t.Fatalf("a second reclaim left the retry at %v (first %v)", e.riskTimer(pool), first)
	}
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("a reclaim retried %v", got)
	}
	// 20,000 node-hours with no reclaim take it to 5.4% a month.
	model.ObserveExposure(pool, 20000, clk.Now())
	if !eventually(func() bool { return len(e.act.list()) > 0 }) || !reflect.DeepEqual(e.act.list(), []string{"default/limited"}) {
		t.Fatalf("exposure that took the pool under 10%% retried %v, want default/limited", e.act.list())
	}
	if r := e.schedule(t, limited); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("after the exposure the pool passes 10%%; feasible %v (%s)", r.feasible, r.fitError)
	}

	// Five more reclaims put the pool out of reach for 70 minutes: the
	// pod, deleted or no longer tried, is forgotten after maxWakeupDelay.
	for i := range 5 {
		model.ObserveReclaim(pool, fmt.Sprintf("spot-%d", i), clk.Now())
	}
	if r := e.schedule(t, limited); len(r.feasible) != 0 {
		t.Fatalf("after five more reclaims the pool is above 10%%; feasible %v", r.feasible)
	}
	forget := clk.Now().Add(maxWakeupDelay)
	if !eventually(func() bool { return e.riskTimer(pool).Equal(forget) }) {
		t.Fatalf("retry armed for %v, want %v (forgetting the pod)", e.riskTimer(pool), forget)
	}
	clk.SetTime(forget)
	waitUntil(t, func() bool { return e.riskTimer(pool).IsZero() })
	if got := e.act.list(); len(got) != 1 {
		t.Fatalf("forgetting the pod retried it: %v", got)
	}
}

// Each pod that fails asks again, of every pod a pool keeps off by its
// risk, whether the estimate now admits it (waitForRisk), on the
// scheduling goroutine and under the pool's lock: the question must not
// build the Filter reason's words. It did, one fmt.Sprintf per held pod, so
// a flush that retries n held pods formatted n² reasons.
func TestRiskRetryAsksHeldPodsWithoutWords(t *testing.T) {
	e, _, model, pool := riskRetryEnv(t)
	model.ObserveReclaim(pool, "spot-a", t0)
	const held = 200
	for i := range held {
		p := pod(fmt.Sprintf("limited-%d", i), map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
		if r := e.schedule(t, p); len(r.feasible) != 0 {
			t.Fatalf("after a reclaim the pool is above 10%%; feasible %v", r.feasible)
		}
	}
	e.plugin.riskWaits.mu.Lock()
	n := len(e.plugin.riskWaits.pools[pool].pods)
	e.plugin.riskWaits.mu.Unlock()
	if n != held {
		t.Fatalf("%d pods held for the pool, want %d", n, held)
	}
	logger := klogLogger()
	if allocs := testing.AllocsPerRun(10, func() { e.plugin.retryKeptOff(logger, pool) }); allocs >= held/10 {
		t.Errorf("asking %d held pods whether the pool admits them allocates %v times, want a few whatever their number", held, allocs)
	}
}

// A pod that an earlier PreFilter turned away (PennyGang, finding no room
// for its gang on the nodes this plugin admits) reaches PostFilter without
// this plugin's state: the Spot pools its risk alone keeps it off are read
// from the snapshot, and it is held for them as Filter's verdicts would
// hold it. A pool whose nodes the pod's node selector or an untolerated
// taint keeps it from, or that another rule keeps it off, holds nothing;
// a pod whose Spot pools do not follow risk is not held at all. Such a pod
// was not held, and waited for an unrelated event or the five-minute flush.
func TestPodTurnedAwayBeforeFilterIsHeldForThePoolsItsRiskKeepsItOff(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	model := pricing.NewRiskModel(pricing.RiskConfig{HalfLife: 10 * time.Minute, Clock: clk})
	tainted := node("spot-b", pricing.Spot, "us-east-1b")
	tainted.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "other", Effect: corev1.TaintEffectNoSchedule}}
	doomed := node("spot-doomed", pricing.Spot, "us-east-1d")
	doomed.Spec.Taints = []corev1.Taint{{Key: "aws-node-termination-handler/spot-itn", Effect: corev1.TaintEffectNoSchedule}}
	nodes := []*corev1.Node{node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"), tainted,
		node("spot-c", pricing.Spot, "us-east-1c"), doomed}
	e := newEnv(t, nil, Deps{Prices: catalog(t), Risk: model, Clock: clk}, nodes...)
	poolOf := func(zone string) pricing.Pool {
		return pricing.Pool{InstanceType: "p4d.24xlarge", Zone: zone, Capacity: pricing.Spot}
	}
	// A reclaim takes the 5-10% pools of zones a, b and d to 66% a month;
	// zone c's is over 20%.
	for _, zone := range []string{"us-east-1a", "us-east-1b", "us-east-1d"} {
		model.ObserveReclaim(poolOf(zone), "spot-x", t0)
	}
	held := func(p *corev1.Pod) []string {
		e.plugin.riskWaits.mu.Lock()
		defer e.plugin.riskWaits.mu.Unlock()
		var out []string
		for pool, w := range e.plugin.riskWaits.pools {
			if _, ok := w.pods[p.UID]; ok {
				out = append(out, pool.Zone)
			}
		}
		slices.Sort(out)
		return out
	}
	turnedAway := func(p *corev1.Pod) {
		t.Helper()
		if _, s := e.fw.RunPostFilterPlugins(context.Background(), framework.NewCycleState(), p, framework.NewDefaultNodeToStatus()); s.IsSuccess() {
			t.Fatalf("PostFilter found room for %s", p.Name)
		}
	}

	limited := pod("limited", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	// The reclaim taint tolerated, the notice is what keeps it off spot-doomed.
	limited.Spec.Tolerations = []corev1.Toleration{{Key: "aws-node-termination-handler/spot-itn", Operator: corev1.TolerationOpExists}}
	turnedAway(limited)
	if got := held(limited); !reflect.DeepEqual(got, []string{"us-east-1a", "us-east-1c"}) {
		t.Fatalf("held for the pools of zones %v, want us-east-1a and us-east-1c (us-east-1b's node has a taint it does not tolerate, us-east-1d's a reclaim notice)", got)
	}
	// In zone a, as Filter would say.
	inZoneA := pod("in-zone-a", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})
	inZoneA.Spec.NodeSelector = map[string]string{corev1.LabelTopologyZone: "us-east-1a"}
	turnedAway(inZoneA)
	if got := held(inZoneA); !reflect.DeepEqual(got, []string{"us-east-1a"}) {
		t.Fatalf("a pod that selects zone a held for the pools of zones %v, want us-east-1a", got)
	}
	inference := pod("inference", map[string]string{AnnotationWorkload: "inference"})
	turnedAway(inference)
	if got := held(inference); len(got) != 0 {
		t.Fatalf("inference stays off Spot whatever its risk, yet is held for the pools of zones %v", got)
	}

	wait, ok := model.FallsTo(poolOf("us-east-1a"), pricing.RateFromMonthly(0.10))
	if !ok {
		t.Fatal("the us-east-1a pool's estimate never falls to 10%")
	}
	clk.Step(wait + time.Second)
	waitUntil(t, func() bool { return len(e.act.list()) == 2 })
	if got, want := slices.Sorted(slices.Values(e.act.list())), []string{"default/in-zone-a", "default/limited"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("retried %v when the us-east-1a pool fell under 10%%, want %v", got, want)
	}
}

// A pod without GPUs pays for the share of a GPU node it takes, not the
// OpenCost split (which puts nearly all of the node's price on its GPUs):
// a CPU node is the cheaper place for it, even against a Spot GPU node.
func TestCPUPodPrefersCPUNodeOverSpotGPUNode(t *testing.T) {
	cpuNode := sized(node("cpu", pricing.OnDemand, "us-east-1a"), "m7i.8xlarge", "32", "128Gi", "")
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, node("spot-a", pricing.Spot, "us-east-1a"), cpuNode)
	p := pod("etl", map[string]string{AnnotationWorkload: "batch"})
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi")}}
	if r := e.schedule(t, p); r.best() != "cpu" {
		t.Fatalf("CPU pod: best %s, scores %v", r.best(), r.scores)
	}
	class, _ := classify(p, e.plugin.args)
	cost, ok := e.plugin.Cost(p, class, pricing.PodUsage(p), node("spot-a", pricing.Spot, "us-east-1a"))
	// 4 of 96 vCPUs is the larger share: 1/24 of the $8 node, times the
	// reclaim-risk factor (a batch pod of unknown runtime), so at least $8/24.
	if !ok || cost < 8.0/24 {
		t.Fatalf("CPU pod on the Spot GPU node costs %v (%v), want at least %v", cost, ok, 8.0/24)
	}
}

func TestScoreExpectedCostOfUsefulWork(t *testing.T) {
	nodes := fleet()[:4]
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, nodes...)

	// Reserved capacity is already paid: it fills first.
	r := e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "batch"}))
	if r.best() != "reserved" || r.scores["reserved"] != fwk.MaxScore || r.scores["od"] != 0 {
		t.Fatalf("batch: best %s, scores %v", r.best(), r.scores)
	}
	// Without reserved capacity, checkpointing training takes the cheapest
	// Spot pool; the expected cost includes the reclaim risk.
	e = newEnv(t, nil, Deps{Prices: catalog(t)}, nodes[0], nodes[2], nodes[3])
	r = e.schedule(t, pod("p", map[string]string{AnnotationSpot: "allow", AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}))
	if r.best() != "spot-c" {
		t.Fatalf("checkpointing: best %s, scores %v", r.best(), r.scores)
	}
	// Training without checkpoints avoids Spot while on-demand exists.
	r = e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "training"}))
	if r.best() != "od" || r.scores["spot-a"] != 0 || r.scores["spot-c"] != 0 {
		t.Fatalf("no checkpoints: best %s, scores %v", r.best(), r.scores)
	}
	// A week-long job without checkpoints, allowed on Spot, pays for its
	// lost work: with a reclaim rate high enough the riskier pool loses
	// even though it is cheaper per hour.
	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	risk.SetPrior(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1c", Capacity: pricing.Spot}, pricing.BucketOver20)
	risk.ObserveExposure(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1c", Capacity: pricing.Spot}, 100, t0)
	for i := 0; i < 50; i++ {
		risk.ObserveReclaim(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1c", Capacity: pricing.Spot}, fmt.Sprint("n", i), t0)
	}
	e = newEnv(t, nil, Deps{Prices: catalog(t), Risk: risk}, nodes[0], nodes[2], nodes[3])
	r = e.schedule(t, pod("p", map[string]string{AnnotationSpot: "allow", AnnotationExpectedRuntime: "168h"}))
	if r.best() != "spot-a" || r.scores["spot-c"] >= r.scores["spot-a"] {
		t.Fatalf("risky pool: best %s, scores %v", r.best(), r.scores)
	}
	// The cost is price x (1 + rate x (lost + restart)), on the pod's share.
	p := pod("p", map[string]string{AnnotationSpot: "allow", AnnotationExpectedRuntime: "168h"})
	class, _ := classify(p, e.plugin.args)
	cost, ok := e.plugin.Cost(p, class, pricing.PodUsage(p), nodes[3])
	rate := risk.ReclaimRate(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1c", Capacity: pricing.Spot})
	want := 7.0 / 8 * (1 + rate*(84+5.0/60))
	if !ok || cost < want*0.999999 || cost > want*1.000001 {
		t.Fatalf("cost %g, want %g", cost, want)
	}
}

func TestUnpricedNodesScoreLast(t *testing.T) {
	other := node("other", pricing.OnDemand, "us-east-1a")
	other.Labels[corev1.LabelInstanceTypeStable] = "unknown.type"
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"), other)
	r := e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "batch"}))
	if r.scores["od"] != fwk.MaxScore || r.scores["other"] != 0 {
		t.Fatalf("scores %v", r.scores)
	}
	// Without any catalog, the rules still hold and every node scores alike.
	e = newEnv(t, nil, Deps{}, fleet()...)
	r = e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "inference"}))
	if strings.Join(r.feasible, ",") != "od,reserved" || r.scores["od"] != r.scores["reserved"] {
		t.Fatalf("no catalog: feasible %v scores %v", r.feasible, r.scores)
	}
}

func TestMalformedAnnotationIsRejectedWithEvent(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	r := e.schedule(t, pod("p", map[string]string{AnnotationSpot: "maybe"}))
	if r.preFilter == nil || r.preFilter.Code() != fwk.UnschedulableAndUnresolvable {
		t.Fatalf("prefilter status %v", r.preFilter)
	}
	expectContains(t, "status", r.preFilter.Message(), `annotation penny.dev/spot="maybe" is not valid: use one of never, prefer, allow, only`)
	evs := e.events()
	if len(evs) != 1 {
		t.Fatalf("events %v", evs)
	}
	expectContains(t, "event", evs[0], "Warning", EventInvalidAnnotation, `penny.dev/spot="maybe"`, "use one of never, prefer, allow, only")
}

// noArgs passes a message as a format with no arguments, as kube-scheduler
// does, without vet objecting to the non-constant format.
var noArgs []any

// kube-scheduler records FailedScheduling with the status message as the
// format and puts the same message in the pod's PodScheduled condition. A
// percent sign in a malformed annotation's value turned into %!"(MISSING)
// and the like in the event that should tell the user what is wrong.
func TestMalformedAnnotationWithPercentReadsTheSameInEventAndCondition(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	cases := []struct{ key, value, shown string }{
		{AnnotationWorkload, "training%", `penny.dev/workload="training\x25"`},
		{AnnotationSpot, "50%", `penny.dev/spot="50\x25"`},
		{AnnotationCheckpointInterval, "30m%", `penny.dev/checkpoint-interval="30m\x25"`},
		{AnnotationExpectedRuntime, "6h%", `penny.dev/expected-runtime="6h\x25"`},
		{AnnotationFallbackAfter, "15%", `penny.dev/fallback-after="15\x25"`},
		{AnnotationMaxReclaimRisk, "150%", `penny.dev/max-reclaim-risk="150\x25"`},
		{AnnotationMaxReclaimRisk, "5%d %s", `penny.dev/max-reclaim-risk="5\x25d \x25s"`},
	}
	for _, tc := range cases {
		r := e.schedule(t, pod("p", map[string]string{tc.key: tc.value}))
		if r.preFilter == nil || r.preFilter.Code() != fwk.UnschedulableAndUnresolvable {
			t.Fatalf("%s=%s: prefilter status %v", tc.key, tc.value, r.preFilter)
		}
		msg := r.preFilter.Message()
		if event := fmt.Sprintf(msg, noArgs...); event != msg {
			t.Errorf("%s=%s: the FailedScheduling event reads\n%s\nwhere the condition reads\n%s", tc.key, tc.value, event, msg)
		}
		expectContains(t, "status", msg, "annotation "+tc.shown+" is not valid")
		evs := e.events()
		if len(evs) != 1 {
			t.Fatalf("%s=%s: events %v", tc.key, tc.value, evs)
		}
		expectContains(t, "event", evs[0], EventInvalidAnnotation+" "+msg+"; the pod is not scheduled until it is fixed")
	}
}

func TestFallbackAfterWaiting(t *testing.T) {
	full := node("spot-full", pricing.Spot, "us-east-1a")
	full.Spec.Taints = []corev1.Taint{{Key: pricing.TaintReclaimNotice, Effect: corev1.TaintEffectNoSchedule}}
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Minute}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"), full)
	p := pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})

	r := e.schedule(t, p)
	if len(r.feasible) != 0 {
		t.Fatalf("within the window the pod waits for Spot; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "1 node(s) are on-demand and the pod waits for Spot capacity until 2026-11-28T12:02:00Z (checkpointing training; fallback after 2m0s)")
	// PostFilter armed one timer that retries the pod when the wait ends.
	e.schedule(t, p)
	e.clock.Step(119 * time.Second)
	if got := e.act.list(); len(got) != 0 {
		t.Fatalf("activated early: %v", got)
	}
	e.clock.Step(time.Second)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })
	if got := e.act.list(); got[0] != "default/trainer" {
		t.Fatalf("activated %v", got)
	}

	e.expectFallback(t, p, Prefer, "od", "No Spot capacity within 2m0s (checkpointing training): placed on on-demand node od")

	// A wait shortened while the pod waits (its annotation lowered) gets
	// an earlier timer: the first one would retry it too late.
	w := pod("lowered", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	w.CreationTimestamp = metav1.NewTime(e.clock.Now())
	e.schedule(t, w)
	w.Annotations[AnnotationFallbackAfter] = "1m"
	e.schedule(t, w)
	e.clock.Step(time.Minute)
	waitUntil(t, func() bool { return len(e.act.list()) == 2 })
	if got := e.act.list(); got[1] != "default/lowered" {
		t.Fatalf("activated %v", got)
	}

	// A per-pod override shortens the wait.
	q := pod("impatient", map[string]string{AnnotationSpot: "prefer", AnnotationFallbackAfter: "30s"})
	if r := e.schedule(t, q); strings.Join(r.feasible, ",") != "od" {
		t.Fatalf("30s after creation+2m the override has long passed; feasible %v", r.feasible)
	}
}

// A pod whose fallbackAfter is 0s never waited for Spot: bound to on-demand
// at once, it behaves as an allow pod and says nothing about whether Spot
// capacity was there. penny_spot_fallbacks_total, read as "a Spot pool's
// max is too small", does not count it and it gets no SpotFallback event;
// its wait is counted as every pod's is.
func TestFallbackAfterZeroIsNoFallback(t *testing.T) {
	registerMetrics()
	e := newEnv(t, &Args{}, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	before, _ := testutil.GetCounterMetricValue(fallbacks.WithLabelValues(string(Prefer)))
	for _, ann := range []map[string]string{
		{AnnotationSpot: "prefer", AnnotationFallbackAfter: "0s"},
		{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m", AnnotationFallbackAfter: "0s"},
	} {
		p := pod("eager", ann)
		p.CreationTimestamp = metav1.NewTime(e.clock.Now())
		r := e.schedule(t, p)
		if strings.Join(r.feasible, ",") != "od" {
			t.Fatalf("%v: with no wait on-demand is feasible at once; feasible %v (%s)", ann, r.feasible, r.fitError)
		}
		e.expectBindCountsWait(t, r, p, "od", pricing.OnDemand)
	}
	if evs := e.events(); len(evs) != 0 {
		t.Errorf("pods that never waited got events %v", evs)
	}
	if n, _ := testutil.GetCounterMetricValue(fallbacks.WithLabelValues(string(Prefer))); n != before {
		t.Errorf("penny_spot_fallbacks_total{policy=\"prefer\"} = %v, want %v: pods that never waited are not fallbacks", n, before)
	}
}

// Every pod Penny binds counts its wait, where it went and under which
// policy, not only those that fall back: a service placed at once on
// on-demand, and a checkpointing trainer that found Spot room.
func TestBindingCountsTheWaitByPolicyAndCapacity(t *testing.T) {
	e := newEnv(t, &Args{}, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"))
	e.clock.Step(30 * time.Second)
	svc := pod("svc", map[string]string{AnnotationWorkload: "inference"})
	r := e.schedule(t, svc)
	if strings.Join(r.feasible, ",") != "od" {
		t.Fatalf("a service runs off Spot; feasible %v", r.feasible)
	}
	e.expectBindCountsWait(t, r, svc, "od", pricing.OnDemand)
	e.clock.Step(time.Minute)
	trainer := pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	r = e.schedule(t, trainer)
	if strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("within its wait a checkpointing trainer takes Spot only; feasible %v", r.feasible)
	}
	e.expectBindCountsWait(t, r, trainer, "spot-a", pricing.Spot)
	if evs := e.events(); len(evs) != 0 {
		t.Fatalf("no fallback, no event; got %v", evs)
	}
}

// Training without checkpoints prefers capacity that is not Spot, and in an
// elastic cluster a score alone would not hold that: a Spot node with room
// now beats an on-demand node the autoscaler brings in minutes. So it waits
// fallbackAfter for on-demand or reserved capacity, the mirror of a
// Spot-preferring pod, then may use Spot pools that its rules let it.
func TestTrainingWithoutCheckpointsWaitsForCapacityThatIsNotSpot(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Minute}
	full := node("od-full", pricing.OnDemand, "us-east-1a")
	full.Spec.Taints = []corev1.Taint{{Key: pricing.TaintReclaimNotice, Effect: corev1.TaintEffectNoSchedule}}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, full, node("spot-a", pricing.Spot, "us-east-1a"))
	p := pod("trainer", map[string]string{AnnotationWorkload: "training"})

	r := e.schedule(t, p)
	if len(r.feasible) != 0 {
		t.Fatalf("within the window the pod waits for on-demand or reserved capacity; feasible %v", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "1 node(s) are Spot and the pod waits for on-demand or reserved capacity until 2026-11-28T12:02:00Z (training without checkpoints; fallback after 2m0s)")
	e.clock.Step(2 * time.Minute)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })

	e.expectFallback(t, p, Avoid, "spot-a", "No on-demand or reserved capacity within 2m0s (training without checkpoints): placed on Spot node spot-a")

	// A rule that excludes a pool for good is reported ahead of the wait.
	e = newEnv(t, nil, Deps{Prices: catalog(t), RunLengths: runsOf(10, 1000*time.Hour)}, fleet()[3:4]...)
	expectContains(t, "FitError", e.schedule(t, pod("long", map[string]string{AnnotationWorkload: "training"})).fitError,
		"would expect to lose more than 2 percent of its work to reclaims")
	// Short training and checkpointing training do not wait for on-demand.
	e = newEnv(t, nil, Deps{Prices: catalog(t)}, node("spot-a", pricing.Spot, "us-east-1a"))
	for _, ann := range []map[string]string{
		{AnnotationWorkload: "training", AnnotationExpectedRuntime: "1h"},
		{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"},
		{AnnotationWorkload: "training", AnnotationFallbackAfter: "0s"},
	} {
		if r := e.schedule(t, pod("p", ann)); strings.Join(r.feasible, ",") != "spot-a" {
			t.Errorf("%v: feasible %v (%s)", ann, r.feasible, r.fitError)
		}
	}
}

// A price or risk factor however absurd (the dearest price a catalog
// accepts, pricing.MaxHourlyPrice; a tenant's own gang size of two billion)
// ranks that node last and leaves the others
// ranked: it overflowed NormalizeScore, which wrapped the other nodes'
// scores (on-demand and a Spot node a quarter of its price both 13) or put
// them outside 0..MaxScore, on which the framework fails the pod's cycle.
func TestAbsurdCostsKeepScoresInRange(t *testing.T) {
	c := catalogOf(t, testCatalog+`- {instanceType: m7i.8xlarge, capacityType: spot, region: us-east-1, hourly: 10000}
`)
	absurd := sized(node("absurd", pricing.Spot, "us-east-1a"), "m7i.8xlarge", "96", "1152Gi", "8")
	e := newEnv(t, nil, Deps{Prices: c}, node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"), absurd)
	for _, c := range []struct {
		ann      map[string]string
		cheapest string
	}{
		{map[string]string{AnnotationWorkload: "batch"}, "spot-a"},
		// Reclaims of two billion nodes make Spot dear for the pod.
		{map[string]string{AnnotationSpot: "allow", AnnotationExpectedRuntime: "1000h", gang.KeySize: "2147483647"}, "od"},
	} {
		p := pod("p", c.ann)
		if n, ok := c.ann[gang.KeySize]; ok {
			p.Labels = map[string]string{gang.LabelName: "g", gang.KeySize: n}
		}
		r := e.schedule(t, p)
		for n, sc := range r.scores {
			// SpotRisk is the only scoring plugin here, at weight 1.
			if sc < 0 || sc > fwk.MaxScore {
				t.Errorf("%v: %s scores %d", c.ann, n, sc)
			}
		}
		if r.scores[c.cheapest] != fwk.MaxScore || r.scores["absurd"] != 0 {
			t.Errorf("%v: scores %v, want %s %d and the absurd node 0", c.ann, r.scores, c.cheapest, fwk.MaxScore)
		}
	}
	// Training without checkpoints that fell back to Spot: the absurd pool
	// ranks last among the Spot pools, not first.
	e = newEnv(t, nil, Deps{Prices: c}, node("spot-a", pricing.Spot, "us-east-1a"), absurd)
	r := e.schedule(t, waited(pod("trainer", map[string]string{AnnotationWorkload: "training"})))
	if r.scores["spot-a"] != fwk.MaxScore || r.scores["absurd"] != 0 {
		t.Errorf("avoiding pod on Spot: scores %v", r.scores)
	}
}

// Training without checkpoints that fell back to Spot, with nothing else
// feasible, still goes where its work costs least: scoring every Spot node 0
// left the choice to packing, while the Expander, growing the fleet for the
// same pod, ranks the Spot pools by expected cost. Where a node that is not
// Spot is feasible, Spot stays last, priced or not.
func TestAvoidingPodOnSpotTakesTheCheaperPool(t *testing.T) {
	spotA, spotC := node("spot-a", pricing.Spot, "us-east-1a"), node("spot-c", pricing.Spot, "us-east-1c")
	trainer := waited(pod("trainer", map[string]string{AnnotationWorkload: "training"}))
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, spotA, spotC)
	r := e.schedule(t, trainer)
	if strings.Join(r.feasible, ",") != "spot-a,spot-c" {
		t.Fatalf("after its wait both Spot pools are feasible; feasible %v (%s)", r.feasible, r.fitError)
	}
	class, _ := classify(trainer, e.plugin.args)
	costA, _ := e.plugin.Cost(trainer, class, pricing.PodUsage(trainer), spotA)
	costC, _ := e.plugin.Cost(trainer, class, pricing.PodUsage(trainer), spotC)
	if !(costC < costA) {
		t.Fatalf("test premise: spot-c (%v) should cost less than spot-a (%v)", costC, costA)
	}
	if r.scores["spot-c"] != fwk.MaxScore || r.scores["spot-a"] != 0 {
		t.Errorf("only Spot feasible: scores %v, want spot-c %d and spot-a 0", r.scores, fwk.MaxScore)
	}
	x := &Expander{pl: e.plugin}
	if order, err := x.Rank(trainer, []*corev1.Node{spotA, spotC}); err != nil || order[0] != 1 {
		t.Errorf("the Expander ranks %v (%v); the scheduler and it should agree on spot-c", order, err)
	}

	unpricedOD := node("od-unpriced", pricing.OnDemand, "us-east-1a")
	unpricedOD.Labels[corev1.LabelInstanceTypeStable] = "unknown.type"
	for _, other := range []*corev1.Node{node("od", pricing.OnDemand, "us-east-1a"), unpricedOD} {
		e = newEnv(t, nil, Deps{Prices: catalog(t)}, spotA, spotC, other)
		r = e.schedule(t, trainer)
		if r.scores["spot-a"] != 0 || r.scores["spot-c"] != 0 {
			t.Errorf("with %s feasible: scores %v, want both Spot nodes 0", other.Name, r.scores)
		}
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatal("timed out")
	}
}

// eventually reports whether cond holds within five seconds.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func TestQueueingHints(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	inference := pod("p", map[string]string{AnnotationWorkload: "inference"})
	hint := func(oldN, newN *corev1.Node) fwk.QueueingHint {
		var o interface{}
		if oldN != nil {
			o = oldN
		}
		h, err := e.plugin.isSchedulableAfterNodeChange(klogLogger(), inference, o, newN)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if hint(nil, node("n", pricing.Spot, "us-east-1a")) != fwk.QueueSkip {
		t.Error("a new Spot node cannot help an inference pod")
	}
	if hint(nil, node("n", pricing.OnDemand, "us-east-1a")) != fwk.Queue {
		t.Error("a new on-demand node can help an inference pod")
	}
	relabelled := node("n", pricing.OnDemand, "us-east-1a")
	if hint(node("n", pricing.Spot, "us-east-1a"), relabelled) != fwk.Queue {
		t.Error("a node relabelled on-demand can help")
	}
	tainted := node("n", pricing.OnDemand, "us-east-1a")
	tainted.Spec.Taints = []corev1.Taint{{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoSchedule}}
	if hint(tainted, node("n", pricing.OnDemand, "us-east-1a")) != fwk.Queue {
		t.Error("a cleared reclaim taint can help")
	}
	fixed := inference.DeepCopy()
	fixed.Annotations[AnnotationSpot] = "never"
	if h, _ := e.plugin.isSchedulableAfterPodChange(klogLogger(), inference, inference, fixed); h != fwk.Queue {
		t.Error("an annotation change requeues")
	}
	relabel := inference.DeepCopy()
	relabel.Labels = map[string]string{"a": "b"}
	if h, _ := e.plugin.isSchedulableAfterPodChange(klogLogger(), inference, inference, relabel); h != fwk.QueueSkip {
		t.Error("other changes do not")
	}
}

// The pod's annotations are not all the plugin reads of it: its deadline
// (a runtime), its gang (how many nodes a reclaim can stop, and the workload
// a reclaim is recorded under) and its owner decide its class too. Training
// without checkpoints that is given a one-hour activeDeadlineSeconds is
// short training, which may use Spot at once; it waited for the next
// unrelated event or the scheduler's five-minute flush instead.
func TestPodChangesThatMoveTheClassRequeue(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	hint := func(oldP, newP *corev1.Pod) fwk.QueueingHint {
		t.Helper()
		h, err := e.plugin.isSchedulableAfterPodChange(klogLogger(), newP, oldP, newP)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	training := pod("train", map[string]string{AnnotationWorkload: "training"})

	deadline := training.DeepCopy()
	deadline.Spec.ActiveDeadlineSeconds = ptr.To[int64](3600)
	if h := hint(training, deadline); h != fwk.Queue {
		t.Errorf("activeDeadlineSeconds 3600 makes training short (allow): hint %v, want Queue", h)
	}
	joined := training.DeepCopy()
	joined.Labels = map[string]string{gang.LabelName: "llm", gang.KeySize: "8"}
	if h := hint(training, joined); h != fwk.Queue {
		t.Errorf("joining a gang of 8 changes what a reclaim costs it: hint %v, want Queue", h)
	}
	renamed := joined.DeepCopy()
	renamed.Labels[gang.LabelName] = "llm-2"
	if h := hint(joined, renamed); h != fwk.Queue {
		t.Errorf("another gang is another workload (once bitten): hint %v, want Queue", h)
	}
	same := training.DeepCopy()
	same.Annotations[AnnotationMaxReclaimRisk] = "100%"
	if h := hint(training, same); h != fwk.QueueSkip {
		t.Errorf("a risk limit of 100%% is the default: hint %v, want QueueSkip", h)
	}
	unrelated := training.DeepCopy()
	unrelated.Labels = map[string]string{"team": "ml"}
	unrelated.Annotations["note"] = "x"
	if h := hint(training, unrelated); h != fwk.QueueSkip {
		t.Errorf("a change the plugin does not read: hint %v, want QueueSkip", h)
	}
	typo := pod("typo", map[string]string{AnnotationSpot: "sometimes"})
	fixed := typo.DeepCopy()
	fixed.Annotations[AnnotationSpot] = "never"
	if h := hint(typo, fixed); h != fwk.Queue {
		t.Errorf("fixing a malformed annotation: hint %v, want Queue", h)
	}
	asLabel := pod("label", nil)
	asLabel.Labels = map[string]string{AnnotationSpot: "never"}
	if h := hint(pod("label", nil), asLabel); h != fwk.Queue {
		t.Errorf("setting %s as a label: hint %v, want Queue", AnnotationSpot, h)
	}
	moved := pod("label", map[string]string{AnnotationSpot: "never"})
	if h := hint(asLabel, moved); h != fwk.QueueSkip {
		t.Errorf("moving %s from a label to an annotation, the same value: hint %v, want QueueSkip", AnnotationSpot, h)
	}
}

func TestArgs(t *testing.T) {
	a, err := decodeArgs(nil)
	if err != nil || a.FallbackAfter.Duration != DefaultFallbackAfter || *a.NeverSpotPriority != DefaultNeverSpotPriority || len(a.ReclaimTaints) == 0 || *a.MaxExpectedLoss != DefaultMaxExpectedLoss {
		t.Fatalf("defaults %+v %v", a, err)
	}
	a, err = decodeArgs(&runtime.Unknown{Raw: []byte(`{"fallbackAfter":"90s","catalog":{"configMap":{"namespace":"penny-system","name":"prices"}}}`), ContentType: runtime.ContentTypeJSON})
	if err != nil || a.FallbackAfter.Duration != 90*time.Second || a.Catalog.ConfigMap.Key != DefaultCatalogKey {
		t.Fatalf("%+v %v", a, err)
	}
	// A 0 written in the config is not "unset": fallbackAfter: 0s falls back
	// at once, as the pod annotation's 0s does.
	a, err = decodeArgs(&runtime.Unknown{Raw: []byte(`{"fallbackAfter":"0s"}`), ContentType: runtime.ContentTypeJSON})
	if err != nil || a.FallbackAfter.Duration != 0 {
		t.Fatalf("fallbackAfter: 0s gave %v (%v), want 0s", a.FallbackAfter, err)
	}
	// restartOverhead: 0s is a restart that costs nothing, shortRuntime: 0s
	// lets no training without checkpoints onto Spot freely.
	a, err = decodeArgs(&runtime.Unknown{Raw: []byte(`{"restartOverhead":"0s","shortRuntime":"0s"}`), ContentType: runtime.ContentTypeJSON})
	if err != nil || a.RestartOverhead.Duration != 0 || a.ShortRuntime.Duration != 0 || a.UnknownRuntime.Duration != DefaultUnknownRuntime {
		t.Fatalf("restartOverhead, shortRuntime 0s gave %v, %v (%v), want 0s and 0s", a.RestartOverhead, a.ShortRuntime, err)
	}
	if c := a.DeepCopyObject().(*Args); c.ShortRuntime == a.ShortRuntime || *c.ShortRuntime != *a.ShortRuntime {
		t.Fatalf("DeepCopyObject shares or changes shortRuntime: %v %v", c.ShortRuntime, a.ShortRuntime)
	}
	// reclaimTaints: [] is no reclaim taints, handed over typed (as the
	// simulator hands a profile's decoded args) or not: the copy made it
	// nil, which the defaults then filled.
	a, err = decodeArgs(&runtime.Unknown{Raw: []byte(`{"reclaimTaints":[]}`), ContentType: runtime.ContentTypeJSON})
	if err != nil || a.ReclaimTaints == nil || len(a.ReclaimTaints) != 0 {
		t.Fatalf("reclaimTaints: [] gave %v (%v)", a.ReclaimTaints, err)
	}
	if a, err = decodeArgs(a); err != nil || len(a.ReclaimTaints) != 0 {
		t.Fatalf("reclaimTaints: [], typed, gave %v (%v), want none", a.ReclaimTaints, err)
	}
	for raw, want := range map[string]string{
		`{"maxExpectedLoss":0}`:                   "args.maxExpectedLoss: Invalid value: 0: must be a fraction in (0, 1]",
		`{"fallbackAftr":"90s"}`:                  `unknown field "fallbackAftr"`,
		`{"fallbackAfter":"-1m"}`:                 `args.fallbackAfter: Invalid value: "-1m0s": must not be negative`,
		`{"catalog":{"file":"x","configMap":{}}}`: "give one source: file or configMap",
		`{"catalog":{"configMap":{"name":"x"}}}`:  "args.catalog.configMap: Required value",
		`{"maxExpectedLoss":5}`:                   "args.maxExpectedLoss: Invalid value: 5: must be a fraction in (0, 1], e.g. 0.05 for 5%",
		`{"maxExpectedLoss":-0.1}`:                "args.maxExpectedLoss: Invalid value: -0.1",
		`{"unknownRuntime":"0s"}`:                 `args.unknownRuntime: Invalid value: "0s": must be positive`,
	} {
		_, err := decodeArgs(&runtime.Unknown{Raw: []byte(raw)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", raw, err, want)
		}
	}
}

// A catalog file that is not there fails the scheduler's start, naming the
// arg; it did not, and every node was priced alike.
func TestCatalogFileMissingFailsTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalogg.yaml")
	_, err := New(context.Background(), &Args{Catalog: CatalogSource{File: path}}, nil, Deps{})
	if err == nil || !strings.Contains(err.Error(), "args.catalog.file") || !strings.Contains(err.Error(), path) {
		t.Fatalf("missing catalog file: %v", err)
	}
}

func TestCatalogFromArgsFile(t *testing.T) {
	args := &Args{Catalog: CatalogSource{File: "../../deploy/pricing/catalog.yaml"}}
	od := node("od", pricing.OnDemand, "us-east-1a")
	od.Labels[corev1.LabelInstanceTypeStable] = "p4d.24xlarge"
	e := newEnv(t, args, Deps{}, od)
	p, ok := e.plugin.prices.NodePrice(od)
	if !ok || p.NodeHourly != 32.7726 {
		t.Fatalf("shipped catalog not loaded: %+v %v", p, ok)
	}
}

func TestSignPod(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	sign := func(p *corev1.Pod) ([]fwk.SignFragment, *fwk.Status) {
		return e.plugin.SignPod(context.Background(), p)
	}
	a, s1 := sign(pod("a", map[string]string{AnnotationWorkload: "batch"}))
	b, s2 := sign(pod("b", map[string]string{AnnotationWorkload: "batch"}))
	c, s3 := sign(pod("c", map[string]string{AnnotationWorkload: "inference"}))
	if !s1.IsSuccess() || !s2.IsSuccess() || !s3.IsSuccess() {
		t.Fatalf("statuses %v %v %v", s1, s2, s3)
	}
	if !reflect.DeepEqual(a, b) || reflect.DeepEqual(a, c) {
		t.Fatalf("same class must sign alike, different classes apart: %v %v %v", a, b, c)
	}
	if _, s := sign(pod("w", map[string]string{AnnotationSpot: "prefer"})); s.IsSuccess() {
		t.Fatal("a pod waiting for Spot must not be signed")
	}
	if _, s := sign(pod("v", map[string]string{AnnotationWorkload: "training"})); s.IsSuccess() {
		t.Fatal("training without checkpoints waiting for on-demand capacity must not be signed")
	}
	if _, s := sign(pod("x", map[string]string{AnnotationSpot: "x"})); s.IsSuccess() {
		t.Fatal("a malformed pod must not be signed")
	}
}

type reclaimingAgents map[string]bool

func (r reclaimingAgents) Node(name string) (*telemetry.NodeState, bool) {
	if !r[name] {
		return &telemetry.NodeState{Node: name}, true
	}
	return &telemetry.NodeState{Node: name, ReclaimNotices: []telemetry.ReclaimNotice{
		{Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION}}}, true
}

func TestAgentReclaimNoticeExcludesNode(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t), Telemetry: reclaimingAgents{"spot-a": true}}, fleet()[:4]...)
	r := e.schedule(t, pod("p", map[string]string{AnnotationSpot: "only"}))
	if strings.Join(r.feasible, ",") != "spot-c" {
		t.Fatalf("feasible %v, want only the Spot node without a notice", r.feasible)
	}
}

// reclaimReport is the agent's report of node, with a Spot interruption
// notice while reclaiming.
func reclaimReport(node string, seq uint64, reclaiming bool) *telemetryv1.NodeReport {
	r := telemetrytest.Report(node, 0, seq, time.Now())
	if reclaiming {
		r.ReclaimNotices = []*telemetryv1.ReclaimNotice{{Id: "i-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, DetectedAt: timestamppb.New(t0)}}
	}
	return r
}

// A pod that the reclaim notices of Spot nodes kept off them is retried when
// a node's agent no longer reports its notice (the cloud called it off): no
// cluster event says so, and the pod waited for an unrelated one or the
// scheduler's five-minute flush. When the notice's taint was lifted first,
// the taint's event found the node still reclaiming and could not queue the
// pod; the report that drops the notice does. A report that still carries
// the notice, a node still tainted, and pods the node does not admit anyway
// (bound, kept off Spot, malformed) retry nobody.
func TestPodKeptOffByAReclaimNoticeIsRetriedWhenTheNoticeIsWithdrawn(t *testing.T) {
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	pods, nodes := factory.Core().V1().Pods(), factory.Core().V1().Nodes()
	taint := []corev1.Taint{{Key: pricing.TaintReclaimNotice, Effect: corev1.TaintEffectNoSchedule}}
	quiet := node("spot-quiet", pricing.Spot, "us-east-1a") // the notice only in telemetry
	lifted := node("spot-lifted", pricing.Spot, "us-east-1a")
	lifted.Spec.Taints = taint
	kept := node("spot-kept", pricing.Spot, "us-east-1a")
	kept.Spec.Taints = taint
	for _, n := range []*corev1.Node{quiet, lifted, kept} {
		store.Update(reclaimReport(n.Name, 1, true), time.Now())
		if err := nodes.Informer().GetIndexer().Add(n); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnvWith(t, nil, Deps{Prices: catalog(t), Telemetry: store}, []frameworkruntime.Option{frameworkruntime.WithInformerFactory(factory)}, quiet, lifted, kept)
	spot := pod("spot", map[string]string{AnnotationSpot: "only"})
	bound := pod("bound", map[string]string{AnnotationSpot: "only"})
	bound.Spec.NodeName = "spot-quiet"
	for _, p := range []*corev1.Pod{spot, bound, pod("serve", map[string]string{AnnotationWorkload: "inference"}), pod("typo", map[string]string{AnnotationSpot: "x"})} {
		if err := pods.Informer().GetIndexer().Add(p); err != nil {
			t.Fatal(err)
		}
	}
	r := e.schedule(t, spot)
	expectContains(t, "FitError", r.fitError, "3 node(s) have a pending reclaim notice")
	retried := func(n int) {
		t.Helper()
		waitUntil(t, func() bool { return len(e.act.list()) >= n })
		if got := e.act.list(); len(got) != n || slices.ContainsFunc(got, func(k string) bool { return k != "default/spot" }) {
			t.Fatalf("retried %v, want default/spot %d time(s)", got, n)
		}
	}

	// The notice goes first: the taint still keeps the pod off, and its
	// event queues the pod when it goes.
	store.Update(reclaimReport("spot-kept", 2, false), time.Now())
	store.Update(reclaimReport("spot-quiet", 2, true), time.Now())
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if got := e.act.list(); len(got) > 0 {
			t.Fatalf("retried %v while the nodes are still tainted or reclaiming", got)
		}
	}
	untainted := kept.DeepCopy()
	untainted.Spec.Taints = nil
	if h, err := e.plugin.isSchedulableAfterNodeChange(klogLogger(), spot, kept, untainted); err != nil || h != fwk.Queue {
		t.Fatalf("taint lifted after the notice was withdrawn: hint %v (%v), want Queue", h, err)
	}

	store.Update(reclaimReport("spot-quiet", 3, false), time.Now())
	retried(1)

	// The taint goes first, while the agent still reports the notice.
	untainted = lifted.DeepCopy()
	untainted.Spec.Taints = nil
	if h, err := e.plugin.isSchedulableAfterNodeChange(klogLogger(), spot, lifted, untainted); err != nil || h != fwk.QueueSkip {
		t.Fatalf("taint lifted while the agent reports the notice: hint %v (%v), want QueueSkip", h, err)
	}
	if err := nodes.Informer().GetIndexer().Update(untainted); err != nil {
		t.Fatal(err)
	}
	store.Update(reclaimReport("spot-lifted", 2, false), time.Now())
	retried(2)
}

// Training without checkpoints whose workload already lost a run to a
// reclaim stays off Spot; other classes, and other workloads, do not.
func TestAvoidingWorkloadInterruptedByAReclaimStaysOffSpot(t *testing.T) {
	interrupted := pricing.NewInterrupted(0)
	e := newEnv(t, nil, Deps{Prices: catalog(t), Interrupted: interrupted}, fleet()[:4]...)
	avoid := map[string]string{AnnotationWorkload: "training"}
	if r := e.schedule(t, waited(pod("train", avoid))); strings.Join(r.feasible, ",") != "od,reserved,spot-a,spot-c" {
		t.Fatalf("before any reclaim: feasible %v", r.feasible)
	}
	interrupted.Observe(pod("train", avoid), 14*time.Hour+50*time.Minute, time.Now())
	interrupted.Observe(pod("batch", map[string]string{AnnotationWorkload: "batch"}), time.Hour, time.Now())

	r := e.schedule(t, waited(pod("train", avoid)))
	if strings.Join(r.feasible, ",") != "od,reserved" {
		t.Fatalf("after a reclaim cut its run short: feasible %v, want only on-demand and reserved", r.feasible)
	}
	if r := e.schedule(t, waited(pod("other", avoid))); len(r.feasible) != 4 {
		t.Fatalf("another workload: feasible %v", r.feasible)
	}
	if r := e.schedule(t, pod("batch", map[string]string{AnnotationWorkload: "batch"})); len(r.feasible) != 4 {
		t.Fatalf("a batch pod (allow) keeps Spot: feasible %v", r.feasible)
	}

	e = newEnv(t, nil, Deps{Prices: catalog(t), Interrupted: interrupted}, fleet()[2:4]...)
	r = e.schedule(t, waited(pod("train", avoid)))
	expectContains(t, "FitError", r.fitError,
		"2 node(s) are Spot and a reclaim already cut a run of this workload short after 14h50m0s (training without checkpoints)")
	a, _ := e.plugin.SignPod(context.Background(), waited(pod("train", avoid)))
	b, _ := e.plugin.SignPod(context.Background(), waited(pod("other", avoid)))
	if reflect.DeepEqual(a, b) {
		t.Fatal("a pod kept off Spot by a reclaim must not share a signature with one that is not")
	}
}

// A Spot-preferring gang member that PennyGang turned away before SpotRisk's
// PreFilter ran (no room for the gang on Spot, on-demand not admitted while
// it waits) still gets the timer that retries it when its wait ends.
func TestFallbackTimerWithoutThisPluginsPreFilter(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Minute}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	p := pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	if e.plugin.Admits(p)(e.nodes[0].Node()) {
		t.Fatal("a pod waiting for Spot must not be admitted to an on-demand node")
	}
	if _, s := e.plugin.PostFilter(context.Background(), framework.NewCycleState(), p, nil); s.IsSuccess() {
		t.Fatalf("PostFilter: %v", s)
	}
	e.clock.Step(2 * time.Minute)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })
	if !e.plugin.Admits(p)(e.nodes[0].Node()) {
		t.Fatal("after its wait the pod may use on-demand nodes")
	}
}

// The wait is the pod's to set (penny.dev/fallback-after), and the timer
// that retries it outlives the pod if it is deleted. A pod that waits for a
// year, deleted at once, was kept in memory, annotations and all, for that
// year by its timer: a tenant churning such pods could grow the scheduler
// without bound. The timer holds the pod's name only, and is armed at most
// an hour ahead; a pod still waiting then is retried and waits on.
func TestFallbackTimerDoesNotHoldALongWaitingPod(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	p := pod("patient", map[string]string{AnnotationSpot: "prefer", AnnotationFallbackAfter: "8760h", "bulk": strings.Repeat("x", 1<<20)})
	collected := make(chan struct{})
	goruntime.SetFinalizer(p, func(*corev1.Pod) { close(collected) })
	if r := e.schedule(t, p); len(r.feasible) != 0 {
		t.Fatalf("feasible %v, want none while the pod waits", r.feasible)
	}
	p = nil
	deadline := time.Now().Add(5 * time.Second)
	for done := false; !done; {
		goruntime.GC()
		select {
		case <-collected:
			done = true
		case <-time.After(10 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("the deleted pod is still held (by its retry timer)")
			}
		}
	}
	e.clock.Step(time.Hour)
	waitUntil(t, func() bool { return len(e.act.list()) == 1 })
	if e.clock.HasWaiters() {
		t.Error("a timer is still armed an hour on")
	}
	e.plugin.mu.Lock()
	defer e.plugin.mu.Unlock()
	if len(e.plugin.wakeups) != 0 {
		t.Errorf("wakeups %v, want none an hour on", e.plugin.wakeups)
	}
}

// The timer's Activate reaches kube-scheduler's own queue: a pod parked as
// unschedulable, with nothing else happening in the cluster (no event, no
// flush: the queue's loops do not run), is back in the active queue when its
// 2s wait ends, not a moment before, and then falls back to on-demand with
// one SpotFallback event however many attempts it took.
func TestFallbackWakesThePodInTheSchedulingQueue(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Second}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A clock of its own: the fake clock runs the plugin's timer while it
	// holds its lock, and the queue reads its clock inside Activate.
	q := queue.NewTestQueue(ctx, func(a, b fwk.QueuedEntityInfo) bool { return false }, queue.WithClock(clocktesting.NewFakeClock(t0)))
	e.fw.SetPodActivator(q)
	logger := klogLogger()
	p := pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	p.CreationTimestamp = metav1.NewTime(e.clock.Now())
	q.Add(ctx, p)

	// attempt pops the pod, schedules it and, when no node fits, hands it
	// back as kube-scheduler does, rejected by SpotRisk.
	attempt := func() result {
		t.Helper()
		entity, err := q.Pop(logger)
		if err != nil {
			t.Fatal(err)
		}
		pInfo, ok := entity.(*framework.QueuedPodInfo)
		if !ok || pInfo.Pod.UID != p.UID {
			t.Fatalf("popped %T %v", entity, entity)
		}
		r := e.schedule(t, pInfo.Pod)
		if len(r.feasible) == 0 {
			pInfo.UnschedulablePlugins = sets.New(Name)
			if err := q.AddUnschedulablePodIfNotPresent(logger, pInfo, q.SchedulingCycle()); err != nil {
				t.Fatal(err)
			}
		} else {
			q.Done(pInfo.Pod.UID)
		}
		return r
	}
	active := func() bool { return len(q.PodsInActiveQ()) == 1 }

	if r := attempt(); len(r.feasible) != 0 {
		t.Fatalf("within its wait the pod may not use on-demand; feasible %v", r.feasible)
	}
	e.clock.Step(time.Second)
	if active() {
		t.Fatal("the pod is back in the active queue before its wait ended")
	}
	// Another attempt within the wait (as after an unrelated event) leaves
	// the one timer armed.
	q.Activate(logger, map[string]*corev1.Pod{"default/trainer": p})
	if r := attempt(); len(r.feasible) != 0 {
		t.Fatalf("within its wait the pod may not use on-demand; feasible %v", r.feasible)
	}
	e.clock.Step(999 * time.Millisecond)
	if active() {
		t.Fatal("the pod is back in the active queue before its wait ended")
	}
	e.clock.Step(time.Millisecond)
	waitUntil(t, active)
	entity, err := q.Pop(logger)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Done(p.UID)
	e.expectFallback(t, entity.(*framework.QueuedPodInfo).Pod, Prefer, "od", "No Spot capacity within 2s (checkpointing training): placed on on-demand node od")
}

// Training without checkpoints that declares its runtime is held to the same
// expected-loss rule, with the runtime it declares.
func TestDeclaredRunWithoutCheckpointsStaysOffPoolsThatWouldCostItItsWork(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[:4]...)
	gangOf8 := func(runtime string) *corev1.Pod {
		p := waited(pod("member", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: runtime}))
		p.Labels = map[string]string{"penny.dev/gang": "llm", "penny.dev/gang-size": "8"}
		return p
	}
	// Expected loss nodes x rate x runtime / 2 on the 5-10% and >20% pools:
	// a gang of 8 for 480 h 20% and 76%, for 40 h 1.7% and 6.3%; one pod
	// for 300 h 1.6% and 5.9%.
	for _, c := range []struct {
		name     string
		pod      *corev1.Pod
		feasible string
	}{
		{"gang of 8 for 480h", gangOf8("480h"), "od,reserved"},
		{"gang of 8 for 40h", gangOf8("40h"), "od,reserved,spot-a"},
		{"one pod for 300h", waited(pod("alone", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "300h"})), "od,reserved,spot-a"},
	} {
		if r := e.schedule(t, c.pod); strings.Join(r.feasible, ",") != c.feasible {
			t.Errorf("%s: feasible %v, want %s (%s)", c.name, r.feasible, c.feasible, r.fitError)
		}
	}
	e = newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[2:3]...)
	expectContains(t, "FitError", e.schedule(t, gangOf8("480h")).fitError,
		"1 node(s) are in Spot pools where training without checkpoints, on 8 node(s) for 480h0m0s (declared), would expect to lose more than 2 percent of its work to reclaims")
}

// A native PodGroup's members do not carry the gang's size; the PodGroup
// does, and the expected-loss rule counts its nodes as for penny.dev/gang.
func TestNativePodGroupRisksAllItsNodes(t *testing.T) {
	groups := podGroups{groups: map[string]*schedulingapi.PodGroup{"default/llm": {
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "llm"},
		Spec:       schedulingapi.PodGroupSpec{SchedulingPolicy: schedulingapi.PodGroupSchedulingPolicy{Gang: &schedulingapi.GangSchedulingPolicy{MinCount: 8}}},
	}}}
	e := newEnvWith(t, nil, Deps{Prices: catalog(t)}, []frameworkruntime.Option{frameworkruntime.WithPodGroupManager(groups)}, fleet()[:4]...)
	member := waited(pod("member", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "100h"}))
	member.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("llm")}
	r := e.schedule(t, member)
	if strings.Join(r.feasible, ",") != "od,reserved" {
		t.Fatalf("a member of a PodGroup of 8 for 100h: feasible %v, want od,reserved (%s)", r.feasible, r.fitError)
	}
	// Without the PodGroup (not yet in the scheduler's cache) it is priced
	// as one pod, as before.
	alone := member.DeepCopy()
	alone.Spec.SchedulingGroup.PodGroupName = ptr.To("unknown")
	if r := e.schedule(t, alone); strings.Join(r.feasible, ",") != "od,reserved,spot-a,spot-c" {
		t.Fatalf("a member of an unknown PodGroup: feasible %v, want od,reserved,spot-a,spot-c (%s)", r.feasible, r.fitError)
	}
}

// Training without checkpoints that declares no runtime is taken to run as
// long as training here typically does, and stays off Spot pools where it
// would expect to lose more than maxExpectedLoss (2%) of its work.
// runsOf is what n training runs of the given length, 8 GPUs each, teach.
func runsOf(n int, each time.Duration) *pricing.RunLengths {
	r := pricing.NewRunLengths(0)
	for range n {
		r.Observe(8, each, t0)
	}
	return r
}

func TestTrainingWithoutCheckpointsStaysOffPoolsThatWouldCostItItsWork(t *testing.T) {
	noCheckpoints := map[string]string{AnnotationWorkload: "training"}
	runs := runsOf
	cases := []struct {
		name     string
		runs     *pricing.RunLengths
		gang     bool
		feasible string
	}{
		// Until ten runs are seen, unknownRuntime (4h) stands in.
		{"nothing learned yet", runs(9, 1000*time.Hour), false, "od,reserved,spot-a,spot-c"},
		// 5-10% a month is 0.43% of an 80 h run, >20% is 1.6%.
		{"80 h runs", runs(10, 80*time.Hour), false, "od,reserved,spot-a,spot-c"},
		// ... of a 300 h run 1.6% and 5.9%.
		{"300 h runs", runs(10, 300*time.Hour), false, "od,reserved,spot-a"},
		{"1000 h runs", runs(10, 1000*time.Hour), false, "od,reserved"},
		// A gang of 8 is stopped by any member's reclaim: of 40 h runs
		// 1.7% and 6.3%; of 100 h runs 4.3% on the 5-10% pool.
		{"a gang of 8, 40 h runs", runs(10, 40*time.Hour), true, "od,reserved,spot-a"},
		{"a gang of 8, 100 h runs", runs(10, 100*time.Hour), true, "od,reserved"},
	}
	gangPod := func(name string) *corev1.Pod {
		p := waited(pod(name, noCheckpoints))
		p.Labels = map[string]string{"penny.dev/gang": "llm", "penny.dev/gang-size": "8"}
		return p
	}
	for _, c := range cases {
		e := newEnv(t, nil, Deps{Prices: catalog(t), RunLengths: c.runs}, fleet()[:4]...)
		p := waited(pod("p", noCheckpoints))
		if c.gang {
			p = gangPod("p")
		}
		r := e.schedule(t, p)
		if strings.Join(r.feasible, ",") != c.feasible {
			t.Errorf("%s: feasible %v, want %s (%s)", c.name, r.feasible, c.feasible, r.fitError)
		}
	}
	e := newEnv(t, nil, Deps{Prices: catalog(t), RunLengths: runs(10, 400*time.Hour)}, fleet()[3:4]...)
	expectContains(t, "FitError", e.schedule(t, waited(pod("p", noCheckpoints))).fitError,
		"1 node(s) are in Spot pools where training without checkpoints, on 1 node(s) for 400h0m0s (how long training runs here typically last), would expect to lose more than 2 percent of its work to reclaims")
	e = newEnv(t, &Args{UnknownRuntime: &metav1.Duration{Duration: 2000 * time.Hour}}, Deps{Prices: catalog(t)}, fleet()[3:4]...)
	expectContains(t, "FitError", e.schedule(t, gangPod("p")).fitError,
		"1 node(s) are in Spot pools where training without checkpoints, on 8 node(s) for 2000h0m0s (unknownRuntime), would expect to lose more than 2 percent of its work to reclaims")
	// Training that checkpoints is not held to it.
	e = newEnv(t, nil, Deps{Prices: catalog(t), RunLengths: runs(10, 1000*time.Hour)}, fleet()[:4]...)
	if r := e.schedule(t, pod("ckpt", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"})); strings.Join(r.feasible, ",") != "reserved,spot-a,spot-c" {
		t.Errorf("checkpointing training: feasible %v", r.feasible)
	}
}

// The training pods that succeed teach the plugin how long training runs
// last, each once: a relist shows the pods the informer holds as updates.
func TestWatchRunsLearnsFromTrainingPodsThatSucceed(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[:1]...)
	runs := pricing.NewRunLengths(0)
	inf := &fakeInformer{}
	if err := e.plugin.WatchRuns(inf, runs); err != nil {
		t.Fatal(err)
	}
	start := metav1.NewTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	finished := func(name string, ann map[string]string, ran time.Duration, phase corev1.PodPhase) *corev1.Pod {
		p := pod(name, ann)
		p.UID = types.UID(name)
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("2")}
		p.Status = corev1.PodStatus{Phase: phase, StartTime: &start, ContainerStatuses: []corev1.ContainerStatus{{
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{FinishedAt: metav1.NewTime(start.Add(ran))}}}}}
		return p
	}
	training := map[string]string{AnnotationWorkload: "training"}
	for i := range 9 {
		p := finished(fmt.Sprint("t", i), training, 10*time.Hour, corev1.PodSucceeded)
		inf.handler.OnAdd(p, true)
		inf.handler.OnUpdate(p, p)
	}
	if _, ok := runs.Typical(); ok {
		t.Fatal("nine pods, each added and updated, counted as ten runs or more")
	}
	inf.handler.OnAdd(finished("t9", training, 10*time.Hour, corev1.PodSucceeded), false)
	// Not training, not a success, or no end: not counted.
	inf.handler.OnAdd(finished("batch", map[string]string{AnnotationWorkload: "batch"}, 1000*time.Hour, corev1.PodSucceeded), false)
	inf.handler.OnAdd(finished("failed", training, 1000*time.Hour, corev1.PodFailed), false)
	running := finished("running", training, 1000*time.Hour, corev1.PodSucceeded)
	running.Status.ContainerStatuses = nil
	inf.handler.OnAdd(running, false)
	// What the succeeded-pods informer keeps of a pod reads the same.
	full := finished("full", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "1h"}, 7*time.Hour, corev1.PodSucceeded)
	full.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "x", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("40")}}}}
	full.Spec.NodeName, full.Spec.Containers[0].Image = "gpu-1", "registry.example/train"
	kept := runOf(full)
	c1, _ := classify(full, e.plugin.args)
	c2, _ := classify(kept, e.plugin.args)
	r1, _, _ := runTime(full)
	r2, _, _ := runTime(kept)
	if !reflect.DeepEqual(c1, c2) || pricing.PodUsage(full) != pricing.PodUsage(kept) || r1 != r2 || kept.Spec.NodeName != "" || kept.Spec.Containers[0].Image != "" {
		t.Errorf("runOf changed what WatchRuns reads or kept more: class %+v / %+v, usage %+v / %+v, ran %v / %v",
			c1, c2, pricing.PodUsage(full), pricing.PodUsage(kept), r1, r2)
	}
	if got, ok := runs.Typical(); !ok || got != 10*time.Hour {
		t.Fatalf("learned %v (%v), want 10h from the ten training pods that succeeded", got, ok)
	}
	inf.handler.OnAdd(finished("t10", training, 100*time.Hour, corev1.PodSucceeded), false)
	if got, _ := runs.Typical(); got < 40*time.Hour || got > 60*time.Hour {
		t.Fatalf("one 100h run among ten of 10h: %v, want ~53h (size-biased)", got)
	}
}

// Training without checkpoints kept off a Spot pool for its expected loss
// over a long learned run is retried once training here is seen to run
// shorter, and then by every move of the pool's estimate with the run
// length learned then: no pool's estimate moved, so nothing retried it
// before the scheduler's five-minute flush, and the estimate's moves
// weighed it with the old run length.
func TestPodKeptOffForALongLearnedRunIsRetriedWhenRunsShorten(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	model := pricing.NewRiskModel(pricing.RiskConfig{Clock: clk})
	runs := pricing.NewRunLengths(0)
	for range 10 {
		runs.Observe(1, 400*time.Hour, t0)
	}
	e := newEnv(t, nil, Deps{Prices: catalog(t), Risk: model, Clock: clk, RunLengths: runs}, node("spot-a", pricing.Spot, "us-east-1a"))
	inf := &fakeInformer{}
	if err := e.plugin.WatchRuns(inf, runs); err != nil {
		t.Fatal(err)
	}
	if r := e.schedule(t, waited(pod("trainer", map[string]string{AnnotationWorkload: "training"}))); len(r.feasible) != 0 {
		t.Fatalf("400h runs on a 5-10%% pool expect to lose over 2%%: feasible %v", r.feasible)
	}
	start := metav1.NewTime(t0.Add(-2 * time.Hour))
	for i := range 1000 {
		p := pod(fmt.Sprint("short-", i), map[string]string{AnnotationWorkload: "training"})
		p.UID = types.UID(p.Name)
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("8")}
		p.Status = corev1.PodStatus{Phase: corev1.PodSucceeded, StartTime: &start, ContainerStatuses: []corev1.ContainerStatus{{
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{FinishedAt: metav1.NewTime(start.Add(time.Hour))}}}}}
		inf.handler.OnAdd(p, false)
	}
	typical, _ := runs.Typical()
	if r := e.schedule(t, waited(pod("fresh", map[string]string{AnnotationWorkload: "training"}))); strings.Join(r.feasible, ",") != "spot-a" {
		t.Fatalf("training runs %v here now: a fresh attempt should fit spot-a: %v %s", typical, r.feasible, r.fitError)
	}
	if !eventually(func() bool { return slices.Contains(e.act.list(), "default/trainer") }) {
		t.Fatalf("the trainer was not retried once training here ran %v (retried: %v)", typical, e.act.list())
	}
}

// A run whose end the kubelet dated a year ahead ends now as far as the
// learned run length goes: dated ahead, it made every run that ended before
// that date count as a year old (weighing a 2^-12th), so the one run set
// the typical length.
func TestWatchRunsDatesNoRunAfterNow(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[:1]...)
	runs := pricing.NewRunLengths(0)
	inf := &fakeInformer{}
	if err := e.plugin.WatchRuns(inf, runs); err != nil {
		t.Fatal(err)
	}
	finished := func(name string, start time.Time, ran time.Duration) *corev1.Pod {
		p := pod(name, map[string]string{AnnotationWorkload: "training"})
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("2")}
		p.Status = corev1.PodStatus{Phase: corev1.PodSucceeded, StartTime: ptr.To(metav1.NewTime(start)), ContainerStatuses: []corev1.ContainerStatus{{
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{FinishedAt: metav1.NewTime(start.Add(ran))}}}}}
		return p
	}
	ahead := t0.Add(365 * 24 * time.Hour)
	inf.handler.OnAdd(finished("clock-ahead", ahead.Add(-time.Hour), time.Hour), false)
	for i := range 20 {
		inf.handler.OnAdd(finished(fmt.Sprint("t", i), t0.Add(-200*time.Hour), 100*time.Hour), false)
	}
	if got, ok := runs.Typical(); !ok || got < 99*time.Hour {
		t.Fatalf("twenty 100h runs and one 1h run: learned %v (%v), want ~100h", got, ok)
	}
}

type fakeInformer struct {
	cache.SharedInformer
	handler cache.ResourceEventHandler
}

func (f *fakeInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	f.handler = h
	return nil, nil
}

// A capacity label Penny cannot read may mean Spot to whoever wrote it: work
// that must not be interrupted stays off the node, the rest may use it, and
// the message names the label and the values it takes.
func TestUnreadableCapacityLabelKeepsNeverSpotWorkOff(t *testing.T) {
	od := node("od", pricing.OnDemand, "us-east-1a")
	odd := node("odd", pricing.OnDemand, "us-east-1a")
	delete(odd.Labels, capacitylabels.LabelKarpenter)
	odd.Labels[capacitylabels.LabelOverride] = "preemptible"
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, od, odd)
	if r := e.schedule(t, pod("svc", map[string]string{AnnotationWorkload: "inference"})); strings.Join(r.feasible, ",") != "od" {
		t.Errorf("inference: feasible %v, want od only", r.feasible)
	}
	if r := e.schedule(t, pod("job", map[string]string{AnnotationWorkload: "batch"})); strings.Join(r.feasible, ",") != "od,odd" {
		t.Errorf("batch: feasible %v, want both nodes", r.feasible)
	}
	r := newEnv(t, nil, Deps{Prices: catalog(t)}, odd).schedule(t, pod("svc", map[string]string{AnnotationWorkload: "inference"}))
	expectContains(t, "FitError", r.fitError,
		`1 node(s) have a capacity label Penny cannot read (penny.dev/capacity-type="preemptible"; want spot, on-demand or reserved) and the pod stays off Spot (inference workload)`)
}

// A risk limit equal to a pool's estimate admits the pool: a pod that
// accepts 2.5% a month accepts a <5% pool, which Penny puts at 2.5% (the
// middle of its bucket) until reclaims say otherwise. The estimate goes
// through a rate and back, and in floating point 2.5% came back as
// 0.025000000000000022, which kept every <5% pool from such a pod (and
// every 15-20% one from a pod that accepts 17.5%).
func TestRiskLimitAtAPoolsEstimateAdmitsThePool(t *testing.T) {
	buckets := []struct{ bucket, limit string }{{"<5%", "2.5%"}, {"5-10%", "7.5%"}, {"10-15%", "0.125"}, {"15-20%", "17.5%"}, {">20%", "25%"}}
	yaml := testCatalog
	var nodes []*corev1.Node
	for i, b := range buckets {
		zone := fmt.Sprintf("us-east-1-z%d", i)
		yaml += fmt.Sprintf("- {instanceType: p4d.24xlarge, capacityType: spot, region: us-east-1, zone: %s, hourly: 8, interruption: %q}\n", zone, b.bucket)
		nodes = append(nodes, node(zone, pricing.Spot, zone))
	}
	e := newEnv(t, nil, Deps{Prices: catalogOf(t, yaml)}, nodes...)
	for i, b := range buckets {
		p := pod("p", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: b.limit})
		r := e.schedule(t, p)
		// The limit admits its own bucket's pool and every safer one.
		if want := i + 1; len(r.feasible) != want {
			t.Errorf("%s=%s: feasible %v, want the %d pools up to %s (%s)", AnnotationMaxReclaimRisk, b.limit, r.feasible, want, b.bucket, r.fitError)
		}
	}
}

// A pod whose SpotRisk annotation is malformed is told so also when an
// earlier PreFilter turns it away (PennyGang, finding no room for its gang),
// so that this plugin's PreFilter never runs: the gang waited for room, and
// its members learnt of the typo only once room came, when the gang was
// admitted and released again. A native PodGroup's members alike, through
// PodGroupPostFilter.
func TestMalformedAnnotationIsReportedWhenTurnedAwayBeforeThisPluginsPreFilter(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	p := pod("member", map[string]string{AnnotationSpot: "nevr"})
	if _, s := e.plugin.PostFilter(context.Background(), framework.NewCycleState(), p, nil); s.IsSuccess() {
		t.Fatalf("PostFilter: %v", s)
	}
	evs := e.events()
	if len(evs) != 1 {
		t.Fatalf("events %v, want one naming the malformed annotation", evs)
	}
	expectContains(t, "event", evs[0], "Warning", EventInvalidAnnotation, `penny.dev/spot="nevr"`, "use one of never, prefer, allow, only")

	// Where this plugin's PreFilter named it, the PostFilter that follows
	// it in the same cycle does not name it again.
	cs := framework.NewCycleState()
	if _, s := e.plugin.PreFilter(context.Background(), cs, p, nil); s.Code() != fwk.UnschedulableAndUnresolvable {
		t.Fatalf("PreFilter: %v", s)
	}
	e.plugin.PostFilter(context.Background(), cs, p, nil)
	if evs := e.events(); len(evs) != 1 {
		t.Fatalf("events %v, want one per cycle", evs)
	}

	member := pod("group-member", map[string]string{AnnotationMaxReclaimRisk: "lots"})
	member.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("trainers")}
	if _, s := e.plugin.PodGroupPostFilter(context.Background(), nil, unscheduledGroup{pods: []*corev1.Pod{member}}, nil); s.IsSuccess() {
		t.Fatalf("PodGroupPostFilter: %v", s)
	}
	evs = e.events()
	if len(evs) != 1 {
		t.Fatalf("events %v, want one naming the malformed annotation", evs)
	}
	expectContains(t, "event", evs[0], "Warning", EventInvalidAnnotation, `penny.dev/max-reclaim-risk="lots"`)
}

// Pods are alike to ExcludesAlike, and PennyGang asks one of them for all,
// only when every node gets the same reason from each: pods that prefer
// Spot with the same annotations but created apart wait until different
// times, and one whose wait is over may take on-demand nodes that the
// other's Filter turns away. Once both waits are over they are alike again.
func TestExcludesAlikeTellsApartPodsThatWaitUntilDifferentTimes(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 30 * time.Minute}
	e := newEnv(t, args, Deps{Prices: catalog(t)}, node("od", pricing.OnDemand, "us-east-1a"))
	ann := map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"}
	older, newer, twin := pod("a", ann), pod("b", ann), pod("c", ann)
	older.CreationTimestamp = metav1.NewTime(t0.Add(-40 * time.Minute))
	twin.CreationTimestamp = newer.CreationTimestamp
	od := e.nodes[0].Node()
	checkOlder, olderAlike := e.plugin.ExcludesAlike(older)
	checkNewer, newerAlike := e.plugin.ExcludesAlike(newer)
	if checkOlder(od) != "" || checkNewer(od) == "" {
		t.Fatalf("on-demand: %q for the pod whose wait is over, %q for the one waiting; want it ruled out for the waiting one only", checkOlder(od), checkNewer(od))
	}
	if olderAlike == newerAlike {
		t.Errorf("a pod past its wait and one waiting are alike (%q)", olderAlike)
	}
	if _, twinAlike := e.plugin.ExcludesAlike(twin); twinAlike != newerAlike {
		t.Errorf("pods created together with the same annotations: %q and %q; want them alike", newerAlike, twinAlike)
	}
	e.clock.Step(30 * time.Minute)
	_, olderAlike = e.plugin.ExcludesAlike(older)
	if _, newerAlike = e.plugin.ExcludesAlike(newer); olderAlike != newerAlike {
		t.Errorf("past both waits: %q and %q; want them alike", olderAlike, newerAlike)
	}
}
