package plugins

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"

	"github.com/pennysched/penny/plugins/gang"
	"github.com/pennysched/penny/plugins/gpupack"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// The shipped profile loads, validates and builds with Penny's plugins and
// their args, the way penny-scheduler builds it.
func TestShippedProfileBuilds(t *testing.T) {
	schedmetrics.Register()
	cfg, err := options.LoadConfigFromFile(klog.Background(), "../deploy/scheduler/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := validation.ValidateKubeSchedulerConfiguration(cfg); err != nil {
		t.Fatal(err)
	}
	registry := plugins.NewInTreeRegistry()
	if err := registry.Merge(Registry(Deps{})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	for i := range cfg.Profiles {
		p := &cfg.Profiles[i]
		fw, err := frameworkruntime.NewFramework(ctx, registry, p,
			frameworkruntime.WithClientSet(client),
			frameworkruntime.WithInformerFactory(informers.NewSharedInformerFactory(client, 0)),
			frameworkruntime.WithSnapshotSharedLister(cache.NewEmptySnapshot()))
		if err != nil {
			t.Fatalf("profile %s: %v", p.SchedulerName, err)
		}
		if p.SchedulerName == "penny-scheduler" {
			weights := map[string]int32{}
			for _, s := range fw.ListPlugins().Score.Enabled {
				weights[s.Name] = s.Weight
			}
			for _, name := range []string{gang.Name, spotrisk.Name, gpupack.Name} {
				if weights[name] == 0 {
					t.Errorf("%s is not a score plugin in %s: %+v", name, p.SchedulerName, fw.ListPlugins().Score)
				}
			}
			// PennyGPUPack binds GPU pods with their devices; it must come
			// before DefaultBinder, which would otherwise bind them without.
			if bind := fw.ListPlugins().Bind.Enabled; len(bind) < 2 || bind[0].Name != gpupack.Name {
				t.Errorf("bind plugins %+v: want %s first", bind, gpupack.Name)
			}
			// docs/spot.md: a clear price difference outweighs packing.
			if weights[spotrisk.Name] <= weights[gpupack.Name] {
				t.Errorf("SpotRisk weight %d is not above PennyGPUPack's %d", weights[spotrisk.Name], weights[gpupack.Name])
			}
		}
	}
}

// PennyGang admits a gang only to nodes SpotRisk lets its members use: a
// gang of inference pods is not admitted to Spot room (it would hold the
// room, fail SpotRisk's Filter, back off and try the same nodes again), and
// with on-demand room it is admitted there.
func TestGangIsAdmittedOnlyWhereSpotRiskLetsItsMembersRun(t *testing.T) {
	schedmetrics.Register()
	cfg, err := options.LoadConfigFromFile(klog.Background(), "../deploy/scheduler/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var profile *config.KubeSchedulerProfile
	for i := range cfg.Profiles {
		if cfg.Profiles[i].SchedulerName == "penny-scheduler" {
			profile = &cfg.Profiles[i]
		}
	}
	node := func(name, ct string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname: name, corev1.LabelTopologyZone: "us-east-1a", corev1.LabelInstanceTypeStable: "g5.12xlarge",
			"karpenter.sh/capacity-type": ct}},
			Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("48"), corev1.ResourceMemory: resource.MustParse("192Gi"),
				corev1.ResourcePods: resource.MustParse("110"), "nvidia.com/gpu": resource.MustParse("4")}}}
		n.Status.Capacity = n.Status.Allocatable
		return n
	}
	member := func(i int) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("serve-", i), Namespace: "ml", UID: types.UID(fmt.Sprint("serve-", i)),
				Labels:      map[string]string{"penny.dev/gang": "serve", "penny.dev/gang-size": "2"},
				Annotations: map[string]string{spotrisk.AnnotationWorkload: "inference"}},
			Spec: corev1.PodSpec{SchedulerName: "penny-scheduler", Containers: []corev1.Container{{Name: "c",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("4")}}}}},
		}
	}
	preFilter := func(nodes ...*corev1.Node) (*fwk.PreFilterResult, *fwk.Status) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		client := fake.NewClientset(member(0), member(1))
		factory := informers.NewSharedInformerFactory(client, 0)
		// The whole profile is built (SpotRisk included); PennyGang's
		// PreFilter is called alone, since the in-tree DRA plugin needs a
		// running scheduler.
		ours := Registry(Deps{})
		var pennyGang fwk.PreFilterPlugin
		newGang := ours[gang.Name]
		ours[gang.Name] = func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			p, err := newGang(ctx, obj, h)
			if err == nil {
				pennyGang = p.(fwk.PreFilterPlugin)
			}
			return p, err
		}
		registry := plugins.NewInTreeRegistry()
		if err := registry.Merge(ours); err != nil {
			t.Fatal(err)
		}
		snapshot := cache.NewSnapshot(nil, nodes)
		if _, err := frameworkruntime.NewFramework(ctx, registry, profile,
			frameworkruntime.WithClientSet(client), frameworkruntime.WithInformerFactory(factory),
			frameworkruntime.WithSnapshotSharedLister(snapshot)); err != nil {
			t.Fatal(err)
		}
		factory.Start(ctx.Done())
		factory.WaitForCacheSync(ctx.Done())
		infos, err := snapshot.NodeInfos().List()
		if err != nil {
			t.Fatal(err)
		}
		return pennyGang.PreFilter(ctx, framework.NewCycleState(), member(0), infos)
	}

	// The message gives SpotRisk's own reason, so that nobody looks for
	// capacity the members' class keeps them from.
	if _, s := preFilter(node("spot-0", "spot"), node("spot-1", "spot")); s.IsSuccess() || !strings.Contains(s.Message(), "gang ml/serve") ||
		!strings.Contains(s.Message(), "ruled out for them: 2 node(s) are Spot and the pod stays off Spot (inference workload)") {
		t.Fatalf("with room on Spot nodes only: %v; want the gang not admitted, with SpotRisk's reason", s)
	}
	res, s := preFilter(node("spot-0", "spot"), node("spot-1", "spot"), node("od-0", "on-demand"), node("od-1", "on-demand"))
	if !s.IsSuccess() {
		t.Fatalf("with on-demand room: %v", s)
	}
	if got := sets.List(res.NodeNames); strings.Join(got, ",") != "od-0,od-1" {
		t.Fatalf("admitted to %v, want the on-demand nodes", got)
	}
}
