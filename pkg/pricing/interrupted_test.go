package pricing

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/gang"
)

func TestInterruptedKeysRunsByWorkload(t *testing.T) {
	yes := true
	pod := func(ns, name string, labels map[string]string, job types.UID) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
		if job != "" {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "Job", Name: "j", UID: job, Controller: &yes}}
		}
		return p
	}
	member := func(ns, name string) *corev1.Pod {
		return pod(ns, name, map[string]string{gang.LabelName: "llm", gang.KeySize: "2"}, "")
	}
	m := NewInterrupted(0)
	m.Observe(member("team-a", "llm-0"), 3*time.Hour, firstReclaim)
	m.Observe(member("team-a", "llm-1"), 2*time.Hour, firstReclaim)
	m.Observe(pod("team-a", "train-x1", nil, "job-1"), 5*time.Hour, firstReclaim)
	m.Observe(pod("team-a", "bare", nil, ""), time.Hour, firstReclaim)

	cases := []struct {
		name string
		pod  *corev1.Pod
		want time.Duration
	}{
		{"a gang member replaced after the reclaim: the gang's longest", member("team-a", "llm-1"), 3 * time.Hour},
		{"the same gang name in another namespace is another workload", member("team-b", "llm-0"), 0},
		{"the Job's next pod", pod("team-a", "train-x2", nil, "job-1"), 5 * time.Hour},
		{"another Job", pod("team-a", "train-y", nil, "job-2"), 0},
		{"a bare pod by name", pod("team-a", "bare", nil, ""), time.Hour},
		{"a bare pod of the same name elsewhere", pod("team-b", "bare", nil, ""), 0},
	}
	for _, c := range cases {
		if got := m.Longest(c.pod); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}

	var none *Interrupted
	none.Observe(member("team-a", "llm-0"), time.Hour, firstReclaim)
	if got := none.Longest(member("team-a", "llm-0")); got != 0 {
		t.Fatalf("a nil Interrupted knows %v", got)
	}
}

// firstReclaim is when the tests' first reclaim happens.
var firstReclaim = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

func bare(i int) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprint("p", i)}}
}

func TestInterruptedForgetsTheOldestPastItsLimit(t *testing.T) {
	m := NewInterrupted(3)
	for i := range 5 {
		m.Observe(bare(i), time.Duration(i+1)*time.Hour, firstReclaim.Add(time.Duration(i)*time.Minute))
	}
	// A shorter run does not lower the longest; a later reclaim makes p2
	// the newest, so p3 is the next to go.
	m.Observe(bare(2), time.Minute, firstReclaim.Add(time.Hour))
	m.Observe(bare(5), time.Hour, firstReclaim.Add(2*time.Hour))
	for i, want := range []time.Duration{0, 0, 3 * time.Hour, 0, 5 * time.Hour, time.Hour} {
		if got := m.Longest(bare(i)); got != want {
			t.Errorf("p%d: %v, want %v", i, got, want)
		}
	}
}

// A namespace whose many small pods ran on reclaimed nodes forgets its own
// oldest workloads past the limit, not another namespace's: its flood must
// not put the other tenant's training without checkpoints back on Spot.
func TestOneNamespaceCannotPushAnotherOutOfInterrupted(t *testing.T) {
	m := NewInterrupted(100)
	victim := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train"}}
	m.Observe(victim, 30*time.Hour, firstReclaim)
	for i := range 1000 {
		m.Observe(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "flood", Name: fmt.Sprint("p", i)}}, time.Minute, firstReclaim.Add(time.Duration(i+1)*time.Second))
	}
	if got := m.Longest(victim); got != 30*time.Hour {
		t.Fatalf("ml/train's record was pushed out by another namespace's pods (longest run %v, want 30h)", got)
	}
	runs := m.Runs()
	if len(runs) != 100 || runs[len(runs)-1].Key != "pod:flood/p999" || runs[1].Key != "pod:flood/p901" {
		t.Fatalf("kept %d workloads, %v first and %v last; want 100: ml/train and flood's newest 99", len(runs), runs[0], runs[len(runs)-1])
	}
	// Merging a copy goes by the same rule.
	m2 := NewInterrupted(100)
	m2.Merge(runs)
	m2.Merge([]InterruptedRun{{Key: "pod:flood/late", Ran: time.Minute, At: firstReclaim.Add(time.Hour)}})
	if got := m2.Longest(victim); got != 30*time.Hour {
		t.Fatalf("merging another namespace's run pushed ml/train out (longest run %v, want 30h)", got)
	}
	// And so does the saved copy past its size limit.
	var big []InterruptedRun
	big = append(big, InterruptedRun{Key: "pod:ml/train", Ran: 30 * time.Hour, At: firstReclaim})
	for i := range 20000 {
		big = append(big, InterruptedRun{Key: fmt.Sprintf("owner:flood/0e6c2b5c-7d3a-4d5e-9f00-%012d", i), Ran: time.Minute, At: firstReclaim.Add(time.Duration(i+1) * time.Second)})
	}
	data := FormatInterruptedRuns(big)
	back, err := ParseInterruptedRuns(data, "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > configmaplines.MaxBytes || len(back) < 2 || back[0].Key != "pod:ml/train" || back[len(back)-1] != big[len(big)-1] {
		t.Fatalf("saved %d bytes (limit %d), %d workloads, first %v last %v; want ml/train first, then flood's newest", len(data), configmaplines.MaxBytes, len(back), back[0], back[len(back)-1])
	}
}

