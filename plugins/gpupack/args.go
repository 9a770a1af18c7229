package gpupack

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/pennysched/penny/pkg/pluginargs"
)

// Args configure the plugin through the profile's pluginConfig:
//
//	pluginConfig:
//	- name: PennyGPUPack
//	  args:
//	    demandHalfLife: 2000
//	    lookAheadDepth: 256
type Args struct {
	metav1.TypeMeta `json:",inline"`

	// FragmentationWeight multiplies the growth of a node's expected waste
	// (thousandths of a GPU that the demand could not use) in a placement's
	// cost. Default 1.
	FragmentationWeight *float64 `json:"fragmentationWeight,omitempty"`
	// BalanceWeight multiplies the growth of the GPU capacity the workload's
	// average mix would strand on the node for want of CPU or memory (the
	// node's free CPU and memory per free GPU against what the demand asks
	// per GPU). Default 3.
	BalanceWeight *float64 `json:"balanceWeight,omitempty"`
	// DeadPieceWeight multiplies the growth of the dead capacity a share
	// leaves: free pieces of a GPU so small that almost none of the demand
	// fits in them (see packing.Weights.Dead). Default 3.
	DeadPieceWeight *float64 `json:"deadPieceWeight,omitempty"`
	// OverkillWeight multiplies the pod's GPU request (in thousandths of a
	// GPU) times how large the node's GPU is among the models the pod could
	// use (0 smallest, 1 largest). It steers small work away from the
	// largest GPUs when the waste is about equal. Default 0.05: a whole GPU
	// on the largest model costs as much as 50 thousandths of expected waste.
	OverkillWeight *float64 `json:"overkillWeight,omitempty"`
	// DemandHalfLife is the number of pod arrivals after which an arrival's
	// weight in the learned demand has halved; 0 never forgets. Default 2000.
	DemandHalfLife *int32 `json:"demandHalfLife,omitempty"`
	// DemandRefresh is how many arrivals of already known shapes may pass
	// before the demand is recomputed (a new shape recomputes it at once).
	// Default 16.
	DemandRefresh *int32 `json:"demandRefresh,omitempty"`
	// LookAheadDepth is how many pods waiting in the queue the demand counts
	// as certain arrivals; 0 turns the look-ahead off. Default 256.
	LookAheadDepth *int32 `json:"lookAheadDepth,omitempty"`
	// LookAheadWeight is how many arrivals one waiting pod counts as.
	// Default 4.
	LookAheadWeight *float64 `json:"lookAheadWeight,omitempty"`
	// ScoreScale (thousandths of a GPU) turns costs into scores: the best
	// node scores 100, a node whose placement costs ScoreScale more scores
	// 50. Default 100.
	ScoreScale *float64 `json:"scoreScale,omitempty"`
	// KeepGPUNodesForGPUPods scores GPU nodes 0 for a pod without GPUs when
	// a node without GPUs can take it. Default true.
	KeepGPUNodesForGPUPods *bool `json:"keepGPUNodesForGPUPods,omitempty"`
	// PoolLabel is the node label that names a node pool in the metrics;
	// nodes without it are grouped by GPU product. Default penny.dev/pool.
	PoolLabel string `json:"poolLabel,omitempty"`
}

// Defaults.
const (
	DefaultFragmentationWeight = 1.0
	DefaultBalanceWeight       = 3.0
	DefaultDeadPieceWeight     = 3.0
	DefaultOverkillWeight      = 0.05
	DefaultDemandHalfLife      = 2000
	DefaultDemandRefresh       = 16
	DefaultLookAheadDepth      = 256
	DefaultLookAheadWeight     = 4.0
	DefaultScoreScale          = 100.0
	DefaultPoolLabel           = "penny.dev/pool"
)

