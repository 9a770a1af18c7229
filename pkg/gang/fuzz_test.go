package gang

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// A pod's gang keys are written by tenants, as labels or annotations:
// whatever they hold, Of agrees with RefOf on the gang, reads a size >= 1
// and a timeout that is not negative and reads back the same written as a
// duration, or refuses the pod with an error that names the pod and a gang
// key and reads the same as a format (kube-scheduler's FailedScheduling
// event takes it as one).
func FuzzOf(f *testing.F) {
	type seed struct {
		podGroup, name, size, timeout, sameZone, sameCapacity string
		// asLabel: bit i set puts key i of allKeys in the labels, else in
		// the annotations; present: bit i set gives the pod key i at all.
		asLabel, present uint8
	}
	for _, s := range []seed{
		{"", "llm", "8", "", "", "", 0x1f, 0x03},
		{"", "llm", "4", "90s", "false", "true", 0x01, 0x1f},
		{"", "llm", "2", "120", "", "", 0x1f, 0x07},
		{"pg", "llm", "8", "", "", "", 0x1f, 0x03},
		{"", "llm", "eight", "", "", "", 0x1f, 0x03},
		{"", "llm", "2", "18446744074", "", "", 0x1f, 0x07},
		{"", "llm", "2", "-5", "maybe", "%v", 0x1f, 0x1f},
		{"", "llm", "", "", "", "", 0x00, 0x01},
		{"", "", "", "", "", "", 0x1f, 0x01},
		{"", "llm", " 2 ", " 1m30s ", " 1 ", " F ", 0x1f, 0x1f},
	} {
		f.Add(s.podGroup, s.name, s.size, s.timeout, s.sameZone, s.sameCapacity, s.asLabel, s.present)
	}
	f.Fuzz(func(t *testing.T, podGroup, name, size, timeout, sameZone, sameCapacity string, asLabel, present uint8) {
		p := pod("p", map[string]string{}, map[string]string{})
		for i, v := range []string{name, size, timeout, sameZone, sameCapacity} {
			if present&(1<<i) == 0 {
				continue
			}
			if asLabel&(1<<i) != 0 {
				p.Labels[allKeys[i]] = v
			} else {
				p.Annotations[allKeys[i]] = v
			}
		}
		if podGroup != "" {
			p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &podGroup}
		}
		ref, inGang := RefOf(p)
		spec, ok, err := Of(p)
		if err != nil {
			msg := err.Error()
			if ok {
				t.Fatalf("in gang with error %v", err)
			}
			if !strings.Contains(msg, "pod ns/p") || !strings.Contains(msg, LabelName) {
				t.Fatalf("error %q does not name the pod and a gang key", msg)
			}
			if strings.Contains(msg, "%") {
				t.Fatalf("error %q holds a percent sign", msg)
			}
			return
		}
		if ok != inGang || ok && spec.Ref != ref || !ok && spec != (Spec{}) {
			t.Fatalf("Of: %+v, %v; RefOf: %+v, %v", spec, ok, ref, inGang)
		}
		if !ok {
			return
		}
		if !ref.IsMember(p) || ref.Name == "" || ref.Namespace != "ns" {
			t.Fatalf("ref %+v of its own member", ref)
		}
		if ref.Source == SourcePodGroup {
			if ref.Name != podGroup || spec.MinMember != 0 {
				t.Fatalf("PodGroup %q read as %+v", podGroup, spec)
			}
			return
		}
		if spec.MinMember < 1 || spec.Timeout < 0 {
			t.Fatalf("spec %+v", spec)
		}
		if spec.Timeout > 0 {
			if back, err := parseTimeout(spec.Timeout.String()); err != nil || back != spec.Timeout {
				t.Fatalf("timeout %v written back reads %v, %v", spec.Timeout, back, err)
			}
		}
	})
}
