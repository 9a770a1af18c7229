package plugins

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/names"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/pennysched/penny/pkg/metricstest"
	"github.com/pennysched/penny/pkg/pricing"
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

// shippedProfile is the penny-scheduler profile of the shipped
// configuration.
func shippedProfile(t *testing.T) *config.KubeSchedulerProfile {
	t.Helper()
	schedmetrics.Register()
	cfg, err := options.LoadConfigFromFile(klog.Background(), "../deploy/scheduler/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Profiles {
		if cfg.Profiles[i].SchedulerName == "penny-scheduler" {
			return &cfg.Profiles[i]
		}
	}
	t.Fatal("deploy/scheduler/config.yaml has no penny-scheduler profile")
	return nil
}

// g5Node is a 4-GPU g5.12xlarge in us-east-1a of capacity type ct.
func g5Node(name, ct string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelHostname: name, corev1.LabelTopologyZone: "us-east-1a", corev1.LabelInstanceTypeStable: "g5.12xlarge",
		"karpenter.sh/capacity-type": ct}},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("48"), corev1.ResourceMemory: resource.MustParse("192Gi"),
			corev1.ResourcePods: resource.MustParse("110"), "nvidia.com/gpu": resource.MustParse("4")}}}
	n.Status.Capacity = n.Status.Allocatable
	return n
}

// twoMemberGang is a gang of two 4-GPU pods of the workload, in namespace
// ml, named after the gang.
func twoMemberGang(name, workload string) []*corev1.Pod {
	var members []*corev1.Pod
	for i := range 2 {
		pod := fmt.Sprint(name, "-", i)
		members = append(members, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: "ml", UID: types.UID(pod),
				Labels:      map[string]string{"penny.dev/gang": name, "penny.dev/gang-size": "2"},
				Annotations: map[string]string{spotrisk.AnnotationWorkload: workload}},
			Spec: corev1.PodSpec{SchedulerName: "penny-scheduler", Containers: []corev1.Container{{Name: "c",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("4")}}}}},
		})
	}
	return members
}

// gangPreFilter builds the whole shipped profile (SpotRisk included) with
// deps over the nodes and the gang, and asks PennyGang's PreFilter about
// the gang's first member; PreFilter is called alone, since the in-tree
// DRA plugin needs a running scheduler.
func gangPreFilter(t *testing.T, deps Deps, members []*corev1.Pod, nodes ...*corev1.Node) (*fwk.PreFilterResult, *fwk.Status) {
	t.Helper()
	ctx, _, pennyGang, infos := shippedGangProfile(t, deps, nil, nil, members, nodes...)
	return pennyGang.PreFilter(ctx, framework.NewCycleState(), members[0], infos)
}

// shippedGangProfile builds the shipped profile, less the plugins named in
// disabled, with deps over the nodes and the gang's members, retrying pods
// through act (nil: none), and returns it with PennyGang and the nodes.
func shippedGangProfile(t *testing.T, deps Deps, act fwk.PodActivator, disabled []string, members []*corev1.Pod, nodes ...*corev1.Node) (context.Context, framework.Framework, fwk.PreFilterPlugin, []fwk.NodeInfo) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	objs := make([]runtime.Object, len(members))
	for i, m := range members {
		objs[i] = m
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	ours := Registry(deps)
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
	opts := []frameworkruntime.Option{frameworkruntime.WithClientSet(client), frameworkruntime.WithInformerFactory(factory),
		frameworkruntime.WithSnapshotSharedLister(snapshot), frameworkruntime.WithMutableSnapshotLister(snapshot)}
	if act != nil {
		opts = append(opts, frameworkruntime.WithPodActivator(act))
	}
	profile := shippedProfile(t)
	pl := profile.Plugins
	for _, name := range disabled {
		// The framework expands multiPoint by each extension point's
		// disabled list.
		for _, set := range []*config.PluginSet{&pl.PreEnqueue, &pl.PreFilter, &pl.Filter, &pl.PostFilter, &pl.PreScore, &pl.Score, &pl.Reserve, &pl.Permit, &pl.PreBind, &pl.PostBind} {
			set.Disabled = append(set.Disabled, config.Plugin{Name: name})
		}
	}
	fw, err := frameworkruntime.NewFramework(ctx, registry, profile, opts...)
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	infos, err := snapshot.NodeInfos().List()
	if err != nil {
		t.Fatal(err)
	}
	return ctx, fw, pennyGang, infos
}

