package reclaim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/checkpoint/trainer"
	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/gcp"
	"github.com/pennysched/penny/agent/notice/metadatatest"
	"github.com/pennysched/penny/agent/reclaim"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/localcluster"
	pennyreclaim "github.com/pennysched/penny/pkg/reclaim"
)

// One real control plane with KWOK nodes for the package's tests; each test
// uses its own namespace and node.
var cluster *localcluster.Cluster

func TestMain(m *testing.M) {
	spec, err := localcluster.ParseSpec("reclaim-test.yaml", []byte(`
pools:
- {name: spot, count: 7, instanceType: p4d.24xlarge, cloud: aws, capacityType: spot, zone: us-east-1a, cpu: "96", memory: 1152Gi, gpuModel: A100-40GB, gpusPerNode: 8}
`))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster, err = localcluster.Start(context.Background(), localcluster.Options{Spec: spec, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "local cluster:", err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Stop()
	os.Exit(code)
}

// env is one test's node, namespace, trainers and flow.
type env struct {
	t        *testing.T
	node     string
	ns       string
	store    *trainer.Store
	mu       sync.Mutex
	trainers map[string]*trainer.Trainer // by pod name
	// holds gate the checkpoints of the trainers named (hold).
	holds    map[string]chan struct{}
	statuses []*telemetryv1.CheckpointStatus
	until    []time.Time // each status's
	stateDir string
}

func newEnv(t *testing.T, node string) *env {
	t.Helper()
	e := &env{t: t, node: node, ns: fmt.Sprintf("t-%d", time.Now().UnixNano()%1e9), store: trainer.NewStore(),
		trainers: map[string]*trainer.Trainer{}, holds: map[string]chan struct{}{}, stateDir: t.TempDir()}
	ctx := context.Background()
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, tr := range e.trainers {
			tr.Stop()
		}
		// Tests share the nodes. Pods left to the namespace's deletion stay
		// until the namespace controller gets to them (on a loaded machine,
		// well into the next test), and the next test's flow on this node
		// then checkpoints and evicts them too: they go now.
		zero := int64(0)
		if err := cluster.Client.CoreV1().Pods(e.ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{}); err != nil {
			t.Errorf("deleting the test's pods: %v", err)
		}
		cluster.Client.CoreV1().Namespaces().Delete(context.Background(), e.ns, metav1.DeleteOptions{})
		untaint(t, node)
	})
	return e
}

func untaint(t *testing.T, node string) {
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Error(err)
		return
	}
	var kept []corev1.Taint
	for _, tt := range n.Spec.Taints {
		if tt.Key != pennyreclaim.TaintKey {
			kept = append(kept, tt)
		}
	}
	n.Spec.Taints = kept
	cluster.Client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
}

// resolve reaches a pod's trainer on loopback: simulated pods have no IP.
func (e *env) resolve(pod *corev1.Pod, _ string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tr, ok := e.trainers[pod.Name]
	if !ok {
		return "", fmt.Errorf("no trainer runs for pod %s", pod.Name)
	}
	return tr.Addr(), nil
}

// pod creates a pod bound to node, with a trainer behind its hook when
// takes > 0.
func (e *env) pod(name, node string, takes time.Duration, mutate ...func(*corev1.Pod)) *corev1.Pod {
	e.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](60),
			Containers:                    []corev1.Container{{Name: "main", Image: "trainer"}},
		},
	}
	if takes > 0 {
		p.Annotations = map[string]string{checkpoint.Annotation: "http://:8080/checkpoint"}
		e.mu.Lock()
		hold := e.holds[name]
		e.mu.Unlock()
		tr, err := trainer.Start(e.ns+"/"+name, e.store, trainer.Options{CheckpointTakes: takes, Hold: hold})
		if err != nil {
			e.t.Fatal(err)
		}
		e.mu.Lock()
		e.trainers[name] = tr
		e.mu.Unlock()
	}
	for _, m := range mutate {
		m(p)
	}
	var created *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		created, err = cluster.Client.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{})
		return err == nil, nil // the namespace's ServiceAccount appears shortly after it
	})
	if err != nil {
		e.t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

// hold keeps the checkpoints of the trainer that e.pod starts next for name
// writing until release: still writing when a test stops the agent,
// however slow the machine.
func (e *env) hold(name string) (release func()) {
	ch := make(chan struct{})
	e.mu.Lock()
	e.holds[name] = ch
	e.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	e.t.Cleanup(release)
	return release
}

func (e *env) flow(ctx context.Context, o reclaim.Options) (*reclaim.Flow, func()) {
	e.t.Helper()
	o.Node, o.Client, o.StateDir = e.node, cluster.Client, e.stateDir
	o.Checkpoints = checkpoint.NewClient(e.resolve)
	o.Log = testr.NewWithOptions(e.t, testr.Options{Verbosity: 1})
	o.Status = func(st *telemetryv1.CheckpointStatus, until time.Time) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.statuses = append(e.statuses, st)
		e.until = append(e.until, until)
	}
	f, err := reclaim.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return f, stop
}

func spotNotice(id string, in time.Duration) notice.Notice {
	now := time.Now()
	return notice.Notice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now, Deadline: now.Add(in)}
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: not within %v", what, timeout)
	}
}

func taintOf(t *testing.T, node string) *corev1.Taint {
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range n.Spec.Taints {
		if tt.Key == pennyreclaim.TaintKey {
			return &tt
		}
	}
	return nil
}

func gone(t *testing.T, ns, name string) bool {
	p, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	return err == nil && p.DeletionTimestamp != nil
}

func events(t *testing.T, ns, object string) map[string]string {
	out := map[string]string{}
	for _, ev := range eventsAbout(t, ns, object) {
		out[ev.Reason] = ev.Message
	}
	return out
}

