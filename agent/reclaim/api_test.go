package reclaim

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/pennysched/penny/agent/checkpoint"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// countingHook is a checkpoint hook that counts the pods that asked it.
func countingHook(t *testing.T) (*atomic.Int32, *checkpoint.Client) {
	t.Helper()
	var asked atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { asked.Add(1) }))
	t.Cleanup(hook.Close)
	addr := strings.TrimPrefix(hook.URL, "http://")
	return &asked, checkpoint.NewClient(func(*corev1.Pod, string) (string, error) { return addr, nil })
}

// runFlow starts f and waits for its informer.
func runFlow(t *testing.T, f *Flow) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go f.Run(ctx)
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return f.synced(), nil }); err != nil {
		t.Fatal("the agent's informer did not sync")
	}
	return ctx
}

// The API server stops answering (a node cut off as it is reclaimed, an
// overloaded control plane): a pod list hangs rather than failing. It had no
// bound, and the checkpoints of a 30-second notice waited on it; the
// agent's own copy of the pods serves once a quarter of the time left is
// spent.
func TestPodListTheAPIServerDoesNotAnswerFallsBackToTheInformer(t *testing.T) {
	hung := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hung.Close)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: hung.URL})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Options{Node: "n1", Client: client, StateDir: t.TempDir(), Recorder: record.NewFakeRecorder(10), Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	// What the agent's watch showed before the API server went quiet.
	if err := f.factory.Core().V1().Pods().Informer().GetIndexer().Add(evictTestPod("job")); err != nil {
		t.Fatal(err)
	}
	listed := make(chan []*corev1.Pod, 1)
	go func() {
		pods, _ := f.podsOnNodeNow(context.Background(), time.Now().Add(4*time.Second))
		listed <- pods
	}()
	select {
	case pods := <-listed:
		if len(pods) != 1 || pods[0].Name != "job" {
			t.Errorf("listed %v, want the informer's ml/job", pods)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the list still waits on an API server that does not answer, 4 s on, the notice's work due then")
	}
}

// The scheduler lists a gang's members from the API server and commands
// this node to checkpoint one bound here a moment ago, which the agent's
// watch does not show yet. The agent answered FAILED "not on node" without
// asking the pod, and the coordinator, every status final, evicted it at
// once without a checkpoint. A pod the API server has on another node is
// still refused: the agent acts for its own node only.
func TestCommandReachesAPodTheWatchHasNotShownYet(t *testing.T) {
	asked, hooks := countingHook(t)
	client := fake.NewClientset()
	lagging := watch.NewFake() // shows nothing within the test
	t.Cleanup(lagging.Stop)
	client.PrependWatchReactor("pods", func(clienttesting.Action) (bool, watch.Interface, error) { return true, lagging, nil })
	var mu sync.Mutex
	states := map[string]telemetryv1.CheckpointStatus_State{}
	f, err := New(Options{Node: "n1", Client: client, StateDir: t.TempDir(), Recorder: record.NewFakeRecorder(1000), Log: testr.New(t), Checkpoints: hooks,
		Status: func(st *telemetryv1.CheckpointStatus, _ time.Time) {
			mu.Lock()
			states[st.GetPod().GetName()] = st.GetState()
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := runFlow(t, f)
	here, there := evictTestPod("here"), evictTestPod("there")
	there.Spec.NodeName = "n2"
	for _, p := range []*corev1.Pod{here, there} {
		p.Annotations = map[string]string{checkpoint.Annotation: "http://:8080/checkpoint"}
		if _, err := client.CoreV1().Pods("ml").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{Id: "gang-1",
		Pods:     []*telemetryv1.PodRef{{Namespace: "ml", Name: "here"}, {Namespace: "ml", Name: "there"}},
		Deadline: timestamppb.New(time.Now().Add(30 * time.Second)), OriginNode: "n0"})
	state := func(name string) telemetryv1.CheckpointStatus_State {
		mu.Lock()
		defer mu.Unlock()
		return states[name]
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return state("here") == telemetryv1.CheckpointStatus_STATE_DONE && state("there") != telemetryv1.CheckpointStatus_STATE_UNSPECIFIED, nil
	}); err != nil {
		t.Fatalf("statuses: here %v, there %v; want here DONE", state("here"), state("there"))
	}
	if got := state("there"); got != telemetryv1.CheckpointStatus_STATE_FAILED || asked.Load() != 1 {
		t.Errorf("a pod on n2: status %v, hooks asked %d; want FAILED and only n1's pod asked", got, asked.Load())
	}
}

// heldHook is a flow on n1 whose checkpoint hook counts the requests and
// answers none until release (or the test's end), and a pod with a hook.
func heldHook(t *testing.T) (f *Flow, p *corev1.Pod, asked *atomic.Int32, release func()) {
	t.Helper()
	asked = &atomic.Int32{}
	held := make(chan struct{})
	release = sync.OnceFunc(func() { close(held) })
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		<-held
	}))
	t.Cleanup(hook.Close)
	t.Cleanup(release) // before the close: it waits for the requests
	addr := strings.TrimPrefix(hook.URL, "http://")
	f, err := New(Options{Node: "n1", Client: fake.NewClientset(), StateDir: t.TempDir(), Recorder: record.NewFakeRecorder(10), Log: testr.New(t),
		Checkpoints: checkpoint.NewClient(func(*corev1.Pod, string) (string, error) { return addr, nil })})
	if err != nil {
		t.Fatal(err)
	}
	p = evictTestPod("member")
	p.Annotations = map[string]string{checkpoint.Annotation: "http://:8080/checkpoint"}
	return f, p, asked, release
}

