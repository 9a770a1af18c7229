// Package spotrisk is Penny's Spot tolerance and cost/risk plugin. It reads
// each pod's workload class, keeps work that must not be interrupted off
// Spot (Filter), places the rest where its expected cost of useful work is
// lowest (Score), and lets a Spot-preferring pod fall back to on-demand
// capacity when Spot does not come (PreEnqueue, PostFilter, Reserve,
// PostBind). A pod, or native PodGroup, that its risk limits keep off Spot
// pools is retried when their estimates fall (PostFilter,
// PodGroupPostFilter).
package spotrisk

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"

	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
)

// Name is the plugin's name in profiles.
const Name = "SpotRisk"

// Deps are the long-lived inputs the plugin reads. Nil fields are built from
// the args (prices) or take defaults (risk model, wall clock).
type Deps struct {
	// Prices prices nodes; nil means the catalog named in the args, or no
	// prices at all (every node scores the same).
	Prices pricing.PriceBook
	// Risk estimates reclaim rates; nil means a model seeded from the
	// catalog's interruption buckets.
	Risk pricing.RiskSource
	// Telemetry is what agents report; a node whose agent reports a
	// pending reclaim is filtered out. Nil: only reclaim taints count. A
	// telemetry.Notifier also says when a notice is withdrawn, and the pods
	// it kept off the node are retried (retryReclaimWithdrawn).
	Telemetry telemetry.Reader
	// Clock is the simulator's virtual clock in replays.
	Clock clock.WithDelayedExecution
	// Interrupted is what reclaims have cut short, per workload: training
	// without checkpoints that lost a run to a reclaim stays off Spot. Nil:
	// nothing is known (no reclaim recorded).
	Interrupted *pricing.Interrupted
	// RunLengths is how long training runs in the cluster last (WatchRuns
	// feeds it): training without checkpoints that declares no runtime is
	// taken to run that long. Nil: UnknownRuntime.
	RunLengths *pricing.RunLengths
}

// SpotRisk is the plugin.
type SpotRisk struct {
	handle fwk.Handle
	args   *Args
	prices pricing.PriceBook
	risk   pricing.RiskSource
	// priors is set when the risk source is Penny's model, so that the
	// plugin can seed each pool's prior from the catalog the first time it
	// sees a node of the pool (a prior already set stays).
	priors      *pricing.RiskModel
	telemetry   telemetry.Reader
	clock       clock.WithDelayedExecution
	interrupted *pricing.Interrupted
	runLengths  *pricing.RunLengths
	// ungates dates the pods' ungating; nil without the scheduler's pod
	// informer, and every wait then starts at the pod's creation.
	ungates *ungates
	// riskWaits holds the pods whose reclaim risk limits kept them off Spot
	// pools, to retry them when a pool's estimate falls (waitForRisk).
	riskWaits riskWaits
	// lifetime is New's context, which ends when the scheduler stops: it
	// bounds the writes the plugin sends off the scheduling cycle.
	lifetime context.Context
	// nodeKeys are the nodes' pool keys, for Score (PreScore writes them).
	nodeKeys nodeKeys

	mu sync.Mutex
	// wakeups holds the pods with a timer to retry them when their
	// fallback window ends.
	wakeups map[types.UID]time.Time
	// groupWakeups holds the native PodGroups with a timer to retry them
	// when the last of their members' waits ends (PreEnqueue), by
	// namespace/name.
	groupWakeups map[string]*groupWakeup
}

var (
	_ fwk.PreEnqueuePlugin         = &SpotRisk{}
	_ fwk.PreFilterPlugin          = &SpotRisk{}
	_ fwk.FilterPlugin             = &SpotRisk{}
	_ fwk.PostFilterPlugin         = &SpotRisk{}
	_ fwk.PodGroupPostFilterPlugin = &SpotRisk{}
	_ fwk.PreScorePlugin           = &SpotRisk{}
	_ fwk.ScorePlugin              = &SpotRisk{}
	_ fwk.ReservePlugin            = &SpotRisk{}
	_ fwk.PostBindPlugin           = &SpotRisk{}
	_ fwk.EnqueueExtensions        = &SpotRisk{}
)

// Name implements fwk.Plugin.
func (pl *SpotRisk) Name() string { return Name }

