// Package gang says which gang a pod belongs to and finds the gang's other
// members. The scheduler's gang plugin and the node agent's reclaim flow both
// read gangs through it, so both agree on who is in a gang.
//
// A gang is named one of two ways:
//   - natively, by pod.spec.schedulingGroup.podGroupName (a scheduling.k8s.io
//     PodGroup, on clusters with the GenericWorkload feature gate); its size
//     lives on the PodGroup object, not on the pod;
//   - by Penny's convention, the label penny.dev/gang (the name) with
//     penny.dev/gang-size (the minimum number of members that must run
//     together) and optionally penny.dev/gang-timeout, as labels or
//     annotations.
//
// A pod that names a native PodGroup belongs to that group; Penny's label is
// then ignored. Gangs never cross namespaces.
package gang

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/statustext"
)

// Penny's gang convention. The name must be a label (so members can be
// listed by selector); the other keys are read from labels first, then from
// annotations.
const (
	// LabelName names the gang. Every member carries the same value.
	LabelName = "penny.dev/gang"
	// KeySize is the minimum number of members that must be placed together
	// (an integer >= 1). Required with LabelName.
	KeySize = "penny.dev/gang-size"
	// KeyTimeout bounds how long placed members wait for the rest once the
	// gang has been admitted (a Go duration such as "90s" or whole seconds).
	// The scheduler caps it with its own maximum.
	KeyTimeout = "penny.dev/gang-timeout"
	// KeySameZone overrides, for this gang, whether all members must share one
	// zone ("true" or "false").
	KeySameZone = "penny.dev/gang-same-zone"
	// KeySameCapacityType overrides, for this gang, whether all members must
	// share one capacity type, such as spot or on-demand ("true" or "false").
	KeySameCapacityType = "penny.dev/gang-same-capacity-type"
)

// Keys are a gang's keys besides its name, each read from a label or an
// annotation.
var Keys = []string{KeySize, KeyTimeout, KeySameZone, KeySameCapacityType}

// allKeys are the name and Keys, what SameKeys compares on every pod update.
var allKeys = append([]string{LabelName}, Keys...)

// Source says how a gang is named.
type Source string

const (
	// SourceLabel is Penny's label convention.
	SourceLabel Source = "label"
	// SourcePodGroup is the native scheduling.k8s.io PodGroup.
	SourcePodGroup Source = "podgroup"
)

// Ref identifies one gang.
type Ref struct {
	Source    Source
	Namespace string
	Name      string
}

// Key is a string unique per gang, usable as a map key and an index value.
func (r Ref) Key() string {
	return string(r.Source) + ":" + r.Namespace + "/" + r.Name
}

// String is the gang as users name it: namespace/name.
func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// Spec is what one member says about its gang.
type Spec struct {
	Ref
	// MinMember is the number of members that must be placed together. It is
	// 0 for a native PodGroup, whose minCount lives on the PodGroup object.
	MinMember int32
	// Timeout is the member's penny.dev/gang-timeout; 0 when unset.
	Timeout time.Duration
	// SameZone and SameCapacityType are per-gang overrides of the
	// scheduler's placement defaults; nil when unset.
	SameZone         *bool
	SameCapacityType *bool
}

