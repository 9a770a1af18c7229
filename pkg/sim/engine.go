package sim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	resourceslicetracker "k8s.io/dynamic-resource-allocation/resourceslice/tracker"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	internalcache "k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/dynamicresources"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/nodevolumelimits"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/metrics"
	"k8s.io/kubernetes/pkg/scheduler/util/assumecache"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins/gpupack"
)

// Engine runs one kube-scheduler profile in-process: the framework runtime
// with the real in-tree plugins and the given out-of-tree ones, fed from the
// scheduler's own cache and snapshot, with no API server and no scheduling
// queue. The caller decides which pod is tried when (fill order, trace time),
// and the engine runs one scheduling cycle per call the way kube-scheduler's
// schedulePod does, with two deliberate differences:
//
//   - every node is filtered and every feasible node scored, as with
//     percentageOfNodesToScore=100, so results do not depend on where the
//     round-robin search happened to start;
//   - ties between nodes with the same total score are broken in a seeded
//     way (see TieBreak), so a run is reproducible; kube-scheduler 1.37 takes
//     the first best node in filter completion order, which is not.
//
// Binding runs the profile's Bind plugins after Reserve, Permit and PreBind,
// through Handle.ClientSet(): an in-process API that holds the pods the
// engine is scheduling and applies pods/binding requests as the API server
// does (bindReactor). The bound pod, as read back from it, goes into the
// cache. PostFilter (preemption) is not run: all simulated pods
// share one priority, so preemption could not help them.
//
// An Engine is not safe for concurrent use: run one per goroutine.
type Engine struct {
	fw       framework.Framework
	cache    internalcache.Cache
	snapshot *internalcache.Snapshot
	api      *fake.Clientset
	// pods is the plugins' pod informer, fed by mirror.
	pods   *podInformer
	rng    *rand.Rand
	logger klog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	nodes   map[string]*v1.Node
	bound   map[types.UID]*v1.Pod
	waiting map[types.UID]*waitingPod
	permits *permitLog

	tieBreak          TieBreak
	keepUnschedulable bool
	// rank orders the nodes for TieNodeOrder.
	rank map[string]int
	memo *filterMemo
	// templateInfos are FitsTemplates' node infos, by template.
	templateInfos map[*v1.Node]*framework.NodeInfo

	// Counters for reports.
	cycles int64
}

// EngineOptions configures an Engine.
type EngineOptions struct {
	// Profile is the scheduler profile to run, as kube-scheduler would after
	// defaulting (see Policy.Profile).
	Profile *config.KubeSchedulerProfile
	// Registry holds the out-of-tree plugins the profile may name; it is
	// merged with the in-tree registry.
	Registry frameworkruntime.Registry
	// Nodes start the cluster.
	Nodes []*v1.Node
	// Seed drives tie-breaking between equally scored nodes.
	Seed uint64
	// Parallelism bounds the goroutines Filter and Score use (default 16,
	// kube-scheduler's default).
	Parallelism int
	// TieBreak says how to choose between nodes with the same best score.
	TieBreak TieBreak
	// MemoizeFilters reuses a node's Filter result for a pod identical to an
	// earlier one while the node has not changed (see filterMemo). Only for
	// profiles whose Filter plugins all judge a node by the pod and that
	// node alone: the in-tree ones and the simulator's.
	MemoizeFilters bool
	// KeepUnschedulable leaves a pod that found no node in the API, pending
	// and marked PodScheduled=False as kube-scheduler marks it, until the
	// caller places it or calls Withdraw: plugins see the pods still waiting
	// (a gang's members, gpupack's look-ahead), as they do in a cluster.
	// Without it the pod is dropped (the fill protocol discards such pods).
	KeepUnschedulable bool
}

// TieBreak is how the engine chooses between equally scored nodes.
type TieBreak int

const (
	// TieNodeOrder takes the first of the best nodes in one fixed order of
	// the nodes, shuffled with the run's seed. The FGD paper's artifact
	// breaks ties this way, and kube-scheduler 1.37 takes the first best
	// node of its feasible list too. It packs: the same nodes win every tie.
	TieNodeOrder TieBreak = iota
	// TieRandom draws uniformly among the best nodes, with the run's seed,
	// as kube-scheduler did before 1.27.
	TieRandom
)

