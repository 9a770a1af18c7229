package gang

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/pennysched/penny/pkg/pluginargs"
)

// Args configure the gang plugin through the profile's pluginConfig:
//
//	pluginConfig:
//	- name: PennyGang
//	  args:
//	    permitTimeout: 60s
//	    sameZone: true
type Args struct {
	metav1.TypeMeta `json:",inline"`

	// PermitTimeout is how long members already placed wait for the rest of
	// their gang once the gang is admitted. When it runs out the whole gang is
	// released and backs off. Default 60s.
	PermitTimeout *metav1.Duration `json:"permitTimeout,omitempty"`
	// MaxPermitTimeout caps a gang's own penny.dev/gang-timeout, so a tenant
	// cannot hold capacity idle for longer than the cluster allows.
	// Default 10m.
	MaxPermitTimeout *metav1.Duration `json:"maxPermitTimeout,omitempty"`
	// Backoff is how long a released gang waits before its next attempt; it
	// doubles with each consecutive failure up to MaxBackoff. Default 2s.
	Backoff *metav1.Duration `json:"backoff,omitempty"`
	// MaxBackoff bounds Backoff. Default 1m.
	MaxBackoff *metav1.Duration `json:"maxBackoff,omitempty"`
	// SameZone places all of a gang's members in one zone unless the gang
	// says otherwise (penny.dev/gang-same-zone). Default true.
	SameZone *bool `json:"sameZone,omitempty"`
	// SameCapacityType places all of a gang's members on one capacity type
	// (spot, on-demand, reserved) unless the gang says otherwise
	// (penny.dev/gang-same-capacity-type). Default true.
	SameCapacityType *bool `json:"sameCapacityType,omitempty"`
	// ZoneLabel is the node label that names a node's zone.
	// Default topology.kubernetes.io/zone.
	ZoneLabel string `json:"zoneLabel,omitempty"`
}

// Defaults.
const (
	DefaultPermitTimeout    = 60 * time.Second
	DefaultMaxPermitTimeout = 10 * time.Minute
	DefaultBackoff          = 2 * time.Second
	DefaultMaxBackoff       = time.Minute
)

// MaxFrameworkPermitWait is the longest wait at Permit the scheduler
// framework allows (maxTimeout in k8s.io/kubernetes
// pkg/scheduler/framework/runtime/framework.go): a longer gang timeout would
// be cut short by the framework, with another message.
const MaxFrameworkPermitWait = 15 * time.Minute

// SetDefaults fills every unset field.
func (a *Args) SetDefaults() {
	setDuration(&a.PermitTimeout, DefaultPermitTimeout)
	setDuration(&a.MaxPermitTimeout, DefaultMaxPermitTimeout)
	setDuration(&a.Backoff, DefaultBackoff)
	setDuration(&a.MaxBackoff, DefaultMaxBackoff)
	if a.SameZone == nil {
		t := true
		a.SameZone = &t
	}
	if a.SameCapacityType == nil {
		t := true
		a.SameCapacityType = &t
	}
	if a.ZoneLabel == "" {
		a.ZoneLabel = corev1.LabelTopologyZone
	}
}

func setDuration(d **metav1.Duration, def time.Duration) {
	if *d == nil {
		*d = &metav1.Duration{Duration: def}
	}
}

// Validate checks defaulted args.
func (a *Args) Validate() error {
	var errs field.ErrorList
	positive := func(name string, d *metav1.Duration) {
		if d.Duration <= 0 {
			errs = append(errs, field.Invalid(field.NewPath(name), d.Duration.String(), "must be a positive duration such as 30s"))
		}
	}
	positive("permitTimeout", a.PermitTimeout)
	positive("maxPermitTimeout", a.MaxPermitTimeout)
	positive("backoff", a.Backoff)
	positive("maxBackoff", a.MaxBackoff)
	if a.MaxPermitTimeout.Duration > MaxFrameworkPermitWait {
		errs = append(errs, field.Invalid(field.NewPath("maxPermitTimeout"), a.MaxPermitTimeout.Duration.String(),
			fmt.Sprintf("must be at most %s: kube-scheduler ends every wait at Permit after %s, whatever a plugin asks", MaxFrameworkPermitWait, MaxFrameworkPermitWait)))
	}
	if a.PermitTimeout.Duration > a.MaxPermitTimeout.Duration {
		errs = append(errs, field.Invalid(field.NewPath("permitTimeout"), a.PermitTimeout.Duration.String(),
			fmt.Sprintf("must not exceed maxPermitTimeout (%s)", a.MaxPermitTimeout.Duration)))
	}
	if a.Backoff.Duration > a.MaxBackoff.Duration {
		errs = append(errs, field.Invalid(field.NewPath("backoff"), a.Backoff.Duration.String(),
			fmt.Sprintf("must not exceed maxBackoff (%s)", a.MaxBackoff.Duration)))
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
	for _, d := range []**metav1.Duration{&c.PermitTimeout, &c.MaxPermitTimeout, &c.Backoff, &c.MaxBackoff} {
		if *d != nil {
			v := **d
			*d = &v
		}
	}
	for _, b := range []**bool{&c.SameZone, &c.SameCapacityType} {
		if *b != nil {
			v := **b
			*b = &v
		}
	}
	return &c
}
