// Package gang is Penny's gang scheduling plugin: a gang's members bind all
// together or not at all, competing gangs never deadlock, and a gang stays in
// one zone and on one capacity type unless told otherwise.
//
// How it avoids the failures of earlier gang plugins:
//   - Members are held back (PreEnqueue) until the whole gang exists, so no
//     capacity is held while members are still being created.
//   - A gang is admitted (PreFilter) only when a simulation finds room for
//     all of its remaining members in one domain, counting capacity already
//     claimed by gangs admitted before it; the room it needs is then claimed
//     and no other pod of its priority or lower that this scheduler places
//     may take it (Filter). Two gangs can therefore never each hold half of
//     what both need; a pod of higher priority may take it, and the gang is
//     then released whole when a member fits nowhere.
//   - Placed members wait in Permit with one shared deadline. If any member
//     fails (PostFilter), is deleted, or the deadline passes, every waiting
//     member is released at once, the claims go, and the gang backs off as a
//     unit before its members are retried together.
//   - QueueSort keeps a gang's members next to each other, oldest gang first,
//     and Permit pulls the remaining members out of backoff so a gang's
//     members are tried back to back.
//
// With the GenericWorkload feature gate on, pods that name a native PodGroup
// are gated and admitted by the in-tree GangScheduling plugin and the pod
// group scheduling cycle; this plugin then only keeps such a group in one
// domain. See docs/gang.md.
package gang

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/utils/clock"

	"github.com/pennysched/penny/pkg/gang"
)

// Name is the plugin's name in the registry and in scheduler configuration.
const Name = "PennyGang"

// Gang is the plugin. One instance serves one scheduler profile.
type Gang struct {
	handle fwk.Handle
	args   *Args
	clock  clock.WithDelayedExecution
	pods   cache.Indexer
	risk   ReclaimRisk
	// nodeCheck, when set, is asked whether a member may use a node at all
	// beyond its requests, taints and affinity (SpotRisk's capacity rules),
	// and why not.
	nodeCheck NodeRule
	// nodeCost, when set, prices a member's work on a node (SpotRisk's
	// Score), which chooses among the domains a gang fits in.
	nodeCost NodeCost
	// nativeGangs is true when the GenericWorkload gate is on, so pods that
	// name a PodGroup are gang-scheduled by the in-tree machinery. Without
	// it such pods are held (nativeUnsupported): nothing would gate them.
	nativeGangs bool

	mu    sync.Mutex
	gangs map[string]*gangState
	// claimedSlots counts unconsumed claims across gangs, so pods can skip
	// this plugin's Filter entirely while no gang is being placed.
	claimedSlots atomic.Int64
	// blocked are gangs whose last admission failed only because other
	// gangs' claims held the room; they are retried when claims go away.
	blocked map[string]bool
	seq     uint64
	// order remembers each gang's place in the queue, for QueueSort: when
	// its newest waiting member was created, and that member's UID
	// (sortKey).
	// It is read on every queue comparison, so it avoids the mutex.
	order sync.Map
	// lacking remembers, per gang, what the nodes lacked when it last did
	// not fit (shortfall.lacking), until it is admitted. The queueing hint
	// on a pod's deletion reads it under the scheduling queue's lock, so it
	// too avoids the mutex, which PreFilter holds while it plans a gang.
	lacking sync.Map
}

var (
	_ fwk.QueueSortPlugin   = &Gang{}
	_ fwk.PreEnqueuePlugin  = &Gang{}
	_ fwk.PreFilterPlugin   = &Gang{}
	_ fwk.FilterPlugin      = &Gang{}
	_ fwk.PostFilterPlugin  = &Gang{}
	_ fwk.PreScorePlugin    = &Gang{}
	_ fwk.ScorePlugin       = &Gang{}
	_ fwk.ReservePlugin     = &Gang{}
	_ fwk.PermitPlugin      = &Gang{}
	_ fwk.EnqueueExtensions = &Gang{}
)

// Option adjusts a plugin built by NewWith.
type Option func(*Gang)

// WithClock replaces the wall clock (tests).
func WithClock(c clock.WithDelayedExecution) Option { return func(g *Gang) { g.clock = c } }

