package spotrisk

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/pricing"
)

const bindingKey fwk.StateKey = Name + "/binding"

// binding is what Reserve saw of the node a pod is about to be bound to.
type binding struct {
	// start is the pod's waitStart as its cycle read it: ungates forgets
	// the pod once the informer sees it bound, which may be before PostBind.
	start    time.Time
	node     string
	class    Class
	capacity pricing.Capacity
}

func (b *binding) fallback() bool { return b.class.FellBack(b.capacity) }

func (b *binding) message() string {
	want, to := b.class.wait()
	return fmt.Sprintf("No %s capacity within %s (%s): placed on %s node %s", want, b.class.FallbackAfter, b.class.Why, to, b.node)
}

func (b *binding) Clone() fwk.StateData { return b }

// Reserve records the capacity type of the node the pod is about to run on,
// so that PostBind can count the pod's wait by where it went and say in an
// event when a waiting pod (Class.Waits) falls back. The snapshot is read
// here because it is not safe to read in the binding cycle.
func (pl *SpotRisk) Reserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	s, err := getState(cs)
	if err != nil || pl.handle == nil {
		return nil
	}
	ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return nil
	}
	cs.Write(bindingKey, &binding{start: s.start, node: nodeName, class: s.class, capacity: pricing.NodeCapacity(ni.Node())})
	return nil
}

// Unreserve implements fwk.ReservePlugin.
func (pl *SpotRisk) Unreserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
}

// PostBind observes the pod's wait in penny_spot_wait_seconds and records a
// fallback as an event on the pod and in penny_spot_fallbacks_total.
func (pl *SpotRisk) PostBind(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
	d, err := cs.Read(bindingKey)
	if err != nil {
		return
	}
	b, ok := d.(*binding)
	if !ok {
		return
	}
	waits.WithLabelValues(string(b.class.Policy), string(b.capacity.Type)).Observe(max(pl.clock.Since(b.start).Seconds(), 0))
	if !b.fallback() {
		return
	}
	fallbacks.WithLabelValues(string(b.class.Policy)).Inc()
	if pl.handle == nil || pl.handle.EventRecorder() == nil {
		return
	}
	pl.handle.EventRecorder().Eventf(pod, nil, corev1.EventTypeNormal, EventFallback, "Scheduling", "%s", b.message())
}