// eventsAbout lists the events about an object of the namespace ("default"
// for a node).
func eventsAbout(t *testing.T, ns, object string) []corev1.Event {
	t.Helper()
	list, err := cluster.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.name", object).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func TestSpotNoticeTaintsCheckpointsThenEvictsCheckpointedFirst(t *testing.T) {
	e := newEnv(t, "spot-0")
	ctx := context.Background()
	e.pod("fast", e.node, 20*time.Millisecond)
	e.pod("no-hook", e.node, 0)
	e.pod("elsewhere", "spot-6", 20*time.Millisecond) // another node's: not this agent's
	ds, err := cluster.Client.AppsV1().DaemonSets(e.ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "node-exporter"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.pod("node-exporter-abc", e.node, 0, func(p *corev1.Pod) {
		p.Labels = map[string]string{"app": "x"}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: ptr.To(true)}}
	})

	f, _ := e.flow(ctx, reclaim.Options{SafetyMargin: 2 * time.Second})
	n := spotNotice("aws-spot-terminate-1", 6*time.Second)
	f.OnNotice(n)

	waitFor(t, "taint", time.Second, func() bool { return taintOf(t, e.node) != nil })
	if tt := taintOf(t, e.node); tt.Value != "spot-interruption" || tt.Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("taint %v, want penny.dev/reclaim=spot-interruption:NoSchedule", tt)
	}
	waitFor(t, "checkpoint request", time.Second, func() bool { return len(e.trainers["fast"].Received()) == 1 })
	got := e.trainers["fast"].Received()[0]
	if lag := got.At.Sub(n.Detected); lag > time.Second {
		t.Errorf("checkpoint requested %v after detection, want within 1s", lag)
	}
	if want := n.Deadline.Add(-2 * time.Second); !got.Request.Deadline.Equal(want) {
		t.Errorf("the request's deadline is %v, want the notice's less the safety margin, %v", got.Request.Deadline, want)
	}
	waitFor(t, "evictions", 10*time.Second, func() bool { return gone(t, e.ns, "fast") && gone(t, e.ns, "no-hook") })
	if gone(t, e.ns, "elsewhere") || gone(t, e.ns, "node-exporter-abc") {
		t.Error("evicted a pod of another node or a DaemonSet's")
	}
	if len(e.trainers["elsewhere"].Received()) != 0 {
		t.Error("asked another node's pod to checkpoint")
	}
	waitFor(t, "the job to finish", 5*time.Second, func() bool { return f.Running() == 0 })

	waitFor(t, "events", 5*time.Second, func() bool {
		return events(t, e.ns, "fast")["ReclaimEvicted"] != "" && events(t, e.ns, "no-hook")["NoCheckpointHook"] != "" && events(t, "default", e.node)["ReclaimDrained"] != ""
	})
	fastEvents := events(t, e.ns, "fast")
	for _, r := range []string{"CheckpointRequested", "CheckpointWritten", "ReclaimEvicted"} {
		if fastEvents[r] == "" {
			t.Errorf("no %s event on the checkpointed pod (events: %v)", r, fastEvents)
		}
	}
	t.Logf("node events: %v", events(t, "default", e.node))
	t.Logf("pod events: %v", fastEvents)

	// The checkpointed pod went first: its eviction event says its
	// checkpoint is written and its grace period was cut to the time left.
	if msg := fastEvents["ReclaimEvicted"]; !strings.Contains(msg, "checkpoint is written") {
		t.Errorf("eviction event %q", msg)
	}
	e.mu.Lock()
	states := map[string][]telemetryv1.CheckpointStatus_State{}
	for _, st := range e.statuses {
		states[st.GetPod().GetName()] = append(states[st.GetPod().GetName()], st.GetState())
		// The scheduler counts them apart from its commands' statuses.
		if !telemetryv1.IsNoticeStatus(st.GetCommandId()) {
			t.Errorf("status of the node's own notice sent as command %q, which the scheduler takes for a command it does not know", st.GetCommandId())
		}
	}
	e.mu.Unlock()
	if s := states["fast"]; len(s) != 2 || s[1] != telemetryv1.CheckpointStatus_STATE_DONE {
		t.Errorf("statuses sent for the checkpointed pod: %v, want REQUESTED then DONE", s)
	}
	if s := states["no-hook"]; len(s) != 1 || s[0] != telemetryv1.CheckpointStatus_STATE_NO_HOOK {
		t.Errorf("statuses sent for the pod without hook: %v, want NO_HOOK", s)
	}

	// The state file says the job is done, so the same notice seen again
	// (a restarted agent) does nothing.
	data, err := os.ReadFile(filepath.Join(e.stateDir, "notice-aws-spot-terminate-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var j reclaim.Job
	if err := json.Unmarshal(data, &j); err != nil || !j.Done || !j.Tainted || !j.Pods[e.ns+"/fast"].Evicted {
		t.Fatalf("state %s: want done, tainted, the pod evicted", data)
	}
}

// Work left unfinished long past its deadline means the node outlived it (a
// maintenance reboot mid-job, a stop and start): a restarted agent leaves
// the pods running now alone instead of evicting them with no grace.
func TestRestartedAgentLeavesWorkLongPastItsDeadline(t *testing.T) {
	e := newEnv(t, "spot-4")
	ctx := context.Background()
	e.hold("slow") // still writing when the agent dies
	e.pod("slow", e.node, 1500*time.Millisecond)

	f1, stop1 := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second})
	f1.OnNotice(spotNotice("aws-spot-terminate-stale", 8*time.Second))
	waitFor(t, "the checkpoint request", 2*time.Second, func() bool { return len(e.trainers["slow"].Received()) == 1 })
	stop1()
	// The node comes back an hour after the deadline.
	path := filepath.Join(e.stateDir, "notice-aws-spot-terminate-stale.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var j reclaim.Job
	if err := json.Unmarshal(data, &j); err != nil || j.Done {
		t.Fatalf("state before the restart: %s (%v), want unfinished", data, err)
	}
	j.Deadline = time.Now().Add(-time.Hour)
	if data, err = json.Marshal(&j); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	e.flow(ctx, reclaim.Options{SafetyMargin: time.Second})
	waitFor(t, "the stale job recorded as done", 5*time.Second, func() bool {
		data, _ := os.ReadFile(path)
		var j reclaim.Job
		return json.Unmarshal(data, &j) == nil && j.Done
	})
	if gone(t, e.ns, "slow") {
		t.Error("the restarted agent evicted a pod for work an hour past its deadline")
	}
	if got := len(e.trainers["slow"].Received()); got != 1 {
		t.Errorf("the pod was asked %d times to checkpoint, want once (before the restart)", got)
	}
}

// Maintenance whose work an earlier agent left long past its deadline, and
// that the cloud lists again due later (postponed while no agent ran), is
// work to do: the restarted agent recorded the old work done, with the pods
// left alone, and then ignored the notice until the node rebooted under them.
func TestRestartedAgentActsOnMaintenancePostponedWhileItWasDown(t *testing.T) {
	e := newEnv(t, "spot-5")
	ctx := context.Background()
	now := time.Now()
	id := "aws-instance-event-postponed"
	left := reclaim.Job{Version: 1, ID: "notice-" + id, Deadline: now.Add(-time.Hour), Updated: now.Add(-time.Hour),
		Notice: &reclaim.NoticeRecord{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
			Action: "system-reboot", Detected: now.Add(-2 * time.Hour), Deadline: now.Add(-time.Hour)}}
	data, err := json.Marshal(&left)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.stateDir, "notice-"+id+".json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.pod("job", e.node, 10*time.Millisecond)
	f, set := e.maintenanceFlow(ctx)
	waitFor(t, "the work left recorded as done", 5*time.Second, func() bool {
		data, _ := os.ReadFile(path)
		var j reclaim.Job
		return json.Unmarshal(data, &j) == nil && j.Done
	})
	// Listed as it was (the node outlived it): left alone.
	stale := notice.Notice{ID: id, Kind: left.Notice.Kind, Provider: left.Notice.Provider, Action: "system-reboot", Detected: time.Now(), Deadline: left.Notice.Deadline}
	announce(f, stale, set)
	time.Sleep(300 * time.Millisecond)
	if f.Running() != 0 || taintOf(t, e.node) != nil {
		t.Fatal("acted on maintenance the node outlived")
	}
	// Listed due later: postponed, and acted on.
	later := stale
	later.Deadline = time.Now().Add(10*time.Minute + 700*time.Millisecond)
	announce(f, later, set)
	waitFor(t, "taint", 2*time.Second, func() bool { return taintOf(t, e.node) != nil })
	waitFor(t, "the pod asked to checkpoint at the lead time", 3*time.Second, func() bool { return len(e.trainers["job"].Received()) == 1 })
}

// A Spot notice whose deadline is further off than any cloud gives one (a
// metadata service's error) is acted on by the longest Spot notice: the pod
// is asked to checkpoint by then and evicted, and the node's event says the
// deadline was capped. Taken as said, the pod ran on, its checkpoint asked
// for by a deadline ten years away.
func TestSpotNoticeDeadlineBeyondAnySpotNoticeIsCapped(t *testing.T) {
	e := newEnv(t, "spot-3")
	ctx := context.Background()
	e.pod("fast", e.node, 20*time.Millisecond)
	f, _ := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second})
	// Detected long enough ago that the longest Spot notice ends in 4 s.
	n := spotNotice("aws-spot-terminate-far", 0)
	n.Detected = time.Now().Add(-2*time.Minute + 4*time.Second)
	n.Deadline = n.Detected.Add(10 * 365 * 24 * time.Hour)
	f.OnNotice(n)

	waitFor(t, "checkpoint request", 2*time.Second, func() bool { return len(e.trainers["fast"].Received()) == 1 })
	if got, want := e.trainers["fast"].Received()[0].Request.Deadline, n.Detected.Add(2*time.Minute-time.Second); !got.Equal(want) {
		t.Errorf("the request's deadline is %v, want detection + 2 min less the safety margin, %v", got, want)
	}
	waitFor(t, "eviction", 10*time.Second, func() bool { return gone(t, e.ns, "fast") })
	waitFor(t, "the capped deadline's event", 5*time.Second, func() bool {
		return strings.Contains(events(t, "default", e.node)["ReclaimDeadlineCapped"], "gives at most 2m0s")
	})
	waitFor(t, "the job to finish", 5*time.Second, func() bool { return f.Running() == 0 })
}

