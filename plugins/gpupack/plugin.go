// Package gpupack is Penny's GPU packing plugin. It decides the node and the
// devices of every GPU pod — which GPUs, which share of a GPU, which MIG
// placement — keeps its own device view exact while bindings are in flight,
// writes the choice on the pod (penny.dev/gpu-assignment) so that the node
// side can honour it and a restarted scheduler can rebuild its view, and
// scores nodes so that the cluster stays able to place what is coming (see
// docs/gpupack.md and package packing for the measure).
package gpupack

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// Name is the plugin's name in the scheduler configuration.
const Name = "PennyGPUPack"

// GPUPack is the plugin.
type GPUPack struct {
	h       fwk.Handle
	args    *Args
	weights packing.Weights
	view    *view
	learner *packing.Learner
	pending *pendingPods
	// facts is PreScore's scratch (see factsBuffer).
	facts []nodeFacts
	// scoring caches the state Score reads (see scoreState).
	scoring atomic.Pointer[scoringState]
	// measures are the MIG measures nodes in one state share (see
	// packing.SharedMemo).
	measures packing.SharedMemo
	// retries coalesces the retries of waiting pods when GPUs recover (see
	// retryRecovered); retryGap is the least time between two.
	retries  retries
	retryGap time.Duration
}

// retries: running while a retry, or the gap after it, is under way;
// again when a GPU recovered meanwhile, and node the last one's node.
type retries struct {
	mu      sync.Mutex
	running bool
	again   bool
	node    string
}

var (
	_ fwk.PreFilterPlugin   = &GPUPack{}
	_ fwk.FilterPlugin      = &GPUPack{}
	_ fwk.PreScorePlugin    = &GPUPack{}
	_ fwk.ScorePlugin       = &GPUPack{}
	_ fwk.ReservePlugin     = &GPUPack{}
	_ fwk.BindPlugin        = &GPUPack{}
	_ fwk.EnqueueExtensions = &GPUPack{}
	_ fwk.SignPlugin        = &GPUPack{}
)

// Option changes how New builds the plugin.
type Option func(*GPUPack)

// WithLayouts hands the plugin what the nodes report of their GPUs: static
// MIG layouts and health.
func WithLayouts(s LayoutSource) Option {
	return func(p *GPUPack) { p.view.layouts = s }
}

// New is the plugin factory for the registry.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	return NewWith(ctx, obj, h)
}

// NewWith builds the plugin with options.
func NewWith(ctx context.Context, obj runtime.Object, h fwk.Handle, opts ...Option) (*GPUPack, error) {
	args, err := DecodeArgs(obj)
	if err != nil {
		return nil, err
	}
	p := &GPUPack{
		h:        h,
		args:     args,
		weights:  packing.Weights{Fragmentation: *args.FragmentationWeight, Balance: *args.BalanceWeight, Dead: *args.DeadPieceWeight, Overkill: *args.OverkillWeight},
		view:     newView(nil, args.PoolLabel),
		retryGap: recoveredRetryGap,
		learner: packing.NewLearner(packing.LearnerOptions{
			HalfLife:        float64(*args.DemandHalfLife),
			Refresh:         int(*args.DemandRefresh),
			LookAheadDepth:  int(*args.LookAheadDepth),
			LookAheadWeight: *args.LookAheadWeight,
			Coverage:        demandCoverage,
			MaxShapes:       maxShapes,
		}),
	}
	for _, o := range opts {
		o(p)
	}
	if f := h.SharedInformerFactory(); f != nil {
		p.view.pods = f.Core().V1().Pods().Lister()
	}
	if n, ok := p.view.layouts.(ReportNotifier); ok {
		p.view.notified = true
		logger := klog.FromContext(ctx)
		cancel := n.OnReport(func(node string, prev, next GPUReport) {
			p.view.noteReport(node)
			if p.view.pods != nil && (recovered(prev, next) || relaidOut(prev, next)) {
				p.retrySoon(ctx, logger, node)
			}
		})
		// The source outlives the scheduler (a restart, another
		// profile): a stopped one's queue is gone.
		context.AfterFunc(ctx, cancel)
	}
	if *args.LookAheadDepth > 0 && *args.LookAheadWeight > 0 && h.SharedInformerFactory() != nil {
		p.pending = watchPending(klog.FromContext(ctx), h.SharedInformerFactory(), p.learner)
	}
	registerMetrics(p)
	return p, nil
}

