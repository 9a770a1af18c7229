package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	authorizationv1client "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/klog/v2"
	appconfig "k8s.io/kubernetes/cmd/kube-scheduler/app/config"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// reclaimFlags configure the reclaim coordinator, which runs next to the
// telemetry endpoint: without agents there are no notices to act on.
type reclaimFlags struct {
	coordinator *reclaim.Coordinator
	risk        pricing.ReclaimFeed
	interrupted *pricing.Interrupted
	// returner moves work that fell back to on-demand back to Spot, through
	// the coordinator (SpotRisk's returnToSpot), once setUp has told it how
	// to tell whether this replica leads.
	returner *spotrisk.Returner

	keepGangsRunning bool
	safetyMargin     time.Duration
	maintenanceLead  time.Duration
	// interruptedConfigMap is namespace/name of the ConfigMap that keeps
	// the interrupted runs and the risk model's evidence (when risk is a
	// *pricing.RiskModel) across restarts; "" keeps them in memory only.
	interruptedConfigMap string
	persist              *pricing.PersistOptions
	// noticesConfigMap is namespace/name of the ConfigMap that keeps the
	// notices being handled across restarts; "" keeps them in memory only.
	noticesConfigMap string

	fs *pflag.FlagSet
}

func (f *reclaimFlags) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("penny reclaim", pflag.ContinueOnError)
	fs.BoolVar(&f.keepGangsRunning, "reclaim-keep-gangs-running", false, "on a reclaim notice, only ask the other members of affected gangs to checkpoint; do not evict them (the gang then runs short a member until it restarts itself)")
	fs.DurationVar(&f.safetyMargin, "reclaim-safety-margin", reclaim.DefaultSafetyMargin, "how long before a notice's deadline the other members of an affected gang are evicted if their checkpoints are not in yet; match the agents' --reclaim-safety-margin")
	fs.DurationVar(&f.maintenanceLead, "reclaim-maintenance-lead", reclaim.DefaultMaintenanceLead, "how long before scheduled maintenance gangs are checkpointed and moved; match the agents' --reclaim-maintenance-lead")
	fs.StringVar(&f.interruptedConfigMap, "reclaim-interrupted-configmap", "penny-system/penny-interrupted-runs", "namespace/name of the ConfigMap where the runs Spot reclaims cut short, and the reclaims and node-hours each Spot pool's risk estimate has learned from, are kept, and the moves of work back to Spot, so that a restarted scheduler still keeps those workloads' training without checkpoints off Spot, does not start every pool again from its bucket, and keeps to returnToSpot.cooldown (docs/spot.md); empty: memory only. Put it in the scheduler's own namespace: tenants must not write it")
	fs.StringVar(&f.noticesConfigMap, "reclaim-notices-configmap", "penny-system/penny-reclaim-notices", "namespace/name of the ConfigMap where the reclaim notices being handled and their gangs, and the moves back to Spot being evicted, are kept, so that a scheduler restarted mid-notice still checkpoints and evicts the gangs' members on other nodes, and one restarted mid-move finishes it (docs/reclaim.md); empty: memory only. Put it in the scheduler's own namespace: tenants must not write it")
	return fs
}

// configMapFlag checks a namespace/name flag; "" is memory only. The names
// are checked as the API server would, so that a typo fails the start
// rather than every write.
func configMapFlag(flag, v, example, empty string) error {
	if v == "" {
		return nil
	}
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("--%s %q: want namespace/name, e.g. %s (empty keeps %s in memory only)", flag, v, example, empty)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("--%s %q: namespace %q: %s; want namespace/name, e.g. %s", flag, v, ns, strings.Join(errs, "; "), example)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("--%s %q: ConfigMap name %q: %s; want namespace/name, e.g. %s", flag, v, name, strings.Join(errs, "; "), example)
	}
	return nil
}