// WithReclaimRisk sets the gang-level reclaim risk helper.
func WithReclaimRisk(r ReclaimRisk) Option { return func(g *Gang) { g.risk = r } }

// NodeRule says, for a pod, which nodes another plugin of the profile lets
// it use whatever room they have (nil: all), and why not: the reason a node
// is not for it, "" when it is, worded as a Filter reason ("node(s) are
// ..."). A gang is admitted only where its members pass it: admitted to
// nodes a member's filters reject, a gang holds that room, fails, backs off
// and tries the same nodes again, for as long as the room it may use is
// taken. A gang that does not fit repeats the reasons with the number of
// nodes each ruled out, so that a user reading it does not look for
// capacity the members' own rules keep them from (a gang waiting for Spot
// capacity). Pods whose alike is the same are given the same reasons on
// every node, so placement keeps one check for all of them: what makes pods
// alike is the other plugin's to say (SpotRisk's verdict reads when each
// pod began to wait, not only its annotations).
type NodeRule func(pod *corev1.Pod) (check func(node *corev1.Node) string, alike string)

// WithNodeRule sets the check placement asks for each member, with the
// reason it gives for each node it rules out.
func WithNodeRule(r NodeRule) Option { return func(g *Gang) { g.nodeCheck = r } }

// NodeCost says, for a pod, what an hour of its useful work costs on a node
// by the measure another plugin of the profile scores nodes with (nil: it
// prices none), in that plugin's order: avoided marks a node ranked after
// every other (Spot for a pod that avoids it), and ok false a node without
// a price. Where several domains fit a gang, the one where its members'
// work costs least is chosen: chosen by reclaim risk alone, a gang that
// SpotRisk would put on Spot went to on-demand whenever that had room too.
// Pods whose alike is the same cost the same on every node, so placement
// prices one for all of them; as with NodeRule, what makes pods alike is
// the other plugin's to say (SpotRisk's price reads a pod's runtime and
// workload, not only its annotations).
type NodeCost func(pod *corev1.Pod) (cost func(node *corev1.Node) (cost float64, avoided, ok bool), alike string)

// WithNodeCost sets the measure that chooses among the domains a gang fits
// in.
func WithNodeCost(c NodeCost) Option { return func(g *Gang) { g.nodeCost = c } }

// New is the plugin factory for the scheduler framework.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	return NewWith(ctx, obj, h)
}

// NewWith builds the plugin with options; the registry uses it to hand in
// Penny's shared dependencies.
func NewWith(_ context.Context, obj runtime.Object, h fwk.Handle, opts ...Option) (*Gang, error) {
	args, err := DecodeArgs(obj)
	if err != nil {
		return nil, err
	}
	registerMetrics()
	informer := h.SharedInformerFactory().Core().V1().Pods().Informer()
	if err := gang.AddIndex(informer); err != nil {
		return nil, err
	}
	pl := &Gang{
		handle:      h,
		args:        args,
		clock:       clock.RealClock{},
		pods:        informer.GetIndexer(),
		nativeGangs: utilfeature.DefaultFeatureGate.Enabled(features.GenericWorkload),
		gangs:       map[string]*gangState{},
		blocked:     map[string]bool{},
	}
	for _, o := range opts {
		o(pl)
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    pl.onPodAdd,
		UpdateFunc: pl.onPodUpdate,
		DeleteFunc: pl.onPodDelete,
	}); err != nil {
		return nil, err
	}
	if _, err := h.SharedInformerFactory().Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: pl.onNodeDelete,
	}); err != nil {
		return nil, err
	}
	return pl, nil
}

// Name returns the plugin name.
func (pl *Gang) Name() string { return Name }

// Less orders the queue by priority, then by the gang's place (order) or the
// lone pod's creation and UID, keeping one gang's members together so they
// are tried back to back and an older gang is tried before a younger one.
func (pl *Gang) Less(a, b fwk.QueuedEntityInfo) bool {
	pa, pb := a.GetPriority(), b.GetPriority()
	if pa != pb {
		return pa > pb
	}
	ka, qa := pl.sortKey(a)
	kb, qb := pl.sortKey(b)
	if !qa.at.Equal(qb.at) {
		return qa.at.Before(qb.at)
	}
	if qa.uid != qb.uid {
		return qa.uid < qb.uid
	}
	if ka != kb {
		return ka < kb
	}
	return a.GetTimestamp().Before(b.GetTimestamp())
}

