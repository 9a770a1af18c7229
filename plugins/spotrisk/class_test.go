package spotrisk

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/statustext"
)

func defaults() *Args {
	a := &Args{}
	a.SetDefaults()
	return a
}

func TestClassifyDefaults(t *testing.T) {
	high := int32(2000000)
	ctrl := true
	cases := []struct {
		name   string
		ann    map[string]string
		prio   *int32
		owner  string
		policy Policy
		why    string
	}{
		{"inference never", map[string]string{AnnotationWorkload: "inference"}, nil, "", Never, "inference workload"},
		{"high priority never", map[string]string{AnnotationWorkload: "batch"}, &high, "", Never, "priority 2000000 >= 1000000"},
		{"checkpointing training prefers", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}, nil, "", Prefer, "checkpointing training"},
		{"training without checkpoints avoids", map[string]string{AnnotationWorkload: "training"}, nil, "", Avoid, "training without checkpoints"},
		{"short training allowed", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "90m"}, nil, "", Allow, "short training"},
		{"long training avoids", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "30h"}, nil, "", Avoid, "training without checkpoints"},
		{"batch allowed", map[string]string{AnnotationWorkload: "batch"}, nil, "", Allow, "batch workload"},
		{"dev allowed", map[string]string{AnnotationWorkload: "dev"}, nil, "", Allow, "dev workload"},
		{"deployment pods serve", nil, nil, "ReplicaSet", Never, "inference workload"},
		{"job pods are batch", nil, nil, "Job", Allow, "batch workload"},
		{"explicit spot wins over class", map[string]string{AnnotationWorkload: "inference", AnnotationSpot: "prefer"}, nil, "", Prefer, "penny.dev/spot=prefer"},
		{"explicit spot wins over priority", map[string]string{AnnotationSpot: "only"}, &high, "", Only, "penny.dev/spot=only"},
		{"explicit never", map[string]string{AnnotationWorkload: "batch", AnnotationSpot: "never"}, nil, "", Never, "penny.dev/spot=never"},
	}
	for _, c := range cases {
		p := pod("p", c.ann)
		p.Spec.Priority = c.prio
		if c.owner != "" {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: c.owner, Name: "o", Controller: &ctrl}}
		}
		got, err := classify(p, defaults())
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got.Policy != c.policy || got.Why != c.why {
			t.Errorf("%s: got %s (%s), want %s (%s)", c.name, got.Policy, got.Why, c.policy, c.why)
		}
	}
}

func TestClassifyWork(t *testing.T) {
	deadline := int64(3600)
	p := pod("p", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "20m",
		AnnotationMaxReclaimRisk: "12.5%", AnnotationFallbackAfter: "0s"})
	p.Spec.ActiveDeadlineSeconds = &deadline
	c, err := classify(p, defaults())
	if err != nil {
		t.Fatal(err)
	}
	if c.Work.CheckpointInterval != 20*time.Minute || c.Work.ExpectedRuntime != time.Hour || c.Work.Stateless ||
		c.MaxMonthlyRisk != 0.125 || c.FallbackAfter != 0 || c.Work.RestartOverhead != DefaultRestartOverhead {
		t.Fatalf("%+v", c)
	}
	inf, _ := classify(pod("p", map[string]string{AnnotationWorkload: "inference", AnnotationMaxReclaimRisk: "0.05"}), defaults())
	if !inf.Work.Stateless || inf.MaxMonthlyRisk != 0.05 || inf.FallbackAfter != DefaultFallbackAfter {
		t.Fatalf("%+v", inf)
	}
	if c.Work.Nodes != 0 {
		t.Fatalf("a pod alone counts %d nodes, want 0", c.Work.Nodes)
	}
	// A gang member is interrupted when any member's node goes.
	member := pod("m", map[string]string{AnnotationWorkload: "training"})
	member.Labels = map[string]string{gang.LabelName: "llm", gang.KeySize: "4"}
	if c, err := classify(member, defaults()); err != nil || c.Work.Nodes != 4 {
		t.Fatalf("gang of 4: nodes %d, err %v", c.Work.Nodes, err)
	}
}

// A deadline that stands for "forever" is a long run, not a negative or a
// tiny one: in nanoseconds it overflowed a Duration and wrapped.
func TestHugeActiveDeadlineIsALongRun(t *testing.T) {
	for _, secs := range []int64{9999999999, 18446744074, math.MaxInt64} {
		p := pod("p", map[string]string{AnnotationWorkload: "training"})
		p.Spec.ActiveDeadlineSeconds = &secs
		c, err := classify(p, defaults())
		if err != nil {
			t.Fatal(err)
		}
		if c.Policy != Avoid || c.Work.ExpectedRuntime < 100*365*24*time.Hour {
			t.Errorf("activeDeadlineSeconds %d: %s (%s), runtime %v; want avoid and a runtime of centuries", secs, c.Policy, c.Why, c.Work.ExpectedRuntime)
		}
	}
	// And the expected-loss rule keeps it off Spot pools, which a negative
	// runtime passed.
	secs := int64(9999999999)
	p := waited(pod("forever", map[string]string{AnnotationWorkload: "training"}))
	p.Spec.ActiveDeadlineSeconds = &secs
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, node("spot-a", pricing.Spot, "us-east-1a"))
	r := e.schedule(t, p)
	if len(r.feasible) != 0 {
		t.Fatalf("feasible %v, want none", r.feasible)
	}
	expectContains(t, "FitError", r.fitError, "would expect to lose more than 2 percent of its work to reclaims")
}

