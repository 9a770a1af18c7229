package plugins

import (
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/telemetry"
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
}

// Registry returns Penny's out-of-tree plugins keyed by name.
func Registry(_ Deps) frameworkruntime.Registry {
	return frameworkruntime.Registry{}
}

// Options turns the registry into kube-scheduler command options.
func Options(deps Deps) []app.Option {
	var opts []app.Option
	for name, factory := range Registry(deps) {
		opts = append(opts, app.WithPlugin(name, factory))
	}
	return opts
}
