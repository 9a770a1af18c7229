package reclaim

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/checkpoint/trainer"
	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/aws"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/cloud"
	"github.com/pennysched/penny/agent/notice/gcp"
	"github.com/pennysched/penny/agent/reclaim"
	"github.com/pennysched/penny/agent/report"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	pkgreclaim "github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// world is everything the runs share: one control plane with KWOK nodes of
// all three clouds, penny-scheduler, the telemetry endpoint with the reclaim
// coordinator (authenticating agents with real TokenReviews), and the
// trainers that stand in for the pods' containers.
type world struct {
	t        *testing.T
	c        *localcluster.Cluster
	env      *telemetrytest.Env
	store    *telemetry.Store
	risk     *pricing.RiskModel
	trainers *trainerFleet
	ds       *appsv1.DaemonSet
	log      logr.Logger
}

const (
	agentNamespace = localcluster.SystemNamespace
	agentSA        = "penny-agent"
	trainerApp     = "reclaim-e2e"
)

// worldOptions change what newWorldWith starts: the scheduler's
// configuration (nil: the deployed one) and, when set, a mover of work back
// to Spot that the reclaim coordinator carries out, as penny-scheduler runs
// it on its leader.
type worldOptions struct {
	schedulerConfig []byte
	returner        *spotrisk.Returner
	prices          pricing.PriceBook
}

func newWorld(t *testing.T, fleet string) *world {
	t.Helper()
	return newWorldWith(t, fleet, worldOptions{})
}

func newWorldWith(t *testing.T, fleet string, o worldOptions) *world {
	t.Helper()
	w := &world{t: t, log: testr.NewWithOptions(t, testr.Options{Verbosity: 0})}
	w.c = harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet), Log: io.Discard})
	ctx := context.Background()

	// The agent as deploy/ ships it: ServiceAccount and DaemonSet, RBAC, and
	// the admission policy and webhook holding it to its own node. (No DaemonSet
	// controller runs: the test makes the agent pods itself, owned by the
	// DaemonSet, which the reclaim flow leaves alone as it would on a real
	// node.)
	for _, f := range []string{"deploy/agent/penny-agent.yaml", "deploy/agent/reclaim.yaml"} {
		data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), f))
		if err != nil {
			t.Fatal(err)
		}
		harness.ApplyYAML(t, w.c, f, data, false)
	}
	// The webhook that holds the agents' evictions to their own node, as
	// penny-scheduler serves it: every eviction the agents make below
	// passes through it.
	harness.ServeAgentEvictions(t, w.c)
	ds, err := w.c.Client.AppsV1().DaemonSets(agentNamespace).Get(ctx, "penny-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.ds = ds

	// penny-scheduler's side, wired as cmd/penny-scheduler wires it.
	coordinator := pkgreclaim.NewCoordinator()
	w.risk = pricing.NewRiskModel(pricing.RiskConfig{})
	w.store = telemetry.NewStore(telemetry.StoreOptions{OnUpdate: coordinator.OnNodeUpdate})
	auth, err := telemetry.NewTokenReviewAuthenticator(w.c.Client.AuthenticationV1(), []string{telemetry.DefaultAudience})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: w.store, Authenticator: auth, AgentServiceAccounts: []string{agentNamespace + "/" + agentSA},
		OnCheckpointStatus: coordinator.OnCheckpointStatus, Log: w.log.WithName("telemetry"),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.env = telemetrytest.StartWith(t, srv)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The notices, and the moves being evicted, kept where
		// penny-scheduler keeps them by default.
		notices := &pkgreclaim.NoticeStore{Client: w.c.Client, Namespace: "penny-system", Name: "penny-reclaim-notices"}
		if err := coordinator.Run(runCtx, pkgreclaim.CoordinatorOptions{Client: w.c.Client, Commands: srv, Risk: w.risk, Notices: notices, Log: w.log.WithName("coordinator")}); err != nil {
			t.Errorf("coordinator: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	var config [][]byte
	if o.schedulerConfig != nil {
		config = append(config, o.schedulerConfig)
	}
	harness.StartScheduler(t, w.c, plugins.Deps{Telemetry: w.store, Risk: w.risk, Returner: o.returner, Prices: o.prices}, config...)
	if o.returner != nil {
		o.returner.SetLeading(func(context.Context) bool { return true })
		moved := make(chan struct{})
		go func() {
			defer close(moved)
			o.returner.Run(runCtx, spotrisk.ReturnerOptions{Mover: coordinator, Moves: &configmaplines.Key{
				Client: w.c.Client, Namespace: "penny-system", Name: "penny-interrupted-runs", Key: spotrisk.MovesKey}})
		}()
		t.Cleanup(func() { cancel(); <-moved })
	}

	w.trainers = startTrainerFleet(t, w.c.Client)
	return w
}

// trainerFleet runs a trainer for every pod of the test's Jobs once the pod
// is bound to a node, and stops it when the pod is deleted — what the
// container runtime would do on a real node. KWOK pods have no reachable IP,
// so the agents reach each pod's trainer through resolve, which maps the pod
// to its trainer's loopback address; everything else about the checkpoint
// call (annotation, request, deadline, answer) is what a real pod sees.
type trainerFleet struct {
	store *trainer.Store
	// takes is how long the next trainers take to checkpoint.
	takes atomic.Int64

	mu      sync.Mutex
	running map[types.UID]*podTrainer
	all     []*podTrainer
}

type podTrainer struct {
	pod     *corev1.Pod // as first seen bound
	key     string      // namespace/index: what a restarted member resumes from
	tr      *trainer.Trainer
	started time.Time
}

func startTrainerFleet(t *testing.T, client kubernetes.Interface) *trainerFleet {
	f := &trainerFleet{store: trainer.NewStore(), running: map[types.UID]*podTrainer{}}
	f.takes.Store(int64(20 * time.Millisecond))
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = "app=" + trainerApp
	}))
	inf := factory.Core().V1().Pods().Informer()
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { f.sync(t, obj) },
		UpdateFunc: func(_, obj any) { f.sync(t, obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				f.stop(p.UID)
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
		f.mu.Lock()
		defer f.mu.Unlock()
		for uid, pt := range f.running {
			pt.tr.Stop()
			delete(f.running, uid)
		}
	})
	return f
}