func (f *reclaimFlags) validate() error {
	if err := configMapFlag("reclaim-interrupted-configmap", f.interruptedConfigMap, "penny-system/penny-interrupted-runs", "the runs and the Spot pools' reclaim evidence"); err != nil {
		return err
	}
	if err := configMapFlag("reclaim-notices-configmap", f.noticesConfigMap, "penny-system/penny-reclaim-notices", "the notices"); err != nil {
		return err
	}
	if f.noticesConfigMap != "" && f.noticesConfigMap == f.interruptedConfigMap {
		// Each record may fill most of the API server's 1 MiB per
		// ConfigMap on its own: sharing one, a growing notices record would
		// be refused by the API server instead of trimmed by its own limit.
		return fmt.Errorf("--reclaim-notices-configmap %q is also --reclaim-interrupted-configmap: give each its own ConfigMap (defaults penny-system/penny-reclaim-notices and penny-system/penny-interrupted-runs)", f.noticesConfigMap)
	}
	if f.safetyMargin <= 0 {
		return fmt.Errorf("--reclaim-safety-margin %v: must be positive (default %v); match the agents' --reclaim-safety-margin", f.safetyMargin, reclaim.DefaultSafetyMargin)
	}
	if f.maintenanceLead <= 0 || f.maintenanceLead > telemetryv1.MaxCommandDeadline {
		return fmt.Errorf("--reclaim-maintenance-lead %v: must be positive and at most %v, the furthest deadline a checkpoint command may carry (default %v); match the agents' --reclaim-maintenance-lead", f.maintenanceLead, telemetryv1.MaxCommandDeadline, reclaim.DefaultMaintenanceLead)
	}
	return nil
}

// accessTimeout bounds the reviews of checkAccess, so that an API server
// that does not answer delays the start only so long.
const accessTimeout = 10 * time.Second

// checkAccess fails the start when the API server says penny-scheduler may
// not keep its state in a configured ConfigMap: with a name the shipped
// RBAC does not cover, every write would fail, one error each, for as long
// as the scheduler runs. A review that cannot be made is only a warning, as
// the writes may still go through.
func (f *reclaimFlags) checkAccess(ctx context.Context, client authorizationv1client.SelfSubjectAccessReviewsGetter) error {
	for _, cm := range []struct{ flag, value, def string }{
		{"reclaim-interrupted-configmap", f.interruptedConfigMap, "penny-system/penny-interrupted-runs"},
		{"reclaim-notices-configmap", f.noticesConfigMap, "penny-system/penny-reclaim-notices"},
	} {
		if cm.value == "" {
			continue
		}
		ns, name, _ := strings.Cut(cm.value, "/")
		rctx, cancel := context.WithTimeout(ctx, accessTimeout)
		denied, err := configmaplines.Access(rctx, client, ns, name)
		cancel()
		if len(denied) > 0 {
			return fmt.Errorf("--%s %s: penny-scheduler may not %s ConfigMap %s in namespace %s, so every write to it would fail: "+
				"give the scheduler's ServiceAccount get and update on it and create on configmaps in %s (the Role penny-scheduler-interrupted-runs "+
				"in deploy/scheduler/penny-scheduler.yaml grants these only for the default names in penny-system: extend it, or add a Role and "+
				"RoleBinding like it in %s), or use the default %s (empty keeps the state in memory only)",
				cm.flag, cm.value, strings.Join(denied, ", "), name, ns, ns, ns, cm.def)
		}
		if err != nil {
			klog.Background().Info("Warning: cannot check that penny-scheduler may write its ConfigMap; starting anyway, and a missing permission shows as an error on every write",
				"flag", "--"+cm.flag, "configMap", cm.value, "err", err)
		}
	}
	return nil
}

// riskModel is the risk model whose evidence is kept with the interrupted
// runs; nil when risk is not one.
func (f *reclaimFlags) riskModel() *pricing.RiskModel {
	m, _ := f.risk.(*pricing.RiskModel)
	return m
}

// loadInterrupted merges the saved interrupted runs, and the risk model's
// saved evidence, before the scheduler starts; a failure is logged and the
// scheduler starts without them.
func (f *reclaimFlags) loadInterrupted(ctx context.Context, client kubernetes.Interface) {
	if f.interruptedConfigMap == "" {
		return
	}
	ns, name, _ := strings.Cut(f.interruptedConfigMap, "/")
	f.persist = &pricing.PersistOptions{Client: client, Namespace: ns, Name: name, Log: klog.Background().WithName("interrupted")}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.interrupted.Load(ctx, *f.persist); err != nil {
		f.persist.Log.Error(err, "Loading the interrupted runs")
	}
	if m := f.riskModel(); m != nil {
		if err := m.Load(ctx, f.riskPersist()); err != nil {
			f.persist.Log.Error(err, "Loading the Spot pools' reclaim evidence; pools without it start from their buckets")
		}
	}
}

// riskPersist is where the risk model's evidence is kept: the interrupted
// runs' ConfigMap, under its own key.
func (f *reclaimFlags) riskPersist() pricing.PersistOptions {
	o := *f.persist
	o.Log = klog.Background().WithName("reclaim-risk")
	return o
}