// ParseTieBreak reads "node-order" or "random".
func ParseTieBreak(s string) (TieBreak, error) {
	switch s {
	case "node-order", "":
		return TieNodeOrder, nil
	case "random":
		return TieRandom, nil
	}
	return 0, fmt.Errorf("unknown tie-break %q; valid: node-order, random", s)
}

// NewEngine builds the framework for the profile and loads the nodes.
func NewEngine(ctx context.Context, opts EngineOptions) (*Engine, error) {
	if opts.Profile == nil {
		return nil, errors.New("engine needs a scheduler profile")
	}
	ctx, cancel := context.WithCancel(ctx)
	api := fake.NewSimpleClientset()
	api.PrependReactor("create", "pods", bindReactor(api.Tracker()))
	e := &Engine{
		api:     api,
		rng:     rand.New(rand.NewPCG(opts.Seed, 0x9e3779b97f4a7c15)),
		logger:  klog.FromContext(ctx),
		ctx:     ctx,
		cancel:  cancel,
		nodes:   map[string]*v1.Node{},
		bound:   map[types.UID]*v1.Pod{},
		waiting: map[types.UID]*waitingPod{},
		permits: &permitLog{},
	}
	fw, err := e.newFramework(opts)
	if err != nil {
		cancel()
		return nil, err
	}
	e.fw = fw
	e.cache = internalcache.New(ctx, nil, utilfeature.DefaultFeatureGate.Enabled(features.GenericWorkload), utilfeature.DefaultFeatureGate.Enabled(features.CompositePodGroup))
	for _, n := range opts.Nodes {
		if err := e.AddNode(n); err != nil {
			cancel()
			return nil, err
		}
	}
	e.tieBreak = opts.TieBreak
	e.keepUnschedulable = opts.KeepUnschedulable
	if opts.MemoizeFilters {
		e.memo = &filterMemo{bySignature: map[string]map[string]memoized{}}
	}
	e.rank = map[string]int{}
	for i, j := range rand.New(rand.NewPCG(opts.Seed, 0x2545f4914f6cdd1d)).Perm(len(opts.Nodes)) {
		e.rank[opts.Nodes[j].Name] = i
	}
	return e, nil
}