func (f *trainerFleet) sync(t *testing.T, obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if p.DeletionTimestamp != nil {
		f.stop(p.UID) // the container gets its SIGTERM
		return
	}
	if p.Spec.NodeName == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.running[p.UID]; ok {
		return
	}
	for _, pt := range f.all {
		if pt.pod.UID == p.UID {
			return // ran and stopped: a pod's container does not come back
		}
	}
	key := p.Namespace + "/" + p.Annotations["batch.kubernetes.io/job-completion-index"]
	tr, err := trainer.Start(key, f.store, trainer.Options{CheckpointTakes: time.Duration(f.takes.Load())})
	if err != nil {
		t.Errorf("trainer for %s/%s: %v", p.Namespace, p.Name, err)
		return
	}
	pt := &podTrainer{pod: p.DeepCopy(), key: key, tr: tr, started: time.Now()}
	f.running[p.UID] = pt
	f.all = append(f.all, pt)
}

func (f *trainerFleet) stop(uid types.UID) {
	f.mu.Lock()
	pt, ok := f.running[uid]
	delete(f.running, uid)
	f.mu.Unlock()
	if ok {
		pt.tr.Stop()
	}
}

// resolve is the agents' checkpoint.Resolver.
func (f *trainerFleet) resolve(pod *corev1.Pod, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pt, ok := f.running[pod.UID]
	if !ok {
		return "", fmt.Errorf("pod %s/%s has no running container", pod.Namespace, pod.Name)
	}
	return pt.tr.Addr(), nil
}

// inNamespace lists the trainers that ever ran for pods of ns.
func (f *trainerFleet) inNamespace(ns string) []*podTrainer {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*podTrainer
	for _, pt := range f.all {
		if pt.pod.Namespace == ns {
			out = append(out, pt)
		}
	}
	return out
}

// agent is one penny-agent run in-process: a notice watcher on its node's
// fake metadata service, the reclaim flow, and the report stream to the
// scheduler, authenticated with a real projected token bound to the
// agent's pod on that node. Its Kubernetes client uses the same
// ServiceAccount (RBAC, admission policy and webhook from deploy/agent/reclaim.yaml).
type agent struct {
	node     string
	stateDir string
	watcher  *notice.Watcher
	flow     *reclaim.Flow
	client   kubernetes.Interface

	mu       sync.Mutex
	detected []notice.Notice

	stop func()
}