// New builds the plugin from its args and deps.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle, deps Deps) (fwk.Plugin, error) {
	args, err := decodeArgs(obj)
	if err != nil {
		return nil, err
	}
	pricing.RegisterMetrics()
	registerMetrics()
	pl := &SpotRisk{handle: h, args: args, prices: deps.Prices, risk: deps.Risk, telemetry: deps.Telemetry, clock: deps.Clock, interrupted: deps.Interrupted, runLengths: deps.RunLengths,
		wakeups: map[types.UID]time.Time{}, groupWakeups: map[string]*groupWakeup{}}
	pl.lifetime = ctx
	if pl.clock == nil {
		pl.clock = clock.RealClock{}
	}
	if pl.prices == nil {
		store := pricing.NewStore(nil)
		switch {
		case args.Catalog.File != "":
			if err := store.WatchFile(ctx, args.Catalog.File); err != nil {
				return nil, fmt.Errorf("%s: args.catalog.file: %w", Name, err)
			}
		case args.Catalog.ConfigMap != nil:
			if h == nil || h.ClientSet() == nil {
				return nil, fmt.Errorf("%s: catalog.configMap needs an API client", Name)
			}
			cm := args.Catalog.ConfigMap
			store.WatchConfigMap(ctx, h.ClientSet(), cm.Namespace, cm.Name, cm.Key)
		default:
			klog.FromContext(ctx).Info("No price catalog configured: SpotRisk keeps its Spot rules but scores every node alike", "plugin", Name)
		}
		pl.prices = store
	}
	if pl.risk == nil {
		pl.risk = pricing.NewRiskModel(pricing.RiskConfig{})
	}
	pl.priors, _ = pl.risk.(*pricing.RiskModel)
	if pl.priors != nil && h != nil {
		logger := klog.FromContext(ctx)
		// Off the caller's goroutine: the model changes wherever a pool is
		// read, queueing hints included, which kube-scheduler runs holding
		// its queue's lock, and Activate takes that lock.
		pl.priors.OnChange(func(pool pricing.Pool) { go pl.retryKeptOff(logger, pool) })
	}
	if h != nil && h.SharedInformerFactory() != nil {
		informers := h.SharedInformerFactory().Core().V1()
		pricing.RegisterCostMetrics(pl.prices, informers.Pods().Lister(), informers.Nodes().Lister())
		pl.ungates = newUngates(pl.clock)
		if err := pl.ungates.watch(informers.Pods().Informer(), pl.memberDeleted); err != nil {
			return nil, fmt.Errorf("%s: watching pods for their scheduling gates: %w", Name, err)
		}
	}
	if n, ok := pl.telemetry.(telemetry.Notifier); ok && h != nil && h.SharedInformerFactory() != nil {
		informers := h.SharedInformerFactory().Core().V1()
		pods, nodes := informers.Pods().Lister(), informers.Nodes().Lister()
		logger := klog.FromContext(ctx)
		cancel := n.Subscribe(func(prev, next *telemetry.NodeState) {
			// A node dropped (next nil) had been silent an hour or was
			// deleted: its notice had long stopped counting (Filter reads
			// fresh reports only).
			if prev != nil && next != nil && prev.Reclaiming() && !next.Reclaiming() {
				// Off the store's goroutine: the node's next report waits
				// for its hooks, and this one lists every pod.
				go pl.retryReclaimWithdrawn(logger, pods, nodes, next.Node)
			}
		})
		// The store outlives the scheduler (a restart, another profile):
		// a stopped one's queue is gone.
		context.AfterFunc(ctx, cancel)
	}
	if store, ok := pl.prices.(*pricing.Store); ok && h != nil && h.SharedInformerFactory() != nil {
		pods := h.SharedInformerFactory().Core().V1().Pods().Lister()
		logger := klog.FromContext(ctx)
		store.OnChange(func(_ *pricing.Catalog, err error) {
			if err == nil {
				pl.retryRiskBound(logger, pods)
			}
		})
	}
	return pl, nil
}

