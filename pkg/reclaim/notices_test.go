package reclaim

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/telemetry"
)

// A scheduler restarted mid-notice, after the reclaimed node's agent evicted
// its own pods, still checkpoints and evicts the gang's members elsewhere.
func TestCoordinatorResumesANoticeAfterARestart(t *testing.T) {
	client := fake.NewClientset(member("g-0", "a", "g"), member("g-1", "b", "g"))
	evicted := recordEvictions(client)
	store := func() *NoticeStore {
		return &NoticeStore{Client: client, Namespace: "penny-system", Name: "penny-reclaim-notices"}
	}
	detected := time.Now()
	n := telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}
	state := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{n}}

	// The first coordinator sends b its command and stops before b's
	// checkpoint is in.
	cmds1 := &commander{sent: map[string]*telemetryv1.CheckpointCommand{}}
	c1 := NewCoordinator()
	ctx1, stop1 := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		c1.Run(ctx1, CoordinatorOptions{Client: client, Commands: cmds1, Notices: store(), Recorder: record.NewFakeRecorder(100), Log: testr.New(t)})
	}()
	c1.OnNodeUpdate(nil, state)
	waitFor(t, "the command to b", func() bool { return cmds1.get("b") != nil })
	stop1()
	<-ran
	cm, err := client.CoreV1().ConfigMaps("penny-system").Get(context.Background(), "penny-reclaim-notices", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data[NoticesKey], "a aws%2Dspot%2D1 SPOT_INTERRUPTION AWS terminate ") || !strings.HasSuffix(cm.Data[NoticesKey], " label:ml/g\n") {
		t.Fatalf("record of the notice being handled: %v %q", err, cm.Data[NoticesKey])
	}
	// a's agent evicts its own member meanwhile.
	if err := client.CoreV1().Pods("ml").Delete(context.Background(), "g-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The second coordinator has only the record to go by; the agent
	// reports the notice again, which must not hide the record's gangs.
	cmds2 := &commander{sent: map[string]*telemetryv1.CheckpointCommand{}}
	c2 := NewCoordinator()
	c2.OnNodeUpdate(nil, state)
	ctx2, stop2 := context.WithCancel(context.Background())
	defer stop2()
	go c2.Run(ctx2, CoordinatorOptions{Client: client, Commands: cmds2, Notices: store(), Recorder: record.NewFakeRecorder(100), Log: testr.New(t)})
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

// A scheduler that starts while the API server cannot answer for a moment
// still resumes what it recorded: one failed read left every recorded
// notice's gangs running short a member.
func TestCoordinatorResumesAfterAFailedFirstRead(t *testing.T) {
	client := fake.NewClientset(member("g-1", "b", "g"))
	detected := time.Now()
	rec := noticeRecord{nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)}},
		[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}}
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
	cmds := &commander{sent: map[string]*telemetryv1.CheckpointCommand{}}
	c := NewCoordinator()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, CoordinatorOptions{Client: client, Commands: cmds, Notices: &NoticeStore{Client: client, Namespace: "penny-system", Name: "penny-reclaim-notices"},
		Recorder: record.NewFakeRecorder(100), Log: testr.New(t)})
	waitFor(t, "the recorded notice's command to b", func() bool { return cmds.get("b") != nil })
}

func TestNoticeRecordLines(t *testing.T) {
	detected := time.Date(2026, 11, 30, 8, 0, 0, 123, time.UTC)
	recs := []noticeRecord{
		{nodeNotice{"b", telemetry.ReclaimNotice{ID: "gce maint/1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Detected: detected}},
			[]gang.Ref{{Source: gang.SourcePodGroup, Namespace: "ml", Name: "pg"}, {Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}}},
		{nodeNotice{"a", telemetry.ReclaimNotice{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "-", Detected: detected, Deadline: detected.Add(2 * time.Minute)}},
			[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "llm"}}},
	}
	data := formatNotices(recs)
	want := "a aws%2Dspot%2D1 SPOT_INTERRUPTION AWS %2D 2026-11-30T08:00:00.000000123Z 2026-11-30T08:02:00.000000123Z label:ml/llm\n" +
		"b gce%20maint%2F1 REBALANCE_RECOMMENDATION GCP - 2026-11-30T08:00:00.000000123Z - podgroup:ml/pg,label:ml/llm\n"
	if data != want {
		t.Fatalf("formatted:\n%s\nwant:\n%s", data, want)
	}
	got, err := parseNotices(data, "src")
	if err != nil || !reflect.DeepEqual(got, []noticeRecord{recs[1], recs[0]}) {
		t.Fatalf("parsed %+v, %v: want the records back", got, err)
	}

	damaged := "nonsense\n" + strings.SplitAfter(data, "\n")[0] +
		"a x SOMETHING AWS - 2026-11-30T08:00:00Z - label:ml/g\n" +
		"a x MAINTENANCE AWS - yesterday - label:ml/g\n" +
		"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - job:ml/g\n"
	got, err = parseNotices(damaged, "configmap penny-system/penny-reclaim-notices key notices")
	if len(got) != 1 || got[0].notice.ID != "aws-spot-1" {
		t.Errorf("kept %+v, want the one good line", got)
	}
	if err == nil {
		t.Fatal("no error for damaged lines")
	}
	for _, w := range []string{`configmap penny-system/penny-reclaim-notices key notices line 1 "nonsense": want "<node> <notice id>`,
		`line 3 "a x SOMETHING`, `kind "SOMETHING"`, `line 4`, `detected "yesterday" is not an RFC 3339 time`,
		`line 5`, `gang "job:ml/g"`, `e.g. "a aws-spot-1 SPOT_INTERRUPTION AWS terminate`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q: want %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "line 2 ") {
		t.Errorf("error %q names the good line", err)
	}
}

// Records whose deadline is long past are dropped at the next write, and
// not resumed before then.
func TestNoticeStoreDropsRecordsLongPastTheirDeadline(t *testing.T) {
	now := time.Now()
	old := noticeRecord{nodeNotice{"a", telemetry.ReclaimNotice{ID: "old", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Detected: now.Add(-time.Hour), Deadline: now.Add(-time.Hour + 2*time.Minute)}},
		[]gang.Ref{{Source: gang.SourceLabel, Namespace: "ml", Name: "g"}}}
	fresh := old
	fresh.notice.ID, fresh.notice.Deadline = "fresh", now.Add(time.Minute)
	s := &NoticeStore{Client: fake.NewClientset(), Namespace: "penny-system", Name: "penny-reclaim-notices"}
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