// place is where a gang or lone pod queues among those of its priority: when
// it (a gang's newest waiting member) was created, then that pod's UID.
// Creation times have whole seconds, so gangs created together often tie;
// broken by the gang's namespace and name, the tie went every time to a
// tenant who named its gangs "0". The API server chooses the UID.
type place struct {
	at  time.Time
	uid types.UID
}

type podInfoGetter interface{ GetPodInfo() fwk.PodInfo }

func (pl *Gang) sortKey(e fwk.QueuedEntityInfo) (string, place) {
	pi, ok := e.(podInfoGetter)
	if !ok {
		return "", place{at: e.GetTimestamp()}
	}
	pod := pi.GetPodInfo().GetPod()
	// The place starts at the creation the API server recorded, not at the
	// queue's timestamp: a restarted scheduler queues every pending pod at
	// once, in the order its informer lists them (by name), and a gang
	// created an hour after another but listed first went ahead of it. Only
	// pods no API server created (the simulator's) take the queue's time.
	created := pod.CreationTimestamp.Time
	first := created
	if first.IsZero() {
		first = e.GetTimestamp()
	}
	own := place{at: first}
	if !created.IsZero() {
		// Only an API server's UID is beyond a tenant's choosing; the
		// simulator's pods, queued by their queue times, tie by name.
		own.uid = pod.UID
	}
	ref, ok := gang.RefOf(pod)
	if !ok {
		// A lone pod queues by the same measure as a gang. By its queue
		// time, which the scheduler moves back each time the pod fails, it
		// lost to every gang created after it once it had failed, and
		// labelling a pod a gang of one put it ahead of other tenants' pods
		// that had waited longer.
		return "", own
	}
	// A pod never sorts before its own creation, whatever the gang it names
	// holds: a member that waits for ever (a gang of one that fits no node)
	// would otherwise lend its old place to every pod the tenant names the
	// gang on later. The queue may sort the pod before onPodAdd has moved
	// the gang, so it is checked here too.
	v, _ := pl.order.LoadOrStore(ref.Key(), own)
	at := v.(place)
	if created.After(at.at) {
		at = place{at: created, uid: pod.UID}
		pl.queueGangAfter(ref.Key(), at)
	}
	return ref.Key(), at
}

// queueGangAfter moves a gang's place in the queue to p when p is later, so
// its members stay together behind the newest of them. A member created in
// the same second as the gang's place leaves it as it is, UID included.
func (pl *Gang) queueGangAfter(key string, p place) {
	if p.at.IsZero() {
		return // a pod no API server created (the simulator's, tests')
	}
	for {
		v, loaded := pl.order.LoadOrStore(key, p)
		if !loaded || !p.at.After(v.(place).at) || pl.order.CompareAndSwap(key, v, p) {
			return
		}
	}
}

