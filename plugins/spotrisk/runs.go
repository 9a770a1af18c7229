package spotrisk

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

// WatchRuns feeds runs with every training pod (by the plugin's reading of
// its class) that an informer of succeeded pods (SucceededPods) adds: how
// long it ran and on how many GPUs. A pod enters such an informer once, when
// it succeeds or at its first list; a relist shows the pods it holds as
// updates, which are not counted again. (The scheduler's own pod informer
// drops finished pods, and the delete it sees then carries the pod's state
// before it finished.)
func (pl *SpotRisk) WatchRuns(informer cache.SharedInformer, runs *pricing.RunLengths) error {
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj interface{}) { pl.observeRun(obj, runs) },
	})
	return err
}

// SucceededPods is an informer on the pods that succeeded, for WatchRuns:
// its first list is the successes the cluster still keeps (so a restarted
// scheduler learns again from them), then each new one as it happens.
func SucceededPods(client kubernetes.Interface) (informers.SharedInformerFactory, cache.SharedIndexInformer) {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("status.phase", string(corev1.PodSucceeded)).String()
		}),
		informers.WithTransform(func(obj interface{}) (interface{}, error) {
			if pod, ok := obj.(*corev1.Pod); ok {
				return runOf(pod), nil
			}
			return obj, nil
		}))
	return factory, factory.Core().V1().Pods().Informer()
}

// runOf keeps of a succeeded pod what WatchRuns reads (its class, requests
// and run times): the cluster may keep thousands of them, and the informer
// holds each.
func runOf(pod *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: pod.Labels, Annotations: pod.Annotations, OwnerReferences: pod.OwnerReferences},
		Spec:   corev1.PodSpec{Priority: pod.Spec.Priority, Overhead: pod.Spec.Overhead, Resources: pod.Spec.Resources},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, StartTime: pod.Status.StartTime},
	}
	strip := func(cs []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = corev1.Container{Name: c.Name, Resources: c.Resources, RestartPolicy: c.RestartPolicy}
		}
		return out
	}
	out.Spec.Containers, out.Spec.InitContainers = strip(pod.Spec.Containers), strip(pod.Spec.InitContainers)
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			out.Status.ContainerStatuses = append(out.Status.ContainerStatuses, corev1.ContainerStatus{Name: cs.Name,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{FinishedAt: t.FinishedAt}}})
		}
	}
	return out
}

func (pl *SpotRisk) observeRun(obj interface{}, runs *pricing.RunLengths) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Status.Phase != corev1.PodSucceeded {
		return
	}
	ran, end, ok := runTime(pod)
	if !ok {
		return
	}
	// The end is the kubelet's clock. One that runs ahead would date the
	// run in the future, and every run that ends before that date would
	// count as that much older: a node a year ahead left the learned run
	// length to its one run for a year.
	if now := pl.clock.Now(); end.After(now) {
		end = now
	}
	if class, err := pl.classify(pod); err != nil || class.Workload != Training {
		return
	}
	// As SpotRisk.runtime reads it for training that declares none.
	typical := func() time.Duration {
		if d, learned := runs.Typical(); learned {
			return d
		}
		return pl.args.UnknownRuntime.Duration
	}
	before := typical()
	runs.Observe(float64(pricing.PodUsage(pod).GPUMilli)/gpu.MilliPerGPU, ran, end)
	if typical() < before {
		pl.retryRuntimeFell(klog.Background())
	}
}

// runTime is how long a finished pod ran, from its start to its last
// container's end, and when that was.
func runTime(pod *corev1.Pod) (time.Duration, time.Time, bool) {
	if pod.Status.StartTime == nil {
		return 0, time.Time{}, false
	}
	var end time.Time
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && t.FinishedAt.After(end) {
			end = t.FinishedAt.Time
		}
	}
	ran := end.Sub(pod.Status.StartTime.Time)
	return ran, end, !end.IsZero() && ran > 0
}
