package sim

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/pricing"
)

// SpotFirstPolicy is the naive baseline of the Spot benchmark: kube-
// scheduler's default profile plus a score that puts a pod on Spot whenever
// a Spot node fits, whatever the pod is and however often the pool is
// reclaimed.
const SpotFirstPolicy = "spot-first"

// SpotFirstName is the baseline's score plugin.
const SpotFirstName = "SimSpotFirst"

// spotFirstWeight outweighs the default profile's other scores together.
const spotFirstWeight = 20

type spotFirst struct{}

var (
	_ fwk.ScorePlugin = spotFirst{}
	_ fwk.SignPlugin  = spotFirst{}
)

func (spotFirst) Name() string { return SpotFirstName }

// Score is MaxScore on Spot nodes and 0 elsewhere.
func (spotFirst) Score(_ context.Context, _ fwk.CycleState, _ *v1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	if pricing.NodeCapacity(ni.Node()).IsSpot() {
		return fwk.MaxScore, nil
	}
	return 0, nil
}

func (spotFirst) ScoreExtensions() fwk.ScoreExtensions { return nil }

// SignPod adds nothing to a pod's signature: the score depends on the node
// alone. Without it the framework turns opportunistic batching off for the
// whole profile, and the baseline would not schedule as kube-scheduler does.
func (spotFirst) SignPod(context.Context, *v1.Pod) ([]fwk.SignFragment, *fwk.Status) { return nil, nil }

func addSpotFirst(prof *config.KubeSchedulerProfile, registry frameworkruntime.Registry) error {
	err := registry.Register(SpotFirstName, func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) {
		return spotFirst{}, nil
	})
	if err != nil {
		return err
	}
	prof.Plugins.Score.Enabled = append(prof.Plugins.Score.Enabled, config.Plugin{Name: SpotFirstName, Weight: spotFirstWeight})
	return nil
}
