package reclaim

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
)

func noticeStore(client *fake.Clientset) *NoticeStore {
	return &NoticeStore{Client: client, Namespace: "penny-system", Name: "penny-reclaim-notices"}
}

// stoppedMidNotice has a coordinator handle a Spot notice on node a until it
// has sent its commands to targets, and stops it before any checkpoint is
// in, as a scheduler that restarts mid-notice. It returns the notice's node
// state, for the agent to report again, and the commands sent.
func stoppedMidNotice(t *testing.T, client *fake.Clientset, targets ...string) (*telemetry.NodeState, *commander) {
	t.Helper()
	detected := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}
	state := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}}
	c := NewCoordinator()
	cmds, stop := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client)})
	c.OnNodeUpdate(nil, state)
	waitFor(t, fmt.Sprintf("the commands to %v", targets), func() bool {
		for _, node := range targets {
			if cmds.get(node) == nil {
				return false
			}
		}
		return true
	})
	stop()
	return state, cmds
}

// A scheduler restarted mid-notice, after the reclaimed node's agent evicted
// its own pods, still checkpoints and evicts the gang's members elsewhere.
func TestCoordinatorResumesANoticeAfterARestart(t *testing.T) {
	client := gangOnAB()
	evicted := recordEvictions(client)
	state, cmds1 := stoppedMidNotice(t, client, "b")
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data[NoticesKey], "a aws%2Dspot%2D1 SPOT_INTERRUPTION AWS terminate ") || !strings.HasSuffix(cm.Data[NoticesKey], " label:ml/g uid-g-1\n") {
		t.Fatalf("record of the notice being handled: %v %q", err, cm.Data[NoticesKey])
	}
	// a's agent evicts its own member meanwhile.
	if err := client.CoreV1().Pods("ml").Delete(context.Background(), "g-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The second coordinator has only the record to go by; the agent
	// reports the notice again, which must not hide the record's gangs.
	c2 := NewCoordinator()
	c2.OnNodeUpdate(nil, state)
	cmds2, _ := start(t, c2, CoordinatorOptions{Client: client, Notices: noticeStore(client)})
	waitFor(t, "the command to b again", func() bool { return cmds2.get("b") != nil })
	if got, want := cmds2.get("b").GetId(), cmds1.get("b").GetId(); got != want {
		t.Errorf("command id %s after the restart, want %s: the agent would run it twice", got, want)
	}
	c2.OnCheckpointStatus("b", &telemetryv1.CheckpointStatus{CommandId: cmds2.get("b").GetId(),
		Pod: &telemetryv1.PodRef{Namespace: "ml", Name: "g-1"}, State: telemetryv1.CheckpointStatus_STATE_DONE})
	waitFor(t, "b's member evicted", func() bool {
		got := evicted()
		return len(got) == 1 && got[0] == "g-1"
	})
	waitFor(t, "the record removed", func() bool {
		cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
		return err == nil && cm.Data[NoticesKey] == ""
	})
}

// By the time a restarted scheduler resumes a notice, the gang's owner has
// usually replaced the members evicted before the restart. The resumed
// notice acts only on the members its record names: the replacements, on
// the node of an evicted member or another, are neither asked to
// checkpoint nor evicted, while a recorded member still running is.
func TestCoordinatorResumedNoticeLeavesReplacementsAlone(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"), member("g-2", "c", "g"), member("g-3", "d", "g"))
	evicted := recordEvictions(client)
	stoppedMidNotice(t, client, "b", "c", "d")
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
	if err != nil || !strings.HasSuffix(cm.Data[NoticesKey], " label:ml/g uid-g-1,uid-g-2,uid-g-3\n") {
		t.Fatalf("record of the notice being handled: %v %q; want the members on b, c and d", err, cm.Data[NoticesKey])
	}
	// a's agent evicted its member, the first scheduler b's and c's; the
	// gang's owner replaced those two, one on b, one under a reused name.
	for _, name := range []string{"g-0", "g-1", "g-2"} {
		if err := client.CoreV1().Pods("ml").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sameName := member("g-2", "e", "g")
	sameName.UID = "uid-g-2-again"
	for _, p := range []*corev1.Pod{member("g-1b", "b", "g"), sameName} {
		if _, err := client.CoreV1().Pods("ml").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	c2 := NewCoordinator()
	cmds2, _ := start(t, c2, CoordinatorOptions{Client: client, Notices: noticeStore(client)})
	waitFor(t, "the command to d again", func() bool { return cmds2.get("d") != nil })
	c2.OnCheckpointStatus("d", &telemetryv1.CheckpointStatus{CommandId: cmds2.get("d").GetId(),
		Pod: &telemetryv1.PodRef{Namespace: "ml", Name: "g-3"}, State: telemetryv1.CheckpointStatus_STATE_DONE})
	// The handling ends, and the record goes, once every command's members
	// are evicted: a command to a replacement would hold it to D - margin.
	ended := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
		return err == nil && cm.Data[NoticesKey] == "", nil
	})
	cmds2.mu.Lock()
	var asked []string
	for _, cmd := range cmds2.all {
		for _, p := range cmd.GetPods() {
			asked = append(asked, p.GetName())
		}
	}
	cmds2.mu.Unlock()
	if !reflect.DeepEqual(asked, []string{"g-3"}) {
		t.Errorf("the resumed notice asked to checkpoint %v; want only g-3, the recorded member still running", asked)
	}
	if got := evicted(); !reflect.DeepEqual(got, []string{"g-3"}) {
		t.Errorf("the resumed notice evicted %v; want only g-3", got)
	}
	if ended != nil {
		t.Errorf("the resumed notice's handling did not end within 5s of g-3's checkpoint: %v", ended)
	}
}

