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
	node  string
	class Class
}

func (f *fallback) message() string {
	want, to := f.class.wait()
	return fmt.Sprintf("No %s capacity within %s (%s): placed on %s node %s", want, f.class.FallbackAfter, f.class.Why, to, f.node)
}

func (f *fallback) Clone() fwk.StateData { return f }

// Reserve records when a waiting pod (Class.Waits) is about to run on the
// capacity it falls back to, so that PostBind can say so in an event. The
// snapshot is read here because it is not safe to read in the binding cycle.
func (pl *SpotRisk) Reserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	s, err := getState(cs)
	if err != nil || !s.class.Waits() || pl.handle == nil {
		return nil
	}
	ni, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return nil
	}
	if c := pricing.NodeCapacity(ni.Node()); s.class.FallbackFrom(c) {
		cs.Write(fallbackKey, &fallback{node: nodeName, class: s.class})
	}
	return nil
}

// Unreserve implements fwk.ReservePlugin.
func (pl *SpotRisk) Unreserve(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
}

// PostBind records a fallback as an event on the pod and in
// penny_spot_fallbacks_total.
func (pl *SpotRisk) PostBind(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodeName string) {
	d, err := cs.Read(fallbackKey)
	if err != nil {
		return
	}
	f, ok := d.(*fallback)
	if !ok {
		return
	}
	fallbacks.WithLabelValues(string(f.class.Policy)).Inc()
	if pl.handle == nil || pl.handle.EventRecorder() == nil {
		return
	}
	pl.handle.EventRecorder().Eventf(pod, nil, corev1.EventTypeNormal, EventFallback, "Scheduling", f.message())
}