// A full Interrupted that merges a saved copy still holding a workload it
// forgot keeps its newest workload: the forgotten one goes back among the
// oldest, and goes again. (It used to come back as the newest and push the
// new workload out, so past the limit no new workload was kept off Spot.)
func TestMergingASavedCopyKeepsTheNewestPastTheLimit(t *testing.T) {
	m := NewInterrupted(3)
	for i := range 3 {
		m.Observe(bare(i), time.Hour, firstReclaim.Add(time.Duration(i)*time.Minute))
	}
	saved := FormatInterruptedRuns(m.Runs())
	m.Observe(bare(3), 30*time.Hour, firstReclaim.Add(time.Hour))
	copyRuns, err := ParseInterruptedRuns(saved, "test")
	if err != nil {
		t.Fatal(err)
	}
	m.Merge(copyRuns)
	if got := m.Longest(bare(3)); got != 30*time.Hour {
		t.Fatalf("the newest workload was forgotten when the saved copy was merged (%v left)", m.Runs())
	}
	if got := m.Longest(bare(0)); got != 0 {
		t.Fatalf("the oldest workload came back from the saved copy: %v", got)
	}
	want := "pod:ns/p1 1h0m0s 2026-11-30T08:01:00Z\npod:ns/p2 1h0m0s 2026-11-30T08:02:00Z\npod:ns/p3 30h0m0s 2026-11-30T09:00:00Z\n"
	if got := FormatInterruptedRuns(m.Runs()); got != want {
		t.Fatalf("to save %q, want %q", got, want)
	}
}

func TestInterruptedMetrics(t *testing.T) {
	RegisterMetrics()
	before, _ := testutil.GetCounterMetricValue(metricInterruptedRuns)
	m := NewInterrupted(0)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}}
	m.Observe(p, time.Hour, firstReclaim)
	m.Observe(p, 2*time.Hour, firstReclaim.Add(time.Hour))
	after, _ := testutil.GetCounterMetricValue(metricInterruptedRuns)
	workloads, _ := testutil.GetGaugeMetricValue(metricInterruptedWorkloads)
	if after-before != 2 || workloads != 1 {
		t.Fatalf("runs +%v, workloads %v; want +2 and 1", after-before, workloads)
	}
}

func TestInterruptedRunsRoundTripAndMerge(t *testing.T) {
	m := NewInterrupted(0)
	m.Observe(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "a"}}, 3*time.Hour, firstReclaim)
	m.Observe(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "b", Labels: map[string]string{gang.LabelName: "llm", gang.KeySize: "2"}}}, 90*time.Minute, firstReclaim.Add(time.Hour))
	data := FormatInterruptedRuns(m.Runs())
	if want := "pod:ml/a 3h0m0s 2026-11-30T08:00:00Z\ngang:label:ml/llm 1h30m0s 2026-11-30T09:00:00Z\n"; data != want {
		t.Fatalf("saved %q, want %q", data, want)
	}
	runs, err := ParseInterruptedRuns(data, "test")
	if err != nil {
		t.Fatal(err)
	}
	other := NewInterrupted(0)
	other.Merge([]InterruptedRun{{Key: "pod:ml/a", Ran: 5 * time.Hour, At: firstReclaim.Add(-time.Hour)}, {Key: "pod:ml/c", Ran: time.Hour, At: firstReclaim.Add(30 * time.Minute)}})
	other.Merge(runs)
	// A copy saved before the time was recorded: its workloads are the oldest.
	old, err := ParseInterruptedRuns("pod:ml/d 2h0m0s\n", "test")
	if err != nil {
		t.Fatal(err)
	}
	other.Merge(old)
	got := FormatInterruptedRuns(other.Runs())
	want := "pod:ml/d 2h0m0s\npod:ml/a 5h0m0s 2026-11-30T08:00:00Z\npod:ml/c 1h0m0s 2026-11-30T08:30:00Z\ngang:label:ml/llm 1h30m0s 2026-11-30T09:00:00Z\n"
	if got != want {
		t.Fatalf("merged %q, want %q (the longer run and the later reclaim per workload, in reclaim order)", got, want)
	}
}