// A scheduler killed once a Spot notice's commands are out (its record
// written, so the restarted one takes the notice as observed and does not
// feed it again) and before the next periodic save of the runs it cut short
// finds them saved all the same: the record is written only after them.
func TestCoordinatorKilledAfterRecordingANoticeKeepsTheRunsItCutShort(t *testing.T) {
	detected := time.Now()
	g0 := member("g-0", "a", "g")
	g0.Status.StartTime = &metav1.Time{Time: detected.Add(-30 * time.Hour)}
	client := fake.NewClientset(g0, member("g-1", "b", "g"))
	persist := pricing.PersistOptions{Client: client, Namespace: "penny-system", Name: "penny-interrupted-runs"}
	interrupted := pricing.NewInterrupted(0)
	n := telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}
	state := &telemetry.NodeState{Node: "a", NoticesKnown: true, ReclaimNotices: []telemetry.ReclaimNotice{n}}
	c := NewCoordinator()
	// No Persist loop: the kill comes before its next save, and a killed
	// scheduler writes nothing on the way out.
	cmds, kill := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Interrupted: interrupted,
		SaveObserved: func(ctx context.Context) error { return interrupted.Save(ctx, persist) }})
	c.OnNodeUpdate(nil, state)
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	kill()

	restarted := pricing.NewInterrupted(0)
	if err := restarted.Load(context.Background(), persist); err != nil {
		t.Fatal(err)
	}
	c2 := NewCoordinator()
	cmds2, _ := start(t, c2, CoordinatorOptions{Client: client, Notices: noticeStore(client), Interrupted: restarted,
		SaveObserved: func(ctx context.Context) error { return restarted.Save(ctx, persist) }})
	c2.OnNodeUpdate(nil, state)
	waitFor(t, "the resumed notice's command to b", func() bool { return cmds2.get("b") != nil })
	if got := restarted.Longest(member("g-1", "b", "g")); got != 30*time.Hour {
		t.Errorf("after the restart gang g's run cut short by the reclaim is %v, want 30h: the notice was recorded, so the restarted scheduler did not observe it again, and the run was never saved", got)
	}
}

// A scheduler killed after it saved a Spot reclaim's evidence and before it
// recorded the notice as observed hears the notice again once restarted, and
// takes it for new: the reclaim counts once all the same, as the saved
// evidence names the node it counted.
func TestCoordinatorKilledBeforeRecordingANoticeCountsItsReclaimOnce(t *testing.T) {
	detected := time.Now()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "p4d.24xlarge", corev1.LabelTopologyZone: "us-east-1a", "karpenter.sh/capacity-type": "spot"}}}
	pool := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
	client := fake.NewClientset(node, member("g-0", "a", "g"), member("g-1", "b", "g"))
	var mu sync.Mutex
	recording := false // the notice's record is never written before the kill
	client.PrependReactor("*", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if a.GetVerb() != "get" && a.GetVerb() != "list" && !recording {
			if o, ok := a.(interface{ GetObject() runtime.Object }); ok {
				if cm, ok := o.GetObject().(*corev1.ConfigMap); ok && cm.Name == "penny-reclaim-notices" {
					return true, nil, apierrors.NewServiceUnavailable("etcd is restarting")
				}
			}
		}
		return false, nil, nil
	})
	persist := pricing.PersistOptions{Client: client, Namespace: "penny-system", Name: "penny-interrupted-runs", Log: testr.New(t)}
	n := telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}
	state := &telemetry.NodeState{Node: "a", NoticesKnown: true, ReclaimNotices: []telemetry.ReclaimNotice{n}}

	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	c := NewCoordinator()
	cmds, kill := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Risk: risk,
		SaveObserved: func(ctx context.Context) error { return risk.Save(ctx, persist) }})
	c.OnNodeUpdate(nil, state)
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	waitFor(t, "the reclaim's evidence saved", func() bool {
		saved, err := pricing.ParseSavedPools(cmData(client, "penny-interrupted-runs", pricing.RiskKey), "")
		return err == nil && len(saved) == 1 && saved[0].Reclaims == 1
	})
	kill()
	if got := cmData(client, "penny-reclaim-notices", NoticesKey); got != "" {
		t.Fatalf("the notice was recorded (%q): the test kills the scheduler before that", got)
	}

	mu.Lock()
	recording = true
	mu.Unlock()
	restarted := pricing.NewRiskModel(pricing.RiskConfig{})
	if err := restarted.Load(context.Background(), persist); err != nil {
		t.Fatal(err)
	}
	c2 := NewCoordinator()
	cmds2, _ := start(t, c2, CoordinatorOptions{Client: client, Notices: noticeStore(client), Risk: restarted,
		SaveObserved: func(ctx context.Context) error { return restarted.Save(ctx, persist) }})
	c2.OnNodeUpdate(nil, state)
	waitFor(t, "the command to b again", func() bool { return cmds2.get("b") != nil })
	// The notice is new to the restarted coordinator: it feeds it before its
	// record says so.
	waitFor(t, "the notice recorded", func() bool { return cmData(client, "penny-reclaim-notices", NoticesKey) != "" })
	if got := restarted.Reclaims(pool); got != 0 {
		t.Errorf("the restarted model counted %d reclaims of %v, want 0: the saved evidence holds the one the notice tells of", got, pool)
	}
	saved := restarted.Saved()
	if len(saved) != 1 || saved[0].Reclaims != 1 {
		t.Errorf("after the restart the model holds %+v, want one reclaim of %v", saved, pool)
	}
}