func TestClassifyMalformedAnnotationsNameTheFix(t *testing.T) {
	cases := map[string]string{
		AnnotationSpot:               "sometimes",
		AnnotationWorkload:           "serving",
		AnnotationCheckpointInterval: "hourly",
		AnnotationExpectedRuntime:    "-1h",
		AnnotationFallbackAfter:      "soon",
		AnnotationMaxReclaimRisk:     "150%",
	}
	for key, value := range cases {
		_, err := classify(pod("p", map[string]string{key: value}), defaults())
		if err == nil {
			t.Errorf("%s=%s: want error", key, value)
			continue
		}
		msg := err.Error()
		if named := "annotation " + key + "=" + statustext.Quote(value) + " is not valid: "; !strings.Contains(msg, named+"use") && !strings.Contains(msg, named+"give") {
			t.Errorf("%s=%s: message does not name the annotation and the fix: %s", key, value, msg)
		}
	}
}

// A risk limit that is not a number is refused (NaN passed the range check
// and switched the limit off), and the fix carries no percent sign: the
// FailedScheduling event reads the status message as a format string.
func TestMalformedRiskLimitIsRefusedWithAPrintableFix(t *testing.T) {
	for _, v := range []string{"NaN", "nan%", "ten"} {
		_, err := classify(pod("p", map[string]string{AnnotationMaxReclaimRisk: v}), defaults())
		if err == nil {
			t.Errorf("%s=%s: want error", AnnotationMaxReclaimRisk, v)
			continue
		}
		fix := strings.TrimPrefix(err.Error(), fmt.Sprintf("annotation %s=%s is not valid: ", AnnotationMaxReclaimRisk, statustext.Quote(v)))
		if fix == err.Error() || strings.Contains(fix, "%") {
			t.Errorf("%s=%s: %q: want the annotation named and a fix without a percent sign", AnnotationMaxReclaimRisk, v, err)
		}
	}
}

// A Spot key set as a label was ignored: penny.dev/spot=never as a label let
// the pod onto Spot with no word of why. It is read as PennyGang reads its
// keys, from either; set both ways with two values it cannot be read.
func TestClassifyReadsASpotKeySetAsALabel(t *testing.T) {
	p := pod("p", nil)
	p.Labels = map[string]string{AnnotationSpot: "never", AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}
	c, err := classify(p, defaults())
	if err != nil || c.Policy != Never || c.Workload != Training || c.Work.CheckpointInterval != 30*time.Minute {
		t.Errorf("keys set as labels: %+v, %v; want never, training, a 30m checkpoint interval", c, err)
	}
	if p.Annotations != nil {
		t.Errorf("classify wrote the pod's annotations: %v", p.Annotations)
	}
	p.Annotations = map[string]string{AnnotationSpot: "never"}
	if c, err := classify(p, defaults()); err != nil || c.Policy != Never {
		t.Errorf("the same value as a label and an annotation: %v, %v", c.Policy, err)
	}
	p.Annotations[AnnotationSpot] = "allow"
	_, err = classify(p, defaults())
	if err == nil || !strings.Contains(err.Error(), `annotation penny.dev/spot="allow" is not valid: the pod's label penny.dev/spot says "never": keep one of the two`) {
		t.Errorf("a label and an annotation that disagree: %v", err)
	}
	if len(p.Annotations) != 1 {
		t.Errorf("classify wrote the pod's annotations: %v", p.Annotations)
	}
	p.Labels[AnnotationSpot] = "sometimes"
	delete(p.Annotations, AnnotationSpot)
	if _, err := classify(p, defaults()); err == nil || !strings.Contains(err.Error(), `penny.dev/spot="sometimes" is not valid`) {
		t.Errorf("a malformed value set as a label: %v", err)
	}
}

// A runtime of 0 read as none declared: the pod was priced and kept off
// Spot pools by a runtime it never gave.
func TestClassifyRefusesAZeroExpectedRuntime(t *testing.T) {
	for _, v := range []string{"0", "0s", " 0h "} {
		_, err := classify(pod("p", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: v}), defaults())
		if err == nil || !strings.Contains(err.Error(), AnnotationExpectedRuntime+"="+statustext.Quote(v)) || !strings.Contains(err.Error(), "positive") {
			t.Errorf("%s=%q: got %v, want an error naming it and asking for a positive duration", AnnotationExpectedRuntime, v, err)
		}
	}
}
