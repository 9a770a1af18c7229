package plugins

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/utils/clock"

	"github.com/pennysched/penny/pkg/pluginargs"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/plugins/gang"
	"github.com/pennysched/penny/plugins/gpupack"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// Deps are the shared, long-lived inputs plugins read through interfaces:
// the telemetry store fed by agents and the price/risk catalog. A nil field
// means "not available"; plugins then fall back to what the cluster snapshot
// tells them.
type Deps struct {
	// Telemetry is what agents report about each node (GPUs, MIG instances,
	// health, reclaim notices). Reads never block; a node without fresh data
	// reads as unknown.
	Telemetry telemetry.Reader
	// GangReclaimRisk scores how likely a gang placed on a set of nodes is
	// to lose a member to a capacity reclaim. Nil: pricing.GangRisk over the
	// same risk model SpotRisk uses.
	GangReclaimRisk gang.ReclaimRisk
	// Prices prices nodes (pkg/pricing). Nil: SpotRisk loads the catalog
	// named in its args, if any, once for every profile, which must all
	// name the same one.
	Prices pricing.PriceBook
	// Risk estimates pool reclaim rates. Nil: one model shared by SpotRisk
	// and the gang plugin, seeded from the catalog's interruption buckets.
	// penny-scheduler hands one that its reclaim coordinator feeds.
	Risk pricing.RiskSource
	// ExposureEvery, when positive, has the plugins count the cluster's Spot
	// nodes that often (from the scheduler's own node informer) and feed the
	// node-hours each pool ran into Risk, which must then also be a
	// pricing.ReclaimFeed: penny-scheduler sets it. Zero: whoever feeds Risk
	// its reclaims feeds the exposure too (the simulator, from its replay).
	ExposureEvery time.Duration
	// Expander, when set, answers Cluster Autoscaler's gRPC expander, each
	// pod judged by the SpotRisk its profile builds (penny-scheduler
	// --expander-bind-address).
	Expander *spotrisk.ExpanderServer
	// Returner, when set, moves work that fell back to on-demand back to
	// Spot with the first SpotRisk built (penny-scheduler's mover).
	Returner *spotrisk.Returner
	// Clock is the simulator's virtual clock; nil means the wall clock.
	Clock clock.WithDelayedExecution
	// Interrupted is what reclaims have cut short per workload, recorded by
	// the reclaim coordinator (or the simulator) and read by SpotRisk. Nil:
	// nothing is recorded.
	Interrupted *pricing.Interrupted
	// RunLengths is how long training runs last, which SpotRisk assumes for
	// training without checkpoints that declares no runtime. Nil: one fed by
	// the training pods that succeed in the cluster (SpotRisk.WatchRuns).
	// The simulator hands its own and feeds it.
	RunLengths *pricing.RunLengths
}

// Registry returns Penny's out-of-tree plugins keyed by name.
func Registry(deps Deps) frameworkruntime.Registry {
	if deps.Risk == nil {
		deps.Risk = pricing.NewRiskModel(pricing.RiskConfig{})
	}
	if deps.GangReclaimRisk == nil {
		deps.GangReclaimRisk = pricing.GangRisk{Risk: deps.Risk}
	}
	watchRuns := deps.RunLengths == nil
	if watchRuns {
		deps.RunLengths = pricing.NewRunLengths(0)
	}
	var watchOnce, exposureOnce sync.Once
	spot := &spotRules{byProfile: map[string]*spotrisk.SpotRisk{}}
	catalog := &oneCatalog{}
	return frameworkruntime.Registry{
		gang.Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			opts := []gang.Option{gang.WithReclaimRisk(deps.GangReclaimRisk), gang.WithNodeRule(spot.rule(profileOf(h))),
				gang.WithNodeCost(spot.cost(profileOf(h)))}
			if deps.Clock != nil {
				opts = append(opts, gang.WithClock(deps.Clock))
			}
			return gang.NewWith(ctx, obj, h, opts...)
		},
		spotrisk.Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			prices := deps.Prices
			var src spotrisk.CatalogSource
			if prices == nil {
				args, err := pluginargs.Decode[spotrisk.Args](spotrisk.Name, obj)
				if err != nil {
					return nil, err
				}
				src = args.Catalog
				if prices, err = catalog.of(profileOf(h), src); err != nil {
					return nil, err
				}
			}
			pl, err := spotrisk.New(ctx, obj, h, spotrisk.Deps{Prices: prices, Risk: deps.Risk, Telemetry: deps.Telemetry, Clock: deps.Clock,
				Interrupted: deps.Interrupted, RunLengths: deps.RunLengths})
			if err != nil {
				return nil, err
			}
			sr := pl.(*spotrisk.SpotRisk)
			if deps.Prices == nil {
				catalog.built(profileOf(h), src, sr.Prices())
			}
			spot.set(profileOf(h), sr)
			if deps.Expander != nil {
				deps.Expander.Use(sr)
			}
			if deps.Returner != nil {
				deps.Returner.Use(sr)
			}
			if feed, ok := deps.Risk.(pricing.ReclaimFeed); ok && deps.ExposureEvery > 0 && h != nil && h.SharedInformerFactory() != nil {
				exposureOnce.Do(func() {
					nodes := h.SharedInformerFactory().Core().V1().Nodes().Lister()
					clk, ok := deps.Clock.(clock.WithTicker)
					if !ok {
						clk = clock.RealClock{}
					}
					go pricing.FeedExposure(ctx, feed, func() ([]*corev1.Node, error) { return nodes.List(labels.Everything()) }, clk, deps.ExposureEvery)
				})
			}
			// One watch feeds every profile's SpotRisk.
			if watchRuns && h != nil && h.ClientSet() != nil {
				watchOnce.Do(func() {
					factory, inf := spotrisk.SucceededPods(h.ClientSet())
					if err = sr.WatchRuns(inf, deps.RunLengths); err == nil {
						factory.Start(ctx.Done())
					}
				})
			}
			return pl, err
		},
		gpupack.Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			var opts []gpupack.Option
			if deps.Telemetry != nil {
				opts = append(opts, gpupack.WithLayouts(gpupack.TelemetryLayouts(deps.Telemetry)))
			}
			return gpupack.NewWith(ctx, obj, h, opts...)
		},
	}
}

