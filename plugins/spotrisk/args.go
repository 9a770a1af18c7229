package spotrisk

import (
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/pluginargs"
	"github.com/pennysched/penny/pkg/pricing"
)

// Args configure SpotRisk in the profile's pluginConfig. Fields left out
// take the defaults documented on each; docs/spot.md explains every knob.
// Where 0 means something of its own (fallbackAfter: 0s falls back at
// once, restartOverhead: 0s is none, shortRuntime: 0s lets no training
// without checkpoints onto Spot freely, unknownRuntime: 0s and
// maxExpectedLoss: 0 are refused), the field is a pointer, as in-tree
// plugin args do, so that a 0 written in the config is not read as unset.
type Args struct {
	// FallbackAfter is how long a Spot-preferring pod waits for Spot
	// capacity before it may run on on-demand capacity, and training without
	// checkpoints (avoid) for capacity that is not Spot before it may run on
	// Spot. Pods override it with penny.dev/fallback-after. Default 10m;
	// 0s falls back at once, as the annotation's 0s does.
	FallbackAfter *metav1.Duration `json:"fallbackAfter,omitempty"`
	// RestartOverhead is the time a reclaimed pod needs to be useful again
	// (rescheduling, image pull, loading a model or checkpoint). Default 5m;
	// 0s is none.
	RestartOverhead *metav1.Duration `json:"restartOverhead,omitempty"`
	// UnknownRuntime stands in for the runtime of a pod that checkpoints
	// nothing and declares no penny.dev/expected-runtime, where nothing
	// better is known: for training, what training runs in the cluster
	// typically last (pricing.RunLengths) comes first once learned. Default
	// 4h; must be positive (a runtime of 0 would expect no loss on any
	// pool).
	UnknownRuntime *metav1.Duration `json:"unknownRuntime,omitempty"`
	// ShortRuntime is the longest expected runtime at which training without
	// checkpoints still goes to Spot freely. Default 2h; 0s: none does.
	ShortRuntime *metav1.Duration `json:"shortRuntime,omitempty"`
	// MaxExpectedLoss is the largest share of its work that training
	// without checkpoints may expect to lose to reclaims on a Spot pool:
	// reclaim rate x nodes x runtime / 2, the runtime being the one the pod
	// declares, else what training runs in the cluster typically last
	// (pricing.RunLengths), else UnknownRuntime. Pools above it are
	// filtered out for such pods. A fraction in (0, 1]. Default 0.02, the
	// share of useful work a replay may lose (docs/spot.md).
	MaxExpectedLoss *float64 `json:"maxExpectedLoss,omitempty"`
	// NeverSpotPriority: pods at or above this priority never run on Spot
	// unless they say penny.dev/spot otherwise. Default 1000000.
	NeverSpotPriority *int32 `json:"neverSpotPriority,omitempty"`
	// ReclaimTaints are taint keys that mark a node about to be reclaimed;
	// no pod is placed there. Default: the AWS node termination handler's,
	// Karpenter's and Penny's agent's taints.
	ReclaimTaints []string `json:"reclaimTaints,omitempty"`
	// Catalog is where prices come from when the scheduler is not handed a
	// price book: a file (reloaded on change) or a ConfigMap.
	Catalog CatalogSource `json:"catalog,omitempty"`
	// ReturnToSpot moves work that fell back to on-demand capacity back to
	// Spot once Spot has room for it again (docs/spot.md, "Moving work
	// back to Spot").
	ReturnToSpot ReturnToSpot `json:"returnToSpot,omitempty"`
}

// ReturnToSpot configures moving prefer pods that fell back to on-demand
// back to Spot: a checkpoint on request, an eviction, and the replacement
// placed on Spot.
type ReturnToSpot struct {
	// Enabled turns moves on. Default true.
	Enabled *bool `json:"enabled,omitempty"`
	// Every is how often the scheduler looks for a move; it makes at most
	// one a round, so that the Spot room it counted on is not promised
	// twice. Default 10m; must be positive.
	Every *metav1.Duration `json:"every,omitempty"`
	// MinRunning is how long a run must have lasted on on-demand capacity
	// before it is moved: a pod that just started has loaded its model and
	// data; moving it at once wastes that. Default 15m.
	MinRunning *metav1.Duration `json:"minRunning,omitempty"`
	// MinRemaining is the least expected remaining runtime worth a move.
	// Default 1h.
	MinRemaining *metav1.Duration `json:"minRemaining,omitempty"`
	// Cooldown is how long a moved workload is left alone before it may be
	// moved again, should it fall back once more. Default 6h.
	Cooldown *metav1.Duration `json:"cooldown,omitempty"`
	// CheckpointTimeout is how long a pod has to write the checkpoint it is
	// asked for; one that has not written it by then is not evicted.
	// Default 10m; must be positive.
	CheckpointTimeout *metav1.Duration `json:"checkpointTimeout,omitempty"`
}