// metadataURL is a fake metadata service for the agent.
type metadataURL interface{ URL() string }

func (w *world) agentPod(node string) *corev1.Pod {
	w.t.Helper()
	name := "penny-agent-" + node
	if p, err := w.c.Client.CoreV1().Pods(agentNamespace).Get(context.Background(), name, metav1.GetOptions{}); err == nil {
		return p
	}
	return harness.CreatePod(w.t, w.c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: agentNamespace, Labels: map[string]string{"app.kubernetes.io/name": "penny-agent"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: w.ds.Name, UID: w.ds.UID, Controller: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: agentSA,
			Containers: []corev1.Container{{Name: "agent", Image: "registry.example/penny-agent"}},
		},
	})
}

// token is what a projected serviceAccountToken volume in pod would hold.
func (w *world) token(pod *corev1.Pod, audiences ...string) string {
	w.t.Helper()
	tr, err := w.c.Client.CoreV1().ServiceAccounts(agentNamespace).CreateToken(context.Background(), agentSA, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: audiences, ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatalf("TokenRequest for %s: %v", pod.Name, err)
	}
	return tr.Status.Token
}

// startAgent runs an agent for node against its metadata fake, keeping its
// reclaim state in stateDir (a restarted agent gets the same one).
func (w *world) startAgent(node string, md metadataURL, stateDir string) *agent {
	t := w.t
	t.Helper()
	ctx := context.Background()
	pod := w.agentPod(node)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(w.token(pod, telemetry.DefaultAudience)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(w.c.RESTConfig)
	cfg.BearerToken = w.token(pod) // the API server's own audience
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := w.c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Defaults everywhere (poll intervals, wait_for_change, timeouts) but
	// the endpoints.
	src, err := cloud.ForProviderID(n.Spec.ProviderID, cloud.Config{
		AWS: aws.Options{Endpoint: md.URL()}, GCP: gcp.Options{Endpoint: md.URL()}, Azure: azure.Options{Endpoint: md.URL()},
	})
	if err != nil {
		t.Fatal(err)
	}
	log := w.log.WithName(node)
	a := &agent{node: node, stateDir: stateDir, client: client}
	a.watcher = notice.NewWatcher(src, log.WithName("notice"), nil)
	loop := report.NewLoop(&report.Builder{
		Node: node, AgentID: report.NewAgentID(), Version: "e2e",
		Sources: report.Sources{GPUs: telemetrytest.GPUSource{GPUs: 2, Whole: true}, Reclaim: a.watcher},
	}, report.LoopOptions{Log: log.WithName("report")})
	var rc *report.Client
	var rcMu sync.Mutex
	fo := reclaim.Options{
		Node: node, Client: client, StateDir: stateDir,
		Checkpoints: checkpoint.NewClient(w.trainers.resolve),
		Report:      loop.Trigger,
		Status: func(st *telemetryv1.CheckpointStatus, until time.Time) {
			rcMu.Lock()
			defer rcMu.Unlock()
			if rc != nil {
				rc.SendCheckpointStatus(st, until)
			}
		},
		Notices: a.watcher.Settled, ReconcileInterval: 300 * time.Millisecond,
		Log: log.WithName("reclaim"),
	}
	if ack, ok := src.(notice.Acknowledger); ok {
		fo.Acknowledger = ack
	}
	if a.flow, err = reclaim.New(fo); err != nil {
		t.Fatal(err)
	}
	a.watcher.OnNotice(func(n notice.Notice) {
		a.mu.Lock()
		a.detected = append(a.detected, n)
		a.mu.Unlock()
		a.flow.OnNotice(n)
		loop.Trigger()
	})
	rcMu.Lock()
	rc, err = report.NewClient(loop, report.ClientOptions{
		Address: w.env.Addr, TLS: w.env.ClientTLS, TokenFile: tokenFile, Commands: a.flow, Log: log.WithName("uplink"),
	})
	rcMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context){a.watcher.Run, a.flow.Run, loop.Run, rc.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); run(runCtx) }()
	}
	var once sync.Once
	a.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(a.stop)
	return a
}

// lastDetected returns the latest notice the agent's watcher reported.
func (a *agent) lastDetected() (notice.Notice, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.detected) == 0 {
		return notice.Notice{}, false
	}
	return a.detected[len(a.detected)-1], true
}