// oneCatalog holds the price catalog of the first profile that built
// SpotRisk and hands its store to the profiles after it. A scheduler prices a
// node one way: its cost metrics (pkg/pricing) price every pod, whichever
// profile placed it, and every profile seeds the one risk model's Spot pools
// from the catalog's interruption buckets. So every profile's SpotRisk names
// the same catalog, as every profile names the same queue sort, and is
// handed one store: one watch, one load counted per change.
type oneCatalog struct {
	mu      sync.Mutex
	set     bool
	profile string
	src     spotrisk.CatalogSource
	prices  pricing.PriceBook
}

// of is the store for a profile that names src: nil for the first, which
// builds it; an error naming args.catalog when src is not the first's.
func (c *oneCatalog) of(profile string, src spotrisk.CatalogSource) (pricing.PriceBook, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.set {
		return nil, nil
	}
	if !sameCatalog(src, c.src) {
		return nil, fmt.Errorf("%s plugin args: %w", spotrisk.Name, field.Invalid(field.NewPath("args", "catalog"), describeCatalog(src),
			fmt.Sprintf("profile %q names this catalog and profile %q names %s: every profile's SpotRisk must name the same one, since a node has one price "+
				"(in the cost metrics, whichever profile placed a pod, and in the Spot pools' reclaim priors); give every profile the same catalog "+
				"(to keep prices out of one profile's scores, disable SpotRisk's score there)", profile, c.profile, describeCatalog(c.src))))
	}
	return c.prices, nil
}

// built records the store the first profile's SpotRisk built.
func (c *oneCatalog) built(profile string, src spotrisk.CatalogSource, prices pricing.PriceBook) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.set {
		c.set, c.profile, c.src, c.prices = true, profile, src, prices
	}
}

func sameCatalog(a, b spotrisk.CatalogSource) bool {
	if filepath.Clean(a.File) != filepath.Clean(b.File) || (a.ConfigMap == nil) != (b.ConfigMap == nil) {
		return false
	}
	return a.ConfigMap == nil || *a.ConfigMap == *b.ConfigMap
}

func describeCatalog(src spotrisk.CatalogSource) string {
	switch {
	case src.File != "":
		return "file " + src.File
	case src.ConfigMap != nil:
		return fmt.Sprintf("configMap %s/%s key %s", src.ConfigMap.Namespace, src.ConfigMap.Name, src.ConfigMap.Key)
	default:
		return "no catalog"
	}
}

// spotRules hands each profile's PennyGang that profile's SpotRisk, so that
// a gang is admitted only to nodes SpotRisk lets its members use (a gang of
// inference pods is not admitted to Spot room, nor one waiting for Spot to
// on-demand room), and chooses among the domains a gang fits in by what
// SpotRisk's Score says its members' work costs there. A profile without
// SpotRisk checks nothing, and chooses by reclaim risk alone.
type spotRules struct {
	mu        sync.Mutex
	byProfile map[string]*spotrisk.SpotRisk
}

func (s *spotRules) set(profile string, pl *spotrisk.SpotRisk) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byProfile[profile] = pl
}

func (s *spotRules) rule(profile string) gang.NodeRule {
	return func(pod *corev1.Pod) (func(node *corev1.Node) string, string) {
		s.mu.Lock()
		pl := s.byProfile[profile]
		s.mu.Unlock()
		if pl == nil {
			return nil, ""
		}
		return pl.ExcludesAlike(pod)
	}
}

// cost is the profile's SpotRisk's price of a pod's work on a node
// (SpotRisk.NodeCost), which chooses among the domains a gang fits in.
func (s *spotRules) cost(profile string) gang.NodeCost {
	return func(pod *corev1.Pod) (func(node *corev1.Node) (float64, bool, bool), string) {
		s.mu.Lock()
		pl := s.byProfile[profile]
		s.mu.Unlock()
		if pl == nil {
			return nil, ""
		}
		return pl.NodeCost(pod)
	}
}

// profileOf is the name of the profile a plugin is built for; "" when the
// handle does not say.
func profileOf(h fwk.Handle) string {
	if p, ok := h.(interface{ ProfileName() string }); ok {
		return p.ProfileName()
	}
	return ""
}

// Options turns the registry into kube-scheduler command options.
func Options(deps Deps) []app.Option {
	var opts []app.Option
	for name, factory := range Registry(deps) {
		opts = append(opts, app.WithPlugin(name, factory))
	}
	return opts
}
