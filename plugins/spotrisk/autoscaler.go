package spotrisk

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/api/expander"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

// ExpanderServer answers Cluster Autoscaler's gRPC expander (started with
// --expander=grpc) with SpotRisk's ranking, so that the node groups a real
// cluster grows are the ones Penny would place the pending pods on: the
// expected price of their useful work per pod slot of a new node, with
// Penny's rules (never-on-Spot classes, waiting for Spot or on-demand,
// reclaim-risk limits) applied first. Each pod is judged by the SpotRisk
// its profile builds (Use), and so with that profile's price catalog and
// arguments.
type ExpanderServer struct {
	expander.UnimplementedExpanderServer
	r atomic.Pointer[ranker]
}

// ranker is what BestOptions ranks with: an expander per profile, and the
// pods the cluster runs now (nil: none known).
type ranker struct {
	// by holds, by profile (scheduler name), the expander of the SpotRisk
	// the profile built; "" for one built without a profile, which judges
	// every pod. Cluster Autoscaler's options hold every pending pod, the
	// default scheduler's too; Penny's rules say nothing about where those
	// go.
	by      map[string]*Expander
	running func() ([]*corev1.Pod, error)
	// synced says the pod informer running reads from has listed the
	// cluster's pods (nil: no informer, nothing to wait for).
	synced func() bool
}

var _ expander.ExpanderServer = &ExpanderServer{}

// NewExpanderServer returns a server that answers Unavailable until Use.
func NewExpanderServer() *ExpanderServer { return &ExpanderServer{} }

// Use judges the pods of pl's profile with pl from now on, unless another
// SpotRisk of the profile came first; the running pods come from the
// scheduler's pod informer, which its profiles share. The scheduler builds
// its profiles while the endpoint may already answer: each Use publishes a
// new ranker.
func (s *ExpanderServer) Use(pl *SpotRisk) {
	profile := ""
	if p, ok := pl.handle.(interface{ ProfileName() string }); ok {
		profile = p.ProfileName()
	}
	for {
		old := s.r.Load()
		r := &ranker{by: map[string]*Expander{}}
		if old != nil {
			if _, ok := old.by[profile]; ok {
				return
			}
			maps.Copy(r.by, old.by)
			r.running, r.synced = old.running, old.synced
		}
		r.by[profile] = &Expander{pl: pl}
		if h := pl.handle; r.running == nil && h != nil && h.SharedInformerFactory() != nil {
			informer := h.SharedInformerFactory().Core().V1().Pods()
			pods := informer.Lister()
			r.running = func() ([]*corev1.Pod, error) { return pods.List(labels.Everything()) }
			r.synced = informer.Informer().HasSynced
		}
		if s.r.CompareAndSwap(old, r) {
			return
		}
	}
}

// InUse reports whether a SpotRisk ranks for s (Use).
func (s *ExpanderServer) InUse() bool { return s.r.Load() != nil }

// expanderOf is the expander that judges pod: its profile's, or the one
// built without a profile; nil for a pod no Penny profile places.
func (r *ranker) expanderOf(pod *corev1.Pod) *Expander {
	name := pod.Spec.SchedulerName
	if name == "" {
		// The API server's default: a pod Cluster Autoscaler read from it
		// never has an empty name.
		name = corev1.DefaultSchedulerName
	}
	if x, ok := r.by[name]; ok {
		return x
	}
	return r.by[""]
}

// ours keeps the pods some Penny profile judges, in order.
func (r *ranker) ours(pods []*corev1.Pod) []*corev1.Pod {
	out := pods[:0:0]
	for _, p := range pods {
		if r.expanderOf(p) != nil {
			out = append(out, p)
		}
	}
	return out
}