// SetDefaults fills every unset field.
func (a *Args) SetDefaults() {
	setFloat(&a.FragmentationWeight, DefaultFragmentationWeight)
	setFloat(&a.BalanceWeight, DefaultBalanceWeight)
	setFloat(&a.DeadPieceWeight, DefaultDeadPieceWeight)
	setFloat(&a.OverkillWeight, DefaultOverkillWeight)
	setInt(&a.DemandHalfLife, DefaultDemandHalfLife)
	setInt(&a.DemandRefresh, DefaultDemandRefresh)
	setInt(&a.LookAheadDepth, DefaultLookAheadDepth)
	setFloat(&a.LookAheadWeight, DefaultLookAheadWeight)
	setFloat(&a.ScoreScale, DefaultScoreScale)
	if a.KeepGPUNodesForGPUPods == nil {
		t := true
		a.KeepGPUNodesForGPUPods = &t
	}
	if a.PoolLabel == "" {
		a.PoolLabel = DefaultPoolLabel
	}
}

func setFloat(p **float64, v float64) {
	if *p == nil {
		*p = &v
	}
}

func setInt(p **int32, v int32) {
	if *p == nil {
		*p = &v
	}
}

// Validate checks defaulted args.
func (a *Args) Validate() error {
	var errs field.ErrorList
	nonNegative := func(name string, v float64, what string) {
		if v < 0 {
			errs = append(errs, field.Invalid(field.NewPath(name), v, "must not be negative; "+what))
		}
	}
	nonNegative("fragmentationWeight", *a.FragmentationWeight, "0 turns fragmentation scoring off")
	nonNegative("balanceWeight", *a.BalanceWeight, "0 turns CPU and memory balance off")
	nonNegative("deadPieceWeight", *a.DeadPieceWeight, "0 turns the dead-piece cost off")
	nonNegative("overkillWeight", *a.OverkillWeight, "0 turns avoid-overkill off")
	nonNegative("lookAheadWeight", *a.LookAheadWeight, "0 turns the look-ahead off")
	if *a.FragmentationWeight == 0 && *a.BalanceWeight == 0 && *a.DeadPieceWeight == 0 && *a.OverkillWeight == 0 {
		errs = append(errs, field.Invalid(field.NewPath("fragmentationWeight"), 0, "fragmentationWeight, balanceWeight, deadPieceWeight and overkillWeight are all 0, so every node would score the same; disable the plugin's score instead"))
	}
	if *a.DemandHalfLife < 0 {
		errs = append(errs, field.Invalid(field.NewPath("demandHalfLife"), *a.DemandHalfLife, "must be 0 (never forget) or a positive number of arrivals, e.g. 2000"))
	}
	if *a.DemandRefresh < 1 {
		errs = append(errs, field.Invalid(field.NewPath("demandRefresh"), *a.DemandRefresh, "must be at least 1 arrival"))
	}
	if *a.LookAheadDepth < 0 {
		errs = append(errs, field.Invalid(field.NewPath("lookAheadDepth"), *a.LookAheadDepth, "must be 0 (off) or a positive number of pods, e.g. 256"))
	}
	if *a.ScoreScale <= 0 {
		errs = append(errs, field.Invalid(field.NewPath("scoreScale"), *a.ScoreScale, "must be a positive number of thousandths of a GPU, e.g. 100"))
	}
	return errs.ToAggregate()
}

// DecodeArgs reads the plugin's args from the scheduler configuration:
// strictly, then defaulted and validated (pkg/pluginargs).
func DecodeArgs(obj runtime.Object) (*Args, error) {
	return pluginargs.Decode[Args](Name, obj)
}

// DeepCopyObject lets Args travel as a runtime.Object (for tests and for
// callers that build the profile in code).
func (a *Args) DeepCopyObject() runtime.Object {
	c := *a
	for _, p := range []**float64{&c.FragmentationWeight, &c.BalanceWeight, &c.DeadPieceWeight, &c.OverkillWeight, &c.LookAheadWeight, &c.ScoreScale} {
		if *p != nil {
			v := **p
			*p = &v
		}
	}
	for _, p := range []**int32{&c.DemandHalfLife, &c.DemandRefresh, &c.LookAheadDepth} {
		if *p != nil {
			v := **p
			*p = &v
		}
	}
	if c.KeepGPUNodesForGPUPods != nil {
		v := *c.KeepGPUNodesForGPUPods
		c.KeepGPUNodesForGPUPods = &v
	}
	return &c
}