func TestAgentRestartMidNoticeFinishesTheJob(t *testing.T) {
	e := newEnv(t, "spot-1")
	ctx := context.Background()
	release := e.hold("slow") // still writing when the agent dies
	e.pod("slow", e.node, 1500*time.Millisecond)
	e.pod("quick", e.node, 10*time.Millisecond)

	f1, stop1 := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second})
	n := spotNotice("aws-spot-terminate-restart", 8*time.Second)
	f1.OnNotice(n)
	waitFor(t, "both checkpoint requests", 2*time.Second, func() bool {
		return len(e.trainers["slow"].Received()) == 1 && len(e.trainers["quick"].Received()) == 1
	})
	waitFor(t, "the quick checkpoint recorded", 2*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(e.stateDir, "notice-aws-spot-terminate-restart.json"))
		return strings.Contains(string(data), "STATE_DONE")
	})
	stop1() // the agent dies while "slow" is still writing its checkpoint
	if gone(t, e.ns, "slow") || gone(t, e.ns, "quick") {
		t.Fatal("pods evicted before the checkpoints were in: the test did not stop the agent mid-notice")
	}

	release() // the restarted agent's request may finish writing
	// A new agent process: same node, same state directory, and no notice
	// (the metadata service has not been read yet).
	f2, _ := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second})
	waitFor(t, "evictions by the restarted agent", 10*time.Second, func() bool { return gone(t, e.ns, "slow") && gone(t, e.ns, "quick") })
	waitFor(t, "the job to finish", 5*time.Second, func() bool { return f2.Running() == 0 })
	if got := len(e.trainers["quick"].Received()); got != 1 {
		t.Errorf("the pod whose checkpoint was written was asked %d times, want once", got)
	}
	slow := e.trainers["slow"].Received()
	if len(slow) != 2 || slow[1].Saved.Step == 0 {
		t.Errorf("the interrupted checkpoint: %d requests (last saved %+v), want it asked again and written", len(slow), slow[len(slow)-1].Saved)
	}
	if !slow[len(slow)-1].Request.Deadline.Equal(n.Deadline.Add(-time.Second)) {
		t.Errorf("the resumed request's deadline %v, want the original notice's %v less the margin", slow[len(slow)-1].Request.Deadline, n.Deadline)
	}
	var j reclaim.Job
	data, _ := os.ReadFile(filepath.Join(e.stateDir, "notice-aws-spot-terminate-restart.json"))
	if err := json.Unmarshal(data, &j); err != nil || !j.Done {
		t.Fatalf("state after the restart: %s", data)
	}
	// The same notice, seen again by the restarted agent's watcher, is
	// known as handled.
	f2.OnNotice(n)
	time.Sleep(200 * time.Millisecond)
	if len(e.trainers["slow"].Received()) != 2 || f2.Running() != 0 {
		t.Error("a handled notice was acted on again")
	}
}

func TestSchedulerCommandChecksOnlyThisNodesPodsAndEvictsNothing(t *testing.T) {
	e := newEnv(t, "spot-2")
	ctx := context.Background()
	e.pod("member-2", e.node, 10*time.Millisecond)
	e.pod("member-3", e.node, 10*time.Millisecond)
	e.pod("member-0", "spot-6", 10*time.Millisecond) // on the reclaimed node, not this one
	f, _ := e.flow(ctx, reclaim.Options{})
	deadline := time.Now().Add(30 * time.Second)
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{
		Id: "gang-cmd-1", Deadline: timestamppb.New(deadline), Reason: "gang ml/job is on node spot-6, which is being reclaimed",
		OriginNode: "spot-6", OriginNoticeId: "aws-spot-terminate-x",
		Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "member-2"}, {Namespace: e.ns, Name: "member-3"}, {Namespace: e.ns, Name: "member-0"}},
	})
	// A second replica sends the same command.
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{Id: "gang-cmd-1", Deadline: timestamppb.New(deadline), Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "member-2"}}})
	waitFor(t, "both members' checkpoints", 2*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		done := 0
		for _, st := range e.statuses {
			if st.GetState() == telemetryv1.CheckpointStatus_STATE_DONE {
				done++
			}
		}
		return done == 2
	})
	waitFor(t, "the job to finish", 2*time.Second, func() bool { return f.Running() == 0 })
	if n := len(e.trainers["member-2"].Received()); n != 1 {
		t.Errorf("member-2 asked %d times for one command sent twice", n)
	}
	if len(e.trainers["member-0"].Received()) != 0 {
		t.Error("the agent checkpointed a pod on another node")
	}
	e.mu.Lock()
	var refused *telemetryv1.CheckpointStatus
	for _, st := range e.statuses {
		if st.GetPod().GetName() == "member-0" {
			refused = st
		}
		if st.GetCommandId() != "gang-cmd-1" {
			t.Errorf("status for command %q", st.GetCommandId())
		}
	}
	e.mu.Unlock()
	if refused == nil || refused.GetState() != telemetryv1.CheckpointStatus_STATE_FAILED || !strings.Contains(refused.GetMessage(), "not on node spot-2") {
		t.Errorf("status for the other node's pod: %v, want FAILED saying it is not on this node", refused)
	}
	if req := e.trainers["member-2"].Received()[0].Request; req.Node != "spot-6" || req.Notice != "aws-spot-terminate-x" {
		t.Errorf("request %+v does not name the reclaimed node and notice", req)
	}
	if gone(t, e.ns, "member-2") || taintOf(t, e.node) != nil {
		t.Error("a checkpoint command evicted pods or tainted the node; the scheduler decides that")
	}
	// The agent's event is the one record on the pod that its gang asked
	// for a checkpoint (the scheduler's replicas record none), so it says
	// why, and says it once for the command sent twice.
	waitFor(t, "CheckpointRequested events", 5*time.Second, func() bool {
		return events(t, e.ns, "member-2")["CheckpointRequested"] != "" && events(t, e.ns, "member-3")["CheckpointRequested"] != ""
	})
	for _, member := range []string{"member-2", "member-3"} {
		list, err := cluster.Client.CoreV1().Events(e.ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", member).String(),
		})
		if err != nil {
			t.Fatal(err)
		}
		n := int32(0)
		for _, ev := range list.Items {
			if ev.Reason != "CheckpointRequested" {
				continue
			}
			n += max(ev.Count, 1)
			if !strings.Contains(ev.Message, "gang ml/job is on node spot-6, which is being reclaimed") {
				t.Errorf("%s's CheckpointRequested event %q does not give the command's reason", member, ev.Message)
			}
		}
		if n != 1 {
			t.Errorf("%s: %d CheckpointRequested events for one command, want 1", member, n)
		}
	}
}

