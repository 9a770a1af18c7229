package gang

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// IndexName is the name of the pod informer index that groups pods by gang.
const IndexName = "penny.dev/gang"

// IndexFunc indexes pods by Ref.Key.
func IndexFunc(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	ref, ok := RefOf(pod)
	if !ok {
		return nil, nil
	}
	return []string{ref.Key()}, nil
}

// AddIndex adds the gang index to a pod informer. It must run before the
// informer starts; adding it twice is harmless, so that several scheduler
// profiles (or the agent and a plugin) can share one informer.
func AddIndex(informer cache.SharedIndexInformer) error {
	if _, exists := informer.GetIndexer().GetIndexers()[IndexName]; exists {
		return nil
	}
	if err := informer.AddIndexers(cache.Indexers{IndexName: IndexFunc}); err != nil {
		return fmt.Errorf("adding the %s pod index: %w", IndexName, err)
	}
	return nil
}

// Members lists the pods of gang ref from an indexer that has the gang index
// (see AddIndex), in no particular order. Pods being deleted are left out:
// they will not run with the gang.
func Members(indexer cache.Indexer, ref Ref) ([]*corev1.Pod, error) {
	objs, err := indexer.ByIndex(IndexName, ref.Key())
	if err != nil {
		return nil, fmt.Errorf("listing members of gang %s: %w", ref, err)
	}
	pods := make([]*corev1.Pod, 0, len(objs))
	for _, obj := range objs {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.DeletionTimestamp != nil {
			continue
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		pods = append(pods, pod)
	}
	return pods, nil
}