// newFramework wires the framework the way kube-scheduler's scheduler.New
// does. Plugins' informers watch the engine's in-process API, which holds
// the pods being scheduled, bound or still waiting, and nothing else: the
// simulated pods use no volumes or claims.
func (e *Engine) newFramework(opts EngineOptions) (framework.Framework, error) {
	// The framework caches metric streams per plugin; the metrics are created
	// but not registered, so recording them costs nothing. A process that
	// also runs kube-scheduler (an integration test) has them already, from
	// metrics.Register, and its scheduler's goroutines record into them:
	// making them anew would swap them under those goroutines.
	initMetrics.Do(func() {
		if metrics.CacheSize == nil {
			metrics.InitMetrics()
		}
	})
	registry := inTreeRegistry()
	if err := registry.Merge(e.wrapRegistry(opts.Registry)); err != nil {
		return nil, fmt.Errorf("merging plugin registries: %w", err)
	}
	informerFactory := informers.NewSharedInformerFactory(e.api, 0)
	e.pods = newPodInformer()
	informerFactory.InformerFor(&v1.Pod{}, func(clientset.Interface, time.Duration) cache.SharedIndexInformer { return e.pods })
	e.snapshot = internalcache.NewEmptySnapshot()
	parallelism := opts.Parallelism
	if parallelism <= 0 {
		parallelism = 16
	}
	fopts := []frameworkruntime.Option{
		frameworkruntime.WithClientSet(e.api),
		frameworkruntime.WithInformerFactory(informerFactory),
		frameworkruntime.WithSnapshotSharedLister(e.snapshot),
		frameworkruntime.WithMutableSnapshotLister(e.snapshot),
		frameworkruntime.WithParallelism(parallelism),
		// Events go nowhere: a FakeRecorder with a nil channel drops them (one
		// with an unbuffered channel would block the first plugin that records one).
		frameworkruntime.WithEventRecorder(&events.FakeRecorder{}),
		frameworkruntime.WithWaitingPods(frameworkruntime.NewWaitingPodsMap()),
		frameworkruntime.WithPodActivator(activator{}),
		frameworkruntime.WithPodsInPreBind(frameworkruntime.NewPodsInPreBindMap()),
		frameworkruntime.WithSharedCSIManager(nodevolumelimits.NewCSIManager(informerFactory.Storage().V1().CSINodes().Lister())),
		frameworkruntime.WithLogger(e.logger),
	}
	if utilfeature.DefaultFeatureGate.Enabled(features.DynamicResourceAllocation) {
		claims := assumecache.NewAssumeCache(e.logger, informerFactory.Resource().V1().ResourceClaims().Informer(), "ResourceClaim", "", nil)
		slices, err := resourceslicetracker.StartTracker(e.ctx, resourceslicetracker.Options{
			SliceInformer: informerFactory.Resource().V1().ResourceSlices(),
			KubeClient:    e.api,
		})
		if err != nil {
			return nil, fmt.Errorf("starting the resource slice tracker: %w", err)
		}
		fopts = append(fopts, frameworkruntime.WithSharedDRAManager(dynamicresources.NewDRAManager(e.ctx, claims, slices, informerFactory)))
	}
	fw, err := frameworkruntime.NewFramework(e.ctx, registry, opts.Profile, fopts...)
	if err != nil {
		return nil, fmt.Errorf("building scheduler profile %q: %w", opts.Profile.SchedulerName, err)
	}
	informerFactory.Start(e.ctx.Done())
	informerFactory.WaitForCacheSync(e.ctx.Done())
	return fw, nil
}

var initMetrics sync.Once

// Close stops the framework's background goroutines.
func (e *Engine) Close() {
	e.cancel()
	_ = e.fw.Close()
	frameworkruntime.WaitForShutdown(e.fw)
}

// Framework is the framework the engine drives, for tests and tools that
// want to inspect the configured plugins.
func (e *Engine) Framework() framework.Framework { return e.fw }

// AddNode adds a node to the cluster.
func (e *Engine) AddNode(n *v1.Node) error {
	if _, ok := e.nodes[n.Name]; ok {
		return fmt.Errorf("node %q is added twice", n.Name)
	}
	e.nodes[n.Name] = n
	e.cache.AddNode(e.logger, n)
	return nil
}

// RemoveNode takes a node away (a Spot reclaim, a scale-down) and returns the
// pods that ran on it, already removed from the cluster. Pods held at Permit
// on it are rejected; the next SettleWaiting returns them. (kube-scheduler
// would bind such a pod to the node that is gone, and the pod garbage
// collector would delete it for its owner to create again: either way it
// waits again, and allowed here it would run on a node nothing bills.)
func (e *Engine) RemoveNode(name string) ([]*v1.Pod, error) {
	n, ok := e.nodes[name]
	if !ok {
		return nil, fmt.Errorf("node %q is not in the cluster", name)
	}
	for uid, w := range e.waiting {
		if w.node != name {
			continue
		}
		if wp := e.fw.GetWaitingPod(uid); wp != nil {
			wp.Reject("penny-sim", fmt.Sprintf("node %s was removed", name))
			e.permits.record(uid)
		}
	}
	var evicted []*v1.Pod
	for _, p := range e.bound {
		if p.Spec.NodeName == name {
			evicted = append(evicted, p)
		}
	}
	for _, p := range evicted {
		if err := e.Remove(p); err != nil {
			return nil, err
		}
	}
	if err := e.cache.RemoveNode(e.logger, n); err != nil {
		return nil, err
	}
	delete(e.nodes, name)
	return evicted, nil
}

// Nodes is the number of nodes in the cluster.
func (e *Engine) Nodes() int { return len(e.nodes) }

