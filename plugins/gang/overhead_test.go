package gang

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
)

// BenchmarkPodInNoGang measures what the plugin adds to a pod that is in no
// gang, per scheduling cycle: every extension point it implements, as the
// framework calls them while no gang holds claims.
func BenchmarkPodInNoGang(b *testing.B) {
	ctx := context.Background()
	client := fake.NewClientset()
	h, err := frameworkruntime.NewFramework(ctx, frameworkruntime.Registry{}, nil,
		frameworkruntime.WithClientSet(client),
		frameworkruntime.WithInformerFactory(informers.NewSharedInformerFactory(client, 0)))
	if err != nil {
		b.Fatal(err)
	}
	pl, err := NewWith(ctx, nil, h)
	if err != nil {
		b.Fatal(err)
	}
	pod := plainPod("p", 2)
	other := &framework.QueuedPodInfo{PodInfo: mustPodInfo(b, plainPod("q", 1))}
	this := &framework.QueuedPodInfo{PodInfo: mustPodInfo(b, pod)}
	nodes := infos(gpuNode("n-0"))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		cs := framework.NewCycleState()
		_ = pl.PreEnqueue(ctx, pod)
		for range 20 { // a heap push and pop compare about log2(queue) times each
			_ = pl.Less(this, other)
		}
		_, _ = pl.SignPod(ctx, pod)
		if _, s := pl.PreFilter(ctx, cs, pod, nodes); s.Code() != fwk.Skip {
			b.Fatalf("PreFilter: %v", s)
		}
		if s := pl.PreScore(ctx, cs, pod, nodes); s.Code() != fwk.Skip {
			b.Fatalf("PreScore: %v", s)
		}
		_ = pl.Reserve(ctx, cs, pod, "n-0")
		_, _ = pl.Permit(ctx, cs, pod, "n-0")
	}
}

func mustPodInfo(b testing.TB, p *corev1.Pod) *framework.PodInfo {
	pi, err := framework.NewPodInfo(p)
	if err != nil {
		b.Fatal(err)
	}
	return pi
}
