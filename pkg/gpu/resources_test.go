package gpu

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func corev1ResourceName(s string) corev1.ResourceName { return corev1.ResourceName(s) }

func podWith(limits ...corev1.ResourceList) *corev1.Pod {
	pod := &corev1.Pod{}
	pod.Name, pod.Namespace = "p", "ns"
	for _, l := range limits {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Limits: l}})
	}
	return pod
}

func TestParsePodRequest(t *testing.T) {
	r, err := ParsePodRequest(podWith(
		corev1.ResourceList{ResourceGPU: resource.MustParse("2")},
		corev1.ResourceList{ResourceGPU: resource.MustParse("1")},
	))
	if err != nil || r.GPUs != 3 || r.TotalMilli() != 3000 {
		t.Fatalf("whole GPUs: %+v %v", r, err)
	}
	r, err = ParsePodRequest(podWith(corev1.ResourceList{ResourceGPUMilli: resource.MustParse("460")}))
	if err != nil || r.Milli != 460 {
		t.Fatalf("share: %+v %v", r, err)
	}
	r, err = ParsePodRequest(podWith(corev1.ResourceList{MIGResourceName("3g.40gb"): resource.MustParse("1")}))
	if err != nil || r.MIG["3g.40gb"] != 1 || r.TotalMilli() != 3*1000/7 {
		t.Fatalf("MIG: %+v %v", r, err)
	}
	if r, err := ParsePodRequest(podWith(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")})); err != nil || !r.IsZero() {
		t.Fatalf("CPU pod: %+v %v", r, err)
	}
}

func TestParsePodRequestRejectsMixedKinds(t *testing.T) {
	_, err := ParsePodRequest(podWith(corev1.ResourceList{
		ResourceGPU:      resource.MustParse("1"),
		ResourceGPUMilli: resource.MustParse("500"),
	}))
	if err == nil || !strings.Contains(err.Error(), "ask for one of") {
		t.Fatalf("want mixed-kind error, got %v", err)
	}
	_, err = ParsePodRequest(podWith(corev1.ResourceList{ResourceGPUMilli: resource.MustParse("1000")}))
	if err == nil || !strings.Contains(err.Error(), string(ResourceGPU)) {
		t.Fatalf("want share-too-large error, got %v", err)
	}
}

// Sidecars (restartable init containers) keep their devices while the app
// runs, so the kubelet and NodeResourcesFit add them to the app's; an init
// container that runs to completion only needs its own next to the sidecars
// started before it. Counting sidecars like ordinary init containers left
// their devices out of the view, to be handed out twice.
func TestParsePodRequestCountsSidecarsAndInitContainers(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	initC := func(name string, sidecar bool, l corev1.ResourceList) corev1.Container {
		c := corev1.Container{Name: name, Resources: corev1.ResourceRequirements{Limits: l}}
		if sidecar {
			c.RestartPolicy = &always
		}
		return c
	}
	one := corev1.ResourceList{ResourceGPU: resource.MustParse("1")}
	pod := podWith(one)
	pod.Spec.InitContainers = []corev1.Container{initC("proxy", true, one)}
	if r, err := ParsePodRequest(pod); err != nil || r.GPUs != 2 {
		t.Fatalf("app and sidecar with one GPU each: %+v %v, want 2 GPUs", r, err)
	}
	// init (2) + the sidecar before it (1) = 3 > app (1) + sidecar (1).
	pod.Spec.InitContainers = append(pod.Spec.InitContainers, initC("warm", false, corev1.ResourceList{ResourceGPU: resource.MustParse("2")}))
	if r, err := ParsePodRequest(pod); err != nil || r.GPUs != 3 {
		t.Fatalf("init container after a sidecar: %+v %v, want 3 GPUs", r, err)
	}
	// MIG profiles are separate resources: the pod needs the most of each.
	mig := podWith(corev1.ResourceList{MIGResourceName("3g.40gb"): resource.MustParse("1")})
	mig.Spec.InitContainers = []corev1.Container{initC("prep", false, corev1.ResourceList{MIGResourceName("1g.10gb"): resource.MustParse("2")})}
	if r, err := ParsePodRequest(mig); err != nil || r.MIG["3g.40gb"] != 1 || r.MIG["1g.10gb"] != 2 || len(r.MIG) != 2 {
		t.Fatalf("init container with other MIG profiles: %+v %v, want 1 3g.40gb and 2 1g.10gb", r, err)
	}
	// Kinds mixed across containers cannot be one assignment either.
	mixed := podWith(corev1.ResourceList{ResourceGPUMilli: resource.MustParse("300")})
	mixed.Spec.InitContainers = []corev1.Container{initC("prep", false, one)}
	if _, err := ParsePodRequest(mixed); err == nil || !strings.Contains(err.Error(), "ask for one of") {
		t.Fatalf("share in the app, whole GPU in an init container: %v, want the mixed-kind error", err)
	}
}

// A zero limit asks for nothing: a pod templated with every profile at 0
// but one is not a pod asking for two kinds of GPU.
func TestParsePodRequestIgnoresZeroAndRejectsNegative(t *testing.T) {
	r, err := ParsePodRequest(podWith(corev1.ResourceList{
		ResourceGPU:                resource.MustParse("1"),
		MIGResourceName("1g.10gb"): resource.MustParse("0"),
		ResourceGPUMilli:           resource.MustParse("0"),
	}))
	if err != nil || r.GPUs != 1 || len(r.MIG) != 0 || r.Milli != 0 {
		t.Fatalf("1 GPU with zero MIG and share limits: %+v %v", r, err)
	}
	if r, err := ParsePodRequest(podWith(corev1.ResourceList{MIGResourceName("1g.10gb"): resource.MustParse("0")})); err != nil || !r.IsZero() {
		t.Fatalf("only a zero MIG limit: %+v %v, want no GPU", r, err)
	}
	_, err = ParsePodRequest(podWith(corev1.ResourceList{ResourceGPU: resource.MustParse("-1")}))
	if err == nil || !strings.Contains(err.Error(), "must not be negative") || !strings.Contains(err.Error(), string(ResourceGPU)) {
		t.Fatalf("negative GPUs: %v", err)
	}
}

// Counts no node could hold are refused with the limit, before anything
// sizes memory or loops by them: a pod with nvidia.com/gpu: 2^63-1 bound
// straight to a node (spec.nodeName) made the device view allocate a slice
// of that capacity, and a MIG count of 10^12 had the packer list each
// instance.
func TestParsePodRequestRefusesCountsNoNodeHas(t *testing.T) {
	for _, l := range []corev1.ResourceList{
		{ResourceGPU: resource.MustParse("9223372036854775807")},
		{MIGResourceName("1g.10gb"): resource.MustParse("1000000000000")},
	} {
		_, err := ParsePodRequest(podWith(l))
		if err == nil || !strings.Contains(err.Error(), "at most 4096") {
			t.Errorf("%v: %v, want an error naming the limit", l, err)
		}
	}
	// Shares that each pass alone but wrap around when summed.
	huge := corev1.ResourceList{ResourceGPUMilli: resource.MustParse("5000000000000000000")}
	if r, err := ParsePodRequest(podWith(huge, huge)); err == nil {
		t.Errorf("two shares of 5e18: %+v, want an error", r)
	}
	// Across containers too.
	many := corev1.ResourceList{ResourceGPU: resource.MustParse("4000")}
	if _, err := ParsePodRequest(podWith(many, many)); err == nil || !strings.Contains(err.Error(), "at most 4096") {
		t.Errorf("8000 GPUs in two containers: %v", err)
	}
}

// Quantities past an int64 are refused as too many, for pods and nodes:
// Value wraps them silently (1e19 read as 0: a pod that asked for no GPU,
// bound without a device choice; 18446744073709551617 as 1).
func TestQuantitiesPastAnInt64AreTooMany(t *testing.T) {
	for _, q := range []string{"1e19", "18446744073709551617", "9223372036854775808"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{ResourceGPU: resource.MustParse(q)}}}}}}
		if r, err := ParsePodRequest(pod); err == nil || !strings.Contains(err.Error(), "ask for at most") {
			t.Errorf("nvidia.com/gpu: %s read as %s (%v), want refused as too many", q, r, err)
		}
		for _, name := range []corev1.ResourceName{ResourceGPU, ResourceGPUMilli} {
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{name: resource.MustParse(q)}}}
			if n, err := ReadNodeDevices(node); err == nil {
				t.Errorf("allocatable %s: %s read as %d GPUs, want it refused", name, q, len(n.GPUs))
			}
		}
	}
}