func TestInterruptedRunsKeepTheNewestUnderTheSizeLimit(t *testing.T) {
	var runs []InterruptedRun
	for i := range 20000 {
		runs = append(runs, InterruptedRun{Key: fmt.Sprintf("owner:team-%05d/0e6c2b5c-7d3a-4d5e-9f00-%012d", i, i), Ran: time.Duration(i+1) * time.Minute, At: firstReclaim.Add(time.Duration(i) * time.Second)})
	}
	data := FormatInterruptedRuns(runs)
	if len(data) > configmaplines.MaxBytes {
		t.Fatalf("%d bytes saved, limit %d", len(data), configmaplines.MaxBytes)
	}
	back, err := ParseInterruptedRuns(data, "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(back) == 0 || len(back) == len(runs) || back[len(back)-1] != runs[len(runs)-1] || back[0] != runs[len(runs)-len(back)] {
		t.Fatalf("kept %d of %d runs, first %v last %v: want the newest, in order", len(back), len(runs), back[0], back[len(back)-1])
	}
}

func TestDamagedInterruptedRunsNameTheLineAndTheFix(t *testing.T) {
	runs, err := ParseInterruptedRuns("pod:ml/a 1h\n\nbogus 2h\npod:ml/b\npod:ml/c soon\npod:ml/d 0s\npod:ml/e 1h yesterday\npod:ml/f 1h 2026-11-30T08:00:00Z extra\npod:ml/g 2h 2026-11-30T08:00:00Z\n", "configmap x/y key runs")
	if len(runs) != 2 || runs[0].Key != "pod:ml/a" || runs[1] != (InterruptedRun{Key: "pod:ml/g", Ran: 2 * time.Hour, At: firstReclaim}) {
		t.Fatalf("kept %v, want the two good lines", runs)
	}
	for _, want := range []string{`line 3 "bogus 2h": workload "bogus"`, `line 4 "pod:ml/b": want`, `line 5 "pod:ml/c soon": run "soon" is not a positive Go duration`, `line 6`,
		`line 7 "pod:ml/e 1h yesterday": last reclaim "yesterday" is not an RFC 3339 time`, `line 8 "pod:ml/f 1h 2026-11-30T08:00:00Z extra": want`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

// The saved copy holds what docs/spot.md promises: all 10,000 workloads
// with names of typical length, and at least 6,600 with 63-character
// namespaces, for Job pods whose runs the reclaim coordinator measures to
// the nanosecond (an agent's notice time less the pod's start). Saved to
// the nanosecond ("14h50m3.123456789s"), a run took nine more bytes a line,
// and the copy held 9,701 and 6,312 of them.
func TestInterruptedRunsSavedCopyHoldsWhatTheDocsSay(t *testing.T) {
	ran := 14*time.Hour + 50*time.Minute + 3123456789*time.Nanosecond
	for _, c := range []struct {
		namespace string
		want      int
	}{{"ml-research", DefaultInterruptedLimit}, {strings.Repeat("n", 63), 6600}} {
		m := NewInterrupted(0)
		for i := range DefaultInterruptedLimit {
			m.Observe(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: c.namespace, Name: fmt.Sprint("train-", i),
				OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "train", UID: types.UID(fmt.Sprintf("0e6c2b5c-7d3a-4d5e-9f00-%012d", i)), Controller: ptr(true)}}}},
				ran+time.Duration(i)*time.Nanosecond, firstReclaim.Add(time.Duration(i)*time.Second))
		}
		back, err := ParseInterruptedRuns(FormatInterruptedRuns(m.Runs()), "test")
		if err != nil {
			t.Fatal(err)
		}
		if len(back) < c.want {
			t.Errorf("%d-character namespace: the copy holds %d workloads, want at least %d", len(c.namespace), len(back), c.want)
		}
		// To the second, and never down to 0s, which would not load again.
		if last := back[len(back)-1]; last.Ran != 14*time.Hour+50*time.Minute+3*time.Second {
			t.Errorf("saved run %v, want 14h50m3s", last.Ran)
		}
	}
	short, err := ParseInterruptedRuns(FormatInterruptedRuns([]InterruptedRun{{Key: "pod:ml/a", Ran: 300 * time.Millisecond, At: firstReclaim}}), "test")
	if err != nil || len(short) != 1 || short[0].Ran != time.Second {
		t.Errorf("a run of 300ms saved and read back as %v (%v), want 1s", short, err)
	}
}

func ptr[T any](v T) *T { return &v }
