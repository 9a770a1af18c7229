package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
)

// reclaimFlags configure the reclaim coordinator, which runs next to the
// telemetry endpoint: without agents there are no notices to act on.
type reclaimFlags struct {
	coordinator *reclaim.Coordinator
	risk        pricing.ReclaimFeed
	interrupted *pricing.Interrupted

	keepGangsRunning bool
	safetyMargin     time.Duration
	maintenanceLead  time.Duration
}

func (f *reclaimFlags) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("penny reclaim", pflag.ContinueOnError)
	fs.BoolVar(&f.keepGangsRunning, "reclaim-keep-gangs-running", false, "on a reclaim notice, only ask the other members of affected gangs to checkpoint; do not evict them (the gang then runs short a member until it restarts itself)")
	fs.DurationVar(&f.safetyMargin, "reclaim-safety-margin", reclaim.DefaultSafetyMargin, "how long before a notice's deadline the other members of an affected gang are evicted if their checkpoints are not in yet; match the agents' --reclaim-safety-margin")
	fs.DurationVar(&f.maintenanceLead, "reclaim-maintenance-lead", reclaim.DefaultMaintenanceLead, "how long before scheduled maintenance gangs are checkpointed and moved; match the agents' --reclaim-maintenance-lead")
	return fs
}

func (f *reclaimFlags) validate() error {
	if f.safetyMargin <= 0 {
		return fmt.Errorf("--reclaim-safety-margin %v: must be positive", f.safetyMargin)
	}
	if f.maintenanceLead <= 0 {
		return fmt.Errorf("--reclaim-maintenance-lead %v: must be positive", f.maintenanceLead)
	}
	return nil
}

func (f *reclaimFlags) run(ctx context.Context, srv *telemetry.Server, client kubernetes.Interface) {
	err := f.coordinator.Run(ctx, reclaim.CoordinatorOptions{
		Client: client, Commands: srv, Risk: f.risk, Interrupted: f.interrupted,
		Policy:           reclaim.Policy{MaintenanceLead: f.maintenanceLead},
		KeepGangsRunning: f.keepGangsRunning, SafetyMargin: f.safetyMargin,
		Log: klog.Background().WithName("reclaim"),
	})
	if err != nil {
		klog.Background().Error(err, "reclaim coordinator stopped")
	}
}