// cmData is the ConfigMap's key in penny-system, "" if there is none.
func cmData(client *fake.Clientset, name, key string) string {
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return cm.Data[key]
}

// A scheduler that starts while the API server cannot answer for a moment
// still resumes what it recorded: one failed read left every recorded
// notice's gangs running short a member.
func TestCoordinatorResumesAfterAFailedFirstRead(t *testing.T) {
	client := fake.NewClientset(member("g-1", "b", "g"))
	detected := time.Now()
	rec := noticeRecord{nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}},
		[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}, nil, time.Time{}}
	saved := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "penny-system", Name: "penny-reclaim-notices"},
		Data: map[string]string{NoticesKey: formatNotices([]noticeRecord{rec})}}
	if _, err := client.CoreV1().ConfigMaps("penny-system").Create(context.Background(), saved, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	failures := 2
	client.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures == 0 {
			return false, nil, nil
		}
		failures--
		return true, nil, apierrors.NewServiceUnavailable("etcd is restarting")
	})
	cmds, _ := start(t, NewCoordinator(), CoordinatorOptions{Client: client, Notices: noticeStore(client)})
	waitFor(t, "the recorded notice's command to b", func() bool { return cmds.get("b") != nil })
}

// A record with its members' UIDs adds them as a ninth field; one without
// them is written, and read, as before Penny kept them. A notice planned
// again after a postponement adds the deadline it is planned by as a tenth,
// with "-" for gangs and members not yet found again.
func TestNoticeRecordLines(t *testing.T) {
	detected := time.Date(2026, 11, 30, 8, 0, 0, 123, time.UTC)
	recs := []noticeRecord{
		{nodeNotice{"b", telemetry.ReclaimNotice{ID: "gce maint/1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Detected: detected}},
			[]gang.Ref{{Source: gang.SourcePodGroup, Namespace: "ml", Name: "pg"}, {Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}}, nil, time.Time{}},
		{nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "-", Detected: detected, Deadline: detected.Add(2 * time.Minute)}},
			[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}},
			[]types.UID{"3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11", "odd,uid with spaces"}, time.Time{}},
		{nodeNotice{"c", telemetry.ReclaimNotice{ID: "aws-maint-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: detected, Deadline: detected.Add(25 * time.Hour)}},
			nil, nil, detected.Add(24 * time.Hour)},
		{nodeNotice{"d", telemetry.ReclaimNotice{ID: "aws-maint-2", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: detected, Deadline: detected.Add(24 * time.Hour)}},
			[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}}, nil, detected.Add(24 * time.Hour)},
		{nodeNotice{"e", telemetry.ReclaimNotice{ID: "aws-maint-3", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: detected, Deadline: detected.Add(24 * time.Hour)}},
			[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}}, []types.UID{"uid-1"}, detected.Add(24 * time.Hour)},
	}
	data := formatNotices(recs)
	want := "a aws%2Dspot%2D1 SPOT_INTERRUPTION AWS %2D 2026-11-30T08:00:00.000000123Z 2026-11-30T08:02:00.000000123Z label:ml/llm 3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11,odd%2Cuid%20with%20spaces\n" +
		"b gce%20maint%2F1 REBALANCE_RECOMMENDATION GCP - 2026-11-30T08:00:00.000000123Z - podgroup:ml/pg,label:ml/llm\n" +
		"c aws%2Dmaint%2D1 MAINTENANCE AWS system%2Dreboot 2026-11-30T08:00:00.000000123Z 2026-12-01T09:00:00.000000123Z - - 2026-12-01T08:00:00.000000123Z\n" +
		"d aws%2Dmaint%2D2 MAINTENANCE AWS system%2Dreboot 2026-11-30T08:00:00.000000123Z 2026-12-01T08:00:00.000000123Z label:ml/llm - 2026-12-01T08:00:00.000000123Z\n" +
		"e aws%2Dmaint%2D3 MAINTENANCE AWS system%2Dreboot 2026-11-30T08:00:00.000000123Z 2026-12-01T08:00:00.000000123Z label:ml/llm uid-1 2026-12-01T08:00:00.000000123Z\n"
	if data != want {
		t.Fatalf("formatted:\n%s\nwant:\n%s", data, want)
	}
	got, err := parseNotices(data, "src")
	if err != nil || !reflect.DeepEqual(got, []noticeRecord{recs[1], recs[0], recs[2], recs[3], recs[4]}) {
		t.Fatalf("parsed %+v, %v: want the records back", got, err)
	}

	damaged := "nonsense\n" + strings.SplitAfter(data, "\n")[0] +
		"a x SOMETHING AWS - 2026-11-30T08:00:00Z - label:ml/g\n" +
		"a x MAINTENANCE AWS - yesterday - label:ml/g\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - job:ml/g\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,,uid-2\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,uid-%zz\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1 uid-2\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - uid-1 2026-12-01T08:00:00Z\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - 2026-12-01T08:00:00Z\n"
	got, err = parseNotices(damaged, "configmap penny-system/penny-reclaim-notices key notices")
	if len(got) != 1 || got[0].notice.ID != "aws-spot-1" {
		t.Errorf("kept %+v, want the one good line", got)
	}
	if err == nil {
		t.Fatal("no error for damaged lines")
	}
	for _, w := range []string{`configmap penny-system/penny-reclaim-notices key notices line 1 "nonsense": want "<node> <notice id>`,
		`line 3 "a x SOMETHING`, `kind "SOMETHING"`, `line 4`, `detected "yesterday" is not an RFC 3339 time`,
		`line 5`, `gang "job:ml/g"`, `e.g. "a aws-spot-1 SPOT_INTERRUPTION AWS terminate`,
		`line 6 "a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,,uid-2": member "": want`,
		`line 7 "a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,uid-%zz": member "uid-%zz": want`,
		`line 8 "a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1 uid-2": round "uid-2" is not an RFC 3339 time: want "<node> <notice id>`,
		`line 9 "a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - uid-1 2026-12-01T08:00:00Z": members "uid-1" of a notice not yet planned again: want`,
		`line 10 "a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - 2026-12-01T08:00:00Z": gang "-": want`,
		`the members as pod UIDs separated by commas`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q: want %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "line 2 ") {
		t.Errorf("error %q names the good line", err)
	}
}

