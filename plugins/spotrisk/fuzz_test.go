package spotrisk

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pennysched/penny/pkg/gang"
)

// A pod's Spot annotations are written by tenants: whatever they hold, a
// pod is classified into a known workload and policy with a risk limit in
// [0,1] and durations >= 0, or refused with an AnnotationError that names
// an annotation the pod has, with its value, and carries no percent sign
// (kube-scheduler's FailedScheduling event reads the message as a format).
func FuzzClassify(f *testing.F) {
	type seed struct {
		workload, spot, checkpoint, risk, runtime, fallback, gangSize string
		present                                                       uint8
		deadline                                                      int64
	}
	for _, s := range []seed{
		{"training", "", "30m", "", "", "", "", 1<<0 | 1<<2, 0},
		{"training", "", "", "", "90m", "", "", 1<<0 | 1<<4, 0},
		{"inference", "prefer", "", "", "", "", "", 1<<0 | 1<<1, 0},
		{"batch", "only", "", "10%", "", "0s", "4", 0xff, 0},
		{"training", "", "", "0.05", "", "15m", "", 1<<0 | 1<<3 | 1<<5, 9999999999},
		{"serving", "sometimes", "hourly", "150%", "-1h", "soon", "x", 0xff, -1},
		{"", "", "", "NaN", "", "", "", 1 << 3, 0},
		{" dev ", " allow ", " 1h ", " 50 % ", " 2h ", " 1m ", "1", 0xff, 3600},
	} {
		f.Add(s.workload, s.spot, s.checkpoint, s.risk, s.runtime, s.fallback, s.gangSize, s.present, s.deadline)
	}
	args := defaults()
	f.Fuzz(func(t *testing.T, workload, spot, checkpoint, risk, runtime, fallback, gangSize string, present uint8, deadline int64) {
		ann := map[string]string{}
		for i, kv := range [][2]string{{AnnotationWorkload, workload}, {AnnotationSpot, spot}, {AnnotationCheckpointInterval, checkpoint},
			{AnnotationMaxReclaimRisk, risk}, {AnnotationExpectedRuntime, runtime}, {AnnotationFallbackAfter, fallback}} {
			if present&(1<<i) != 0 {
				ann[kv[0]] = kv[1]
			}
		}
		p := pod("p", ann)
		if present&(1<<6) != 0 {
			p.Labels = map[string]string{gang.LabelName: "g", gang.KeySize: gangSize}
		}
		if present&(1<<7) != 0 {
			p.Spec.ActiveDeadlineSeconds = &deadline
		}
		c, err := classify(p, args)
		if err != nil {
			var ae *AnnotationError
			if !errors.As(err, &ae) {
				t.Fatalf("%v: not an AnnotationError: %v", ann, err)
			}
			if v, ok := ann[ae.Annotation]; !ok || v != ae.Value || ae.Fix == "" {
				t.Fatalf("%v: error %+v names no annotation of the pod, or no fix", ann, ae)
			}
			if strings.Contains(err.Error(), "%") {
				t.Fatalf("%v: message %q holds a percent sign", ann, err)
			}
			return
		}
		if !slices.Contains([]Workload{Training, Inference, Batch, Dev}, c.Workload) ||
			!slices.Contains([]Policy{Never, Avoid, Allow, Prefer, Only}, c.Policy) || c.Why == "" {
			t.Fatalf("%v: class %+v", ann, c)
		}
		if !(c.MaxMonthlyRisk >= 0 && c.MaxMonthlyRisk <= 1) {
			t.Fatalf("%v: risk limit %g", ann, c.MaxMonthlyRisk)
		}
		if c.Work.CheckpointInterval < 0 || c.Work.ExpectedRuntime < 0 || c.FallbackAfter < 0 || c.Work.Nodes < 0 {
			t.Fatalf("%v: class %+v", ann, c)
		}
	})
}

// A risk limit that parses is in [0,1] and reads the same written back as
// a fraction or as a percentage.
func FuzzParseRisk(f *testing.F) {
	for _, s := range []string{"10%", "0.1", " 5 % ", "0", "1", "100%", "150%", "NaN", "nan%", "ten", "-0", "1e-3", "0x1p-2", "%", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, err := parseRisk(v)
		if err != nil {
			return
		}
		if !(r >= 0 && r <= 1) {
			t.Fatalf("%q: risk %g", v, r)
		}
		if back, err := parseRisk(strconv.FormatFloat(r, 'g', -1, 64)); err != nil || back != r {
			t.Fatalf("%q: risk %g written back reads %g, %v", v, r, back, err)
		}
		if back, err := parseRisk(strconv.FormatFloat(r*100, 'g', -1, 64) + "%"); err != nil || !(back >= 0 && back <= 1) || back-r > 1e-15 || r-back > 1e-15 {
			t.Fatalf("%q: risk %g written back as a percentage reads %g, %v", v, r, back, err)
		}
	})
}

// A duration annotation that parses is >= 0 and reads the same written
// back; one that does not names the annotation.
func FuzzDurationAnnotation(f *testing.F) {
	for _, s := range []string{"30m", "6h", "0s", " 90m ", "-1h", "-0s", "hourly", "1.5h", "9223372036854775807ns", "1h2m3.5s", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := durationAnnotation(map[string]string{AnnotationCheckpointInterval: v}, AnnotationCheckpointInterval, "a Go duration such as 30m")
		if err != nil {
			var ae *AnnotationError
			if !errors.As(err, &ae) || ae.Annotation != AnnotationCheckpointInterval || ae.Value != v {
				t.Fatalf("%q: error %v does not name the annotation and its value", v, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("%q: duration %v", v, d)
		}
		if back, err := durationAnnotation(map[string]string{AnnotationCheckpointInterval: d.String()}, AnnotationCheckpointInterval, ""); err != nil || back != d {
			t.Fatalf("%q: %v written back reads %v, %v", v, d, back, err)
		}
	})
}