// retryRiskBound retries the pending pods whose Filter verdict on Spot pools
// a new catalog may change: a pool's prior follows the catalog's
// interruption bucket, and no cluster event says it moved, so a pod kept off
// a pool by its risk limit or by what a reclaim would cost it waited for an
// unrelated event or the scheduler's five-minute flush. Activate leaves pods
// that are not waiting in this scheduler's queue alone.
func (pl *SpotRisk) retryRiskBound(logger klog.Logger, pods corelisters.PodLister) {
	all, err := pods.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing pods to retry after a price catalog reload", "plugin", Name)
		return
	}
	retry := map[string]*corev1.Pod{}
	for _, p := range all {
		if p.Spec.NodeName != "" {
			continue
		}
		if class, err := pl.classify(p); err == nil && class.FollowsRisk() {
			retry[p.Namespace+"/"+p.Name] = p
		}
	}
	if len(retry) > 0 {
		logger.V(4).Info("Retrying pods whose Spot pools the price catalog may have let in", "pods", len(retry))
		pl.handle.Activate(logger, retry)
	}
}

// retryRuntimeFell has every pool look again at the pods it keeps off for
// their expected loss, once how long training runs here is learned to be
// shorter (retryKeptOff reads the runtime anew): nothing else would, as no
// pool's estimate moved, and they waited for the scheduler's five-minute
// flush.
func (pl *SpotRisk) retryRuntimeFell(logger klog.Logger) {
	waits := &pl.riskWaits
	waits.mu.Lock()
	pools := slices.Collect(maps.Keys(waits.pools))
	waits.mu.Unlock()
	for _, pool := range pools {
		pl.retryKeptOff(logger, pool)
	}
}

// retryReclaimWithdrawn retries the pending pods that a node whose agent no
// longer reports a reclaim notice (the cloud called it off) now lets in:
// when the notice was only in telemetry, no cluster event says it went, and
// when a taint went with it, the taint's event may have come first, while
// the node still read as reclaiming (isSchedulableAfterNodeChange), so the
// pods Filter turned away for the notice waited for an unrelated event or
// the scheduler's five-minute flush. Which pods the notice alone kept off
// the node is not recorded, so this retries those whose rules now admit the
// node, as the taint's event would have: a superset, paid for only when a
// notice is withdrawn. Activate leaves pods that are not waiting in this
// scheduler's queue alone.
func (pl *SpotRisk) retryReclaimWithdrawn(logger klog.Logger, pods corelisters.PodLister, nodes corelisters.NodeLister, name string) {
	if pl.lifetime.Err() != nil {
		return
	}
	// The lister may not have the taint's removal yet: its event then
	// comes after, and its hint reads the notice gone.
	node, err := nodes.Get(name)
	if err != nil || pl.reclaimPending(node) {
		return
	}
	all, err := pods.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing pods to retry after a reclaim notice was withdrawn", "plugin", Name, "node", name)
		return
	}
	retry := map[string]*corev1.Pod{}
	for _, p := range all {
		if p.Spec.NodeName != "" {
			continue
		}
		if class, err := pl.classify(p); err == nil && pl.exclude(pl.stateFor(p, class), node) == "" {
			retry[p.Namespace+"/"+p.Name] = p
		}
	}
	if len(retry) > 0 {
		logger.V(4).Info("Retrying pods that a node whose reclaim notice was withdrawn now lets in", "node", name, "pods", len(retry))
		pl.handle.Activate(logger, retry)
	}
}

// riskWaits is, per Spot pool, the pending pods whose reclaim risk limits
// kept them off it, and the one timer that retries them.
type riskWaits struct {
	mu    sync.Mutex
	pools map[pricing.Pool]*poolWait
}

type poolWait struct {
	pods map[types.UID]riskWait
	// timer fires at at: when the pool's estimate reaches the highest
	// limit among pods, or the first of them is forgotten.
	at    time.Time
	timer clock.Timer
}

// riskWait is a pod kept off a pool: what the queue looks it up by, what
// its risk rules read (riskRules), the rate they admit, and when it is
// forgotten.
type riskWait struct {
	ref   *corev1.Pod
	state *podState
	bound float64
	until time.Time
}

