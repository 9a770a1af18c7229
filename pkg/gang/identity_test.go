package gang

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func pod(name string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: labels, Annotations: annotations}}
}

func TestOf(t *testing.T) {
	tests := []struct {
		name    string
		pod     *corev1.Pod
		want    Spec
		inGang  bool
		wantErr string
	}{
		{name: "no gang", pod: pod("p", nil, nil)},
		{
			name:   "labels",
			pod:    pod("p", map[string]string{LabelName: "llm", KeySize: "8"}, nil),
			want:   Spec{Ref: Ref{Source: SourceLabel, Namespace: "ns", Name: "llm"}, MinMember: 8},
			inGang: true,
		},
		{
			name: "size, timeout and overrides as annotations",
			pod: pod("p", map[string]string{LabelName: "llm"}, map[string]string{
				KeySize: "4", KeyTimeout: "90s", KeySameZone: "false", KeySameCapacityType: "true",
			}),
			want: Spec{Ref: Ref{Source: SourceLabel, Namespace: "ns", Name: "llm"}, MinMember: 4,
				Timeout: 90 * time.Second, SameZone: ptr.To(false), SameCapacityType: ptr.To(true)},
			inGang: true,
		},
		{
			name:   "timeout in whole seconds (a label value cannot hold every duration)",
			pod:    pod("p", map[string]string{LabelName: "llm", KeySize: "2", KeyTimeout: "120"}, nil),
			want:   Spec{Ref: Ref{Source: SourceLabel, Namespace: "ns", Name: "llm"}, MinMember: 2, Timeout: 2 * time.Minute},
			inGang: true,
		},
		{
			name: "native PodGroup wins over the label",
			pod: func() *corev1.Pod {
				p := pod("p", map[string]string{LabelName: "llm", KeySize: "8"}, nil)
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("pg")}
				return p
			}(),
			want:   Spec{Ref: Ref{Source: SourcePodGroup, Namespace: "ns", Name: "pg"}},
			inGang: true,
		},
		{name: "missing size", pod: pod("p", map[string]string{LabelName: "llm"}, nil), wantErr: "has no penny.dev/gang-size"},
		{name: "bad size", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "eight"}, nil), wantErr: `penny.dev/gang-size="eight" is not a whole number >= 1`},
		{name: "zero size", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "0"}, nil), wantErr: "is not a whole number >= 1"},
		// A whole number >= 1 that is too large was told it is not one.
		{name: "huge size", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "3000000000"}, nil), wantErr: `penny.dev/gang-size="3000000000" is too large (at most 2147483647)`},
		{name: "huge negative size", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "-3000000000"}, nil), wantErr: "is not a whole number >= 1"},
		{name: "bad timeout", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "2", KeyTimeout: "soon"}, nil), wantErr: `penny.dev/gang-timeout="soon": not a positive duration`},
		{name: "negative timeout", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "2", KeyTimeout: "-5"}, nil), wantErr: "must be positive"},
		// 18446744074 seconds wraps a time.Duration to about 0.29s: the gang
		// would be released before its members could be placed, with no word why.
		{name: "timeout in seconds too large for a duration", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "2", KeyTimeout: "18446744074"}, nil), wantErr: `penny.dev/gang-timeout="18446744074": too long`},
		{name: "bad override", pod: pod("p", map[string]string{LabelName: "llm", KeySize: "2", KeySameZone: "maybe"}, nil), wantErr: `penny.dev/gang-same-zone="maybe" is not a boolean`},
		{name: "name as annotation", pod: pod("p", nil, map[string]string{LabelName: "llm"}), wantErr: "set it as a label"},
		{name: "empty name", pod: pod("p", map[string]string{LabelName: ""}, nil), wantErr: "empty penny.dev/gang label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := Of(tt.pod)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.inGang {
				t.Fatalf("in gang %v, want %v", ok, tt.inGang)
			}
			if ok && !specEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The errors become scheduler status messages, which kube-scheduler records