// A time whose year in UTC is outside 0000-9999 would be written back (in
// UTC) as a line the next read refuses, and the notice would be lost at the
// next save: it is refused when read, with the field named (found by
// FuzzParseNotices).
func TestSavedNoticeTimeOutsideTheUTCYearsIsRefused(t *testing.T) {
	const source = "configmap penny-system/penny-reclaim-notices key notices"
	for _, c := range []struct{ line, want string }{
		{"a x MAINTENANCE AWS - 0000-01-01T00:00:00+01:00 - label:ml/g", `detected "0000-01-01T00:00:00+01:00" is not an RFC 3339 time`},
		{"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z 9999-12-31T23:00:00-02:00 label:ml/g", `deadline "9999-12-31T23:00:00-02:00" is not an RFC 3339 time`},
		{"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - - 0000-01-01T00:30:00+01:00", `round "0000-01-01T00:30:00+01:00" is not an RFC 3339 time`},
	} {
		recs, err := parseNotices(c.line, source)
		if len(recs) != 0 || err == nil || !strings.Contains(err.Error(), source+" line 1 ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: read %+v, %v; want it refused with %s", c.line, recs, err, c.want)
		}
	}
}

// formatNotices leaves a zero round out, so a record not yet planned again
// with a zero round would be written as a line with "-" for its gangs, which
// does not read: the zero round is refused when read (found by
// FuzzParseNotices).
func TestSavedNoticeWithAZeroRoundIsRefused(t *testing.T) {
	recs, err := parseNotices("a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - - 0001-01-01T00:00:00Z", "src")
	if len(recs) != 0 || err == nil || !strings.Contains(err.Error(), `round "0001-01-01T00:00:00Z" is the zero time`) {
		t.Fatalf("read %+v, %v; want the zero round refused", recs, err)
	}
}

