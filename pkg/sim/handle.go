package sim

import (
	"context"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkplugins "k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
)

func inTreeRegistry() frameworkruntime.Registry { return frameworkplugins.NewInTreeRegistry() }

// kube-scheduler runs each binding cycle in its own goroutine, blocked in
// WaitOnPermit until every Permit plugin allowed the pod or one rejected it.
// The simulator has one goroutine and trace time, so it cannot block; instead
// it notes which waiting pods a plugin allowed or rejected and settles them
// after the cycle (Engine.SettleWaiting). To see those calls it hands the
// out-of-tree plugins a Handle whose waiting pods report Allow and Reject.

type permitLog struct {
	mu   sync.Mutex
	uids []types.UID
	// activated are the pods plugins asked to retry (Handle.Activate): a
	// gang whose backoff ended, a pod whose wait for Spot did.
	activated []*v1.Pod
}

func (l *permitLog) activate(pods map[string]*v1.Pod) {
	l.mu.Lock()
	for _, p := range pods {
		l.activated = append(l.activated, p)
	}
	l.mu.Unlock()
}

func (l *permitLog) takeActivated() []*v1.Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.activated
	l.activated = nil
	return out
}

func (l *permitLog) record(uid types.UID) {
	l.mu.Lock()
	l.uids = append(l.uids, uid)
	l.mu.Unlock()
}

func (l *permitLog) take() []types.UID {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.uids
	l.uids = nil
	return out
}

func (e *Engine) wrapRegistry(r frameworkruntime.Registry) frameworkruntime.Registry {
	out := frameworkruntime.Registry{}
	for name, factory := range r {
		out[name] = func(ctx context.Context, args runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			return factory(ctx, args, &permitHandle{Handle: h, log: e.permits})
		}
	}
	return out
}

type permitHandle struct {
	fwk.Handle
	log *permitLog
}

// Activate is kube-scheduler moving pods back to its active queue; the
// simulator, which has no queue, retries them (Engine.Activated).
func (h *permitHandle) Activate(logger klog.Logger, pods map[string]*v1.Pod) {
	h.log.activate(pods)
	h.Handle.Activate(logger, pods)
}

func (h *permitHandle) IterateOverWaitingPods(callback func(fwk.WaitingPod)) {
	h.Handle.IterateOverWaitingPods(func(wp fwk.WaitingPod) { callback(&reportingWaitingPod{wp, h.log}) })
}

func (h *permitHandle) GetWaitingPod(uid types.UID) fwk.WaitingPod {
	wp := h.Handle.GetWaitingPod(uid)
	if wp == nil {
		return nil
	}
	return &reportingWaitingPod{wp, h.log}
}

func (h *permitHandle) RejectWaitingPod(uid types.UID) bool {
	ok := h.Handle.RejectWaitingPod(uid)
	if ok {
		h.log.record(uid)
	}
	return ok
}

type reportingWaitingPod struct {
	fwk.WaitingPod
	log *permitLog
}

func (w *reportingWaitingPod) Allow(pluginName string) {
	w.WaitingPod.Allow(pluginName)
	if len(w.GetPendingPlugins()) == 0 {
		w.log.record(w.GetPod().UID)
	}
}

func (w *reportingWaitingPod) Reject(pluginName, msg string) bool {
	ok := w.WaitingPod.Reject(pluginName, msg)
	w.log.record(w.GetPod().UID)
	return ok
}

func (w *reportingWaitingPod) Preempt(pluginName, msg string) bool {
	ok := w.WaitingPod.Preempt(pluginName, msg)
	w.log.record(w.GetPod().UID)
	return ok
}