// in the FailedScheduling event as a format and in the PodScheduled
// condition verbatim: a percent sign in a value must read the same in both.
func TestOfErrorsReadTheSameAsAFormat(t *testing.T) {
	var noArgs []any // a format with no arguments, as kube-scheduler passes it
	for key, c := range map[string]struct{ value, shown string }{
		KeySize:             {"5%", `penny.dev/gang-size="5\x25"`},
		KeyTimeout:          {"90s%", `penny.dev/gang-timeout="90s\x25"`},
		KeySameZone:         {"yes%", `penny.dev/gang-same-zone="yes\x25"`},
		KeySameCapacityType: {"%v", `penny.dev/gang-same-capacity-type="\x25v"`},
	} {
		annotations := map[string]string{KeySize: "2", key: c.value}
		_, _, err := Of(pod("p", map[string]string{LabelName: "llm"}, annotations))
		if err == nil {
			t.Fatalf("%s=%s: want an error", key, c.value)
		}
		msg := err.Error()
		if event := fmt.Sprintf(msg, noArgs...); event != msg {
			t.Errorf("%s=%s: as a format the message reads\n%s\nnot\n%s", key, c.value, event, msg)
		}
		if !strings.Contains(msg, c.shown) {
			t.Errorf("%s=%s: %q does not show the value as %s", key, c.value, msg, c.shown)
		}
	}
}

func specEqual(a, b Spec) bool {
	return a.Ref == b.Ref && a.MinMember == b.MinMember && a.Timeout == b.Timeout &&
		ptr.Equal(a.SameZone, b.SameZone) && ptr.Equal(a.SameCapacityType, b.SameCapacityType)
}

func TestMembersByIndex(t *testing.T) {
	informer := cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Pod{}, 0, cache.Indexers{})
	if err := AddIndex(informer); err != nil {
		t.Fatal(err)
	}
	if err := AddIndex(informer); err != nil {
		t.Fatalf("adding the index twice must be harmless: %v", err)
	}
	store := informer.GetIndexer()
	deleting := pod("c", map[string]string{LabelName: "llm", KeySize: "3"}, nil)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	done := pod("d", map[string]string{LabelName: "llm", KeySize: "3"}, nil)
	done.Status.Phase = corev1.PodSucceeded
	other := pod("e", map[string]string{LabelName: "llm", KeySize: "3"}, nil)
	other.Namespace = "elsewhere"
	malformed := pod("f", map[string]string{LabelName: "llm", KeySize: "three"}, nil)
	for _, p := range []*corev1.Pod{
		pod("a", map[string]string{LabelName: "llm", KeySize: "3"}, nil),
		pod("b", map[string]string{LabelName: "llm", KeySize: "3"}, nil),
		deleting, done, other, malformed,
		pod("g", map[string]string{LabelName: "other", KeySize: "3"}, nil),
		pod("h", nil, nil),
	} {
		if err := store.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	ref := Ref{Source: SourceLabel, Namespace: "ns", Name: "llm"}
	members, err := Members(store, ref)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range members {
		got = append(got, m.Name)
		if !ref.IsMember(m) {
			t.Errorf("%s listed but not a member", m.Name)
		}
	}
	if strings.Join(sorted(got), ",") != "a,b,f" {
		t.Errorf("members %v, want a, b and the malformed f (not deleting, finished, or other namespaces)", got)
	}
}

func sorted(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

func TestSameKeys(t *testing.T) {
	base := func() *corev1.Pod {
		return pod("p", map[string]string{LabelName: "llm", KeySize: "2", "app": "x"}, map[string]string{KeyTimeout: "90s", "note": "a"})
	}
	for _, c := range []struct {
		name   string
		change func(*corev1.Pod)
		same   bool
	}{
		{"unrelated label and annotation", func(p *corev1.Pod) { p.Labels["app"] = "y"; p.Annotations["note"] = "b" }, true},
		{"size label", func(p *corev1.Pod) { p.Labels[KeySize] = "3" }, false},
		{"size moved to an annotation", func(p *corev1.Pod) { delete(p.Labels, KeySize); p.Annotations[KeySize] = "2" }, false},
		{"timeout annotation", func(p *corev1.Pod) { p.Annotations[KeyTimeout] = "60s" }, false},
		{"override added", func(p *corev1.Pod) { p.Annotations[KeySameZone] = "false" }, false},
		{"gang renamed", func(p *corev1.Pod) { p.Labels[LabelName] = "other" }, false},
		{"native group named", func(p *corev1.Pod) {
			p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("pg")}
		}, false},
	} {
		changed := base()
		c.change(changed)
		if got := SameKeys(base(), changed); got != c.same {
			t.Errorf("%s: SameKeys %v, want %v", c.name, got, c.same)
		}
	}
}