// An agent that stops just after finishing a scheduler command may have
// lost its last statuses with its streams (sent, but still in a buffer).
// The restarted agent sends the command's statuses again, from its state,
// while the deadline is ahead, without asking the pods again; the scheduler
// waits for them to evict the gang's other members before the deadline.
func TestRestartedAgentSendsAFinishedCommandsStatusesAgain(t *testing.T) {
	e := newEnv(t, "spot-6")
	ctx := context.Background()
	e.pod("member-1", e.node, 10*time.Millisecond)
	e.pod("member-2", e.node, 0) // no hook
	e.finishedPod("member-3", corev1.PodSucceeded)
	f, stop := e.flow(ctx, reclaim.Options{})
	deadline := time.Now().Add(30 * time.Second).Truncate(time.Second)
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{
		Id: "gang-cmd-7", Deadline: timestamppb.New(deadline), OriginNode: "spot-8",
		Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "member-1"}, {Namespace: e.ns, Name: "member-2"}, {Namespace: e.ns, Name: "elsewhere"}, {Namespace: e.ns, Name: "member-3"}},
	})
	// A finished command whose deadline has passed: nobody waits for it.
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{
		Id: "gang-cmd-old", Deadline: timestamppb.New(time.Now().Add(1500 * time.Millisecond)), OriginNode: "spot-8",
		Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "member-2"}},
	})
	waitFor(t, "the jobs to finish", 5*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.statuses) >= 6 && f.Running() == 0
	})
	first := map[string]string{}
	e.mu.Lock()
	for _, st := range e.statuses {
		if st.GetCommandId() == "gang-cmd-7" {
			first[st.GetPod().GetName()] = st.GetMessage()
		}
	}
	e.mu.Unlock()
	time.Sleep(1600 * time.Millisecond) // gang-cmd-old's deadline passes
	stop()
	e.mu.Lock()
	e.statuses, e.until = nil, nil
	e.mu.Unlock()

	e.flow(ctx, reclaim.Options{})
	waitFor(t, "the statuses sent again", 5*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.statuses) >= 4
	})
	time.Sleep(200 * time.Millisecond)
	e.mu.Lock()
	defer e.mu.Unlock()
	got := map[string]string{}
	for i, st := range e.statuses {
		if st.GetCommandId() != "gang-cmd-7" {
			t.Errorf("status of command %q sent again after its deadline", st.GetCommandId())
			continue
		}
		if !e.until[i].Equal(deadline) {
			t.Errorf("status of %s sent until %v, want the command's deadline %v", st.GetPod().GetName(), e.until[i], deadline)
		}
		if err := telemetryv1.ValidateCheckpointStatus(st); err != nil {
			t.Errorf("status %v: %v", st, err)
		}
		got[st.GetPod().GetName()] = st.GetState().String()
		// The pods not asked are told apart as they were: one not on the
		// node, one that has finished.
		if name := st.GetPod().GetName(); (name == "elsewhere" || name == "member-3") && st.GetMessage() != first[name] {
			t.Errorf("%s: sent again as %q, first as %q", name, st.GetMessage(), first[name])
		}
	}
	want := map[string]string{"member-1": "STATE_DONE", "member-2": "STATE_NO_HOOK", "elsewhere": "STATE_FAILED", "member-3": "STATE_FAILED"}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(e.statuses) != 4 {
		t.Errorf("sent again %v (%d statuses), want %v once each", got, len(e.statuses), want)
	}
	if n := len(e.trainers["member-1"].Received()); n != 1 {
		t.Errorf("member-1 asked %d times; a finished command's pods are not asked again", n)
	}
}

