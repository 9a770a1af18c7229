// Package spotrisk is Penny's Spot tolerance and cost/risk plugin. It reads
// each pod's workload class, keeps work that must not be interrupted off
// Spot (Filter), places the rest where its expected cost of useful work is
// lowest (Score), and lets a Spot-preferring pod fall back to on-demand
// capacity when Spot does not come (PreEnqueue, PostFilter, Reserve,
// PostBind).
package spotrisk

import (
	"context"
	"fmt"
	"sync"
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
	// pending reclaim is filtered out. Nil: only reclaim taints count.
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
	// lifetime is New's context, which ends when the scheduler stops: it
	// bounds the writes the plugin sends off the scheduling cycle.
	lifetime context.Context

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
	_ fwk.PreEnqueuePlugin  = &SpotRisk{}
	_ fwk.PreFilterPlugin   = &SpotRisk{}
	_ fwk.FilterPlugin      = &SpotRisk{}
	_ fwk.PostFilterPlugin  = &SpotRisk{}
	_ fwk.PreScorePlugin    = &SpotRisk{}
	_ fwk.ScorePlugin       = &SpotRisk{}
	_ fwk.ReservePlugin     = &SpotRisk{}
	_ fwk.PostBindPlugin    = &SpotRisk{}
	_ fwk.EnqueueExtensions = &SpotRisk{}
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
	if h != nil && h.SharedInformerFactory() != nil {
		informers := h.SharedInformerFactory().Core().V1()
		pricing.RegisterCostMetrics(pl.prices, informers.Pods().Lister(), informers.Nodes().Lister())
		pl.ungates = newUngates(pl.clock)
		if err := pl.ungates.watch(informers.Pods().Informer(), pl.memberDeleted); err != nil {
			return nil, fmt.Errorf("%s: watching pods for their scheduling gates: %w", Name, err)
		}
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

// reclaimRate is a node's expected reclaims per hour.
func (pl *SpotRisk) reclaimRate(node *corev1.Node, c pricing.Capacity, price pricing.Price, priced bool) float64 {
	if !c.IsSpot() {
		return 0
	}
	pool := pricing.NodePool(node)
	if pl.priors != nil && priced && price.Interruption != pricing.BucketUnknown {
		if _, template := node.Annotations[annotationTemplateNode]; template {
			return pl.priors.RateFrom(pool, price.Interruption)
		}
		pl.priors.EnsurePrior(pool, price.Interruption)
	}
	return pl.risk.ReclaimRate(pool)
}