// A member whose UID is "-" is written escaped: bare, before a round, it
// would read back as "no members", and a resumed notice would act on every
// live member of its gangs (found by FuzzParseNotices).
func TestNoticeMemberDashIsWrittenBack(t *testing.T) {
	detected := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	rec := noticeRecord{nodeNotice{"a", telemetry.ReclaimNotice{ID: "x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: detected}},
		[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}, []types.UID{"-"}, detected.Add(24 * time.Hour)}
	out := formatNotices([]noticeRecord{rec})
	back, err := parseNotices(out, "src")
	if err != nil || len(back) != 1 || !slices.Equal(back[0].members, rec.members) {
		t.Fatalf("members %q written as %q and read back as %+v, %v", rec.members, out, back, err)
	}
}

// Records whose deadline is long past are dropped at the next write, and
// not resumed before then.
func TestNoticeStoreDropsRecordsLongPastTheirDeadline(t *testing.T) {
	now := time.Now()
	old := noticeRecord{nodeNotice{"a", telemetry.ReclaimNotice{ID: "old", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now.Add(-time.Hour), Deadline: now.Add(-time.Hour + 2*time.Minute)}},
		[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}, nil, time.Time{}}
	fresh := old
	fresh.notice.ID, fresh.notice.Detected, fresh.notice.Deadline = "fresh", now, now.Add(time.Minute)
	s := noticeStore(fake.NewClientset())
	ctx := context.Background()
	saved := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "penny-system", Name: "penny-reclaim-notices"},
		Data: map[string]string{NoticesKey: formatNotices([]noticeRecord{old})}}
	if _, err := s.Client.CoreV1().ConfigMaps("penny-system").Create(ctx, saved, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.put(ctx, fresh, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	got, err := s.load(ctx)
	if err != nil || len(got) != 1 || got[0].notice.ID != "fresh" {
		t.Errorf("loaded %+v, %v: want only the fresh record", got, err)
	}
}

// The records stay under the API server's 1 MiB limit on an object. A
// record whose members' UIDs would take them past it is kept without any
// UIDs, so that a resumed notice still acts on every member, never on some,
// and says so; one that would not fit even so is not written, and put says
// why.
func TestNoticeStoreKeepsRecordsUnderTheSizeLimit(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	rec := func(id string, gangs int) noticeRecord {
		r := noticeRecord{nodeNotice: nodeNotice{"a", telemetry.ReclaimNotice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute)}}}
		for i := range gangs {
			r.gangs = append(r.gangs, gang.Ref{Source: gang.SourceLabel, Namespace: "ml", Name: fmt.Sprintf("g-%06d", i)})
		}
		return r
	}
	var logged []string
	log := funcr.New(func(_, args string) { logged = append(logged, args) }, funcr.Options{})
	s := noticeStore(fake.NewClientset())

	// 30,000 UUIDs take 1.1 MB.
	many := rec("many", 1)
	for i := range 30000 {
		many.members = append(many.members, types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)))
	}
	if err := s.put(ctx, many, log); err != nil {
		t.Fatalf("put without the UIDs: %v", err)
	}
	got, err := s.load(ctx)
	if err != nil || len(got) != 1 || got[0].notice.ID != "many" || len(got[0].gangs) != 1 || got[0].members != nil {
		t.Fatalf("loaded %d records (%v); want the record with its gang and without UIDs", len(got), err)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], `"msg"="recording the notice without its members' UIDs`) ||
		!strings.Contains(logged[0], `"members"=30000`) || !strings.Contains(logged[0], "more than the 921600 a ConfigMap key may hold") {
		t.Errorf("logged %q; want why the UIDs were left out", logged)
	}

	// 50,000 gangs fill 900 kB; 1,500 more do not fit.
	if err := s.put(ctx, rec("full", 50000), log); err != nil {
		t.Fatal(err)
	}
	before, err := s.key().Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = s.put(ctx, rec("over", 1500), log)
	if !errors.Is(err, errTooLarge) || !strings.Contains(err.Error(), "configmap penny-system/penny-reclaim-notices key notices: the records would not fit: 3 notices would take ") {
		t.Errorf("put past the limit: %v; want an error that names the ConfigMap and the size", err)
	}
	if after, err := s.key().Read(ctx); err != nil || after != before {
		t.Errorf("put past the limit changed the records (%v)", err)
	}
	// Removing shrinks the records, and is written whatever their size.
	if err := s.remove(ctx, rec("full", 0).nodeNotice, log); err != nil {
		t.Fatal(err)
	}
	if got, err := s.load(ctx); err != nil || len(got) != 1 || got[0].notice.ID != "many" {
		t.Errorf("loaded %d records (%v) after removing one; want the other", len(got), err)
	}
}

// Every replica records the notice it handles: the record holds the members
// any of them planned to act on, and every live member once one of them
// recorded the notice without UIDs.
func TestNoticeStoreUnitesTheReplicasMembers(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	r := noticeRecord{nodeNotice: nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute)}},
		gangs: []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}}
	s := noticeStore(fake.NewClientset())
	for _, step := range []struct {
		members, want []types.UID
	}{
		{[]types.UID{"uid-2", "uid-3"}, []types.UID{"uid-2", "uid-3"}},
		{[]types.UID{"uid-1", "uid-2"}, []types.UID{"uid-1", "uid-2", "uid-3"}},
		{nil, nil},
		{[]types.UID{"uid-4"}, nil},
	} {
		r.members = step.members
		if err := s.put(ctx, r, testr.New(t)); err != nil {
			t.Fatal(err)
		}
		got, err := s.load(ctx)
		if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0].members, step.want) {
			t.Fatalf("after a put of %q: loaded %+v (%v); want members %q", step.members, got, err, step.want)
		}
	}
}