// BestOptions keeps the options whose new nodes Penny's rules let at least
// one of the option's pods use, ranks them by what they cost those pods
// beyond each pod's cheapest option (regret, below), then by the mean over
// those pods of the expected price of each pod's useful work per slot, and
// returns the best, or those equally good. A pod's slots on a new node are
// capped by the pods that could fill it (Expander.RankOptions): the option's other pods,
// then, for a service (Class.LongLived), the running services of its Spot
// policy that could use the node, most recently started first, MaxPeers in
// all. Cluster Autoscaler lists only pending pods; running replicas say what
// work keeps arriving, as the simulator's autoscaler counts them.
//
// Only the pods of Penny's profiles count, pending and running, each
// judged by its profile's SpotRisk: an option holding none cannot be
// judged, nor can one whose template node is missing; those are returned
// only when nothing could be judged. With none of those either the answer
// is empty: Penny would place none of the pods on any node the options add.
// An option whose template node the price catalog has no price for cannot
// be ranked either, yet Penny's rules may let its pods on it: unless a pod
// avoids it as Spot (last, priced or not), it comes back beside the best,
// for Cluster Autoscaler's next expander to weigh (ranked last, an unpriced
// CPU group lost a 1-CPU pod to a priced 8-GPU one). Options come back
// without their pods.
func (s *ExpanderServer) BestOptions(ctx context.Context, req *expander.BestOptionsRequest) (*expander.BestOptionsResponse, error) {
	r := s.r.Load()
	if r == nil {
		expanderRequests.WithLabelValues(string(expanderUnavailable)).Inc()
		return nil, status.Error(codes.Unavailable, "SpotRisk is not running yet: penny-scheduler builds it when its profile starts")
	}
	if r.synced != nil && !r.synced() {
		// Until the scheduler has listed the pods, a service's running
		// peers are none, and a ranking would size its new node for it
		// alone: Cluster Autoscaler keeps all its options instead.
		expanderRequests.WithLabelValues(string(expanderUnavailable)).Inc()
		return nil, status.Error(codes.Unavailable, "penny-scheduler has not listed the cluster's pods yet")
	}
	log := klog.FromContext(ctx)
	// Running pods count only for services: list and classify them once, and
	// only when an option holds a service.
	var running []runningPod
	listed := false
	runningNow := func() []runningPod {
		if !listed {
			listed = true
			var err error
			if running, err = r.runningPods(); err != nil {
				log.Error(err, "Listing running pods; ranking without them")
			}
		}
		return running
	}
	nodes, err := templateNodes(req)
	if err != nil {
		expanderRequests.WithLabelValues(string(expanderInvalid)).Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	type ranked struct {
		opt   *expander.Option
		key   optionKey
		costs []podCost
	}
	var judged []ranked
	var unjudged, unpriced []*expander.Option
	for i, o := range req.GetOptions() {
		if err := ctx.Err(); err != nil {
			// Cluster Autoscaler gave up waiting; nobody reads the answer.
			expanderRequests.WithLabelValues(string(expanderCancelled)).Inc()
			return nil, status.FromContextError(err).Err()
		}
		pods, err := optionPods(i, o)
		if err != nil {
			expanderRequests.WithLabelValues(string(expanderInvalid)).Inc()
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		pods = r.ours(pods)
		node := nodes[o.GetNodeGroupId()]
		if node == nil || len(pods) == 0 {
			unjudged = append(unjudged, o)
			continue
		}
		k, costs, ok := r.optionKey(pods, node, runningNow)
		switch {
		case !ok:
		case k.unpriced && !k.avoided:
			// Spot a pod avoids stays last, priced or not.
			unpriced = append(unpriced, o)
		default:
			judged = append(judged, ranked{o, k, costs})
		}
	}
	// Options list different pods: a Spot group's leaves out the pods that
	// stay off Spot. A mean over each option's own pods would compare
	// unlike sets, and pods that have no other option would pull the mean
	// of theirs down: eight never-Spot services, cheap per slot, made an
	// on-demand group beat a Spot one for the Spot-preferring job beside
	// them, at four times its price. Regret compares like with like: what
	// each option costs its pods beyond the cheapest option each has, the
	// rest of the pods going to their best options in later scale-ups.
	cheapest := map[types.NamespacedName]float64{}
	for _, r := range judged {
		for _, c := range r.costs {
			if b, ok := cheapest[c.pod]; !ok || c.cost < b {
				cheapest[c.pod] = c.cost
			}
		}
	}
	for k := range judged {
		for _, c := range judged[k].costs {
			// Equal costs regret nothing, those of pods that fit no
			// slot (+Inf) included.
			if b := cheapest[c.pod]; c.cost != b {
				judged[k].key.regret += c.cost - b
			}
		}
	}
	if len(judged) == 0 {
		expanderRequests.WithLabelValues(string(expanderNone)).Inc()
		log.V(2).Info("No expansion option passes SpotRisk's rules for its pods and is priced", "options", len(req.GetOptions()), "unjudged", len(unjudged), "unpriced", len(unpriced))
		return &expander.BestOptionsResponse{Options: withoutPods(append(unjudged, unpriced...))}, nil
	}
	sort.SliceStable(judged, func(a, b int) bool { return judged[a].key.less(judged[b].key) })
	best := []*expander.Option{judged[0].opt}
	for _, r := range judged[1:] {
		if r.key != judged[0].key {
			break
		}
		best = append(best, r.opt)
	}
	expanderRequests.WithLabelValues(string(expanderRanked)).Inc()
	log.V(2).Info("Ranked expansion options", "options", len(req.GetOptions()), "best", best[0].GetNodeGroupId(), "regret", judged[0].key.regret, "cost", judged[0].key.cost, "unpriced", len(unpriced))
	return &expander.BestOptionsResponse{Options: withoutPods(append(best, unpriced...))}, nil
}

// withoutPods copies the options to answer without their pods: Cluster
// Autoscaler reads only which node groups come back, and echoing every pod
// of every equally good option made the answer as large as the request (up
// to MaxExpanderRequestBytes, both encodings). Fields Penny does not know
// are kept.
func withoutPods(opts []*expander.Option) []*expander.Option {
	out := make([]*expander.Option, len(opts))
	for i, o := range opts {
		out[i] = &expander.Option{NodeGroupId: o.GetNodeGroupId(), NodeCount: o.GetNodeCount(), Debug: o.GetDebug()}
		out[i].ProtoReflect().SetUnknown(o.ProtoReflect().GetUnknown())
	}
	return out
}

// MaxPeers bounds how many peers an autoscaler weighs per decision.
const MaxPeers = 64

// MaxExpanderRequestBytes bounds one request from Cluster Autoscaler: every
// option's pending pods and every node group's template node, serialized.
const MaxExpanderRequestBytes = 128 << 20

// annotationTemplateNode marks, on the copy decoded from a request, a node
// that Cluster Autoscaler could add: its pool is priced without the risk
// model remembering it (RiskModel.RateFrom). It is never written to the API.
const annotationTemplateNode = "penny.dev/autoscaler-template-of"

// MaxTemplateGPUs bounds the GPUs a template node may declare: more than any
// machine holds even with MIG or time-slicing replicas, and small enough
// that pricing its room stays cheap.
const MaxTemplateGPUs = 1024

// runningPod is a running pod as a peer: its class, requests and rules.
type runningPod struct {
	class  Class
	usage  pricing.Usage
	admits func(*corev1.Node) bool
}

// runningPods are the services (Class.LongLived) of Penny's profiles bound
// to nodes and running, most recently started first, each read once per
// request: the only running pods that say more like them will come.
func (r *ranker) runningPods() ([]runningPod, error) {
	if r.running == nil {
		return nil, nil
	}
	pods, err := r.running()
	if err != nil {
		return nil, err
	}
	var live []*corev1.Pod
	for _, p := range r.ours(pods) {
		if p.Spec.NodeName != "" && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	started := func(p *corev1.Pod) int64 {
		if p.Status.StartTime == nil {
			return 0
		}
		return p.Status.StartTime.UnixNano()
	}
	sort.SliceStable(live, func(a, b int) bool { return started(live[a]) > started(live[b]) })
	out := make([]runningPod, 0, len(live))
	for _, p := range live {
		x := r.expanderOf(p)
		class, err := x.pl.classify(p)
		if err != nil || !class.LongLived() {
			continue
		}
		admits := x.pl.Admits(p)
		if admits == nil {
			continue
		}
		out = append(out, runningPod{class: class, usage: pricing.PodUsage(p), admits: admits})
	}
	return out, nil
}

// podCost is one pod's expected cost per slot on an option's node. The
// options of a request carry copies of a pod: its name says which.
type podCost struct {
	pod  types.NamespacedName
	cost float64
}

// optionKey ranks an option by the pods of it that Penny's rules let on
// node: avoided if any of them avoids Spot there, and the mean of their
// costs per slot, each pod's slots capped by its peers (BestOptions), with
// each pod's cost for BestOptions to work out the regret. ok is false when
// none of the pods may use node.
func (r *ranker) optionKey(pods []*corev1.Pod, node *corev1.Node, running func() []runningPod) (optionKey, []podCost, bool) {
	var admitted []*corev1.Pod
	var judges []*Expander
	var classes []Class
	var usages []pricing.Usage
	for _, p := range pods {
		x := r.expanderOf(p)
		admits := x.pl.Admits(p)
		if admits == nil || !admits(node) {
			continue
		}
		class, err := x.pl.classify(p)
		if err != nil {
			continue
		}
		admitted, judges, classes, usages = append(admitted, p), append(judges, x), append(classes, class), append(usages, pricing.PodUsage(p))
	}
	if len(admitted) == 0 {
		return optionKey{}, nil, false
	}
	// The running services of each Spot policy that could use node, read
	// once per option: MaxPeers of them at most are ever weighed.
	runningPeers := map[Policy][]pricing.Usage{}
	runningOf := func(p Policy) []pricing.Usage {
		peers, ok := runningPeers[p]
		if !ok {
			for _, q := range running() {
				if len(peers) == MaxPeers {
					break
				}
				if q.class.Policy == p && Slots(q.usage, node) > 0 && q.admits(node) {
					peers = append(peers, q.usage)
				}
			}
			runningPeers[p] = peers
		}
		return peers
	}
	var sum optionKey
	costs := make([]podCost, 0, len(admitted))
	peers := make([]pricing.Usage, 0, MaxPeers)
	for i := range admitted {
		peers = peers[:0]
		for j := 0; j < len(usages) && len(peers) < MaxPeers; j++ {
			if j != i {
				peers = append(peers, usages[j])
			}
		}
		if classes[i].LongLived() {
			more := runningOf(classes[i].Policy)
			peers = append(peers, more[:min(len(more), MaxPeers-len(peers))]...)
		}
		k := judges[i].key(classes[i], usages[i], Option{Node: node, Peers: peers})
		sum.avoided = sum.avoided || k.avoided
		sum.unpriced = sum.unpriced || k.unpriced
		sum.cost += k.cost
		sum.price = k.price
		costs = append(costs, podCost{pod: types.NamespacedName{Namespace: admitted[i].Namespace, Name: admitted[i].Name}, cost: k.cost})
	}
	sum.cost /= float64(len(admitted))
	return sum, costs, true
}

// templateNodes decodes the request's template nodes, preferring
// node_bytes_map (Kubernetes 1.35 and later) to node_map.
func templateNodes(req *expander.BestOptionsRequest) (map[string]*corev1.Node, error) {
	field, raw := "nodeBytesMap", req.GetNodeBytesMap()
	if len(raw) == 0 {
		field, raw = "nodeMap", req.GetNodeMap()
	}
	nodes := make(map[string]*corev1.Node, len(raw))
	for id, b := range raw {
		n := &corev1.Node{}
		if err := n.Unmarshal(b); err != nil {
			return nil, fmt.Errorf("%s[%q] is not a protobuf-serialized v1.Node: %v (Cluster Autoscaler's gRPC expander sends the template node of each node group)", field, id, err)
		}
		alloc := n.Status.Allocatable
		g := alloc[gpu.ResourceGPU]
		switch {
		case g.Sign() < 0 || g.Cmp(*resource.NewQuantity(MaxTemplateGPUs, resource.DecimalSI)) > 0:
			return nil, fmt.Errorf("%s[%q].status.allocatable[%s] is %s; a node holds 0 to %d GPUs", field, id, gpu.ResourceGPU, g.String(), MaxTemplateGPUs)
		case alloc.Cpu().Sign() < 0, alloc.Memory().Sign() < 0:
			return nil, fmt.Errorf("%s[%q].status.allocatable holds a negative cpu (%s) or memory (%s)", field, id, alloc.Cpu(), alloc.Memory())
		}
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		n.Annotations[annotationTemplateNode] = id
		nodes[id] = n
	}
	return nodes, nil
}

// optionPods decodes option i's pods, preferring podBytes to pod.
func optionPods(i int, o *expander.Option) ([]*corev1.Pod, error) {
	field, raw := "podBytes", o.GetPodBytes()
	if len(raw) == 0 {
		field, raw = "pod", o.GetPod()
	}
	pods := make([]*corev1.Pod, len(raw))
	for j, b := range raw {
		p := &corev1.Pod{}
		if err := p.Unmarshal(b); err != nil {
			return nil, fmt.Errorf("options[%d].%s[%d] (node group %q) is not a protobuf-serialized v1.Pod: %v", i, field, j, o.GetNodeGroupId(), err)
		}
		pods[j] = p
	}
	return pods, nil
}
