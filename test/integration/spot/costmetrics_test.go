package spot

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// penny-scheduler's /metrics says what each namespace's running pods cost
// and what each node costs, from the catalog SpotRisk prices with. The
// scheduler here has two profiles, each with its own SpotRisk: the second
// must not register the metrics again (a panic at startup), and the bill
// counts the pods of both, and pods no scheduler placed.
func TestCostMetricsOnRealAPIServer(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog}, withSecondProfile(t, "penny-scheduler-b"))
	ctx := context.Background()

	train := harness.CreatePod(t, c, gpuPod("train", "4", map[string]string{spotrisk.AnnotationSpot: "only"}))
	serve := gpuPod("serve", "1", map[string]string{spotrisk.AnnotationWorkload: "inference"})
	serve.Spec.SchedulerName = "penny-scheduler-b"
	harness.CreatePod(t, c, serve)
	harness.WaitForPod(t, c, "default", "train", 30*time.Second, "bound", harness.Bound)
	harness.WaitForPod(t, c, "default", "serve", 30*time.Second, "bound", harness.Bound)

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byPool := map[string]*corev1.Node{}
	for i := range nodes.Items {
		byPool[nodes.Items[i].Labels[localcluster.LabelPool]] = &nodes.Items[i]
	}
	if byPool["spot"] == nil || byPool["ondemand"] == nil {
		t.Fatalf("the fleet has no spot or no ondemand node: %v", byPool)
	}

	// A pod bound by hand, as another scheduler would bind it, in a team's
	// namespace of its own.
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-b"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	api := harness.Pod("api", corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("8Gi")})
	api.Namespace, api.Spec.SchedulerName, api.Spec.NodeName = "team-b", "default-scheduler", byPool["ondemand"].Name
	harness.CreatePod(t, c, api)

	// The pods as the API server holds them (requests defaulted), priced
	// on their nodes.
	cost := func(namespace, name string) float64 {
		p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node, err := c.Client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		price, ok := catalog.NodePrice(node)
		if !ok {
			t.Fatalf("the shipped catalog has no price for node %s", node.Name)
		}
		return price.HourlyFor(pricing.PodUsage(p))
	}
	want := map[string]float64{
		"penny_namespace_cost_usd_per_hour,capacity_type=spot,namespace=default":      cost("default", train.Name),
		"penny_namespace_cost_usd_per_hour,capacity_type=on-demand,namespace=default": cost("default", "serve"),
		"penny_namespace_cost_usd_per_hour,capacity_type=on-demand,namespace=team-b":  cost("team-b", "api"),
		"penny_namespace_gpus,capacity_type=spot,namespace=default":                   4,
		"penny_namespace_gpus,capacity_type=on-demand,namespace=default":              1,
		"penny_namespace_gpus,capacity_type=on-demand,namespace=team-b":               0,
		"penny_cost_unpriced_nodes": 0,
	}
	for pool, capacityType := range map[string]pricing.CapacityType{"spot": pricing.Spot, "ondemand": pricing.OnDemand} {
		n := byPool[pool]
		price, _ := catalog.NodePrice(n)
		labels := ",capacity_type=" + string(capacityType) + ",instance_type=p4d.24xlarge,node=" + n.Name + ",region=us-east-1"
		want["node_total_hourly_cost"+labels] = price.NodeHourly
		want["node_gpu_hourly_cost"+labels] = price.GPUHourly
		want["node_cpu_hourly_cost"+labels] = price.CPUCoreHourly
		want["node_ram_hourly_cost"+labels] = price.RAMGiBHourly
	}

	// The scheduler's informers see the hand-bound pod when they see it.
	var got map[string]float64
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		got = costMetrics(t)
		return len(got) == len(want) && got["penny_namespace_cost_usd_per_hour,capacity_type=on-demand,namespace=team-b"] > 0, nil
	})
	for key, w := range want {
		if g, ok := got[key]; !ok || g != w {
			t.Errorf("%s = %v (reported: %v), want %v", key, g, ok, w)
		}
	}
	if err != nil || len(got) != len(want) {
		t.Fatalf("/metrics reports %v, want exactly %v", got, want)
	}
}

// withSecondProfile is the deployed configuration with its profile repeated
// under another scheduler name.
func withSecondProfile(t *testing.T, name string) []byte {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(deploy.SchedulerConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	profiles := cfg["profiles"].([]any)
	var second map[string]any
	if err := yaml.Unmarshal(mustMarshal(t, profiles[0]), &second); err != nil {
		t.Fatal(err)
	}
	second["schedulerName"] = name
	cfg["profiles"] = append(profiles, second)
	return mustMarshal(t, cfg)
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	out, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// costMetrics reads the cost metrics from the registry penny-scheduler
// serves on /metrics, keyed by name and labels.
func costMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	return harness.Gauges(t, "node_total_hourly_cost", "node_gpu_hourly_cost", "node_cpu_hourly_cost", "node_ram_hourly_cost",
		"penny_namespace_cost_usd_per_hour", "penny_namespace_gpus", "penny_cost_unpriced_nodes")
}
