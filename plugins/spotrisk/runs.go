package spotrisk

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

// maxRecorded bounds the pods WatchRuns remembers having recorded.
const maxRecorded = 10000

// WatchRuns feeds runs with every training pod (by the plugin's reading of
// its class) the informer shows succeeded: how long it ran and on how many
// GPUs, each pod once. The informer should watch succeeded pods only
// (SucceededPods): the scheduler's own pod informer drops finished pods, and
// the delete it sees then carries the pod's state before it finished.
func (pl *SpotRisk) WatchRuns(informer cache.SharedInformer, runs *pricing.RunLengths) error {
	w := &runWatch{pl: pl, runs: runs, recorded: map[types.UID]bool{}}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { w.observe(obj) },
		UpdateFunc: func(_, obj interface{}) { w.observe(obj) },
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

type runWatch struct {
	pl   *SpotRisk
	runs *pricing.RunLengths

	mu       sync.Mutex
	recorded map[types.UID]bool
}

func (w *runWatch) observe(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Status.Phase != corev1.PodSucceeded {
		return
	}
	ran, end, ok := runTime(pod)
	if !ok {
		return
	}
	if class, err := classify(pod, w.pl.args); err != nil || class.Workload != Training {
		return
	}
	gpus := float64(pricing.PodUsage(pod).GPUMilli) / gpu.MilliPerGPU
	w.mu.Lock()
	if w.recorded[pod.UID] {
		w.mu.Unlock()
		return
	}
	if len(w.recorded) >= maxRecorded {
		// A pod's add and its updates come close together; forgetting
		// older pods only risks counting one twice.
		clear(w.recorded)
	}
	w.recorded[pod.UID] = true
	w.mu.Unlock()
	w.runs.Observe(gpus, ran, end)
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