// PennyGang admits a gang only to nodes SpotRisk lets its members use: a
// gang of inference pods is not admitted to Spot room (it would hold the
// room, fail SpotRisk's Filter, back off and try the same nodes again), and
// with on-demand room it is admitted there.
func TestGangIsAdmittedOnlyWhereSpotRiskLetsItsMembersRun(t *testing.T) {
	serve := twoMemberGang("serve", "inference")
	// The message gives SpotRisk's own reason, so that nobody looks for
	// capacity the members' class keeps them from.
	if _, s := gangPreFilter(t, Deps{}, serve, g5Node("spot-0", "spot"), g5Node("spot-1", "spot")); s.IsSuccess() || !strings.Contains(s.Message(), "gang ml/serve") ||
		!strings.Contains(s.Message(), "ruled out for them: 2 node(s) are Spot and the pod stays off Spot (inference workload)") {
		t.Fatalf("with room on Spot nodes only: %v; want the gang not admitted, with SpotRisk's reason", s)
	}
	res, s := gangPreFilter(t, Deps{}, serve, g5Node("spot-0", "spot"), g5Node("spot-1", "spot"), g5Node("od-0", "on-demand"), g5Node("od-1", "on-demand"))
	if !s.IsSuccess() {
		t.Fatalf("with on-demand room: %v", s)
	}
	if got := sets.List(res.NodeNames); strings.Join(got, ",") != "od-0,od-1" {
		t.Fatalf("admitted to %v, want the on-demand nodes", got)
	}
}

// capacityPrices prices a node by its capacity type label alone, its whole
// price on its GPUs.
type capacityPrices map[string]float64

func (c capacityPrices) NodePrice(node *corev1.Node) (pricing.Price, bool) {
	ct := node.Labels["karpenter.sh/capacity-type"]
	hourly, ok := c[ct]
	gpus := node.Status.Allocatable["nvidia.com/gpu"]
	return pricing.Price{Capacity: pricing.CapacityType(ct), NodeHourly: hourly, GPUHourly: hourly / float64(gpus.Value())}, ok
}

// oneRate reclaims every Spot pool at the same rate.
type oneRate float64

func (r oneRate) ReclaimRate(pricing.Pool) float64 { return float64(r) }

// Where a gang fits on Spot and on on-demand capacity alike, PennyGang puts
// it where SpotRisk's Score prices its members' work lowest, counting that a
// reclaim of any of the gang's nodes stops it. Chosen by reclaim risk alone,
// a batch gang went to on-demand nodes at 3.3 times the Spot price, though
// Score, and the autoscaler's Expander that grows pools by the same measure,
// priced its work on Spot at a third of that; a gang on Spot so risky that
// its work costs more there still goes to on-demand.
func TestGangGoesWhereSpotRiskPricesItsWorkLowest(t *testing.T) {
	// Batch work (allow): Spot as it prices.
	job := twoMemberGang("job", "batch")
	admitted := func(rate float64) string {
		res, s := gangPreFilter(t, Deps{Prices: capacityPrices{"spot": 1.7, "on-demand": 5.672}, Risk: oneRate(rate)}, job,
			g5Node("od-0", "on-demand"), g5Node("od-1", "on-demand"), g5Node("spot-0", "spot"), g5Node("spot-1", "spot"))
		if !s.IsSuccess() {
			t.Fatalf("reclaim rate %g: %v", rate, s)
		}
		return strings.Join(sets.List(res.NodeNames), ",")
	}
	// Per member, an hour of work costs $1.7 x (1 + 2 x rate x (2h lost
	// + 5m restart)) on Spot (unknownRuntime 4h without checkpoints) and
	// $5.672 on-demand.
	if got := admitted(1.0 / 500); got != "spot-0,spot-1" {
		t.Errorf("Spot reclaimed once in 500 node-hours ($1.71 against $5.67 an hour of work): admitted to %s, want the Spot nodes", got)
	}
	// A pod alone would pay $5.24 there: the gang's two nodes count.
	if got := admitted(1); got != "od-0,od-1" {
		t.Errorf("Spot reclaimed once a node-hour ($8.78 for a member of a gang of 2 against $5.67): admitted to %s, want the on-demand nodes", got)
	}
}

