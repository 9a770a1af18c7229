package spotrisk

import (
	"fmt"
	"maps"
	"math"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/statustext"
)

// Pod annotations that describe how a workload tolerates Spot. Tenants set
// them; docs/spot.md explains why none of them lets a pod jump a queue or a
// budget.
const (
	AnnotationWorkload           = "penny.dev/workload"
	AnnotationSpot               = "penny.dev/spot"
	AnnotationCheckpointInterval = "penny.dev/checkpoint-interval"
	AnnotationMaxReclaimRisk     = "penny.dev/max-reclaim-risk"
	AnnotationExpectedRuntime    = "penny.dev/expected-runtime"
	AnnotationFallbackAfter      = "penny.dev/fallback-after"
)

// Annotations lists every annotation the plugin reads.
var Annotations = []string{AnnotationWorkload, AnnotationSpot, AnnotationCheckpointInterval,
	AnnotationMaxReclaimRisk, AnnotationExpectedRuntime, AnnotationFallbackAfter}

// Workload is what a pod does, as far as Spot is concerned.
type Workload string

const (
	Training  Workload = "training"
	Inference Workload = "inference"
	Batch     Workload = "batch"
	Dev       Workload = "dev"
)

// Policy is where a pod may run.
type Policy string

const (
	// Never: on-demand or reserved capacity only.
	Never Policy = "never"
	// Avoid: any capacity, but Spot scores last. Not an annotation value:
	// it is the default for training that checkpoints nothing and is not
	// short.
	Avoid Policy = "avoid"
	// Allow: any capacity, scored by expected cost of useful work.
	Allow Policy = "allow"
	// Prefer: Spot or reserved; on-demand only after waiting FallbackAfter
	// for Spot capacity.
	Prefer Policy = "prefer"
	// Only: Spot only.
	Only Policy = "only"
)

// Class is everything the plugin decides from a pod.
type Class struct {
	Workload Workload
	Policy   Policy
	// Why says where the policy came from, for status messages and events.
	Why  string
	Work pricing.Work
	// MaxMonthlyRisk is the highest monthly reclaim probability of a Spot
	// pool the pod accepts; 1 accepts any.
	MaxMonthlyRisk float64
	FallbackAfter  time.Duration
}

// Waits reports whether the pod first waits FallbackAfter for the capacity
// its policy prefers: Spot for prefer, capacity that is not Spot for avoid.
// Scoring alone would not hold the preference in an elastic cluster: the
// scheduler binds to any node with room now rather than wait minutes for the
// autoscaler to bring the preferred kind.
func (c Class) Waits() bool {
	return c.Policy == Prefer || c.Policy == Avoid
}

// FallbackFrom is true for capacity that a pod takes only once its wait is
// over: on-demand for prefer, Spot for avoid. Reserved capacity is paid for
// and never waited out.
func (c Class) FallbackFrom(capacity pricing.Capacity) bool {
	switch c.Policy {
	case Prefer:
		return capacity.Type == pricing.OnDemand
	case Avoid:
		return capacity.IsSpot()
	}
	return false
}

// FellBack reports whether a pod of the class placed on capacity fell back
// to it: it waited FallbackAfter for the capacity its policy prefers and then
// took the other. With FallbackAfter 0s it never waited and took what it
// found, as an allow pod does: that says nothing about whether the capacity
// it prefers was there, and is not counted as a fallback.
func (c Class) FellBack(capacity pricing.Capacity) bool {
	return c.Waits() && c.FallbackAfter > 0 && c.FallbackFrom(capacity)
}

// LongLived is true of services (inference and dev pods serve until
// stopped): pods like the ones running now keep coming, as replicas and
// rollouts, so an autoscaler counts the running services among the pods
// that could fill a new node for a service. Running jobs end within hours
// and say little about what comes next: they never count, and for a job
// only the waiting pods do. On the openb replay counting running jobs too
// cost Penny 3% (0.585x default's bill against 0.602x), and 0.3-6% on ten
// of twelve training traces of the generator.
func (c Class) LongLived() bool {
	return c.Workload == Inference || c.Workload == Dev
}

// wait names the capacity a waiting pod waits for and the one it falls
// back to, for messages.
func (c Class) wait() (want, fallback string) {
	if c.Policy == Avoid {
		return "on-demand or reserved", "Spot"
	}
	return "Spot", "on-demand"
}