// waitForRisk retries the pod when the estimate of a Spot pool whose
// reclaim risk Filter kept it off (or would have, for a pod an earlier
// PreFilter turned away: keepOffSnapshot) falls back under its limits: no
// cluster event says so (nor when a catalog reload moves a prior:
// retryRiskBound), and the pod waited for an unrelated one or the
// scheduler's five-minute flush. The model's evidence decays analytically, so each pool gets one
// timer, at the time its estimate reaches the highest limit among the pods
// it keeps off (pricing.RiskModel.FallsTo), and the model says when new
// evidence moves the estimate (OnChange, in New): exposure lowers it, and
// the pods it now admits are retried at once; a reclaim raises it, which
// retries nobody and only puts the timer off. That is exact to the second
// for a timer per pool, where reading every pool's rate at an interval
// would retry up to the interval late or read often for nothing. A pod is
// held, by name, for maxWakeupDelay after its last attempt: one still
// pending is tried again before then (the flush at the latest) and kept,
// and a deleted one is forgotten. A pod no longer kept off a pool by its
// risk leaves that pool's wait. With a risk source other than Penny's
// model nothing says when a rate falls, and the pods wait for the flush.
func (pl *SpotRisk) waitForRisk(logger klog.Logger, pod *corev1.Pod, s *podState) {
	if pl.priors == nil {
		return
	}
	s.mu.Lock()
	keptOff := maps.Clone(s.keptOff)
	s.mu.Unlock()
	w := riskWait{ref: queueRef(pod), state: &podState{class: s.class, runtime: s.runtime, runtimeSource: s.runtimeSource},
		bound: pl.riskBound(s), until: pl.clock.Now().Add(maxWakeupDelay)}
	var touched []pricing.Pool
	waits := &pl.riskWaits
	waits.mu.Lock()
	for pool, p := range waits.pools {
		if _, ok := p.pods[pod.UID]; ok && !keptOff[pool] {
			delete(p.pods, pod.UID)
			touched = append(touched, pool)
		}
	}
	for pool := range keptOff {
		if waits.pools == nil {
			waits.pools = map[pricing.Pool]*poolWait{}
		}
		p := waits.pools[pool]
		if p == nil {
			p = &poolWait{pods: map[types.UID]riskWait{}}
			waits.pools[pool] = p
		}
		p.pods[pod.UID] = w
		touched = append(touched, pool)
	}
	waits.mu.Unlock()
	for _, pool := range touched {
		pl.retryKeptOff(logger, pool)
	}
}

// retryKeptOff retries the pods kept off the pool that its estimate now
// admits, forgets those held too long, and arms the pool's timer for the
// next of either (waitForRisk).
func (pl *SpotRisk) retryKeptOff(logger klog.Logger, pool pricing.Pool) {
	if pl.lifetime.Err() != nil {
		// The scheduler stopped: its queue is gone, and a model that
		// outlives it (shared, or a replay's) still calls the hook.
		return
	}
	waits := &pl.riskWaits
	retry := map[string]*corev1.Pod{}
	waits.mu.Lock()
	p := waits.pools[pool]
	if p == nil {
		waits.mu.Unlock()
		return
	}
	now, rate := pl.clock.Now(), pl.risk.ReclaimRate(pool)
	var wake time.Time
	highest := 0.0
	for uid, w := range p.pods {
		// A runtime the pod does not declare is the one learned now, as
		// Filter would take it: one kept off for a long learned run is
		// let in once training here is seen to run shorter.
		if c := w.state.class; c.Policy == Avoid && c.Work.ExpectedRuntime == 0 {
			if run, source := pl.runtime(c); run != w.state.runtime {
				w.state = &podState{class: c, runtime: run, runtimeSource: source}
				w.bound = pl.riskBound(w.state)
				p.pods[uid] = w
			}
		}
		overLimit, overLoss := pl.riskRules(w.state, rate)
		switch {
		case !overLimit && !overLoss:
			retry[w.ref.Namespace+"/"+w.ref.Name] = w.ref
			delete(p.pods, uid)
		case !now.Before(w.until):
			delete(p.pods, uid)
		default:
			if wake.IsZero() || w.until.Before(wake) {
				wake = w.until
			}
			highest = max(highest, w.bound)
		}
	}
	if len(p.pods) == 0 {
		if p.timer != nil {
			p.timer.Stop()
		}
		delete(waits.pools, pool)
	} else {
		// Up to the whole second: a second past the crossing the estimate
		// is under the limit by more than a rounding, and a timer that
		// fires at it does not find the pod still kept off and fire again
		// at once.
		if d, ok := pl.priors.FallsTo(pool, highest); ok && d < wake.Sub(now) {
			wake = now.Add(max(time.Second, (d+time.Second-1)/time.Second*time.Second))
		}
		if !p.at.Equal(wake) {
			if p.timer != nil {
				p.timer.Stop()
			}
			p.at = wake
			// Off the timer's goroutine: a fake clock runs the func while
			// it holds its lock, and retryKeptOff reads the clock.
			p.timer = pl.clock.AfterFunc(wake.Sub(now), func() { go pl.retryKeptOff(logger, pool) })
		}
	}
	waits.mu.Unlock()
	if len(retry) > 0 {
		logger.V(4).Info("Retrying pods whose limits the reclaim risk of a Spot pool they were kept off now meets", "pool", pool.String(), "pods", len(retry))
		pl.handle.Activate(logger, retry)
	}
}