// A put whose write conflicts reads the store again and merges its own
// record into what it finds then: a record another replica removed in
// between is not written back.
func TestNoticeStorePutMergesAnewAfterAConflict(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Round(0)
	r := noticeRecord{nodeNotice: nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now, Deadline: now.Add(2 * time.Minute)}},
		gangs: []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}, members: []types.UID{"uid-B"}}
	client := fake.NewClientset()
	s := noticeStore(client)
	if err := s.put(ctx, r, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	// Replica B's handling ends (its record removed) just before this
	// replica's first write, which then conflicts.
	conflicted := false
	client.PrependReactor("update", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if conflicted {
			return false, nil, nil
		}
		conflicted = true
		cm := a.(k8stesting.UpdateAction).GetObject().(*corev1.ConfigMap).DeepCopy()
		cm.Data[NoticesKey] = ""
		if err := client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), cm, cm.Namespace); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewConflict(corev1.Resource("configmaps"), cm.Name, errors.New("the object has been modified"))
	})
	r.members = []types.UID{"uid-A"}
	if err := s.put(ctx, r, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	got, err := s.load(ctx)
	if !conflicted || err != nil || len(got) != 1 || !reflect.DeepEqual(got[0].members, []types.UID{"uid-A"}) {
		t.Fatalf("after a put that conflicted (%v): loaded %+v (%v); want this replica's record alone, members [uid-A]", conflicted, got, err)
	}
}

// A scheduler restarted between a postponement that called the gang's
// eviction off and the new lead time acts as the first would have: its
// record holds the new deadline and that the first plan was called off, so
// the restarted scheduler neither evicts the members on the first plan's
// checkpoints nor asks them before the new lead time, and then asks them by
// the same new command as the first scheduler would have.
func TestCoordinatorRestartedAfterAPostponementWaitsForTheNewLeadTime(t *testing.T) {
	client := gangOnAB()
	evicted := recordEvictions(client)
	const lead = time.Minute
	opts := CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}}
	c1 := NewCoordinator()
	cmds1, stop1 := start(t, c1, opts)
	later, first := postponedAfterCommands(t, c1, cmds1, lead, 3*time.Second)
	stop1()
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
	if deadline := later.Deadline.UTC().Format(time.RFC3339Nano); err != nil || !strings.HasSuffix(cm.Data[NoticesKey], " "+deadline+" - - "+deadline+"\n") {
		t.Fatalf("record of the postponed notice: %v %q; want the new deadline, no plan and the new deadline to plan by", err, cm.Data[NoticesKey])
	}

	// The restarted scheduler hears b's agent send the first command's
	// statuses again, and a's agent report the notice.
	c2 := NewCoordinator()
	c2.OnNodeUpdate(nil, &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{later}})
	cmds2, _ := start(t, c2, opts)
	if got := checkpointedOnB(c2, first); got != telemetry.StatusUnknownCommand {
		t.Errorf("the first command's status after the restart: %s, want it unknown", got)
	}
	waitFor(t, "b asked at the new lead time", func() bool { return cmds2.get("b") != nil })
	if got := evicted(); len(got) != 0 {
		t.Fatalf("evicted %v before the new lead time", got)
	}
	again := cmds2.get("b")
	if at, due := cmds2.sentAt("b"), later.Deadline.Add(-lead); at.Before(due) {
		t.Errorf("b asked %v before the new lead time", due.Sub(at))
	}
	if again.GetId() == first.GetId() || again.GetId() != commandID(nodeNotice{"a", later}, "b", later.Deadline) || !again.GetDeadline().AsTime().Equal(later.Deadline) {
		t.Errorf("command %v after the restart: want the new plan's id (not the first %s) and the new deadline", again, first.GetId())
	}
	checkpointedOnB(c2, again)

	waitFor(t, "b's member evicted", func() bool { return reflect.DeepEqual(evicted(), []string{"g-1"}) })
}

// A postponement's record replaces the plan it called off, whatever another
// replica recorded of that plan before or after; the plan made again then
// fills it in, and the replicas' members of that plan are united.
func TestNoticeStoreReplacesAPlanCalledOff(t *testing.T) {
	now := time.Now().UTC().Round(0) // as read back
	first := noticeRecord{nodeNotice: nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-maint-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(5 * time.Minute)}},
		gangs: []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}, members: []types.UID{"uid-1"}}
	later := now.Add(24 * time.Hour)
	calledOff := noticeRecord{nodeNotice: first.nodeNotice, round: later}
	calledOff.notice.Deadline = later
	again := calledOff
	again.gangs, again.members = []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "h"}}, []types.UID{"uid-2"}
	otherReplica := again
	otherReplica.members = []types.UID{"uid-3"}
	s := noticeStore(fake.NewClientset())
	putInTurn(t, s, []putStep{
		{first, first},
		{calledOff, calledOff},
		{first, calledOff}, // a replica still at the first plan
		{again, again},
		{calledOff, again}, // a replica that called it off later
		{otherReplica, noticeRecord{nodeNotice: again.nodeNotice, gangs: again.gangs, members: []types.UID{"uid-2", "uid-3"}, round: later}},
	})
}

