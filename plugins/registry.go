package plugins

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/plugins/gpupack"
)

// Deps are the shared, long-lived inputs plugins read through interfaces:
// the telemetry store fed by agents and the price/risk catalog. A nil field
// means "not available"; plugins then fall back to what the cluster snapshot
// tells them.
type Deps struct {
	// MIGLayouts reports the static MIG layout of each node's GPUs (from
	// the node agents). Nil: gpupack derives layouts from the MIG resources
	// nodes advertise.
	MIGLayouts gpupack.LayoutSource
}

// Registry returns Penny's out-of-tree plugins keyed by name.
func Registry(deps Deps) frameworkruntime.Registry {
	return frameworkruntime.Registry{
		gpupack.Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			var opts []gpupack.Option
			if deps.MIGLayouts != nil {
				opts = append(opts, gpupack.WithLayouts(deps.MIGLayouts))
			}
			return gpupack.NewWith(ctx, obj, h, opts...)
		},
	}
}

// Options turns the registry into kube-scheduler command options.
func Options(deps Deps) []app.Option {
	var opts []app.Option
	for name, factory := range Registry(deps) {
		opts = append(opts, app.WithPlugin(name, factory))
	}
	return opts
}