// FollowsRisk reports whether which Spot pools the class accepts depends on
// their estimated reclaim rates (a risk limit, or training without
// checkpoints), so that a verdict on a pool cannot be kept.
func (c Class) FollowsRisk() bool {
	return c.MaxMonthlyRisk < 1 || c.Policy == Avoid
}

// AnnotationError is a malformed annotation: which one, what it held and
// how to fix it.
type AnnotationError struct {
	Annotation, Value, Fix string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%s is not valid: %s", e.Annotation, statustext.Quote(e.Value), e.Fix)
}

// spotKeys is what the pod says of the keys the plugin reads: its
// annotations, and a key it sets as a label instead, as PennyGang reads its
// keys from either. Ignored, a label penny.dev/spot=never let the pod onto
// Spot, the opposite of what its owner wrote. A key set both ways with two
// values cannot be read.
func spotKeys(pod *corev1.Pod) (map[string]string, error) {
	keys, copied := pod.Annotations, false
	for _, key := range Annotations {
		v, isLabel := pod.Labels[key]
		if !isLabel {
			continue
		}
		if a, ok := pod.Annotations[key]; ok {
			if a != v {
				return nil, &AnnotationError{key, a, "the pod's label " + key + " says " + statustext.Quote(v) + ": keep one of the two, or give both the same value"}
			}
			continue
		}
		if !copied {
			// The pod's own map is the informer's: not to be written.
			keys, copied = make(map[string]string, len(pod.Annotations)+1), true
			maps.Copy(keys, pod.Annotations)
		}
		keys[key] = v
	}
	return keys, nil
}

// classify reads a pod's class from its annotations, priority and owner,
// falling back to the defaults users expect: inference and high-priority
// pods never on Spot, checkpointing training prefers Spot, training without
// checkpoints avoids Spot unless it is short.
func classify(pod *corev1.Pod, args *Args) (Class, error) {
	c := Class{MaxMonthlyRisk: 1, FallbackAfter: args.FallbackAfter.Duration}
	c.Work.RestartOverhead = args.RestartOverhead.Duration
	ann, err := spotKeys(pod)
	if err != nil {
		return c, err
	}

	if v, ok := ann[AnnotationWorkload]; ok {
		switch w := Workload(strings.TrimSpace(v)); w {
		case Training, Inference, Batch, Dev:
			c.Workload = w
		default:
			return c, &AnnotationError{AnnotationWorkload, v, "use one of training, inference, batch, dev"}
		}
	} else {
		c.Workload = workloadFromOwner(pod)
	}
	if c.Work.CheckpointInterval, err = durationAnnotation(ann, AnnotationCheckpointInterval, "a Go duration such as 30m; remove it if the workload does not checkpoint"); err != nil {
		return c, err
	}
	if c.Work.ExpectedRuntime, err = durationAnnotation(ann, AnnotationExpectedRuntime, "a Go duration such as 6h"); err != nil {
		return c, err
	}
	// 0 is how an undeclared runtime reads: taken, "0s" stood for the
	// deadline, the learned run length or unknownRuntime, none of which the
	// pod said.
	if v, ok := ann[AnnotationExpectedRuntime]; ok && c.Work.ExpectedRuntime == 0 {
		return c, &AnnotationError{AnnotationExpectedRuntime, v, "use a positive Go duration such as 6h; remove it if the runtime is not known"}
	}
	if c.Work.ExpectedRuntime == 0 && pod.Spec.ActiveDeadlineSeconds != nil && *pod.Spec.ActiveDeadlineSeconds > 0 {
		// A deadline of "forever" (9999999999 s) overflows a Duration:
		// wrapped, it read as a negative runtime (let onto any Spot pool)
		// or a tiny one ("short training").
		c.Work.ExpectedRuntime = time.Duration(min(*pod.Spec.ActiveDeadlineSeconds, int64(math.MaxInt64/time.Second))) * time.Second
	}
	// A malformed gang is PennyGang's to report; priced alone here.
	if spec, ok, err := gang.Of(pod); err == nil && ok {
		c.Work.Nodes = int(spec.MinMember)
	}
	if d, err := durationAnnotation(ann, AnnotationFallbackAfter, "a Go duration such as 15m (0s falls back at once)"); err != nil {
		return c, err
	} else if _, ok := ann[AnnotationFallbackAfter]; ok {
		c.FallbackAfter = d
	}
	if v, ok := ann[AnnotationMaxReclaimRisk]; ok {
		r, err := parseRisk(v)
		if err != nil {
			// No percent sign in the fix: kube-scheduler's FailedScheduling
			// event takes the status message as a format string.
			return c, &AnnotationError{AnnotationMaxReclaimRisk, v, "give the highest monthly reclaim frequency of a Spot pool the pod accepts, as a fraction between 0 and 1 (0.1) or as a percentage with its percent sign (10 and the sign)"}
		}
		c.MaxMonthlyRisk = r
	}
	c.Work.Stateless = c.Workload == Inference || c.Workload == Dev

	if v, ok := ann[AnnotationSpot]; ok {
		switch p := Policy(strings.TrimSpace(v)); p {
		case Never, Allow, Prefer, Only:
			c.Policy, c.Why = p, fmt.Sprintf("%s=%s", AnnotationSpot, p)
		default:
			return c, &AnnotationError{AnnotationSpot, v, "use one of never, prefer, allow, only"}
		}
		return c, nil
	}
	prio := int32(0)
	if pod.Spec.Priority != nil {
		prio = *pod.Spec.Priority
	}
	switch {
	case prio >= *args.NeverSpotPriority:
		c.Policy, c.Why = Never, fmt.Sprintf("priority %d >= %d", prio, *args.NeverSpotPriority)
	case c.Workload == Inference:
		c.Policy, c.Why = Never, "inference workload"
	case c.Workload == Training && c.Work.CheckpointInterval > 0:
		c.Policy, c.Why = Prefer, "checkpointing training"
	case c.Workload == Training && c.Work.ExpectedRuntime > 0 && c.Work.ExpectedRuntime <= args.ShortRuntime.Duration:
		c.Policy, c.Why = Allow, "short training"
	case c.Workload == Training:
		c.Policy, c.Why = Avoid, "training without checkpoints"
	default:
		c.Policy, c.Why = Allow, string(c.Workload)+" workload"
	}
	return c, nil
}