// PreEnqueue keeps a member out of the active queue until its gang has at
// least gang-size members, so no member is placed (and holds capacity)
// while the rest are still being created.
func (pl *Gang) PreEnqueue(_ context.Context, pod *corev1.Pod) *fwk.Status {
	spec, ok, err := gang.Of(pod)
	if err != nil {
		if ref, inGang := gang.RefOf(pod); !inGang || !pl.remember(pod, ref, err.Error()) {
			pl.tell(pod, "GangInvalid", err.Error())
		}
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	if !ok {
		return nil
	}
	if spec.Source == gang.SourcePodGroup {
		if msg := pl.nativeUnsupported(pod, spec); msg != "" {
			if !pl.remember(pod, spec.Ref, msg) {
				pl.tell(pod, "GangInvalid", msg)
			}
			return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
		}
		return nil
	}
	members, err := gang.Members(pl.pods, spec.Ref)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if msg := pl.memberProblem(pod, spec, members); msg != "" {
		if !pl.remember(pod, spec.Ref, msg) {
			pl.tell(pod, "GangInvalid", msg)
		}
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}
	if n, _ := ungated(members); int32(n) < spec.MinMember {
		if msg := pl.gate(pod, spec); msg != "" {
			return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
		}
	}
	return nil
}

// EventsToRegister lists the cluster changes that can make a member this
// plugin rejected placeable again.
func (pl *Gang) EventsToRegister(_ context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		// A member arriving may complete its gang (PreEnqueue, PreFilter).
		// The scheduler only dispatches this event with GenericWorkload on;
		// otherwise onPodAdd activates the gang's waiting members.
		{Event: fwk.ClusterEvent{Resource: fwk.UnscheduledPod, ActionType: fwk.Add | fwk.UpdatePodLabel}, QueueingHintFn: isSchedulableAfterMemberAdded},
		// A member held for a malformed or disagreeing gang key is retried
		// when its own keys change; they may be annotations, whose change
		// is a plain Update. (Members held for a sibling's scheduling gate
		// or gang keys are woken by onPodUpdate: the scheduler dispatches
		// no other pod's update to plugins.)
		{Event: fwk.ClusterEvent{Resource: fwk.TargetPod, ActionType: fwk.Update}, QueueingHintFn: isSchedulableAfterOwnKeysChanged},
		// Capacity freed by a pod leaving a node may let a gang fit.
		// So is a running pod resized down in place (CPU, memory).
		{Event: fwk.ClusterEvent{Resource: fwk.AssignedPod, ActionType: fwk.Delete | fwk.UpdatePodScaleDown}, QueueingHintFn: pl.isSchedulableAfterPodGaveBack},
		// New or changed nodes may let a gang fit.
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeAllocatable | fwk.UpdateNodeLabel | fwk.UpdateNodeTaint}},
	}, nil
}

func isSchedulableAfterMemberAdded(_ klog.Logger, pod *corev1.Pod, oldObj, newObj any) (fwk.QueueingHint, error) {
	added, ok := newObj.(*corev1.Pod)
	if !ok {
		return fwk.Queue, nil
	}
	ref, inGang := gang.RefOf(pod)
	if !inGang || !ref.IsMember(added) {
		return fwk.QueueSkip, nil
	}
	if old, ok := oldObj.(*corev1.Pod); ok && ref.IsMember(old) {
		// A label update that did not change membership.
		return fwk.QueueSkip, nil
	}
	return fwk.Queue, nil
}

func isSchedulableAfterOwnKeysChanged(_ klog.Logger, _ *corev1.Pod, oldObj, newObj any) (fwk.QueueingHint, error) {
	oldPod, okOld := oldObj.(*corev1.Pod)
	newPod, okNew := newObj.(*corev1.Pod)
	if !okOld || !okNew {
		return fwk.Queue, nil
	}
	if gang.SameKeys(oldPod, newPod) {
		return fwk.QueueSkip, nil
	}
	return fwk.Queue, nil
}

// isSchedulableAfterPodGaveBack: a pod leaving its node gives back its
// requests and a pod slot, a pod resized down in place what it no longer
// requests; that lets the gang fit only if it gives back something the
// nodes lacked when the gang last did not fit. While that is not known (a
// native gang, or a pod held back by other gangs' claims), any of them may
// help.
func (pl *Gang) isSchedulableAfterPodGaveBack(logger klog.Logger, pod *corev1.Pod, oldObj, newObj any) (fwk.QueueingHint, error) {
	old, ok := oldObj.(*corev1.Pod)
	if !ok {
		return fwk.Queue, nil
	}
	freed := heldDemand(old)
	if resized, ok := newObj.(*corev1.Pod); ok {
		freed.add(heldDemand(resized), -1)
	}
	ref, inGang := gang.RefOf(pod)
	if !inGang {
		return fwk.Queue, nil
	}
	v, known := pl.lacking.Load(ref.Key())
	if !known {
		return fwk.Queue, nil
	}
	lacking := v.([]corev1.ResourceName)
	if freed.frees(lacking) {
		return fwk.Queue, nil
	}
	logger.V(5).Info("Pod gave back nothing the gang lacked", "pod", klog.KObj(pod), "otherPod", klog.KObj(old), "lacking", lacking)
	return fwk.QueueSkip, nil
}

func podKey(pod *corev1.Pod) string { return pod.Namespace + "/" + pod.Name }
