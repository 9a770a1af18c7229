package plugins

import (
	"context"
	"testing"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
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
