package sim

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// podInformer is the pod informer plugins get from the engine's informer
// factory (gang members, gpupack's look-ahead over waiting pods). A cluster's
// informer delivers each change on its own goroutines, within milliseconds;
// a simulated cycle that started before a handler ran would depend on
// goroutine timing. So the engine feeds this informer every change it makes
// to a pod, and it updates its store and calls the handlers at once, on the
// engine's goroutine: each cycle sees the API as caught-up informers would,
// and a run is reproducible.
type podInformer struct {
	// The rest of the interface (a controller, resync, watch errors) is
	// never used in the simulator; calling it panics.
	cache.SharedIndexInformer

	indexer cache.Indexer
	mu      sync.Mutex
	regs    []*podHandlerReg
}

var _ cache.SharedIndexInformer = &podInformer{}

func newPodInformer() *podInformer {
	return &podInformer{indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
}

type podHandlerReg struct{ h cache.ResourceEventHandler }

func (r *podHandlerReg) HasSynced() bool                     { return true }
func (r *podHandlerReg) HasSyncedChecker() cache.DoneChecker { return syncedChecker{} }

// syncedChecker is always done: the store is complete whenever it is read.
type syncedChecker struct{}

func (syncedChecker) Name() string { return "penny-sim pods" }
func (syncedChecker) Done() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (i *podInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	r := &podHandlerReg{h: h}
	i.regs = append(i.regs, r)
	for _, obj := range i.indexer.List() {
		h.OnAdd(obj, true)
	}
	return r, nil
}

func (i *podInformer) AddEventHandlerWithResyncPeriod(h cache.ResourceEventHandler, _ time.Duration) (cache.ResourceEventHandlerRegistration, error) {
	return i.AddEventHandler(h)
}

func (i *podInformer) AddEventHandlerWithOptions(h cache.ResourceEventHandler, _ cache.HandlerOptions) (cache.ResourceEventHandlerRegistration, error) {
	return i.AddEventHandler(h)
}

func (i *podInformer) RemoveEventHandler(reg cache.ResourceEventHandlerRegistration) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	for k, r := range i.regs {
		if r == reg {
			i.regs = append(i.regs[:k], i.regs[k+1:]...)
			return nil
		}
	}
	return fmt.Errorf("handler not registered with the simulator's pod informer")
}

func (i *podInformer) GetStore() cache.Store                  { return i.indexer }
func (i *podInformer) GetIndexer() cache.Indexer              { return i.indexer }
func (i *podInformer) AddIndexers(ix cache.Indexers) error    { return i.indexer.AddIndexers(ix) }
func (i *podInformer) HasSynced() bool                        { return true }
func (i *podInformer) HasSyncedChecker() cache.DoneChecker    { return syncedChecker{} }
func (i *podInformer) LastSyncResourceVersion() string        { return "" }
func (i *podInformer) IsStopped() bool                        { return false }
func (i *podInformer) Run(stop <-chan struct{})               { <-stop }
func (i *podInformer) RunWithContext(ctx context.Context)     { <-ctx.Done() }
func (i *podInformer) SetTransform(cache.TransformFunc) error { return nil }

// set records the pod as the API now holds it (nil: deleted) and tells the
// handlers.
func (i *podInformer) set(key string, pod *v1.Pod) error {
	i.mu.Lock()
	regs := append([]*podHandlerReg(nil), i.regs...)
	i.mu.Unlock()
	old, had, err := i.indexer.GetByKey(key)
	if err != nil {
		return err
	}
	switch {
	case pod == nil && had:
		if err := i.indexer.Delete(old); err != nil {
			return err
		}
		for _, r := range regs {
			r.h.OnDelete(old)
		}
	case pod != nil && had:
		if err := i.indexer.Update(pod); err != nil {
			return err
		}
		for _, r := range regs {
			r.h.OnUpdate(old, pod)
		}
	case pod != nil:
		if err := i.indexer.Add(pod); err != nil {
			return err
		}
		for _, r := range regs {
			r.h.OnAdd(pod, false)
		}
	}
	return nil
}

// activator stands in for the scheduling queue's Activate, which plugins
// call to have waiting pods tried again (a gang whose missing member
// arrived). The simulator has no queue: its replays retry waiting pods
// themselves, whenever capacity changes and at every autoscaler scan.
type activator struct{}

func (activator) Activate(klog.Logger, map[string]*v1.Pod) {}
