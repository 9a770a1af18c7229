package packing

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pennysched/penny/pkg/gpu"
)

// The packer weighs a pod's CPU and memory as NodeResourcesFit counts them
// on the node; counting less made it score nodes as if the pod left CPU or
// memory free that NodeResourcesFit and the kubelet hold for it. Sidecars
// (restartable init containers) run next to the app and add to it; an init
// container runs next to the sidecars started before it.
func TestReqForCountsCPUAndMemoryAsTheScheduler(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	container := func(name, cpu, mem string, sidecar bool, kv ...string) corev1.Container {
		l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
		for i := 0; i+1 < len(kv); i += 2 {
			l[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
		}
		c := corev1.Container{Name: name, Resources: corev1.ResourceRequirements{Requests: l, Limits: l}}
		if sidecar {
			c.RestartPolicy = &always
		}
		return c
	}
	app := container("app", "1", "1Gi", false, string(gpu.ResourceGPUMilli), "300")
	for _, c := range []struct {
		name     string
		init     []corev1.Container
		podLevel corev1.ResourceList
		cpu      int64
		mem      int64
	}{
		{name: "app and a sidecar", init: []corev1.Container{container("proxy", "2", "3Gi", true)}, cpu: 3000, mem: 4 * gib},
		// The migration runs next to the proxy started before it, not the
		// one after: 2.5 + 2 CPUs and 2 + 3 GiB, more than app and sidecars.
		{name: "an init container after a sidecar", init: []corev1.Container{
			container("setup", "3500m", "2Gi", false),
			container("proxy", "2", "3Gi", true),
			container("migrate", "2500m", "2Gi", false),
		}, cpu: 4500, mem: 5 * gib},
		{name: "init containers only", init: []corev1.Container{container("setup", "3500m", "512Mi", false)}, cpu: 3500, mem: 1 * gib},
		// Pod-level requests are what the scheduler counts where set.
		{name: "pod-level requests", init: []corev1.Container{container("proxy", "2", "3Gi", true)},
			podLevel: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("16Gi")}, cpu: 8000, mem: 16 * gib},
	} {
		pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{app}, InitContainers: c.init}}
		if c.podLevel != nil {
			pod.Spec.Resources = &corev1.ResourceRequirements{Requests: c.podLevel}
		}
		r, err := ReqFor(pod)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.CPU != c.cpu || r.Mem != c.mem || r.Shape.MilliCPU != c.cpu || r.Shape.Mem != c.mem {
			t.Errorf("%s: CPU %d m, memory %d (shape %d m, %d); want %d m, %d", c.name, r.CPU, r.Mem, r.Shape.MilliCPU, r.Shape.Mem, c.cpu, c.mem)
		}
	}
}