// Bound returns the pods placed on nodes, keyed by UID. Callers must not
// change it.
func (e *Engine) Bound() map[types.UID]*v1.Pod { return e.bound }

// NodeInfos returns the scheduler's current view of every node.
func (e *Engine) NodeInfos() ([]fwk.NodeInfo, error) {
	if err := e.cache.UpdateSnapshot(e.logger, e.snapshot); err != nil {
		return nil, err
	}
	return e.snapshot.NodeInfos().List()
}

// Outcome is what one scheduling attempt did.
type Outcome struct {
	// Pod is the bound pod (NodeName set, annotations written at PreBind or in its Binding)
	// when Node is set.
	Pod *v1.Pod
	// Node is where the pod was bound; empty when it was not.
	Node string
	// Waiting is set when a Permit plugin holds the pod (a gang waiting for
	// its members); it binds or fails in a later Schedule call, reported by
	// Settled.
	Waiting bool
	// Reason says why the pod was not placed, in kube-scheduler's words.
	Reason string
	// Feasible is how many nodes passed Filter.
	Feasible int
	// Best lists the nodes that shared the best score; Node was chosen among
	// them by the tie-break.
	Best []string
}

// Schedule runs one scheduling cycle for the pod and, when it succeeds and no
// Permit plugin holds it, its binding cycle. The pod must have a UID.
func (e *Engine) Schedule(pod *v1.Pod) (Outcome, error) {
	if pod.UID == "" {
		return Outcome{}, fmt.Errorf("pod %s/%s has no UID", pod.Namespace, pod.Name)
	}
	e.cycles++
	// The fake clientset keeps a copy of every request it serves, for tests
	// to inspect; nothing here reads them, and a replay of 100,000 jobs kept
	// gigabytes of them.
	e.api.ClearActions()
	pod = pod.DeepCopy()
	pod.Spec.NodeName = ""
	if err := e.submit(pod); err != nil {
		return Outcome{}, err
	}
	if err := e.cache.UpdateSnapshot(e.logger, e.snapshot); err != nil {
		return Outcome{}, err
	}
	state := framework.NewCycleState()
	best, feasible, reason, err := e.schedulePod(state, pod)
	if err != nil {
		return Outcome{Reason: reason, Feasible: feasible}, err
	}
	if len(best) == 0 {
		return Outcome{Reason: reason, Feasible: feasible}, e.unschedulable(pod, reason)
	}
	out, err := e.reserveAndBind(state, pod, best[0])
	out.Feasible, out.Best = feasible, best
	return out, err
}

