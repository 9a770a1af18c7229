// Command penny-scheduler is kube-scheduler with Penny's plugins registered.
// Every kube-scheduler flag, leader election, /metrics and /healthz work as
// they do upstream; Penny's behaviour comes from the profile in --config.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
)

func main() {
	// Telemetry (telemetry.go): the store agents feed and plugins read. The
	// reclaim coordinator (reclaim.go) sees every report's new notices and
	// feeds observed reclaims into the risk model SpotRisk reads, and the
	// runs they cut short into what SpotRisk knows of each workload; the
	// plugins feed it the node-hours each Spot pool runs (ExposureEvery).
	coordinator := reclaim.NewCoordinator()
	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	interrupted := pricing.NewInterrupted(0)
	store := telemetry.NewStore(telemetry.StoreOptions{OnUpdate: coordinator.OnNodeUpdate})
	// The Cluster Autoscaler expander (expander.go) ranks node groups with
	// the SpotRisk the profile builds.
	exp := spotrisk.NewExpanderServer()
	// The mover (reclaim.go) moves work that fell back to on-demand back
	// to Spot with the SpotRisk the profile builds, through the reclaim
	// coordinator, on the replica that leads.
	returner := spotrisk.NewReturner()
	// Both run on every replica, the leader and those waiting for the lease
	// alike (command.go): agents report to every replica, and Cluster
	// Autoscaler may ask any.
	command := newSchedulerCommand([]part{
		&telemetryFlags{store: store, reclaim: &reclaimFlags{coordinator: coordinator, risk: risk, interrupted: interrupted, returner: returner}},
		&expanderFlags{srv: exp},
	}, plugins.Options(plugins.Deps{Telemetry: store, Risk: risk, ExposureEvery: pricing.DefaultExposureEvery,
		Interrupted: interrupted, Expander: exp, Returner: returner})...)
	os.Exit(cli.Run(command))
}