func TestRebalanceCheckpointsEarlyWithoutEviction(t *testing.T) {
	e := newEnv(t, "spot-4")
	ctx := context.Background()
	e.pod("job", e.node, 10*time.Millisecond)
	f, _ := e.flow(ctx, reclaim.Options{})
	now := time.Now()
	f.OnNotice(notice.Notice{ID: "aws-rebalance-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "rebalance", Detected: now})
	waitFor(t, "checkpoint", 2*time.Second, func() bool { return len(e.trainers["job"].Received()) == 1 })
	waitFor(t, "the job to finish", 2*time.Second, func() bool { return f.Running() == 0 })
	if tt := taintOf(t, e.node); tt == nil || tt.Value != "rebalance-recommendation" {
		t.Errorf("taint %v, want rebalance-recommendation", tt)
	}
	if gone(t, e.ns, "job") {
		t.Error("a rebalance recommendation evicted a pod")
	}
	if dl := e.trainers["job"].Received()[0].Request.Deadline; dl.Sub(now) < time.Minute {
		t.Errorf("early checkpoint deadline %v after the recommendation; it promises none, so the pod gets %v", dl.Sub(now), pennyreclaim.RebalanceCheckpointTimeout)
	}
	// A spot interruption after the recommendation raises the taint.
	f.OnNotice(spotNotice("aws-spot-terminate-after-rebalance", 10*time.Second))
	waitFor(t, "stronger taint", 2*time.Second, func() bool { tt := taintOf(t, e.node); return tt != nil && tt.Value == "spot-interruption" })
}

// maintenance starts a flow (10-minute lead, 100 ms reconciles) on a node
// running one pod with a hook, and announces AWS maintenance due in; the
// function it returns calls the maintenance off.
func (e *env) maintenance(ctx context.Context, id string, in time.Duration) (*reclaim.Flow, func()) {
	e.pod("job", e.node, 10*time.Millisecond)
	now := time.Now()
	maint := notice.Notice{ID: id, Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "system-reboot", Detected: now, Deadline: now.Add(in)}
	f, set := e.maintenanceFlow(ctx)
	announce(f, maint, set)
	return f, func() { set(nil) }
}

// maintenanceFlow is a flow acting ten minutes before maintenance whose
// pending notices the test sets.
func (e *env) maintenanceFlow(ctx context.Context) (*reclaim.Flow, func([]notice.Notice)) {
	var mu sync.Mutex
	var pending []notice.Notice
	f, _ := e.flow(ctx, reclaim.Options{
		Policy:            pennyreclaim.Policy{MaintenanceLead: 10 * time.Minute},
		ReconcileInterval: 100 * time.Millisecond,
		Notices: func() ([]notice.Notice, bool) {
			mu.Lock()
			defer mu.Unlock()
			return append([]notice.Notice(nil), pending...), true
		},
	})
	return f, func(ns []notice.Notice) {
		mu.Lock()
		defer mu.Unlock()
		pending = ns
	}
}

// announce makes the notice pending and hands it to the flow, as the
// watcher does the first time it sees an id (again after a withdrawal).
func announce(f *reclaim.Flow, n notice.Notice, set func([]notice.Notice)) {
	set([]notice.Notice{n})
	f.OnNotice(n)
}

func TestMaintenanceWaitsForItsLeadAndIsCalledOff(t *testing.T) {
	e := newEnv(t, "spot-5")
	ctx := context.Background()
	f, callOff := e.maintenance(ctx, "aws-instance-event-1", 10*time.Minute+700*time.Millisecond)
	waitFor(t, "taint", time.Second, func() bool { return taintOf(t, e.node) != nil })
	if len(e.trainers["job"].Received()) != 0 {
		t.Fatal("checkpointed ten minutes before maintenance; it should wait until its lead time")
	}
	// The cloud calls the maintenance off before the lead time is reached.
	callOff()
	waitFor(t, "the job to end", 3*time.Second, func() bool { return f.Running() == 0 })
	waitFor(t, "taint removed", 3*time.Second, func() bool { return taintOf(t, e.node) == nil })
	if len(e.trainers["job"].Received()) != 0 || gone(t, e.ns, "job") {
		t.Error("acted on maintenance that was called off")
	}
}

// azureNode is a node spot-3 running the pod job, whose agent watches a
// fake Azure Scheduled Events and acknowledges through it.
func azureNode(t *testing.T) (*env, *metadatatest.Azure) {
	t.Helper()
	e := newEnv(t, "spot-3")
	e.pod("job", e.node, 10*time.Millisecond)
	fake := metadatatest.NewAzure(e.node)
	t.Cleanup(fake.Close)
	// Before the fake closes: the watcher stops asking it first.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src := azure.New(azure.Options{Endpoint: fake.URL(), Interval: 50 * time.Millisecond})
	w := notice.NewWatcher(src, testr.New(t), nil)
	f, _ := e.flow(ctx, reclaim.Options{Acknowledger: src, Notices: w.Settled, SafetyMargin: time.Second})
	w.OnNotice(f.OnNotice)
	go w.Run(ctx)
	return e, fake
}

func TestAzurePreemptIsAcknowledgedOnceCheckpointsAreWritten(t *testing.T) {
	e, fake := azureNode(t)

	published := fake.Preempt("0a1b2c3d-preempt", time.Now().Add(30*time.Second))
	waitFor(t, "the acknowledgement", 10*time.Second, func() bool { _, ok := fake.Acked("0a1b2c3d-preempt"); return ok })
	acked, _ := fake.Acked("0a1b2c3d-preempt")
	ck := e.trainers["job"].Received()
	if len(ck) != 1 || ck[0].Saved.Step == 0 || !ck[0].Saved.At.Before(acked) {
		t.Fatalf("acknowledged at %v; the checkpoint %+v must be written before", acked, ck)
	}
	if !gone(t, e.ns, "job") {
		t.Error("acknowledged before the pod was evicted")
	}
	t.Logf("notice published -> acknowledged: %v (Azure would have waited %v)", acked.Sub(published), 30*time.Second)
}

// An Azure event that names a neighbour VM too is acted on here (the pods
// checkpoint and leave) but not acknowledged: Azure would start it for the
// neighbour, whose pods may still be checkpointing. The node says why, in a
// Normal event, rather than the agent logging a failure.
func TestAzureEventSharedWithAnotherVMIsNotAcknowledged(t *testing.T) {
	e, fake := azureNode(t)
	// The node is shared with other tests (and runs of this one): its
	// events are told apart by the event id.
	id := fmt.Sprintf("%x-reboot", time.Now().UnixNano())
	said := func(reason string) string {
		for _, ev := range eventsAbout(t, "default", e.node) {
			if ev.Reason == reason && strings.Contains(ev.Message, id) {
				return ev.Message
			}
		}
		return ""
	}
	fake.AddEvent(metadatatest.AzureEvent{EventID: id, EventType: "Reboot", Resources: []string{e.node, "spot-4"},
		NotBefore: time.Now().Add(5 * time.Second).UTC().Format(http.TimeFormat)})
	waitFor(t, "the node's word on the acknowledgement", 15*time.Second, func() bool { return said("ReclaimNotAcknowledged") != "" })
	if msg := said("ReclaimNotAcknowledged"); !strings.Contains(msg, "not this VM") {
		t.Errorf("ReclaimNotAcknowledged says %q; want why", msg)
	}
	if _, acked := fake.Acked(id); acked {
		t.Error("acknowledged an event Azure would start for spot-4 too")
	}
	if got := said("ReclaimAcknowledgeFailed"); got != "" {
		t.Errorf("a refusal by design reported as a failure: %q", got)
	}
	if !gone(t, e.ns, "job") || len(e.trainers["job"].Received()) != 1 {
		t.Error("the pod must still checkpoint and leave before the reboot")
	}
}

// stuckAck is a cloud that does not answer an acknowledgement until the
// caller gives up, and records the ones it answers once answering.
type stuckAck struct {
	mu     sync.Mutex
	asked  int
	answer bool
	acked  []string
}

func (a *stuckAck) Acknowledge(ctx context.Context, id string) error {
	a.mu.Lock()
	a.asked++
	answer := a.answer
	if answer {
		a.acked = append(a.acked, id)
	}
	a.mu.Unlock()
	if answer {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (a *stuckAck) counts() (asked, acked int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.asked, len(a.acked)
}

// An agent stopped while it tells the cloud the node is ready has not told
// it: the restarted agent must tell it, not find the work recorded done and
// leave the cloud to wait out the notice.
func TestAgentStoppedMidAcknowledgementAcknowledgesAfterTheRestart(t *testing.T) {
	e := newEnv(t, "spot-3")
	e.pod("job", e.node, 10*time.Millisecond)
	ack := &stuckAck{}
	f1, stop1 := e.flow(context.Background(), reclaim.Options{Acknowledger: ack, SafetyMargin: time.Second})
	n := spotNotice("azure-preempt-ack-restart", 30*time.Second)
	n.Provider, n.Action = telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE, "Preempt"
	f1.OnNotice(n)
	waitFor(t, "the acknowledgement asked", 15*time.Second, func() bool { asked, _ := ack.counts(); return asked == 1 })
	stop1() // the agent stops while the cloud has not answered
	if j, ok := e.jobOf("notice-" + n.ID); !ok || j.Done || j.Acknowledged {
		t.Fatalf("state after a stop mid-acknowledgement: %+v; want the work unfinished", j)
	}

	ack.mu.Lock()
	ack.answer = true
	ack.mu.Unlock()
	f2, _ := e.flow(context.Background(), reclaim.Options{Acknowledger: ack, SafetyMargin: time.Second})
	waitFor(t, "the acknowledgement by the restarted agent", 15*time.Second, func() bool { _, acked := ack.counts(); return acked == 1 })
	waitFor(t, "the work done", 10*time.Second, func() bool { return f2.Running() == 0 })
	if j, ok := e.jobOf("notice-" + n.ID); !ok || !j.Done || !j.Acknowledged {
		t.Errorf("state after the restart: %+v; want done and acknowledged", j)
	}
	if got := len(e.trainers["job"].Received()); got != 1 {
		t.Errorf("the pod whose checkpoint was written was asked %d times, want once", got)
	}
}

// Maintenance announced two weeks ahead and called off the next day must not
// keep the node tainted for the rest of the two weeks.
func TestMaintenanceCalledOffLongBeforeItsLeadLiftsTheTaint(t *testing.T) {
	e := newEnv(t, "spot-5")
	ctx := context.Background()
	f, callOff := e.maintenance(ctx, "aws-instance-event-far", 14*24*time.Hour)
	waitFor(t, "taint", 5*time.Second, func() bool { return taintOf(t, e.node) != nil })
	time.Sleep(300 * time.Millisecond) // a few reconciles: the notice is pending, the taint stays
	if taintOf(t, e.node) == nil || f.Running() != 1 {
		t.Fatalf("taint %v, %d jobs running: want the node tainted while the notice is pending", taintOf(t, e.node), f.Running())
	}
	callOff()
	waitFor(t, "the waiting job to end", 10*time.Second, func() bool { return f.Running() == 0 })
	waitFor(t, "taint removed", 10*time.Second, func() bool { return taintOf(t, e.node) == nil })
	if len(e.trainers["job"].Received()) != 0 || gone(t, e.ns, "job") {
		t.Error("acted on maintenance that was called off")
	}
	data, err := os.ReadFile(filepath.Join(e.stateDir, "notice-aws-instance-event-far.json"))
	if err != nil {
		t.Fatal(err)
	}
	var j reclaim.Job
	if err := json.Unmarshal(data, &j); err != nil || !j.Done {
		t.Fatalf("state %s: want the withdrawn notice's job done, so a restart does not wait for it again", data)
	}
}

func TestANoticeCalledOffAndAnnouncedAgainIsActedOn(t *testing.T) {
	e := newEnv(t, "spot-5")
	ctx := context.Background()
	e.pod("job", e.node, 10*time.Millisecond)
	f, set := e.maintenanceFlow(ctx)
	now := time.Now()
	far := notice.Notice{ID: "azure-event-7", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE, Action: "Reboot", Detected: now, Deadline: now.Add(14 * 24 * time.Hour)}
	announce(f, far, set)
	waitFor(t, "taint", 5*time.Second, func() bool { return taintOf(t, e.node) != nil })
	set(nil)
	waitFor(t, "the called-off job to end", 10*time.Second, func() bool { return f.Running() == 0 })
	waitFor(t, "taint removed", 10*time.Second, func() bool { return taintOf(t, e.node) == nil })

	// The cloud brings the same event back, due in a few seconds now.
	again := far
	again.Detected = time.Now()
	again.Deadline = again.Detected.Add(3 * time.Second)
	announce(f, again, set)
	waitFor(t, "taint again", 5*time.Second, func() bool { return taintOf(t, e.node) != nil })
	waitFor(t, "checkpoint and eviction", 15*time.Second, func() bool {
		return len(e.trainers["job"].Received()) > 0 && gone(t, e.ns, "job")
	})
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// penny_reclaim_flows_started_total counts the notices the agent started
// acting on: not a notice seen again while its work runs, nor one a
// restarted agent's watcher sees again and knows as handled.
func TestFlowsStartedCountsEachNoticeOnce(t *testing.T) {
	e := newEnv(t, "spot-6")
	ctx := context.Background()
	e.pod("job", e.node, 10*time.Millisecond)
	reg1 := prometheus.NewRegistry()
	f1, stop1 := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second, Metrics: reclaim.NewMetrics(reg1)})
	n := spotNotice("aws-spot-terminate-counted", 4*time.Second)
	f1.OnNotice(n)
	waitFor(t, "the work to start", 5*time.Second, func() bool { return len(e.trainers["job"].Received()) > 0 })
	f1.OnNotice(n) // withdrawn and announced again while it runs
	waitFor(t, "the job to finish", 10*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(e.stateDir, "notice-aws-spot-terminate-counted.json"))
		var j reclaim.Job
		return json.Unmarshal(data, &j) == nil && j.Done && f1.Running() == 0
	})
	if got := counterValue(t, reg1, "penny_reclaim_flows_started_total"); got != 1 {
		t.Errorf("penny_reclaim_flows_started_total = %v for one notice seen twice, want 1", got)
	}
	stop1()

	// A restarted agent's watcher sees the handled notice again, then a
	// new one (no action: live migration); jobs start in the order seen,
	// so once the second is recorded the first was looked at.
	reg2 := prometheus.NewRegistry()
	f2, _ := e.flow(ctx, reclaim.Options{SafetyMargin: time.Second, Metrics: reclaim.NewMetrics(reg2)})
	f2.OnNotice(n)
	now := time.Now()
	f2.OnNotice(notice.Notice{ID: "gcp-maintenance-migrate-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP, Action: "MIGRATE_ON_HOST_MAINTENANCE", Detected: now, Deadline: now.Add(time.Minute)})
	waitFor(t, "the second notice's job", 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(e.stateDir, "notice-gcp-maintenance-migrate-1.json"))
		return err == nil
	})
	if got := counterValue(t, reg2, "penny_reclaim_flows_started_total"); got != 1 {
		t.Errorf("penny_reclaim_flows_started_total = %v after a restart saw a handled notice and a new one, want 1", got)
	}
}

// jobOf reads a job's state file.
func (e *env) jobOf(id string) (*reclaim.Job, bool) {
	data, err := os.ReadFile(filepath.Join(e.stateDir, id+".json"))
	if err != nil {
		return nil, false
	}
	var j reclaim.Job
	if err := json.Unmarshal(data, &j); err != nil {
		e.t.Fatalf("state of %s: %v", id, err)
	}
	return &j, true
}

// Azure keeps an event's EventId when it moves its NotBefore. Postponed, the
// pods stay past the first time to act; brought forward, they move sooner.
func TestMaintenanceFollowsTheCloudsNewTime(t *testing.T) {
	e := newEnv(t, "spot-4")
	ctx := context.Background()
	e.pod("job", e.node, 10*time.Millisecond)
	f, set := e.maintenanceFlow(ctx)
	now := time.Now()
	due := notice.Notice{ID: "azure-moved", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE, Action: "Reboot", Detected: now, Deadline: now.Add(10*time.Minute + 500*time.Millisecond)}
	postponed := due
	postponed.Deadline = now.Add(14 * 24 * time.Hour).Truncate(time.Second)
	// The cloud has moved the event by the time the flow looks again.
	set([]notice.Notice{postponed})
	f.OnNotice(due)
	waitFor(t, "the job to take the new deadline", 5*time.Second, func() bool {
		j, ok := e.jobOf("notice-azure-moved")
		return ok && j.Deadline.Equal(postponed.Deadline) && j.Notice.Deadline.Equal(postponed.Deadline)
	})
	time.Sleep(time.Until(due.Deadline.Add(-10*time.Minute)) + time.Second) // past the first time to act
	if len(e.trainers["job"].Received()) != 0 || gone(t, e.ns, "job") || f.Running() != 1 {
		t.Fatalf("acted at the first time (checkpoints %v, evicted %v, %d jobs running); the event was postponed by two weeks",
			e.trainers["job"].Received(), gone(t, e.ns, "job"), f.Running())
	}
	sooner := due
	sooner.Deadline = time.Now().Add(10*time.Minute - time.Second)
	set([]notice.Notice{sooner})
	waitFor(t, "checkpoint and eviction once the event is brought forward", 15*time.Second, func() bool {
		return len(e.trainers["job"].Received()) > 0 && gone(t, e.ns, "job")
	})
}

// GCE gives every preemption the same ETag. A VM's second preemption (after
// the first ended) is new work, not the first one seen again.
func TestASecondGCPPreemptionIsActedOn(t *testing.T) {
	e := newEnv(t, "spot-2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := metadatatest.NewGCP()
	defer fake.Close()
	src := gcp.New(gcp.Options{Endpoint: fake.URL(), RequestTimeout: metadatatest.RequestTimeout, RetryInterval: 20 * time.Millisecond, WaitTimeout: time.Second, BootID: "boot-1"})
	w := notice.NewWatcher(src, testr.New(t), nil)
	f, _ := e.flow(ctx, reclaim.Options{Notices: w.Settled, ReconcileInterval: 100 * time.Millisecond, SafetyMargin: time.Second})
	var mu sync.Mutex
	var ids []string
	w.OnNotice(func(n notice.Notice) {
		mu.Lock()
		ids = append(ids, n.ID)
		mu.Unlock()
		f.OnNotice(n)
	})
	go w.Run(ctx)

	// The bounds only stop a hang: each handling is a checkpoint and an
	// eviction through the API server, which CI's loaded cores slowed past
	// 15 s once.
	e.pod("first", e.node, 10*time.Millisecond)
	fake.SetPreempted(true)
	var asked, evicted bool
	var running int
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first pod: checkpoint asked %v, evicted %v; jobs running %d", asked, evicted, running)
		}
	})
	waitFor(t, "the first preemption handled", time.Minute, func() bool {
		asked, evicted, running = len(e.trainers["first"].Received()) > 0, gone(t, e.ns, "first"), f.Running()
		return asked && evicted && running == 0
	})
	fake.SetPreempted(false)
	waitFor(t, "the first preemption over", 5*time.Second, func() bool { n, ok := w.Settled(); return ok && len(n) == 0 })

	e.pod("second", e.node, 10*time.Millisecond)
	fake.SetPreempted(true)
	waitFor(t, "the second preemption handled", time.Minute, func() bool {
		return len(e.trainers["second"].Received()) > 0 && gone(t, e.ns, "second")
	})
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Errorf("notice ids %v, want two different ones", ids)
	}
}