// submit puts the pod into the API, if it is not there yet (a retry), and
// shows it to the plugins' pod informer.
func (e *Engine) submit(pod *v1.Pod) error {
	created, err := e.api.CoreV1().Pods(pod.Namespace).Create(e.ctx, pod, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil
	case err != nil:
		return fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return e.mirror(created.Namespace, created.Name, created)
}

// unschedulable records that the pod found no node: kube-scheduler sets its
// PodScheduled condition to False (reason Unschedulable) and leaves it
// pending; without KeepUnschedulable the engine drops it instead.
func (e *Engine) unschedulable(pod *v1.Pod, reason string) error {
	if !e.keepUnschedulable {
		return e.dropFromAPI(pod)
	}
	cur, err := e.api.CoreV1().Pods(pod.Namespace).Get(e.ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	cur = cur.DeepCopy()
	cond := v1.PodCondition{Type: v1.PodScheduled, Status: v1.ConditionFalse, Reason: v1.PodReasonUnschedulable, Message: reason}
	if !podutil.UpdatePodCondition(&cur.Status, &cond) {
		return nil
	}
	updated, err := e.api.CoreV1().Pods(pod.Namespace).UpdateStatus(e.ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("marking pod %s/%s unschedulable: %w", pod.Namespace, pod.Name, err)
	}
	return e.mirror(updated.Namespace, updated.Name, updated)
}

// Withdraw deletes a pod that is waiting (not bound): its owner gave up on
// it, or the run is over.
func (e *Engine) Withdraw(pod *v1.Pod) error {
	if _, ok := e.bound[pod.UID]; ok {
		return fmt.Errorf("pod %s/%s is bound; Remove it", pod.Namespace, pod.Name)
	}
	return e.dropFromAPI(pod)
}

// mirror tells the plugins' pod informer what the API now holds for the
// pod (gone when want is nil).
func (e *Engine) mirror(ns, name string, want *v1.Pod) error {
	return e.pods.set(ns+"/"+name, want)
}

// FitsOn runs PreFilter and Filter for the pod on the named nodes only and
// says whether one passes. A replay uses it to skip retrying a waiting pod
// until a node that gained capacity could take it, the way kube-scheduler's
// queueing hints skip pods an event cannot help.
func (e *Engine) FitsOn(pod *v1.Pod, names []string) (bool, error) {
	if err := e.cache.UpdateSnapshot(e.logger, e.snapshot); err != nil {
		return false, err
	}
	state := framework.NewCycleState()
	// A queueing hint, not a scheduling cycle: it teaches nothing.
	_, s, _ := e.fw.RunPreFilterPlugins(gpupack.WhatIf(e.ctx), state, pod)
	if !s.IsSuccess() {
		if s.IsRejected() {
			return false, nil
		}
		return false, s.AsError()
	}
	seen := map[string]bool{}
	var nodes []fwk.NodeInfo
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		if ni, err := e.snapshot.NodeInfos().Get(name); err == nil { // else: the node has left
			nodes = append(nodes, ni)
		}
	}
	statuses, err := e.filter(state, pod, nodes)
	if err != nil {
		return false, err
	}
	for _, st := range statuses {
		if st.IsSuccess() {
			return true, nil
		}
	}
	return false, nil
}

// schedulePod is kube-scheduler's schedulePod: PreFilter, Filter on every
// node, PreScore and Score on the feasible ones, and the best node. It
// returns the nodes with the best score, the chosen one first.
func (e *Engine) schedulePod(state *framework.CycleState, pod *v1.Pod) (best []string, feasible int, reason string, err error) {
	all, err := e.snapshot.NodeInfos().List()
	if err != nil {
		return nil, 0, "", err
	}
	if len(all) == 0 {
		return nil, 0, "no nodes available to schedule pods", nil
	}
	diagnosis := framework.Diagnosis{NodeToStatus: framework.NewDefaultNodeToStatus()}
	fitErr := func() string {
		return (&framework.FitError{Pod: pod, NumAllNodes: len(all), Diagnosis: diagnosis}).Error()
	}
	preRes, s, unschedulable := e.fw.RunPreFilterPlugins(e.ctx, state, pod)
	if !s.IsSuccess() {
		if !s.IsRejected() {
			return nil, 0, "", s.AsError()
		}
		diagnosis.NodeToStatus.SetAbsentNodesStatus(s)
		diagnosis.PreFilterMsg = s.Message()
		return nil, 0, fitErr(), nil
	}
	nodes := all
	if !preRes.AllNodes() {
		nodes = make([]fwk.NodeInfo, 0, len(preRes.NodeNames))
		for _, n := range all {
			if preRes.NodeNames.Has(n.Node().Name) {
				nodes = append(nodes, n)
			}
		}
		diagnosis.NodeToStatus.SetAbsentNodesStatus(fwk.NewStatus(fwk.UnschedulableAndUnresolvable, fmt.Sprintf("node(s) didn't satisfy plugin(s) %v", sets.List(unschedulable))))
	}

	statuses, err := e.filter(state, pod, nodes)
	if err != nil {
		return nil, 0, "", err
	}
	feasibleNodes := make([]fwk.NodeInfo, 0, len(nodes))
	for i, st := range statuses {
		switch {
		case st.IsSuccess():
			feasibleNodes = append(feasibleNodes, nodes[i])
		default:
			diagnosis.NodeToStatus.Set(nodes[i].Node().Name, st)
		}
	}
	switch len(feasibleNodes) {
	case 0:
		return nil, 0, fitErr(), nil
	case 1:
		return []string{feasibleNodes[0].Node().Name}, 1, "", nil
	}

	if s := e.fw.RunPreScorePlugins(e.ctx, state, pod, feasibleNodes); !s.IsSuccess() {
		return nil, len(feasibleNodes), "", s.AsError()
	}
	scores, s := e.fw.RunScorePlugins(e.ctx, state, pod, feasibleNodes)
	if !s.IsSuccess() {
		return nil, len(feasibleNodes), "", s.AsError()
	}
	for i := range scores {
		if e.tieBreak == TieNodeOrder {
			scores[i].Randomizer = -e.rank[scores[i].Name]
		} else {
			scores[i].Randomizer = e.rng.Int()
		}
	}
	sorted := framework.NewSortedScoredNodes(scores)
	first := sorted.Pop()
	best = []string{first.Name}
	for sorted.Len() > 0 {
		n := sorted.Pop()
		if n.TotalScore != first.TotalScore {
			break
		}
		best = append(best, n.Name)
	}
	return best, len(feasibleNodes), "", nil
}

// filter runs the Filter plugins on the nodes, in parallel, reusing
// memoized results where they still hold.
func (e *Engine) filter(state *framework.CycleState, pod *v1.Pod, nodes []fwk.NodeInfo) ([]*fwk.Status, error) {
	statuses := make([]*fwk.Status, len(nodes))
	todo := make([]int, 0, len(nodes))
	var memo map[string]memoized
	if e.memo != nil {
		memo = e.memo.forPod(pod, e.snapshot)
	}
	for i, ni := range nodes {
		if m, ok := memo[ni.Node().Name]; ok && m.generation == ni.GetGeneration() {
			statuses[i] = m.status
			continue
		}
		todo = append(todo, i)
	}
	e.fw.Parallelizer().Until(e.ctx, len(todo), func(k int) {
		i := todo[k]
		statuses[i] = e.fw.RunFilterPlugins(e.ctx, state, pod, nodes[i])
	}, "Filter")
	for _, i := range todo {
		if statuses[i].Code() == fwk.Error {
			return nil, fmt.Errorf("filtering node %s for pod %s/%s: %w", nodes[i].Node().Name, pod.Namespace, pod.Name, statuses[i].AsError())
		}
		if memo != nil {
			memo[nodes[i].Node().Name] = memoized{generation: nodes[i].GetGeneration(), status: statuses[i]}
		}
	}
	return statuses, nil
}

// reserveAndBind is kube-scheduler's assume, Reserve and Permit, then the
// binding cycle: PreBind, the binding itself and PostBind.
func (e *Engine) reserveAndBind(state *framework.CycleState, pod *v1.Pod, host string) (Outcome, error) {
	assumed := pod.DeepCopy()
	assumed.Spec.NodeName = host
	if err := e.cache.AssumePod(e.logger, assumed); err != nil {
		return Outcome{}, err
	}
	if s := e.fw.RunReservePluginsReserve(e.ctx, state, assumed, host); !s.IsSuccess() {
		return e.unreserve(state, assumed, host, s)
	}
	waits, s := e.fw.RunPermitPlugins(e.ctx, state, assumed, host)
	switch {
	case s.IsWait():
		// The framework's timers run on the wall clock and would end a wait
		// at a point of trace time that depends on the machine. A plugin's
		// own timers run on trace time (PennyGang ends a round so), so the
		// pod waits for the same plugins with timers that never fire.
		for p := range waits {
			waits[p] = time.Duration(math.MaxInt64)
		}
		e.fw.AddWaitingPod(assumed, waits)
		e.waiting[assumed.UID] = &waitingPod{pod: assumed, state: state, node: host}
		return Outcome{Waiting: true, Node: host}, nil
	case !s.IsSuccess():
		return e.unreserve(state, assumed, host, s)
	}
	return e.bind(state, assumed, host)
}

func (e *Engine) unreserve(state *framework.CycleState, assumed *v1.Pod, host string, s *fwk.Status) (Outcome, error) {
	e.fw.RunReservePluginsUnreserve(e.ctx, state, assumed, host)
	if err := e.cache.ForgetPod(e.logger, assumed); err != nil {
		return Outcome{}, err
	}
	if s.IsRejected() {
		reason := fmt.Sprintf("node %s: %s", host, s.Message())
		return Outcome{Reason: reason}, e.unschedulable(assumed, reason)
	}
	if err := e.dropFromAPI(assumed); err != nil {
		return Outcome{}, err
	}
	return Outcome{}, s.AsError()
}

func (e *Engine) bind(state *framework.CycleState, assumed *v1.Pod, host string) (Outcome, error) {
	if s := e.fw.RunPreBindPlugins(e.ctx, state, assumed, host); !s.IsSuccess() {
		return e.unreserve(state, assumed, host, s)
	}
	if s := e.fw.RunBindPlugins(e.ctx, state, assumed, host); !s.IsSuccess() {
		return e.unreserve(state, assumed, host, s)
	}
	boundPod, err := e.api.CoreV1().Pods(assumed.Namespace).Get(e.ctx, assumed.Name, metav1.GetOptions{})
	if err != nil {
		return Outcome{}, fmt.Errorf("reading back pod %s/%s after binding: %w", assumed.Namespace, assumed.Name, err)
	}
	if boundPod.Spec.NodeName != host {
		return Outcome{}, fmt.Errorf("pod %s/%s: the bind plugins bound it to %q, not %s", assumed.Namespace, assumed.Name, boundPod.Spec.NodeName, host)
	}
	if err := e.mirror(boundPod.Namespace, boundPod.Name, boundPod); err != nil {
		return Outcome{}, err
	}
	if err := e.cache.AddPod(e.logger, boundPod); err != nil {
		return Outcome{}, err
	}
	e.bound[boundPod.UID] = boundPod
	e.fw.RunPostBindPlugins(e.ctx, state, boundPod, host)
	return Outcome{Pod: boundPod, Node: host}, nil
}

// AddBoundPod puts a pod that is already on a node (placed by someone else)
// into the cluster. A GPU pod must carry penny.dev/gpu-assignment, or the
// device view cannot know which devices it holds.
func (e *Engine) AddBoundPod(pod *v1.Pod) error {
	if pod.Spec.NodeName == "" || pod.UID == "" {
		return fmt.Errorf("pod %s/%s needs a node and a UID", pod.Namespace, pod.Name)
	}
	if _, ok := e.nodes[pod.Spec.NodeName]; !ok {
		return fmt.Errorf("pod %s/%s is on node %q, which is not in the cluster", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}
	if _, err := gpu.PodAssignment(pod); err != nil {
		return err
	}
	if err := e.submit(pod); err != nil {
		return err
	}
	if err := e.cache.AddPod(e.logger, pod); err != nil {
		return err
	}
	e.bound[pod.UID] = pod
	return nil
}

// Remove takes a bound pod off its node (it finished, or was evicted).
func (e *Engine) Remove(pod *v1.Pod) error {
	p, ok := e.bound[pod.UID]
	if !ok {
		return fmt.Errorf("pod %s/%s is not bound", pod.Namespace, pod.Name)
	}
	if err := e.cache.RemovePod(e.logger, p); err != nil {
		return err
	}
	delete(e.bound, pod.UID)
	return e.dropFromAPI(p)
}

func (e *Engine) dropFromAPI(pod *v1.Pod) error {
	err := e.api.CoreV1().Pods(pod.Namespace).Delete(e.ctx, pod.Name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing pod %s/%s from the in-process API: %w", pod.Namespace, pod.Name, err)
	}
	return e.mirror(pod.Namespace, pod.Name, nil)
}

// waitingPod is a pod a Permit plugin holds.
type waitingPod struct {
	pod   *v1.Pod
	state *framework.CycleState
	node  string
}

// Settled is a waiting pod that was allowed (and bound) or rejected.
type Settled struct {
	Pod  *v1.Pod
	Node string
	// Released is the node a pod that was not bound gave its room back to:
	// pods that found no room while it was held there may fit now.
	Released string
	Reason   string
}

// SettleWaiting binds the waiting pods every Permit plugin has allowed and
// releases the ones a plugin rejected, as kube-scheduler's binding cycles
// would after WaitOnPermit returns. Call it after each Schedule.
func (e *Engine) SettleWaiting() ([]Settled, error) {
	if len(e.waiting) == 0 {
		return nil, nil
	}
	var out []Settled
	// A gang plugin allows its members in map order; bind them in pod order
	// so that a run repeats exactly.
	uids := e.permits.take()
	sort.SliceStable(uids, func(a, b int) bool {
		wa, wb := e.waiting[uids[a]], e.waiting[uids[b]]
		if wa == nil || wb == nil {
			return wa != nil
		}
		return podBefore(wa.pod, wb.pod)
	})
	for _, uid := range uids {
		w, ok := e.waiting[uid]
		if !ok {
			continue
		}
		// Allowed by every plugin, or rejected: WaitOnPermit returns at once.
		delete(e.waiting, uid)
		if s := e.fw.WaitOnPermit(e.ctx, w.pod); !s.IsSuccess() {
			o, err := e.unreserve(w.state, w.pod, w.node, s)
			if err != nil {
				return out, err
			}
			out = append(out, Settled{Pod: w.pod, Released: w.node, Reason: o.Reason})
			continue
		}
		o, err := e.bind(w.state, w.pod, w.node)
		if err != nil {
			return out, err
		}
		s := Settled{Pod: o.Pod, Node: o.Node, Reason: o.Reason}
		if o.Node == "" {
			s.Pod, s.Released = w.pod, w.node
		}
		out = append(out, s)
	}
	return out, nil
}

// Activated returns, in pod order, the pods plugins asked to retry since the
// last call (Handle.Activate).
func (e *Engine) Activated() []*v1.Pod {
	pods := e.permits.takeActivated()
	sort.SliceStable(pods, func(a, b int) bool { return podBefore(pods[a], pods[b]) })
	return pods
}

// podBefore orders pods by namespace, then name.
func podBefore(a, b *v1.Pod) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// RejectWaiting rejects every pod still held at Permit (the run is over, or
// their wait timed out in trace time) and returns them.
func (e *Engine) RejectWaiting(reason string) ([]Settled, error) {
	for uid := range e.waiting {
		if wp := e.fw.GetWaitingPod(uid); wp != nil {
			wp.Reject("penny-sim", reason)
			e.permits.record(uid)
		}
	}
	return e.SettleWaiting()
}

// Waiting is how many pods Permit plugins hold.
func (e *Engine) Waiting() int { return len(e.waiting) }

// bindReactor does for the in-process API what the API server does for a
// pods/binding request (the fake clientset alone ignores it): set the pod's
// node and copy the Binding's annotations onto the pod, which is how
// PennyGPUPack records the devices it chose.
func bindReactor(tracker clienttesting.ObjectTracker) clienttesting.ReactionFunc {
	return func(action clienttesting.Action) (bool, k8sruntime.Object, error) {
		if action.GetSubresource() != "binding" {
			return false, nil, nil
		}
		obj := action.(clienttesting.CreateAction).GetObject()
		b, ok := obj.(*v1.Binding)
		if !ok {
			return true, nil, fmt.Errorf("pods/binding: want a Binding, got %T", obj)
		}
		gvr := v1.SchemeGroupVersion.WithResource("pods")
		cur, err := tracker.Get(gvr, b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		pod := cur.(*v1.Pod).DeepCopy()
		if pod.Spec.NodeName != "" {
			return true, nil, fmt.Errorf("pod %s/%s is already bound to %s", pod.Namespace, pod.Name, pod.Spec.NodeName)
		}
		pod.Spec.NodeName = b.Target.Name
		if len(b.Annotations) > 0 && pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		maps.Copy(pod.Annotations, b.Annotations)
		return true, b, tracker.Update(gvr, pod, pod.Namespace)
	}
}
