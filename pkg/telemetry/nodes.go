package telemetry

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// ForgetDeletedNodes drops a node from store when the Node is deleted from
// the cluster, until ctx ends, and returns whether its view of the Nodes
// has synced. Without it a deleted node stays in the store, and in the
// stale count of penny_telemetry_nodes, until Prune drops it an hour later.
//
// It watches the Nodes' metadata (the scheduler's informers already hold
// every Node in full) and keeps nothing of each but its name and version.
// Every sweepEvery it also drops the stale nodes the cluster no longer
// has: a report already on its way when its node was deleted puts the
// node back after the deletion was handled.
func ForgetDeletedNodes(ctx context.Context, client metadata.Interface, store *Store, sweepEvery time.Duration, log logr.Logger) cache.InformerSynced {
	inf := metadatainformer.NewFilteredMetadataInformer(client, corev1.SchemeGroupVersion.WithResource("nodes"), metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
	_ = inf.SetTransform(func(obj any) (any, error) {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return obj, nil
		}
		return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion}}, nil
	})
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		// Nodes are cluster-scoped: the key is the name. A deletion missed
		// while the watch was down arrives as DeletedFinalStateUnknown.
		name, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		store.Forget(name)
		log.V(2).Info("node deleted; its telemetry is dropped", "node", name)
	}})
	go inf.Run(ctx.Done())
	go func() {
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !inf.HasSynced() {
				continue
			}
			store.ForgetStaleIf(func(name string) bool {
				_, exists, err := inf.GetStore().GetByKey(name)
				return err == nil && !exists
			})
		}
	}()
	return inf.HasSynced
}