// agentRun is one run of the agent's notice watcher and flow on e's node,
// acting ten minutes before maintenance: it continues the notices an
// earlier run left unfinished, as penny-agent does, acknowledges through a
// source that can, and records the ids it is handed.
type agentRun struct {
	watcher *notice.Watcher
	flow    *reclaim.Flow
	stop    func()
	mu      sync.Mutex
	ids     []string
}

// unfinished are the ids of the notices an earlier run left unfinished,
// most recent first, and when each was detected.
func (e *env) unfinished() ([]string, map[string]time.Time) {
	e.t.Helper()
	unfinished, err := reclaim.UnfinishedNotices(e.stateDir, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	detected := map[string]time.Time{}
	for _, n := range unfinished {
		ids = append(ids, n.ID)
		detected[n.ID] = n.Detected
	}
	return ids, detected
}

func (e *env) gcpAgent(fake *metadatatest.GCP, reconcile time.Duration) *agentRun {
	e.t.Helper()
	ids, detected := e.unfinished()
	src := gcp.New(gcp.Options{Endpoint: fake.URL(), RequestTimeout: metadatatest.RequestTimeout, RetryInterval: 20 * time.Millisecond,
		WaitTimeout: time.Second, UpcomingMaintenancePoll: 20 * time.Millisecond, BootID: "boot-1", Unfinished: ids})
	return e.agentRun(src, detected, reconcile)
}

// gcpAgentWaiting starts an agent, reconciling every reconcile, on a GCP
// fake that announces a maintenance 72 h away, and waits until its work for
// that maintenance waits. The fake closes when the test ends, after the
// agent stops.
func (e *env) gcpAgentWaiting(reconcile time.Duration) (*metadatatest.GCP, *agentRun, time.Time) {
	e.t.Helper()
	fake := metadatatest.NewGCP()
	e.t.Cleanup(fake.Close)
	window := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	fake.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, window))
	a := e.gcpAgent(fake, reconcile)
	waitFor(e.t, "an agent waiting for the announced maintenance", 10*time.Second, func() bool {
		return len(a.noticeIDs()) == 1 && a.flow.Running() == 1
	})
	return fake, a, window
}