// classify is the package's classify with a native PodGroup's size, which
// lives on the PodGroup, not on its members: a gang of k nodes risks k
// nodes' reclaims (the expected-loss rule, Score).
func (pl *SpotRisk) classify(pod *corev1.Pod) (Class, error) {
	c, err := classify(pod, pl.args)
	if err != nil || c.Work.Nodes > 0 || pl.handle == nil {
		return c, err
	}
	ref, ok := gang.RefOf(pod)
	if !ok || ref.Source != gang.SourcePodGroup {
		return c, nil
	}
	if pgm := pl.handle.PodGroupManager(); pgm != nil {
		if pg, err := pgm.PodGroups().Get(ref.Namespace, ref.Name); err == nil && pg.Spec.SchedulingPolicy.Gang != nil {
			c.Work.Nodes = int(pg.Spec.SchedulingPolicy.Gang.MinCount)
		}
	}
	return c, nil
}

// workloadFromOwner guesses the workload of a pod that does not say: pods of
// Deployments and StatefulSets serve, pods of Jobs and bare pods run to
// completion.
func workloadFromOwner(pod *corev1.Pod) Workload {
	for _, o := range pod.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		switch o.Kind {
		case "ReplicaSet", "StatefulSet", "Deployment", "ReplicationController", "DaemonSet":
			return Inference
		}
	}
	return Batch
}

func durationAnnotation(ann map[string]string, key, fix string) (time.Duration, error) {
	v, ok := ann[key]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0, &AnnotationError{key, v, "use " + fix}
	}
	return d, nil
}

// parseRisk reads "10%" or "0.1".
func parseRisk(v string) (float64, error) {
	s := strings.TrimSpace(v)
	scale := 1.0
	if strings.HasSuffix(s, "%") {
		s, scale = strings.TrimSpace(strings.TrimSuffix(s, "%")), 100
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, err
	}
	f /= scale
	// NaN passes no comparison: it would switch the limit off.
	if !(f >= 0 && f <= 1) {
		return 0, fmt.Errorf("out of range")
	}
	return f, nil
}

// ClassOf is the class the plugin gives a pod under args (nil: defaults).
// The simulator uses it to report where each class ran.
func ClassOf(pod *corev1.Pod, args *Args) (Class, error) {
	if args == nil {
		args = &Args{}
	}
	a := *args
	a.SetDefaults()
	return classify(pod, &a)
}