// CatalogSource names a price catalog.
type CatalogSource struct {
	File      string        `json:"file,omitempty"`
	ConfigMap *ConfigMapRef `json:"configMap,omitempty"`
}

// ConfigMapRef names a ConfigMap key holding a price catalog.
type ConfigMapRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Key defaults to catalog.yaml.
	Key string `json:"key,omitempty"`
}

// Defaults.
const (
	DefaultFallbackAfter     = 10 * time.Minute
	DefaultRestartOverhead   = 5 * time.Minute
	DefaultUnknownRuntime    = 4 * time.Hour
	DefaultShortRuntime      = 2 * time.Hour
	DefaultMaxExpectedLoss   = 0.02
	DefaultNeverSpotPriority = int32(1000000)
	DefaultCatalogKey        = "catalog.yaml"

	DefaultReturnEvery             = 10 * time.Minute
	DefaultReturnMinRunning        = 15 * time.Minute
	DefaultReturnMinRemaining      = time.Hour
	DefaultReturnCooldown          = 6 * time.Hour
	DefaultReturnCheckpointTimeout = 10 * time.Minute
)

// SetDefaults fills zero fields.
func (a *Args) SetDefaults() {
	if a.FallbackAfter == nil {
		a.FallbackAfter = &metav1.Duration{Duration: DefaultFallbackAfter}
	}
	if a.RestartOverhead == nil {
		a.RestartOverhead = &metav1.Duration{Duration: DefaultRestartOverhead}
	}
	if a.UnknownRuntime == nil {
		a.UnknownRuntime = &metav1.Duration{Duration: DefaultUnknownRuntime}
	}
	if a.ShortRuntime == nil {
		a.ShortRuntime = &metav1.Duration{Duration: DefaultShortRuntime}
	}
	if a.MaxExpectedLoss == nil {
		l := DefaultMaxExpectedLoss
		a.MaxExpectedLoss = &l
	}
	if a.NeverSpotPriority == nil {
		p := DefaultNeverSpotPriority
		a.NeverSpotPriority = &p
	}
	if a.ReclaimTaints == nil {
		a.ReclaimTaints = append([]string(nil), pricing.ReclaimTaintKeys...)
	}
	a.ReturnToSpot.setDefaults()
	if a.Catalog.ConfigMap != nil && a.Catalog.ConfigMap.Key == "" {
		a.Catalog.ConfigMap.Key = DefaultCatalogKey
	}
}