func (e *env) azureAgent(fake *metadatatest.Azure, reconcile time.Duration) *agentRun {
	e.t.Helper()
	_, detected := e.unfinished()
	src := azure.New(azure.Options{Endpoint: fake.URL(), Interval: 50 * time.Millisecond, RequestTimeout: metadatatest.RequestTimeout})
	return e.agentRun(src, detected, reconcile)
}

func (e *env) agentRun(src notice.Source, detected map[string]time.Time, reconcile time.Duration) *agentRun {
	a := &agentRun{watcher: notice.NewWatcher(src, testr.New(e.t), nil)}
	a.watcher.Resume(detected)
	ack, _ := src.(notice.Acknowledger)
	ctx, cancel := context.WithCancel(context.Background())
	var stopFlow func()
	a.flow, stopFlow = e.flow(ctx, reclaim.Options{Notices: a.watcher.Settled, ReconcileInterval: reconcile, Acknowledger: ack,
		Policy: pennyreclaim.Policy{MaintenanceLead: 10 * time.Minute}})
	a.watcher.OnNotice(func(n notice.Notice) {
		a.mu.Lock()
		a.ids = append(a.ids, n.ID)
		a.mu.Unlock()
		a.flow.OnNotice(n)
	})
	a.watcher.OnMove(a.flow.Moved)
	done := make(chan struct{})
	go func() { a.watcher.Run(ctx); close(done) }()
	a.stop = func() { cancel(); <-done; stopFlow() }
	e.t.Cleanup(a.stop)
	return a
}

func (a *agentRun) noticeIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ids...)
}