// putStep is a record a replica puts in the store, and the one record the
// store holds after.
type putStep struct{ put, want noticeRecord }

// putInTurn puts each step's record in s, in turn, and checks what s holds
// after each.
func putInTurn(t *testing.T, s *NoticeStore, steps []putStep) {
	t.Helper()
	ctx := context.Background()
	for _, step := range steps {
		if err := s.put(ctx, step.put, testr.New(t)); err != nil {
			t.Fatal(err)
		}
		got, err := s.load(ctx)
		if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], step.want) {
			t.Fatalf("after a put of %+v: loaded %+v (%v); want %+v", step.put, got, err, step.want)
		}
	}
}

// A scheduler restarted between the withdrawal of a notice whose plan was
// called off and its announcement again under the same id finds no record
// of the first plan (its handling ended with the withdrawal); it still asks
// b by a new command, which b's agent has not run. A scheduler restarted
// during that plan resumes it with the same command, so b's agent runs it
// once.
func TestCoordinatorRestartedAfterAWithdrawalGivesTheNoticeAnnouncedAgainANewCommand(t *testing.T) {
	client := gangOnAB()
	const lead = time.Minute
	run := func() (*Coordinator, *commander, func()) {
		c := NewCoordinator()
		cmds, stop := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Policy: Policy{MaintenanceLead: lead}})
		return c, cmds, stop
	}
	c1, cmds1, stop1 := run()
	later, first := postponedAfterCommands(t, c1, cmds1, lead, time.Hour)
	withdraw(t, c1, later)
	if recs, err := noticeStore(client).load(context.Background()); err != nil || len(recs) != 0 {
		t.Fatalf("records after the withdrawal: %+v (%v); want none", recs, err)
	}
	stop1()

	c2, cmds2, stop2 := run()
	announceAgain(c2, later, lead)
	waitFor(t, "b asked for the notice announced again", func() bool { return cmds2.get("b") != nil })
	again := cmds2.get("b")
	if again.GetId() == first.GetId() {
		t.Fatalf("b asked for the notice announced again by the first plan's command %s, which its agent has run", first.GetId())
	}
	stop2()

	_, cmds3, _ := run()
	waitFor(t, "b asked by the resumed notice", func() bool { return cmds3.get("b") != nil })
	if got := cmds3.get("b").GetId(); got != again.GetId() {
		t.Errorf("the resumed plan sent %s; want the command sent before the restart, %s", got, again.GetId())
	}
}

// A notice withdrawn and announced again under the same id is a new
// announcement, detected later: its record replaces that of the earlier
// one, whatever a replica still at the earlier one writes after, and the
// end of the earlier one's handling does not remove it.
func TestNoticeStoreKeepsTheLatestAnnouncement(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Round(0) // as read back
	calledOff := noticeRecord{nodeNotice: nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-maint-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(24 * time.Hour)}},
		round: now.Add(24 * time.Hour)}
	again := noticeRecord{nodeNotice: calledOff.nodeNotice, gangs: []gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}},
		members: []types.UID{"uid-1"}}
	again.notice.Detected, again.notice.Deadline = now.Add(time.Hour), now.Add(time.Hour+5*time.Minute)
	s := noticeStore(fake.NewClientset())
	putInTurn(t, s, []putStep{
		{calledOff, calledOff},
		{again, again},
		{calledOff, again}, // a replica that has not heard of the withdrawal
	})
	if err := s.remove(ctx, calledOff.nodeNotice, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.load(ctx); err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], again) {
		t.Errorf("after the earlier announcement's handling ended: loaded %+v (%v); want %+v", got, err, again)
	}
	if err := s.remove(ctx, again.nodeNotice, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.load(ctx); err != nil || len(got) != 0 {
		t.Errorf("after the handling ended: loaded %+v (%v); want no record", got, err)
	}
}

// logLines collects what a logger logs, from any goroutine.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger() logr.Logger {
	return funcr.New(func(_, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, args)
	}, funcr.Options{})
}

func (l *logLines) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(s string) bool { return strings.Contains(s, msg) })
}

// resumedPostponed has a scheduler restart with the record of maintenance
// on node a that a postponement called off after its commands, due in an
// hour, and waits until it has resumed the notice, which waits for its lead
// time. It returns the scheduler's coordinator and the commander it sends
// to.
func resumedPostponed(t *testing.T, client *fake.Clientset, id string, log logr.Logger) (*Coordinator, *commander) {
	t.Helper()
	now := time.Now()
	n := telemetry.ReclaimNotice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now.Add(-time.Minute), Deadline: now.Add(time.Hour)}
	if err := noticeStore(client).put(context.Background(), noticeRecord{nodeNotice: nodeNotice{"a", n}, round: n.Deadline}, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	c := NewCoordinator()
	cmds, _ := start(t, c, CoordinatorOptions{Client: client, Notices: noticeStore(client), Log: log, Policy: Policy{MaintenanceLead: time.Minute}})
	waitingToAct(t, c, "a/"+id)
	return c, cmds
}