// Validate checks defaulted args the way in-tree plugin args are checked.
func (a *Args) Validate() error {
	var errs field.ErrorList
	p := field.NewPath("args")
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"fallbackAfter", a.FallbackAfter.Duration}, {"restartOverhead", a.RestartOverhead.Duration},
		{"unknownRuntime", a.UnknownRuntime.Duration}, {"shortRuntime", a.ShortRuntime.Duration},
		{"returnToSpot.every", a.ReturnToSpot.Every.Duration}, {"returnToSpot.minRunning", a.ReturnToSpot.MinRunning.Duration},
		{"returnToSpot.minRemaining", a.ReturnToSpot.MinRemaining.Duration}, {"returnToSpot.cooldown", a.ReturnToSpot.Cooldown.Duration},
		{"returnToSpot.checkpointTimeout", a.ReturnToSpot.CheckpointTimeout.Duration}} {
		if d.v < 0 {
			errs = append(errs, field.Invalid(p.Child(d.name), d.v.String(), "must not be negative"))
		}
	}
	if a.UnknownRuntime.Duration == 0 {
		errs = append(errs, field.Invalid(p.Child("unknownRuntime"), "0s", "must be positive: it stands in for a runtime no pod declared; leave it out for the default 4h"))
	}
	if a.ReturnToSpot.Every.Duration == 0 {
		errs = append(errs, field.Invalid(p.Child("returnToSpot", "every"), "0s", "must be positive; set returnToSpot.enabled: false to turn moves off, or leave it out for the default 10m"))
	}
	if a.ReturnToSpot.CheckpointTimeout.Duration == 0 {
		errs = append(errs, field.Invalid(p.Child("returnToSpot", "checkpointTimeout"), "0s", "must be positive: a pod needs time to write its checkpoint; leave it out for the default 10m"))
	}
	if d := a.ReturnToSpot.CheckpointTimeout.Duration; d > telemetryv1.MaxCommandDeadline {
		errs = append(errs, field.Invalid(p.Child("returnToSpot", "checkpointTimeout"), d.String(), fmt.Sprintf("must be at most %v, the furthest deadline a checkpoint command may carry; leave it out for the default 10m", telemetryv1.MaxCommandDeadline)))
	}
	if l := *a.MaxExpectedLoss; !(l > 0 && l <= 1) {
		errs = append(errs, field.Invalid(p.Child("maxExpectedLoss"), l, "must be a fraction in (0, 1], e.g. 0.05 for 5%; leave it out for the default 0.02"))
	}
	for i, k := range a.ReclaimTaints {
		if k == "" {
			errs = append(errs, field.Invalid(p.Child("reclaimTaints").Index(i), k, "must be a taint key"))
		}
	}
	if a.Catalog.File != "" && a.Catalog.ConfigMap != nil {
		errs = append(errs, field.Invalid(p.Child("catalog"), "file and configMap", "give one source: file or configMap"))
	}
	if cm := a.Catalog.ConfigMap; cm != nil && (cm.Namespace == "" || cm.Name == "") {
		errs = append(errs, field.Required(p.Child("catalog", "configMap"), "namespace and name are required"))
	}
	return errs.ToAggregate()
}

// decodeArgs reads the plugin's args from the scheduler configuration:
// strictly, then defaulted and validated (pkg/pluginargs).
func decodeArgs(obj runtime.Object) (*Args, error) {
	return pluginargs.Decode[Args](Name, obj)
}

// GetObjectKind and DeepCopyObject let Args be passed as a runtime.Object,
// which is how the simulator and tests hand typed args to the factory.
func (a *Args) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (a *Args) DeepCopyObject() runtime.Object {
	c := *a
	rs := &c.ReturnToSpot
	for _, d := range []**metav1.Duration{&c.FallbackAfter, &c.RestartOverhead, &c.UnknownRuntime, &c.ShortRuntime,
		&rs.Every, &rs.MinRunning, &rs.MinRemaining, &rs.Cooldown, &rs.CheckpointTimeout} {
		if *d != nil {
			v := **d
			*d = &v
		}
	}
	if a.MaxExpectedLoss != nil {
		l := *a.MaxExpectedLoss
		c.MaxExpectedLoss = &l
	}
	if rs.Enabled != nil {
		on := *rs.Enabled
		rs.Enabled = &on
	}
	if a.NeverSpotPriority != nil {
		p := *a.NeverSpotPriority
		c.NeverSpotPriority = &p
	}
	c.ReclaimTaints = slices.Clone(a.ReclaimTaints) // an empty list stays one: no reclaim taints, not the defaults
	if a.Catalog.ConfigMap != nil {
		cm := *a.Catalog.ConfigMap
		c.Catalog.ConfigMap = &cm
	}
	return &c
}

func (r *ReturnToSpot) setDefaults() {
	if r.Enabled == nil {
		on := true
		r.Enabled = &on
	}
	for _, d := range []struct {
		f   **metav1.Duration
		def time.Duration
	}{{&r.Every, DefaultReturnEvery}, {&r.MinRunning, DefaultReturnMinRunning}, {&r.MinRemaining, DefaultReturnMinRemaining},
		{&r.Cooldown, DefaultReturnCooldown}, {&r.CheckpointTimeout, DefaultReturnCheckpointTimeout}} {
		if *d.f == nil {
			*d.f = &metav1.Duration{Duration: d.def}
		}
	}
}