// recoveredRetryGap is the least time between two retries of the waiting
// GPU pods: each moves them past their backoff, and a verdict that flaps
// from one report to the next (clocks held down now and then) would
// otherwise have them retried with every report of every such node.
const recoveredRetryGap = 10 * time.Second

// retrySoon retries the waiting GPU pods now, unless a retry is under way
// or was made less than retryGap ago: then once more when the gap is over,
// however many GPUs recovered in it.
func (p *GPUPack) retrySoon(ctx context.Context, logger klog.Logger, node string) {
	r := &p.retries
	r.mu.Lock()
	defer r.mu.Unlock()
	r.node = node
	if r.running {
		r.again = true
		return
	}
	r.running = true
	// Off the source's goroutine: the node's next report waits for its
	// hooks, and a retry lists every pod.
	go func() {
		for {
			p.retryRecovered(ctx, logger, node)
			t := time.NewTimer(p.retryGap)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			r.mu.Lock()
			if !r.again || ctx.Err() != nil {
				r.running, r.again = false, false
				r.mu.Unlock()
				return
			}
			r.again, node = false, r.node
			r.mu.Unlock()
		}
	}()
}

// retryRecovered retries the pending GPU pods once a GPU of the node that
// its agent reported unhealthy is reported healthy again, or the store
// drops the node's report (its agent silent for an hour, the node still
// there): no cluster event says so, and the pods Filter turned away because
// only that GPU could take them waited for an unrelated event or the
// scheduler's five-minute flush; or once a node reports its GPUs
// partitioned anew (relaidOut). Which pods the GPU alone kept off is not
// recorded, so this retries every GPU pod waiting: a superset, paid for
// only when a GPU recovers or is partitioned again. Activate leaves pods
// that are not waiting in this scheduler's queue alone.
func (p *GPUPack) retryRecovered(ctx context.Context, logger klog.Logger, node string) {
	if ctx.Err() != nil {
		return
	}
	all, err := p.view.pods.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing pods to retry after a GPU recovered or was partitioned anew", "plugin", Name, "node", node)
		return
	}
	retry := map[string]*corev1.Pod{}
	for _, pod := range all {
		if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil {
			continue
		}
		if r, err := gpu.ParsePodRequest(pod); err == nil && !r.IsZero() {
			retry[pod.Namespace+"/"+pod.Name] = pod
		}
	}
	if len(retry) > 0 {
		logger.V(4).Info("Retrying GPU pods now that a GPU their agent reported unhealthy recovered, or the node's MIG layout changed", "node", node, "pods", len(retry))
		p.h.Activate(logger, retry)
	}
}

// The demand keeps the shapes that make up 99% of recent arrivals, at most
// 48 of them: the rest is noise that only costs scoring time.
const (
	demandCoverage = 0.99
	maxShapes      = 48
)

func (p *GPUPack) Name() string { return Name }

// AssignsGPUDevices tells the simulator that this plugin chooses devices and
// writes penny.dev/gpu-assignment itself.
func (p *GPUPack) AssignsGPUDevices() {}

// SignPod declines kube-scheduler's batching of look-alike pods: where a pod
// fits and how it scores depend on each GPU's state and on the demand, which
// the previous pod of the same shape changed.
func (p *GPUPack) SignPod(context.Context, *corev1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	return nil, fwk.NewStatus(fwk.Unschedulable, "GPU placement depends on each GPU's state")
}

// stateKey is where the cycle's state lives in CycleState.
const stateKey fwk.StateKey = "PreFilter" + Name

// cycleState is what one scheduling cycle of one pod carries from
// PreFilter to Bind.
type cycleState struct {
	req *packing.Req
	// cycle is filled at PreScore (or at Reserve when scoring was skipped
	// because only one node was feasible).
	cycle packing.Cycle
	// cpuNodeFeasible: a node without GPUs can take this pod (which asks
	// for none).
	cpuNodeFeasible bool
	// assigned are the devices reserved on node.
	assigned gpu.Assignment
	node     string
}

// Clone copies the state: preemption dry runs read it, Reserve writes it.
func (s *cycleState) Clone() fwk.StateData {
	c := *s
	return &c
}

func getState(state fwk.CycleState) (*cycleState, error) {
	d, err := state.Read(stateKey)
	if err != nil {
		return nil, fmt.Errorf("reading %q from cycle state: %w", stateKey, err)
	}
	s, ok := d.(*cycleState)
	if !ok {
		return nil, fmt.Errorf("%q in cycle state is a %T", stateKey, d)
	}
	return s, nil
}