// noticeJobs are the notice jobs in the state directory.
func (e *env) noticeJobs() []string {
	files, err := filepath.Glob(filepath.Join(e.stateDir, "notice-*.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	return files
}

// GCE gives the maintenance it announces no id. An agent that restarts
// after GCE moved the window follows the work an earlier agent began to the
// new time: no withdrawal, no second notice.
func TestRestartedAgentFollowsTheGCPMaintenanceItWaitedFor(t *testing.T) {
	e := newEnv(t, "spot-6")
	fake, first, window := e.gcpAgentWaiting(100 * time.Millisecond)
	id := first.noticeIDs()[0]
	detected := first.watcher.Notices()[0].Detected
	first.stop()

	moved := window.Add(24 * time.Hour)
	fake.SetUpcomingMaintenance(metadatatest.UpcomingMaintenance(gcp.UpcomingScheduled, gcp.UpcomingPending, moved))
	second := e.gcpAgent(fake, 100*time.Millisecond)
	waitFor(t, "the restarted agent following the moved window", 10*time.Second, func() bool {
		j, ok := e.jobOf("notice-" + id)
		return ok && j.Notice.Deadline.Equal(moved)
	})
	// A few reconciles later: a withdrawal would have ended the job.
	time.Sleep(500 * time.Millisecond)
	j, _ := e.jobOf("notice-" + id)
	if j.Done || j.Withdrawn || second.flow.Running() != 1 {
		t.Errorf("job %s after the restart: done %v, withdrawn %v, %d jobs running; want it still waiting", id, j.Done, j.Withdrawn, second.flow.Running())
	}
	// The scheduler tells this announcement from a later one by when it
	// was detected: the restarted agent reports the first agent's time.
	if n := second.watcher.Notices(); len(n) != 1 || n[0].ID != id || !n[0].Detected.Equal(detected) {
		t.Errorf("the restarted agent reports %+v, want %s detected %v", n, id, detected)
	}
	if ids, jobs := second.noticeIDs(), e.noticeJobs(); len(ids) != 1 || ids[0] != id || len(jobs) != 1 {
		t.Errorf("restarted agent: notices %v, jobs %v; want only %s", ids, jobs, id)
	}
}

// Azure keeps an event's EventId. An agent that restarts while its work
// waits for a Reboot sees the same notice, detected when it was; when Azure
// brings the event forward the restarted agent checkpoints, evicts and
// acknowledges once, as the work the earlier agent left.
func TestRestartedAgentFinishesTheAzureEventItWaitedFor(t *testing.T) {
	e := newEnv(t, "spot-5")
	e.pod("job", e.node, 10*time.Millisecond)
	fake := metadatatest.NewAzure(e.node)
	defer fake.Close()
	// The node is shared with other tests: its events are told apart by
	// the event id.
	event := fmt.Sprintf("%x-reboot", time.Now().UnixNano())
	fake.AddEvent(metadatatest.AzureEvent{EventID: event, EventType: "Reboot", NotBefore: time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)})
	// Reconciles an hour apart: only the moved deadline can wake the work.
	first := e.azureAgent(fake, time.Hour)
	waitFor(t, "the first agent waiting for the event", 10*time.Second, func() bool {
		return len(first.noticeIDs()) == 1 && first.flow.Running() == 1
	})
	id := first.noticeIDs()[0]
	detected := first.watcher.Notices()[0].Detected
	first.stop()

	second := e.azureAgent(fake, time.Hour)
	waitFor(t, "the restarted agent seeing the event", 10*time.Second, func() bool {
		return len(second.noticeIDs()) == 1 && second.flow.Running() == 1
	})
	fake.Reschedule(event, time.Now().Add(10*time.Minute-time.Second))
	// The bound only stops a hang (a checkpoint and an eviction through
	// the API server on loaded cores).
	waitFor(t, "the acknowledgement by the restarted agent", time.Minute, func() bool { _, ok := fake.Acked(event); return ok })
	if ids, jobs := second.noticeIDs(), e.noticeJobs(); len(ids) != 1 || ids[0] != id || len(jobs) != 1 || len(e.trainers["job"].Received()) != 1 || !gone(t, e.ns, "job") {
		t.Errorf("restarted agent: notices %v, jobs %v, checkpoint requests %d, evicted %v; want only %s, once", ids, jobs, len(e.trainers["job"].Received()), gone(t, e.ns, "job"), id)
	}
	if n := second.watcher.Notices(); len(n) != 1 || !n[0].Detected.Equal(detected) {
		t.Errorf("the restarted agent reports %+v, want %s detected %v", n, id, detected)
	}
	waitFor(t, "the work done", 10*time.Second, func() bool { return second.flow.Running() == 0 })
	if j, ok := e.jobOf("notice-" + id); !ok || !j.Done || !j.Acknowledged {
		t.Errorf("job %s after the restart: %+v, want done and acknowledged", id, j)
	}
}

// An agent that restarts once the maintenance it waited for is under way,
// maintenance-event's turn come and GCE no longer announcing it, acts on it
// once, as the work the earlier agent left: no second notice, job or
// checkpoint request, and the work is not ended as withdrawn.
func TestRestartedAgentActsOnceOnGCPMaintenanceNoLongerAnnounced(t *testing.T) {
	e := newEnv(t, "spot-6")
	e.pod("job", e.node, 10*time.Millisecond)
	fake, first, _ := e.gcpAgentWaiting(time.Hour)
	id := first.noticeIDs()[0]
	first.stop()

	fake.SetMaintenance(gcp.MaintenanceTerminate)
	fake.SetUpcomingMaintenance("")
	// Reconciles an hour apart: only the moved deadline can wake the work.
	second := e.gcpAgent(fake, time.Hour)
	// The bound only stops a hang (a checkpoint and an eviction through
	// the API server on loaded cores).
	waitFor(t, "checkpoint and eviction by the restarted agent", time.Minute, func() bool {
		return len(e.trainers["job"].Received()) > 0 && gone(t, e.ns, "job")
	})
	if ids, jobs := second.noticeIDs(), e.noticeJobs(); len(ids) != 1 || ids[0] != id || len(jobs) != 1 || len(e.trainers["job"].Received()) != 1 {
		t.Errorf("restarted agent: notices %v, jobs %v, checkpoint requests %d; want only %s, once", ids, jobs, len(e.trainers["job"].Received()), id)
	}
	waitFor(t, "the work done", 10*time.Second, func() bool { return second.flow.Running() == 0 })
	if j, ok := e.jobOf("notice-" + id); !ok || !j.Done || j.Withdrawn {
		t.Errorf("job %s after the restart: %+v, want done, not withdrawn", id, j)
	}
}

// maintenance-event's turn 60 s before an announced maintenance starts is
// that maintenance: the job waiting for it acts at once, and there is no
// second notice, job or checkpoint request.
func TestGCPMaintenanceEventOfAnnouncedMaintenanceIsOneJob(t *testing.T) {
	e := newEnv(t, "spot-6")
	e.pod("job", e.node, 10*time.Millisecond)
	// Reconciles an hour apart: only the move can wake the waiting job.
	fake, a, _ := e.gcpAgentWaiting(time.Hour)
	fake.SetMaintenance(gcp.MaintenanceTerminate)
	// The bound only stops a hang (a checkpoint and an eviction through
	// the API server on loaded cores).
	waitFor(t, "checkpoint and eviction once the maintenance starts", time.Minute, func() bool {
		return len(e.trainers["job"].Received()) > 0 && gone(t, e.ns, "job")
	})
	if ids, jobs := a.noticeIDs(), e.noticeJobs(); len(ids) != 1 || len(jobs) != 1 || len(e.trainers["job"].Received()) != 1 {
		t.Errorf("notices %v, jobs %v, checkpoint requests %d; want one of each", ids, jobs, len(e.trainers["job"].Received()))
	}
	waitFor(t, "the job done", 10*time.Second, func() bool { return a.flow.Running() == 0 })
}

// An agent that restarts in the middle of a command resumes it; a pod
// whose checkpoint was written before the restart and that has finished
// since is still reported DONE, its checkpoint standing, not FAILED as a
// pod that has finished.
func TestResumedCommandKeepsACheckpointWrittenBeforeTheRestart(t *testing.T) {
	e := newEnv(t, "spot-2")
	ctx := context.Background()
	release := e.hold("slow")
	e.pod("slow", e.node, 1500*time.Millisecond)
	e.pod("quick", e.node, 10*time.Millisecond)
	f1, stop1 := e.flow(ctx, reclaim.Options{})
	f1.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{
		Id: "gang-cmd-resumed", Deadline: timestamppb.New(time.Now().Add(30 * time.Second)), OriginNode: "spot-6",
		Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "slow"}, {Namespace: e.ns, Name: "quick"}},
	})
	waitFor(t, "the quick checkpoint recorded", 5*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(e.stateDir, "command-gang-cmd-resumed.json"))
		return strings.Contains(string(data), "STATE_DONE")
	})
	stop1() // the agent dies while "slow" is still writing
	p, err := cluster.Client.CoreV1().Pods(e.ns).Get(ctx, "quick", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodSucceeded
	if _, err := cluster.Client.CoreV1().Pods(e.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.statuses, e.until = nil, nil
	e.mu.Unlock()
	release()

	f2, _ := e.flow(ctx, reclaim.Options{})
	waitFor(t, "the resumed command to finish", 10*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.statuses) >= 2 && f2.Running() == 0
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	var quick []string
	for _, st := range e.statuses {
		if st.GetPod().GetName() == "quick" {
			quick = append(quick, st.GetState().String()+" "+st.GetMessage())
		}
	}
	if len(quick) == 0 {
		t.Fatal("the resumed command said nothing of the pod whose checkpoint was written")
	}
	for _, q := range quick {
		if !strings.HasPrefix(q, "STATE_DONE") {
			t.Errorf("the pod whose checkpoint was written before the restart, finished since: %q, want DONE", q)
		}
	}
}

// A gang member that finished before its gang was reclaimed runs nothing to
// checkpoint: the command does not call its hook (no container serves it)
// and says it finished, rather than reporting it failed for want of an
// answer by the deadline.
func TestSchedulerCommandSkipsFinishedPods(t *testing.T) {
	e := newEnv(t, "spot-2")
	ctx := context.Background()
	e.pod("member-0", e.node, 10*time.Millisecond)
	for _, phase := range []corev1.PodPhase{corev1.PodSucceeded, corev1.PodFailed} {
		e.finishedPod("done-"+strings.ToLower(string(phase)), phase)
	}
	f, _ := e.flow(ctx, reclaim.Options{})
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{
		Id: "gang-cmd-done", Deadline: timestamppb.New(time.Now().Add(30 * time.Second)), OriginNode: "spot-6",
		Pods: []*telemetryv1.PodRef{{Namespace: e.ns, Name: "member-0"}, {Namespace: e.ns, Name: "done-succeeded"}, {Namespace: e.ns, Name: "done-failed"}},
	})
	waitFor(t, "the job to finish", 5*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.statuses) >= 4 && f.Running() == 0
	})
	for _, name := range []string{"done-succeeded", "done-failed"} {
		if n := len(e.trainers[name].Received()); n != 0 {
			t.Errorf("%s, finished, was asked %d times for a checkpoint", name, n)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	got := map[string]string{}
	for _, st := range e.statuses {
		got[st.GetPod().GetName()] = st.GetState().String() + " " + st.GetMessage()
	}
	if !strings.HasPrefix(got["member-0"], "STATE_DONE") {
		t.Errorf("member-0, running: %q, want DONE", got["member-0"])
	}
	for _, name := range []string{"done-succeeded", "done-failed"} {
		if !strings.HasPrefix(got[name], "STATE_FAILED") || !strings.Contains(got[name], "has finished") {
			t.Errorf("%s: %q, want FAILED saying it has finished", name, got[name])
		}
	}
}

// finishedPod makes a pod with a hook on the env's node that has finished
// in phase.
func (e *env) finishedPod(name string, phase corev1.PodPhase) {
	e.t.Helper()
	ctx := context.Background()
	e.pod(name, e.node, 10*time.Millisecond)
	// KWOK starts the pod first; finished before that, it is started
	// again.
	waitFor(e.t, name+" "+string(phase), 10*time.Second, func() bool {
		p, err := cluster.Client.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || p.Status.Phase == phase {
			return err == nil
		}
		if p.Status.Phase == corev1.PodRunning {
			p.Status.Phase = phase
			cluster.Client.CoreV1().Pods(e.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		}
		return false
	})
}