// activations is a scheduling queue as far as Activate goes: it hands on
// the names of the pods retried.
type activations chan string

func (a activations) Activate(_ klog.Logger, pods map[string]*corev1.Pod) {
	for k := range pods {
		a <- k
	}
}

// A gang that PennyGang turns away before SpotRisk's Filter runs, finding
// no room on the nodes SpotRisk admits, is retried as a lone pod is when
// the pool that its risk limit kept it off falls back under the limit.
// SpotRisk's PostFilter then has no cycle state of its own, and the gang
// waited for an unrelated event or the scheduler's five-minute flush though
// the reclaim that kept it out weighs half as much every ten minutes.
func TestGangKeptOffSpotByRiskIsRetriedWhenThePoolsRiskFalls(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	model := pricing.NewRiskModel(pricing.RiskConfig{HalfLife: 10 * time.Minute, Clock: clk})
	nodes := []*corev1.Node{g5Node("spot-0", "spot"), g5Node("spot-1", "spot"), g5Node("od-0", "on-demand"), g5Node("od-1", "on-demand")}
	pool := pricing.NodePool(nodes[0])
	// 5-10% a month passes a 10% limit; a reclaim takes the pool to 66%.
	model.SetPrior(pool, pricing.Bucket5To10)
	model.ObserveReclaim(pool, "spot-2", t0)
	job := twoMemberGang("job", "batch")
	for _, m := range job {
		m.Annotations[spotrisk.AnnotationSpot] = "only"
		m.Annotations[spotrisk.AnnotationMaxReclaimRisk] = "10%"
	}
	act := make(activations, 10)
	// The scheduler's cycle, PreFilter to PostFilter, but for the in-tree
	// DRA plugin, which needs a running scheduler: without resource claims
	// it turns nobody away.
	ctx, fw, _, infos := shippedGangProfile(t, Deps{Prices: capacityPrices{"spot": 1.7, "on-demand": 5.672}, Risk: model, Clock: clk}, act,
		[]string{names.DynamicResources}, job, nodes...)
	state := framework.NewCycleState()
	_, s, _ := fw.RunPreFilterPlugins(ctx, state, job[0])
	if s.IsSuccess() || !strings.Contains(s.Message(), "2 node(s) are in Spot pools reclaimed more often than penny.dev/max-reclaim-risk=10 percent a month allows") {
		t.Fatalf("after a reclaim: %v; want the gang turned away for the Spot pool's risk", s)
	}
	// What the scheduler runs next: SpotRisk's PreFilter never ran.
	statuses := framework.NewDefaultNodeToStatus()
	for _, ni := range infos {
		statuses.Set(ni.Node().Name, s)
	}
	fw.RunPostFilterPlugins(ctx, state, job[0], statuses)
	select {
	case got := <-act:
		t.Fatalf("retried %s while the pool is still above 10%%", got)
	default:
	}
	wait, ok := model.FallsTo(pool, pricing.RateFromMonthly(0.10))
	if !ok || wait <= 0 {
		t.Fatalf("the pool's estimate falls to 10%% in %v, %v", wait, ok)
	}
	clk.Step(wait + time.Second)
	select {
	case got := <-act:
		if got != "ml/job-0" {
			t.Fatalf("retried %s, want ml/job-0", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the pool's estimate fell under 10%% after %v, and the gang was not retried", wait)
	}
}

// Two profiles, each with SpotRisk and a catalog of its own, started: the
// cost metrics then priced every pod, whichever profile placed it, by the
// catalog of the profile built last, and each profile watched, loaded and
// counted its catalog apart. A node has one price: profiles that name two
// catalogs stop the start with an error naming args.catalog, and profiles
// that name one share its store, so a pod of each is priced by it and a
// load counts once.
func TestProfilesShareOneCatalog(t *testing.T) {
	schedmetrics.Register()
	dir := t.TempDir()
	// An 8-GPU, 64-vCPU, 512-GiB node weighs 8*10 + 64*0.5 + 512*0.0625 =
	// 144 units: at 36 $/h a GPU-hour is 2.5 $, a vCPU-hour 0.125 $ and a
	// GiB-hour 0.015625 $.
	writeCatalog := func(name string, hourly float64) string {
		path := filepath.Join(dir, name)
		catalog := fmt.Sprintf(`apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
splitRatios: {gpuHour: 10, cpuCoreHour: 0.5, ramGiBHour: 0.0625}
instanceTypes:
- {name: gpu8, provider: aws, gpus: 8, gpuModel: A100-40GB, vcpus: 64, memoryGiB: 512}
prices:
- {instanceType: gpu8, capacityType: on-demand, region: us-east-1, hourly: %v}
`, hourly)
		if err := os.WriteFile(path, []byte(catalog), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	listPrices, discounted := writeCatalog("list.yaml", 36), writeCatalog("discounted.yaml", 18)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "od-1", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "gpu8", corev1.LabelTopologyRegion: "us-east-1", "karpenter.sh/capacity-type": "on-demand"}}}
	pod := func(namespace, schedulerName, gpus, cpu, memory string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "work"},
			Spec: corev1.PodSpec{SchedulerName: schedulerName, NodeName: node.Name, Containers: []corev1.Container{{Name: "c",
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)},
					Limits:   corev1.ResourceList{"nvidia.com/gpu": resource.MustParse(gpus)}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	// start builds the profiles penny-a and penny-b, with these catalogs,
	// as kube-scheduler does: in order, over one client and one informer
	// factory.
	start := func(catalogA, catalogB string) error {
		t.Helper()
		file := filepath.Join(dir, "config.yaml")
		profile := func(name, catalog string) string {
			return fmt.Sprintf(`- schedulerName: %s
  plugins:
    multiPoint:
      enabled:
      - name: SpotRisk
  pluginConfig:
  - name: SpotRisk
    args:
      catalog: {file: %s}
`, name, catalog)
		}
		cfgYAML := "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n" +
			profile("penny-a", catalogA) + profile("penny-b", catalogB)
		if err := os.WriteFile(file, []byte(cfgYAML), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := options.LoadConfigFromFile(klog.Background(), file)
		if err != nil {
			t.Fatal(err)
		}
		registry := plugins.NewInTreeRegistry()
		if err := registry.Merge(Registry(Deps{})); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		client := fake.NewClientset(node, pod("team-a", "penny-a", "2", "8", "64Gi"), pod("team-b", "penny-b", "1", "4", "32Gi"))
		factory := informers.NewSharedInformerFactory(client, 0)
		for i := range cfg.Profiles {
			if _, err := frameworkruntime.NewFramework(ctx, registry, &cfg.Profiles[i],
				frameworkruntime.WithClientSet(client), frameworkruntime.WithInformerFactory(factory),
				frameworkruntime.WithSnapshotSharedLister(cache.NewEmptySnapshot())); err != nil {
				return fmt.Errorf("profile %s: %w", cfg.Profiles[i].SchedulerName, err)
			}
		}
		factory.Start(ctx.Done())
		factory.WaitForCacheSync(ctx.Done())
		return nil
	}

	err := start(listPrices, discounted)
	for _, want := range []string{"SpotRisk plugin args: args.catalog: Invalid value: \"file " + discounted + "\"",
		`profile "penny-a" names file ` + listPrices, "must name the same one"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("two catalogs: %v; want an error with %q", err, want)
		}
	}

	loads := func() float64 {
		return metricstest.Counter(t, "penny_price_catalog_loads_total", "result", "success")
	}
	before := loads()
	if err := start(listPrices, filepath.Join(dir, ".", "list.yaml")); err != nil {
		t.Fatal(err)
	}
	if n := loads() - before; n != 1 {
		t.Errorf("two profiles of one catalog loaded it %v times, want once", n)
	}
	// team-a's pod: 2*2.5 + 8*0.125 + 64*0.015625 = 7 $/h; team-b's:
	// 2.5 + 4*0.125 + 32*0.015625 = 3.5 $/h.
	want := `
# HELP penny_namespace_cost_usd_per_hour [ALPHA] What the namespace's bound, unfinished pods cost per hour, in USD, by the capacity type of their nodes: each pod's requests (GPUs, vCPUs, memory) times its node's component prices. Reserved capacity is priced at its catalog rate although it is paid for already.
# TYPE penny_namespace_cost_usd_per_hour gauge
penny_namespace_cost_usd_per_hour{capacity_type="on-demand",namespace="team-a"} 7
penny_namespace_cost_usd_per_hour{capacity_type="on-demand",namespace="team-b"} 3.5
`
	if err := testutil.GatherAndCompare(legacyregistry.DefaultGatherer, strings.NewReader(want), "penny_namespace_cost_usd_per_hour"); err != nil {
		t.Error(err)
	}
}

// The members of a gang that prefers Spot, created apart, wait for Spot each
// from its own creation, and SpotRisk's Filter holds each to its own wait.
// PennyGang asked SpotRisk about one member per set of members with the same
// annotations and priority: it admitted the gang to on-demand room as soon as
// the oldest member's wait was over, the member still waiting failed
// SpotRisk's Filter there, and the gang was released and backed off, again
// and again, until the last member's wait ended. The gang waits as one: it
// is admitted to on-demand capacity once the wait of its latest member is
// over, and to Spot room before.
func TestGangOfPreferPodsCreatedApartFallsBackWhenItsLastWaitEnds(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	job := twoMemberGang("job", "batch")
	for i, m := range job {
		m.Annotations[spotrisk.AnnotationSpot] = "prefer"
		m.Annotations[spotrisk.AnnotationFallbackAfter] = "30m"
		// job-0's wait ended 10m ago; job-1's ends in 20m.
		m.CreationTimestamp = metav1.NewTime(t0.Add(-40*time.Minute + time.Duration(i)*30*time.Minute))
	}
	onDemand := []*corev1.Node{g5Node("od-0", "on-demand"), g5Node("od-1", "on-demand")}
	if _, s := gangPreFilter(t, Deps{Clock: clk}, job, onDemand...); s.IsSuccess() ||
		!strings.Contains(s.Message(), "2 node(s) are on-demand and the pod waits for Spot capacity until 2026-12-02T12:20:00Z") {
		t.Fatalf("with on-demand room only, while job-1 waits for Spot: %v; want the gang not admitted, with job-1's wait", s)
	}
	res, s := gangPreFilter(t, Deps{Clock: clk}, job, append(onDemand, g5Node("spot-0", "spot"), g5Node("spot-1", "spot"))...)
	if !s.IsSuccess() {
		t.Fatalf("with Spot room too: %v", s)
	}
	if got := strings.Join(sets.List(res.NodeNames), ","); got != "spot-0,spot-1" {
		t.Errorf("while job-1 waits for Spot: admitted to %s, want the Spot nodes", got)
	}
	// A clock of its own: stepping the one above would end the round the
	// Spot admission opened.
	res, s = gangPreFilter(t, Deps{Clock: clocktesting.NewFakeClock(t0.Add(20 * time.Minute))}, job, onDemand...)
	if !s.IsSuccess() {
		t.Fatalf("once job-1's wait is over too: %v; want the gang admitted to on-demand room", s)
	}
	if got := strings.Join(sets.List(res.NodeNames), ","); got != "od-0,od-1" {
		t.Errorf("once both waits are over: admitted to %s, want the on-demand nodes", got)
	}
}