// Of reads the gang a pod belongs to. ok is false for a pod in no gang. An
// error means the pod asks to be in a gang but says so wrongly; it names the
// key and the fix.
func Of(pod *corev1.Pod) (spec Spec, ok bool, err error) {
	ref, ok := RefOf(pod)
	if !ok {
		if _, inAnnotations := pod.Annotations[LabelName]; inAnnotations {
			return Spec{}, false, fmt.Errorf("pod %s/%s sets %s as an annotation: set it as a label so the gang's members can be found", pod.Namespace, pod.Name, LabelName)
		}
		if _, found := pod.Labels[LabelName]; found {
			return Spec{}, false, fmt.Errorf("pod %s/%s has an empty %s label: give the gang a name, the same on every member", pod.Namespace, pod.Name, LabelName)
		}
		return Spec{}, false, nil
	}
	spec = Spec{Ref: ref}
	if ref.Source == SourcePodGroup {
		return spec, true, nil
	}

	sizeText, found := lookup(pod, KeySize)
	if !found {
		return Spec{}, false, fmt.Errorf("pod %s/%s is in gang %s but has no %s: set it (label or annotation) to the number of members that must run together", pod.Namespace, pod.Name, statustext.Quote(ref.Name), KeySize)
	}
	size, err := strconv.ParseInt(strings.TrimSpace(sizeText), 10, 32)
	if errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(strings.TrimSpace(sizeText), "-") {
		return Spec{}, false, fmt.Errorf("pod %s/%s: %s=%s is too large (at most %d): set it to the number of members that must run together", pod.Namespace, pod.Name, KeySize, statustext.Quote(sizeText), math.MaxInt32)
	}
	if err != nil || size < 1 {
		return Spec{}, false, fmt.Errorf("pod %s/%s: %s=%s is not a whole number >= 1: set it to the number of members that must run together", pod.Namespace, pod.Name, KeySize, statustext.Quote(sizeText))
	}
	spec.MinMember = int32(size)

	if text, found := lookup(pod, KeyTimeout); found {
		d, err := parseTimeout(text)
		if err != nil {
			return Spec{}, false, fmt.Errorf("pod %s/%s: %s=%s: %v", pod.Namespace, pod.Name, KeyTimeout, statustext.Quote(text), err)
		}
		spec.Timeout = d
	}
	if spec.SameZone, err = lookupBool(pod, KeySameZone); err != nil {
		return Spec{}, false, err
	}
	if spec.SameCapacityType, err = lookupBool(pod, KeySameCapacityType); err != nil {
		return Spec{}, false, err
	}
	return spec, true, nil
}

// IsMember reports whether pod belongs to the gang r, ignoring whether its
// other gang keys are well formed.
func (r Ref) IsMember(pod *corev1.Pod) bool {
	ref, ok := RefOf(pod)
	return ok && ref == r
}

// RefOf returns the gang a pod is in without validating its other gang keys,
// so that a member with a malformed size still counts as a member (and gets
// its error reported) instead of silently leaving the gang. Use Of for the
// full spec.
func RefOf(pod *corev1.Pod) (Ref, bool) {
	if sg := pod.Spec.SchedulingGroup; sg != nil && sg.PodGroupName != nil && *sg.PodGroupName != "" {
		return Ref{Source: SourcePodGroup, Namespace: pod.Namespace, Name: *sg.PodGroupName}, true
	}
	if name := pod.Labels[LabelName]; name != "" {
		return Ref{Source: SourceLabel, Namespace: pod.Namespace, Name: name}, true
	}
	return Ref{}, false
}

// SameKeys reports whether two versions of a pod say the same about their
// gang: the native group and every penny.dev/gang key, as label or
// annotation. An update that changes none of them cannot change what Of
// reads.
func SameKeys(a, b *corev1.Pod) bool {
	ga, gb := a.Spec.SchedulingGroup, b.Spec.SchedulingGroup
	if (ga == nil) != (gb == nil) || ga != nil && !ptr.Equal(ga.PodGroupName, gb.PodGroupName) {
		return false
	}
	for _, key := range allKeys {
		la, lok := a.Labels[key]
		lb, lbok := b.Labels[key]
		aa, aok := a.Annotations[key]
		ab, abok := b.Annotations[key]
		if la != lb || lok != lbok || aa != ab || aok != abok {
			return false
		}
	}
	return true
}

func lookup(pod *corev1.Pod, key string) (string, bool) {
	if v, ok := pod.Labels[key]; ok {
		return v, true
	}
	v, ok := pod.Annotations[key]
	return v, ok
}

func lookupBool(pod *corev1.Pod, key string) (*bool, error) {
	text, found := lookup(pod, key)
	if !found {
		return nil, nil
	}
	v, err := strconv.ParseBool(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %s=%s is not a boolean: use \"true\" or \"false\"", pod.Namespace, pod.Name, key, statustext.Quote(text))
	}
	return &v, nil
}

// parseTimeout accepts a Go duration ("90s", "2m") or whole seconds ("90"),
// since label values cannot hold every duration spelling.
func parseTimeout(text string) (time.Duration, error) {
	text = strings.TrimSpace(text)
	if secs, err := strconv.ParseInt(text, 10, 64); err == nil {
		if secs <= 0 {
			return 0, fmt.Errorf("must be positive: use a duration such as \"90s\" or whole seconds")
		}
		if secs > int64(math.MaxInt64/time.Second) {
			return 0, fmt.Errorf("too long: use a duration such as \"90s\" or whole seconds (the scheduler caps it with its maxPermitTimeout)")
		}
		return time.Duration(secs) * time.Second, nil
	}
	d, err := time.ParseDuration(text)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("not a positive duration: use a duration such as \"90s\" or whole seconds")
	}
	return d, nil
}
