package spotrisk

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/pricing"
)

const fallbackKey fwk.StateKey = Name + "/fallback"

type fallback struct {
	node     string
	capacity pricing.CapacityType
	class    Class
}

func (f *fallback) Clone() fwk.StateData { return f }

// Reserve records when a Spot-preferring pod is about to run on capacity
// that is not Spot, so that PostBind can say so in an event. The snapshot
// is read here because it is not safe to read in the binding cycle.
func (pl *SpotRisk) Reserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	s, err := getState(cs)
	if err != nil || s.class.Policy != Prefer || pl.handle == nil {
		return nil
	}
	ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return nil
	}
	if c := pricing.NodeCapacity(ni.Node()); c.Type == pricing.OnDemand {
		cs.Write(fallbackKey, &fallback{node: nodeName, capacity: c.Type, class: s.class})
	}
	return nil
}

// Unreserve implements fwk.ReservePlugin.
func (pl *SpotRisk) Unreserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
}

// PostBind records a fallback to on-demand capacity as an event on the pod.
func (pl *SpotRisk) PostBind(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
	d, err := cs.Read(fallbackKey)
	if err != nil || pl.handle == nil || pl.handle.EventRecorder() == nil {
		return
	}
	f, ok := d.(*fallback)
	if !ok {
		return
	}
	msg := fmt.Sprintf("No Spot capacity within %s (%s): placed on %s node %s", f.class.FallbackAfter, f.class.Why, f.capacity, f.node)
	pl.handle.EventRecorder().Eventf(pod, nil, corev1.EventTypeNormal, EventFallback, "Scheduling", msg)
}
