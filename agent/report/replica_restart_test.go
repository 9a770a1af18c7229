package report

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// onceHandler runs each command once, as the agent's reclaim flow does:
// the first time it answers REQUESTED then DONE for every pod; a command
// that comes again (another replica, or the same one restarted) is not run
// again and says nothing.
type onceHandler struct {
	client *Client
	mu     sync.Mutex
	ran    map[string]bool
}

func (h *onceHandler) HandleCheckpoint(_ context.Context, cmd *telemetryv1.CheckpointCommand) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ran[cmd.GetId()] {
		return
	}
	h.ran[cmd.GetId()] = true
	for _, p := range cmd.GetPods() {
		for _, s := range []telemetryv1.CheckpointStatus_State{telemetryv1.CheckpointStatus_STATE_REQUESTED, telemetryv1.CheckpointStatus_STATE_DONE} {
			h.client.SendCheckpointStatus(&telemetryv1.CheckpointStatus{CommandId: cmd.GetId(), Pod: p, State: s, UpdatedAt: timestamppb.Now()}, cmd.GetDeadline().AsTime())
		}
	}
}

// replica is a scheduler replica: a telemetry endpoint and a reclaim
// coordinator with its own view of the cluster (the gang's members: g-0 on
// the reclaimed node a, g-1 on this agent's node n1).
type replica struct {
	env     *telemetrytest.Env
	coord   *reclaim.Coordinator
	mu      sync.Mutex
	evicted map[string]time.Time
}

func startReplica(t *testing.T, addr string, cert telemetrytest.Cert) *replica {
	t.Helper()
	r := &replica{coord: reclaim.NewCoordinator(), evicted: map[string]time.Time{}}
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml", UID: types.UID("uid-" + name), Labels: map[string]string{gang.LabelName: "g", gang.KeySize: "2"}},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
	}
	client := fake.NewClientset(pod("g-0", "a"), pod("g-1", "n1"))
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.evicted[action.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction).Name] = time.Now()
		return true, nil, nil
	})
	r.env = telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: r.coord.OnCheckpointStatus}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.coord.Run(ctx, reclaim.CoordinatorOptions{Client: client, Commands: r.env.Server, Recorder: record.NewFakeRecorder(100), Log: testr.New(t)})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *replica) evictedAt(pod string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.evicted[pod]
	return at, ok
}

// A scheduler replica that restarts has lost the statuses it got; its
// coordinator takes the notice up again and sends the same command, which
// the agent does not run twice. The agent answers it with the statuses it
// holds, so the restarted replica evicts the gang's member as soon as it
// has asked, not at the deadline less the safety margin.
func TestRestartedReplicaGetsTheStatusesOfACommandItSendsAgain(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	_, p, _ := net.SplitHostPort(telemetrytest.FreeAddr(t))
	first := startReplica(t, "127.0.0.1:"+p, cert)
	res := &fixedResolver{hosts: []string{"127.0.0.1"}}
	loop, client := clientOf(t, p, cert, res, nil)
	handler := &onceHandler{client: client, ran: map[string]bool{}}
	client.opts.Commands = handler
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the agent connected", func() bool { return client.Connected() == 1 })

	now := time.Now()
	notice := &telemetry.NodeState{Node: "a", ReclaimNotices: []telemetry.ReclaimNotice{{
		ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now, Deadline: now.Add(2 * time.Minute),
	}}}
	first.coord.OnNodeUpdate(nil, notice)
	eventually(t, 5*time.Second, "g-1 evicted by the first replica once its checkpoint is in", func() bool { _, ok := first.evictedAt("g-1"); return ok })

	// The replica restarts, at a new address, knowing nothing.
	first.env.Stop()
	second := startReplica(t, "127.0.0.2:"+p, cert)
	res.set("127.0.0.2")
	eventually(t, 5*time.Second, "the agent connected to the new replica", func() bool { _, ok := second.env.Store.Node("n1"); return ok })
	asked := time.Now()
	second.coord.OnNodeUpdate(nil, notice) // the reclaimed node's agent reports the notice to it
	eventually(t, 5*time.Second, "g-1 evicted by the restarted replica", func() bool { _, ok := second.evictedAt("g-1"); return ok })
	at, _ := second.evictedAt("g-1")
	if d := at.Sub(asked); d > 3*time.Second {
		t.Errorf("the restarted replica evicted g-1 %v after the notice, want at once (the deadline is 2 minutes away)", d)
	}
	handler.mu.Lock()
	defer handler.mu.Unlock()
	if len(handler.ran) != 1 {
		t.Errorf("commands run %v, want the one command once", handler.ran)
	}
}