// Maintenance postponed after its commands, then withdrawn by the cloud
// while no scheduler ran: the restarted scheduler resumes it from its
// record, and no earlier report of node a's shows it a notice to compare
// with. The first report of a's with its notices known settles it: lacking
// the notice, it calls it off as a live withdrawal does, so that b's member
// is not asked to checkpoint and evicted at the lead time for maintenance
// that no longer exists. Until then the notice waits: a report whose check
// failed, or another node's report, is no withdrawal, nor is no report.
func TestCoordinatorRestartedCallsOffANoticeWithdrawnMeanwhile(t *testing.T) {
	client := gangOnAB()
	logged := &logLines{}
	c, cmds := resumedPostponed(t, client, "aws-maint-5", logged.logger())
	const key = "a/aws-maint-5"

	failed := &telemetry.NodeState{Node: "a"}
	c.OnNodeUpdate(nil, failed)
	c.OnNodeUpdate(nil, &telemetry.NodeState{Node: "b", NoticesKnown: true})
	c.mu.Lock()
	stillWaiting := c.waiting[key] != nil
	c.mu.Unlock()
	if !stillWaiting {
		t.Fatal("the resumed notice called off by a report whose notice check failed, or by another node's report")
	}

	c.OnNodeUpdate(failed, &telemetry.NodeState{Node: "a", NoticesKnown: true})
	waitFor(t, "the resumed notice called off and its record removed", func() bool {
		recs, err := noticeStore(client).load(context.Background())
		c.mu.Lock()
		defer c.mu.Unlock()
		return err == nil && len(recs) == 0 && c.waiting[key] == nil
	})
	if !logged.has("the node's agent no longer reports the notice; its gangs' other members stay") {
		t.Error(`no withdrawal logged ("the node's agent no longer reports the notice")`)
	}
	if got := cmds.get("b"); got != nil {
		t.Errorf("sent %v for a notice the cloud withdrew", got)
	}
}

// A notice that a restarted scheduler resumed and whose node's first
// report with its notices known still carries it goes on; the node's later
// reports compare with that one as usual.
func TestCoordinatorRestartedKeepsANoticeItsNodeStillReports(t *testing.T) {
	client := gangOnAB()
	c, _ := resumedPostponed(t, client, "aws-maint-6", testr.New(t))
	const key = "a/aws-maint-6"
	recs, err := noticeStore(client).load(context.Background())
	if err != nil || len(recs) != 1 {
		t.Fatalf("records %+v (%v); want the resumed notice's", recs, err)
	}
	carried := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{recs[0].notice}, NoticesKnown: true}
	c.OnNodeUpdate(nil, carried)
	c.OnNodeUpdate(carried, carried)
	c.mu.Lock()
	stillWaiting := c.waiting[key] != nil
	c.mu.Unlock()
	if !stillWaiting {
		t.Error("the resumed notice called off by reports that carry it")
	}
	if recs, err := noticeStore(client).load(context.Background()); err != nil || len(recs) != 1 {
		t.Errorf("records %+v (%v); want the resumed notice's", recs, err)
	}
}

// Maintenance postponed after its commands, then withdrawn and announced
// again under the same id while no scheduler ran: the restarted scheduler
// resumes the earlier announcement from its record, and the first report of
// a's carries the later one, dated anew by the agent. That is no move of the
// notice resumed: its handling is called off as a withdrawal's is, and the
// later announcement is planned as its first plan, with the command ids
// every replica gives it, not the earlier announcement's, and its record
// replaces the earlier one's.
func TestCoordinatorRestartedHandlesANoticeAnnouncedAgainMeanwhileAnew(t *testing.T) {
	client := gangOnAB()
	logged := &logLines{}
	const lead = time.Minute
	c, cmds := resumedPostponed(t, client, "aws-maint-8", logged.logger())
	recs, err := noticeStore(client).load(context.Background())
	if err != nil || len(recs) != 1 {
		t.Fatalf("records %+v (%v); want the resumed notice's", recs, err)
	}
	earlier := recs[0]

	again := announceAgain(c, earlier.notice, lead)
	waitFor(t, "the command to b", func() bool { return cmds.get("b") != nil })
	if got, want := cmds.get("b").GetId(), commandID(nodeNotice{"a", again}, "b", time.Time{}); got != want {
		t.Errorf("b asked by %s; want the first plan's command of the notice announced again, %s (the earlier announcement's would be %s)",
			got, want, commandID(earlier.nodeNotice, "b", earlier.round))
	}
	waitFor(t, "the earlier announcement's record replaced by the later one's", func() bool {
		recs, err := noticeStore(client).load(context.Background())
		return err == nil && len(recs) == 1 && recs[0].notice.Detected.Equal(again.Detected)
	})
	if !logged.has("the node's agent no longer reports the notice; its gangs' other members stay") {
		t.Error(`the earlier announcement's handling not called off as a withdrawal's ("the node's agent no longer reports the notice")`)
	}
}