// exitSaveTimeout bounds each of the saves on the way out.
var exitSaveTimeout = 5 * time.Second

// saveInterrupted writes the runs recorded, and the evidence observed,
// since the last save, on the way out. The two saves run side by side, each
// with its own time: one stuck on a slow API server must not leave the
// other no time at all (both keys' writes are conditional, so they do not
// undo each other).
func (f *reclaimFlags) saveInterrupted() {
	if f.persist == nil {
		return
	}
	var wg sync.WaitGroup
	save := func(what string, do func(context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), exitSaveTimeout)
		defer cancel()
		if err := do(ctx); err != nil {
			f.persist.Log.Error(err, "Saving "+what+" on exit")
		}
	}
	wg.Go(func() {
		save("the interrupted runs", func(ctx context.Context) error { return f.interrupted.Save(ctx, *f.persist) })
	})
	if m := f.riskModel(); m != nil {
		wg.Go(func() {
			save("the Spot pools' reclaim evidence", func(ctx context.Context) error { return m.Save(ctx, f.riskPersist()) })
		})
	}
	wg.Wait()
}

// saveObserved writes the interrupted runs and the risk evidence now, for
// the coordinator to call before it records a Spot notice (it then takes
// the notice as observed, should the scheduler restart); nil when they are
// kept in memory only.
func (f *reclaimFlags) saveObserved() func(context.Context) error {
	if f.persist == nil {
		return nil
	}
	return func(ctx context.Context) error {
		err := f.interrupted.Save(ctx, *f.persist)
		if m := f.riskModel(); m != nil {
			err = errors.Join(err, m.Save(ctx, f.riskPersist()))
		}
		return err
	}
}

// run runs the coordinator, and keeps the interrupted runs and the risk
// model's evidence saved, until ctx ends; it returns once all have
// stopped. Every replica saves: each runs a coordinator that hears every
// agent and counts the nodes itself, and RiskModel.Merge takes the larger
// of two copies' evidence rather than their sum.
func (f *reclaimFlags) run(ctx context.Context, srv *telemetry.Server, client kubernetes.Interface) {
	if f.persist != nil {
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { f.interrupted.Persist(ctx, *f.persist) })
		if m := f.riskModel(); m != nil {
			wg.Go(func() { m.Persist(ctx, f.riskPersist()) })
		}
	}
	var notices *reclaim.NoticeStore
	if f.noticesConfigMap != "" {
		ns, name, _ := strings.Cut(f.noticesConfigMap, "/")
		notices = &reclaim.NoticeStore{Client: client, Namespace: ns, Name: name}
	}
	if f.returner != nil {
		o := spotrisk.ReturnerOptions{Mover: f.coordinator}
		if f.persist != nil {
			o.Moves = &configmaplines.Key{Client: client, Namespace: f.persist.Namespace, Name: f.persist.Name, Key: spotrisk.MovesKey}
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { f.returner.Run(ctx, o) })
	}
	err := f.coordinator.Run(ctx, reclaim.CoordinatorOptions{
		Client: client, Commands: srv, Risk: f.risk, Interrupted: f.interrupted, Notices: notices, SaveObserved: f.saveObserved(),
		Policy:           reclaim.Policy{MaintenanceLead: f.maintenanceLead},
		KeepGangsRunning: f.keepGangsRunning, SafetyMargin: f.safetyMargin,
		Log: klog.Background().WithName("reclaim"),
	})
	if err != nil {
		klog.Background().Error(err, "reclaim coordinator stopped")
	}
}

// setUp learns from the scheduler's configuration how to tell whether this
// replica leads (leaseHolder).
func (f *reclaimFlags) setUp(cc *appconfig.CompletedConfig) {
	if f.returner != nil {
		f.returner.SetLeading(leaseHolder(cc))
	}
}

// leaseHolder reports whether this replica holds the scheduler's lease, as
// the lease reads now: the moves back to Spot evict pods, which one replica
// decides. Without leader election the one replica always leads.
func leaseHolder(cc *appconfig.CompletedConfig) func(context.Context) bool {
	if cc == nil || cc.LeaderElection == nil {
		return func(context.Context) bool { return true }
	}
	lock, within := cc.LeaderElection.Lock, cc.LeaderElection.LeaseDuration
	return func(ctx context.Context) bool {
		rec, _, err := lock.Get(ctx)
		return err == nil && rec.HolderIdentity == lock.Identity() && time.Since(rec.RenewTime.Time) < within
	}
}