// waitAsked waits until the hook has been asked.
func waitAsked(t *testing.T, asked *atomic.Int32) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) { return asked.Load() > 0, nil }); err != nil {
		t.Fatal("the hook was never asked")
	}
}

// A node reclaimed with others of its pool runs its own notice while the
// scheduler's command for the same gang member comes: the pod's hook is
// asked once, and both jobs take its answer. Each job asked it, two
// requests at once that a trainer may refuse or run twice.
func TestOneCheckpointRequestAtATimePerPod(t *testing.T) {
	f, p, asked, release := heldHook(t)
	results := make(chan checkpoint.Result, 2)
	for range 2 {
		go func() {
			results <- f.checkpoint(context.Background(), p, checkpoint.Request{Deadline: time.Now().Add(10 * time.Second)})
		}()
	}
	waitAsked(t, asked)
	time.Sleep(200 * time.Millisecond) // time for a second request, were there one
	release()
	for range 2 {
		if res := <-results; !res.Done() {
			t.Errorf("a job's checkpoint: %v %q, want done", res.State, res.Message)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the hook was asked %d times at once, want once", n)
	}
}

// A Spot notice that finds a pod's hook still answering a scheduler
// command's request, due much later, stops waiting at its own deadline, so
// that it evicts before the reclaim.
func TestCheckpointInFlightDoesNotHoldAJobDueSooner(t *testing.T) {
	f, p, asked, _ := heldHook(t)
	go f.checkpoint(context.Background(), p, checkpoint.Request{Deadline: time.Now().Add(time.Minute)})
	waitAsked(t, asked)
	soon := time.Now().Add(300 * time.Millisecond)
	result := make(chan checkpoint.Result, 1)
	go func() { result <- f.checkpoint(context.Background(), p, checkpoint.Request{Deadline: soon}) }()
	select {
	case res := <-result:
		if res.Done() || !strings.Contains(res.Message, "did not answer by the deadline "+soon.UTC().Format(time.RFC3339)) {
			t.Errorf("the notice's checkpoint: %v %q; want failed at its own deadline", res.State, res.Message)
		}
		if late := time.Since(soon); late > time.Second {
			t.Errorf("the notice waited %v past its deadline", late)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the notice's checkpoint waited for the command's request, due in a minute")
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the hook was asked %d times, want once", n)
	}
}