// reclaimPending reports whether a node is about to be reclaimed: its agent
// reports a notice, or a reclaim handler tainted it.
func (pl *SpotRisk) reclaimPending(node *corev1.Node) bool {
	if pl.telemetry != nil {
		if st, ok := pl.telemetry.Node(node.Name); ok && st.Reclaiming() {
			return true
		}
	}
	for _, t := range node.Spec.Taints {
		for _, k := range pl.args.ReclaimTaints {
			if t.Key == k {
				return true
			}
		}
	}
	return false
}

// poolKey is what a node's price and reclaim rate depend on: its
// pricing.NodeKey, and whether it is the template of a node group that may
// not exist (reclaimRate).
type poolKey struct {
	pricing.NodeKey
	template bool
}

// poolKeyOf is a node's poolKey, given its capacity type.
func poolKeyOf(node *corev1.Node, c pricing.Capacity) poolKey {
	_, template := node.Annotations[annotationTemplateNode]
	return poolKey{NodeKey: pricing.NodeKeyOf(node, c), template: template}
}

// poolMemo keeps, for one pod in one scheduling cycle, what the plugin
// worked out for the first node of each poolKey, for the other nodes with
// that key: the catalog lookup and the risk model's two locks cost more, on
// a thousand nodes, than the rest of Score. Every node of a key then gets
// the same answer, even if the risk model or the catalog changes during the
// cycle; the next cycle's memo reads them again. A nil memo keeps nothing:
// with a PriceBook that is not a catalog a node's price may depend on more
// than its key (newPoolMemo).
//
// Nodes read read, a map no one writes, without a lock; the first nodes of
// a key take mu and add it to all, which is copied to read once as many
// nodes have missed it as it holds keys, so that copies cost each miss
// O(1) on average, as sync.Map does (whose reflective hash of a struct key
// cost more than the memo saved).
type poolMemo[T any] struct {
	read atomic.Pointer[map[poolKey]T]

	mu     sync.Mutex
	all    map[poolKey]T
	misses int
}

// newPoolMemo is a memo for pricing with prices, nil when they may price
// two nodes of one key differently.
func newPoolMemo[T any](prices pricing.PriceBook) *poolMemo[T] {
	if !pricing.PricesByKey(prices) {
		return nil
	}
	return &poolMemo[T]{all: map[poolKey]T{}}
}

// get is the value kept for k, else compute's, kept. stored is true for
// the call whose value was kept (every call of a nil memo).
func (m *poolMemo[T]) get(k poolKey, compute func() T) (v T, stored bool) {
	if m == nil {
		return compute(), true
	}
	if read := m.read.Load(); read != nil {
		if v, ok := (*read)[k]; ok {
			return v, false
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.all[k]
	if !ok {
		v = compute()
		m.all[k] = v
	}
	if m.misses++; m.misses >= len(m.all) {
		read := maps.Clone(m.all)
		m.read.Store(&read)
		m.misses = 0
	}
	return v, !ok
}

// reclaimRate is the expected reclaims per hour of a node in pool.
func (pl *SpotRisk) reclaimRate(node *corev1.Node, pool pricing.Pool, price pricing.Price, priced bool) float64 {
	if pool.Capacity != pricing.Spot {
		return 0
	}
	if pl.priors != nil && priced && price.Interruption != pricing.BucketUnknown {
		if _, template := node.Annotations[annotationTemplateNode]; template {
			return pl.priors.RateFrom(pool, price.Interruption)
		}
		pl.priors.EnsurePrior(pool, price.Interruption)
	}
	return pl.risk.ReclaimRate(pool)
}
