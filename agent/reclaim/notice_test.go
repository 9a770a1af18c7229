package reclaim

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Maintenance is being acted on and a pod's hook is slow when the cloud
// brings the maintenance forward to seconds from now. The agent waited for
// the hook until the old deadline less the margin, and evicted nothing
// before the VM went; it ends the hook at the new deadline's checkpoint
// time, reports that checkpoint FAILED (it was left REQUESTED, as if the
// agent were stopping), and evicts by the new deadline.
func TestDeadlineBroughtForwardWhilePodsCheckpointCutsTheirHooks(t *testing.T) {
	asked := make(chan struct{}, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case asked <- struct{}{}:
		default:
		}
		// A checkpoint that takes minutes, until the agent hangs up (the
		// server sees that once the body is read).
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	t.Cleanup(hook.Close)
	addr := strings.TrimPrefix(hook.URL, "http://")
	p := evictTestPod("slow")
	p.Annotations = map[string]string{checkpoint.Annotation: "http://:8080/checkpoint"}
	client := fake.NewClientset(p)
	var mu sync.Mutex
	var evictedAt time.Time
	last := map[string]telemetryv1.CheckpointStatus_State{}
	client.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		if evictedAt.IsZero() {
			evictedAt = time.Now()
		}
		return true, nil, nil
	})
	now := time.Now()
	n := notice.Notice{ID: "maintenance", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(3 * time.Minute)}
	var nmu sync.Mutex
	pending := []notice.Notice{n}
	f, err := New(Options{Node: "n1", Client: client, StateDir: t.TempDir(), Recorder: record.NewFakeRecorder(1000), Log: testr.New(t),
		Checkpoints: checkpoint.NewClient(func(*corev1.Pod, string) (string, error) { return addr, nil }),
		Notices: func() ([]notice.Notice, bool) {
			nmu.Lock()
			defer nmu.Unlock()
			return append([]notice.Notice(nil), pending...), true
		},
		Status: func(st *telemetryv1.CheckpointStatus, _ time.Time) {
			mu.Lock()
			defer mu.Unlock()
			last[st.GetPod().GetName()] = st.GetState()
		},
		ReconcileInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go f.Run(ctx)
	f.OnNotice(n)
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the pod's hook was never asked")
	}
	moved := n
	moved.Deadline = time.Now().Add(4 * time.Second)
	nmu.Lock()
	pending = []notice.Notice{moved}
	nmu.Unlock()
	f.Moved(moved)
	time.Sleep(time.Until(moved.Deadline) + 500*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if evictedAt.IsZero() || evictedAt.After(moved.Deadline) {
		t.Errorf("deadline brought forward to %s: pod evicted at %s (zero: not at all), want before it",
			moved.Deadline.Format(time.RFC3339Nano), evictedAt.Format(time.RFC3339Nano))
	}
	if got := last["slow"]; got != telemetryv1.CheckpointStatus_STATE_FAILED {
		t.Errorf("the cut hook's last status is %v, want STATE_FAILED", got)
	}
}

// An agent restarted after a notice was seen resumes its work; when the
// cloud's first answer since no longer lists the notice (the maintenance
// called off while no agent ran), the job is withdrawn rather than acted
// on: the resumed job skipped that check on its first look and evicted the
// node's pods for a cancelled event.
func TestResumedNoticeTheCloudNoLongerListsIsWithdrawn(t *testing.T) {
	p := evictTestPod("job")
	client := fake.NewClientset(p)
	var mu sync.Mutex
	evictions := 0
	client.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		evictions++
		return true, nil, nil
	})
	dir := t.TempDir()
	now := time.Now()
	f, err := New(Options{Node: "n1", Client: client, StateDir: dir, Recorder: record.NewFakeRecorder(1000), Log: testr.New(t),
		Notices:           func() ([]notice.Notice, bool) { return nil, true }, // the cloud answered: no notice
		ReconcileInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Maintenance a minute away, past its lead time: an earlier agent saw it
	// and stopped before acting.
	j := &Job{ID: "notice-maintenance", Deadline: now.Add(time.Minute), Notice: &NoticeRecord{ID: "maintenance",
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		Action: "system-reboot", Detected: now.Add(-time.Hour), Deadline: now.Add(time.Minute)}}
	if err := f.state.save(j); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go f.Run(ctx)
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		saved, ok, err := f.state.load(j.ID)
		return err == nil && ok && saved.Done, nil
	}); err != nil {
		t.Fatal("the resumed job did not end")
	}
	saved, _, _ := f.state.load(j.ID)
	mu.Lock()
	defer mu.Unlock()
	if !saved.Withdrawn || evictions != 0 {
		t.Errorf("resumed notice the cloud no longer lists: withdrawn %v, %d evictions; want withdrawn and none", saved.Withdrawn, evictions)
	}
}
